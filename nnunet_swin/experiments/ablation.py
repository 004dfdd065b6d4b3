"""The skip-connection ablation (``nnunet-swin ablate-skips``): one nnU-Net training per skip count and
fold, then a report from nnU-Net's validation outputs.

Jobs: ``--skips`` x ``--folds`` (repeats dropped), trainer ``--trainer-pattern.format(k=skips)`` (default
``nnUNetTrainerSwinUnet_{k}skip``) on one configuration ``-c`` (default ``2d``; ``3d_fullres`` or any other
the data set's plans have: the trainers build the 3D network from that plan; one the plans lack is an
error naming the planned ones), run by the shared study pipeline (:mod:`nnunet_swin.experiments.study`:
checks first, resumable, locked per run, one run per GPU, or a SLURM array). Each run is an ordinary nnU-Net result
(``$nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>/fold_<f>``).

One study is one data set, configuration and plans: its folder holds no other (a 2D and a 3D study never
share a report), and every table has a ``configuration`` column.

Report, written atomically to ``--out`` (default ``$nnUNet_results/<dataset>/ablation_skips__<plans>__<config>``),
over the runs asked for and every run of the study recorded there by earlier calls (a narrower rerun does
not shrink it):

* ``per_case.csv``: skips, fold, case, label, Dice (nnU-Net's, read from ``validation/summary.json``), HD95 and
  NSD (MONAI, with the spacing nnU-Net's reader returns for the reference segmentation: ``hd95_mm``, or
  ``hd95_px`` for images without spacing such as PNG);
* ``summary.csv`` / ``summary.md``: missing runs first; per skip count and label, mean and std over the cases
  every variant has (the headline and the trend sentence; ``_all`` columns: over all of a variant's cases)
  and over folds, and a paired Wilcoxon signed-rank test (scipy) of each variant against the reference
  (3 skips) over cases, with the number of non-zero pairs it rests on and whether p < 0.05 is possible;
* ``dice_vs_skips.png``: Dice against skip count, one line per label and the mean over labels;
* ``runs.csv``: each run's status, epochs, wall time and peak GPU memory.
"""

from __future__ import annotations

import argparse
import io
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

from nnunet_swin.experiments.checks import SetupError
from nnunet_swin.experiments.jobs import DEFAULT_FOLDS, FoldState, Job, fold_state, load_record, recorded_jobs
from nnunet_swin.experiments.metrics import per_case_rows
from nnunet_swin.experiments.nnunet_files import (
    atomic_write,
    csv_text,
    dataset_id_text,
    gt_segmentations_dir,
    not_planned_message,
    planned_configurations,
    resolve_dataset_name,
)
from nnunet_swin.experiments.stats import (
    EMPTY_CONVENTION,
    METRICS,
    MM,
    PIXEL_NOTE,
    PX,
    PairedTest,
    columns_in_unit,
    distance_unit,
    fmt,
    fmt_p,
    mean_std,
    pm,
    wilcoxon_p,
)
from nnunet_swin.experiments.study import REQUIRED, Plan, StudyOptions, add_study_parser, handle, option, run_study

DEFAULT_TRAINER_PATTERN = "nnUNetTrainerSwinUnet_{k}skip"
#: The skip counts the Swin-Unet trainers (the default pattern) exist for.
SWIN_UNET_SKIPS = (0, 1, 2, 3)
DEFAULT_SKIPS = SWIN_UNET_SKIPS
REFERENCE_SKIPS = 3
MEAN_LABEL = "mean"

PER_CASE_COLUMNS = ("configuration", "skips", "fold", "case", "label", "label_value", "dice", "hd95_mm", "nsd",
                    "n_ref", "n_pred", "trainer")


# --- jobs --------------------------------------------------------------------------------------------
def trainer_name(pattern: str, k: int) -> str:
    if "{k}" not in pattern:
        raise SetupError(f"--trainer-pattern must contain '{{k}}' (the skip count), got {pattern!r}; "
                         f"e.g. {DEFAULT_TRAINER_PATTERN}")
    return pattern.format(k=k)


def _unique(items) -> list:
    """Items in their first order without repeats: ``--folds 0 0 1`` must not count fold 0's cases twice."""
    return list(dict.fromkeys(items))


