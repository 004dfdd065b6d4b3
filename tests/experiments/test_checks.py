"""The checks both studies make before any conversion or training (nnunet_swin/experiments/checks.py and
the checks in ablation.py / msd_benchmark.py), through the ``nnunet-swin`` command as a user runs it, on a
planned data set (plans and dataset.json in nnUNet_preprocessed): each refusal is one line on stderr, exit
code 2, within 30 s, before any nnUNetv2_train, and writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time

import pytest

from nnunet_swin.experiments import checks, msd
from nnunet_swin.experiments import msd_benchmark as mb

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = [sys.executable, "-m", "nnunet_swin.cli"]
DATASET = "Dataset004_Planned"


def _env(root: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update({var: os.path.join(root, var) for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    env["PYTHONPATH"] = REPO
    pre = os.path.join(env["nnUNet_preprocessed"], DATASET)
    os.makedirs(pre)
    json.dump({"configurations": {"2d": {}}}, open(os.path.join(pre, "nnUNetPlans.json"), "w"))
    json.dump({"numTraining": 2}, open(os.path.join(pre, "dataset.json"), "w"))
    os.makedirs(env["nnUNet_results"])
    return env


def _refused(env: dict, *args: str) -> str:
    """Run ``nnunet-swin ARGS``; assert a one-line refusal within 30 s that wrote nothing; return the line."""
    t0 = time.time()
    proc = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)
    took = time.time() - t0
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert took < 30, f"refused after {took:.0f} s"
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "nnUNetv2_train" not in proc.stdout and "[run" not in proc.stdout
    assert os.listdir(env["nnUNet_results"]) == []  # no report folder, no $nnUNet_results/<dataset>/
    return proc.stderr.strip()


def test_ablate_skips_refuses_bad_input_before_any_work(tmp_path):
    env = _env(str(tmp_path))
    base = ["ablate-skips", "-d", "4", "-f", "0"]
    line = _refused(env, *base, "-tr", "nnUNetTrainerSwinUnt_{k}skip", "-device", "cpu")
    assert line.startswith("ablate-skips: error: trainers nnUNetTrainerSwinUnt_0skip, nnUNetTrainerSwinUnt_1skip, "
                           "nnUNetTrainerSwinUnt_2skip, nnUNetTrainerSwinUnt_3skip: not found in "
                           "nnunetv2.training.nnUNetTrainer or on nnUNet_extTrainer; did you mean "
                           "nnUNetTrainerSwinUnet_0skip"), line
    assert _refused(env, *base, "--skips", "5", "-device", "cpu") == (
        "ablate-skips: error: --skips 5: Swin-Unet has 0 to 3 skip connections (nnUNetTrainerSwinUnet_{k}skip "
        "exists for k = 0, 1, 2, 3)")
    assert _refused(env, *base, "-c", "3d_fullres", "-device", "cpu") == (
        f"ablate-skips: error: {DATASET}: plans nnUNetPlans have no configuration 3d_fullres; they have 2d")
    # the same refusals in a dry run
    assert "did you mean" in _refused(env, *base, "-tr", "nnUNetTrainerSwinUnt_{k}skip", "-device", "cpu",
                                      "--dry-run")
    # a custom pattern whose trainer does not exist for some k is caught by nnU-Net's lookup
    assert "trainer MyOwn_4skip: not found" in _refused(env, *base, "-tr", "MyOwn_{k}skip", "--skips", "4",
                                                        "-device", "cpu", "--dry-run")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu_is_refused_and_names_cpu(tmp_path):
    env = _env(str(tmp_path))
    line = _refused(env, "ablate-skips", "-d", "4", "-f", "0")
    assert line == ("ablate-skips: error: --device cuda: torch sees no CUDA GPU on this machine; use --device cpu "
                    "(slow), or run on a GPU node or with --slurm")
    task = os.path.join(str(tmp_path), "Task04_Planned")
    os.makedirs(task)
    assert "--device cuda: torch sees no CUDA GPU" in _refused(env, "benchmark-msd", task, "-tr", "nnUNetTrainer",
                                                               "--dry-run")


def test_nnunet_flag_names_and_the_correct_dry_run_after_refusals(tmp_path):
    """``ablate-skips -d 4 -device cpu -f 0 --dry-run`` (nnU-Net's flags): after the refusals above the
    correct study's dry run is not blocked."""
    env = _env(str(tmp_path))
    _refused(env, "ablate-skips", "-d", "4", "-f", "0", "-tr", "Typo_{k}skip", "-device", "cpu")
    proc = subprocess.run([*CLI, "ablate-skips", "-d", "4", "-device", "cpu", "-f", "0", "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"nnUNetv2_train {DATASET} 2d 0 -tr nnUNetTrainerSwinUnet_{k}skip -p "
                                        "nnUNetPlans --npz -device cpu" for k in range(4)]
    assert os.listdir(env["nnUNet_results"]) == []


def test_a_truncated_plans_file_is_reported_as_such(tmp_path):
    env = _env(str(tmp_path))
    with open(os.path.join(env["nnUNet_preprocessed"], DATASET, "nnUNetPlans.json"), "w") as f:
        f.write('{"configurations": {"2d": {')
    line = _refused(env, "ablate-skips", "-d", "4", "-device", "cpu", "--dry-run")
    assert "nnUNetPlans.json cannot be read (JSONDecodeError" in line and "plan the data set again" in line
    assert "has no plans" not in line


def test_trainer_problem_suggests_close_names():
    known = ["nnUNetTrainer", "nnUNetTrainerSwinUnet_0skip", "nnUNetTrainerNoDA"]
    assert checks.trainer_problem(["nnUNetTrainr"], "RuntimeError: Could not find requested nnunet trainer", known) == (
        "trainer nnUNetTrainr: not found in nnunetv2.training.nnUNetTrainer or on nnUNet_extTrainer; did you mean "
        "nnUNetTrainer or nnUNetTrainerNoDA?")
    assert checks.trainer_problem(["Zzz"], "ImportError: no module named x", known).endswith(
        "ImportError: no module named x; `nnunet-swin trainers` lists ours")


def test_msd_dry_run_reports_each_malformed_task_as_skipped(tmp_path):
    """A cut-off dataset.json, one without "modality" and a truncated archive: the dry run checks them as the
    real run does and reports each as [SKIPPED] with its reason, lists the good task's commands, and
    converts nothing."""
    from nnunet_swin.synthetic import write_msd_task

    env = {var: str(tmp_path / var) for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    dl = str(tmp_path / "dl")
    good = write_msd_task(dl, "Task05_Good", num_train=2, num_test=0, shape=(2, 8, 8))
    cut = write_msd_task(dl, "Task06_Cut", num_train=2, num_test=0, shape=(2, 8, 8))
    text = open(os.path.join(cut, "dataset.json")).read()
    open(os.path.join(cut, "dataset.json"), "w").write(text[: len(text) // 2])
    nomod = write_msd_task(dl, "Task07_NoModality", num_train=2, num_test=0, shape=(2, 8, 8))
    meta = json.load(open(os.path.join(nomod, "dataset.json")))
    del meta["modality"]
    json.dump(meta, open(os.path.join(nomod, "dataset.json"), "w"))
    packed = write_msd_task(str(tmp_path / "src"), "Task08_Truncated", num_train=2, num_test=0, shape=(2, 8, 8))
    archive = os.path.join(dl, "Task08_Truncated.tar")
    with tarfile.open(archive, "w") as tf:
        tf.add(packed, arcname="Task08_Truncated")
    os.truncate(archive, os.path.getsize(archive) // 2)
    lines: list[str] = []
    o = mb.Options([dl], trainers=["nnUNetTrainer"], folds=["0"], device="cpu", dry_run=True)
    assert mb.run_benchmark(o, env, lines.append) == 1  # problems: the exit code says so
    skipped = [line for line in lines if line.startswith("[SKIPPED]")]
    assert len(skipped) == 3, lines
    assert skipped[0].startswith(f"[SKIPPED] {cut}: malformed MSD task:\n  dataset.json cannot be read as JSON")
    assert skipped[1].startswith(f"[SKIPPED] {nomod}: malformed MSD task:\n  dataset.json: \"modality\" must be")
    with pytest.raises(msd.TaskError) as real:  # what the real run says when it unpacks it
        msd.extract_task_archive(archive, str(tmp_path / "unpack"))
    assert skipped[2] == f"[SKIPPED] {real.value}" and "cannot unpack (ReadError" in skipped[2]
    converts = [line for line in lines if line.startswith("nnUNetv2_convert_MSD_dataset")]
    assert converts == [f"nnUNetv2_convert_MSD_dataset -i {good} -overwrite_id 5 -np 4"]
    assert any(line.startswith("nnUNetv2_train Dataset005_Good 2d 0 -tr nnUNetTrainer") for line in lines)
    assert not os.path.exists(env["nnUNet_raw"]) and not os.path.exists(env["nnUNet_results"])
