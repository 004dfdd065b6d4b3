"""The one pipeline both studies (``ablate-skips``, ``benchmark-msd``) run, and their shared options.

Owns:

* the options: a dataclass per study whose fields, declared with :func:`option`, generate the subcommand's
  argparse arguments (:func:`add_study_parser`), the options from parsed arguments (``from_args``) and the
  arguments the SLURM aggregation job gets back (``argv``), so no option is written twice and none is lost
  on the way to the cluster; :class:`StudyOptions` holds those both studies have;
* :func:`run_study`: checks before any work (option values, data sets and plans, then nnU-Net's trainer
  lookup and the device in one helper process, then the report folder's study), then SLURM script / dry
  run / run, the runs recorded by earlier calls merged in, the study's aggregation, and ``runs.csv``;
* :func:`handle`: a set-up error is one line on stderr and exit code 2.

A study supplies what differs (:class:`Study`): its trainers, how its jobs are prepared, how recorded runs
merge, and its report. Only the standard library is imported at module level.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol

from nnunet_swin.experiments.checks import SetupError, check_devices_and_trainers
from nnunet_swin.experiments.jobs import DEFAULT_FOLDS, Job, run_rows, write_runs_csv
from nnunet_swin.experiments.local import run_jobs, summarize_report
from nnunet_swin.experiments.metrics import DEFAULT_NSD_TOLERANCE_MM
from nnunet_swin.experiments.slurm import write_slurm_script

Echo = Callable[[str], None]


def option(*flags: str, help: str, default: Any = None, to_cluster: bool = True, **argparse_kwargs) -> Any:
    """A dataclass field that is also a command-line option: ``flags`` and ``argparse_kwargs`` as for
    ``add_argument`` (no flags: a positional argument); ``to_cluster``: whether the SLURM aggregation job
    gets it back (options that only steer training do not)."""
    kw_only = argparse_kwargs.pop("kw_only", True)  # False: a positional parameter of the dataclass too
    meta = {"flags": flags, "help": help, "kwargs": argparse_kwargs, "to_cluster": to_cluster}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: list(default), metadata=meta, kw_only=kw_only)
    if default is dataclasses.MISSING:
        return field(metadata=meta, kw_only=kw_only)
    return field(default=default, metadata=meta, kw_only=kw_only)


REQUIRED = dataclasses.MISSING


@dataclass(kw_only=True)
class StudyOptions:
    """Options of both studies. Subclasses add theirs; field names are the argparse destinations."""

    #: The subcommand (``nnunet-swin <command>``) and the helper that runs it.
    command: ClassVar[str] = ""

    folds: list[str] = option("-f", "--folds", nargs="+", default=DEFAULT_FOLDS, metavar="FOLD",
                              help="nnU-Net cross-validation folds")
    device: str = option("-device", "--device", default="cuda", choices=["cuda", "cpu", "mps"], to_cluster=False,
                         help="nnUNetv2_train -device; checked before anything runs")
    gpus: str | None = option("--gpus", to_cluster=False, metavar="IDS",
                              help="comma-separated GPU ids: one run per GPU at a time, queued")
    slurm: str | None = option("--slurm", metavar="FILE", to_cluster=False,
                               help="write a SLURM submit script (job array + dependent aggregation job) "
                                    "instead of training here")
    slurm_options: list[str] = option("--slurm-option", action="append", default=[], metavar="OPT", to_cluster=False,
                                      help="extra sbatch option(s) for every job, split as a shell would "
                                           "(repeatable), e.g. --slurm-option=--time=24:00:00 "
                                           "--slurm-option=\"--partition gpu\"; GPU requests (--gres, --gpus...) "
                                           "go to the training tasks only")
    slurm_cpus: int = option("--slurm-cpus", type=int, default=1, metavar="N", to_cluster=False,
                             help="CPUs per SLURM job (--cpus-per-task): nnU-Net's data augmentation workers use "
                                  "them; at most what the partition's nodes have")
    dry_run: bool = option("--dry-run", action="store_true", default=False, to_cluster=False,
                           help="check everything, print the nnU-Net commands, run nothing")
    aggregate_only: bool = option("--aggregate-only", action="store_true", default=False, to_cluster=False,
                                  help="train nothing; write the report from what exists")
    #: Each study says where its report folder is by default.
    out: str | None = option("--out", to_cluster=False, metavar="DIR", help="report folder")
    nsd_tolerance_mm: float = option("--nsd-tolerance", type=float, default=DEFAULT_NSD_TOLERANCE_MM, metavar="MM",
                                     help="NSD tolerance in mm")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One argparse argument per field: positional ones, then the study's own, then the shared ones."""
        shared = {f.name for f in dataclasses.fields(StudyOptions)}
        fields = sorted(dataclasses.fields(cls), key=lambda f: (bool(f.metadata["flags"]), f.name in shared))
        for f in fields:
            kwargs = dict(f.metadata["kwargs"], help=f.metadata["help"])
            if not f.metadata["flags"]:
                parser.add_argument(f.name, **kwargs)
                continue
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                kwargs["required"] = True
            else:
                kwargs["default"] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            parser.add_argument(*f.metadata["flags"], dest=f.name, **kwargs)

    @classmethod
    def from_args(cls, args: argparse.Namespace):
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    def argv(self) -> list[str]:
        """The command-line arguments that mean these options, less those that only steer training and
        those at their default (for reports and the SLURM aggregation job)."""
        positional: list[str] = []  # first: an option with nargs="+" before them would take them
        out: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not f.metadata["to_cluster"]:
                continue
            if not f.metadata["flags"]:
                positional += list(map(str, value))
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if default is not dataclasses.MISSING and _same(value, default):
                continue
            flag = max(f.metadata["flags"], key=len)  # the long form: reads best in reports and scripts
            action = f.metadata["kwargs"].get("action")
            if action in ("store_true", "store_false"):
                out.append(flag)
            elif isinstance(value, (list, tuple)):
                out += [flag, *map(str, value)]
            else:
                out += [flag, str(value)]
        return positional + out


