"""A small, generic job runner for nnU-Net trainings (shared by the skip ablation and the benchmarks).

A *job* is one ``nnUNetv2_train DATASET CONFIGURATION FOLD -tr TRAINER -p PLANS --npz`` run. The runner

* decides per job what is still to do from nnU-Net's own result folder
  (``$nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>/fold_<f>``):

  ================================================  =======================================
  folder holds                                      what runs
  ================================================  =======================================
  ``checkpoint_final.pth`` + ``validation/summary.json``  nothing (already complete)
  ``checkpoint_final.pth`` only                     ``nnUNetv2_train ... --val --npz``
  ``checkpoint_latest.pth``                         ``nnUNetv2_train ... --npz --c``
  nothing                                           ``nnUNetv2_train ... --npz``
  ================================================  =======================================

* runs the jobs locally, one after the other on ``device='cpu'`` (or a single ``cuda``), or queued with
  one run per GPU at a time (``gpus=[0, 1, ...]``, each run sees only its GPU through
  ``CUDA_VISIBLE_DEVICES``);
* locks each run while it trains (``nnunet_swin_run.lock`` in its result folder, :class:`RunLock`): a second
  runner for the same run (another call on the same study, another terminal, a racing SLURM array task)
  *waits* for the holder and then finds the run complete; it never trains it at the same time. Waiting
  (not skipping) keeps a study's exit code and an array task's exit status meaning "this run is done". A
  lock whose holder died is taken over (rule in :func:`lock_stale_reason`);
* keeps going when a run fails, prints the tail of its log, and reports (exit code) whether all completed;
* records per run the epochs trained (from nnU-Net's training log), wall time and peak GPU memory
  (``torch.cuda.max_memory_allocated`` in the training process, when it used a GPU) in
  ``<out>/runs/<job>.json`` and next to the run (``nnunet_swin_run.json`` in its result folder, so another
  study using the same run keeps them), from which :func:`write_runs_csv` writes ``runs.csv``;
* or writes a SLURM script (:func:`write_slurm_script`): a job array with one task per job not yet
  complete and a dependent (``--dependency=afterany:``) aggregation job, which runs even when a task failed.

The training process is nnU-Net's own entry point (``nnunetv2.run.run_training.run_training_entry``, what
the ``nnUNetv2_train`` console script calls) started as ``python -m nnunet_swin.experiments.runner train
-- <nnUNetv2_train arguments>``, a wrapper that only adds the peak-GPU-memory record.

Only the standard library is imported at module level (torch / nnU-Net only inside the training process).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import queue
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from nnunet_swin.registration import ENV_VAR, append_to_env

TRAIN_PROGRAM = "nnUNetv2_train"
NNUNET_PATH_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
#: Extra environment variables passed on to SLURM jobs when set here.
PASSED_ENV_VARS = NNUNET_PATH_VARS + ("nnUNet_extTrainer", "nnUNet_n_proc_DA", "nnUNet_def_n_proc",
                                      "nnUNet_compile", "NNUNET_SWIN_PRETRAINED")

# States of a job's result folder, see the module docstring.
COMPLETE = "complete"
NEEDS_VALIDATION = "needs_validation"
RESUME = "resume"
FRESH = "fresh"


# --- small utilities ---------------------------------------------------------------------------------
def atomic_write(path: str, data: str | bytes) -> None:
    """Write ``data`` to a temp file in ``path``'s directory, then ``os.replace`` it onto ``path``, so a
    reader (or an interruption) never sees a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be shared like any file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _csv_value(row.get(c)) for c in columns})
    return buf.getvalue()


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if v != v else f"{v:.6g}"  # NaN -> empty
    return v


def env_path(var: str, environ=None) -> str:
    environ = os.environ if environ is None else environ
    value = environ.get(var)
    if not value:
        raise RuntimeError(f"{var} is not set; nnU-Net needs nnUNet_raw, nnUNet_preprocessed and nnUNet_results "
                           f"(see nnU-Net's documentation/set_environment_variables.md).")
    return value


def resolve_dataset_name(dataset: str | int, environ=None) -> str:
    """``Dataset123_Name`` for an id or name, looked up in nnUNet_preprocessed, nnUNet_results and
    nnUNet_raw *as they are now* (nnunetv2.paths reads them once at import time)."""
    environ = os.environ if environ is None else environ
    dataset = str(dataset)
    if dataset.startswith("Dataset"):
        return dataset
    try:
        ident = int(dataset)
    except ValueError:
        raise ValueError(f"dataset must be an integer id or a name like Dataset123_Name, got {dataset!r}") from None
    prefix = f"Dataset{ident:03d}_"
    if not any(environ.get(v) for v in NNUNET_PATH_VARS):
        raise RuntimeError(f"cannot resolve data set id {ident}: none of {', '.join(NNUNET_PATH_VARS)} is set.")
    for var in ("nnUNet_preprocessed", "nnUNet_results", "nnUNet_raw"):
        root = environ.get(var)
        if root and os.path.isdir(root):
            hits = sorted(d for d in os.listdir(root) if d.startswith(prefix) and os.path.isdir(os.path.join(root, d)))
            if len(hits) > 1:
                raise RuntimeError(f"more than one data set with id {ident} in {root}: {hits}")
            if hits:
                return hits[0]
    raise RuntimeError(f"no data set with id {ident} (Dataset{ident:03d}_*) in nnUNet_preprocessed, nnUNet_results "
                       f"or nnUNet_raw; run nnUNetv2_plan_and_preprocess -d {ident} first.")


