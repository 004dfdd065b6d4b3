"""The Decathlon benchmark (``nnunet-swin benchmark-msd``): Swin-Unet variants against nnU-Net's own
baselines, trained and judged the way "nnU-Net Revisited" asks for, in one command.

For each task: convert and preprocess (:mod:`nnunet_swin.experiments.msd`), train every model over the folds
with the shared study pipeline (:mod:`nnunet_swin.experiments.study`: checks first, resume, one run per
GPU, SLURM array, dry run), run nnU-Net's ``find_best_configuration`` over the trained models, and write a leaderboard from
nnU-Net's result files:

* ``<out>/<dataset>/leaderboard.csv`` / ``.md``: one row per model (trainer x plans x configuration): rank by
  mean foreground Dice over the cross-validation cases (nnU-Net's ``foreground_mean``: the mean over labels
  of each label's mean Dice), Dice and HD95 per label, a paired Wilcoxon test of each model against the
  first, parameters and GMACs per patch (the network nnU-Net's predictor builds from the trained folder),
  seconds per epoch (nnU-Net's training log), peak GPU memory (the runner's record), and which model or
  ensemble ``find_best_configuration`` picked; ``per_case.csv`` beside it;
* ``<out>/leaderboard.csv`` / ``.md``: over tasks, each model's Dice per task and its mean rank;
* ``<out>/runs.csv``: every training run.

Each covers the runs of this call and every run earlier calls recorded in ``<out>/runs/``
(:func:`study_tasks`), so a narrower rerun (fewer tasks, trainers or folds) never shrinks a leaderboard.

Models: ``--trainers`` entries ``TRAINER[:CONFIGURATION[:PLANS]]`` run on every ``--configurations`` entry
(default ``2d``) unless pinned. The default models (no ``--trainers``): on 2D configurations Swin-Unet with
0-3 skips and nnU-Net's CNN, on 3D ones the default Swin-Unet (3 skips) and nnU-Net's CNN; without
``--configurations`` they run on ``2d`` and, for each task whose plans have it (nnU-Net plans it for 3D
images), on ``3d_fullres``. A configuration named in ``--configurations`` that a task's plans lack is an
error naming the planned ones (the task is skipped). ``--resenc M|L|XL`` adds ``nnUNetTrainer`` with that
residual-encoder preset on the same configurations. Every row of every table names its configuration; 2D
and 3D models meet only in nnU-Net's ``find_best_configuration`` (its ensembles may combine them).

Only the standard library is imported at module level.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Callable, Sequence

from nnunet_swin.experiments.checks import SetupError
from nnunet_swin.experiments.jobs import FoldState, Job, fold_state, recorded_jobs
from nnunet_swin.experiments.leaderboard import TaskBoard, task_board, write_overall, write_task_board
from nnunet_swin.experiments.models import Model, find_best
from nnunet_swin.experiments.msd import (
    TASK_RE,
    MSDTask,
    TaskError,
    check_id_free,
    check_task,
    conversion_args,
    convert_task,
    discover_tasks,
    missing_preprocessing,
    plan_and_preprocess,
    preprocess_args,
)
from nnunet_swin.experiments.nnunet_files import env_path, planned_configurations
from nnunet_swin.experiments.study import REQUIRED, Plan, StudyOptions, add_study_parser, handle, option, run_study

#: Without --trainers: the models on a 2D configuration (the paper's skip study next to nnU-Net's CNN) ...
DEFAULT_TRAINERS = ("nnUNetTrainerSwinUnet_0skip", "nnUNetTrainerSwinUnet_1skip", "nnUNetTrainerSwinUnet_2skip",
                    "nnUNetTrainerSwinUnet_3skip", "nnUNetTrainer")
#: ... and on a 3D one (one Swin-Unet: a 3D training costs many 2D ones).
DEFAULT_3D_TRAINERS = ("nnUNetTrainerSwinUnet", "nnUNetTrainer")
#: Configurations of the default models; of named trainers: 2d.
DEFAULT_CONFIGURATIONS = ("2d", "3d_fullres")
#: Default configurations trained only for tasks whose plans have them (nnU-Net plans 3d_fullres for 3D images).
IF_PLANNED = frozenset({"3d_fullres"})
DEFAULT_PLANNER = ("ExperimentPlanner", "nnUNetPlans")
RESENC_PRESETS = {k: (f"nnUNetPlannerResEnc{k}", f"nnUNetResEncUNet{k}Plans") for k in ("M", "L", "XL")}
PLANNER_OF_PLANS = {plans: planner for planner, plans in [DEFAULT_PLANNER, *RESENC_PRESETS.values()]}
CONVERTED_RE = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9]+)$")



# --- models and jobs ---------------------------------------------------------------------------------
def parse_trainer_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``TRAINER[:CONFIGURATION[:PLANS]]`` -> (trainer, configuration or None, plans or None)."""
    parts = spec.split(":")
    if len(parts) > 3 or not parts[0] or any(p == "" for p in parts[1:]):
        raise SetupError(f"--trainers entry {spec!r}: expected TRAINER, TRAINER:CONFIGURATION or "
                         "TRAINER:CONFIGURATION:PLANS, e.g. nnUNetTrainer:3d_fullres")
    return parts[0], parts[1] if len(parts) > 1 else None, parts[2] if len(parts) > 2 else None


