"""The Decathlon benchmark (``nnunet-swin benchmark-msd``): Swin-Unet variants against nnU-Net's own
baselines, trained and judged the way "nnU-Net Revisited" asks for, in one command.

For each task: convert and preprocess (:mod:`nnunet_swin.experiments.msd`), train every model over the folds
with the shared job runner (:mod:`nnunet_swin.experiments.runner`: resume, one run per GPU, SLURM array,
dry run), run nnU-Net's ``find_best_configuration`` over the trained models, and write a leaderboard from
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
import json
import math
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

from nnunet_swin.experiments.metrics import (
    DEFAULT_NSD_TOLERANCE_MM,
    EMPTY_CONVENTION,
    fmt,
    fmt_p,
    load_json,
    mean_std,
    per_case_rows,
    wilcoxon_p,
)
from nnunet_swin.experiments.msd import (
    TASK_RE,
    MSDTask,
    TaskError,
    conversion_args,
    convert_task,
    discover_tasks,
    missing_preprocessing,
    plan_and_preprocess,
    preprocess_args,
)
from nnunet_swin.experiments.runner import (
    COMPLETE,
    Job,
    add_slurm_arguments,
    atomic_write,
    child_env,
    csv_text,
    env_path,
    epoch_times_from_logs,
    fold_state,
    log_tail,
    planned_configurations,
    recorded_jobs,
    run_history,
    run_jobs,
    run_rows,
    summarize_report,
    write_runs_csv,
    write_slurm_script,
)

#: Without --trainers: the models on a 2D configuration (the paper's skip study next to nnU-Net's CNN) ...
DEFAULT_TRAINERS = ("nnUNetTrainerSwinUnet_0skip", "nnUNetTrainerSwinUnet_1skip", "nnUNetTrainerSwinUnet_2skip",
                    "nnUNetTrainerSwinUnet_3skip", "nnUNetTrainer")
#: ... and on a 3D one (one Swin-Unet: a 3D training costs many 2D ones).
DEFAULT_3D_TRAINERS = ("nnUNetTrainerSwinUnet", "nnUNetTrainer")
#: Configurations of the default models; of named trainers: 2d.
DEFAULT_CONFIGURATIONS = ("2d", "3d_fullres")
#: Default configurations trained only for tasks whose plans have them (nnU-Net plans 3d_fullres for 3D images).
IF_PLANNED = frozenset({"3d_fullres"})
DEFAULT_FOLDS = ("0", "1", "2", "3", "4")
DEFAULT_PLANNER = ("ExperimentPlanner", "nnUNetPlans")
RESENC_PRESETS = {k: (f"nnUNetPlannerResEnc{k}", f"nnUNetResEncUNet{k}Plans") for k in ("M", "L", "XL")}
PLANNER_OF_PLANS = {plans: planner for planner, plans in [DEFAULT_PLANNER, *RESENC_PRESETS.values()]}
CONVERTED_RE = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9]+)$")


# --- models and jobs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Model:
    trainer: str
    plans: str
    configuration: str

    @property
    def folder(self) -> str:
        """nnU-Net's model folder name (``$nnUNet_results/<dataset>/<folder>``)."""
        return f"{self.trainer}__{self.plans}__{self.configuration}"


