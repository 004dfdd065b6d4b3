"""The per-run lock that keeps two runners (another call, another terminal, a racing SLURM array task, on
this host or another sharing the results folder) from training the same run at once.

``nnunet_swin_run.lock`` sits in the run's result folder while a runner brings the run to completion; a
second runner *waits* for the holder and then finds the run complete. Waiting (not skipping) keeps a
study's exit code and an array task's exit status meaning "this run is done". A lock whose holder died is
taken over (rule in :func:`lock_stale_reason`). Only the standard library is imported.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Callable

#: Lock file in the run's result folder while a runner brings the run to completion.
LOCK_NAME = "nnunet_swin_run.lock"
#: The holder touches the lock this often; a lock from another host is stale after LOCK_STALE_AFTER_S
#: without a touch.
LOCK_HEARTBEAT_S = 60.0
LOCK_STALE_AFTER_S = 600.0
#: How often a waiting runner looks at the lock again.
LOCK_POLL_S = 5.0


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OverflowError, TypeError, ValueError):
        return False
    return True


def lock_stale_reason(info: dict, mtime: float, now: float | None = None, host: str | None = None,
                      stale_after_s: float | None = None) -> str:
    """Why a lock (its JSON ``info`` and the file's modification time, refreshed by the holder's heartbeat)
    no longer protects anything; '' while it does.

    * Same host: stale when none of the recorded processes (the runner and its training process) runs; the
      heartbeat is not consulted, so a busy machine never loses a live lock.
    * Another host (or an unreadable lock): pids mean nothing here, so stale when the heartbeat is older than
      ``stale_after_s`` (default :data:`LOCK_STALE_AFTER_S`; the holder touches it every
      :data:`LOCK_HEARTBEAT_S`). Clocks of the hosts sharing the file system must agree to within that.
    """
    now = time.time() if now is None else now
    host = socket.gethostname() if host is None else host
    stale_after_s = LOCK_STALE_AFTER_S if stale_after_s is None else stale_after_s
    pids = [p for p in (info.get("pid"), info.get("child_pid")) if p]
    if info.get("host") == host and pids:
        if any(_pid_alive(p) for p in pids):
            return ""
        return f"process {', '.join(map(str, pids))} on {host} is gone"
    age = now - mtime
    if age > stale_after_s:
        return f"no heartbeat from {info.get('host', 'an unknown host')} for {age:.0f} s (> {stale_after_s:.0f} s)"
    return ""


class RunLock:
    """Exclusive right to train one run: ``<fold_dir>/nnunet_swin_run.lock`` holding the holder's pid, host,
    start time and a random token.

    Created atomically (the JSON is written to a private file, then ``os.link``-ed to the lock name, which
    fails if the name exists; this also works on NFS, and a reader never sees a half-written lock). While
    held, a thread touches the file every :data:`LOCK_HEARTBEAT_S`. A stale lock (:func:`lock_stale_reason`)
    is broken by renaming it to a private name (atomic: of several runners breaking it at once one wins)
    and checking it is still the stale one before deleting it."""

    def __init__(self, fold_dir: str):
        self.path = os.path.join(fold_dir, LOCK_NAME)
        self.token = uuid.uuid4().hex
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "token": self.token}
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _write_private(self) -> str:
        private = f"{self.path}.{self.token}.tmp"
        with open(private, "w") as f:
            json.dump(self.info, f)
        return private

    def try_acquire(self) -> bool:
        private = self._write_private()
        try:
            os.link(private, self.path)
        except FileExistsError:
            return False
        finally:
            os.unlink(private)
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)
        self._beat.start()
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(LOCK_HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def set_child(self, pid: int) -> None:
        """Record the training process too: if this runner dies, the lock stays live while it trains."""
        self.info["child_pid"] = pid
        private = self._write_private()
        os.replace(private, self.path)

    def release(self) -> None:
        self._stop.set()
        if read_lock(self.path)[0].get("token") == self.token:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def break_stale(self, stale: dict) -> None:
        moved = f"{self.path}.{self.token}.breaking"
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return  # released or broken by someone else meanwhile
        if read_lock(moved)[0].get("token") == stale.get("token"):
            os.unlink(moved)
            return
        try:  # a fresh lock was taken between our look and the rename: give it back
            os.link(moved, self.path)
        except FileExistsError:
            pass
        os.unlink(moved)


def read_lock(path: str) -> tuple[dict, float]:
    """(the lock's JSON, its modification time); ({}, 0) when there is no lock, ({}, mtime) when unreadable."""
    try:
        mtime = os.path.getmtime(path)
        with open(path) as f:
            info = json.load(f)
    except FileNotFoundError:
        return {}, 0.0
    except ValueError:
        return {}, mtime
    return (info if isinstance(info, dict) else {}), mtime


def acquire_run_lock(job_name: str, fold_dir: str, echo: Callable[[str], None] = print) -> RunLock:
    """Take ``job``'s lock, waiting while another runner (another call, terminal or SLURM array task, on this
    host or another sharing the results folder) holds it, and taking over a stale one. The caller must
    look at the result folder again afterwards: the other runner has usually finished the run."""
    os.makedirs(fold_dir, exist_ok=True)
    lock = RunLock(fold_dir)
    said = False
    while not lock.try_acquire():
        info, mtime = read_lock(lock.path)
        if not mtime:
            continue  # released between our attempt and the look
        why = lock_stale_reason(info, mtime)
        if why:
            echo(f"[lock] {job_name}: taking over a stale lock ({why})")
            lock.break_stale(info)
            continue
        if not said:
            echo(f"[wait] {job_name}: being trained by process {info.get('pid', '?')} on {info.get('host', '?')} "
                 f"since {info.get('started', '?')} ({lock.path}); waiting for it")
            said = True
        time.sleep(LOCK_POLL_S)
    return lock