def planned_configurations(dataset: str, plans: str, environ=None) -> list[str] | None:
    """The configurations in ``$nnUNet_preprocessed/<dataset>/<plans>.json`` (nnU-Net plans 3d_fullres only
    for 3D images, 3d_lowres only for large ones), in its order; None when that plans file is not there."""
    path = os.path.join(env_path("nnUNet_preprocessed", environ), dataset, plans + ".json")
    try:
        with open(path) as f:
            return list(json.load(f).get("configurations", {}))
    except (OSError, ValueError):
        return None


def not_planned_message(dataset: str, plans: str, configurations: Iterable[str], planned: Sequence[str]
                        ) -> str | None:
    """The error for configurations the plans lack, naming the ones they have; None when all are planned."""
    absent = [c for c in configurations if c not in planned]
    if not absent:
        return None
    return (f"{dataset}: plans {plans} have no configuration {', '.join(absent)}; they have "
            f"{', '.join(planned) or 'none'}")


# --- jobs --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One nnU-Net training: the result folder nnU-Net writes is fully determined by these fields."""

    dataset: str
    configuration: str
    fold: str
    trainer: str
    plans: str = "nnUNetPlans"
    #: Ordered (name, value) pairs that become extra columns of runs.csv, e.g. (("skips", 2),).
    tags: tuple = ()
    #: Extra nnUNetv2_train arguments, e.g. ("-pretrained_weights", "/x.pth").
    extra_args: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "dataset", str(self.dataset))
        object.__setattr__(self, "fold", str(self.fold))

    @property
    def model_folder_name(self) -> str:
        return f"{self.trainer}__{self.plans}__{self.configuration}"

    @property
    def name(self) -> str:
        """Unique, file-name safe id of the job (used for logs and records)."""
        ds = re.sub(r"[^A-Za-z0-9_.-]", "_", self.dataset)
        return f"{ds}__{self.model_folder_name}__fold_{self.fold}"

    def fold_dir(self, environ=None) -> str:
        return os.path.join(env_path("nnUNet_results", environ), resolve_dataset_name(self.dataset, environ),
                            self.model_folder_name, f"fold_{self.fold}")

    def tag_dict(self) -> dict:
        return dict(self.tags)


def fold_state(fold_dir: str) -> str:
    """What nnU-Net's result folder says about a run: COMPLETE, NEEDS_VALIDATION, RESUME or FRESH."""
    final = os.path.isfile(os.path.join(fold_dir, "checkpoint_final.pth"))
    summary = os.path.isfile(os.path.join(fold_dir, "validation", "summary.json"))
    if final and summary:
        return COMPLETE
    if final:
        return NEEDS_VALIDATION
    if os.path.isfile(os.path.join(fold_dir, "checkpoint_latest.pth")):
        return RESUME
    return FRESH


def train_args(job: Job, device: str, state: str = FRESH) -> list[str]:
    """The nnUNetv2_train arguments (without the program name) that bring ``job`` from ``state`` to done."""
    args = [job.dataset, job.configuration, job.fold, "-tr", job.trainer, "-p", job.plans, "--npz",
            "-device", device, *job.extra_args]
    if state == RESUME:
        args.append("--c")
    elif state == NEEDS_VALIDATION:
        args.append("--val")
    return args


@dataclass
class PlannedRun:
    job: Job
    state: str
    args: list[str]  # nnUNetv2_train arguments; empty when COMPLETE
    gpu: str | None = None

    def command(self) -> str:
        """The shell command a user would type for this run ('' when there is nothing to run)."""
        if self.state == COMPLETE:
            return ""
        prefix = f"CUDA_VISIBLE_DEVICES={self.gpu} " if self.gpu is not None else ""
        return prefix + shlex.join([TRAIN_PROGRAM, *self.args])


def plan_runs(jobs: Iterable[Job], device: str, environ=None) -> list[PlannedRun]:
    planned = []
    for job in jobs:
        state = fold_state(job.fold_dir(environ))
        planned.append(PlannedRun(job, state, [] if state == COMPLETE else train_args(job, device, state)))
    return planned


