"""Tests of ``nnunet-swin benchmark-msd`` (nnunet_swin/experiments/msd_benchmark.py).

End to end on the CPU: a synthetic task in the Decathlon's layout (3D NIfTI with two modalities, MSD's
dataset.json), given as its .tar next to a malformed task, is converted by ``nnUNetv2_convert_MSD_dataset``,
planned and preprocessed, trained with two short trainers (a tiny Swin-Unet and nnU-Net's CNN, one epoch of
two iterations) for fold 0 through ``nnUNetv2_train``, judged by ``find_best_configuration`` and written to
leaderboards; the second call trains nothing. Model lists, ranking and the dry run are tested without
training.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
import tarfile

import pytest

from nnunet_swin.experiments import leaderboard
from nnunet_swin.experiments import msd_benchmark as mb
from nnunet_swin.experiments.msd_benchmark import Model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = [sys.executable, "-m", "nnunet_swin.cli", "benchmark-msd"]
DATASET = "Dataset097_SynthMSD"

TRAINER_MODULE = '''
"""Short trainers for the MSD benchmark tests (nnU-Net finds them through nnUNet_extTrainer)."""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_swin.trainers import ShortSchedule, nnUNetTrainerSwinUnet_3skip


class _Short(ShortSchedule):
    epochs, iterations, val_iterations = 1, 2, 1
    threads = 1  # 2 shared cores: threads only contend


class MsdShortSwin(_Short, nnUNetTrainerSwinUnet_3skip):
    network_options = {"embed_dim": 8, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "window_size": 4,
                       "drop_path_rate": 0.0}


class MsdShortCNN(_Short, nnUNetTrainer):
    pass
'''
TRAINERS = ["MsdShortSwin:2d", "MsdShortCNN"]


def _env(root: str) -> dict:
    env = dict(os.environ)
    env.update({var: os.path.join(root, var) for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    env.update({
        "nnUNet_extTrainer": os.path.join(root, "ext"),
        "nnUNet_n_proc_DA": "0",
        "nnUNet_def_n_proc": "1",
        "nnUNet_compile": "f",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    })
    return env


def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=1200,
                          cwd=REPO)


def _read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- end to end ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Two calls of the same benchmark: the first with a malformed task beside the good one (as an archive),
    the second for the good task only (``--tasks 97``)."""
    from nnunet_swin.synthetic import write_msd_task

    root = str(tmp_path_factory.mktemp("msdbench"))
    env = _env(root)
    os.makedirs(env["nnUNet_extTrainer"])
    with open(os.path.join(env["nnUNet_extTrainer"], "msd_test_trainers.py"), "w") as f:
        f.write(TRAINER_MODULE)
    downloads = os.path.join(root, "downloads")
    folder = write_msd_task(os.path.join(root, "unpacked"), "Task97_SynthMSD", num_train=6, num_test=1,
                            shape=(4, 40, 48), modalities=("T2", "ADC"))
    os.makedirs(downloads)
    with tarfile.open(os.path.join(downloads, "Task97_SynthMSD.tar"), "w") as tf:
        tf.add(folder, arcname="Task97_SynthMSD")
    broken = os.path.join(downloads, "Task98_Broken")
    os.makedirs(os.path.join(broken, "imagesTr"))
    out = os.path.join(root, "out")
    common = ["--trainers", *TRAINERS, "--folds", "0", "--device", "cpu", "-np", "1", "--out", out]
    first = _run([downloads, *common], env)
    plans = os.path.join(env["nnUNet_preprocessed"], DATASET, "nnUNetPlans.json")
    plans_mtime = os.path.getmtime(plans) if os.path.exists(plans) else None
    second = _run([downloads, "--tasks", "97", *common], env)
    return {"root": root, "env": env, "out": out, "first": first, "second": second, "plans": plans,
            "plans_mtime": plans_mtime, "downloads": downloads, "common": common}