def build_models(trainers: Sequence[str] | None = None, configurations: Sequence[str] | None = None,
                 resenc: Sequence[str] = (), plans: str = DEFAULT_PLANNER[1]) -> list[Model]:
    """The models to train, in order, without duplicates (None: the defaults, see the module's docstring)."""
    if configurations is None:
        configurations = DEFAULT_CONFIGURATIONS if trainers is None else ("2d",)
    models: list[Model] = []
    if trainers is None:
        for c in configurations:
            models += [Model(t, plans, c) for t in (DEFAULT_TRAINERS if c.startswith("2d")
                                                                 else DEFAULT_3D_TRAINERS)]
    for spec in trainers or ():
        trainer, config, pinned = parse_trainer_spec(spec)
        models += [Model(trainer, pinned or plans, c) for c in ([config] if config else configurations)]
    for preset in resenc:
        if preset not in RESENC_PRESETS:
            raise SetupError(f"--resenc {preset!r}: choose from {', '.join(RESENC_PRESETS)}")
        models += [Model("nnUNetTrainer", RESENC_PRESETS[preset][1], c) for c in configurations]
    if not models:
        raise SetupError("no models to benchmark: check --trainers and --configurations")
    return list(dict.fromkeys(models))


def if_planned(trainers: Sequence[str] | None, configurations: Sequence[str] | None) -> frozenset[str]:
    """Configurations trained only where planned: those of the default models; none that the user named
    (in --configurations or pinned to a trainer): for those a task's plans must have them."""
    return IF_PLANNED if trainers is None and configurations is None else frozenset()


def planned_models(dataset: str, models: Sequence[Model], optional: frozenset[str], environ,
                   echo: Callable[[str], None]) -> list[Model]:
    """``models`` less those on an ``optional`` configuration the data set's plans lack (a 2D data set has no
    3d_fullres), said in a note. Before planning (a dry run) every model is kept, and a note says so."""
    keep, dropped, unknown = [], {}, {}
    for m in models:
        planned = planned_configurations(dataset, m.plans, environ) if m.configuration in optional else None
        if m.configuration in optional and planned is None:
            unknown.setdefault((m.plans, m.configuration), []).append(m.trainer)
        elif planned is not None and m.configuration not in planned:
            dropped.setdefault((m.plans, m.configuration), []).append(m.trainer)
            continue
        keep.append(m)
    for (plans, config), trainers in unknown.items():
        echo(f"note: {dataset} is not planned with {plans} yet; {', '.join(trainers)} on {config} are listed as if "
             f"it will have {config} (nnU-Net plans it for 3D images)")
    for (plans, config), trainers in dropped.items():
        echo(f"note: {dataset}: plans {plans} have no {config} (nnU-Net plans it for 3D images only); "
             f"{', '.join(trainers)} on {config} left out")
    return keep


def plans_to_prepare(models: Sequence[Model]) -> dict[str, list[str]]:
    """{plans name: configurations} that preprocessing must produce."""
    out: dict[str, list[str]] = {}
    for m in models:
        if m.plans not in PLANNER_OF_PLANS:
            raise SetupError(f"plans {m.plans!r}: the benchmark can plan {', '.join(PLANNER_OF_PLANS)}; for other "
                             "plans run nnUNetv2_plan_experiment yourself and pass --aggregate-only or the "
                             "training commands")
        out.setdefault(m.plans, [])
        if m.configuration not in out[m.plans]:
            out[m.plans].append(m.configuration)
    return out