def parse_trainer_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``TRAINER[:CONFIGURATION[:PLANS]]`` -> (trainer, configuration or None, plans or None)."""
    parts = spec.split(":")
    if len(parts) > 3 or not parts[0] or any(p == "" for p in parts[1:]):
        raise ValueError(f"--trainers entry {spec!r}: expected TRAINER, TRAINER:CONFIGURATION or "
                         "TRAINER:CONFIGURATION:PLANS, e.g. nnUNetTrainer:3d_fullres")
    return parts[0], parts[1] if len(parts) > 1 else None, parts[2] if len(parts) > 2 else None


def build_models(trainers: Sequence[str] | None = None, configurations: Sequence[str] | None = None,
                 resenc: Sequence[str] = ()) -> list[Model]:
    """The models to train, in order, without duplicates (None: the defaults, see the module's docstring)."""
    if configurations is None:
        configurations = DEFAULT_CONFIGURATIONS if trainers is None else ("2d",)
    models: list[Model] = []
    if trainers is None:
        for c in configurations:
            models += [Model(t, DEFAULT_PLANNER[1], c) for t in (DEFAULT_TRAINERS if c.startswith("2d")
                                                                 else DEFAULT_3D_TRAINERS)]
    for spec in trainers or ():
        trainer, config, plans = parse_trainer_spec(spec)
        models += [Model(trainer, plans or DEFAULT_PLANNER[1], c) for c in ([config] if config else configurations)]
    for preset in resenc:
        if preset not in RESENC_PRESETS:
            raise ValueError(f"--resenc {preset!r}: choose from {', '.join(RESENC_PRESETS)}")
        models += [Model("nnUNetTrainer", RESENC_PRESETS[preset][1], c) for c in configurations]
    if not models:
        raise ValueError("no models to benchmark: check --trainers and --configurations")
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
            raise ValueError(f"plans {m.plans!r}: the benchmark can plan {', '.join(PLANNER_OF_PLANS)}; for other "
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


def study_tasks(prepared: Sequence[tuple[MSDTask, str]], jobs: Sequence[Job], records_dir: str
                ) -> list[tuple[MSDTask, str, list[Model], list[str]]]:
    """(task, data set, models, folds) for every task of the benchmark folder: the jobs of this call plus
    every run earlier calls recorded in ``records_dir``, so a narrower rerun (fewer tasks, trainers or folds)
    never shrinks the leaderboards."""
    study = list(dict.fromkeys([*jobs, *(j for j in recorded_jobs(records_dir) if "task" in dict(j.tags))]))
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


# --- per-model figures from nnU-Net's result files -----------------------------------------------------
def _model_dir(dataset: str, model: Model, environ) -> str:
    return os.path.join(env_path("nnUNet_results", environ), dataset, model.folder)


def _cached(path: str, source_mtime: float, compute: Callable[[], object]):
    """JSON cache next to the report, valid while the file it was computed from is unchanged."""
    try:
        with open(path) as f:
            data = json.load(f)
        if data.get("source_mtime") == source_mtime:
            return data["value"]
    except (OSError, ValueError, KeyError):
        pass
    value = compute()
    atomic_write(path, json.dumps({"source_mtime": source_mtime, "value": value}))
    return value


def case_rows(job: Job, cache_dir: str, environ, nsd_tolerance_mm: float) -> list[dict]:
    """per_case_rows of one fold, cached against its validation/summary.json."""
    summary = os.path.join(job.fold_dir(environ), "validation", "summary.json")
    return _cached(os.path.join(cache_dir, f"{job.model_folder_name}__fold_{job.fold}.json"),
                   os.path.getmtime(summary), lambda: per_case_rows(job, environ, nsd_tolerance_mm))


def model_cost(model_dir: str, fold: str, cache_dir: str, environ, log_path: str) -> dict:
    """Parameters and GMACs per patch of the trained network, measured in a child process (nnU-Net's
    predictor rebuilds it from the model folder, as inference does), cached against the checkpoint."""
    checkpoint = os.path.join(model_dir, f"fold_{fold}", "checkpoint_final.pth")

    def compute() -> dict:
        out = os.path.join(cache_dir, f".{os.path.basename(model_dir)}.cost.json")
        cmd = [sys.executable, "-m", "nnunet_swin.experiments.msd_benchmark", "model-cost", "--model-dir", model_dir,
               "--fold", str(fold), "--out", out]
        with open(log_path, "a") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(environ, None),
                                 stdin=subprocess.DEVNULL)
        if rc != 0:
            raise RuntimeError(f"measuring {model_dir} failed; see {log_path}:\n{log_tail(log_path, 15)}")
        value = load_json(out)
        os.unlink(out)
        return value

    return _cached(os.path.join(cache_dir, f"{os.path.basename(model_dir)}.cost.json"), os.path.getmtime(checkpoint),
                   compute)


def _model_cost_main(argv: list[str]) -> int:
    """``msd_benchmark model-cost --model-dir D --fold F --out JSON`` (child process of :func:`model_cost`)."""
    p = argparse.ArgumentParser(prog="python -m nnunet_swin.experiments.msd_benchmark model-cost")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--fold", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_swin.experiments.bench import forward_gmacs

    predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False)
    fold = a.fold if a.fold == "all" else int(a.fold)
    predictor.initialize_from_trained_model_folder(a.model_dir, (fold,), "checkpoint_final.pth")
    net = predictor.network.eval()
    patch = [int(s) for s in predictor.configuration_manager.patch_size]
    channels = len(predictor.dataset_json.get("channel_names", predictor.dataset_json.get("modality", {"0": 0})))
    gmacs = forward_gmacs(net, torch.zeros(1, channels, *patch))
    atomic_write(a.out, json.dumps({"params": sum(p.numel() for p in net.parameters()), "gmacs_per_patch": gmacs,
                                    "patch_size": patch, "network": type(net).__name__}))
    return 0


# --- find_best_configuration ---------------------------------------------------------------------------
def find_best_args(dataset: str, models: Sequence[Model], folds: Sequence[str], ensembling: bool,
                   num_processes: int) -> list[str]:
    args = ["-d", dataset, "-f", *map(str, folds), "-np", str(num_processes)]
    for m in models:
        args += ["--model", m.trainer, m.plans, m.configuration]
    return args + ([] if ensembling else ["--disable-ensembling"])


