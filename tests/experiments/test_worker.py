"""The helper processes' entry (nnunet_swin/experiments/worker.py), as the SLURM submit script runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from nnunet_swin.experiments.jobs import Job

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_pending_lists_the_runs_not_complete(tmp_path):
    env = dict(os.environ, nnUNet_results=str(tmp_path), PYTHONPATH=REPO)
    jobs = [Job("Dataset001_X", "2d", str(f), "T") for f in range(4)]
    done = jobs[1].fold_dir(env)
    os.makedirs(os.path.join(done, "validation"))
    open(os.path.join(done, "checkpoint_final.pth"), "w").close()
    open(os.path.join(done, "validation", "summary.json"), "w").close()
    proc = subprocess.run([sys.executable, "-m", "nnunet_swin.experiments.worker", "pending"], env=env, text=True,
                          input=json.dumps([j.to_dict() for j in jobs]), capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0,2-3"


def test_an_unknown_command_says_which_exist():
    proc = subprocess.run([sys.executable, "-m", "nnunet_swin.experiments.worker", "nope"], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=REPO), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("usage: python -m nnunet_swin.experiments.worker "
                                   "{train,run-job,pending,preflight,model-cost,find-best} ...")