@pytest.mark.slow
def test_first_call_reports_the_malformed_task_and_benchmarks_the_good_one(bench):
    first = bench["first"]
    text = first.stdout + first.stderr
    assert first.returncode == 1, text[-3000:]  # a task was skipped
    assert "[SKIPPED]" in text and "Task98_Broken: malformed MSD task" in text and "labelsTr/ is missing" in text
    assert sorted(os.listdir(bench["env"]["nnUNet_raw"])) == [DATASET]  # nothing of the broken task, no staging
    for program in ("nnUNetv2_convert_MSD_dataset", "nnUNetv2_plan_and_preprocess"):
        assert f"[run] {program}" in text
    assert "[run] find_best_configuration" in text
    # a line per task converted and planned, run i of N while training
    assert "[task 1 of 2] Task97_SynthMSD: conversion and preprocessing" in text
    assert "[task 2 of 2] Task98_Broken: conversion and preprocessing" in text
    assert f"[done] Task97_SynthMSD -> {os.path.join(bench['env']['nnUNet_raw'], DATASET)}" in text
    assert f"[done] {DATASET}: nnUNetPlans 2d planned and preprocessed" in text
    assert f"[run] run 1 of 2: nnUNetv2_train {DATASET} 2d 0 -tr MsdShortSwin" in text
    assert f"[run] run 2 of 2: nnUNetv2_train {DATASET} 2d 0 -tr MsdShortCNN" in text


@pytest.mark.slow
def test_leaderboard_has_a_row_per_trainer_with_real_values(bench):
    rows = _read_csv(os.path.join(bench["out"], DATASET, "leaderboard.csv"))
    assert sorted(r["trainer"] for r in rows) == ["MsdShortCNN", "MsdShortSwin"]
    assert sorted(r["rank"] for r in rows) == ["1", "2"]
    assert float(rows[0]["dice_mean"]) >= float(rows[1]["dice_mean"])
    for r in rows:
        assert r["configuration"] == "2d" and r["plans"] == "nnUNetPlans" and r["folds"] == "1/1"
        # our mean over labels of per-label means is nnU-Net's own cross-validation foreground mean
        assert float(r["dice_mean"]) == pytest.approx(float(r["cv_dice_nnunet"]), abs=1e-5)
        for label in ("disc", "bar"):
            assert 0.0 <= float(r[f"dice[{label}]"]) <= 1.0
            assert float(r[f"hd95_mm[{label}]"]) > 0
        assert float(r["params_m"]) > 0 and float(r["gmacs_per_patch"]) > 0 and float(r["epoch_time_s"]) > 0
        assert r["peak_gpu_mem_mb"] == ""  # CPU run
    swin = next(r for r in rows if r["trainer"] == "MsdShortSwin")
    assert all(int(s) % 32 == 0 for s in swin["patch_size"].split("x"))  # the plugin's patch rounding
    assert float(swin["params_m"]) < 0.5  # the tiny network, rebuilt by nnU-Net's predictor
    assert any(r["selected_by_find_best"] == "yes" for r in rows)
    assert os.path.isfile(os.path.join(bench["env"]["nnUNet_results"], DATASET, "inference_information.json"))
    per_case = _read_csv(os.path.join(bench["out"], DATASET, "per_case.csv"))
    assert len(per_case) == 2 * 2 * 2  # trainers x validation cases of fold 0 x labels
    md = open(os.path.join(bench["out"], DATASET, "leaderboard.md")).read()
    assert "| rank | trainer |" in md and "find_best_configuration` picks" in md and "MsdShortSwin" in md


@pytest.mark.slow
def test_overall_leaderboard_and_runs(bench):
    rows = _read_csv(os.path.join(bench["out"], "leaderboard.csv"))
    assert sorted(r["trainer"] for r in rows) == ["MsdShortCNN", "MsdShortSwin"]
    assert sorted(r["mean_rank"] for r in rows) == ["1", "2"] and all(r["tasks_ranked"] == "1" for r in rows)
    runs = _read_csv(os.path.join(bench["out"], "runs.csv"))
    assert [(r["task"], r["fold"]) for r in runs] == [("Task97_SynthMSD", "0")] * 2
    assert "Task97_SynthMSD" in open(os.path.join(bench["out"], "leaderboard.md")).read()