def _find_best_main(argv: list[str]) -> int:
    """``msd_benchmark find-best -d DATASET -f F.. --model TRAINER PLANS CONFIG ...``: nnU-Net's
    ``find_best_configuration`` over exactly these models (its command line would take every trainer x
    plans x configuration combination, and the Swin-Unet skip variants have no 3D runs by default)."""
    p = argparse.ArgumentParser(prog="python -m nnunet_swin.experiments.msd_benchmark find-best")
    p.add_argument("-d", required=True)
    p.add_argument("-f", nargs="+", type=int, required=True)
    p.add_argument("-np", type=int, default=4)
    p.add_argument("--model", nargs=3, action="append", required=True, metavar=("TRAINER", "PLANS", "CONFIGURATION"))
    p.add_argument("--disable-ensembling", action="store_true")
    a = p.parse_args(argv)
    from nnunetv2.evaluation.find_best_configuration import find_best_configuration

    models = [{"plans": pl, "configuration": c, "trainer": tr} for tr, pl, c in a.model]
    find_best_configuration(a.d, models, allow_ensembling=not a.disable_ensembling, num_processes=a.np,
                            overwrite=True, folds=tuple(a.f), strict=True)
    return 0


def _find_best_current(info_path: str, dataset: str, models: Sequence[Model], folds: Sequence[str], ensembling: bool,
                       environ) -> dict | None:
    """inference_information.json when it was written for exactly these models, folds and ensembling setting
    after their last validation; else None."""
    try:
        info = load_json(info_path)
        considered = {(m["trainer"], m["plans"], m["configuration"]) for m in info["considered_models"]}
        same = (considered == {(m.trainer, m.plans, m.configuration) for m in models}
                and [str(f) for f in info["folds"]] == [str(f) for f in folds]
                and bool(info["ensembling_allowed"]) == ensembling)
        newest = max(os.path.getmtime(os.path.join(_model_dir(dataset, m, environ), f"fold_{f}", "validation",
                                                   "summary.json")) for m in models for f in folds)
        return info if same and os.path.getmtime(info_path) >= newest else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find_best(dataset: str, models: Sequence[Model], folds: Sequence[str], ensembling: bool, num_processes: int,
              environ, log_path: str, echo: Callable[[str], None]) -> dict | None:
    """Run nnU-Net's find_best_configuration (unless its result is current); returns its
    inference_information.json, or None when it cannot run (e.g. fold 'all')."""
    if not all(str(f).isdigit() for f in folds):
        echo(f"note: find_best_configuration needs cross-validation folds, not {' '.join(folds)}; skipped")
        return None
    info_path = os.path.join(env_path("nnUNet_results", environ), dataset, "inference_information.json")
    info = _find_best_current(info_path, dataset, models, folds, ensembling, environ)
    if info is not None:
        echo(f"[skip] {dataset}: find_best_configuration is current")
        return info
    args = find_best_args(dataset, models, folds, ensembling, num_processes)
    echo(f"[run] find_best_configuration {shlex.join(args)}")
    with open(log_path, "a") as log:
        rc = subprocess.call([sys.executable, "-m", "nnunet_swin.experiments.msd_benchmark", "find-best", *args],
                             stdout=log, stderr=subprocess.STDOUT, env=child_env(environ, None),
                             stdin=subprocess.DEVNULL)
    if rc != 0:
        raise RuntimeError(f"find_best_configuration failed (exit code {rc}); see {log_path}:\n{log_tail(log_path, 20)}")
    return load_json(info_path)


def _selected(info: dict | None) -> tuple[set, str]:
    """(models find_best picked, a sentence saying so)."""
    if not info:
        return set(), "find_best_configuration was not run."
    best = info["best_model_or_ensemble"]
    picked = {(m["trainer"], m["plans_identifier"], m["configuration"]) for m in best["selected_model_or_models"]}
    what = " + ".join(f"{t} ({c}, {p})" for t, p, c in sorted(picked))
    kind = "the ensemble of" if len(picked) > 1 else "the single model"
    return picked, (f"nnU-Net's `find_best_configuration` picks {kind} {what}: cross-validation Dice "
                    f"{best['result_on_crossval_pre_pp']:.4f}, {best['result_on_crossval_post_pp']:.4f} after its "
                    "postprocessing.")


# --- leaderboards --------------------------------------------------------------------------------------
@dataclass
class TaskBoard:
    task: MSDTask
    dataset: str
    rows: list[dict] = field(default_factory=list)
    per_case: list[dict] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    find_best_note: str = ""


