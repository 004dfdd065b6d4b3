"""Jobs and their run records: what one nnU-Net training is, what its result folder says about it, and
what the studies remember about each attempt.

A *job* is one ``nnUNetv2_train DATASET CONFIGURATION FOLD -tr TRAINER -p PLANS --npz`` run. What is still
to do is read from nnU-Net's own result folder
(``$nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>/fold_<f>``):

================================================  =======================================
folder holds                                      what runs
================================================  =======================================
``checkpoint_final.pth`` + ``validation/summary.json``  nothing (already complete)
``checkpoint_final.pth`` only                     ``nnUNetv2_train ... --val --npz``
``checkpoint_latest.pth``                         ``nnUNetv2_train ... --npz --c``
nothing                                           ``nnUNetv2_train ... --npz``
================================================  =======================================

Each attempt leaves a :class:`RunRecord` (epochs trained, wall time, peak GPU memory, exit code, log) in
``<out>/runs/<job>.json`` and next to the run (``nnunet_swin_run.json`` in its result folder, so another study
using the same run keeps them); ``runs.csv`` is written from those. Only the standard library is imported.
"""

from __future__ import annotations

import enum
import json
import os
import re
import shlex
from dataclasses import dataclass
from typing import Iterable, Sequence

from nnunet_swin.experiments.nnunet_files import (
    atomic_write,
    csv_text,
    env_path,
    epochs_from_logs,
    resolve_dataset_name,
)

TRAIN_PROGRAM = "nnUNetv2_train"
#: nnU-Net's five cross-validation folds: the studies' default.
DEFAULT_FOLDS = ("0", "1", "2", "3", "4")


class _Word(str, enum.Enum):
    """An enum whose members are the words written to records and CSV files, and print as those."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class FoldState(_Word):
    """What a job's result folder says (see the module docstring)."""

    COMPLETE = "complete"
    NEEDS_VALIDATION = "needs_validation"
    RESUME = "resume"
    FRESH = "fresh"


class Status(_Word):
    """The outcome of one attempt at a job, as records and runs.csv spell it."""

    COMPLETED = "completed"
    ALREADY_COMPLETE = "already_complete"
    FAILED = "failed"
    DRY_RUN = "dry_run"
    NOT_RUN = "not_run"

    @property
    def ok(self) -> bool:
        return self in (Status.COMPLETED, Status.ALREADY_COMPLETE, Status.DRY_RUN)


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

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "configuration": self.configuration, "fold": self.fold,
                "trainer": self.trainer, "plans": self.plans, "tags": [list(t) for t in self.tags],
                "extra_args": list(self.extra_args)}

    @classmethod
    def from_dict(cls, d: dict) -> "Job":
        return cls(d["dataset"], d["configuration"], d["fold"], d["trainer"], d.get("plans", "nnUNetPlans"),
                   tuple(tuple(t) for t in d.get("tags", [])), tuple(d.get("extra_args", [])))


def fold_state(fold_dir: str) -> FoldState:
    """What nnU-Net's result folder says about a run."""
    final = os.path.isfile(os.path.join(fold_dir, "checkpoint_final.pth"))
    summary = os.path.isfile(os.path.join(fold_dir, "validation", "summary.json"))
    if final and summary:
        return FoldState.COMPLETE
    if final:
        return FoldState.NEEDS_VALIDATION
    if os.path.isfile(os.path.join(fold_dir, "checkpoint_latest.pth")):
        return FoldState.RESUME
    return FoldState.FRESH


def train_args(job: Job, device: str, state: FoldState = FoldState.FRESH) -> list[str]:
    """The nnUNetv2_train arguments (without the program name) that bring ``job`` from ``state`` to done."""
    args = [job.dataset, job.configuration, job.fold, "-tr", job.trainer, "-p", job.plans, "--npz",
            "-device", device, *job.extra_args]
    if state == FoldState.RESUME:
        args.append("--c")
    elif state == FoldState.NEEDS_VALIDATION:
        args.append("--val")
    return args


@dataclass
class PlannedRun:
    job: Job
    state: FoldState
    args: list[str]  # nnUNetv2_train arguments; empty when COMPLETE
    gpu: str | None = None

    def command(self) -> str:
        """The shell command a user would type for this run ('' when there is nothing to run)."""
        if self.state == FoldState.COMPLETE:
            return ""
        prefix = f"CUDA_VISIBLE_DEVICES={self.gpu} " if self.gpu is not None else ""
        return prefix + shlex.join([TRAIN_PROGRAM, *self.args])


def plan_runs(jobs: Iterable[Job], device: str, environ=None) -> list[PlannedRun]:
    planned = []
    for job in jobs:
        state = fold_state(job.fold_dir(environ))
        planned.append(PlannedRun(job, state, [] if state == FoldState.COMPLETE else train_args(job, device, state)))
    return planned