# --- records -----------------------------------------------------------------------------------------
@dataclass
class RunRecord:
    job: Job
    status: str  # "completed", "already_complete", "failed", "dry_run"
    state_before: str = FRESH
    returncode: int | None = None
    wall_time_s: float | None = None
    epochs: int | None = None
    peak_gpu_mem_mb: float | None = None
    gpu: str | None = None
    command: str = ""
    log: str = ""
    error: str = ""
    fold_dir: str = ""
    finished_at: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("completed", "already_complete", "dry_run")

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("status", "state_before", "returncode", "wall_time_s", "epochs",
                                           "peak_gpu_mem_mb", "gpu", "command", "log", "error", "fold_dir",
                                           "finished_at")}
        d["job"] = {"dataset": self.job.dataset, "configuration": self.job.configuration, "fold": self.job.fold,
                    "trainer": self.job.trainer, "plans": self.job.plans, "tags": [list(t) for t in self.job.tags],
                    "extra_args": list(self.job.extra_args)}
        return d


#: The run's record in its nnU-Net result folder (see :func:`save_record`).
FOLD_RECORD_NAME = "nnunet_swin_run.json"

RUN_COLUMNS = ("dataset", "configuration", "plans", "trainer", "fold", "status", "state_before", "returncode",
               "epochs", "wall_time_s", "peak_gpu_mem_mb", "gpu", "fold_dir", "log", "command", "error",
               "finished_at")


def record_path(records_dir: str, job: Job) -> str:
    return os.path.join(records_dir, job.name + ".json")


def load_record(records_dir: str, job: Job) -> dict | None:
    path = record_path(records_dir, job)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def save_record(records_dir: str, record: RunRecord) -> None:
    """The record goes to the study's ``records_dir`` and, when the run has a result folder, next to it
    (:data:`FOLD_RECORD_NAME`), so a study that finds the run trained by another ``--out`` still knows its
    wall time, exit code and peak memory."""
    text = json.dumps(record.to_dict(), indent=2)
    atomic_write(record_path(records_dir, record.job), text)
    if record.fold_dir and os.path.isdir(record.fold_dir):
        atomic_write(os.path.join(record.fold_dir, FOLD_RECORD_NAME), text)


def recorded_jobs(records_dir: str) -> list[Job]:
    """The jobs that have a record in ``records_dir`` (every run a study folder has seen), by file name."""
    try:
        names = sorted(n for n in os.listdir(records_dir)
                       if n.endswith(".json") and not n.endswith(".mem.json") and not n.startswith("."))
    except OSError:
        return []
    jobs = []
    for name in names:
        try:
            with open(os.path.join(records_dir, name)) as f:
                j = json.load(f)["job"]
            jobs.append(Job(j["dataset"], j["configuration"], j["fold"], j["trainer"], j.get("plans", "nnUNetPlans"),
                            tuple(tuple(t) for t in j.get("tags", [])), tuple(j.get("extra_args", []))))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a run record
    return jobs