def _nanmean(values) -> float:
    return mean_std(values)[0]


def rank(values: Sequence[float]) -> list[int | None]:
    """Competition ranking, highest first ("1224"); NaN and None get no rank."""
    ok = [v for v in values if v is not None and math.isfinite(v)]
    return [None if v is None or not math.isfinite(v) else 1 + sum(o > v for o in ok) for v in values]


def task_board(task: MSDTask, dataset: str, models: Sequence[Model], folds: Sequence[str], report_dir: str,
               records_dir: str, environ, nsd_tolerance_mm: float, info: dict | None,
               echo: Callable[[str], None] = print) -> TaskBoard:
    """Leaderboard rows of one task from the result folders (complete models only are ranked)."""
    board = TaskBoard(task, dataset)
    cache = os.path.join(report_dir, "cache")
    picked, board.find_best_note = _selected(info)
    all_results = (info or {}).get("all_results", {})
    per_model_case_means: dict[Model, dict] = {}
    for m in models:
        jobs = [Job(dataset, m.configuration, str(f), m.trainer, m.plans) for f in folds]
        done = [j for j in jobs if fold_state(j.fold_dir(environ)) == COMPLETE]
        row = {"trainer": m.trainer, "configuration": m.configuration, "plans": m.plans,
               "folds": f"{len(done)}/{len(jobs)}", "selected_by_find_best": "yes" if (m.trainer, m.plans,
                                                                                        m.configuration) in picked else ""}
        for j in jobs:
            if j not in done:
                board.missing.append(f"{m.folder} fold {j.fold}: not complete ({j.fold_dir(environ)})")
        rows = [r for j in done for r in case_rows(j, cache, environ, nsd_tolerance_mm)]
        for r in rows:
            r.update({"configuration": m.configuration, "plans": m.plans})
        board.per_case += rows
        labels = list(dict.fromkeys(r["label"] for r in rows))
        board.labels += [lab for lab in labels if lab not in board.labels]
        for lab in labels:
            sel = [r for r in rows if r["label"] == lab]
            row[f"dice[{lab}]"] = _nanmean(r["dice"] for r in sel)
            row[f"hd95_mm[{lab}]"] = _nanmean(r["hd95_mm"] for r in sel)
        row["dice_mean"] = _nanmean(row[f"dice[{lab}]"] for lab in labels) if labels else math.nan
        row["hd95_mean_mm"] = _nanmean(row[f"hd95_mm[{lab}]"] for lab in labels) if labels else math.nan
        case_means: dict[tuple, list] = {}
        for r in rows:
            case_means.setdefault((r["fold"], r["case"]), []).append(r["dice"])
        per_model_case_means[m] = {k: _nanmean(v) for k, v in case_means.items()}
        row["n_cases"] = len(case_means)
        row["dice_std_cases"] = mean_std(per_model_case_means[m].values())[1]
        row["cv_dice_nnunet"] = all_results.get(m.folder, math.nan)
        row["epoch_time_s"] = _nanmean(_nanmean(epoch_times_from_logs(j.fold_dir(environ))) for j in done)
        peaks = [run_history(j, records_dir, j.fold_dir(environ)).get("peak_gpu_mem_mb") for j in done]
        peaks = [p for p in peaks if p]
        row["peak_gpu_mem_mb"] = max(peaks) if peaks else math.nan
        if done:
            try:
                cost = model_cost(_model_dir(dataset, m, environ), done[0].fold, cache, environ,
                                  os.path.join(report_dir, "model_cost.log"))
                row.update({"params_m": cost["params"] / 1e6, "gmacs_per_patch": cost["gmacs_per_patch"],
                            "patch_size": "x".join(map(str, cost["patch_size"]))})
            except RuntimeError as e:
                echo(f"warning: {e}")
        row["complete"] = len(done) == len(jobs)
        board.rows.append(row)
    ranks = rank([r["dice_mean"] if r["complete"] else math.nan for r in board.rows])
    for r, k in zip(board.rows, ranks):
        r["rank"] = k
    board.rows.sort(key=lambda r: (r["rank"] is None, r["rank"] or 0))
    if board.rows and board.rows[0]["rank"] == 1:
        first = board.rows[0]
        ref = per_model_case_means[Model(first["trainer"], first["plans"], first["configuration"])]
        for r in board.rows[1:]:
            mine = per_model_case_means[Model(r["trainer"], r["plans"], r["configuration"])]
            keys = sorted(set(ref) & set(mine))
            if r["complete"]:
                test = wilcoxon_p([mine[k] for k in keys], [ref[k] for k in keys])
                r["p_vs_first"], r["nonzero_pairs_vs_first"] = test.p, test.n_nonzero
    return board


