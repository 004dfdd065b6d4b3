"""The SLURM path of ``ablate-skips`` and ``benchmark-msd``, submitted to a real single-node SLURM.

One cluster per session (:mod:`slurm_cluster`: munged, slurmctld and slurmd from Debian's packages on
localhost, with this machine's CPUs). Without the programs (or without root) these tests are skipped with the
reason, except in CI (``CI=true``), where ``.ci/run`` installs them and their absence fails the tests.

The trainings are tiny (Swin-Unet with 8 channels, one epoch of two iterations on the CPU); scripts are
submitted with a stripped environment from another directory, so nnU-Net's paths, the trainer folder and
the interpreter reach the jobs through the script alone. Option parsing and the script text are tested
without a cluster.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import tarfile

import pytest

from nnunet_swin.experiments import jobs as jobmod
from nnunet_swin.experiments import slurm
from nnunet_swin.experiments.nnunet_files import NNUNET_PATH_VARS
from slurm_cluster import PARTITION, LocalSlurm, unavailable_reason

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATASET_ID = 979
DATASET = f"Dataset{DATASET_ID:03d}_SlurmTiny"
MSD_DATASET = "Dataset096_SlurmMSD"
JOB_TIMEOUT_S = 240  # a hung or never-scheduled job fails the test instead of hanging CI

TRAINER_MODULE = '''
"""Short trainers for the SLURM tests. SlurmShort_0skip raises while FAIL_0SKIP exists next to this file.
Every trainer writes the environment it ran in to job_env.json in its fold folder."""
import json
import os
import sys

from nnunet_swin.trainers import ShortSchedule, nnUNetTrainerSwinUnet_0skip, nnUNetTrainerSwinUnet_3skip

TINY = {"embed_dim": 8, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "window_size": 4,
        "drop_path_rate": 0.0}


class _Short(ShortSchedule):
    network_options = TINY
    epochs, iterations, val_iterations = 1, 2, 1
    threads = 1

    def on_train_start(self):
        os.makedirs(self.output_folder, exist_ok=True)
        seen = {k: os.environ.get(k) for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                                               "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
        with open(os.path.join(self.output_folder, "job_env.json"), "w") as f:
            json.dump({**seen, "sys_prefix": sys.prefix, "cwd": os.getcwd()}, f)
        if type(self).__name__.endswith("0skip") and os.path.exists(os.path.join(os.path.dirname(__file__),
                                                                                  "FAIL_0SKIP")):
            raise RuntimeError("SlurmShort_0skip was told to fail (FAIL_0SKIP)")
        super().on_train_start()


class SlurmShort_0skip(_Short, nnUNetTrainerSwinUnet_0skip):
    pass


class SlurmShort_3skip(_Short, nnUNetTrainerSwinUnet_3skip):
    pass
'''


# --- helpers -----------------------------------------------------------------------------------------
def _env(root: str) -> dict:
    env = dict(os.environ)
    env.update({var: os.path.join(root, var) for var in NNUNET_PATH_VARS})
    env.update({"nnUNet_extTrainer": os.path.join(root, "ext"), "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1",
                "nnUNet_compile": "f", "OMP_NUM_THREADS": "1",
                "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")})
    return env


def _bare_env(cluster: LocalSlurm) -> dict:
    """What a login shell without nnU-Net's variables, the venv or PYTHONPATH has."""
    keep = {k: os.environ[k] for k in ("HOME", "LANG", "USER") if k in os.environ}
    return cluster.env({**keep, "PATH": "/usr/bin:/bin"})