def load_fold_record(fold_dir: str) -> dict | None:
    """The record the runner that last ran this job left in its result folder (whatever its ``--out``)."""
    try:
        with open(os.path.join(fold_dir, FOLD_RECORD_NAME)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_history(job: Job, records_dir: str, fold_dir: str) -> dict:
    """What is known about earlier attempts at ``job``: the result folder's record (the run's own, whichever
    study trained it), else this study's record, else nothing."""
    return load_fold_record(fold_dir) or load_record(records_dir, job) or {}


def _training_log_lines(fold_dir: str) -> Iterable[str]:
    """Lines of every nnU-Net ``training_log_*.txt`` in the folder (a resumed run writes a new log)."""
    try:
        names = sorted(n for n in os.listdir(fold_dir) if n.startswith("training_log") and n.endswith(".txt"))
    except OSError:
        return
    for name in names:
        try:
            with open(os.path.join(fold_dir, name), errors="replace") as f:
                yield from f
        except OSError:
            continue


def epochs_from_logs(fold_dir: str) -> int | None:
    """Number of epochs trained, from nnU-Net's training logs ("...: Epoch N" lines)."""
    epochs = [int(m.group(1)) + 1 for m in map(re.compile(r":\s*Epoch (\d+)\s*$").search, _training_log_lines(fold_dir))
              if m]
    return max(epochs) if epochs else None


def epoch_times_from_logs(fold_dir: str) -> list[float]:
    """Seconds per epoch as nnU-Net logs them ("Epoch time: 12.34 s"), training and its validation step."""
    pattern = re.compile(r"Epoch time:\s*([0-9.]+)\s*s")
    return [float(m.group(1)) for m in map(pattern.search, _training_log_lines(fold_dir)) if m]


def log_tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def write_runs_csv(path: str, records: Sequence[RunRecord | dict], tag_names: Sequence[str] = ()) -> None:
    """runs.csv: one row per job (tags first), written atomically."""
    rows = []
    for r in records:
        d = r.to_dict() if isinstance(r, RunRecord) else dict(r)
        job = d.pop("job")
        row = {**{k: v for k, v in job.get("tags", [])}, "dataset": job["dataset"],
               "configuration": job["configuration"], "plans": job["plans"], "trainer": job["trainer"],
               "fold": job["fold"], **d}
        if row.get("error"):
            row["error"] = " | ".join(str(row["error"]).strip().splitlines()[-3:])
        rows.append(row)
    atomic_write(path, csv_text(rows, [*tag_names, *RUN_COLUMNS]))


def run_rows(jobs: Sequence[Job], records_dir: str, environ=None, keep: bool = False) -> list[dict]:
    """Records for runs.csv: the runner's JSON records, or (for runs trained elsewhere or not yet) what
    nnU-Net's result folder says; with ``keep`` those are written to ``records_dir`` too, so the study
    folder remembers every run it has reported (:func:`recorded_jobs`)."""
    rows = []
    for job in jobs:
        rec = load_record(records_dir, job)
        if rec is None or rec.get("status") == "not_run":  # "not_run" may have run since
            fold_dir = job.fold_dir(environ)
            state = fold_state(fold_dir)
            other = (load_fold_record(fold_dir) or {}) if state == COMPLETE else {}  # trained by another --out
            rec = RunRecord(job, "already_complete" if state == COMPLETE else "not_run", state,
                            other.get("returncode"), other.get("wall_time_s"),
                            epochs_from_logs(fold_dir) or other.get("epochs"), other.get("peak_gpu_mem_mb"),
                            other.get("gpu"), other.get("command", ""), other.get("log", ""),
                            fold_dir=fold_dir, finished_at=other.get("finished_at", "")).to_dict()
            if keep:
                atomic_write(record_path(records_dir, job), json.dumps(rec, indent=2))
        rows.append(rec)
    return rows


# --- per-run lock ------------------------------------------------------------------------------------
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


def acquire_run_lock(job: Job, fold_dir: str, echo: Callable[[str], None] = print) -> RunLock:
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
            echo(f"[lock] {job.name}: taking over a stale lock ({why})")
            lock.break_stale(info)
            continue
        if not said:
            echo(f"[wait] {job.name}: being trained by process {info.get('pid', '?')} on {info.get('host', '?')} "
                 f"since {info.get('started', '?')} ({lock.path}); waiting for it")
            said = True
        time.sleep(LOCK_POLL_S)
    return lock


# --- running -----------------------------------------------------------------------------------------
def child_env(base: dict | None, gpu: str | None) -> dict:
    env = dict(os.environ if base is None else base)
    # The training process must import this very nnunet_swin (for the wrapper and the plugin trainers).
    pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    env[ENV_VAR] = append_to_env(env.get(ENV_VAR))  # nnU-Net finds the trainers even without the .pth hook
    env.setdefault("PYTHONUNBUFFERED", "1")  # a traceback then lands in the log after the lines before it
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env


def train_command(record_file: str, args: Sequence[str]) -> list[str]:
    """The training process for nnUNetv2_train ``args``: nnU-Net's entry point in the wrapper that records
    peak GPU memory into ``record_file`` (:func:`_train_main`)."""
    return [sys.executable, "-m", "nnunet_swin.experiments.runner", "train", "--record", record_file, "--", *args]


def _already_complete(job: Job, records_dir: str, fold_dir: str, echo: Callable[[str], None]) -> RunRecord:
    prev = run_history(job, records_dir, fold_dir)
    rec = RunRecord(job, "already_complete", COMPLETE, prev.get("returncode"), prev.get("wall_time_s"),
                    epochs_from_logs(fold_dir) or prev.get("epochs"), prev.get("peak_gpu_mem_mb"),
                    prev.get("gpu"), prev.get("command", ""), prev.get("log", ""), "", fold_dir,
                    prev.get("finished_at", ""))
    atomic_write(record_path(records_dir, job), json.dumps(rec.to_dict(), indent=2))  # the run's own stays
    echo(f"[skip] {job.name}: already complete")
    return rec


def run_one(job: Job, device: str, records_dir: str, logs_dir: str, gpu: str | None = None, environ=None,
            log_tail_lines: int = 40, echo: Callable[[str], None] = print) -> RunRecord:
    """Bring one job to completion (or report why not); writes its record JSON and returns it.

    The run is locked while it trains (:func:`acquire_run_lock`): a second runner for the same run waits
    for the first and then finds it complete, so no run is ever trained twice at once."""
    environ = os.environ if environ is None else environ
    os.makedirs(records_dir, exist_ok=True)
    fold_dir = job.fold_dir(environ)
    if fold_state(fold_dir) == COMPLETE:
        return _already_complete(job, records_dir, fold_dir, echo)
    lock = acquire_run_lock(job, fold_dir, echo)
    try:
        state = fold_state(fold_dir)  # again: a runner we waited for has usually completed it
        if state == COMPLETE:
            return _already_complete(job, records_dir, fold_dir, echo)
        return _train(job, state, device, records_dir, logs_dir, gpu, environ, log_tail_lines, echo, lock)
    finally:
        lock.release()


def _train(job: Job, state: str, device: str, records_dir: str, logs_dir: str, gpu: str | None, environ,
           log_tail_lines: int, echo: Callable[[str], None], lock: RunLock) -> RunRecord:
    fold_dir = job.fold_dir(environ)
    args = train_args(job, device, state)
    planned = PlannedRun(job, state, args, gpu)
    os.makedirs(logs_dir, exist_ok=True)
    log_path = os.path.join(logs_dir, job.name + ".log")
    fd, mem_file = tempfile.mkstemp(prefix=job.name + ".", suffix=".mem.json", dir=records_dir)
    os.close(fd)
    os.unlink(mem_file)
    cmd = train_command(mem_file, args)
    echo(f"[run{'' if gpu is None else ' gpu ' + str(gpu)}] {planned.command()}")
    t0 = time.time()
    with open(log_path, "a") as log:
        log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {planned.command()}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(environ, gpu),
                                stdin=subprocess.DEVNULL)
        try:
            lock.set_child(proc.pid)
            rc = proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    wall = time.time() - t0
    peak = None
    try:
        with open(mem_file) as f:
            peak = json.load(f).get("peak_gpu_mem_mb")
        os.unlink(mem_file)
    except (OSError, ValueError):
        pass
    prev = run_history(job, records_dir, fold_dir)
    if state in (RESUME, NEEDS_VALIDATION) and prev.get("wall_time_s"):
        wall += float(prev["wall_time_s"])  # total over the interrupted and the resumed part
    if peak is not None and prev.get("peak_gpu_mem_mb") and state != FRESH:
        peak = max(peak, float(prev["peak_gpu_mem_mb"]))
    after = fold_state(fold_dir)
    error = ""
    if rc != 0:
        status = "failed"
        error = log_tail(log_path, log_tail_lines)
    elif after != COMPLETE:
        status = "failed"
        error = (f"nnUNetv2_train exited 0 but {fold_dir} lacks checkpoint_final.pth or validation/summary.json.\n"
                 + log_tail(log_path, log_tail_lines))
    else:
        status = "completed"
    rec = RunRecord(job, status, state, rc, round(wall, 1), epochs_from_logs(fold_dir), peak, gpu,
                    planned.command(), log_path, error, fold_dir, time.strftime("%Y-%m-%d %H:%M:%S"))
    save_record(records_dir, rec)
    if status == "failed":
        echo(f"[FAILED] {job.name} (exit code {rc}); last lines of {log_path}:\n{_indent(error)}")
    else:
        echo(f"[done] {job.name} in {wall:.0f} s" + (f", peak GPU memory {peak:.0f} MiB" if peak else ""))
    return rec


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.rstrip().splitlines())


