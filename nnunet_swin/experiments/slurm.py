"""SLURM: a submit script that trains a study's runs as a job array and then aggregates them.

Owns the script (:func:`write_slurm_script`, from the templates below), splitting ``--slurm-option`` values
into sbatch arguments and which of them go to which job, and the ``--array`` index list. Each array task
runs ``python -m nnunet_swin.experiments.worker run-job`` (one job with the resume logic and the lock of
:mod:`nnunet_swin.experiments.local`); which tasks to submit is decided on the login node at submission
(``worker pending``). Only the standard library is imported.
"""

from __future__ import annotations

import json
import os
import shlex
import string
import sys
import time
from typing import Sequence

from nnunet_swin.experiments.jobs import TRAIN_PROGRAM, Job, train_args
from nnunet_swin.experiments.nnunet_files import NNUNET_PATH_VARS, atomic_write

#: Extra environment variables passed on to SLURM jobs when set here.
PASSED_ENV_VARS = NNUNET_PATH_VARS + ("nnUNet_extTrainer", "nnUNet_n_proc_DA", "nnUNet_def_n_proc",
                                      "nnUNet_compile", "NNUNET_SWIN_PRETRAINED")
#: sbatch options that request GPUs: they go to the array tasks only (the aggregation needs none).
GPU_OPTION_PREFIXES = ("--gres", "--gpus", "--gpu-", "--cpus-per-gpu", "--mem-per-gpu", "-G")


class _Template(string.Template):
    """``@name`` placeholders: ``$`` belongs to bash in these scripts."""

    delimiter = "@"


SUBMIT_SCRIPT = _Template("""\
#!/usr/bin/env bash
# Written by nnunet_swin.experiments.slurm on @date.
# Submit with:  bash @script      (runs sbatch; do not sbatch this file)
# Array: one task per run of the @n below that is not complete when this script runs; then the
# aggregation job (afterany: it runs after every task has ended, failed ones included).
# A task whose nnU-Net result folder is complete does nothing; an interrupted one continues (--c).
# Task -> equivalent nnU-Net command:
@commands
set -euo pipefail
@env
mkdir -p @log_dir

TODO=$(@pending <<'NNUNET_JOBS'
@jobs_json
NNUNET_JOBS
)
DEPENDENCY=""
if [ -n "$TODO" ]; then
ARRAY_ID=$(sbatch --parsable --job-name=@job_name --array="$TODO"@max_parallel --chdir=@out_dir \
--output=@array_log @array_options <<'NNUNET_ARRAY'
#!/usr/bin/env bash
set -euo pipefail
@env
case "${SLURM_ARRAY_TASK_ID}" in
@cases
  *) echo "unknown array index ${SLURM_ARRAY_TASK_ID}" >&2; exit 2 ;;
esac
NNUNET_ARRAY
)
ARRAY_ID="${ARRAY_ID%%;*}"
DEPENDENCY="--dependency=afterany:${ARRAY_ID}"
echo "submitted array job ${ARRAY_ID}: tasks ${TODO} of 0-@last (the others are complete)"
else
echo "all @n runs are complete; no array job"
fi
""")

AGGREGATION = _Template("""\
AGG_ID=$(sbatch --parsable --job-name=@job_name ${DEPENDENCY:+"$DEPENDENCY"} --chdir=@out_dir \
--output=@aggregate_log @aggregate_options <<'NNUNET_AGGREGATE'
#!/usr/bin/env bash
set -euo pipefail
@env
exec @command
NNUNET_AGGREGATE
)
echo "submitted aggregation job ${AGG_ID%%;*} (runs after the array has ended, failed tasks included)"
""")


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


def sbatch_options_per_job(options: Sequence[str], device: str, cpus_per_task: int) -> tuple[list[str], list[str]]:
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


def run_job_args(job: Job, out_dir: str, device: str) -> list[str]:
    """``worker run-job`` arguments for one array task."""
    args = ["run-job", "--out", out_dir, "--device", device, "--dataset", job.dataset, "--configuration",
            job.configuration, "--fold", job.fold, "--trainer", job.trainer, "--plans", job.plans]
    for k, v in job.tags:
        args += ["--tag", f"{k}={v}"]
    return args + [f"--extra-arg={a}" for a in job.extra_args]


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
       skips a run found complete and continues an interrupted one with ``--c``),
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
    array_opts, aggregate_opts = sbatch_options_per_job(sbatch_options, device, cpus_per_task)
    log_dir = os.path.join(out_dir, "slurm_logs")
    pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    q = shlex.quote
    worker = [python, "-m", "nnunet_swin.experiments.worker"]
    common = {"env": _env_exports(environ, pkg_parent), "out_dir": q(out_dir)}
    text = SUBMIT_SCRIPT.substitute(
        common, date=time.strftime("%Y-%m-%d %H:%M:%S"), script=q(os.path.abspath(path)), n=len(jobs),
        last=len(jobs) - 1,
        commands="\n".join(f"#   {i}: {shlex.join([TRAIN_PROGRAM, *train_args(job, device)])}"
                           for i, job in enumerate(jobs)),
        log_dir=q(log_dir), pending=shlex.join([*worker, "pending"]),
        jobs_json=json.dumps([j.to_dict() for j in jobs]), job_name=q(job_name),
        max_parallel=f"%{max_parallel}" if max_parallel else "",
        array_log=q(os.path.join(log_dir, job_name + "_%A_%a.log")), array_options=" ".join(map(q, array_opts)),
        cases="\n".join(f"  {i}) exec {shlex.join([*worker, *run_job_args(job, out_dir, device)])} ;;"
                        for i, job in enumerate(jobs)))
    if aggregate_command:
        text += AGGREGATION.substitute(
            common, job_name=q(job_name + "_aggregate"),
            aggregate_log=q(os.path.join(log_dir, job_name + "_aggregate_%j.log")),
            aggregate_options=" ".join(map(q, aggregate_opts)), command=shlex.join(list(aggregate_command)))
    atomic_write(path, text)
    os.chmod(path, 0o755)
    return text
