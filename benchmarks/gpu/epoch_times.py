"""Short trainers for benchmarks/gpu/compile_and_train.sh, and the summary of their epoch times.

nnU-Net imports this file from ``nnUNet_extTrainer`` (the script copies it there) to find the trainers;
``python epoch_times.py RESULTS_DIR OUT.json`` reads the training logs nnU-Net wrote under RESULTS_DIR and
reports, per trainer, epoch 0 (which includes torch.compile), the steady seconds per epoch (median of the
later epochs) and their difference, the compile time as a user sees it. Partial logs (a run stopped by the
script's time limit) are summarized as far as they go.
"""
from __future__ import annotations

import glob
import json
import os
import re
import statistics
import sys

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_swin.experiments.nnunet_files import atomic_write
from nnunet_swin.trainers import ShortSchedule, nnUNetTrainerSwinUnet


class _Short(ShortSchedule):
    # the smoke run on the CPU shortens these through the environment
    epochs = int(os.environ.get("NNUNET_SWIN_BENCH_EPOCHS", 5))
    iterations = int(os.environ.get("NNUNET_SWIN_BENCH_ITERS", 50))
    val_iterations = int(os.environ.get("NNUNET_SWIN_BENCH_VAL_ITERS", 10))


class nnUNetTrainerSwinUnet_bench(_Short, nnUNetTrainerSwinUnet):
    pass


class nnUNetTrainer_bench(_Short, nnUNetTrainer):
    pass


_EPOCH_TIME = re.compile(r"Epoch time: ([0-9.]+) s")


def epoch_summary(log_text: str) -> dict:
    """Epoch times of one nnU-Net training log: epoch 0, steady (median of epochs 1..), their difference."""
    times = [float(t) for t in _EPOCH_TIME.findall(log_text)]
    steady = statistics.median(times[1:]) if len(times) > 1 else None
    return {"epochs_done": len(times), "epoch_s": times, "epoch0_s": times[0] if times else None,
            "steady_s_per_epoch": steady,
            "compile_s": times[0] - steady if steady is not None else None,
            "compiled": "Using torch.compile" in log_text}


def summarize(results_dir: str) -> dict:
    """{trainer: epoch_summary} over every ``training_log_*.txt`` under ``results_dir`` (latest per trainer)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(results_dir, "**", "training_log_*.txt"), recursive=True)):
        trainer = os.path.basename(os.path.dirname(os.path.dirname(path))).split("__")[0]
        with open(path) as f:
            out[trainer] = {"log": path, **epoch_summary(f.read())}
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python epoch_times.py NNUNET_RESULTS_DIR OUT.json")
        return 2
    summary = summarize(argv[0])
    atomic_write(argv[1], json.dumps(summary, indent=1))
    print("| trainer | compiled | epochs | epoch 0 s | steady s/epoch | compile s (epoch 0 - steady) |")
    print("|---|---|---:|---:|---:|---:|")
    for trainer, s in summary.items():
        cells = [f"{v:.1f}" if isinstance(v, float) else "-" for v in
                 (s["epoch0_s"], s["steady_s_per_epoch"], s["compile_s"])]
        print(f"| {trainer} | {s['compiled']} | {s['epochs_done']} | " + " | ".join(cells) + " |")
    return 0 if summary else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
