"""Tests of the job runner and the skip ablation (``nnunet-swin ablate-skips``).

The end-to-end tests train short Swin-Unet trainers (``MyShort_{k}skip``: tiny network, 1 epoch of 2
iterations) through nnU-Net's own ``nnUNetv2_train`` on the CPU, on a tiny synthetic data set (8 cases of
64 x 64, 2 folds). They share one trained ablation (module-scoped fixture). Aggregation details are tested
on hand-made nnU-Net result folders, which is fast.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from nnunet_swin.experiments import ablation, checks, local, nnunet_files
from nnunet_swin.experiments import jobs as jobmod

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATASET_ID = 977
DATASET = f"Dataset{DATASET_ID:03d}_AblTiny"
CLI = [sys.executable, "-m", "nnunet_swin.cli", "ablate-skips"]

TRAINER_MODULE = '''
"""Short Swin-Unet trainers for the ablation tests (nnU-Net finds them through nnUNet_extTrainer)."""
from nnunet_swin.trainers import (ShortSchedule, nnUNetTrainerSwinUnet_0skip, nnUNetTrainerSwinUnet_1skip,
                                  nnUNetTrainerSwinUnet_2skip, nnUNetTrainerSwinUnet_3skip)

TINY = {"embed_dim": 8, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "window_size": 4,
        "drop_path_rate": 0.0}


class _Short(ShortSchedule):
    network_options = TINY
    epochs, iterations, val_iterations = 1, 2, 1
    threads = 1  # 2 shared cores: threads only contend


class MyShort_0skip(_Short, nnUNetTrainerSwinUnet_0skip):
    pass


class MyShort_1skip(_Short, nnUNetTrainerSwinUnet_1skip):
    pass


class MyShort_2skip(_Short, nnUNetTrainerSwinUnet_2skip):
    pass


class MyShort_3skip(_Short, nnUNetTrainerSwinUnet_3skip):
    pass
'''


# --- helpers -----------------------------------------------------------------------------------------
def _env(root: str) -> dict:
    env = dict(os.environ)
    env.update({
        "nnUNet_raw": os.path.join(root, "raw"),
        "nnUNet_preprocessed": os.path.join(root, "preprocessed"),
        "nnUNet_results": os.path.join(root, "results"),
        "nnUNet_extTrainer": os.path.join(root, "ext"),
        "nnUNet_n_proc_DA": "0",     # data augmentation in the training process
        "nnUNet_def_n_proc": "1",    # one export worker in nnU-Net's validation
        "nnUNet_compile": "f",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    })
    return env


def _run(cmd, env, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _no_temp_files(folder: str) -> bool:
    return not [n for n in os.listdir(folder) if n.endswith(".tmp")]


def _plan_and_preprocess(env: dict, dataset_id: int, configuration: str) -> None:
    """nnU-Net's own plan_and_preprocess with one worker each (its default of 8 fingerprint workers spawns 8
    interpreters for a few small images), without the (slow) integrity check."""
    plan_env = dict(env, nnUNet_n_proc_DA="1")  # the planner sets torch threads from it (0 is refused)
    proc = _run([sys.executable, "-c", "from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import "
                 "plan_and_preprocess_entry as m; m()", "-d", str(dataset_id), "-c", configuration, "-np", "1",
                 "-npfp", "1"], plan_env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


# --- the shared tiny nnU-Net set-up and trained ablation ----------------------------------------------
@pytest.fixture(scope="module")
def nnunet_root(tmp_path_factory):
    """nnU-Net folders with the tiny data set planned and preprocessed (2d) and 2 folds of 4 cases."""
    from nnunet_swin.synthetic import write_synthetic_dataset

    root = str(tmp_path_factory.mktemp("abl"))
    env = _env(root)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        os.makedirs(env[var], exist_ok=True)
    write_synthetic_dataset(env["nnUNet_raw"], DATASET_ID, "AblTiny", num_train=8, num_test=0, shape=(64, 64), seed=1)
    _plan_and_preprocess(env, DATASET_ID, "2d")
    cases = sorted(n[: -len(".png")] for n in os.listdir(os.path.join(env["nnUNet_raw"], DATASET, "labelsTr")))
    splits = [{"train": cases[4:], "val": cases[:4]}, {"train": cases[:4], "val": cases[4:]}]
    with open(os.path.join(env["nnUNet_preprocessed"], DATASET, "splits_final.json"), "w") as f:
        json.dump(splits, f)
    return root


BROKEN_2SKIP = """class MyShort_2skip(_Short, nnUNetTrainerSwinUnet_2skip):
    def on_train_start(self):
        raise RuntimeError("MyShort_2skip is broken on purpose")
