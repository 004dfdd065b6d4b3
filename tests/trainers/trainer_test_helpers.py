"""Helpers for the trainer tests: temporary nnU-Net folders and nnU-Net's real console scripts run in
subprocesses on the CPU (a uniquely named module so it never clashes with other test folders)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
DATASET_ID = 990  # planned patch 112 x 80 (not a multiple of 32), 10 training + 3 held-out cases
#: A network small enough for in-process tests of every trainer (Swin-Unet's four stages, 1 block each).
TINY_NETWORK = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), drop_path_rate=0.0)


def small_plans(patch=(64, 64), dataset_name: str = "Dataset991_Small") -> dict:
    """A minimal 2d plans dict a trainer can be constructed from (no preprocessed data needed)."""
    arch = {"network_class_name": "unused", "arch_kwargs": {"strides": [[1, 1], [2, 2]]}, "_kw_requires_import": []}
    config = {"data_identifier": "nnUNetPlans_2d", "patch_size": list(patch), "batch_size": 2, "batch_dice": True,
              "spacing": [1.0, 1.0], "architecture": arch}
    return {"dataset_name": dataset_name, "plans_name": "nnUNetPlans", "configurations": {"2d": config},
            "continue_training": False}


def dataset_json(num_labels: int) -> dict:
    """dataset.json with background plus ``num_labels`` foreground labels."""
    labels = {"background": 0, **{f"l{i}": i for i in range(1, num_labels + 1)}}
    return {"labels": labels, "channel_names": {"0": "x"}, "numTraining": 1, "file_ending": ".png"}


def nnunet_bin(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} not installed")
    return found


def run(cmd: list[str], env: dict, timeout: float = 600, check: bool = True, cwd: str | None = None):
    """Run a command, return the CompletedProcess; on failure show the output tail."""
    t0 = time.time()
    proc = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    out = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed with exit code {proc.returncode} after "
                             f"{time.time() - t0:.0f} s:\n{out[-6000:]}")
    proc.output = out
    return proc


class Workspace:
    def __init__(self, root: Path):
        self.root = root
        self.raw, self.pre, self.res = root / "raw", root / "preprocessed", root / "results"
        self.user_ext = root / "user_ext"  # the user's own trainer directory
        for d in (self.raw, self.pre, self.res, self.user_ext):
            d.mkdir(parents=True, exist_ok=True)
        shutil.copy(HERE / "user_trainers.py", self.user_ext / "user_trainers.py")
        from nnunet_swin.registration import register

        env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
        env.update(nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.pre), nnUNet_results=str(self.res),
                   nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1", nnUNet_compile="f", OMP_NUM_THREADS="2",
                   PYTHONPATH=str(REPO) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""))
        # The user's value first; the plugin's directory appended, as the installed .pth hook does.
        env["nnUNet_extTrainer"] = str(self.user_ext)
        register(env)
        self.env = env

    def results_folder(self, trainer: str, dataset: str = "Dataset990_SwinSynthetic") -> Path:
        return self.res / dataset / f"{trainer}__nnUNetPlans__2d"

    def train(self, trainer: str, fold="0", *extra: str, dataset_id: int = DATASET_ID, env: dict | None = None,
              check: bool = True):
        return run([nnunet_bin("nnUNetv2_train"), str(dataset_id), "2d", str(fold), "-tr", trainer,
                    "-device", "cpu", *extra], env or self.env, check=check)
