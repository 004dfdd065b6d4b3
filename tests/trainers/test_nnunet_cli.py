"""End to end through nnU-Net's own console scripts in subprocesses, on the CPU, with short subclasses of
the plugin's trainers living in a user-set ``nnUNet_extTrainer`` directory (the plugin's directory is
appended after it): plan, train (every skip count), predict, evaluate, resume with ``--c``, 5 folds of
two trainers + ``nnUNetv2_find_best_configuration`` + ``nnUNetv2_ensemble``, real ISBI 2012 data, and
``nnunet-swin demo``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer_test_helpers import DATASET_ID, REPO, nnunet_bin, run

pytestmark = pytest.mark.slow


def _predict(ws, trainer, out: Path, folds=("0",), *extra):
    return run([nnunet_bin("nnUNetv2_predict"), "-i", str(Path(ws.raw) / "Dataset990_SwinSynthetic" / "imagesTs"),
                "-o", str(out), "-d", str(DATASET_ID), "-c", "2d", "-tr", trainer, "-f", *folds, "-device", "cpu",
                "-npp", "1", "-nps", "1", *extra], ws.env)


def test_train_predict_evaluate_on_a_112x80_plan(planned, workspace):
    plans = json.loads((workspace.pre / "Dataset990_SwinSynthetic" / "nnUNetPlans.json").read_text())
    assert plans["configurations"]["2d"]["patch_size"] == [112, 80]  # the example plan

    proc = workspace.train("TestSwin_1skip")
    assert "Using trainer 'TestSwin_1skip' from: " + str(workspace.user_ext) in proc.output
    assert "patch size changed from the planned [112, 80] to [128, 96]" in proc.output
    folder = workspace.results_folder("TestSwin_1skip")
    saved = json.loads((folder / "plans.json").read_text())
    assert saved["configurations"]["2d"]["patch_size"] == [128, 96]  # what predict/ensemble/export read
    assert (folder / "fold_0" / "checkpoint_final.pth").exists()
    assert (folder / "fold_0" / "validation" / "summary.json").exists()

    out = workspace.root / "pred_1skip"
    _predict(workspace, "TestSwin_1skip", out)
    cases = sorted(p.name for p in out.glob("*.png"))
    assert cases == [f"syn_test_{i:03d}.png" for i in range(3)]
    gt = Path(planned.labels_ts)
    run([nnunet_bin("nnUNetv2_evaluate_simple"), str(gt), str(out), "-l", "1", "2", "-np", "1"], workspace.env)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2"}
    assert all(0.0 <= summary["mean"][k]["Dice"] <= 1.0 for k in ("1", "2"))


def test_resume_with_c_continues_at_the_right_epoch(planned, workspace):
    trainer = "TestSwin_2skip"
    env = {**workspace.env, "NNUNET_SWIN_TEST_EPOCHS": "3", "NNUNET_SWIN_TEST_CRASH_AT": "2"}
    proc = workspace.train(trainer, env=env, check=False)
    assert proc.returncode != 0 and "simulated interruption" in proc.output
    fold = workspace.results_folder(trainer) / "fold_0"
    assert (fold / "checkpoint_latest.pth").exists() and not (fold / "checkpoint_final.pth").exists()
    logs_before = set(fold.glob("training_log_*.txt"))

    env.pop("NNUNET_SWIN_TEST_CRASH_AT")
    proc = workspace.train(trainer, "0", "--c", env=env)
    new_logs = set(fold.glob("training_log_*.txt")) - logs_before
    text = "".join(p.read_text() for p in new_logs) if new_logs else proc.output
    epochs = [int(line.split("Epoch ")[1].split()[0]) for line in proc.output.splitlines()
              if ": Epoch " in line and line.split("Epoch ")[1].split()[0].isdigit()]
    assert epochs == [2], f"resumed run trained epochs {epochs}, expected only epoch 2\n{text[-2000:]}"
    import torch

    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 3 and ckpt["trainer_name"] == trainer


def _train_folds(workspace, trainers, folds=range(5), parallel=2):
    """Train every (trainer, fold) with --npz, ``parallel`` nnUNetv2_train processes at a time (they are
    mostly start-up and I/O at this size)."""
    jobs = [(t, f) for t in trainers for f in folds]
    env = {**workspace.env, "OMP_NUM_THREADS": "1"}
    while jobs:
        batch, jobs = jobs[:parallel], jobs[parallel:]
        procs = [(t, f, subprocess.Popen([nnunet_bin("nnUNetv2_train"), str(DATASET_ID), "2d", str(f), "-tr", t,
                                          "-device", "cpu", "--npz"], env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True)) for t, f in batch]
        for t, f, p in procs:
            out, _ = p.communicate(timeout=900)
            assert p.returncode == 0, f"{t} fold {f} failed:\n{out[-5000:]}"


def test_five_folds_find_best_configuration_and_ensemble(planned, workspace):
    trainers = ["TestSwin_0skip", "TestSwin_3skip_DS"]
    _train_folds(workspace, trainers)
    for t in trainers:
        for f in range(5):
            assert list((workspace.results_folder(t) / f"fold_{f}" / "validation").glob("*.npz"))

    proc = run([nnunet_bin("nnUNetv2_find_best_configuration"), str(DATASET_ID), "-c", "2d", "-tr", *trainers,
                "-np", "1"], workspace.env)
    instructions = workspace.res / "Dataset990_SwinSynthetic" / "inference_instructions.txt"
    assert instructions.exists(), proc.output[-3000:]
    text = instructions.read_text()
    assert "nnUNetv2_predict" in text and any(t in text for t in trainers)

    outs = []
    for t in trainers:
        out = workspace.root / f"pred5_{t}"
        _predict(workspace, t, out, ("0", "1", "2", "3", "4"), "--save_probabilities")
        assert len(list(out.glob("*.npz"))) == 3
        outs.append(out)
    ens = workspace.root / "ensemble"
    run([nnunet_bin("nnUNetv2_ensemble"), "-i", *map(str, outs), "-o", str(ens), "-np", "1"], workspace.env)
    assert sorted(p.name for p in ens.glob("*.png")) == [f"syn_test_{i:03d}.png" for i in range(3)]


def test_isbi2012_membrane_dice_clearly_above_trivial(workspace):
    from nnunet_swin.synthetic import find_isbi2012, write_isbi2012_dataset

    source = find_isbi2012(str(REPO))
    if source is None:
        pytest.skip("ISBI 2012 data not found (../shared/data/isbi2012-membrane)")
    ds = write_isbi2012_dataset(source, str(workspace.raw), 991, "ISBI2012", size=128)
    run([nnunet_bin("nnUNetv2_plan_and_preprocess"), "-d", "991", "-c", "2d", "-np", "1", "-npfp", "1"],
        {**workspace.env, "nnUNet_n_proc_DA": "1"})
    workspace.train("TestSwin_ISBI", "0", dataset_id=991)
    summary = json.loads((workspace.results_folder("TestSwin_ISBI", ds.folder.rsplit(os.sep, 1)[-1])
                          / "fold_0" / "validation" / "summary.json").read_text())
    dice = summary["mean"]["1"]["Dice"]
    # trivial predictions: all membrane -> 2p/(1+p) with p the membrane fraction; all background -> 0
    from PIL import Image

    gts = [np.asarray(Image.open(p)) for p in Path(ds.folder, "labelsTr").glob("*.png")]
    p = float(np.mean([g.mean() for g in gts]))
    trivial = 2 * p / (1 + p)
    assert dice > trivial + 0.1, f"membrane Dice {dice:.3f} not clearly above the trivial {trivial:.3f}"


def test_demo_command(tmp_path, workspace):
    env = {k: v for k, v in workspace.env.items() if not k.startswith("nnUNet_")}
    env.update(nnUNet_extTrainer=workspace.env["nnUNet_extTrainer"])
    proc = run([sys.executable, "-m", "nnunet_swin.cli", "demo", "--workdir", str(tmp_path / "demo"),
                "--epochs", "1", "--iters", "2", "--num-train", "8", "--num-test", "2", "--size", "64", "64",
                "--device", "cpu"], env, timeout=900)
    assert "Dice on the held-out cases" in proc.output and "mean foreground" in proc.output
    assert (tmp_path / "demo" / "overlay.png").exists()
    for step in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert step in proc.output