def build_jobs(dataset: str, task: MSDTask, models: Sequence[Model], folds: Sequence[str]) -> list[Job]:
    """Fold outermost: an interrupted benchmark already compares every model on the first folds. Repeated
    folds count once."""
    return [Job(dataset, m.configuration, f, m.trainer, m.plans, (("task", task.task_name),))
            for f in dict.fromkeys(str(f) for f in folds) for m in models]


def study_tasks(prepared: Sequence[tuple[MSDTask, str]], jobs: Sequence[Job], records_dir: str, environ=None
                ) -> list[tuple[MSDTask, str, list[Model], list[str]]]:
    """(task, data set, models, folds) for every task of the benchmark folder: the jobs of this call plus
    every run earlier calls recorded in ``records_dir``, so a narrower rerun (fewer tasks, trainers or folds)
    never shrinks the leaderboards."""
    study = list(dict.fromkeys([*jobs, *(j for j in recorded_jobs(records_dir, environ) if "task" in dict(j.tags))]))
    tasks = {dataset: task for task, dataset in prepared}
    for j in study:
        m = TASK_RE.match(str(dict(j.tags)["task"]))
        if j.dataset not in tasks and m:
            tasks[j.dataset] = MSDTask(int(m.group(1)), m.group(2), "")
    out = []
    for dataset, task in tasks.items():
        mine = [j for j in study if j.dataset == dataset]
        models = list(dict.fromkeys(Model(j.trainer, j.plans, j.configuration) for j in mine))
        out.append((task, dataset, models, list(dict.fromkeys(j.fold for j in mine))))
    return out


# --- the benchmark -------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class Options(StudyOptions):
    """``nnunet-swin benchmark-msd``'s options (field names are the argparse destinations)."""

    command = "benchmark-msd"

    paths: list[str] = option(nargs="+", metavar="TASK_DIR_OR_TAR", default=REQUIRED, kw_only=False,
                              help="MSD task folders (TaskXX_Name), their .tar archives, or folders holding them; "
                                   "with --aggregate-only also the converted data sets ($nnUNet_raw/DatasetXXX_Name)")
    tasks: list[int] | None = option("--tasks", nargs="+", type=int, metavar="N", help="task numbers, e.g. 4 5")
    trainers: list[str] | None = option(
        "-tr", "--trainers", nargs="+", metavar="TRAINER[:CONFIG[:PLANS]]",
        help="trainers, each on every --configurations entry; pin a configuration / plans with ':' (default: on 2D "
             f"configurations {' '.join(DEFAULT_TRAINERS)}, on 3D ones {' '.join(DEFAULT_3D_TRAINERS)})")
    configurations: list[str] | None = option(
        "-c", "--configurations", nargs="+", metavar="CONFIG",
        help="nnU-Net configurations, e.g. 2d 3d_fullres; one a task's plans lack skips the task with an error "
             "naming the planned ones (default: 2d; for the default models also 3d_fullres, for tasks whose plans "
             "have it)")
    plans: str = option("-p", "--plans", default=DEFAULT_PLANNER[1], choices=sorted(PLANNER_OF_PLANS), metavar="PLANS",
                        help="plans of the trainers not pinned to other plans: "
                             f"{', '.join(sorted(PLANNER_OF_PLANS))}")
    resenc: list[str] = option("--resenc", nargs="*", default=[], choices=sorted(RESENC_PRESETS),
                               help="also nnUNetTrainer with these residual-encoder presets (nnU-Net Revisited)")
    out: str | None = option("--out", to_cluster=False, metavar="DIR",
                             help="report folder (default: $nnUNet_results/nnunet_swin_msd_benchmark)")
    id_offset: int = option("--id-offset", type=int, default=0, metavar="N",
                            help="data set id = task number + this (when the MSD ids are taken by other data sets)")
    num_processes: int = option("-np", "--num-processes", type=int, default=4, metavar="N",
                                help="processes for conversion, preprocessing and find_best_configuration")
    ensembling: bool = option("--no-ensembling", action="store_false", default=True,
                              help="find_best_configuration without ensembles (faster on large tasks)")