@pytest.mark.slow
def test_second_call_trains_nothing(bench):
    second = bench["second"]
    text = second.stdout + second.stderr
    assert second.returncode == 0, text[-3000:]
    assert "[run]" not in text
    assert "already converted" in text and "already preprocessed" in text and "find_best_configuration is current" in text
    assert os.path.getmtime(bench["plans"]) == bench["plans_mtime"]
    assert {r["status"] for r in _read_csv(os.path.join(bench["out"], "runs.csv"))} == {"already_complete"}


@pytest.mark.slow
def test_dry_run_prints_what_is_left_and_runs_nothing(bench):
    before = sorted(os.listdir(bench["env"]["nnUNet_results"]))
    proc = _run([bench["downloads"], "--tasks", "97", "--trainers", *TRAINERS, "--configurations", "2d", "3d_fullres",
                 "--resenc", "M", "--folds", "0", "--device", "cpu", "--out", bench["out"], "--dry-run"], bench["env"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert not any(line.startswith("nnUNetv2_convert_MSD_dataset") for line in lines)  # already converted
    assert "nnUNetv2_plan_and_preprocess -d 97 -pl ExperimentPlanner -c 3d_fullres -np 4 --verify_dataset_integrity" in lines
    assert any(line.startswith("nnUNetv2_plan_and_preprocess -d 97 -pl nnUNetPlannerResEncM -c 2d 3d_fullres")
               for line in lines)
    trains = [line for line in lines if line.startswith("nnUNetv2_train")]
    # left to train: MsdShortCNN 3d_fullres, ResEnc M 2d and 3d_fullres; MsdShortSwin is pinned to 2d (complete)
    assert len(trains) == 3
    assert not any("MsdShortSwin" in t and "3d_fullres" in t for t in trains)
    assert any("already complete" in line for line in lines)
    assert sorted(os.listdir(bench["env"]["nnUNet_results"])) == before


@pytest.mark.slow
def test_slurm_script_and_aggregate_only(bench):
    script = os.path.join(bench["root"], "submit.sh")
    proc = _run([bench["downloads"], "--tasks", "97", *bench["common"], "--slurm", script], bench["env"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = open(script).read()
    assert '--array="$TODO"' in text and "afterany" in text and "--aggregate-only" in text
    # the aggregation job reads the converted data set, not the archive as typed
    assert os.path.join(bench["env"]["nnUNet_raw"], DATASET) in text.split("NNUNET_AGGREGATE")[1]
    assert "nnUNetv2_train Dataset097_SynthMSD 2d 0 -tr MsdShortSwin" in text
    os.unlink(os.path.join(bench["out"], DATASET, "leaderboard.csv"))
    proc = _run([bench["downloads"], "--tasks", "97", *bench["common"], "--aggregate-only"], bench["env"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(_read_csv(os.path.join(bench["out"], DATASET, "leaderboard.csv"))) == 2


# --- models, ranking, set-up errors ------------------------------------------------------------------------
def test_default_models_put_the_skip_study_on_2d_and_one_swin_unet_next_to_the_cnn_on_3d():
    swin2d = [Model(f"nnUNetTrainerSwinUnet_{k}skip", "nnUNetPlans", "2d") for k in range(4)]
    cnn2d, cnn3d = Model("nnUNetTrainer", "nnUNetPlans", "2d"), Model("nnUNetTrainer", "nnUNetPlans", "3d_fullres")
    swin3d = Model("nnUNetTrainerSwinUnet", "nnUNetPlans", "3d_fullres")
    assert mb.build_models() == [*swin2d, cnn2d, swin3d, cnn3d]
    assert mb.if_planned(None, None) == {"3d_fullres"}  # the default 3D models: only where nnU-Net plans 3d_fullres
    assert mb.build_models(None, ["2d"]) == [*swin2d, cnn2d]
    assert mb.build_models(None, ["3d_fullres", "3d_lowres"]) == [
        swin3d, cnn3d, Model("nnUNetTrainerSwinUnet", "nnUNetPlans", "3d_lowres"),
        Model("nnUNetTrainer", "nnUNetPlans", "3d_lowres")]
    assert mb.if_planned(None, ["2d", "3d_fullres"]) == frozenset()  # named: an error where not planned
    assert mb.if_planned(["A:3d_fullres"], None) == frozenset()
    with_resenc = mb.build_models(None, ["2d", "3d_fullres"], ["M"])
    assert with_resenc == [*swin2d, cnn2d, swin3d, cnn3d, Model("nnUNetTrainer", "nnUNetResEncUNetMPlans", "2d"),
                           Model("nnUNetTrainer", "nnUNetResEncUNetMPlans", "3d_fullres")]
    assert mb.plans_to_prepare(with_resenc) == {"nnUNetPlans": ["2d", "3d_fullres"],
                                                "nnUNetResEncUNetMPlans": ["2d", "3d_fullres"]}
    # named trainers run on every configuration (default 2d), Swin-Unet in 3D too, unless pinned
    assert mb.build_models(["nnUNetTrainerSwinUnet_1skip", "X:2d"], ["2d", "3d_fullres"]) == [
        Model("nnUNetTrainerSwinUnet_1skip", "nnUNetPlans", "2d"),
        Model("nnUNetTrainerSwinUnet_1skip", "nnUNetPlans", "3d_fullres"), Model("X", "nnUNetPlans", "2d")]
    assert mb.build_models(["A", "B:3d_fullres"], None, ["L"]) == [
        Model("A", "nnUNetPlans", "2d"), Model("B", "nnUNetPlans", "3d_fullres"),
        Model("nnUNetTrainer", "nnUNetResEncUNetLPlans", "2d")]


def _planned(env: dict, configurations: dict, dataset: str = DATASET, cases: int = 2) -> None:
    """A planned data set in nnUNet_preprocessed: ``configurations`` {name: preprocessed (all cases there)}."""
    root = os.path.join(env["nnUNet_preprocessed"], dataset)
    os.makedirs(root, exist_ok=True)
    json.dump({"numTraining": cases}, open(os.path.join(root, "dataset.json"), "w"))
    plans = {"configurations": {c: {"data_identifier": f"nnUNetPlans_{c}"} for c in configurations}}
    json.dump(plans, open(os.path.join(root, "nnUNetPlans.json"), "w"))
    for c, done in configurations.items():
        os.makedirs(os.path.join(root, f"nnUNetPlans_{c}"), exist_ok=True)
        for i in range(cases if done else 0):
            open(os.path.join(root, f"nnUNetPlans_{c}", f"case{i}.pkl"), "w").close()


def test_planned_models_leave_out_a_default_configuration_the_plans_lack(tmp_path):
    env = {"nnUNet_preprocessed": str(tmp_path)}
    models = mb.build_models()
    notes = []
    assert mb.planned_models(DATASET, models, mb.IF_PLANNED, env, notes.append) == models  # not planned yet
    assert notes == [f"note: {DATASET} is not planned with nnUNetPlans yet; nnUNetTrainerSwinUnet, nnUNetTrainer on "
                     "3d_fullres are listed as if it will have 3d_fullres (nnU-Net plans it for 3D images)"]
    _planned(env, {"2d": True})  # a 2D data set: nnU-Net plans no 3d_fullres
    notes.clear()
    assert mb.planned_models(DATASET, models, mb.IF_PLANNED, env, notes.append) == models[:5]
    assert notes == [f"note: {DATASET}: plans nnUNetPlans have no 3d_fullres (nnU-Net plans it for 3D images only); "
                     "nnUNetTrainerSwinUnet, nnUNetTrainer on 3d_fullres left out"]
    notes.clear()
    assert mb.planned_models(DATASET, models, frozenset(), env, notes.append) == models and not notes
    _planned(env, {"2d": True, "3d_fullres": False})
    assert mb.planned_models(DATASET, models, mb.IF_PLANNED, env, notes.append) == models and not notes


def test_dry_run_and_slurm_script_with_the_default_models(tmp_path):
    """Default models on a task planned in 2D and 3D: the 3D Swin-Unet and CNN train on 3d_fullres after its
    preprocessing; on a 2D-only plan they are left out; a configuration named but not planned skips the task
    with an error naming the planned ones; the SLURM array has the 3D runs."""
    from nnunet_swin.synthetic import write_msd_task

    env = {var: str(tmp_path / var) for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    task = write_msd_task(str(tmp_path / "dl"), "Task97_SynthMSD", num_train=2, num_test=0, shape=(2, 8, 8))
    os.makedirs(os.path.join(env["nnUNet_raw"], DATASET, "labelsTr"))  # converted: the files the check counts
    json.dump({"numTraining": 2}, open(os.path.join(env["nnUNet_raw"], DATASET, "dataset.json"), "w"))
    for i in range(2):
        open(os.path.join(env["nnUNet_raw"], DATASET, "labelsTr", f"synthmsd_{i:03d}.nii.gz"), "w").close()
    _planned(env, {"2d": True, "3d_fullres": False})
    lines = []
    o = mb.Options([task], folds=["0"], device="cpu", dry_run=True, out=str(tmp_path / "out"))
    assert mb.run_benchmark(o, env, lines.append) == 0, lines
    assert lines[0] == "nnUNetv2_plan_and_preprocess -d 97 -pl ExperimentPlanner -c 3d_fullres -np 4 " \
                       "--verify_dataset_integrity"
    trains = [line for line in lines if line.startswith("nnUNetv2_train")]
    assert [t.split(" -p ")[0] for t in trains] == [
        *(f"nnUNetv2_train {DATASET} 2d 0 -tr nnUNetTrainerSwinUnet_{k}skip" for k in range(4)),
        f"nnUNetv2_train {DATASET} 2d 0 -tr nnUNetTrainer",
        f"nnUNetv2_train {DATASET} 3d_fullres 0 -tr nnUNetTrainerSwinUnet",
        f"nnUNetv2_train {DATASET} 3d_fullres 0 -tr nnUNetTrainer"]

    script = str(tmp_path / "msd.sh")
    _planned(env, {"2d": True, "3d_fullres": True})  # the SLURM script is written after preprocessing
    assert mb.run_benchmark(dataclasses.replace(o, dry_run=False, slurm=script), env, lines.append) == 0
    text = open(script).read()
    assert "--configuration 3d_fullres --fold 0 --trainer nnUNetTrainerSwinUnet --plans nnUNetPlans" in text
    assert "--configurations" not in text.split("NNUNET_AGGREGATE")[1]  # the aggregation keeps the defaults

    _planned(env, {"2d": True})
    lines.clear()
    assert mb.run_benchmark(o, env, lines.append) == 0, lines
    assert not any(line.startswith("nnUNetv2_plan_and_preprocess") for line in lines)
    assert not any("3d_fullres" in line for line in lines if line.startswith("nnUNetv2_train"))
    assert f"note: {DATASET}: plans nnUNetPlans have no 3d_fullres" in "\n".join(lines)

    lines.clear()
    named = dataclasses.replace(o, configurations=["2d", "3d_fullres"])
    assert mb.run_benchmark(named, env, lines.append) == 1
    assert f"[SKIPPED] {DATASET}: plans nnUNetPlans have no configuration 3d_fullres; they have 2d" in lines
    assert not any(line.startswith("nnUNetv2_train") for line in lines)


def test_pinned_and_bad_trainer_specs():
    assert mb.build_models(["A:3d_fullres:nnUNetResEncUNetLPlans", "A:3d_fullres:nnUNetResEncUNetLPlans"], ("2d",)) == \
        [Model("A", "nnUNetResEncUNetLPlans", "3d_fullres")]
    for bad in ("", "A::p", "A:b:c:d"):
        with pytest.raises(ValueError, match="TRAINER:CONFIGURATION"):
            mb.parse_trainer_spec(bad)
    with pytest.raises(ValueError, match="choose from M, L, XL"):
        mb.build_models(["A"], ("2d",), ("S",))
    with pytest.raises(ValueError, match="can plan"):
        mb.plans_to_prepare([Model("A", "MyPlans", "2d")])


def test_rank_is_competition_ranking_and_skips_nan():
    assert leaderboard.rank([0.5, 0.9, 0.5, float("nan"), 0.1]) == [2, 1, 2, None, 4]


def test_missing_nnunet_paths_is_a_one_line_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env["PYTHONPATH"] = REPO
    proc = subprocess.run([*CLI, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("benchmark-msd: error: nnUNet_results is not set")


def test_cli_has_the_subcommand():
    from nnunet_swin.cli import build_parser

    args = build_parser().parse_args(["benchmark-msd", "/data/Task04_Hippocampus.tar", "--tasks", "4",
                                      "--resenc", "M", "--gpus", "0,1"])
    o = mb.options_from_args(args)
    assert o.tasks == [4] and o.resenc == ["M"] and o.gpus == "0,1" and o.trainers is o.configurations is None
    assert args.func is mb.handle_args
    assert "--trainers" not in o.argv() and "--configurations" not in o.argv()  # the defaults, for SLURM's aggregation
    o = mb.options_from_args(build_parser().parse_args(["benchmark-msd", "x", "--trainers", "A", "--configurations",
                                                        "3d_fullres"]))
    assert o.argv()[1:5] == ["--trainers", "A", "--configurations", "3d_fullres"]


def test_a_narrower_rerun_keeps_earlier_tasks_models_and_folds(tmp_path):
    """The leaderboards cover every run recorded in --out: a call for task 97, model A, fold 0 (given twice)
    after calls that also ran task 98 (models A and B) and fold 1 of task 97 keeps all of them."""
    from nnunet_swin.experiments import jobs
    from nnunet_swin.experiments.msd import MSDTask

    records = str(tmp_path / "runs")
    a, b = Model("A", "nnUNetPlans", "2d"), Model("B", "nnUNetPlans", "3d_fullres")
    synth, other = MSDTask(97, "Synth", "/dl/Task97_Synth.tar"), MSDTask(98, "Other", "/dl/Task98_Other.tar")
    earlier = (mb.build_jobs("Dataset098_Other", other, [a, b], ["0", "1"])
               + mb.build_jobs("Dataset097_Synth", synth, [a], ["1"]))
    for job in earlier:
        jobs.save_record(records, jobs.RunRecord(job=job, status="completed"))
    now = mb.build_jobs("Dataset097_Synth", synth, [a], ["0", "0"])
    assert [j.fold for j in now] == ["0"]
    studied = mb.study_tasks([(synth, "Dataset097_Synth")], now, records)
    assert [(t.task_name, d, ms, fs) for t, d, ms, fs in studied] == [
        ("Task97_Synth", "Dataset097_Synth", [a], ["0", "1"]),
        ("Task98_Other", "Dataset098_Other", [a, b], ["0", "1"])]


def test_leaderboard_p_says_how_many_pairs_it_rests_on():
    from nnunet_swin.experiments.msd import MSDTask

    base = {"configuration": "2d", "plans": "nnUNetPlans", "folds": "5/5", "hd95_mean_mm": 1.0,
            "epoch_time_s": 10.0, "peak_gpu_mem_mb": 100.0, "selected_by_find_best": ""}
    board = leaderboard.TaskBoard(MSDTask(97, "Synth", ""), DATASET, rows=[
        {**base, "rank": 1, "trainer": "A", "dice_mean": 0.9},
        {**base, "rank": 2, "trainer": "B", "dice_mean": 0.8, "p_vs_first": 0.0625, "nonzero_pairs_vs_first": 5}])
    md = leaderboard.board_markdown(board, "cmd")
    assert "| 0.9000 | 1.00 | – |" in md and "| 0.8000 | 1.00 | 0.062 (5) |" in md
    assert "with fewer than 6, p < 0.05 is impossible" in md