@dataclass
class RunReport:
    records: list[RunRecord] = field(default_factory=list)

    @property
    def all_ok(self) -> bool:
        return all(r.ok for r in self.records)

    @property
    def failed(self) -> list[RunRecord]:
        return [r for r in self.records if not r.ok]

    @property
    def exit_code(self) -> int:
        return 0 if self.all_ok else 1


def parse_gpus(gpus: str | Sequence | None) -> list[str] | None:
    if gpus is None or gpus == "":
        return None
    if isinstance(gpus, str):
        gpus = [g for g in gpus.replace(" ", "").split(",") if g]
    out = [str(g) for g in gpus]
    if len(set(out)) != len(out):
        raise ValueError(f"--gpus lists a GPU twice: {out}")
    return out or None


def run_jobs(jobs: Sequence[Job], out_dir: str, device: str = "cuda", gpus: str | Sequence | None = None,
             dry_run: bool = False, environ=None, log_tail_lines: int = 40,
             echo: Callable[[str], None] = print) -> RunReport:
    """Run ``jobs`` locally: sequentially, or with ``gpus`` one run per GPU at a time (queued).

    Logs go to ``<out_dir>/logs/<job>.log``, records to ``<out_dir>/runs/<job>.json``. With ``dry_run`` the
    nnUNetv2_train commands are printed (and returned as records with status "dry_run"), nothing runs."""
    environ = os.environ if environ is None else environ
    gpu_list = parse_gpus(gpus)
    if gpu_list and device != "cuda":
        raise ValueError(f"--gpus needs --device cuda (got --device {device})")
    report = RunReport()
    if dry_run:
        planned = plan_runs(jobs, device, environ)
        for i, p in enumerate(planned):
            if gpu_list:
                p.gpu = gpu_list[i % len(gpu_list)]
            cmd = p.command()
            echo(cmd if cmd else f"# {p.job.name}: already complete, nothing to run")
            report.records.append(RunRecord(p.job, "dry_run", p.state, command=cmd, fold_dir=p.job.fold_dir(environ)))
        return report

    records_dir = os.path.join(out_dir, "runs")
    logs_dir = os.path.join(out_dir, "logs")
    os.makedirs(records_dir, exist_ok=True)
    results: dict[int, RunRecord] = {}

    def guarded(i: int, job: Job, gpu: str | None):
        try:
            results[i] = run_one(job, device, records_dir, logs_dir, gpu, environ, log_tail_lines, echo)
        except Exception as e:  # a broken job (e.g. unknown dataset) must not stop the others
            rec = RunRecord(job, "failed", error=f"{type(e).__name__}: {e}")
            results[i] = rec
            echo(f"[FAILED] {job.name}: {type(e).__name__}: {e}")

    if not gpu_list:
        for i, job in enumerate(jobs):
            guarded(i, job, None)
    else:
        todo: queue.Queue = queue.Queue()
        for item in enumerate(jobs):
            todo.put(item)
        lock = threading.Lock()
        plain_echo = echo

        def locked_echo(msg: str):
            with lock:
                plain_echo(msg)

        echo = locked_echo

        def worker(gpu: str):
            while True:
                try:
                    i, job = todo.get_nowait()
                except queue.Empty:
                    return
                guarded(i, job, gpu)

        threads = [threading.Thread(target=worker, args=(g,), daemon=True) for g in gpu_list]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.5)
    report.records = [results[i] for i in range(len(jobs))]
    return report