def options_from_args(a: argparse.Namespace) -> Options:
    return Options.from_args(a)


def default_out_dir(environ=None) -> str:
    return os.path.join(env_path("nnUNet_results", environ), "nnunet_swin_msd_benchmark")


def converted_task(path: str, id_offset: int) -> MSDTask | None:
    """A converted data set folder (``$nnUNet_raw/DatasetXXX_Name``) as the task it came from, for
    ``--aggregate-only``: the SLURM aggregation job names these (absolute), so it needs neither the archive
    nor the path as typed at submission."""
    m = CONVERTED_RE.match(os.path.basename(os.path.normpath(path)))
    if not m or not os.path.isfile(os.path.join(path, "dataset.json")):
        return None
    return MSDTask(int(m.group(1)) - id_offset, m.group(2), os.path.abspath(path))


def _list_preparation(task: MSDTask, models: Sequence[Model], optional: frozenset[str], o: Options, environ,
                      echo: Callable[[str], None]) -> str:
    """A dry run's preparation: the task checked as the real run checks it (a malformed one raises
    :class:`TaskError`, reported as [SKIPPED]), then the conversion and preprocessing commands still to run."""
    dataset = task.dataset_name(o.id_offset)
    check_id_free(task, o.id_offset, environ)
    if not os.path.isdir(os.path.join(env_path("nnUNet_raw", environ), dataset)):
        check_task(task)
        echo(shlex.join(["nnUNetv2_convert_MSD_dataset", *conversion_args(task, task.source, o.id_offset,
                                                                            o.num_processes)]))
    for plans, configs in plans_to_prepare(models).items():
        todo = missing_preprocessing(dataset, plans, configs, environ, optional)
        if todo:
            echo(shlex.join(["nnUNetv2_plan_and_preprocess", *preprocess_args(task.dataset_id(o.id_offset),
                                                                               PLANNER_OF_PLANS[plans], todo,
                                                                               o.num_processes)]))
    return dataset


def _prepare(task: MSDTask, models: Sequence[Model], optional: frozenset[str], o: Options, environ, log_dir: str,
             echo: Callable[[str], None]) -> str:
    """Convert and preprocess one task; returns the data set name. ``optional``: configurations preprocessed
    only if nnU-Net plans them."""
    dataset = task.dataset_name(o.id_offset)
    convert_task(task, o.id_offset, o.num_processes, environ, log_dir, echo)
    for plans, configs in plans_to_prepare(models).items():
        plan_and_preprocess(dataset, task.dataset_id(o.id_offset), PLANNER_OF_PLANS[plans], plans, configs,
                            o.num_processes, environ, log_dir, echo, optional)
    return dataset


@dataclass
class Prepared:
    """The tasks a call prepared, (task, data set name) each, and the benchmark folder's whole study
    (:func:`study_tasks`: these and the tasks, models and folds earlier calls recorded)."""

    tasks: list[tuple[MSDTask, str]]
    studied: list[tuple[MSDTask, str, list[Model], list[str]]] = field(default_factory=list)


