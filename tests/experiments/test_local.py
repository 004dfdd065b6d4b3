"""Tests of local execution with the per-run lock and run records (nnunet_swin/experiments/local.py, lock.py,
jobs.py), with a fake training program in place of nnUNetv2_train (``local.train_command`` is replaced), so
nothing trains."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

from nnunet_swin.experiments import jobs, local, lock

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATASET = "Dataset321_Lock"

#: Stands in for nnUNetv2_train: notes that it ran, trains for a while, leaves a complete nnU-Net fold.
FAKE_TRAIN = textwrap.dedent('''\
    import os, sys, time
    fold = os.environ["FAKE_FOLD_DIR"]
    with open(os.environ["FAKE_TRAININGS"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(float(os.environ.get("FAKE_SECONDS", "0")))
    os.makedirs(os.path.join(fold, "validation"), exist_ok=True)
    with open(os.path.join(fold, "training_log_fake.txt"), "w") as f:
        f.write("2026-01-01 00:00:00.000000: Epoch 0\\n2026-01-01 00:00:01.000000: Epoch 1\\n")
    open(os.path.join(fold, "checkpoint_final.pth"), "w").close()
    open(os.path.join(fold, "validation", "summary.json"), "w").write("{}")
    sys.exit(int(os.environ.get("FAKE_RC", "0")))
''')

#: One runner process: run_one for the test job with the fake training program.
RUNNER_PROCESS = textwrap.dedent('''\
    import sys
    from nnunet_swin.experiments import jobs, local, lock
    fake, out, dataset = sys.argv[1:4]
    local.train_command = lambda record, args: [sys.executable, fake]
    lock.LOCK_POLL_S = 0.1
    job = jobs.Job(dataset, "2d", "0", "FakeTrainer")
    rec = local.run_one(job, "cpu", out + "/runs", out + "/logs")
    print("STATUS", rec.status, flush=True)
''')


def _setup(tmp_path, seconds: float = 0.0):
    env = dict(os.environ, nnUNet_results=str(tmp_path / "results"), PYTHONPATH=REPO,
               FAKE_TRAININGS=str(tmp_path / "trainings.txt"), FAKE_SECONDS=str(seconds))
    job = jobs.Job(DATASET, "2d", "0", "FakeTrainer")
    env["FAKE_FOLD_DIR"] = job.fold_dir(env)
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    return env, job, str(fake)


def _trainings(env) -> list[str]:
    try:
        return open(env["FAKE_TRAININGS"]).read().split()
    except FileNotFoundError:
        return []


def test_two_concurrent_runners_train_a_run_once(tmp_path):
    """Two processes started together on the same run: one trains, the other says it waits, then finds the
    run complete. Without the lock both trained it (two training processes in one fold)."""
    env, job, fake = _setup(tmp_path, seconds=2.0)
    script = tmp_path / "one_runner.py"
    script.write_text(RUNNER_PROCESS)
    procs = [subprocess.Popen([sys.executable, str(script), fake, str(tmp_path / f"out{i}"), DATASET], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(_trainings(env)) == 1, outs
    statuses = sorted(o.split("STATUS ")[1].split()[0] for o in outs)
    assert statuses == ["already_complete", "completed"], outs
    waiter = next(o for o in outs if "already_complete" in o)
    assert f"[wait] {job.name}: being trained by process" in waiter and socket.gethostname() in waiter
    assert not os.path.exists(os.path.join(job.fold_dir(env), lock.LOCK_NAME))  # released


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, monkeypatch):
    env, job, fake = _setup(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    fold = job.fold_dir(env)
    os.makedirs(fold)
    with open(os.path.join(fold, lock.LOCK_NAME), "w") as f:
        json.dump({"pid": dead.pid, "host": socket.gethostname(), "started": "2026-01-01 00:00:00", "token": "x"}, f)
    monkeypatch.setattr(local, "train_command", lambda record, args: [sys.executable, fake])
    lines = []
    rec = local.run_one(job, "cpu", str(tmp_path / "runs"), str(tmp_path / "logs"), environ=env, echo=lines.append)
    assert rec.status == "completed" and len(_trainings(env)) == 1
    assert lines[0] == (f"[lock] {job.name}: taking over a stale lock "
                        f"(process {dead.pid} on {socket.gethostname()} is gone)")
    assert not os.path.exists(os.path.join(fold, lock.LOCK_NAME))


def test_stale_rule_same_host_by_pid_other_host_by_heartbeat():
    me = socket.gethostname()
    now = 1_000_000.0
    live = {"pid": os.getpid(), "host": me}
    assert lock.lock_stale_reason(live, mtime=0.0, now=now) == ""  # same host, alive: never by age
    dead_runner_live_child = {"pid": 2 ** 22 + 12345, "child_pid": os.getpid(), "host": me}
    assert lock.lock_stale_reason(dead_runner_live_child, mtime=0.0, now=now) == ""
    other = {"pid": os.getpid(), "host": "another-node"}
    assert lock.lock_stale_reason(other, mtime=now - 599, now=now, stale_after_s=600) == ""
    assert lock.lock_stale_reason(other, mtime=now - 601, now=now, stale_after_s=600) == (
        "no heartbeat from another-node for 601 s (> 600 s)")
    assert "no heartbeat from an unknown host" in lock.lock_stale_reason({}, mtime=now - 700, now=now,
                                                                           stale_after_s=600)


def test_a_live_lock_from_another_runner_is_not_broken(tmp_path):
    """break_stale moves only the lock it judged stale: a lock taken in between is put back."""
    fold = str(tmp_path)
    holder = lock.RunLock(fold)
    assert holder.try_acquire()
    other = lock.RunLock(fold)
    assert not other.try_acquire()
    other.break_stale({"token": "an-old-stale-lock"})
    assert lock.read_lock(holder.path)[0]["token"] == holder.token
    holder.release()
    assert not os.path.exists(holder.path)


def test_runs_trained_under_another_out_keep_wall_time_and_exit_code(tmp_path, monkeypatch):
    """Study A trains the run; study B (another --out) finds it complete: its record and runs.csv row keep
    A's wall time, exit code and command, read from the record beside the run."""
    env, job, fake = _setup(tmp_path)
    monkeypatch.setattr(local, "train_command", lambda record, args: [sys.executable, fake])
    a = local.run_one(job, "cpu", str(tmp_path / "A" / "runs"), str(tmp_path / "A" / "logs"), environ=env,
                       echo=lambda m: None)
    assert a.status == "completed" and a.returncode == 0 and a.wall_time_s is not None and a.epochs == 2
    rows = jobs.run_rows([job], str(tmp_path / "B" / "runs"), env)  # B has not run anything yet
    assert (rows[0]["status"], rows[0]["returncode"], rows[0]["wall_time_s"]) == ("already_complete", 0, a.wall_time_s)
    b = local.run_one(job, "cpu", str(tmp_path / "B" / "runs"), str(tmp_path / "B" / "logs"), environ=env,
                       echo=lambda m: None)
    assert (b.status, b.returncode, b.wall_time_s, b.command) == ("already_complete", 0, a.wall_time_s, a.command)
    jobs.write_runs_csv(str(tmp_path / "B" / "runs.csv"), jobs.run_rows([job], str(tmp_path / "B" / "runs"), env))
    import csv

    row = next(csv.DictReader(open(tmp_path / "B" / "runs.csv")))
    assert row["returncode"] == "0" and float(row["wall_time_s"]) == a.wall_time_s and row["epochs"] == "2"
    assert len(_trainings(env)) == 1