def build_jobs(dataset: str, configuration: str = "2d", plans: str = "nnUNetPlans",
               folds: Sequence = DEFAULT_FOLDS, skips: Sequence[int] = DEFAULT_SKIPS,
               trainer_pattern: str = DEFAULT_TRAINER_PATTERN) -> list[Job]:
    """One job per fold x skip count (repeats dropped), fold outermost: an interrupted study already compares
    every variant on the first folds (paired), rather than covering only the first variants."""
    return [Job(str(dataset), configuration, f, trainer_name(trainer_pattern, k), plans, (("skips", k),))
            for f in _unique(str(f) for f in folds) for k in _unique(int(k) for k in skips)]


def study_jobs(jobs: Sequence[Job], records_dir: str, trainer_pattern: str, environ=None) -> list[Job]:
    """``jobs`` and the runs of the same study (data set, configuration, plans) that earlier calls recorded
    in ``records_dir``, fold outermost. A recorded run of another data set, configuration (a 2D study and a
    3D one), plans or trainer pattern means the folder holds another study: an error, since the two cannot
    share one report."""
    first = jobs[0]
    recorded = [j for j in recorded_jobs(records_dir, environ) if "skips" in dict(j.tags)]
    for j in recorded:
        k = int(dict(j.tags)["skips"])
        if (j.dataset, j.configuration, j.plans) != (first.dataset, first.configuration, first.plans):
            raise SetupError(f"{os.path.dirname(records_dir)} holds a study of {j.dataset} {j.configuration} (plans "
                             f"{j.plans}), not {first.dataset} {first.configuration} (plans {first.plans}); give "
                             "this study its own --out")
        if j.trainer != trainer_name(trainer_pattern, k):
            raise SetupError(f"{os.path.dirname(records_dir)} holds a study of trainer {j.trainer} for {k} skips, "
                             f"not {trainer_name(trainer_pattern, k)} (--trainer-pattern {trainer_pattern}); "
                             "give this study its own --out")
    study = _unique([*jobs, *recorded])
    folds = _unique(j.fold for j in study)
    return sorted(study, key=lambda j: (folds.index(j.fold), int(dict(j.tags)["skips"])))


def check_planned(dataset: str, plans: str, configuration: str, environ=None) -> None:
    """Raise SetupError, naming the planned configurations, when nnU-Net has not planned ``configuration`` for
    the data set (every ``nnUNetv2_train`` of the study would fail): 3d_fullres exists for 3D images only."""
    planned = planned_configurations(dataset, plans, environ)
    if planned is None:
        raise SetupError(f"{dataset} has no plans {plans} in nnUNet_preprocessed; plan and preprocess it first, "
                         f"e.g. nnUNetv2_plan_and_preprocess -d {dataset_id_text(dataset)} -c {configuration}")
    problem = not_planned_message(dataset, plans, [configuration], planned)
    if problem:
        raise SetupError(problem)


def check_skips(skips: Sequence[int], trainer_pattern: str) -> None:
    """The default trainers exist for 0 to 3 skips (a pattern of the user's is checked by nnU-Net's lookup)."""
    bad = [k for k in skips if k not in SWIN_UNET_SKIPS]
    if bad and trainer_pattern == DEFAULT_TRAINER_PATTERN:
        raise SetupError(f"--skips {' '.join(map(str, bad))}: Swin-Unet has 0 to 3 skip connections "
                         f"({DEFAULT_TRAINER_PATTERN} exists for k = 0, 1, 2, 3)")


def default_out_dir(dataset: str, plans: str, configuration: str, environ=None) -> str:
    environ = os.environ if environ is None else environ
    results = environ.get("nnUNet_results")
    if not results:
        raise RuntimeError("nnUNet_results is not set (needed for the default --out).")
    return os.path.join(results, resolve_dataset_name(dataset, environ), f"ablation_skips__{plans}__{configuration}")


# --- summary -----------------------------------------------------------------------------------------
def _with_mean_label(rows: list[dict]) -> list[dict]:
    """Append per-case rows with label 'mean': the mean over labels (NaNs left out) of each metric."""
    import numpy as np

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["skips"], r["fold"], r["case"]), []).append(r)
    out = list(rows)
    if len({r["label"] for r in rows}) < 2:
        return out  # one label: its rows are the mean
    for (k, f, c), rs in groups.items():
        m = {"skips": k, "fold": f, "case": c, "label": MEAN_LABEL, "label_value": "", "trainer": rs[0]["trainer"]}
        for metric in METRICS:
            vals = np.array([r[metric] for r in rs], float)
            m[metric] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
        out.append(m)
    return out


