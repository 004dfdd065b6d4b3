"""The shared study options and command lines (nnunet_swin/experiments/study.py): every option reaches the
SLURM aggregation job, nnU-Net's flag names parse, and --help is clean."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import pytest

from nnunet_swin.experiments import ablation, jobs
from nnunet_swin.experiments import msd_benchmark as mb
from nnunet_swin.experiments.study import StudyOptions


def _parser(module) -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="nnunet-swin")
    module.add_parser(top.add_subparsers(dest="command"))
    return top


@pytest.mark.parametrize("module, options", [
    (ablation, ablation.AblationOptions(dataset="Dataset004_X", configuration="3d_fullres", plans="P", skips=[1, 3],
                                        trainer_pattern="My_{k}skip", reference=1, folds=["2", "4"],
                                        nsd_tolerance_mm=2.5)),
    (mb, mb.Options(["/a/Task04_X.tar", "/b"], tasks=[4], trainers=["A:2d", "B"], configurations=["2d"],
                    plans="nnUNetResEncUNetMPlans", resenc=["L"], id_offset=100, num_processes=2, ensembling=False,
                    folds=["0"], nsd_tolerance_mm=0.5)),
])
def test_every_report_option_reaches_the_aggregation_job(module, options):
    """argv() -> the subcommand's parser -> the same options: none is lost on the way to the cluster. Each
    field here differs from its default, so a field argv() forgot would come back as the default."""
    cls = type(options)
    shared = {f.name for f in dataclasses.fields(StudyOptions) if not f.metadata["to_cluster"]}
    for f in dataclasses.fields(cls):
        if f.name not in shared:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            assert getattr(options, f.name) != default, f"{f.name} is at its default in this test"
    back = cls.from_args(_parser(module).parse_args([cls.command, *options.argv()]))
    # positional arguments first: after an option taking several values (--folds 0 1) they would be its values
    assert options.argv()[:2] == ["/a/Task04_X.tar", "/b"] if module is mb else options.argv()[0].startswith("--")
    only_folds = dataclasses.replace(options, **{f.name: f.default for f in dataclasses.fields(cls)
                                                 if f.name not in ("folds", "paths", "dataset")
                                                 and f.default is not dataclasses.MISSING})
    assert cls.from_args(_parser(module).parse_args([cls.command, *only_folds.argv()])) == only_folds
    for f in dataclasses.fields(cls):
        if f.name not in shared:
            assert [str(v) for v in getattr(back, f.name)] == [str(v) for v in getattr(options, f.name)] \
                if isinstance(getattr(options, f.name), list) else getattr(back, f.name) == getattr(options, f.name)


def test_nnunet_flag_names_parse():
    a = _parser(ablation).parse_args(["ablate-skips", "-d", "4", "-device", "cpu", "-f", "0", "1", "-c", "3d_fullres",
                                      "-p", "P", "-tr", "X_{k}skip", "--dry-run"])
    assert (a.dataset, a.device, a.folds, a.configuration, a.plans, a.trainer_pattern, a.dry_run) == (
        "4", "cpu", ["0", "1"], "3d_fullres", "P", "X_{k}skip", True)
    assert a.func is ablation.handle_args
    m = _parser(mb).parse_args(["benchmark-msd", "x", "-tr", "A", "B:3d_fullres", "-c", "2d", "-f", "0", "-device",
                                "cpu", "-np", "2", "-p", "nnUNetResEncUNetLPlans"])
    o = mb.Options.from_args(m)
    assert (o.trainers, o.configurations, o.folds, o.device, o.num_processes, o.plans) == (
        ["A", "B:3d_fullres"], ["2d"], ["0"], "cpu", 2, "nnUNetResEncUNetLPlans")
    assert mb.build_models(o.trainers, o.configurations, o.resenc, o.plans) == [
        mb.Model("A", "nnUNetResEncUNetLPlans", "2d"), mb.Model("B", "nnUNetResEncUNetLPlans", "3d_fullres")]


@pytest.mark.parametrize("module, command", [(ablation, "ablate-skips"), (mb, "benchmark-msd")])
def test_help_is_clean(module, command, capsys):
    with pytest.raises(SystemExit):
        _parser(module).parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: [])" not in text
    assert ") (default:" not in text and "``" not in text and ":func:" not in text
    assert "-device {cuda,cpu,mps}, --device {cuda,cpu,mps}" in text and "-f FOLD [FOLD ...], --folds" in text


def test_a_run_that_never_trained_blocks_no_later_study(tmp_path):
    """A failed attempt with nothing in its result folder (nnU-Net did not find the trainer, say) is not part
    of any study: a study with another trainer pattern in the same folder is not refused for it, and it does
    not join the report; a run that did train still identifies the folder's study."""
    env = {"nnUNet_results": str(tmp_path / "res"), "nnUNet_preprocessed": str(tmp_path / "pre")}
    records = str(tmp_path / "out" / "runs")
    typo = jobs.Job("Dataset004_X", "2d", "0", "Typo_0skip", tags=(("skips", 0),))
    jobs.save_record(records, jobs.RunRecord(job=typo, status=jobs.Status.FAILED, returncode=1,
                                             fold_dir=typo.fold_dir(env)))
    right = ablation.build_jobs("Dataset004_X", folds=[0], skips=[0])
    assert ablation.study_jobs(right, records, ablation.DEFAULT_TRAINER_PATTERN, env) == right
    os.makedirs(os.path.join(typo.fold_dir(env), "validation"))  # the typo's run did train after all
    open(os.path.join(typo.fold_dir(env), "checkpoint_final.pth"), "w").close()
    json.dump({}, open(os.path.join(typo.fold_dir(env), "validation", "summary.json"), "w"))
    with pytest.raises(ValueError, match="holds a study of trainer Typo_0skip"):
        ablation.study_jobs(right, records, ablation.DEFAULT_TRAINER_PATTERN, env)