def _read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _submit(cluster: LocalSlurm, script: str, cwd: str) -> tuple[str | None, str, str]:
    """``bash script`` as a user would (bare environment, another directory): (array id or None,
    its task list, aggregation id)."""
    proc = subprocess.run(["bash", script], env=_bare_env(cluster), cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    array = re.search(r"submitted array job (\d+): tasks (\S+) of", proc.stdout)
    agg = re.search(r"submitted aggregation job (\d+)", proc.stdout)
    assert agg, proc.stdout
    return (array.group(1) if array else None), (array.group(2) if array else ""), agg.group(1)


def _finished(cluster: LocalSlurm, ids: list[str]) -> dict[str, list[dict]]:
    return cluster.wait_finished(ids, JOB_TIMEOUT_S)


def _make_folders(env: dict) -> None:
    """nnU-Net's three folders and the trainer folder with the test trainers."""
    for var in (*NNUNET_PATH_VARS, "nnUNet_extTrainer"):
        os.makedirs(env[var], exist_ok=True)
    with open(os.path.join(env["nnUNet_extTrainer"], "slurm_test_trainers.py"), "w") as f:
        f.write(TRAINER_MODULE)


def _plan(env: dict, dataset_id: int) -> None:
    plan_env = dict(env, nnUNet_n_proc_DA="1")  # the planner sets torch threads from it (0 is refused)
    proc = subprocess.run([sys.executable, "-c", "from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints "
                           "import plan_and_preprocess_entry as m; m()", "-d", str(dataset_id), "-c", "2d", "-np", "1",
                           "-npfp", "1"],
                          env=plan_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


# --- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the real-SLURM tests: {reason}")
        pytest.skip(reason)
    with LocalSlurm(str(tmp_path_factory.mktemp("slurm"))) as c:
        yield c


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The tiny 2D data set (6 cases of 64 x 64, one fold of 3 validation cases), planned, and the trainers."""
    from nnunet_swin.synthetic import write_synthetic_dataset

    root = str(tmp_path_factory.mktemp("slurm study"))  # a space in every path of the study
    env = _env(root)
    _make_folders(env)
    write_synthetic_dataset(env["nnUNet_raw"], DATASET_ID, "SlurmTiny", num_train=6, num_test=0, shape=(64, 64),
                            seed=3)
    _plan(env, DATASET_ID)
    cases = sorted(n[: -len(".png")] for n in os.listdir(os.path.join(env["nnUNet_raw"], DATASET, "labelsTr")))
    with open(os.path.join(env["nnUNet_preprocessed"], DATASET, "splits_final.json"), "w") as f:
        json.dump([{"train": cases[3:], "val": cases[:3]}], f)
    return {"root": root, "env": env}


# --- ablate-skips --slurm ----------------------------------------------------------------------------
@pytest.mark.slow
def test_ablation_on_slurm_failed_task_then_resubmit(cluster, study):
    """Submitted for real: the 0-skip task fails, the 3-skip task trains, the aggregation job runs after both
    (afterany) and lists the failed run with its log tail; submitting again trains only the failed run and
    the report is complete."""
    root, env = study["root"], study["env"]
    fail_marker = os.path.join(env["nnUNet_extTrainer"], "FAIL_0SKIP")
    open(fail_marker, "w").close()
    out = os.path.join(root, "ablation out")
    script = os.path.join(root, "ablate it.sh")
    proc = subprocess.run([sys.executable, "-m", "nnunet_swin.cli", "ablate-skips", "-d", str(DATASET_ID),
                           "--folds", "0", "--skips", "0", "3", "--trainer-pattern", "SlurmShort_{k}skip",
                           "--device", "cpu", "--out", out, "--slurm", script,
                           f"--slurm-option=--partition {PARTITION}", "--slurm-option=--time=20"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    elsewhere = os.path.join(root, "elsewhere")
    os.makedirs(elsewhere)

    array_id, tasks, agg_id = _submit(cluster, script, elsewhere)
    assert tasks == "0-1"
    jobs = _finished(cluster, [array_id, agg_id])
    states = {t["JobId"]: t for t in jobs[array_id]}
    by_task = {t["ArrayTaskId"]: t for t in jobs[array_id]}
    assert by_task["0"]["JobState"] == "FAILED" and by_task["1"]["JobState"] == "COMPLETED", states
    agg = jobs[agg_id][0]
    assert agg["NumCPUs"] == "1"
    assert agg["StartTime"] >= max(t["EndTime"] for t in jobs[array_id])  # it ran after every task ended
    assert agg["JobState"] == "FAILED" and agg["ExitCode"] == "1:0"  # the study is incomplete: exit code 1
    assert {t["Partition"] for t in (*jobs[array_id], agg)} == {PARTITION}
    assert {t["TimeLimit"] for t in (*jobs[array_id], agg)} == {"00:20:00"}

    # the 3-skip run trained inside its array task, with the script's environment and interpreter
    fold3 = os.path.join(env["nnUNet_results"], DATASET, "SlurmShort_3skip__nnUNetPlans__2d", "fold_0")
    seen = json.load(open(os.path.join(fold3, "job_env.json")))
    assert seen["SLURM_ARRAY_JOB_ID"] == array_id and seen["SLURM_ARRAY_TASK_ID"] == "1"
    assert {k: seen[k] for k in NNUNET_PATH_VARS} == {k: env[k] for k in NNUNET_PATH_VARS}
    assert seen["sys_prefix"] == sys.prefix and seen["cwd"] == out
    assert jobmod.fold_state(fold3) == jobmod.FoldState.COMPLETE

    # the aggregation's report: the failed run with its exit code and log tail
    runs = {r["skips"]: r for r in _read_csv(os.path.join(out, "runs.csv"))}
    assert runs["0"]["status"] == "failed" and runs["3"]["status"] == "completed"
    md = open(os.path.join(out, "summary.md")).read()
    assert md.index("## Missing") < md.index("\n|"), "the failed run is listed before the results table"
    missing = md.split("## Missing")[1]
    assert "0 skips, fold 0 (SlurmShort_0skip)" in missing and "the last attempt failed (exit code 1)" in missing
    assert "SlurmShort_0skip was told to fail (FAIL_0SKIP)" in missing
    assert os.path.isfile(os.path.join(out, "slurm_logs", f"ablate_skips_{DATASET}_{array_id}_0.log"))

    # fixed: submitting again trains only the failed run
    os.unlink(fail_marker)
    rec3 = open(os.path.join(out, "runs", f"{DATASET}__SlurmShort_3skip__nnUNetPlans__2d__fold_0.json")).read()
    array_id2, tasks2, agg_id2 = _submit(cluster, script, elsewhere)
    assert tasks2 == "0"
    jobs = _finished(cluster, [array_id2, agg_id2])
    assert [t["JobState"] for t in jobs[array_id2]] == ["COMPLETED"]
    assert jobs[agg_id2][0]["JobState"] == "COMPLETED"
    assert open(os.path.join(out, "runs", f"{DATASET}__SlurmShort_3skip__nnUNetPlans__2d__fold_0.json")).read() == rec3
    assert {r["skips"]: r["status"] for r in _read_csv(os.path.join(out, "runs.csv"))} == {"0": "completed",
                                                                                         "3": "completed"}
    md = open(os.path.join(out, "summary.md")).read()
    assert "## Missing" not in md and "Mean Dice" in md
    per_case = _read_csv(os.path.join(out, "per_case.csv"))
    assert {(r["skips"], r["case"]) for r in per_case} == {(k, f"syn_{i:03d}") for k in ("0", "3") for i in range(3)}


# --- benchmark-msd --slurm ---------------------------------------------------------------------------
@pytest.mark.slow
def test_msd_benchmark_on_slurm_without_the_archive(cluster, tmp_path_factory):
    """The task, given as a relative path to its archive, is prepared at submission; the archive is deleted
    and the script submitted from another directory: the aggregation job still writes the leaderboards."""
    from nnunet_swin.synthetic import write_msd_task

    root = str(tmp_path_factory.mktemp("slurm msd"))
    env = _env(root)
    _make_folders(env)
    folder = write_msd_task(os.path.join(root, "unpacked"), "Task96_SlurmMSD", num_train=5, num_test=1,
                            shape=(4, 40, 48), modalities=("T2",))
    os.makedirs(os.path.join(root, "downloads"))
    archive = os.path.join(root, "downloads", "Task96_SlurmMSD.tar")
    with tarfile.open(archive, "w") as tf:
        tf.add(folder, arcname="Task96_SlurmMSD")
    out = os.path.join(root, "board")
    script = os.path.join(root, "msd.sh")
    proc = subprocess.run([sys.executable, "-m", "nnunet_swin.cli", "benchmark-msd", "downloads",
                           "--trainers", "SlurmShort_3skip:2d", "--folds", "0", "--device", "cpu", "-np", "1",
                           "--out", out, "--slurm", script, f"--slurm-option=--partition {PARTITION}"],
                          env=env, capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    os.unlink(archive)
    array_id, tasks, agg_id = _submit(cluster, script, str(tmp_path_factory.mktemp("elsewhere")))
    assert tasks == "0"
    jobs = _finished(cluster, [array_id, agg_id])
    assert jobs[array_id][0]["JobState"] == "COMPLETED"
    assert jobs[agg_id][0]["JobState"] == "COMPLETED", open(jobs[agg_id][0]["StdOut"]).read()[-3000:]
    rows = _read_csv(os.path.join(out, MSD_DATASET, "leaderboard.csv"))
    assert [(r["rank"], r["trainer"], r["folds"]) for r in rows] == [("1", "SlurmShort_3skip", "1/1")]
    assert 0.0 <= float(rows[0]["dice_mean"]) <= 1.0 and rows[0]["selected_by_find_best"] == "yes"
    overall = _read_csv(os.path.join(out, "leaderboard.csv"))
    assert [r["trainer"] for r in overall] == ["SlurmShort_3skip"] and overall[0]["tasks_ranked"] == "1"
    assert [r["status"] for r in _read_csv(os.path.join(out, "runs.csv"))] == ["completed"]


# --- sbatch options and the script, no cluster -----------------------------------------------------------
def test_slurm_option_is_split_as_a_shell_would():
    assert slurm.split_sbatch_options(["--partition gpu", "--time=1:00:00", "--comment 'two words'"]) == [
        "--partition", "gpu", "--time=1:00:00", "--comment", "two words"]
    with pytest.raises(ValueError, match="not an sbatch option"):
        slurm.split_sbatch_options(["partition=gpu"])
    with pytest.raises(ValueError, match="quote as in a shell"):
        slurm.split_sbatch_options(["--comment 'open"])


def test_cpu_request_is_an_option_and_gpu_requests_go_to_the_array_only():
    array, agg = slurm.sbatch_options_per_job(["--partition gpu", "--gres gpu:a100:2", "--account=p"], "cuda", 1)
    assert array == ["--cpus-per-task=1", "--partition", "gpu", "--account=p", "--gres", "gpu:a100:2"]
    assert agg == ["--cpus-per-task=1", "--partition", "gpu", "--account=p"]
    array, agg = slurm.sbatch_options_per_job([], "cuda", 6)
    assert array == ["--cpus-per-task=6", "--gres=gpu:1"] and agg == ["--cpus-per-task=6"]
    assert slurm.sbatch_options_per_job(["--gpus-per-task=1"], "cuda", 1)[0] == ["--cpus-per-task=1",
                                                                                   "--gpus-per-task=1"]
    assert slurm.sbatch_options_per_job([], "cpu", 1) == (["--cpus-per-task=1"], ["--cpus-per-task=1"])
    with pytest.raises(ValueError, match="at least 1"):
        slurm.sbatch_options_per_job([], "cpu", 0)


def test_array_spec_compacts_ranges():
    assert slurm.array_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert slurm.array_spec([3]) == "3" and slurm.array_spec([]) == ""


def test_script_passes_options_as_separate_words(tmp_path):
    jobs = [jobmod.Job("Dataset001_X", "2d", "0", "T")]
    text = slurm.write_slurm_script(str(tmp_path / "s.sh"), jobs, str(tmp_path / "out"), ["true"], device="cuda",
                                     sbatch_options=["--partition gpu", "--comment='my study'"],
                                     environ={"nnUNet_results": "rel/results", "PATH": "/bin"})
    array_line = next(line for line in text.splitlines() if line.startswith("ARRAY_ID=$(sbatch"))
    agg_line = next(line for line in text.splitlines() if line.startswith("AGG_ID=$(sbatch"))
    assert " --partition gpu " in array_line and " '--comment=my study' " in array_line
    assert "--gres=gpu:1" in array_line and "--gres" not in agg_line and " --partition gpu " in agg_line
    assert '"$DEPENDENCY"' in agg_line and 'DEPENDENCY="--dependency=afterany:${ARRAY_ID}"' in text
    assert f"export nnUNet_results={os.path.abspath('rel/results')}" in text  # jobs start elsewhere
    assert subprocess.run(["bash", "-n", str(tmp_path / "s.sh")]).returncode == 0


def test_failure_note_ends_on_the_exception_above_buffered_output():
    from nnunet_swin.experiments.ablation import failure_note

    log = ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>', "RuntimeError: boom", "",
           *[f"buffered stdout line {i}" for i in range(30)]]
    note = failure_note({"status": "failed", "returncode": 1, "log": "/l.log", "error": "\n".join(log)})
    assert note.startswith("; the last attempt failed (exit code 1), log /l.log:")
    assert note.rstrip().endswith("  RuntimeError: boom\n  ```") and "buffered stdout" not in note
    plain = failure_note({"status": "failed", "returncode": 2, "error": "\n".join(f"l{i}" for i in range(30))})
    assert "  l29\n" in plain and "  l14\n" not in plain and "  l15\n" in plain  # the last 15 lines
    assert failure_note({"status": "completed"}) == "" and failure_note(None) == ""
