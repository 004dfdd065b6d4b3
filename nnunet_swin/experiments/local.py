"""Running jobs on this machine: one after the other (``device='cpu'``, ``'mps'`` or a single ``'cuda'``), or
queued one run per GPU at a time (``gpus=[0, 1, ...]``, each run sees only its GPU through
``CUDA_VISIBLE_DEVICES``).

Owns the training process's environment and command, bringing one job to completion under its lock
(:func:`run_one`: skip, continue with ``--c``, validate with ``--val`` or train, then record), the GPU queue
(:func:`run_jobs`), and the progress a person follows: "run i of N" with the log path when a run starts,
nnU-Net's epoch lines (prefixed with the run's name, so parallel runs stay apart), and after each run the
time spent and an estimate of what is left. A failed run does not stop the others; its log tail is printed.

The training process is nnU-Net's own entry point (``nnunetv2.run.run_training.run_training_entry``, what
the ``nnUNetv2_train`` console script calls) started as ``python -m nnunet_swin.experiments.worker train --
<nnUNetv2_train arguments>``, a wrapper that only adds the peak-GPU-memory record. Only the standard library
is imported at module level.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from nnunet_swin.experiments.jobs import (
    FoldState,
    Job,
    PlannedRun,
    RunRecord,
    Status,
    fold_state,
    plan_runs,
    record_path,
    run_history,
    save_record,
    train_args,
)
from nnunet_swin.experiments.lock import RunLock, acquire_run_lock
from nnunet_swin.experiments.nnunet_files import atomic_write, epochs_from_logs, indent, is_progress_line, log_tail
from nnunet_swin.registration import ENV_VAR, append_to_env

Echo = Callable[[str], None]


def child_env(base: dict | None, gpu: str | None) -> dict:
    env = dict(os.environ if base is None else base)
    # The training process must import this very nnunet_swin (for the wrapper and the plugin trainers).
    pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    env[ENV_VAR] = append_to_env(env.get(ENV_VAR))  # nnU-Net finds the trainers even without the .pth hook
    env.setdefault("PYTHONUNBUFFERED", "1")  # lines reach the log (and the progress) as they are printed
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env


def worker_command(*args: str) -> list[str]:
    """A helper process of the studies (:mod:`nnunet_swin.experiments.worker`) with this interpreter."""
    return [sys.executable, "-m", "nnunet_swin.experiments.worker", *args]


def train_command(record_file: str, args: Sequence[str]) -> list[str]:
    """The training process for nnUNetv2_train ``args``: nnU-Net's entry point in the wrapper that records
    peak GPU memory into ``record_file``."""
    return worker_command("train", "--record", record_file, "--", *args)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


class Progress:
    """How far a study's runs are: their count, the time spent, and an estimate of what is left (the mean
    wall time of the runs trained so far, times the runs still to go)."""

    def __init__(self, total: int, echo: Echo):
        self.total, self.echo = total, echo
        self.start = time.time()
        self.finished = 0
        self.trained_s: list[float] = []
        self._lock = threading.Lock()

    def run_finished(self, trained_s: float | None) -> None:
        with self._lock:
            self.finished += 1
            if trained_s is not None:
                self.trained_s.append(trained_s)
            left = self.total - self.finished
            elapsed = time.time() - self.start
            text = f"[progress] {self.finished} of {self.total} runs done, {_minutes(elapsed)} elapsed"
            if left and self.trained_s:
                text += f"; about {_minutes(left * sum(self.trained_s) / len(self.trained_s))} left for {left} runs"
            self.echo(text)


class LockedEcho:
    """``echo`` for several threads at once: one line at a time."""

    def __init__(self, echo: Echo):
        self.echo, self.lock = echo, threading.Lock()

    def __call__(self, msg: str) -> None:
        with self.lock:
            self.echo(msg)


def _already_complete(job: Job, records_dir: str, fold_dir: str, echo: Echo) -> RunRecord:
    rec = RunRecord.from_history(job, Status.ALREADY_COMPLETE, FoldState.COMPLETE,
                                 run_history(job, records_dir, fold_dir), fold_dir)
    atomic_write(record_path(records_dir, job), json.dumps(rec.to_dict(), indent=2))  # the run's own stays
    echo(f"[skip] {job.name}: already complete")
    return rec


def run_one(job: Job, device: str, records_dir: str, logs_dir: str, gpu: str | None = None, environ=None,
            log_tail_lines: int = 40, echo: Echo = print, position: str = "") -> RunRecord:
    """Bring one job to completion (or report why not); writes its record JSON and returns it. ``position``
    ("3 of 8") is said when the run starts.

    The run is locked while it trains (:func:`acquire_run_lock`): a second runner for the same run waits
    for the first and then finds it complete, so no run is ever trained twice at once."""
    environ = os.environ if environ is None else environ
    os.makedirs(records_dir, exist_ok=True)
    fold_dir = job.fold_dir(environ)
    if fold_state(fold_dir) == FoldState.COMPLETE:
        return _already_complete(job, records_dir, fold_dir, echo)
    lock = acquire_run_lock(job.name, fold_dir, echo)
    try:
        state = fold_state(fold_dir)  # again: a runner we waited for has usually completed it
        if state == FoldState.COMPLETE:
            return _already_complete(job, records_dir, fold_dir, echo)
        planned = PlannedRun(job, state, train_args(job, device, state), gpu)
        return _train(planned, records_dir, logs_dir, environ, log_tail_lines, echo, lock, position)
    finally:
        lock.release()


def _follow(proc: subprocess.Popen, log, name: str, echo: Echo) -> int:
    """Copy the training's output into its log, passing its progress lines on prefixed with the run's name."""
    for line in proc.stdout:
        log.write(line)
        log.flush()
        if is_progress_line(line):
            echo(f"    {name}: {line.rstrip()[:200]}")
    return proc.wait()


def _peak_memory(mem_file: str) -> float | None:
    try:
        with open(mem_file) as f:
            peak = json.load(f).get("peak_gpu_mem_mb")
        os.unlink(mem_file)
        return peak
    except (OSError, ValueError):
        return None


def _train(planned: PlannedRun, records_dir: str, logs_dir: str, environ, log_tail_lines: int, echo: Echo,
           lock: RunLock, position: str) -> RunRecord:
    job, state, gpu = planned.job, planned.state, planned.gpu
    fold_dir = job.fold_dir(environ)
    os.makedirs(logs_dir, exist_ok=True)
    log_path = os.path.join(logs_dir, job.name + ".log")
    fd, mem_file = tempfile.mkstemp(prefix=job.name + ".", suffix=".mem.json", dir=records_dir)
    os.close(fd)
    os.unlink(mem_file)
    echo(f"[run{'' if gpu is None else ' gpu ' + str(gpu)}] {position + ': ' if position else ''}{planned.command()}")
    echo(f"    log: {log_path}")
    t0 = time.time()
    with open(log_path, "a") as log:
        log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {planned.command()}\n")
        log.flush()
        proc = subprocess.Popen(train_command(mem_file, planned.args), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace",
                                env=child_env(environ, gpu), stdin=subprocess.DEVNULL)
        try:
            lock.set_child(proc.pid)
            rc = _follow(proc, log, job.name, echo)
        except BaseException:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    wall = time.time() - t0
    peak = _peak_memory(mem_file)
    prev = run_history(job, records_dir, fold_dir)
    if state in (FoldState.RESUME, FoldState.NEEDS_VALIDATION) and prev.get("wall_time_s"):
        wall += float(prev["wall_time_s"])  # total over the interrupted and the resumed part
    if peak is not None and prev.get("peak_gpu_mem_mb") and state != FoldState.FRESH:
        peak = max(peak, float(prev["peak_gpu_mem_mb"]))
    error = ""
    if rc != 0:
        error = log_tail(log_path, log_tail_lines)
    elif fold_state(fold_dir) != FoldState.COMPLETE:
        error = (f"nnUNetv2_train exited 0 but {fold_dir} lacks checkpoint_final.pth or validation/summary.json.\n"
                 + log_tail(log_path, log_tail_lines))
    status = Status.FAILED if error else Status.COMPLETED
    rec = RunRecord(job=job, status=status, state_before=state, returncode=rc, wall_time_s=round(wall, 1),
                    epochs=epochs_from_logs(fold_dir), peak_gpu_mem_mb=peak, gpu=gpu, command=planned.command(),
                    log=log_path, error=error, fold_dir=fold_dir, finished_at=time.strftime("%Y-%m-%d %H:%M:%S"))
    save_record(records_dir, rec)
    if status == Status.FAILED:
        echo(f"[FAILED] {job.name} (exit code {rc}); last lines of {log_path}:\n{indent(error)}")
    else:
        echo(f"[done] {job.name} in {wall:.0f} s" + (f", peak GPU memory {peak:.0f} MiB" if peak else ""))
    return rec


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


def list_dry_run(jobs: Sequence[Job], device: str, gpus: Sequence[str] | None, environ, echo: Echo) -> RunReport:
    """The nnUNetv2_train commands that would run (records with status dry_run); nothing runs."""
    report = RunReport()
    for i, p in enumerate(plan_runs(jobs, device, environ)):
        if gpus:
            p.gpu = gpus[i % len(gpus)]
        cmd = p.command()
        echo(cmd if cmd else f"# {p.job.name}: already complete, nothing to run")
        report.records.append(RunRecord(job=p.job, status=Status.DRY_RUN, state_before=p.state, command=cmd,
                                        fold_dir=p.job.fold_dir(environ)))
    return report


class _Queue:
    """The jobs of one :func:`run_jobs` call, taken in order by one worker per GPU (or one worker)."""

    def __init__(self, jobs: Sequence[Job], device: str, out_dir: str, environ, log_tail_lines: int, echo: Echo):
        self.jobs, self.device, self.environ, self.log_tail_lines = list(jobs), device, environ, log_tail_lines
        self.records_dir, self.logs_dir = os.path.join(out_dir, "runs"), os.path.join(out_dir, "logs")
        self.echo = echo
        self.progress = Progress(len(self.jobs), echo)
        self.results: dict[int, RunRecord] = {}
        self.todo: queue.Queue = queue.Queue()
        for item in enumerate(self.jobs):
            self.todo.put(item)

    def run(self, i: int, job: Job, gpu: str | None) -> None:
        position = f"run {i + 1} of {len(self.jobs)}"
        try:
            rec = run_one(job, self.device, self.records_dir, self.logs_dir, gpu, self.environ, self.log_tail_lines,
                          self.echo, position=position)
        except Exception as e:  # a broken job (e.g. unknown dataset) must not stop the others
            rec = RunRecord(job=job, status=Status.FAILED, error=f"{type(e).__name__}: {e}")
            self.echo(f"[FAILED] {job.name}: {type(e).__name__}: {e}")
        self.results[i] = rec
        whole = rec.status == Status.COMPLETED and rec.state_before == FoldState.FRESH  # a whole training's time
        self.progress.run_finished(rec.wall_time_s if whole else None)

    def work(self, gpu: str | None) -> None:
        while True:
            try:
                i, job = self.todo.get_nowait()
            except queue.Empty:
                return
            self.run(i, job, gpu)

    def report(self) -> RunReport:
        return RunReport([self.results[i] for i in range(len(self.jobs))])


def run_jobs(jobs: Sequence[Job], out_dir: str, device: str = "cuda", gpus: str | Sequence | None = None,
             dry_run: bool = False, environ=None, log_tail_lines: int = 40, echo: Echo = print) -> RunReport:
    """Run ``jobs`` locally: sequentially, or with ``gpus`` one run per GPU at a time (queued).

    Logs go to ``<out_dir>/logs/<job>.log``, records to ``<out_dir>/runs/<job>.json``. With ``dry_run`` the
    nnUNetv2_train commands are printed (and returned as records with status dry_run), nothing runs."""
    environ = os.environ if environ is None else environ
    gpu_list = parse_gpus(gpus)
    if gpu_list and device != "cuda":
        raise ValueError(f"--gpus needs --device cuda (got --device {device})")
    if dry_run:
        return list_dry_run(jobs, device, gpu_list, environ, echo)
    os.makedirs(os.path.join(out_dir, "runs"), exist_ok=True)
    q = _Queue(jobs, device, out_dir, environ, log_tail_lines, LockedEcho(echo) if gpu_list else echo)
    if not gpu_list:
        q.work(None)
        return q.report()
    threads = [threading.Thread(target=q.work, args=(g,), daemon=True) for g in gpu_list]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)
    return q.report()


def summarize_report(report: RunReport) -> str:
    n = len(report.records)
    counts: dict[str, int] = {}
    for r in report.records:
        counts[Status(r.status).value] = counts.get(Status(r.status).value, 0) + 1
    parts = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    lines = [f"{n} runs: {parts}"]
    for r in report.failed:
        lines.append(f"  FAILED {r.job.name}: see {r.log or '(no log)'}")
    return "\n".join(lines)
