"""The MSD benchmark's leaderboards, from nnU-Net's result files: per task, one row per model (its Dice and
HD95 averaged over the cross-validation cases, its rank, a paired test against the first, its cost, epoch
time and peak GPU memory, whether ``find_best_configuration`` picked it) and over tasks, each model's mean
rank. Owns the averaging, ranking and testing and the CSV/Markdown files; the figures come from
:mod:`.metrics` (per case), :mod:`.models` (cost, find_best) and :mod:`.jobs` (run records). Only the
standard library is imported at module level.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

from nnunet_swin.experiments.jobs import FoldState, Job, fold_state, run_history
from nnunet_swin.experiments.metrics import per_case_rows
from nnunet_swin.experiments.models import Model, cached, model_cost, model_dir_of, selected
from nnunet_swin.experiments.msd import MSDTask
from nnunet_swin.experiments.nnunet_files import (
    atomic_write,
    csv_text,
    epoch_times_from_logs,
    gt_segmentations_dir,
)
from nnunet_swin.experiments.stats import EMPTY_CONVENTION, fmt, fmt_p, mean_std, wilcoxon_p

BOARD_COLUMNS = ("rank", "trainer", "configuration", "plans", "folds", "n_cases", "dice_mean", "dice_std_cases",
                 "hd95_mean_mm", "p_vs_first", "nonzero_pairs_vs_first", "cv_dice_nnunet", "selected_by_find_best",
                 "params_m", "gmacs_per_patch", "patch_size", "epoch_time_s", "peak_gpu_mem_mb")
#: Columns of a task's per_case.csv (one row per model, fold, case and label).
BOARD_CASE_COLUMNS = ("trainer", "configuration", "plans", "fold", "case", "label", "label_value", "dice", "hd95_mm",
                      "nsd", "n_ref", "n_pred")


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


def case_rows(job: Job, cache_dir: str, environ, nsd_tolerance_mm: float) -> list[dict]:
    """per_case_rows of one fold, cached against its validation/summary.json."""
    fold_dir = job.fold_dir(environ)
    summary = os.path.join(fold_dir, "validation", "summary.json")
    return cached(os.path.join(cache_dir, f"{job.model_folder_name}__fold_{job.fold}.json"),
                  os.path.getmtime(summary),
                  lambda: per_case_rows(fold_dir, gt_segmentations_dir(job.dataset, environ), job.fold, job.trainer,
                                        nsd_tolerance_mm))


# --- averaging ---------------------------------------------------------------------------------------
def average_model(rows: Sequence[dict]) -> tuple[dict, dict]:
    """(leaderboard figures of one model from its per-case rows: Dice and HD95 per label and their means over
    labels, case count and std over cases; its per-case mean Dice by (fold, case), for the tests)."""
    out: dict = {}
    labels = list(dict.fromkeys(r["label"] for r in rows))
    for lab in labels:
        sel = [r for r in rows if r["label"] == lab]
        out[f"dice[{lab}]"] = _nanmean(r["dice"] for r in sel)
        out[f"hd95_mm[{lab}]"] = _nanmean(r["hd95_mm"] for r in sel)
    out["dice_mean"] = _nanmean(out[f"dice[{lab}]"] for lab in labels) if labels else math.nan
    out["hd95_mean_mm"] = _nanmean(out[f"hd95_mm[{lab}]"] for lab in labels) if labels else math.nan
    by_case: dict[tuple, list] = {}
    for r in rows:
        by_case.setdefault((r["fold"], r["case"]), []).append(r["dice"])
    case_means = {k: _nanmean(v) for k, v in by_case.items()}
    out["n_cases"] = len(case_means)
    out["dice_std_cases"] = mean_std(case_means.values())[1]
    return out, case_means


def run_figures(done: Sequence[Job], records_dir: str, environ) -> dict:
    """Seconds per epoch (nnU-Net's logs) and peak GPU memory (the run records) of a model's complete folds."""
    peaks = [run_history(j, records_dir, j.fold_dir(environ)).get("peak_gpu_mem_mb") for j in done]
    peaks = [p for p in peaks if p]
    return {"epoch_time_s": _nanmean(_nanmean(epoch_times_from_logs(j.fold_dir(environ))) for j in done),
            "peak_gpu_mem_mb": max(peaks) if peaks else math.nan}


# --- ranking and testing -----------------------------------------------------------------------------
def rank(values: Sequence[float]) -> list[int | None]:
    """Competition ranking, highest first ("1224"); NaN and None get no rank."""
    ok = [v for v in values if v is not None and math.isfinite(v)]
    return [None if v is None or not math.isfinite(v) else 1 + sum(o > v for o in ok) for v in values]


def rank_rows(rows: list[dict]) -> None:
    """Rank complete models by mean Dice and sort the rows by rank (unranked last), in place."""
    for r, k in zip(rows, rank([r["dice_mean"] if r["complete"] else math.nan for r in rows])):
        r["rank"] = k
    rows.sort(key=lambda r: (r["rank"] is None, r["rank"] or 0))


def compare_with_first(rows: list[dict], case_means: dict[Model, dict]) -> None:
    """Paired Wilcoxon test of each complete model's per-case mean Dice against rank 1's, in place."""
    if not rows or rows[0]["rank"] != 1:
        return
    ref = case_means[Model(rows[0]["trainer"], rows[0]["plans"], rows[0]["configuration"])]
    for r in rows[1:]:
        if r["complete"]:
            mine = case_means[Model(r["trainer"], r["plans"], r["configuration"])]
            keys = sorted(set(ref) & set(mine))
            test = wilcoxon_p([mine[k] for k in keys], [ref[k] for k in keys])
            r["p_vs_first"], r["nonzero_pairs_vs_first"] = test.p, test.n_nonzero


def task_board(task: MSDTask, dataset: str, models: Sequence[Model], folds: Sequence[str], report_dir: str,
               records_dir: str, environ, nsd_tolerance_mm: float, info: dict | None,
               echo: Callable[[str], None] = print) -> TaskBoard:
    """Leaderboard rows of one task from the result folders (complete models only are ranked); ``info``:
    find_best_configuration's inference_information.json, or None."""
    board = TaskBoard(task, dataset)
    cache = os.path.join(report_dir, "cache")
    picked, board.find_best_note = selected(info)
    all_results = (info or {}).get("all_results", {})
    case_means: dict[Model, dict] = {}
    for m in models:
        jobs = [Job(dataset, m.configuration, str(f), m.trainer, m.plans) for f in folds]
        done = [j for j in jobs if fold_state(j.fold_dir(environ)) == FoldState.COMPLETE]
        board.missing += [f"{m.folder} fold {j.fold}: not complete ({j.fold_dir(environ)})" for j in jobs
                          if j not in done]
        rows = [{**r, "configuration": m.configuration, "plans": m.plans}
                for j in done for r in case_rows(j, cache, environ, nsd_tolerance_mm)]
        board.per_case += rows
        board.labels += [lab for lab in dict.fromkeys(r["label"] for r in rows) if lab not in board.labels]
        figures, case_means[m] = average_model(rows)
        row = {"trainer": m.trainer, "configuration": m.configuration, "plans": m.plans,
               "folds": f"{len(done)}/{len(jobs)}",
               "selected_by_find_best": "yes" if (m.trainer, m.plans, m.configuration) in picked else "",
               **figures, "cv_dice_nnunet": all_results.get(m.folder, math.nan),
               **run_figures(done, records_dir, environ)}
        if done:
            try:
                cost = model_cost(model_dir_of(dataset, m, environ), done[0].fold, cache, environ,
                                  os.path.join(report_dir, "model_cost.log"))
                row.update({"params_m": cost["params"] / 1e6, "gmacs_per_patch": cost["gmacs_per_patch"],
                            "patch_size": "x".join(map(str, cost["patch_size"]))})
            except RuntimeError as e:
                echo(f"warning: {e}")
        row["complete"] = len(done) == len(jobs)
        board.rows.append(row)
    rank_rows(board.rows)
    compare_with_first(board.rows, case_means)
    return board


# --- files ---------------------------------------------------------------------------------------------
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
             "per_case.csv": csv_text(board.per_case, BOARD_CASE_COLUMNS)}
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
