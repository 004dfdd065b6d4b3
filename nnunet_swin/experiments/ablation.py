"""The skip-connection ablation (``nnunet-swin ablate-skips``): one nnU-Net training per skip count and
fold, then a report from nnU-Net's validation outputs.

Jobs: ``--skips`` x ``--folds`` (repeats dropped), trainer ``--trainer-pattern.format(k=skips)`` (default
``nnUNetTrainerSwinUnet_{k}skip``) on one configuration ``-c`` (default ``2d``; ``3d_fullres`` or any other
the data set's plans have: the trainers build the 3D network from that plan; one the plans lack is an
error naming the planned ones), run by :mod:`nnunet_swin.experiments.runner` (resumable, locked per run,
one run per GPU, or a SLURM array). Each run is an ordinary nnU-Net result
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
import re
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

from nnunet_swin.experiments.metrics import (
    DEFAULT_NSD_TOLERANCE_MM,
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
    per_case_rows,
    pm,
    wilcoxon_p,
)
from nnunet_swin.experiments.runner import (
    COMPLETE,
    Job,
    add_slurm_arguments,
    atomic_write,
    csv_text,
    fold_state,
    load_record,
    not_planned_message,
    planned_configurations,
    recorded_jobs,
    resolve_dataset_name,
    run_jobs,
    run_rows,
    summarize_report,
    write_runs_csv,
    write_slurm_script,
)

DEFAULT_TRAINER_PATTERN = "nnUNetTrainerSwinUnet_{k}skip"
DEFAULT_SKIPS = (0, 1, 2, 3)
DEFAULT_FOLDS = ("0", "1", "2", "3", "4")
REFERENCE_SKIPS = 3
MEAN_LABEL = "mean"

PER_CASE_COLUMNS = ("configuration", "skips", "fold", "case", "label", "label_value", "dice", "hd95_mm", "nsd",
                    "n_ref", "n_pred", "trainer")



# --- jobs --------------------------------------------------------------------------------------------
def trainer_name(pattern: str, k: int) -> str:
    if "{k}" not in pattern:
        raise ValueError(f"--trainer-pattern must contain '{{k}}' (the skip count), got {pattern!r}")
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


def study_jobs(jobs: Sequence[Job], records_dir: str, trainer_pattern: str) -> list[Job]:
    """``jobs`` and the runs of the same study (data set, configuration, plans) that earlier calls recorded
    in ``records_dir``, fold outermost. A recorded run of another data set, configuration (a 2D study and a
    3D one), plans or trainer pattern means the folder holds another study: an error, since the two cannot
    share one report."""
    first = jobs[0]
    recorded = [j for j in recorded_jobs(records_dir) if "skips" in dict(j.tags)]
    for j in recorded:
        k = int(dict(j.tags)["skips"])
        if (j.dataset, j.configuration, j.plans) != (first.dataset, first.configuration, first.plans):
            raise ValueError(f"{os.path.dirname(records_dir)} holds a study of {j.dataset} {j.configuration} (plans "
                             f"{j.plans}), not {first.dataset} {first.configuration} (plans {first.plans}); give "
                             "this study its own --out")
        if j.trainer != trainer_name(trainer_pattern, k):
            raise ValueError(f"{os.path.dirname(records_dir)} holds a study of trainer {j.trainer} for {k} skips, "
                             f"not {trainer_name(trainer_pattern, k)} (--trainer-pattern {trainer_pattern}); "
                             "give this study its own --out")
    study = _unique([*jobs, *recorded])
    folds = _unique(j.fold for j in study)
    return sorted(study, key=lambda j: (folds.index(j.fold), int(dict(j.tags)["skips"])))


def check_planned(dataset: str, plans: str, configuration: str, environ=None) -> None:
    """Raise ValueError, naming the planned configurations, when nnU-Net has not planned ``configuration`` for
    the data set (every ``nnUNetv2_train`` of the study would fail): 3d_fullres exists for 3D images only."""
    planned = planned_configurations(dataset, plans, environ)
    if planned is None:
        m = re.match(r"Dataset(\d+)_", dataset)
        raise ValueError(f"{dataset} has no plans {plans} in nnUNet_preprocessed; plan and preprocess it first, "
                         f"e.g. nnUNetv2_plan_and_preprocess -d {int(m.group(1)) if m else dataset} -c {configuration}")
    problem = not_planned_message(dataset, plans, [configuration], planned)
    if problem:
        raise ValueError(problem)


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


def aggregate(jobs: Sequence[Job], out_dir: str, meta: dict, environ=None, echo: Callable[[str], None] = print
              ) -> AggregateResult:
    environ = os.environ if environ is None else environ
    res = AggregateResult()
    for job in jobs:
        k = dict(job.tags)["skips"]
        if fold_state(job.fold_dir(environ)) != COMPLETE:
            res.missing.append(f"{k} skips, fold {job.fold} ({job.trainer}): no checkpoint_final.pth + "
                               f"validation/summary.json in {job.fold_dir(environ)}"
                               + failure_note(load_record(os.path.join(out_dir, "runs"), job)))
            continue
        res.per_case.extend({"configuration": job.configuration, "skips": int(k), **row}
                            for row in per_case_rows(job, environ, meta["nsd_tolerance_mm"]))
    os.makedirs(out_dir, exist_ok=True)
    records = run_rows(jobs, os.path.join(out_dir, "runs"), environ, keep=True)
    runs_csv = os.path.join(out_dir, "runs.csv")
    write_runs_csv(runs_csv, records, ("skips",))
    res.files.append(runs_csv)
    flat_runs = []
    for rec in records:
        job = rec["job"]
        flat_runs.append({**dict((a, b) for a, b in job.get("tags", [])), "fold": job["fold"],
                          "trainer": job["trainer"], **{k: v for k, v in rec.items() if k != "job"}})
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


# --- entry point -------------------------------------------------------------------------------------
def run_ablation(dataset: str, configuration: str = "2d", plans: str = "nnUNetPlans",
                 folds: Sequence = DEFAULT_FOLDS, skips: Sequence[int] = DEFAULT_SKIPS,
                 trainer_pattern: str = DEFAULT_TRAINER_PATTERN, device: str = "cuda", gpus: str | None = None,
                 slurm: str | None = None, slurm_options: Sequence[str] = (), slurm_cpus: int = 1,
                 dry_run: bool = False, out: str | None = None, aggregate_only: bool = False,
                 reference: int = REFERENCE_SKIPS,
                 nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM, environ=None,
                 echo: Callable[[str], None] = print) -> int:
    """The whole study. Returns the exit code: 0 when every run completed and the report covers them all.

    The report covers the runs asked for *and* every run of the same study recorded in ``out`` by earlier
    calls (:func:`study_jobs`): a narrower rerun into the same folder never shrinks the report. For a report
    on fewer runs, give another ``--out``."""
    environ = os.environ if environ is None else environ
    skips = _unique(int(k) for k in skips)
    folds = _unique(str(f) for f in folds)
    # The full name (not the id) in the jobs: one record / log name per run however the data set was named.
    dataset = resolve_dataset_name(dataset, environ)
    if not aggregate_only:
        check_planned(dataset, plans, configuration, environ)
    jobs = build_jobs(dataset, configuration, plans, folds, skips, trainer_pattern)
    out_dir = os.path.abspath(out or default_out_dir(dataset, plans, configuration, environ))
    meta = {"dataset": dataset, "configuration": configuration, "plans": plans,
            "trainer_pattern": trainer_pattern, "skips": skips, "folds": folds, "reference": int(reference),
            "nsd_tolerance_mm": float(nsd_tolerance_mm)}
    if slurm:
        agg = [sys.executable, "-m", "nnunet_swin.experiments.ablation", "-d", str(dataset), "-c", configuration,
               "-p", plans, "--folds", *folds, "--skips", *map(str, skips), "--trainer-pattern", trainer_pattern,
               "--out", out_dir, "--reference-skips", str(reference), "--nsd-tolerance", str(nsd_tolerance_mm),
               "--aggregate-only"]
        write_slurm_script(slurm, jobs, out_dir, agg, device=device, job_name=f"ablate_skips_{meta['dataset']}",
                           sbatch_options=slurm_options, cpus_per_task=slurm_cpus, environ=environ)
        echo(f"wrote {slurm}: {len(jobs)} array tasks + aggregation into {out_dir}; submit with `bash {slurm}`")
        return 0

    ok = True
    if not aggregate_only:
        report = run_jobs(jobs, out_dir, device=device, gpus=gpus, dry_run=dry_run, environ=environ, echo=echo)
        if dry_run:
            return 0
        echo(summarize_report(report))
        ok = report.all_ok
    study = study_jobs(jobs, os.path.join(out_dir, "runs"), trainer_pattern)
    if len(study) > len(jobs):
        echo(f"note: {out_dir} also holds {len(study) - len(jobs)} earlier runs of this study; the report covers "
             f"all {len(study)} (use another --out for a report on these runs only)")
    meta.update(skips=sorted({int(dict(j.tags)["skips"]) for j in study}), folds=_unique(j.fold for j in study))
    if reference not in meta["skips"]:
        echo(f"note: reference {reference} skips is not among --skips {meta['skips']}; no Wilcoxon tests.")
    result = aggregate(study, out_dir, meta, environ, echo)
    if result.summary:
        echo(trend_statement(result.summary, reference=reference))
    for f in result.files:
        echo(f"wrote {f}")
    if result.missing:
        echo(f"{len(result.missing)} of {len(study)} runs incomplete:\n  " + "\n  ".join(result.missing))
    return 0 if ok and result.complete else 1


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--dataset", required=True, help="nnU-Net data set id or name (planned and preprocessed)")
    p.add_argument("-c", "--configuration", default="2d",
                   help="nnU-Net configuration the data set is planned with: 2d, 3d_fullres, 3d_lowres, ...")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier")
    p.add_argument("--folds", nargs="+", default=list(DEFAULT_FOLDS), help="folds")
    p.add_argument("--skips", nargs="+", type=int, default=list(DEFAULT_SKIPS), help="skip counts")
    p.add_argument("--trainer-pattern", default=DEFAULT_TRAINER_PATTERN,
                   help="trainer class name with {k} for the skip count")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu", "mps"], help="nnUNetv2_train -device")
    p.add_argument("--gpus", default=None, help="comma-separated GPU ids: one run per GPU at a time, queued")
    p.add_argument("--slurm", metavar="FILE", default=None,
                   help="write a SLURM submit script (job array + dependent aggregation) instead of running")
    add_slurm_arguments(p)
    p.add_argument("--dry-run", action="store_true", help="print the nnUNetv2_train commands, run nothing")
    p.add_argument("--out", default=None,
                   help="report folder (default: $nnUNet_results/<dataset>/ablation_skips__<plans>__<configuration>)")
    p.add_argument("--aggregate-only", action="store_true", help="train nothing; write the report from what exists")
    p.add_argument("--reference-skips", type=int, default=REFERENCE_SKIPS,
                   help="variant the others are tested against")
    p.add_argument("--nsd-tolerance", type=float, default=DEFAULT_NSD_TOLERANCE_MM,
                   help="NSD tolerance in mm")


def handle_args(args: argparse.Namespace) -> int:
    """Run ``ablate-skips`` from parsed arguments; set-up errors (no such data set, nnU-Net paths unset, bad
    pattern) print one line and give exit code 2."""
    try:
        return _run_from_args(args)
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        print(f"ablate-skips: error: {e}", file=sys.stderr)
        return 2


def _run_from_args(args: argparse.Namespace) -> int:
    return run_ablation(args.dataset, args.configuration, args.plans, args.folds, args.skips, args.trainer_pattern,
                        args.device, args.gpus, args.slurm, args.slurm_option, args.slurm_cpus, args.dry_run,
                        args.out, args.aggregate_only, args.reference_skips, args.nsd_tolerance)


def add_ablate_skips_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``ablate-skips`` to an argparse subparsers object; the handler is ``args.func(args) -> exit code``."""
    p = subparsers.add_parser("ablate-skips", help="skip-connection ablation over nnU-Net folds, with a report",
                              description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=handle_args)
    return p


register = add_ablate_skips_parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ablate_skips", description=__doc__.split("\n\n")[0])
    _add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return handle_args(args)


if __name__ == "__main__":
    sys.exit(main())