"""


@pytest.fixture(scope="module")
def trained(nnunet_root):
    """The full ablation, 4 skip counts x 2 folds on the CPU through the command line, in four calls:

    1. ``MyShort_2skip`` does not exist: the study is refused before anything runs (nnU-Net's lookup);
    2. ``MyShort_2skip`` exists but fails when training starts: its two runs fail, the six others train;
    3. after fixing it, the same command trains only the two missing runs;
    4. the same command again trains nothing.
    """
    env = _env(nnunet_root)
    module = os.path.join(env["nnUNet_extTrainer"], "ablation_test_trainers.py")
    good_2 = "class MyShort_2skip(_Short, nnUNetTrainerSwinUnet_2skip):\n    pass\n"
    assert good_2 in TRAINER_MODULE
    with open(module, "w") as f:
        f.write(TRAINER_MODULE.replace(good_2, ""))
    out = os.path.join(nnunet_root, "ablation_out")
    cmd = [*CLI, "-d", str(DATASET_ID), "--folds", "0", "1", "--trainer-pattern", "MyShort_{k}skip",
           "--device", "cpu", "--out", out]
    t0 = time.time()
    calls = {"typo": _run(cmd, env), "typo_took": time.time() - t0,
             "results_after_typo": sorted(os.listdir(os.path.join(env["nnUNet_results"])))}
    with open(module, "w") as f:
        f.write(TRAINER_MODULE.replace(good_2, BROKEN_2SKIP))
    calls["with_failures"] = _run(cmd, env)
    calls["runs_csv_after_failures"] = _read_csv(os.path.join(out, "runs.csv"))
    calls["summary_md_after_failures"] = open(os.path.join(out, "summary.md")).read()
    with open(module, "w") as f:
        f.write(TRAINER_MODULE)
    calls["complete"] = _run(cmd, env)
    calls["runs_csv_after_complete"] = _read_csv(os.path.join(out, "runs.csv"))
    calls["again"] = _run(cmd, env)
    calls["took"] = time.time() - t0
    return {"root": nnunet_root, "env": env, "out": out, "cmd": cmd, **calls}


def _results_folder(trained, k: int, fold: int) -> str:
    return os.path.join(trained["env"]["nnUNet_results"], DATASET, f"MyShort_{k}skip__nnUNetPlans__2d", f"fold_{fold}")


# --- end to end ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_trainer_nnunet_cannot_find_is_refused_before_any_run(trained):
    proc = trained["typo"]
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = proc.stderr.strip()
    assert line.startswith("ablate-skips: error: trainer MyShort_2skip: not found in nnunetv2.training.nnUNetTrainer "
                           "or on nnUNet_extTrainer; did you mean ") and "\n" not in line
    assert sorted(line.split("did you mean ")[1].rstrip("?").split(" or ")) == [f"MyShort_{k}skip" for k in (0, 1, 3)]
    assert "[run" not in proc.stdout and trained["typo_took"] < 30
    assert trained["results_after_typo"] == []  # no report folder, no $nnUNet_results/<dataset>/


@pytest.mark.slow
def test_failed_runs_are_reported_and_the_others_go_on(trained):
    """MyShort_2skip fails when training starts: both its runs fail with the error in the printed log tail,
    the 0-, 1- and 3-skip runs (before and after them) still train, and the exit code is non-zero."""
    proc = trained["with_failures"]
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.count("[FAILED]") == 2
    failed_block = proc.stdout.split("[FAILED]")[1]
    assert "RuntimeError: MyShort_2skip is broken on purpose" in failed_block  # the log tail
    assert proc.stdout.count("[done]") == 6
    assert proc.stdout.index("[FAILED]") < proc.stdout.rindex("[done]")  # runs after the failure went on
    runs = {(r["skips"], r["fold"]): r for r in trained["runs_csv_after_failures"]}
    assert {k: r["status"] for k, r in runs.items()} == {
        (str(k), str(f)): ("failed" if k == 2 else "completed") for k in range(4) for f in range(2)}
    assert runs[("2", "0")]["returncode"] not in ("", "0") and "MyShort_2skip" in runs[("2", "0")]["error"]
    assert os.path.isfile(runs[("2", "0")]["log"])
    md = trained["summary_md_after_failures"]
    assert "## Missing" in md and "2 skips, fold 0 (MyShort_2skip)" in md


@pytest.mark.slow
def test_full_two_fold_run_writes_the_report(trained):
    proc, out = trained["complete"], trained["out"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # only the two missing runs were trained by this call
    assert proc.stdout.count("[run]") == 2 and proc.stdout.count("already complete") == 6
    assert "MyShort_2skip -p nnUNetPlans --npz -device cpu" in proc.stdout
    # progress: run i of N with its log, nnU-Net's epoch lines while it trains, then time spent and left
    name = f"{DATASET}__MyShort_2skip__nnUNetPlans__2d__fold_0"
    start = proc.stdout.index(f"[run] run 3 of 8: nnUNetv2_train {DATASET} 2d 0 -tr MyShort_2skip")
    assert proc.stdout[start:].splitlines()[1] == f"    log: {os.path.join(out, 'logs', name + '.log')}"
    during = proc.stdout[start: proc.stdout.index(f"[done] {name}")]
    for marker in ("Epoch 0", "train_loss", "val_loss", "Pseudo dice", "Epoch time"):
        assert f"    {name}: " in during and marker in during, marker
    assert "[progress] 3 of 8 runs done, " in proc.stdout and " left for 5 runs" in proc.stdout
    assert "[progress] 8 of 8 runs done" in proc.stdout
    for name in ("runs.csv", "per_case.csv", "summary.csv", "summary.md", "dice_vs_skips.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert _no_temp_files(out)

    runs = trained["runs_csv_after_complete"]
    assert sorted((r["skips"], r["fold"]) for r in runs) == [(str(k), str(f)) for k in range(4) for f in range(2)]
    assert {(r["skips"], r["status"]) for r in runs} == {("0", "already_complete"), ("1", "already_complete"),
                                                          ("2", "completed"), ("3", "already_complete")}
    assert all(r["epochs"] == "1" and float(r["wall_time_s"]) > 0 for r in runs)
    assert all(r["peak_gpu_mem_mb"] == "" for r in runs)  # CPU run: not available

    per_case = _read_csv(os.path.join(out, "per_case.csv"))
    assert len(per_case) == 4 * 8 * 2  # skips x cases (4 per fold, 2 folds) x labels
    assert {r["label"] for r in per_case} == {"disc", "bar"}
    assert {(r["fold"], r["case"]) for r in per_case if r["skips"] == "0"} == {
        (str(f), f"syn_{i:03d}") for f, ids in ((0, range(4)), (1, range(4, 8))) for i in ids}
    for r in per_case:
        assert r["dice"] == "" or 0.0 <= float(r["dice"]) <= 1.0
        assert r["hd95_px"] == "" or float(r["hd95_px"]) >= 0  # PNG data: pixels
    # Dice is nnU-Net's own, from each fold's validation/summary.json
    nn = json.load(open(os.path.join(_results_folder(trained, 1, 0), "validation", "summary.json")))
    first = nn["metric_per_case"][0]
    case = os.path.basename(first["prediction_file"])[: -len(".png")]
    mine = next(r for r in per_case if r["skips"] == "1" and r["fold"] == "0" and r["case"] == case and r["label"] == "disc")
    assert float(mine["dice"]) == pytest.approx(first["metrics"]["1"]["Dice"], abs=1e-5)

    summary = _read_csv(os.path.join(out, "summary.csv"))
    assert sorted((r["skips"], r["label"]) for r in summary) == sorted(
        (str(k), lab) for k in range(4) for lab in ("disc", "bar", "mean"))
    for r in summary:
        assert r["n_folds"] == "2"
        if r["skips"] != "3":
            assert r["dice_n_pairs"] not in ("", "0")
    md = open(os.path.join(out, "summary.md")).read()
    assert "Wilcoxon" in md and "empty" in md and "Mean Dice" in md and "## Missing" not in md
    with open(os.path.join(out, "dice_vs_skips.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # ordinary nnU-Net results, with --npz
    for k in range(4):
        for fold in range(2):
            val = os.path.join(_results_folder(trained, k, fold), "validation")
            assert os.path.isfile(os.path.join(val, "summary.json"))
            assert any(n.endswith(".npz") for n in os.listdir(val))


@pytest.mark.slow
def test_second_call_trains_nothing(trained):
    again = trained["again"]
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("already complete") == 8
    assert "[run" not in again.stdout
    runs = _read_csv(os.path.join(trained["out"], "runs.csv"))
    assert {r["status"] for r in runs} == {"already_complete"}
    assert all(r["wall_time_s"] and r["epochs"] == "1" for r in runs)  # kept from the call that trained


@pytest.mark.slow
def test_3d_fullres_ablation_end_to_end(tmp_path):
    """The same short trainers on tiny anisotropic volumes planned and preprocessed for 3d_fullres:
    ``ablate-skips -c 3d_fullres`` with 0 and 3 skips on fold 0 trains the 3D network through nnUNetv2_train
    and reports on 3D metrics (HD95 in mm from the spacing), every row saying 3d_fullres."""
    from nnunet_swin.synthetic import write_synthetic_volumes

    env = _env(str(tmp_path))
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        os.makedirs(env[var])
    with open(os.path.join(env["nnUNet_extTrainer"], "ablation_test_trainers.py"), "w") as f:
        f.write(TRAINER_MODULE)
    dataset = os.path.basename(write_synthetic_volumes(env["nnUNet_raw"], 978, "AblVol", num_train=4, num_test=0,
                                                       shape=(8, 32, 40), spacing=(3.0, 1.0, 1.0)).folder)
    _plan_and_preprocess(env, 978, "3d_fullres")
    cases = sorted(n[: -len(".nii.gz")] for n in os.listdir(os.path.join(env["nnUNet_raw"], dataset, "labelsTr")))
    with open(os.path.join(env["nnUNet_preprocessed"], dataset, "splits_final.json"), "w") as f:
        json.dump([{"train": cases[2:], "val": cases[:2]}], f)
    out = str(tmp_path / "out")
    proc = _run([*CLI, "-d", "978", "-c", "3d_fullres", "--skips", "0", "3", "--folds", "0",
                 "--trainer-pattern", "MyShort_{k}skip", "--device", "cpu", "--out", out], env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.count("[done]") == 2
    for k in (0, 3):
        model = os.path.join(env["nnUNet_results"], dataset, f"MyShort_{k}skip__nnUNetPlans__3d_fullres")
        assert os.path.isfile(os.path.join(model, "fold_0", "validation", "summary.json"))
        assert len(json.load(open(os.path.join(model, "plans.json")))["configurations"]["3d_fullres"]["patch_size"]) == 3
    per_case = _read_csv(os.path.join(out, "per_case.csv"))
    assert len(per_case) == 2 * 2 * 2  # skips x validation cases x labels
    assert {r["configuration"] for r in per_case} == {"3d_fullres"} and {r["fold"] for r in per_case} == {"0"}
    assert all(r["hd95_mm"] == "" or float(r["hd95_mm"]) >= 0 for r in per_case)  # NIfTI: millimetres
    summary = _read_csv(os.path.join(out, "summary.csv"))
    assert sorted((r["skips"], r["label"]) for r in summary) == sorted(
        (str(k), lab) for k in (0, 3) for lab in ("disc", "bar", "mean"))
    assert {r["configuration"] for r in summary} == {"3d_fullres"}
    md = open(os.path.join(out, "summary.md")).read()
    assert md.startswith(f"# Skip-connection ablation: {dataset}, 3d_fullres\n") and "HD95 mm" in md


@pytest.mark.slow
def test_dry_run_lists_nnunet_commands(nnunet_root, monkeypatch):
    env = _env(nnunet_root)
    out = os.path.join(nnunet_root, "dry")
    lines = []
    real = checks.preflight
    monkeypatch.setattr(checks, "preflight", lambda trainers, environ: {**real(trainers, environ), "cuda": True})
    rc = ablation.run_ablation(str(DATASET_ID), folds=[0, 1], skips=[0, 1, 2, 3], device="cuda", gpus="0,1",
                               dry_run=True, out=out, environ=env, echo=lines.append)
    assert rc == 0
    assert len(lines) == 8
    assert lines[0] == (f"CUDA_VISIBLE_DEVICES=0 nnUNetv2_train {DATASET} 2d 0 -tr nnUNetTrainerSwinUnet_0skip -p "
                        "nnUNetPlans --npz -device cuda")
    assert lines[1].startswith(f"CUDA_VISIBLE_DEVICES=1 nnUNetv2_train {DATASET} 2d 0 -tr nnUNetTrainerSwinUnet_1skip")
    assert lines[7].endswith(f"{DATASET} 2d 1 -tr nnUNetTrainerSwinUnet_3skip -p nnUNetPlans --npz -device cuda")
    assert not os.path.exists(out)  # a dry run writes nothing

    # the console script prints the same
    proc = _run([*CLI, "-d", str(DATASET_ID), "--folds", "0", "--skips", "2", "--device", "cpu",
                 "--dry-run", "--out", out], env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (f"nnUNetv2_train {DATASET} 2d 0 -tr nnUNetTrainerSwinUnet_2skip -p nnUNetPlans --npz -device cpu"
            in proc.stdout)


@pytest.mark.slow
def test_resume_after_killed_run_uses_c(nnunet_root, monkeypatch):
    """A fold folder with only checkpoint_latest.pth (a killed run) continues with --c; one with a final
    checkpoint but no validation summary only validates (--val)."""
    env = _env(nnunet_root)
    base = os.path.join(env["nnUNet_results"], DATASET)
    killed = os.path.join(base, "Killed_1skip__nnUNetPlans__2d", "fold_0")
    os.makedirs(killed, exist_ok=True)
    open(os.path.join(killed, "checkpoint_latest.pth"), "wb").close()
    unvalidated = os.path.join(base, "Killed_2skip__nnUNetPlans__2d", "fold_0")
    os.makedirs(unvalidated, exist_ok=True)
    open(os.path.join(unvalidated, "checkpoint_final.pth"), "wb").close()

    jobs = ablation.build_jobs(str(DATASET_ID), folds=[0], skips=[0, 1, 2], trainer_pattern="Killed_{k}skip")
    planned = jobmod.plan_runs(jobs, "cpu", env)
    assert [p.state for p in planned] == [jobmod.FoldState.FRESH, jobmod.FoldState.RESUME, jobmod.FoldState.NEEDS_VALIDATION]
    assert "--c" not in planned[0].args and "--val" not in planned[0].args
    assert planned[1].args[-1] == "--c" and "--npz" in planned[1].args
    assert planned[2].args[-1] == "--val" and "--npz" in planned[2].args
    lines = []  # the Killed_ trainers exist only as these folders: nnU-Net's lookup is not asked
    monkeypatch.setattr(checks, "preflight", lambda trainers, environ: {"missing": {}, "known": [], "cuda": False,
                                                                        "mps": False})
    ablation.run_ablation(str(DATASET_ID), folds=[0], skips=[1], trainer_pattern="Killed_{k}skip", device="cpu",
                          dry_run=True, out=os.path.join(nnunet_root, "dry2"), environ=env, echo=lines.append)
    assert lines == [f"nnUNetv2_train {DATASET} 2d 0 -tr Killed_1skip -p nnUNetPlans --npz -device cpu --c"]


@pytest.mark.slow
def test_slurm_script(nnunet_root, tmp_path):
    env = _env(nnunet_root)
    script = str(tmp_path / "ablate.sh")
    out = str(tmp_path / "out")
    lines = []
    rc = ablation.run_ablation(str(DATASET_ID), folds=[0, 1, 2], skips=[0, 1, 2, 3], slurm=script, out=out,
                               slurm_options=["--time=12:00:00"], environ=env, echo=lines.append)
    assert rc == 0 and os.path.isfile(script)
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    text = open(script).read()
    assert '--array="$TODO"' in text  # the runs not complete at submission
    for i in range(12):
        assert f"\n  {i}) exec " in text
    assert "\n  12) " not in text
    # one array index per variant x fold, in the order of the jobs
    assert "--trainer nnUNetTrainerSwinUnet_0skip --plans nnUNetPlans --tag skips=0" in text.split("\n  0) ")[1].split("\n")[0]
    assert "--fold 2 --trainer nnUNetTrainerSwinUnet_3skip" in text.split("\n  11) ")[1].split("\n")[0]
    assert "--dependency=afterany:${ARRAY_ID}" in text
    assert "--aggregate-only" in text.split("NNUNET_AGGREGATE")[1]
    assert "--gres=gpu:1" in text and "--time=12:00:00" in text
    assert f"export nnUNet_results={env['nnUNet_results']}" in text

    # run it with fake sbatch: the array is submitted first, the aggregation depends on its id
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sbatch").write_text(textwrap.dedent("""\
        #!/usr/bin/env bash
        n=$(( $(ls "$FAKE_SBATCH_DIR" | wc -l) + 1 ))
        { echo "$@"; cat; } > "$FAKE_SBATCH_DIR/$n.txt"
        echo "100$n;cluster"
        """))
    os.chmod(bindir / "sbatch", 0o755)
    calls = tmp_path / "calls"
    calls.mkdir()
    fake_env = dict(env, PATH=f"{bindir}{os.pathsep}{env['PATH']}", FAKE_SBATCH_DIR=str(calls))
    proc = subprocess.run(["bash", script], env=fake_env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    first, second = (calls / "1.txt").read_text(), (calls / "2.txt").read_text()
    assert "--array=0-11" in first.splitlines()[0]
    assert "--dependency=afterany:1001" in second.splitlines()[0]
    assert "-m nnunet_swin.cli ablate-skips" in second and "--aggregate-only" in second


@pytest.mark.slow
def test_run_job_subcommand_skips_a_complete_run(trained, tmp_path):
    """What each SLURM array task runs: a complete run is not trained again."""
    proc = _run([sys.executable, "-m", "nnunet_swin.experiments.worker", "run-job", "--out", str(tmp_path),
                 "--device", "cpu", "--dataset", DATASET, "--configuration", "2d", "--fold", "0",
                 "--trainer", "MyShort_0skip", "--tag", "skips=0"], trained["env"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "already complete" in proc.stdout
    rec = json.load(open(tmp_path / "runs" / f"{DATASET}__MyShort_0skip__nnUNetPlans__2d__fold_0.json"))
    assert rec["status"] == "already_complete"


@pytest.mark.slow
def test_aggregate_only_on_the_trained_ablation_matches(trained, tmp_path):
    """--aggregate-only (the SLURM aggregation step) rebuilds the same per-case table in-process."""
    out = str(tmp_path / "agg")
    rc = ablation.run_ablation(str(DATASET_ID), folds=[0, 1], trainer_pattern="MyShort_{k}skip", device="cpu",
                               out=out, aggregate_only=True, environ=trained["env"], echo=lambda m: None)
    assert rc == 0
    mine = _read_csv(os.path.join(out, "per_case.csv"))
    theirs = _read_csv(os.path.join(trained["out"], "per_case.csv"))
    assert mine == theirs


# --- the GPU queue (no GPU needed: run_one is replaced) -------------------------------------------------
def test_gpu_queue_runs_one_job_per_gpu_at_a_time(monkeypatch, tmp_path):
    active: dict[str, int] = {}
    seen = []
    lock = threading.Lock()

    def fake_run_one(job, device, records_dir, logs_dir, gpu=None, environ=None, log_tail_lines=40, echo=print,
                     position=""):
        with lock:
            active[gpu] = active.get(gpu, 0) + 1
            assert active[gpu] == 1, "two runs on one GPU"
            seen.append((job.fold, gpu))
        time.sleep(0.05)
        with lock:
            active[gpu] -= 1
        status = "failed" if job.fold == "2" else "completed"
        return jobmod.RunRecord(job=job, status=status, returncode=1 if status == "failed" else 0, gpu=gpu)

    monkeypatch.setattr(local, "run_one", fake_run_one)
    jobs = [jobmod.Job("Dataset001_X", "2d", f, "T") for f in range(6)]
    report = local.run_jobs(jobs, str(tmp_path), device="cuda", gpus="0,1", echo=lambda m: None)
    assert [r.job.fold for r in report.records] == [str(f) for f in range(6)]
    assert {g for _, g in seen} == {"0", "1"}
    assert report.exit_code == 1 and [r.job.fold for r in report.failed] == ["2"]
    with pytest.raises(ValueError):
        local.run_jobs(jobs, str(tmp_path), device="cpu", gpus="0")


# --- aggregation on hand-made nnU-Net result folders (fast) -------------------------------------------
def _fake_results(root: str, cases: dict, spacing=None, file_ending=".png", fold="0",
                  trainers=("Fake_{k}skip",), skips=(0, 3)):
    """Write nnU-Net-like results: per skip count k, ``cases[k][case] = (pred, ref)`` label arrays."""
    from PIL import Image

    env = {"nnUNet_raw": os.path.join(root, "raw"), "nnUNet_preprocessed": os.path.join(root, "pre"),
           "nnUNet_results": os.path.join(root, "res")}
    ds = "Dataset555_Fake"
    gt = os.path.join(env["nnUNet_preprocessed"], ds, "gt_segmentations")
    os.makedirs(gt, exist_ok=True)
    dataset_json = {"labels": {"background": 0, "a": 1, "b": 2}, "file_ending": file_ending,
                    "channel_names": {"0": "x"}, "numTraining": 1}
    reader = "NaturalImage2DIO" if file_ending == ".png" else "SimpleITKIO"
    plans = {"dataset_name": ds, "plans_name": "nnUNetPlans", "image_reader_writer": reader, "configurations": {}}

    def save(arr, path):
        if file_ending == ".png":
            Image.fromarray(arr.astype(np.uint8)).save(path)
        else:
            import SimpleITK as sitk

            img = sitk.GetImageFromArray(arr.astype(np.uint8))
            img.SetSpacing(tuple(float(s) for s in reversed(spacing)))
            sitk.WriteImage(img, path)

    for k in skips:
        model = os.path.join(env["nnUNet_results"], ds, trainers[0].format(k=k) + "__nnUNetPlans__2d")
        val = os.path.join(model, f"fold_{fold}", "validation")
        os.makedirs(val, exist_ok=True)
        open(os.path.join(model, f"fold_{fold}", "checkpoint_final.pth"), "wb").close()
        json.dump(dataset_json, open(os.path.join(model, "dataset.json"), "w"))
        json.dump(plans, open(os.path.join(model, "plans.json"), "w"))
        per_case = []
        for case, (pred, ref) in cases[k].items():
            save(pred, os.path.join(val, case + file_ending))
            save(ref, os.path.join(gt, case + file_ending))
            metrics = {}
            for lab in (1, 2):
                tp = int(((pred == lab) & (ref == lab)).sum())
                fp = int(((pred == lab) & (ref != lab)).sum())
                fn = int(((pred != lab) & (ref == lab)).sum())
                metrics[str(lab)] = {"Dice": (2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else float("nan"),
                                     "n_pred": tp + fp, "n_ref": tp + fn}
            per_case.append({"prediction_file": os.path.join(val, case + file_ending),
                             "reference_file": os.path.join(gt, case + file_ending), "metrics": metrics})
        json.dump({"metric_per_case": per_case, "mean": {}, "foreground_mean": {}},
                  open(os.path.join(val, "summary.json"), "w"))
    return env, ds


def _square(shape, y0, x0, size, label):
    a = np.zeros(shape, np.uint8)
    a[y0:y0 + size, x0:x0 + size] = label
    return a


def test_aggregation_metrics_and_empty_conventions(tmp_path):
    shape = (40, 40)
    ref = _square(shape, 10, 10, 10, 1)  # label 2 absent from the reference in every case
    cases = {
        3: {"c1": (ref.copy(), ref), "c2": (ref.copy(), ref), "c3": (ref.copy(), ref), "c4": (ref.copy(), ref),
            "c5": (ref.copy(), ref), "c6": (ref.copy(), ref)},
        0: {"c1": (_square(shape, 12, 10, 10, 1), ref),                     # shifted by 2 px: HD95 = 2
            "c2": (np.zeros(shape, np.uint8), ref),                         # empty prediction
            "c3": (ref + _square(shape, 30, 30, 4, 2), ref),                # label 2 predicted, not in reference
            "c4": (_square(shape, 11, 10, 10, 1), ref), "c5": (_square(shape, 10, 13, 10, 1), ref),
            "c6": (_square(shape, 10, 11, 10, 1), ref)},
    }
    env, ds = _fake_results(str(tmp_path), cases)
    out = str(tmp_path / "out")
    lines = []
    rc = ablation.run_ablation(ds, folds=[0], skips=[0, 3], trainer_pattern="Fake_{k}skip", out=out,
                               aggregate_only=True, environ=env, echo=lines.append)
    assert rc == 0, lines
    rows = {(int(r["skips"]), r["case"], r["label"]): r for r in _read_csv(os.path.join(out, "per_case.csv"))}
    assert len(rows) == 2 * 6 * 2
    assert {r["configuration"] for r in rows.values()} == {"2d"}  # no table row without its configuration
    # PNG: nnU-Net reads no spacing (uses 1), so distances are in pixels and every column says so
    assert "hd95_mm" not in open(os.path.join(out, "per_case.csv")).readline()
    assert "hd95_mm" not in open(os.path.join(out, "summary.csv")).readline()
    c1 = rows[(0, "c1", "a")]
    assert float(c1["dice"]) == pytest.approx(0.8) and float(c1["hd95_px"]) == pytest.approx(2.0)
    assert 0 < float(c1["nsd"]) < 1
    empty_pred = rows[(0, "c2", "a")]
    assert float(empty_pred["dice"]) == 0.0 and float(empty_pred["nsd"]) == 0.0
    assert float(empty_pred["hd95_px"]) == pytest.approx(math.hypot(40, 40))  # image diagonal
    empty_ref = rows[(0, "c3", "b")]
    assert float(empty_ref["dice"]) == 0.0 and float(empty_ref["hd95_px"]) == pytest.approx(math.hypot(40, 40))
    both_empty = rows[(0, "c1", "b")]
    assert both_empty["dice"] == "" and both_empty["hd95_px"] == "" and both_empty["nsd"] == ""  # NaN
    perfect = rows[(3, "c1", "a")]
    assert float(perfect["dice"]) == 1.0 and float(perfect["hd95_px"]) == 0.0 and float(perfect["nsd"]) == 1.0

    summary = {(int(r["skips"]), r["label"]): r for r in _read_csv(os.path.join(out, "summary.csv"))}
    assert set(summary) == {(k, lab) for k in (0, 3) for lab in ("a", "b", "mean")}
    assert {r["configuration"] for r in summary.values()} == {"2d"}
    s0a = summary[(0, "a")]
    dices = [float(rows[(0, c, "a")]["dice"]) for c in ("c1", "c2", "c3", "c4", "c5", "c6")]
    assert float(s0a["dice_mean_shared"]) == pytest.approx(np.mean(dices), abs=1e-5)
    assert float(s0a["dice_std_shared"]) == pytest.approx(np.std(dices, ddof=1), abs=1e-5)
    assert s0a["dice_std_folds"] == "" and s0a["n_folds"] == "1"
    from scipy.stats import wilcoxon

    assert float(s0a["dice_wilcoxon_p_vs_ref"]) == pytest.approx(wilcoxon(dices, [1.0] * 6).pvalue, rel=1e-4)
    # c3's label a is predicted exactly: a zero difference, which the signed-rank test drops
    assert s0a["dice_n_pairs"] == "6" and s0a["dice_n_nonzero_pairs"] == "5" and s0a["n_shared_cases"] == "6"
    assert summary[(3, "a")]["dice_wilcoxon_p_vs_ref"] == ""  # the reference itself
    assert summary[(0, "b")]["dice_n_shared"] == "1"  # only c3 has a defined Dice for b
    md = open(os.path.join(out, "summary.md")).read()
    assert md.startswith("# Skip-connection ablation: Dataset555_Fake, 2d\n")
    assert "image diagonal" in md and "rises monotonically" in md
    assert "| HD95 px | NSD@1 px |" in md and "are in pixels" in md and "HD95 mm" not in md
    assert "| 0 | a | 6 |" in md and " † | 5 (6) |" in md  # 5 non-zero pairs cannot reach p < 0.05
    assert _no_temp_files(out)
    runs = _read_csv(os.path.join(out, "runs.csv"))
    assert [r["status"] for r in runs] == ["already_complete", "already_complete"]


def test_hd95_uses_the_image_spacing(tmp_path):
    """NIfTI with anisotropic spacing: a 1-voxel shift along an axis of spacing 3 mm gives HD95 = 3 mm."""
    shape = (4, 30, 30)  # z, y, x
    ref = np.zeros(shape, np.uint8)
    ref[1:3, 10:20, 10:20] = 1
    pred_y = np.roll(ref, 1, axis=1)  # y spacing 3.0
    cases = {3: {"v1": (ref.copy(), ref)}, 0: {"v1": (pred_y, ref)}}
    env, ds = _fake_results(str(tmp_path), cases, spacing=(2.0, 3.0, 0.5), file_ending=".nii.gz")
    out = str(tmp_path / "out")
    rc = ablation.run_ablation(ds, folds=[0], skips=[0, 3], trainer_pattern="Fake_{k}skip", out=out,
                               aggregate_only=True, environ=env, echo=lambda m: None)
    assert rc == 0
    rows = {(int(r["skips"]), r["label"]): r for r in _read_csv(os.path.join(out, "per_case.csv"))}
    assert float(rows[(0, "a")]["hd95_mm"]) == pytest.approx(3.0)
    md = open(os.path.join(out, "summary.md")).read()
    assert "| HD95 mm | NSD@1 mm |" in md and "in pixels" not in md


def test_missing_runs_make_the_exit_code_nonzero(tmp_path):
    ref = _square((20, 20), 5, 5, 5, 1)
    env, ds = _fake_results(str(tmp_path), {3: {"x": (ref, ref)}}, skips=(3,))
    out = str(tmp_path / "out")
    lines = []
    rc = ablation.run_ablation(ds, folds=[0], skips=[0, 3], trainer_pattern="Fake_{k}skip", out=out,
                               aggregate_only=True, environ=env, echo=lines.append)
    assert rc == 1
    assert "Missing" in open(os.path.join(out, "summary.md")).read()
    runs = {r["skips"]: r["status"] for r in _read_csv(os.path.join(out, "runs.csv"))}
    assert runs == {"0": "not_run", "3": "already_complete"}


def test_default_out_and_pattern_checks(tmp_path):
    env = {"nnUNet_results": str(tmp_path / "res"), "nnUNet_preprocessed": str(tmp_path / "pre")}
    os.makedirs(os.path.join(env["nnUNet_preprocessed"], "Dataset042_Foo"))
    assert ablation.default_out_dir("42", "nnUNetPlans", "2d", env) == os.path.join(
        env["nnUNet_results"], "Dataset042_Foo", "ablation_skips__nnUNetPlans__2d")
    with pytest.raises(ValueError):
        ablation.build_jobs("42", trainer_pattern="NoPlaceholder")
    jobs = ablation.build_jobs("42", folds=[0, 1], skips=[0, 3])
    assert [(j.trainer, j.fold) for j in jobs] == [("nnUNetTrainerSwinUnet_0skip", "0"),
                                                    ("nnUNetTrainerSwinUnet_3skip", "0"),
                                                    ("nnUNetTrainerSwinUnet_0skip", "1"),
                                                    ("nnUNetTrainerSwinUnet_3skip", "1")]


def test_3d_fullres_dry_run_and_slurm_script_and_unplanned_configurations(tmp_path):
    """-c 3d_fullres goes into every nnUNetv2_train command, the SLURM array and its aggregation, and the
    default report folder; a configuration the plans lack, or a data set not planned, is refused before any
    work, naming what is planned."""
    env = {"nnUNet_results": str(tmp_path / "res"), "nnUNet_preprocessed": str(tmp_path / "pre")}
    root = os.path.join(env["nnUNet_preprocessed"], "Dataset042_Foo")
    os.makedirs(root)
    common = dict(folds=[0], skips=[0, 3], device="cpu", environ=env)
    with pytest.raises(ValueError, match="Dataset042_Foo has no plans nnUNetPlans in nnUNet_preprocessed.*"
                                         "nnUNetv2_plan_and_preprocess -d 42 -c 3d_fullres"):
        ablation.run_ablation("42", "3d_fullres", dry_run=True, echo=lambda m: None, **common)
    json.dump({"configurations": {"2d": {}, "3d_fullres": {}}}, open(os.path.join(root, "nnUNetPlans.json"), "w"))
    with pytest.raises(ValueError, match="Dataset042_Foo: plans nnUNetPlans have no configuration 3d_lowres; "
                                         "they have 2d, 3d_fullres"):
        ablation.run_ablation("42", "3d_lowres", dry_run=True, echo=lambda m: None, **common)
    lines = []
    assert ablation.run_ablation("42", "3d_fullres", dry_run=True, echo=lines.append, **common) == 0
    assert lines == [f"nnUNetv2_train Dataset042_Foo 3d_fullres 0 -tr nnUNetTrainerSwinUnet_{k}skip -p nnUNetPlans "
                     "--npz -device cpu" for k in (0, 3)]
    script = str(tmp_path / "abl.sh")
    assert ablation.run_ablation("42", "3d_fullres", slurm=script, echo=lines.append, **common) == 0
    text = open(script).read()
    assert "--dataset Dataset042_Foo --configuration 3d_fullres --fold 0 --trainer nnUNetTrainerSwinUnet_3skip" in text
    aggregation = text.split("NNUNET_AGGREGATE")[1]
    assert "--configuration 3d_fullres" in aggregation
    assert os.path.join(env["nnUNet_results"], "Dataset042_Foo", "ablation_skips__nnUNetPlans__3d_fullres") in aggregation
    proc = subprocess.run([*CLI, "-d", "42", "-c", "3d_lowres", "--dry-run"], capture_output=True,
                          text=True, env={**os.environ, **env, "PYTHONPATH": REPO}, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "ablate-skips: error: Dataset042_Foo: plans nnUNetPlans have no configuration 3d_lowres; they have 2d, 3d_fullres")


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = str(tmp_path / "t.csv")
    nnunet_files.atomic_write(path, "old\n")

    with pytest.raises(TypeError):
        nnunet_files.atomic_write(path, 12345)  # not str/bytes: fails while writing the temp file
    assert open(path).read() == "old\n"
    assert _no_temp_files(str(tmp_path))


def test_cli_parser_registration():
    import argparse

    top = argparse.ArgumentParser(prog="nnunet-swin")
    sub = top.add_subparsers(dest="command")
    ablation.add_parser(sub)
    args = top.parse_args(["ablate-skips", "-d", "7", "--folds", "0", "1", "--trainer-pattern", "MyShort_{k}skip",
                           "--device", "cpu"])
    assert args.func is ablation.handle_args
    assert args.dataset == "7" and args.folds == ["0", "1"] and args.skips == [0, 1, 2, 3]
    assert args.configuration == "2d" and args.plans == "nnUNetPlans" and args.device == "cpu"


# --- statistics on hand-made per-case rows (fast) -----------------------------------------------------
def _rows(skips: int, fold: str, dices: list[float], prefix: str = "c") -> list[dict]:
    return [{"skips": skips, "fold": fold, "case": f"{prefix}{i}", "label": "a", "dice": d, "hd95_mm": 1.0,
             "nsd": 1.0, "trainer": f"T_{skips}skip"} for i, d in enumerate(dices)]


def test_headline_compares_on_the_cases_every_variant_has():
    """The issue's case: fold 1 is missing for 0 skips. Over whatever cases each variant has, 0 skips read 0.900
    and 3 skips 0.750 although 0 skips is 0.100 worse on every shared case (p = 0.031). The headline and the
    trend sentence now use the 6 shared cases and state the test's significance."""
    from scipy.stats import wilcoxon

    zero = [0.95, 0.93, 0.91, 0.89, 0.87, 0.85]
    rows = _rows(0, "0", zero) + _rows(3, "0", [1.0] * 6) + _rows(3, "1", [0.5] * 6, "d")
    summary = {r["skips"]: r for r in ablation.summarize(rows, reference=3)}
    assert summary[0]["dice_mean_all"] == pytest.approx(0.900) and summary[3]["dice_mean_all"] == pytest.approx(0.750)
    assert summary[0]["dice_mean_shared"] == pytest.approx(0.900)
    assert summary[3]["dice_mean_shared"] == pytest.approx(1.0)
    assert summary[3]["n_shared_cases"] == 6 and summary[3]["n_cases_all"] == 12 and summary[3]["n_folds"] == 1
    assert summary[0]["dice_diff_vs_ref"] == pytest.approx(-0.100)
    assert summary[0]["dice_wilcoxon_p_vs_ref"] == wilcoxon(zero, [1.0] * 6).pvalue == 0.03125
    text = ablation.trend_statement(list(summary.values()))
    assert text.startswith("Mean Dice (a) by skip count, on the 6 cases every variant has: 0: 0.900 → 3: 1.000; "
                           "it rises monotonically")
    assert "0 skips -0.100 (p = 0.031, 6 non-zero pairs: significant at 0.05)" in text
    meta = {"dataset": "D", "configuration": "2d", "plans": "P", "trainer_pattern": "T_{k}skip", "skips": [0, 3],
            "folds": ["0", "1"], "reference": 3, "nsd_tolerance_mm": 1.0}
    md = ablation.summary_markdown(list(summary.values()), [], meta, ["0 skips, fold 1 (T_0skip): not complete"])
    assert md.index("## Missing") < md.index("Mean Dice") < md.index("| skips |")
    assert "| 3 | a | 6 | 1.000 ± 0.000 |" in md


def test_too_few_pairs_and_not_significant_are_said():
    rows = _rows(0, "0", [0.9, 0.8, 0.7]) + _rows(3, "0", [1.0, 0.9, 0.6])
    from scipy.stats import wilcoxon

    text = ablation.trend_statement(ablation.summarize(rows, reference=3))
    p = wilcoxon([0.9, 0.8, 0.7], [1.0, 0.9, 0.6]).pvalue
    assert (f"0 skips -0.033 (p = {p:.2g}, 3 non-zero pairs: too few for p < 0.05 to be possible "
            "(smallest possible p = 0.25))") in text
    rows = _rows(0, "0", [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]) + _rows(3, "0", [1.0, 0.7, 0.8, 0.5, 0.6, 0.45])
    summary = ablation.summarize(rows, reference=3)
    p = wilcoxon([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [1.0, 0.7, 0.8, 0.5, 0.6, 0.45]).pvalue
    assert f"(p = {p:.2g}, 6 non-zero pairs: not significant at 0.05)" in ablation.trend_statement(summary)
    no_common = ablation.summarize(rows + _rows(1, "1", [0.5], "e"), reference=3)
    assert ablation.trend_statement(no_common).startswith("No validation case has results for every variant")


def test_repeated_folds_and_skips_count_once(tmp_path):
    ref = _square((20, 20), 5, 5, 5, 1)
    pred = _square((20, 20), 6, 5, 5, 1)
    cases = {0: {"x": (pred, ref), "y": (ref, ref)}, 3: {"x": (ref, ref), "y": (ref, ref)}}
    env, ds = _fake_results(str(tmp_path), cases)
    assert [(j.fold, j.trainer) for j in ablation.build_jobs(ds, folds=[0, "0"], skips=[3, 0, 3],
                                                                  trainer_pattern="Fake_{k}skip")] == [
        ("0", "Fake_3skip"), ("0", "Fake_0skip")]
    out = str(tmp_path / "out")
    lines = []
    rc = ablation.run_ablation(ds, folds=["0", "0"], skips=[0, 3, 0], trainer_pattern="Fake_{k}skip", out=out,
                               aggregate_only=True, environ=env, echo=lines.append)
    assert rc == 0, lines
    assert len(_read_csv(os.path.join(out, "per_case.csv"))) == 2 * 2 * 2  # skips x cases x labels
    s0a = next(r for r in _read_csv(os.path.join(out, "summary.csv")) if r["skips"] == "0" and r["label"] == "a")
    assert (s0a["n_shared_cases"], s0a["dice_n_pairs"], s0a["dice_n_nonzero_pairs"]) == ("2", "2", "1")
    assert "folds 0 (nnU-Net" in open(os.path.join(out, "summary.md")).read()


def test_a_narrower_rerun_keeps_the_whole_study_in_the_report(tmp_path):
    """After a report on 0 and 3 skips, a call for 0 skips only into the same folder still reports both (the
    earlier runs are recorded there); another trainer pattern into that folder is refused."""
    ref = _square((20, 20), 5, 5, 5, 1)
    env, ds = _fake_results(str(tmp_path), {0: {"x": (_square((20, 20), 6, 5, 5, 1), ref)}, 3: {"x": (ref, ref)}})
    out = str(tmp_path / "out")
    common = dict(folds=[0], trainer_pattern="Fake_{k}skip", out=out, aggregate_only=True, environ=env)
    assert ablation.run_ablation(ds, skips=[0, 3], echo=lambda m: None, **common) == 0
    lines = []
    assert ablation.run_ablation(ds, skips=[0], echo=lines.append, **common) == 0
    assert any(m.startswith(f"note: {out} also holds 1 earlier runs of this study") for m in lines)
    summary = _read_csv(os.path.join(out, "summary.csv"))
    assert sorted({r["skips"] for r in summary}) == ["0", "3"]
    assert sorted(r["skips"] for r in _read_csv(os.path.join(out, "runs.csv"))) == ["0", "3"]
    assert "for skips 0, 3, folds 0" in open(os.path.join(out, "summary.md")).read()
    with pytest.raises(ValueError, match="holds a study of trainer Fake_0skip for 0 skips.*its own --out"):
        ablation.run_ablation(ds, skips=[0], echo=lambda m: None, **dict(common, trainer_pattern="Other_{k}skip"))
    # a 3D study never writes its report over a 2D one
    with pytest.raises(ValueError, match="holds a study of Dataset555_Fake 2d \\(plans nnUNetPlans\\), not "
                                         "Dataset555_Fake 3d_fullres .*its own --out"):
        ablation.run_ablation(ds, "3d_fullres", skips=[0], echo=lambda m: None, **common)