def test_a_failed_run_releases_its_lock(tmp_path, monkeypatch):
    env, job, fake = _setup(tmp_path)
    env["FAKE_RC"] = "3"
    monkeypatch.setattr(local, "train_command", lambda record, args: [sys.executable, fake])
    rec = local.run_one(job, "cpu", str(tmp_path / "runs"), str(tmp_path / "logs"), environ=env, echo=lambda m: None)
    assert rec.status == "failed" and rec.returncode == 3
    assert not os.path.exists(os.path.join(job.fold_dir(env), lock.LOCK_NAME))


def test_child_env_registers_the_trainers_and_keeps_the_users_settings(tmp_path):
    """The training process finds this nnunet_swin and its trainers (nnUNet_extTrainer) even without the .pth
    hook; the user's own trainer folders, PYTHONPATH and the chosen GPU are kept or set."""
    from nnunet_swin.registration import ENV_VAR, ext_trainer_dir

    base = {ENV_VAR: str(tmp_path), "PYTHONPATH": "/opt/mine", "KEEP": "1"}
    env = local.child_env(base, "3")
    assert env[ENV_VAR].split(os.pathsep) == [str(tmp_path), ext_trainer_dir()]
    assert env["PYTHONPATH"].split(os.pathsep) == [REPO, "/opt/mine"]
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and env["KEEP"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert local.child_env(env, None)[ENV_VAR] == env[ENV_VAR]  # registering twice adds nothing
    assert base == {ENV_VAR: str(tmp_path), "PYTHONPATH": "/opt/mine", "KEEP": "1"}  # the caller's dict untouched
