"""A real single-node SLURM on localhost for the tests, from Debian's ``slurm-wlm`` and ``munge`` packages.

:class:`LocalSlurm` writes a munge key, a minimal ``slurm.conf`` (one node with this machine's CPUs, one
partition, state and spool folders, logs and sockets all in a temporary folder, cgroup-free
``proctrack/linuxproc`` and ``task/none`` so it runs in a container), starts ``munged``, ``slurmctld`` and
``slurmd`` in the foreground as its own child processes, waits until ``sinfo`` shows the node idle and
stops exactly those processes afterwards. Client commands reach it through ``SLURM_CONF`` (see
:meth:`LocalSlurm.env`); nothing under ``/etc`` is read or written.

``sacct`` needs a database daemon, so job states come from ``scontrol show job`` (finished jobs stay
visible for ``MinJobAge`` seconds, set to an hour here).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from typing import Mapping, Sequence

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel")
PARTITION = "debug"
FINISHED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                   "BOOT_FAIL", "DEADLINE"}


def _find(program: str) -> str | None:
    """Daemons live in /usr/sbin, which a non-root PATH may lack."""
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin:/sbin:/bin")


def missing_programs() -> list[str]:
    return [p for p in (*DAEMONS, *CLIENTS) if _find(p) is None]


def unavailable_reason() -> str | None:
    """Why a local cluster cannot start here (None when it can)."""
    missing = missing_programs()
    if missing:
        return (f"SLURM/munge programs not found: {', '.join(missing)} (Debian: apt-get install slurm-wlm munge; "
                ".ci/run installs them)")
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs (CI runs the tests as root)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpus() -> int:
    """The CPUs this process may use (slurmd drains a node configured with more than it finds)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class LocalSlurm:
    """One munged + slurmctld + slurmd, configured and kept under ``root``."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.node = socket.gethostname().split(".")[0]
        self.cpus = _cpus()
        self.conf = os.path.join(self.root, "slurm.conf")
        self.munge_socket = os.path.join(self.root, "munge", "munge.socket")
        self.procs: dict[str, subprocess.Popen] = {}

    # --- configuration ------------------------------------------------------------------------------
    def _write_files(self) -> None:
        for sub in ("munge", "state", "spool", "log"):
            os.makedirs(os.path.join(self.root, sub), mode=0o700, exist_ok=True)
        key = os.path.join(self.root, "munge", "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        user = _user_name()
        r = self.root
        conf = f"""\
ClusterName=nnunetswintest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=3600
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        with open(self.conf, "w") as f:
            f.write(conf)

    def env(self, base: Mapping[str, str] | None = None) -> dict:
        """``base`` (default: this process's environment) with SLURM_CONF pointing at this cluster."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = self.conf
        return env

    # --- start / stop ---------------------------------------------------------------------------------
    def _spawn(self, name: str, args: Sequence[str]) -> None:
        log = open(os.path.join(self.root, "log", f"{name}.out"), "ab")
        try:
            self.procs[name] = subprocess.Popen([_find(name), *args], stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, env=self.env(), start_new_session=True)
        finally:
            log.close()

    def start(self, timeout: float = 60.0) -> "LocalSlurm":
        self._write_files()
        m = os.path.join(self.root, "munge")
        # --force: munged refuses root and group/world-writable parents (/tmp) otherwise
        self._spawn("munged", ["--foreground", "--force", f"--key-file={m}/munge.key", f"--socket={self.munge_socket}",
                               f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log",
                               f"--seed-file={m}/munged.seed"])
        self._wait(lambda: os.path.exists(self.munge_socket), timeout, "munged to open its socket")
        self._spawn("slurmctld", ["-D", "-i", "-f", self.conf])
        self._spawn("slurmd", ["-D", "-f", self.conf, "-N", self.node])
        self._wait(self.node_idle, timeout, f"node {self.node} to be idle in sinfo")
        return self

    def stop(self) -> None:
        """Cancel every job, then stop the daemons this object started (SIGTERM, SIGKILL after 15 s)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run([_find("scancel"), "--full", f"--partition={PARTITION}"], env=self.env(),
                           capture_output=True, timeout=30)
            try:
                self._wait(lambda: not self.squeue_ids(), 20, "jobs to end after scancel")
            except TimeoutError:
                pass
        for name in reversed(DAEMONS):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def __enter__(self) -> "LocalSlurm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- queries ------------------------------------------------------------------------------------
    def run(self, args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 30,
            cwd: str | None = None) -> subprocess.CompletedProcess:
        """A client command (``sbatch``, ``squeue``, ...) against this cluster."""
        return subprocess.run([_find(args[0]), *args[1:]], env=self.env(env), capture_output=True, text=True,
                              timeout=timeout, cwd=cwd)

    def node_idle(self) -> bool:
        self._check_daemons()
        p = self.run(["sinfo", "--noheader", "-n", self.node, "-o", "%t"], timeout=10)
        return p.returncode == 0 and p.stdout.strip() == "idle"

    def version(self) -> str:
        return self.run(["sinfo", "--version"]).stdout.strip()

    def squeue_ids(self) -> list[str]:
        p = self.run(["squeue", "--noheader", "-o", "%i"], timeout=10)
        return p.stdout.split()

    def job(self, job_id: str) -> list[dict]:
        """``scontrol show job`` as dicts (an array job gives one per task)."""
        p = self.run(["scontrol", "--oneliner", "show", "job", str(job_id)], timeout=10)
        if p.returncode != 0:
            raise RuntimeError(f"scontrol show job {job_id}: {p.stderr.strip()}")
        out = []
        for line in p.stdout.splitlines():
            if line.strip():
                out.append(dict(re.findall(r"(\w+(?::\w+)?)=(\S*)", line)))
        return out

    def wait_finished(self, job_ids: Sequence[str], timeout: float) -> dict[str, list[dict]]:
        """Poll until every job (all tasks of an array) has finished; raise TimeoutError with the queue and
        the pending reasons when they do not within ``timeout`` seconds."""
        done: dict[str, list[dict]] = {}

        def finished() -> bool:
            for j in job_ids:
                tasks = self.job(j)
                if not tasks or any(t.get("JobState") not in FINISHED_STATES for t in tasks):
                    return False
                done[j] = tasks
            return True

        try:
            self._wait(finished, timeout, f"jobs {', '.join(job_ids)} to finish")
        except TimeoutError as e:
            queue = self.run(["squeue", "-o", "%i %j %T %r"], timeout=10).stdout
            raise TimeoutError(f"{e}\nsqueue:\n{queue}") from None
        return done

    # --- helpers ------------------------------------------------------------------------------------
    def _check_daemons(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.root}/log/")

    def _wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}; logs in {self.root}/log/")
            time.sleep(0.5)


def _user_name() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name