def summarize_report(report: RunReport) -> str:
    n = len(report.records)
    counts: dict[str, int] = {}
    for r in report.records:
        counts[r.status] = counts.get(r.status, 0) + 1
    parts = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    lines = [f"{n} runs: {parts}"]
    for r in report.failed:
        lines.append(f"  FAILED {r.job.name}: see {r.log or '(no log)'}")
    return "\n".join(lines)


# --- SLURM -------------------------------------------------------------------------------------------
#: sbatch options that request GPUs: they go to the array tasks only (the aggregation needs none).
GPU_OPTION_PREFIXES = ("--gres", "--gpus", "--gpu-", "--cpus-per-gpu", "--mem-per-gpu", "-G")


def split_sbatch_options(options: Sequence[str]) -> list[str]:
    """``--slurm-option`` values split as a shell would (``"--partition gpu"`` is two sbatch arguments).

    Raises ValueError for a value that is not an sbatch option or has unbalanced quotes."""
    out: list[str] = []
    for opt in options:
        try:
            words = shlex.split(opt)
        except ValueError as e:
            raise ValueError(f"--slurm-option {opt!r}: {e}; quote as in a shell, e.g. --slurm-option=\"--time 1:00:00\"") from None
        if words and not words[0].startswith("-"):
            raise ValueError(f"--slurm-option {opt!r} is not an sbatch option; write it as on sbatch's command line, "
                             "e.g. --slurm-option=--partition=gpu or --slurm-option=\"--account myproject\"")
        out += words
    return out


def _option_groups(words: Sequence[str]) -> list[list[str]]:
    """sbatch arguments grouped per option (``--partition gpu`` stays together)."""
    groups: list[list[str]] = []
    for w in words:
        if w.startswith("-") or not groups:
            groups.append([w])
        else:
            groups[-1].append(w)
    return groups


def _sbatch_options_per_job(options: Sequence[str], device: str, cpus_per_task: int) -> tuple[list[str], list[str]]:
    """(array task options, aggregation job options): ``--cpus-per-task`` and every option for both, GPU
    requests for the array tasks only (``--gres=gpu:1`` on CUDA unless a GPU option is given)."""
    if cpus_per_task < 1:
        raise ValueError(f"--slurm-cpus must be at least 1, got {cpus_per_task}")
    groups = _option_groups(split_sbatch_options(options))
    gpu = [g for g in groups if g[0].startswith(GPU_OPTION_PREFIXES)]
    if device == "cuda" and not gpu:
        gpu = [["--gres=gpu:1"]]
    common = [f"--cpus-per-task={cpus_per_task}"] + [w for g in groups if g not in gpu for w in g]
    return common + [w for g in gpu for w in g], common


def add_slurm_arguments(p: argparse.ArgumentParser) -> None:
    """``--slurm-option`` and ``--slurm-cpus``, shared by the commands that write SLURM scripts."""
    p.add_argument("--slurm-option", action="append", default=[], metavar="OPT",
                   help="extra sbatch option(s) for every job, split as a shell would (repeatable), e.g. "
                        "--slurm-option=--time=24:00:00 --slurm-option=\"--partition gpu\" "
                        "--slurm-option=--account=proj; GPU requests (--gres, --gpus...) go to the training tasks only")
    p.add_argument("--slurm-cpus", type=int, default=1, metavar="N",
                   help="CPUs per SLURM job (--cpus-per-task): nnU-Net's data augmentation workers use them; "
                        "at most what the partition's nodes have")


def _job_cli_args(job: Job) -> list[str]:
    args = ["--dataset", job.dataset, "--configuration", job.configuration, "--fold", job.fold,
            "--trainer", job.trainer, "--plans", job.plans]
    for k, v in job.tags:
        args += ["--tag", f"{k}={v}"]
    for a in job.extra_args:
        args += [f"--extra-arg={a}"]
    return args