def shared_cases(rows: list[dict]) -> set:
    """(fold, case) pairs that every skip count in ``rows`` has: the cases the headline compares on, so a
    variant missing a fold is not compared on other cases than the rest."""
    by_k: dict = {}
    for r in rows:
        by_k.setdefault(r["skips"], set()).add((r["fold"], r["case"]))
    return set.intersection(*by_k.values()) if by_k else set()


def summarize(rows: list[dict], reference: int = REFERENCE_SKIPS) -> list[dict]:
    """summary.csv rows: per skip count and label, for each metric the mean/std over the cases every variant
    shares (the headline) and over the per-fold means of those, the mean/std over all of the variant's cases,
    and the Wilcoxon test against ``reference`` skips (paired by fold and case)."""
    rows = _with_mean_label(rows)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    skips = sorted({r["skips"] for r in rows})
    shared = shared_cases(rows)
    index = {(r["skips"], r["label"], r["fold"], r["case"]): r for r in rows}
    has_reference = reference in skips
    out = []
    for k in skips:
        for label in labels:
            sel = [r for r in rows if r["skips"] == k and r["label"] == label]
            if not sel:
                continue
            common = [r for r in sel if (r["fold"], r["case"]) in shared]
            folds = sorted({r["fold"] for r in common}, key=str)
            row = {"skips": k, "label": label, "n_folds": len(folds), "n_shared_cases": len(common),
                   "n_cases_all": len(sel)}
            for metric in METRICS:
                mean, std, n = mean_std([r[metric] for r in common])
                fold_means = [mean_std([r[metric] for r in common if r["fold"] == f])[0] for f in folds]
                fmean, fstd, _ = mean_std(fold_means)
                amean, astd, an = mean_std([r[metric] for r in sel])
                row.update({f"{metric}_mean_shared": mean, f"{metric}_std_shared": std, f"{metric}_n_shared": n,
                            f"{metric}_mean_folds": fmean, f"{metric}_std_folds": fstd,
                            f"{metric}_mean_all": amean, f"{metric}_std_all": astd, f"{metric}_n_all": an})
                pairs = [(r[metric], index[(reference, label, r["fold"], r["case"])][metric]) for r in sel
                         if k != reference and (reference, label, r["fold"], r["case"]) in index]
                test = wilcoxon_p([a for a, _ in pairs], [b for _, b in pairs]) if has_reference and k != reference \
                    else None
                diffs = [a - b for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
                row.update({f"{metric}_diff_vs_ref": sum(diffs) / len(diffs) if diffs else math.nan,
                            f"{metric}_wilcoxon_p_vs_ref": test.p if test else math.nan,
                            f"{metric}_n_pairs": test.n_pairs if test else 0,
                            f"{metric}_n_nonzero_pairs": test.n_nonzero if test else 0})
            out.append(row)
    return out


SUMMARY_COLUMNS = ["configuration", "skips", "label", "n_folds", "n_shared_cases", "n_cases_all"] + [
    f"{m}_{s}" for m in METRICS for s in ("mean_shared", "std_shared", "n_shared", "mean_folds", "std_folds",
                                          "mean_all", "std_all", "n_all", "diff_vs_ref", "wilcoxon_p_vs_ref",
                                          "n_pairs", "n_nonzero_pairs")]
ALPHA = 0.05


def _headline_label(summary: list[dict]) -> str | None:
    labels = {r["label"] for r in summary}
    return MEAN_LABEL if MEAN_LABEL in labels else next(iter(labels), None)


def _test_of(r: dict, metric: str = "dice") -> PairedTest:
    """The Wilcoxon test of one summary row against the reference."""
    return PairedTest(r[f"{metric}_wilcoxon_p_vs_ref"], r[f"{metric}_n_pairs"], r[f"{metric}_n_nonzero_pairs"])


def _significance(r: dict, metric: str = "dice") -> str:
    """'p = 0.031, 6 non-zero pairs: significant at 0.05' and the like, for one summary row."""
    test = _test_of(r, metric)
    n, p = test.n_nonzero, test.p
    if not math.isfinite(p):
        return "no paired cases"
    if n == 0:
        return "equal on every paired case"
    if not test.can_reach(ALPHA):
        return (f"p = {fmt_p(p)}, {n} non-zero pairs: too few for p < {ALPHA:g} to be possible "
                f"(smallest possible p = {test.min_p:.3g})")
    verdict = "significant" if p < ALPHA else "not significant"
    return f"p = {fmt_p(p)}, {n} non-zero pairs: {verdict} at {ALPHA:g}"


def trend_statement(summary: list[dict], metric: str = "dice", reference: int = REFERENCE_SKIPS) -> str:
    """Whether the headline metric (label 'mean', or the only label) rises with the skip count, on the cases
    every variant shares, and whether each difference to ``reference`` skips is significant."""
    label = _headline_label(summary)
    rows = sorted((r for r in summary if r["label"] == label), key=lambda r: r["skips"])
    pts = [(r["skips"], r[f"{metric}_mean_shared"]) for r in rows]
    pts = [(k, v) for k, v in pts if v is not None and math.isfinite(v)]
    if len(rows) > 1 and rows[0]["n_shared_cases"] == 0:
        return "No validation case has results for every variant, so the variants are not compared."
    if len(pts) < 2:
        return "Not enough variants to judge a trend."
    seq = " → ".join(f"{k}: {v:.3f}" for k, v in pts)
    rising = all(b[1] >= a[1] for a, b in zip(pts, pts[1:]))
    overall = pts[-1][1] - pts[0][1]
    if rising and overall > 0:
        verdict = "rises monotonically with the number of skips (the paper's trend shows)"
    elif overall > 0:
        verdict = (f"is higher with {pts[-1][0]} than with {pts[0][0]} skips but not monotonic "
                   "(the paper's trend shows only partly)")
    else:
        verdict = "does not rise with the number of skips (the paper's trend does not show)"
    shared = rows[0]["n_shared_cases"]
    text = f"Mean Dice ({label}) by skip count, on the {shared} cases every variant has: {seq}; it {verdict}."
    tests = [f"{r['skips']} skips {fmt(r[f'{metric}_diff_vs_ref'])} ({_significance(r, metric)})"
             for r in rows if r["skips"] != reference and r[f"{metric}_n_pairs"]]
    if tests:
        text += f" Paired differences to {reference} skips (Wilcoxon): " + "; ".join(tests) + "."
    return text


def summary_markdown(summary: list[dict], run_rows: list[dict], meta: dict, missing: list[str],
                     unit: str = MM) -> str:
    ref = meta["reference"]
    lines = [f"# Skip-connection ablation: {meta['dataset']}, {meta['configuration']}", ""]
    if missing:  # first: every number below is read in their light
        lines += ["## Missing", "", f"{len(missing)} runs are not complete; their cases are left out of the tables "
                  "(the headline compares the variants on the cases all of them have):", ""]
        lines += [f"- {m}" for m in missing]
        lines.append("")
    lines.append(f"Configuration `{meta['configuration']}`, plans `{meta['plans']}`, trainers "
                 f"`{meta['trainer_pattern']}` for skips {', '.join(str(k) for k in meta['skips'])}, "
                 f"folds {', '.join(str(f) for f in meta['folds'])} (nnU-Net cross-validation; metrics on each "
                 f"fold's validation cases).")
    lines.append("")
    lines.append(trend_statement(summary, reference=ref))
    lines.append("")
    lines.append(f"| skips | label | cases | Dice | Dice (folds) | HD95 {unit} | "
                 f"NSD@{meta['nsd_tolerance_mm']:g} {unit} | ΔDice vs {ref} | p (Dice) vs {ref} | pairs ≠ 0 (of n) | "
                 f"p (HD95) vs {ref} |")
    lines.append("|---:|---|---:|---|---|---|---|---|---|---:|---|")
    for r in summary:
        few = " †" if r["dice_n_nonzero_pairs"] and not _test_of(r).can_reach(ALPHA) else ""
        pairs = f"{r['dice_n_nonzero_pairs']} ({r['dice_n_pairs']})" if r["dice_n_pairs"] else "–"
        lines.append(
            f"| {r['skips']} | {r['label']} | {r['n_shared_cases']} | "
            f"{pm(r['dice_mean_shared'], r['dice_std_shared'])} | {pm(r['dice_mean_folds'], r['dice_std_folds'])} | "
            f"{pm(r['hd95_mm_mean_shared'], r['hd95_mm_std_shared'], 2)} | "
            f"{pm(r['nsd_mean_shared'], r['nsd_std_shared'])} | "
            f"{fmt(r['dice_diff_vs_ref'])} | {fmt_p(r['dice_wilcoxon_p_vs_ref'])}{few} | {pairs} | "
            f"{fmt_p(r['hd95_mm_wilcoxon_p_vs_ref'])} |")
    lines += ["", "Mean ± std. *cases*: the validation cases (of all folds) that every variant has; Dice, HD95 and "
              "NSD are over those; *(folds)*: over their per-fold means. summary.csv also has each variant's means "
              "over all its cases (`_all`). ΔDice and p: two-sided paired Wilcoxon signed-rank test (scipy, exact "
              f"up to 50 pairs) against {ref} skips over the cases both have (paired by fold and case), no "
              "correction for multiple comparisons; *pairs ≠ 0 (of n)*: the pairs the test ranks, those with a "
              "non-zero difference, of the n paired cases. † fewer than 6 non-zero pairs: p < 0.05 is impossible "
              "(smallest possible p = 2/2^pairs)."
              + (f" `{MEAN_LABEL}`: per-case mean over the labels." if any(r["label"] == MEAN_LABEL for r in summary)
                 else "") + (f" {PIXEL_NOTE}" if unit == PX else ""), "", EMPTY_CONVENTION, ""]
    if run_rows:
        lines += ["## Runs", "", "| skips | fold | trainer | status | epochs | wall time (min) | peak GPU memory (MiB) |",
                  "|---:|---:|---|---|---:|---:|---:|"]
        for r in run_rows:
            wall = r.get("wall_time_s")
            lines.append(f"| {r.get('skips', '')} | {r['fold']} | {r['trainer']} | {r['status']} | "
                         f"{r.get('epochs') if r.get('epochs') is not None else '–'} | "
                         f"{fmt(wall / 60, 1) if isinstance(wall, (int, float)) else '–'} | "
                         f"{fmt(r.get('peak_gpu_mem_mb'), 0) if r.get('peak_gpu_mem_mb') else '–'} |")
        lines.append("")
    return "\n".join(lines)


def plot_dice_vs_skips(path: str, summary: list[dict], title: str = "") -> None:
    """Dice against skip count with error bars (std over folds, or over cases with a single fold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r["label"] for r in summary))
    multi_fold = any(r["n_folds"] > 1 for r in summary)
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    for label in labels:
        rs = sorted((r for r in summary if r["label"] == label), key=lambda r: r["skips"])
        x = [r["skips"] for r in rs]
        if multi_fold:
            y = [r["dice_mean_folds"] for r in rs]
            e = [r["dice_std_folds"] for r in rs]
        else:
            y = [r["dice_mean_shared"] for r in rs]
            e = [r["dice_std_shared"] for r in rs]
        e = [0.0 if v is None or not math.isfinite(v) else v for v in e]
        is_mean = label == MEAN_LABEL
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=label, linewidth=2.5 if is_mean else 1.2,
                    color="black" if is_mean else None, zorder=3 if is_mean else 2)
    ax.set_xlabel("skip connections")
    ax.set_ylabel("Dice")
    ax.set_xticks(sorted({r["skips"] for r in summary}))
    ax.grid(alpha=0.3)
    ax.set_title(title or "Dice vs skip connections", fontsize=10)
    ax.legend(fontsize=8, title=f"error bars: std over {'folds' if multi_fold else 'cases'}", title_fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, buf.getvalue())


# --- aggregation -------------------------------------------------------------------------------------
def failure_note(record: dict | None, lines: int = 15) -> str:
    """For a missing run whose last attempt failed (a SLURM task, say): its exit code and the tail of its
    log as an indented code block under the list item, so the report shows why without a log search."""
    if not record or record.get("status") != "failed":
        return ""
    text = str(record.get("error", "")).rstrip().splitlines()
    # Python's traceback (stderr, unbuffered) lands above the training's buffered stdout: end on its error.
    starts = [i for i, line in enumerate(text) if line.startswith("Traceback (most recent call last)")]
    if starts:
        end = next((i for i in range(starts[-1] + 1, len(text)) if text[i] and not text[i][0].isspace()), len(text) - 1)
        text = text[: end + 1]
    block = "\n".join("  " + line for line in ["```", *text[-lines:], "```"])
    return (f"; the last attempt failed (exit code {record.get('returncode')}), log "
            f"{record.get('log') or '(none)'}:\n\n{block}")


@dataclass
class AggregateResult:
    per_case: list[dict] = field(default_factory=list)
    summary: list[dict] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing and bool(self.per_case)


def aggregate(jobs: Sequence[Job], out_dir: str, meta: dict, records: Sequence[dict], environ=None,
              echo: Callable[[str], None] = print) -> AggregateResult:
    """per_case.csv, summary.csv, summary.md and the plot over ``jobs`` (``records``: their runs.csv rows)."""
    environ = os.environ if environ is None else environ
    res = AggregateResult()
    for job in jobs:
        k = dict(job.tags)["skips"]
        fold_dir = job.fold_dir(environ)
        if fold_state(fold_dir) != FoldState.COMPLETE:
            res.missing.append(f"{k} skips, fold {job.fold} ({job.trainer}): no checkpoint_final.pth + "
                               f"validation/summary.json in {fold_dir}"
                               + failure_note(load_record(os.path.join(out_dir, "runs"), job)))
            continue
        rows = per_case_rows(fold_dir, gt_segmentations_dir(job.dataset, environ), job.fold, job.trainer,
                             meta["nsd_tolerance_mm"])
        res.per_case.extend({"configuration": job.configuration, "skips": int(k), **row} for row in rows)
    flat_runs = [{**dict((a, b) for a, b in rec["job"].get("tags", [])), "fold": rec["job"]["fold"],
                  "trainer": rec["job"]["trainer"], **{k: v for k, v in rec.items() if k != "job"}} for rec in records]
    if not res.per_case:
        echo("No completed runs to aggregate yet.")
        return res
    res.summary = [{"configuration": meta["configuration"], **r} for r in summarize(res.per_case, meta["reference"])]
    unit = distance_unit(res.per_case)
    files = {
        "per_case.csv": csv_text(*columns_in_unit(res.per_case, PER_CASE_COLUMNS, unit)),
        "summary.csv": csv_text(*columns_in_unit(res.summary, SUMMARY_COLUMNS, unit)),
        "summary.md": summary_markdown(res.summary, flat_runs, meta, res.missing, unit),
    }
    for name, text in files.items():
        atomic_write(os.path.join(out_dir, name), text)
        res.files.append(os.path.join(out_dir, name))
    png = os.path.join(out_dir, "dice_vs_skips.png")
    plot_dice_vs_skips(png, res.summary, f"{meta['dataset']} ({meta['configuration']}, {meta['plans']})")
    res.files.append(png)
    return res
# --- the study --------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class AblationOptions(StudyOptions):
    """``nnunet-swin ablate-skips``'s options (field names are the argparse destinations)."""

    command = "ablate-skips"

    dataset: str = option("-d", "--dataset", default=REQUIRED, help="nnU-Net data set id or name (planned and "
                                                                    "preprocessed)")
    configuration: str = option("-c", "--configuration", default="2d",
                                help="nnU-Net configuration the data set is planned with: 2d, 3d_fullres, "
                                     "3d_lowres, ...")
    plans: str = option("-p", "--plans", default="nnUNetPlans", help="plans identifier")
    skips: list[int] = option("--skips", nargs="+", type=int, default=DEFAULT_SKIPS, metavar="K",
                              help="skip counts; Swin-Unet's trainers exist for 0 to 3")
    trainer_pattern: str = option("-tr", "--trainer-pattern", default=DEFAULT_TRAINER_PATTERN, metavar="PATTERN",
                                  help="trainer class name with {k} for the skip count; the study trains one "
                                       "trainer per --skips entry, so -tr takes this pattern, not one trainer "
                                       f"(default: {DEFAULT_TRAINER_PATTERN})")
    out: str | None = option("--out", to_cluster=False, metavar="DIR",
                             help="report folder (default: $nnUNet_results/<dataset>/ablation_skips__<plans>__"
                                  "<configuration>)")
    reference: int = option("--reference-skips", type=int, default=REFERENCE_SKIPS, metavar="K",
                            help="variant the others are tested against")


class AblationStudy:
    """The skip ablation in :func:`nnunet_swin.experiments.study.run_study`'s terms."""

    tag_names = ("skips",)

    def job_name(self, plan: Plan) -> str:
        return f"ablate_skips_{plan.context['dataset']}"

    def check(self, o: AblationOptions, environ: dict) -> None:
        dataset = resolve_dataset_name(o.dataset, environ)
        check_skips(_unique(int(k) for k in o.skips), o.trainer_pattern)
        trainer_name(o.trainer_pattern, 0)  # the pattern has its {k}
        if not o.aggregate_only:
            check_planned(dataset, o.plans, o.configuration, environ)
        if not o.out:
            default_out_dir(dataset, o.plans, o.configuration, environ)  # needs nnUNet_results

    def trainers(self, o: AblationOptions) -> list[str]:
        return [trainer_name(o.trainer_pattern, k) for k in _unique(int(k) for k in o.skips)]

    def plan(self, o: AblationOptions, environ: dict, echo: Callable[[str], None]) -> Plan:
        skips = _unique(int(k) for k in o.skips)
        folds = _unique(str(f) for f in o.folds)
        # The full name (not the id) in the jobs: one record / log name per run however the data set was named.
        dataset = resolve_dataset_name(o.dataset, environ)
        jobs = build_jobs(dataset, o.configuration, o.plans, folds, skips, o.trainer_pattern)
        out_dir = os.path.abspath(o.out or default_out_dir(dataset, o.plans, o.configuration, environ))
        meta = {"dataset": dataset, "configuration": o.configuration, "plans": o.plans,
                "trainer_pattern": o.trainer_pattern, "skips": skips, "folds": folds, "reference": int(o.reference),
                "nsd_tolerance_mm": float(o.nsd_tolerance_mm)}
        return Plan(jobs, out_dir, o, context=meta)

    def merge(self, plan: Plan, records_dir: str, environ: dict) -> list[Job]:
        return study_jobs(plan.jobs, records_dir, plan.options.trainer_pattern, environ)

    def aggregation_options(self, plan: Plan, environ: dict) -> AblationOptions:
        return AblationOptions(**{**vars(plan.options), "dataset": plan.context["dataset"]})

    def report(self, plan: Plan, jobs: list[Job], records: list[dict], environ: dict,
               echo: Callable[[str], None]) -> bool:
        meta, reference = dict(plan.context), plan.context["reference"]
        meta.update(skips=sorted({int(dict(j.tags)["skips"]) for j in jobs}), folds=_unique(j.fold for j in jobs))
        if reference not in meta["skips"]:
            echo(f"note: reference {reference} skips is not among --skips {meta['skips']}; no Wilcoxon tests.")
        result = aggregate(jobs, plan.out_dir, meta, records, environ, echo)
        if result.summary:
            echo(trend_statement(result.summary, reference=reference))
        for f in result.files:
            echo(f"wrote {f}")
        if result.missing:
            echo(f"{len(result.missing)} of {len(jobs)} runs incomplete:\n  " + "\n  ".join(result.missing))
        return result.complete


def run_ablation(dataset: str, configuration: str = "2d", *, environ=None, echo: Callable[[str], None] = print,
                 **options) -> int:
    """The whole study (``options``: :class:`AblationOptions` fields). Returns the exit code: 0 when every
    run completed and the report covers them all (see :func:`nnunet_swin.experiments.study.run_study`)."""
    return run_study(AblationStudy(), AblationOptions(dataset=str(dataset), configuration=configuration, **options),
                     environ, echo)


def handle_args(args: argparse.Namespace) -> int:
    """Run ``ablate-skips`` from parsed arguments; set-up errors print one line and give exit code 2."""
    return handle(AblationStudy(), AblationOptions.from_args(args))


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``ablate-skips`` to an argparse subparsers object; the handler is ``args.func(args) -> exit code``."""
    return add_study_parser(subparsers, AblationOptions, "skip-connection ablation over nnU-Net folds, with a report",
                            __doc__.split("\n\n")[0], handle_args)