BOARD_COLUMNS = ("rank", "trainer", "configuration", "plans", "folds", "n_cases", "dice_mean", "dice_std_cases",
                 "hd95_mean_mm", "p_vs_first", "nonzero_pairs_vs_first", "cv_dice_nnunet", "selected_by_find_best",
                 "params_m",
                 "gmacs_per_patch", "patch_size", "epoch_time_s", "peak_gpu_mem_mb")
CASE_COLUMNS = ("trainer", "configuration", "plans", "fold", "case", "label", "label_value", "dice", "hd95_mm", "nsd",
                "n_ref", "n_pred")


def _num(x, digits: int) -> str:
    return fmt(x, digits) if isinstance(x, (int, float)) else "–"


def _p_and_pairs(row: dict) -> str:
    n = row.get("nonzero_pairs_vs_first")
    return fmt_p(row.get("p_vs_first")) + (f" ({n})" if n is not None else "")


def board_markdown(board: TaskBoard, command: str) -> str:
    lines = [f"# {board.task.task_name} ({board.dataset})", "",
             f"Command: `{command}`", "",
             "Ranked by the mean foreground Dice over the cross-validation cases (the mean over labels of each "
             "label's mean Dice, nnU-Net's `foreground_mean`); only models with every fold complete are ranked. "
             "p: paired two-sided Wilcoxon signed-rank test (scipy) of the per-case mean Dice against rank 1, in "
             "brackets the pairs it ranks (those with a non-zero difference; with fewer than 6, p < 0.05 is "
             "impossible).", "",
             board.find_best_note, ""]
    label_cols = "".join(f" Dice {lab} |" for lab in board.labels)
    lines.append(f"| rank | trainer | config | plans | folds | Dice |{label_cols} HD95 mm | p vs 1 | params M | "
                 "GMACs/patch | patch | s/epoch | peak GPU MiB | picked |")
    lines.append("|---:|---|---|---|---|---:|" + "---:|" * len(board.labels) + "---:|---:|---:|---:|---|---:|---:|---|")
    for r in board.rows:
        per_label = "".join(f" {_num(r.get(f'dice[{lab}]'), 4)} |" for lab in board.labels)
        lines.append(
            f"| {r['rank'] or '–'} | {r['trainer']} | {r['configuration']} | {r['plans']} | {r['folds']} | "
            f"{_num(r['dice_mean'], 4)} |{per_label} {_num(r['hd95_mean_mm'], 2)} | {_p_and_pairs(r)} | "
            f"{_num(r.get('params_m'), 2)} | {_num(r.get('gmacs_per_patch'), 3)} | {r.get('patch_size', '–')} | "
            f"{_num(r['epoch_time_s'], 1)} | {_num(r['peak_gpu_mem_mb'], 0)} | {r['selected_by_find_best']} |")
    lines += ["", "HD95 per label is in leaderboard.csv. Parameters and GMACs: the network nnU-Net's predictor builds "
              "from the trained folder, one forward pass of one patch (torch's FlopCounterMode, multiply-adds). "
              "s/epoch: nnU-Net's logged epoch time (training and its validation step), mean over folds. Peak GPU "
              "memory: `torch.cuda.max_memory_allocated` of the training process (– on the CPU or for runs "
              "trained outside this command).", "", EMPTY_CONVENTION, ""]
    if board.missing:
        lines += ["## Missing", ""] + [f"- {m}" for m in board.missing] + [""]
    return "\n".join(lines)


def overall_rows(boards: Sequence[TaskBoard]) -> list[dict]:
    """One row per model over tasks: Dice and rank per task, mean rank over the tasks where it is ranked."""
    rows: dict[tuple, dict] = {}
    for b in boards:
        for r in b.rows:
            key = (r["trainer"], r["plans"], r["configuration"])
            row = rows.setdefault(key, {"trainer": key[0], "plans": key[1], "configuration": key[2]})
            row[f"dice[{b.task.task_name}]"] = r["dice_mean"] if r["complete"] else math.nan
            row[f"rank[{b.task.task_name}]"] = r["rank"]
    for row in rows.values():
        ranks = [row.get(f"rank[{b.task.task_name}]") for b in boards]
        ranked = [k for k in ranks if k is not None]
        row["tasks_ranked"] = len(ranked)
        row["mean_rank"] = sum(ranked) / len(ranked) if ranked else math.nan
        row["mean_dice"] = _nanmean(row.get(f"dice[{b.task.task_name}]", math.nan) for b in boards)
    return sorted(rows.values(), key=lambda r: (r["tasks_ranked"] < len(boards), r["mean_rank"]
                                                if math.isfinite(r["mean_rank"]) else math.inf, -(r["mean_dice"] or 0)))


