"""``nnunet-swin`` as a user types it: --version, the trainer list, argument errors reported with the
subcommand's usage, readable --help, and the demo's --trainer (refused fast when nnU-Net does not know it,
trained on the demo's schedule when it does)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import nnunet_swin
from nnunet_swin import cli
from nnunet_swin.registration import ENV_VAR, ext_trainer_dir

REPO = Path(__file__).resolve().parents[1]
OWN_PARSERS = ("demo", "doctor", "trainers", "ext-trainer-dir", "bench")


def _cli(*args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in (ENV_VAR, "PYTHONPATH")}
    return subprocess.run([sys.executable, "-m", "nnunet_swin.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**base, "PYTHONPATH": str(REPO), ENV_VAR: ext_trainer_dir(), **env})


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser, as cli.main builds them."""
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_version():
    proc = _cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"nnunet-swin {nnunet_swin.__version__} (nnunetv2 2."), proc.stdout
    assert "torch 2." in proc.stdout


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_unknown_argument_prints_the_subcommands_usage(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "-f", "0", "--no-such-option"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: nnunet-swin {command} "), err
    assert f"nnunet-swin {command}: error:" in err


def test_doctor_reports_unknown_flags_with_its_usage(capsys):
    with pytest.raises(SystemExit):
        cli.main(["doctor", "-f", "0"])
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "usage: nnunet-swin doctor [-h] [--no-subprocess]"
    assert err.splitlines()[-1] == "nnunet-swin doctor: error: unrecognized arguments: -f 0"


@pytest.mark.parametrize("command", OWN_PARSERS)
def test_help_states_each_default_once_and_plainly(command):
    text = _subcommands()[command].format_help()
    flat = " ".join(text.split())
    assert "``" not in text and "(default: None)" not in flat
    for option in flat.split(" --")[1:]:
        assert option.count("(default") <= 1, option


def test_help_formatter_appends_the_default_only_where_missing():
    demo = _subcommands()["demo"]
    flat = " ".join(demo.format_help().split())
    assert "--workdir WORKDIR folder for the demo's nnUNet_raw, nnUNet_preprocessed and nnUNet_results " \
           "(default: nnunet_swin_demo)" in flat
    assert "--size H W image size (default: 96 128)" in flat
    assert "(default: 10 on the CPU, 50 on a GPU)" in flat


def test_trainers_lists_every_registered_trainer_with_what_it_changes():
    from nnunet_swin.trainers.variants import TRAINERS

    proc = _cli("trainers")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in proc.stdout.splitlines()[1:]}
    assert list(rows) == [t.__name__ for t in TRAINERS]
    assert all(rows.values())
    assert rows["nnUNetTrainerSwinUnet_0skip"] == "nnUNetTrainerSwinUnet with num_skips = 0"
    assert rows["nnUNetTrainerSwinUnetIN1k_2skip"] == "nnUNetTrainerSwinUnetIN1k with num_skips = 2"
    assert rows["nnUNetTrainerSwinUnet_bilinear"] == "nnUNetTrainerSwinUnet with upsampling = 'bilinear'"
    assert rows["nnUNetTrainerSwinUnet_SGD"].startswith("The paper's optimiser: SGD lr 0.05")


def test_demo_refuses_a_misspelled_trainer_before_any_work(tmp_path):
    workdir = tmp_path / "demo"
    start = time.monotonic()
    proc = _cli("demo", "--trainer", "nnUNetTrainerSwinUnt_1skip", "--workdir", str(workdir), "--device", "cpu",
                timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert time.monotonic() - start < 60
    assert proc.stderr.strip().splitlines() == [
        "nnunet-swin demo: error: --trainer nnUNetTrainerSwinUnt_1skip: nnU-Net finds no trainer named "
        "'nnUNetTrainerSwinUnt_1skip'; did you mean nnUNetTrainerSwinUnet_1skip? (also close: "
        "nnUNetTrainerSwinUnet_3skip, nnUNetTrainerSwinUnet_2skip)"]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not workdir.exists()


def test_short_schedule_subclass_of_any_trainer_is_found_by_nnunet(tmp_path):
    """The demo's subclass of a trainer nnU-Net finds (its own nnUNetTrainer here, and one of this plugin's),
    looked up by nnU-Net from nnUNet_extTrainer, carries the demo's schedule."""
    from nnunet_swin.demo import short_schedule_trainer

    code = ("import sys; from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; "
            "c = f(sys.argv[1]); print([b.__name__ for b in c.__mro__][:3], c.epochs, c.iterations)")
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env.update(PYTHONPATH=str(REPO), **{ENV_VAR: ext_trainer_dir() + os.pathsep + str(tmp_path / "ext")})
    name = short_schedule_trainer("nnUNetTrainer", 3, 7, str(tmp_path / "ext"))
    out = subprocess.run([sys.executable, "-c", code, name], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[-1] == "['nnUNetTrainer_demo3x7', 'ShortSchedule', 'nnUNetTrainer'] 3 7"
    # the module holds one subclass at a time (the demo trains one trainer): now one of this plugin's
    name = short_schedule_trainer("nnUNetTrainerSwinUnet_1skip", 2, 5, str(tmp_path / "ext"))
    out = subprocess.run([sys.executable, "-c", code, name], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[-1] == \
        "['nnUNetTrainerSwinUnet_1skip_demo2x5', 'ShortSchedule', 'nnUNetTrainerSwinUnet_1skip'] 2 5"


@pytest.mark.slow
def test_demo_trains_another_trainer_on_the_demos_schedule(tmp_path):
    """End to end: ``demo --trainer nnUNetTrainerSwinUnet_1skip --epochs 1 --iters 2`` trains one epoch of two
    iterations (it used to train nnU-Net's 1000 x 250 under a banner saying otherwise)."""
    proc = _cli("demo", "--trainer", "nnUNetTrainerSwinUnet_1skip", "--workdir", str(tmp_path / "demo"),
                "--epochs", "1", "--iters", "2", "--num-train", "8", "--num-test", "2", "--size", "64", "64",
                "--device", "cpu", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "trainer nnUNetTrainerSwinUnet_1skip_demo1x2, 1 epochs x 2 iterations" in proc.stdout
    assert "Epoch 0" in proc.stdout and "Epoch 1" not in proc.stdout
    results = tmp_path / "demo" / "results"
    folder = next(results.glob("Dataset990_*/nnUNetTrainerSwinUnet_1skip_demo1x2__nnUNetPlans__2d"))
    assert (folder / "fold_0" / "checkpoint_final.pth").is_file()
    assert "mean foreground" in proc.stdout


def test_demo_takes_nnunets_flag_names():
    demo = _subcommands()["demo"]
    args = demo.parse_args(["-d", "991", "-tr", "nnUNetTrainer", "-device", "cpu"])
    assert (args.dataset_id, args.trainer, args.device) == (991, "nnUNetTrainer", "cpu")
    assert demo.parse_args(["--dataset-id", "992", "--device", "cuda"]).dataset_id == 992