def _job_to_json(job: Job) -> dict:
    return {"dataset": job.dataset, "configuration": job.configuration, "fold": job.fold, "trainer": job.trainer,
            "plans": job.plans, "tags": [list(t) for t in job.tags], "extra_args": list(job.extra_args)}


def _job_from_json(d: dict) -> Job:
    return Job(d["dataset"], d["configuration"], d["fold"], d["trainer"], d["plans"],
               tuple(tuple(t) for t in d["tags"]), tuple(d["extra_args"]))


def array_spec(indices: Sequence[int]) -> str:
    """SLURM ``--array`` index list, consecutive runs as ranges: [0, 1, 2, 5] -> '0-2,5'."""
    parts, start = [], None
    for i, n in enumerate(indices):
        if start is None:
            start = n
        if i + 1 == len(indices) or indices[i + 1] != n + 1:
            parts.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ",".join(parts)


def _absolute_path_list(value: str) -> str:
    """An os.pathsep list of folders made absolute (a job may start in another directory)."""
    return os.pathsep.join(os.path.abspath(p) for p in value.split(os.pathsep) if p)


def _env_exports(environ, pkg_parent: str) -> str:
    q = shlex.quote
    exports = []
    for v in PASSED_ENV_VARS:
        if environ.get(v):
            value = environ[v]
            if v in NNUNET_PATH_VARS or v == "nnUNet_extTrainer":
                value = _absolute_path_list(value)
            exports.append(f"export {v}={q(value)}")
    exports.append(f"export PYTHONPATH={q(pkg_parent)}\"${{PYTHONPATH:+:$PYTHONPATH}}\"")
    return "\n".join(exports)


def write_slurm_script(path: str, jobs: Sequence[Job], out_dir: str, aggregate_command: Sequence[str] | None = None,
                       device: str = "cuda", job_name: str = "nnunet", sbatch_options: Sequence[str] = (),
                       cpus_per_task: int = 1, python: str | None = None, environ=None,
                       max_parallel: int | None = None) -> str:
    """Write a bash script that, run with ``bash path`` on the cluster's login node, submits

    1. a job array with one task per run that is not complete *at submission* (checked from nnU-Net's
       result folders then, so submitting again trains only what is missing or failed; each task also
       skips a run found complete and continues an interrupted one with ``--c``, as :func:`run_one` does),
    2. the aggregation job (``aggregate_command``), ``--dependency=afterany:<array id>``: it runs when every
       task has ended, failed ones included, and its report lists what is missing with the log tails.

    ``sbatch_options`` (``--slurm-option`` values, split as a shell would) go to both jobs, except GPU
    requests (``--gres``, ``--gpus...``), which go to the array tasks only; ``--gres=gpu:1`` is added for
    ``device='cuda'`` unless one is given. Every job asks for ``cpus_per_task`` CPUs (default 1: what any
    node offers; a larger request than the partition's nodes have stays PENDING forever). Returns the
    script text."""
    if not jobs:
        raise ValueError("no jobs to write a SLURM script for")
    environ = os.environ if environ is None else environ
    python = python or sys.executable
    out_dir = os.path.abspath(out_dir)
    array_opts, aggregate_opts = _sbatch_options_per_job(sbatch_options, device, cpus_per_task)
    n = len(jobs)
    log_dir = os.path.join(out_dir, "slurm_logs")
    pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    q = shlex.quote
    env_block = _env_exports(environ, pkg_parent)
    common = f"--chdir={q(out_dir)}"

    lines = [
        "#!/usr/bin/env bash",
        f"# Written by nnunet_swin.experiments.runner on {time.strftime('%Y-%m-%d %H:%M:%S')}.",
        f"# Submit with:  bash {q(os.path.abspath(path))}      (runs sbatch; do not sbatch this file)",
        f"# Array: one task per run of the {n} below that is not complete when this script runs; then the",
        "# aggregation job (afterany: it runs after every task has ended, failed ones included).",
        "# A task whose nnU-Net result folder is complete does nothing; an interrupted one continues (--c).",
        "# Task -> equivalent nnU-Net command:",
    ]
    for i, job in enumerate(jobs):
        lines.append(f"#   {i}: {shlex.join([TRAIN_PROGRAM, *train_args(job, device)])}")
    lines += [
        "set -euo pipefail",
        env_block,
        f"mkdir -p {q(log_dir)}",
        "",
        f"TODO=$({shlex.join([python, '-m', 'nnunet_swin.experiments.runner', 'pending'])} <<'NNUNET_JOBS'",
        json.dumps([_job_to_json(j) for j in jobs]),
        "NNUNET_JOBS",
        ")",
        'DEPENDENCY=""',
        'if [ -n "$TODO" ]; then',
        f"ARRAY_ID=$(sbatch --parsable --job-name={q(job_name)} --array=\"$TODO\"{'%' + str(max_parallel) if max_parallel else ''} "
        f"{common} --output={q(os.path.join(log_dir, job_name + '_%A_%a.log'))} "
        + " ".join(q(o) for o in array_opts) + " <<'NNUNET_ARRAY'",
        "#!/usr/bin/env bash",
        "set -euo pipefail",
        env_block,
        'case "${SLURM_ARRAY_TASK_ID}" in',
    ]
    for i, job in enumerate(jobs):
        cmd = [python, "-m", "nnunet_swin.experiments.runner", "run-job", "--out", out_dir, "--device", device,
               *_job_cli_args(job)]
        lines.append(f"  {i}) exec {shlex.join(cmd)} ;;")
    lines += [
        '  *) echo "unknown array index ${SLURM_ARRAY_TASK_ID}" >&2; exit 2 ;;',
        "esac",
        "NNUNET_ARRAY",
        ")",
        'ARRAY_ID="${ARRAY_ID%%;*}"',
        'DEPENDENCY="--dependency=afterany:${ARRAY_ID}"',
        f'echo "submitted array job ${{ARRAY_ID}}: tasks ${{TODO}} of 0-{n - 1} (the others are complete)"',
        "else",
        f'echo "all {n} runs are complete; no array job"',
        "fi",
    ]
    if aggregate_command:
        lines += [
            f"AGG_ID=$(sbatch --parsable --job-name={q(job_name + '_aggregate')} ${{DEPENDENCY:+\"$DEPENDENCY\"}} "
            f"{common} --output={q(os.path.join(log_dir, job_name + '_aggregate_%j.log'))} "
            + " ".join(q(o) for o in aggregate_opts) + " <<'NNUNET_AGGREGATE'",
            "#!/usr/bin/env bash",
            "set -euo pipefail",
            env_block,
            "exec " + shlex.join(list(aggregate_command)),
            "NNUNET_AGGREGATE",
            ")",
            'echo "submitted aggregation job ${AGG_ID%%;*} (runs after the array has ended, failed tasks included)"',
        ]
    text = "\n".join(lines) + "\n"
    atomic_write(path, text)
    os.chmod(path, 0o755)
    return text