def overall_markdown(rows: Sequence[dict], boards: Sequence[TaskBoard], command: str) -> str:
    tasks = [b.task.task_name for b in boards]
    lines = ["# Decathlon benchmark: all tasks", "", f"Command: `{command}`", "",
             "Mean foreground Dice per task (5-fold cross-validation unless the command says otherwise) and the "
             "rank within the task; sorted by mean rank over the tasks where every fold is complete.", "",
             "| trainer | config | plans | mean rank | mean Dice |" + "".join(f" {t} |" for t in tasks),
             "|---|---|---|---:|---:|" + "---:|" * len(tasks)]
    for r in rows:
        cells = "".join(f" {_num(r.get(f'dice[{t}]'), 4)} ({r.get(f'rank[{t}]') or '–'}) |" for t in tasks)
        lines.append(f"| {r['trainer']} | {r['configuration']} | {r['plans']} | {_num(r['mean_rank'], 2)} | "
                     f"{_num(r['mean_dice'], 4)} |{cells}")
    return "\n".join(lines + [""])


def write_task_board(board: TaskBoard, report_dir: str, command: str) -> list[str]:
    label_cols = [f"{m}[{lab}]" for lab in board.labels for m in ("dice", "hd95_mm")]
    files = {"leaderboard.csv": csv_text(board.rows, [*BOARD_COLUMNS, *label_cols]),
             "leaderboard.md": board_markdown(board, command),
             "per_case.csv": csv_text(board.per_case, CASE_COLUMNS)}
    for name, text in files.items():
        atomic_write(os.path.join(report_dir, name), text)
    return [os.path.join(report_dir, n) for n in files]


def write_overall(boards: Sequence[TaskBoard], out_dir: str, command: str) -> list[str]:
    rows = overall_rows(boards)
    task_cols = [f"{m}[{b.task.task_name}]" for b in boards for m in ("dice", "rank")]
    files = {"leaderboard.csv": csv_text(rows, ["trainer", "configuration", "plans", "mean_rank", "mean_dice",
                                                "tasks_ranked", *task_cols]),
             "leaderboard.md": overall_markdown(rows, boards, command)}
    for name, text in files.items():
        atomic_write(os.path.join(out_dir, name), text)
    return [os.path.join(out_dir, n) for n in files]


# --- the whole benchmark ----------------------------------------------------------------------------------
@dataclass
class Options:
    paths: Sequence[str]
    tasks: Sequence[int] | None = None
    trainers: Sequence[str] | None = None  # None: the default models (module docstring)
    configurations: Sequence[str] | None = None  # None: 2d (the default models: also 3d_fullres where planned)
    resenc: Sequence[str] = ()
    folds: Sequence[str] = DEFAULT_FOLDS
    device: str = "cuda"
    gpus: str | None = None
    slurm: str | None = None
    slurm_options: Sequence[str] = ()
    dry_run: bool = False
    aggregate_only: bool = False
    out: str | None = None
    id_offset: int = 0
    num_processes: int = 4
    ensembling: bool = True
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM
    slurm_cpus: int = 1

    def argv(self) -> list[str]:
        """The command-line arguments that mean these options (for reports and the SLURM aggregation)."""
        args = [*self.paths]
        if self.tasks is not None:
            args += ["--tasks", *map(str, self.tasks)]
        if self.trainers is not None:
            args += ["--trainers", *self.trainers]
        if self.configurations:
            args += ["--configurations", *self.configurations]
        if self.resenc:
            args += ["--resenc", *self.resenc]
        args += ["--folds", *map(str, self.folds), "--device", self.device]
        if self.id_offset:
            args += ["--id-offset", str(self.id_offset)]
        args += ["-np", str(self.num_processes)] + ([] if self.ensembling else ["--no-ensembling"])
        if self.nsd_tolerance_mm != DEFAULT_NSD_TOLERANCE_MM:
            args += ["--nsd-tolerance", str(self.nsd_tolerance_mm)]
        return args


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