class BenchmarkStudy:
    """The MSD benchmark in :func:`nnunet_swin.experiments.study.run_study`'s terms."""

    tag_names = ("task",)

    def job_name(self, plan: Plan) -> str:
        return "msd_benchmark"

    def check(self, o: Options, environ: dict) -> None:
        plans_to_prepare(build_models(o.trainers, o.configurations, o.resenc, o.plans))  # unknown plans, too
        if not o.out:
            default_out_dir(environ)  # needs nnUNet_results
        if not o.aggregate_only:
            env_path("nnUNet_raw", environ)
            env_path("nnUNet_preprocessed", environ)

    def trainers(self, o: Options) -> list[str]:
        return list(dict.fromkeys(m.trainer for m in build_models(o.trainers, o.configurations, o.resenc, o.plans)))

    def plan(self, o: Options, environ: dict, echo: Callable[[str], None]) -> Plan:
        folds = list(dict.fromkeys(str(f) for f in o.folds))
        models = build_models(o.trainers, o.configurations, o.resenc, o.plans)
        optional = if_planned(o.trainers, o.configurations)
        out_dir = os.path.abspath(o.out or default_out_dir(environ))
        converted = [converted_task(p, o.id_offset) for p in o.paths] if o.aggregate_only else []
        if converted and all(converted):
            tasks, problems = [t for t in converted if o.tasks is None or t.number in o.tasks], []
        else:
            tasks, problems = discover_tasks(o.paths, o.tasks)
        for p in problems:
            echo(f"[SKIPPED] {p}")
        prepared: list[tuple[MSDTask, str]] = []
        jobs: list[Job] = []
        for i, task in enumerate(tasks):
            if not o.aggregate_only and not o.dry_run:
                echo(f"[task {i + 1} of {len(tasks)}] {task.task_name}: conversion and preprocessing")
            try:
                if o.aggregate_only:
                    dataset = task.dataset_name(o.id_offset)
                elif o.dry_run:
                    dataset = _list_preparation(task, models, optional, o, environ, echo)
                else:
                    dataset = _prepare(task, models, optional, o, environ, os.path.join(out_dir, "logs"), echo)
            except TaskError as e:
                problems.append(str(e))
                echo(f"[SKIPPED] {e}")
                continue
            prepared.append((task, dataset))
            jobs += build_jobs(dataset, task, planned_models(dataset, models, optional, environ, echo), folds)
        return Plan(jobs, out_dir, o, problems, Prepared(prepared))

    def merge(self, plan: Plan, records_dir: str, environ: dict) -> list[Job]:
        plan.context.studied = study_tasks(plan.context.tasks, plan.jobs, records_dir, environ)
        return [j for task, dataset, ms, fs in plan.context.studied for j in build_jobs(dataset, task, ms, fs)]

    def aggregation_options(self, plan: Plan, environ: dict) -> Options:
        raw = os.path.abspath(env_path("nnUNet_raw", environ))
        return dataclasses.replace(plan.options, paths=[os.path.join(raw, d) for _, d in plan.context.tasks],
                                   tasks=None)

    def report(self, plan: Plan, jobs: list[Job], records: list[dict], environ: dict,
               echo: Callable[[str], None]) -> bool:
        o, ok = plan.options, True
        command = shlex.join(["nnunet-swin", "benchmark-msd", *o.argv(), *(["--out", o.out] if o.out else [])])
        boards: list[TaskBoard] = []
        for task, dataset, ds_models, ds_folds in plan.context.studied:
            report_dir = os.path.join(plan.out_dir, dataset)
            complete = [m for m in ds_models if all(
                fold_state(Job(dataset, m.configuration, f, m.trainer, m.plans).fold_dir(environ)) == FoldState.COMPLETE
                for f in ds_folds)]
            info = None
            if complete:
                try:
                    info = find_best(dataset, complete, ds_folds, o.ensembling, o.num_processes, environ,
                                     os.path.join(plan.out_dir, "logs", f"{dataset}__find_best.log"), echo)
                except RuntimeError as e:
                    ok = False
                    echo(f"[FAILED] {dataset}: {e}")
            board = task_board(task, dataset, ds_models, ds_folds, report_dir, os.path.join(plan.out_dir, "runs"),
                               environ, o.nsd_tolerance_mm, info, echo)
            ok = ok and not board.missing
            boards.append(board)
            for f in write_task_board(board, report_dir, command):
                echo(f"wrote {f}")
        if boards:
            for f in write_overall(boards, plan.out_dir, command):
                echo(f"wrote {f}")
        if plan.problems:
            echo(f"{len(plan.problems)} task problem(s):\n  " + "\n  ".join(plan.problems))
        return ok


def run_benchmark(o: Options, environ=None, echo: Callable[[str], None] = print) -> int:
    """The whole benchmark. Exit code 0 when every task and run completed and every leaderboard is full."""
    return run_study(BenchmarkStudy(), o, environ, echo)


def handle_args(a: argparse.Namespace) -> int:
    """Set-up errors (nnU-Net paths unset, bad trainer spec, ...) print one line and give exit code 2."""
    return handle(BenchmarkStudy(), Options.from_args(a))


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``benchmark-msd`` to an argparse subparsers object; the handler is ``args.func(args) -> exit code``."""
    return add_study_parser(subparsers, Options, "Decathlon tasks: Swin-Unet variants vs nnU-Net baselines, 5-fold "
                            "CV, find_best_configuration, leaderboards", __doc__.split("\n\n")[0], handle_args)