# --- records -----------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class RunRecord:
    job: Job
    status: Status
    state_before: FoldState = FoldState.FRESH
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
        return Status(self.status).ok

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in RECORD_FIELDS}
        d["status"], d["state_before"] = Status(self.status).value, FoldState(self.state_before).value
        d["job"] = self.job.to_dict()
        return d

    @classmethod
    def from_history(cls, job: Job, status: Status, state_before: FoldState, history: dict, fold_dir: str
                     ) -> "RunRecord":
        """A record for a run trained earlier (``history``: a record dict), with its epochs read again."""
        return cls(job=job, status=status, state_before=state_before, returncode=history.get("returncode"),
                   wall_time_s=history.get("wall_time_s"),
                   epochs=epochs_from_logs(fold_dir) or history.get("epochs"),
                   peak_gpu_mem_mb=history.get("peak_gpu_mem_mb"), gpu=history.get("gpu"),
                   command=history.get("command", ""), log=history.get("log", ""), fold_dir=fold_dir,
                   finished_at=history.get("finished_at", ""))


RECORD_FIELDS = ("status", "state_before", "returncode", "wall_time_s", "epochs", "peak_gpu_mem_mb", "gpu",
                 "command", "log", "error", "fold_dir", "finished_at")

#: The run's record in its nnU-Net result folder (see :func:`save_record`).
FOLD_RECORD_NAME = "nnunet_swin_run.json"

RUN_COLUMNS = ("dataset", "configuration", "plans", "trainer", "fold", "status", "state_before", "returncode",
               "epochs", "wall_time_s", "peak_gpu_mem_mb", "gpu", "fold_dir", "log", "command", "error",
               "finished_at")


def record_path(records_dir: str, job: Job) -> str:
    return os.path.join(records_dir, job.name + ".json")


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def load_record(records_dir: str, job: Job) -> dict | None:
    return _read_json(record_path(records_dir, job))


def save_record(records_dir: str, record: RunRecord) -> None:
    """The record goes to the study's ``records_dir`` and, when the run has a result folder, next to it
    (:data:`FOLD_RECORD_NAME`), so a study that finds the run trained by another ``--out`` still knows its
    wall time, exit code and peak memory."""
    text = json.dumps(record.to_dict(), indent=2)
    atomic_write(record_path(records_dir, record.job), text)
    if record.fold_dir and os.path.isdir(record.fold_dir):
        atomic_write(os.path.join(record.fold_dir, FOLD_RECORD_NAME), text)


def never_trained(record: dict, environ=None) -> bool:
    """A failed attempt that left nothing in its result folder (e.g. nnU-Net did not find the trainer): it
    belongs to no study, so it neither joins a report nor blocks another study in the same folder."""
    if record.get("status") != Status.FAILED.value:
        return False
    try:
        fold_dir = record.get("fold_dir") or Job.from_dict(record["job"]).fold_dir(environ)
    except (RuntimeError, ValueError, KeyError, TypeError):
        return True
    return fold_state(fold_dir) == FoldState.FRESH


def recorded_jobs(records_dir: str, environ=None) -> list[Job]:
    """The jobs that have a record in ``records_dir`` (every run a study folder has seen), by file name;
    attempts that never trained are left out (:func:`never_trained`)."""
    try:
        names = sorted(n for n in os.listdir(records_dir)
                       if n.endswith(".json") and not n.endswith(".mem.json") and not n.startswith("."))
    except OSError:
        return []
    jobs = []
    for name in names:
        record = _read_json(os.path.join(records_dir, name))
        try:
            job = Job.from_dict(record["job"])
        except (KeyError, TypeError, ValueError):
            continue  # not a run record
        if not never_trained(record, environ):
            jobs.append(job)
    return jobs


def load_fold_record(fold_dir: str) -> dict | None:
    """The record the runner that last ran this job left in its result folder (whatever its ``--out``)."""
    return _read_json(os.path.join(fold_dir, FOLD_RECORD_NAME))


def run_history(job: Job, records_dir: str, fold_dir: str) -> dict:
    """What is known about earlier attempts at ``job``: the result folder's record (the run's own, whichever
    study trained it), else this study's record, else nothing."""
    return load_fold_record(fold_dir) or load_record(records_dir, job) or {}


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
        if rec is None or rec.get("status") == Status.NOT_RUN.value:  # "not_run" may have run since
            fold_dir = job.fold_dir(environ)
            state = fold_state(fold_dir)
            if state == FoldState.COMPLETE:  # perhaps trained by another --out
                rec = RunRecord.from_history(job, Status.ALREADY_COMPLETE, state, load_fold_record(fold_dir) or {},
                                             fold_dir).to_dict()
            else:
                rec = RunRecord(job=job, status=Status.NOT_RUN, state_before=state, epochs=epochs_from_logs(fold_dir),
                                fold_dir=fold_dir).to_dict()
            if keep:
                atomic_write(record_path(records_dir, job), json.dumps(rec, indent=2))
        rows.append(rec)
    return rows