def _same(value, default) -> bool:
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return [str(v) for v in value] == [str(v) for v in default]
    return value == default


@dataclass
class Plan:
    """What a study will do: its jobs (prepared, checked), its report folder, and problems already found
    (a malformed task: skipped, and the exit code says so)."""

    jobs: list[Job]
    out_dir: str
    options: StudyOptions
    problems: list[str] = field(default_factory=list)
    #: What the study keeps for its report (the MSD benchmark: the prepared tasks).
    context: Any = None


class Study(Protocol):
    """What differs between the studies; :func:`run_study` calls these in this order."""

    #: runs.csv's leading columns (the jobs' tags).
    tag_names: tuple[str, ...]

    def job_name(self, plan: Plan) -> str:
        """The SLURM job name."""

    def check(self, options: StudyOptions, environ: dict) -> None:
        """The quick checks (option values, nnU-Net paths, data sets, plans); raise SetupError or ValueError."""

    def trainers(self, options: StudyOptions) -> list[str]:
        """Every trainer the study would train (checked with nnU-Net's lookup before anything runs)."""

    def plan(self, options: StudyOptions, environ: dict, echo: Echo) -> Plan:
        """Checks of the options, then jobs (the MSD benchmark converts and preprocesses here)."""

    def merge(self, plan: Plan, records_dir: str, environ: dict) -> list[Job]:
        """The plan's jobs and the runs of the same study earlier calls recorded; raises SetupError when the
        folder holds another study."""

    def aggregation_options(self, plan: Plan, environ: dict) -> StudyOptions:
        """The options the SLURM aggregation job gets (e.g. names resolved at submission)."""

    def report(self, plan: Plan, jobs: list[Job], records: list[dict], environ: dict, echo: Echo) -> bool:
        """Write the study's report over ``jobs``; whether it is complete."""


def run_study(study: Study, options: StudyOptions, environ=None, echo: Echo = print) -> int:
    """The whole study. Returns the exit code: 0 when every run completed and the report covers them all.

    The report covers the runs asked for *and* every run of the same study recorded in the report folder by
    earlier calls: a narrower rerun never shrinks it (for a report on fewer runs, give another ``--out``)."""
    environ = dict(os.environ if environ is None else environ)
    o = options
    study.check(o, environ)
    if not o.aggregate_only:
        check_devices_and_trainers(study.trainers(o), None if o.slurm else o.device, environ)
    plan = study.plan(o, environ, echo)
    records_dir = os.path.join(plan.out_dir, "runs")
    merged = study.merge(plan, records_dir, environ)  # before training: another study's folder is refused now
    if o.slurm:
        if not plan.jobs:
            echo("no task could be prepared; no SLURM script written")
            return 1
        aggregate = [sys.executable, "-m", "nnunet_swin.cli", o.command,
                     *study.aggregation_options(plan, environ).argv(), "--out", plan.out_dir, "--aggregate-only"]
        write_slurm_script(o.slurm, plan.jobs, plan.out_dir, aggregate, device=o.device, job_name=study.job_name(plan),
                           sbatch_options=o.slurm_options, cpus_per_task=o.slurm_cpus, environ=environ)
        echo(f"wrote {o.slurm}: {len(plan.jobs)} array tasks + aggregation into {plan.out_dir}; "
             f"submit with `bash {o.slurm}`")
        return 0 if not plan.problems else 1
    ok = not plan.problems
    if not o.aggregate_only:
        report = run_jobs(plan.jobs, plan.out_dir, device=o.device, gpus=o.gpus, dry_run=o.dry_run, environ=environ,
                          echo=echo)
        if o.dry_run:
            return 0 if ok else 1
        echo(summarize_report(report))
        ok = ok and report.all_ok
    if len(merged) > len(plan.jobs):
        echo(f"note: {plan.out_dir} also holds {len(merged) - len(plan.jobs)} earlier runs of this study; the "
             f"report covers all {len(merged)} (use another --out for a report on these runs only)")
    records = run_rows(merged, records_dir, environ, keep=True) if merged else []
    if merged:
        write_runs_csv(os.path.join(plan.out_dir, "runs.csv"), records, study.tag_names)
        echo(f"wrote {os.path.join(plan.out_dir, 'runs.csv')}")
    return 0 if study.report(plan, merged, records, environ, echo) and ok else 1


def handle(study: Study, options: StudyOptions, environ=None, echo: Echo = print) -> int:
    """:func:`run_study` for the command line: a set-up error (no such data set, nnU-Net paths unset, a
    trainer nnU-Net cannot find, no GPU for --device cuda, ...) is one line on stderr and exit code 2."""
    try:
        return run_study(study, options, environ, echo)
    except (SetupError, RuntimeError, ValueError, FileNotFoundError) as e:
        print(f"{options.command}: error: {str(e).strip()}", file=sys.stderr)
        return 2


def add_study_parser(subparsers, options_cls: type[StudyOptions], help: str, description: str,
                     func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """The study's subcommand with one argument per option field; ``func(args)`` runs it."""
    p = subparsers.add_parser(options_cls.command, help=help, description=description.replace("``", ""))
    options_cls.add_arguments(p)
    p.set_defaults(func=func)
    return p