def _prepare(task: MSDTask, models: Sequence[Model], optional: frozenset[str], o: Options, environ, log_dir: str,
             echo: Callable[[str], None]) -> str:
    """Convert and preprocess one task (or, in a dry run, print the commands); returns the data set name.
    ``optional``: configurations preprocessed only if nnU-Net plans them."""
    dataset = task.dataset_name(o.id_offset)
    prep = plans_to_prepare(models)
    if o.dry_run:
        raw = os.path.join(env_path("nnUNet_raw", environ), dataset)
        if not os.path.isdir(raw):
            echo(shlex.join(["nnUNetv2_convert_MSD_dataset", *conversion_args(task, task.source, o.id_offset,
                                                                                o.num_processes)]))
        for plans, configs in prep.items():
            todo = missing_preprocessing(dataset, plans, configs, environ, optional)
            if todo:
                echo(shlex.join(["nnUNetv2_plan_and_preprocess", *preprocess_args(task.dataset_id(o.id_offset),
                                                                                   PLANNER_OF_PLANS[plans], todo,
                                                                                   o.num_processes)]))
        return dataset
    convert_task(task, o.id_offset, o.num_processes, environ, log_dir, echo)
    for plans, configs in prep.items():
        plan_and_preprocess(dataset, task.dataset_id(o.id_offset), PLANNER_OF_PLANS[plans], plans, configs,
                            o.num_processes, environ, log_dir, echo, optional)
    return dataset


def run_benchmark(o: Options, environ=None, echo: Callable[[str], None] = print) -> int:
    """The whole benchmark. Exit code 0 when every task and run completed and every leaderboard is full."""
    environ = dict(os.environ if environ is None else environ)
    folds = list(dict.fromkeys(str(f) for f in o.folds))
    models = build_models(o.trainers, o.configurations, o.resenc)
    optional = if_planned(o.trainers, o.configurations)
    plans_to_prepare(models)  # unknown plans are a set-up error, before any work
    out_dir = os.path.abspath(o.out or default_out_dir(environ))
    log_dir = os.path.join(out_dir, "logs")
    command = shlex.join(["nnunet-swin", "benchmark-msd", *o.argv(), *(["--out", o.out] if o.out else [])])
    converted = [converted_task(p, o.id_offset) for p in o.paths] if o.aggregate_only else []
    if converted and all(converted):
        tasks, problems = [t for t in converted if o.tasks is None or t.number in o.tasks], []
    else:
        tasks, problems = discover_tasks(o.paths, o.tasks)
    for p in problems:
        echo(f"[SKIPPED] {p}")
    prepared: list[tuple[MSDTask, str]] = []
    jobs: list[Job] = []
    for task in tasks:
        try:
            dataset = task.dataset_name(o.id_offset) if o.aggregate_only else _prepare(task, models, optional, o,
                                                                                       environ, log_dir, echo)
        except TaskError as e:
            problems.append(str(e))
            echo(f"[SKIPPED] {e}")
            continue
        prepared.append((task, dataset))
        jobs += build_jobs(dataset, task, planned_models(dataset, models, optional, environ, echo), folds)
    if o.slurm:
        if not jobs:
            echo("no task could be prepared; no SLURM script written")
            return 1
        raw = os.path.abspath(env_path("nnUNet_raw", environ))
        converted_paths = [os.path.join(raw, dataset) for _, dataset in prepared]
        agg_options = dataclasses.replace(o, paths=converted_paths, tasks=None)
        agg = [sys.executable, "-m", "nnunet_swin.experiments.msd_benchmark", *agg_options.argv(), "--out", out_dir,
               "--aggregate-only"]
        write_slurm_script(o.slurm, jobs, out_dir, agg, device=o.device, job_name="msd_benchmark",
                           sbatch_options=o.slurm_options, cpus_per_task=o.slurm_cpus, environ=environ)
        echo(f"wrote {o.slurm}: {len(jobs)} array tasks + aggregation into {out_dir}; submit with `bash {o.slurm}`")
        return 0 if not problems else 1
    ok = not problems
    if not o.aggregate_only:
        report = run_jobs(jobs, out_dir, device=o.device, gpus=o.gpus, dry_run=o.dry_run, environ=environ, echo=echo)
        if o.dry_run:
            return 0 if not problems else 1
        echo(summarize_report(report))
        ok = ok and report.all_ok
    boards = []
    records_dir = os.path.join(out_dir, "runs")
    studied = study_tasks(prepared, jobs, records_dir)
    all_jobs = [j for task, dataset, ms, fs in studied for j in build_jobs(dataset, task, ms, fs)]
    if len(all_jobs) > len(jobs):
        echo(f"note: {out_dir} also holds {len(all_jobs) - len(jobs)} runs of earlier calls; the leaderboards "
             "cover all of them (use another --out for a benchmark of these runs only)")
    for task, dataset, ds_models, ds_folds in studied:
        report_dir = os.path.join(out_dir, dataset)
        task_models = [m for m in ds_models
                       if all(fold_state(Job(dataset, m.configuration, f, m.trainer, m.plans).fold_dir(environ))
                              == COMPLETE for f in ds_folds)]
        info = None
        if task_models:
            try:
                info = find_best(dataset, task_models, ds_folds, o.ensembling, o.num_processes, environ,
                                 os.path.join(log_dir, f"{dataset}__find_best.log"), echo)
            except RuntimeError as e:
                ok = False
                echo(f"[FAILED] {dataset}: {e}")
        board = task_board(task, dataset, ds_models, ds_folds, report_dir, records_dir, environ,
                           o.nsd_tolerance_mm, info, echo)
        ok = ok and not board.missing
        boards.append(board)
        for f in write_task_board(board, report_dir, command):
            echo(f"wrote {f}")
    if boards:
        write_runs_csv(os.path.join(out_dir, "runs.csv"), run_rows(all_jobs, records_dir, environ, keep=True),
                       ("task",))
        for f in write_overall(boards, out_dir, command):
            echo(f"wrote {f}")
    if problems:
        echo(f"{len(problems)} task problem(s):\n  " + "\n  ".join(problems))
    return 0 if ok else 1