def _pending_main(argv: list[str]) -> int:
    """``runner pending < jobs.json``: prints the ``--array`` indices of the runs not complete now (what the
    SLURM submit script submits)."""
    argparse.ArgumentParser(prog="python -m nnunet_swin.experiments.runner pending").parse_args(argv)
    jobs = [_job_from_json(d) for d in json.load(sys.stdin)]
    print(array_spec([i for i, job in enumerate(jobs) if fold_state(job.fold_dir()) != COMPLETE]))
    return 0


# --- command line (used by the SLURM tasks and as the training wrapper) -------------------------------
def _train_main(argv: list[str]) -> int:
    """``runner train --record FILE -- <nnUNetv2_train args>``: nnU-Net's own training entry point, plus
    a JSON record of peak GPU memory written even when training fails."""
    p = argparse.ArgumentParser(prog="python -m nnunet_swin.experiments.runner train")
    p.add_argument("--record", required=True)
    p.add_argument("nnunet_args", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    nn_args = a.nnunet_args[1:] if a.nnunet_args[:1] == ["--"] else a.nnunet_args
    from nnunetv2.run.run_training import run_training_entry

    sys.argv = [TRAIN_PROGRAM, *nn_args]
    try:
        run_training_entry()
    finally:
        peak = None
        try:
            import torch

            if torch.cuda.is_available() and torch.cuda.is_initialized():
                peak = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
        except Exception:
            pass
        try:
            atomic_write(a.record, json.dumps({"peak_gpu_mem_mb": peak}))
        except OSError:
            pass
    return 0


def _run_job_main(argv: list[str]) -> int:
    """``runner run-job --out DIR --dataset D --configuration C --fold F --trainer T [--plans P] [--tag k=v]``:
    one job with the resume logic (what each SLURM array task runs). Exit code 0 when complete."""
    p = argparse.ArgumentParser(prog="python -m nnunet_swin.experiments.runner run-job")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dataset", required=True)
    p.add_argument("--configuration", required=True)
    p.add_argument("--fold", required=True)
    p.add_argument("--trainer", required=True)
    p.add_argument("--plans", default="nnUNetPlans")
    p.add_argument("--tag", action="append", default=[])
    p.add_argument("--extra-arg", action="append", default=[])
    a = p.parse_args(argv)
    tags = tuple(tuple(t.split("=", 1)) for t in a.tag)
    job = Job(a.dataset, a.configuration, a.fold, a.trainer, a.plans, tags, tuple(a.extra_arg))
    rec = run_one(job, a.device, os.path.join(a.out, "runs"), os.path.join(a.out, "logs"))
    return 0 if rec.ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train": _train_main, "run-job": _run_job_main, "pending": _pending_main}
    if not argv or argv[0] not in commands:
        print("usage: python -m nnunet_swin.experiments.runner {train,run-job,pending} ...", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
