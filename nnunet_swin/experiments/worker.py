"""The helper processes the studies start: ``python -m nnunet_swin.experiments.worker COMMAND ...``.

Owns only their command lines; the work is done by the modules named below. Not a user command (users
run ``nnunet-swin ablate-skips`` / ``benchmark-msd``):

* ``train --record FILE -- <nnUNetv2_train args>``: nnU-Net's own training entry point, plus a JSON record of
  peak GPU memory written even when training fails (the training process of every run);
* ``run-job --out DIR --dataset D ...``: one job with the resume logic and the lock (each SLURM array task);
* ``pending < jobs.json``: the ``--array`` indices of the runs not complete now (the SLURM submit script);
* ``preflight [--trainer NAME ...]``: nnU-Net's trainer lookup and the devices torch sees, as JSON
  (:mod:`nnunet_swin.experiments.checks`);
* ``model-cost`` and ``find-best``: the MSD benchmark's measurements in nnU-Net's predictor and nnU-Net's
  ``find_best_configuration`` (:mod:`nnunet_swin.experiments.models`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from nnunet_swin.experiments.checks import preflight_report
from nnunet_swin.experiments.jobs import TRAIN_PROGRAM, FoldState, Job, fold_state
from nnunet_swin.experiments.local import run_one
from nnunet_swin.experiments.models import measure_model_cost, run_find_best_configuration
from nnunet_swin.experiments.nnunet_files import atomic_write
from nnunet_swin.experiments.slurm import array_spec

PROG = "python -m nnunet_swin.experiments.worker"


def _train(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"{PROG} train")
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


def _run_job(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"{PROG} run-job")
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


def _pending(argv: list[str]) -> int:
    argparse.ArgumentParser(prog=f"{PROG} pending").parse_args(argv)
    jobs = [Job.from_dict(d) for d in json.load(sys.stdin)]
    print(array_spec([i for i, job in enumerate(jobs) if fold_state(job.fold_dir()) != FoldState.COMPLETE]))
    return 0


def _preflight(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"{PROG} preflight")
    p.add_argument("--trainer", action="append", default=[])
    a = p.parse_args(argv)
    print(json.dumps(preflight_report(a.trainer)))
    return 0


def _model_cost(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"{PROG} model-cost")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--fold", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    atomic_write(a.out, json.dumps(measure_model_cost(a.model_dir, a.fold)))
    return 0


def _find_best(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"{PROG} find-best")
    p.add_argument("-d", required=True)
    p.add_argument("-f", nargs="+", type=int, required=True)
    p.add_argument("-np", type=int, default=4)
    p.add_argument("--model", nargs=3, action="append", required=True, metavar=("TRAINER", "PLANS", "CONFIGURATION"))
    p.add_argument("--disable-ensembling", action="store_true")
    a = p.parse_args(argv)
    run_find_best_configuration(a.d, a.model, a.f, not a.disable_ensembling, a.np)
    return 0


COMMANDS = {"train": _train, "run-job": _run_job, "pending": _pending, "preflight": _preflight,
            "model-cost": _model_cost, "find-best": _find_best}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: {PROG} {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