# --- command line --------------------------------------------------------------------------------------
def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="TASK_DIR_OR_TAR",
                   help="MSD task folders (TaskXX_Name), their .tar archives, or folders holding them; with "
                        "--aggregate-only also the converted data sets ($nnUNet_raw/DatasetXXX_Name)")
    p.add_argument("--tasks", nargs="+", type=int, default=None, metavar="N", help="task numbers, e.g. 4 5")
    p.add_argument("--trainers", nargs="+", default=None, metavar="TRAINER[:CONFIG[:PLANS]]",
                   help="trainers, each on every --configurations entry; pin a configuration / plans with ':' "
                        f"(default: on 2D configurations {' '.join(DEFAULT_TRAINERS)}, on 3D ones "
                        f"{' '.join(DEFAULT_3D_TRAINERS)})")
    p.add_argument("--configurations", nargs="+", default=None,
                   help="nnU-Net configurations, e.g. 2d 3d_fullres; one a task's plans lack skips the task with "
                        "an error naming the planned ones (default: 2d; for the default models also 3d_fullres, "
                        "for tasks whose plans have it)")
    p.add_argument("--resenc", nargs="*", default=[], choices=sorted(RESENC_PRESETS),
                   help="also nnUNetTrainer with these residual-encoder presets (nnU-Net Revisited)")
    p.add_argument("--folds", nargs="+", default=list(DEFAULT_FOLDS))
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu", "mps"], help="nnUNetv2_train -device")
    p.add_argument("--gpus", default=None, help="comma-separated GPU ids: one run per GPU at a time, queued")
    p.add_argument("--slurm", metavar="FILE", default=None,
                   help="prepare the data here, then write a SLURM submit script (job array + dependent "
                        "find_best/leaderboard job) instead of training")
    add_slurm_arguments(p)
    p.add_argument("--dry-run", action="store_true", help="print the nnU-Net commands, run nothing")
    p.add_argument("--aggregate-only", action="store_true", help="train nothing; leaderboards from what exists")
    p.add_argument("--out", default=None, help="report folder (default: $nnUNet_results/nnunet_swin_msd_benchmark)")
    p.add_argument("--id-offset", type=int, default=0,
                   help="data set id = task number + this (when the MSD ids are taken by other data sets)")
    p.add_argument("-np", "--num-processes", type=int, default=4,
                   help="processes for conversion, preprocessing and find_best_configuration")
    p.add_argument("--no-ensembling", action="store_true",
                   help="find_best_configuration without ensembles (faster on large tasks)")
    p.add_argument("--nsd-tolerance", type=float, default=DEFAULT_NSD_TOLERANCE_MM, help="NSD tolerance in mm")


def options_from_args(a: argparse.Namespace) -> Options:
    return Options(a.paths, a.tasks, a.trainers, a.configurations, a.resenc, a.folds, a.device, a.gpus, a.slurm,
                   a.slurm_option, a.dry_run, a.aggregate_only, a.out, a.id_offset, a.num_processes,
                   not a.no_ensembling, a.nsd_tolerance, a.slurm_cpus)


def handle_args(a: argparse.Namespace) -> int:
    """Set-up errors (nnU-Net paths unset, bad trainer spec) print one line and give exit code 2."""
    try:
        return run_benchmark(options_from_args(a))
    except (RuntimeError, ValueError) as e:
        print(f"benchmark-msd: error: {e}", file=sys.stderr)
        return 2


def add_benchmark_msd_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("benchmark-msd", help="Decathlon tasks: Swin-Unet variants vs nnU-Net baselines, "
                                                    "5-fold CV, find_best_configuration, leaderboards",
                              description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=handle_args)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["model-cost"]:
        return _model_cost_main(argv[1:])
    if argv[:1] == ["find-best"]:
        return _find_best_main(argv[1:])
    p = argparse.ArgumentParser(prog="msd_benchmark", description=__doc__.split("\n\n")[0])
    _add_arguments(p)
    return handle_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
