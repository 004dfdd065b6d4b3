"""The skip-connection ablation (``nnunet-swin ablate-skips``): one nnU-Net training per skip count and
fold, then a report from nnU-Net's validation outputs.

Jobs: ``--skips`` x ``--folds``, trainer ``--trainer-pattern.format(k=skips)`` (default
``nnUNetTrainerSwinUnet_{k}skip``), run by :mod:`nnunet_swin.experiments.runner` (resumable, one run per GPU,
or a SLURM array). Each run is an ordinary nnU-Net result
(``$nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>/fold_<f>``).

Report, written atomically to ``--out`` (default ``$nnUNet_results/<dataset>/ablation_skips__<plans>__<config>``):

* ``per_case.csv``: skips, fold, case, label, Dice (nnU-Net's, read from ``validation/summary.json``), HD95 in
  mm and NSD (MONAI, with the spacing nnU-Net's reader returns for the reference segmentation);
* ``summary.csv`` / ``summary.md``: per skip count and label, mean and std over cases and over folds, and a
  paired Wilcoxon signed-rank test (scipy) of each variant against the reference (3 skips) over cases;
* ``dice_vs_skips.png``: Dice against skip count, one line per label and the mean over labels;
* ``runs.csv``: each run's status, epochs, wall time and peak GPU memory.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

from nnunet_swin.experiments.metrics import (
    DEFAULT_NSD_TOLERANCE_MM,
    EMPTY_CONVENTION,
    METRICS,
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

PER_CASE_COLUMNS = ("skips", "fold", "case", "label", "label_value", "dice", "hd95_mm", "nsd", "n_ref", "n_pred",
                    "trainer")



# --- jobs --------------------------------------------------------------------------------------------
def trainer_name(pattern: str, k: int) -> str:
    if "{k}" not in pattern:
        raise ValueError(f"--trainer-pattern must contain '{{k}}' (the skip count), got {pattern!r}")
    return pattern.format(k=k)


def build_jobs(dataset: str, configuration: str = "2d", plans: str = "nnUNetPlans",
               folds: Sequence = DEFAULT_FOLDS, skips: Sequence[int] = DEFAULT_SKIPS,
               trainer_pattern: str = DEFAULT_TRAINER_PATTERN) -> list[Job]:
    """One job per fold x skip count, fold outermost: an interrupted study already compares every variant
    on the first folds (paired), rather than covering only the first variants."""
    return [Job(str(dataset), configuration, str(f), trainer_name(trainer_pattern, int(k)), plans, (("skips", int(k)),))
            for f in folds for k in skips]


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


def summarize(rows: list[dict], reference: int = REFERENCE_SKIPS) -> list[dict]:
    """summary.csv rows: per skip count and label, mean/std over cases and over folds for each metric and
    the Wilcoxon test against ``reference`` skips (paired by fold and case)."""
    rows = _with_mean_label(rows)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    skips = sorted({r["skips"] for r in rows})
    index = {(r["skips"], r["label"], r["fold"], r["case"]): r for r in rows}
    out = []
    for k in skips:
        for label in labels:
            sel = [r for r in rows if r["skips"] == k and r["label"] == label]
            if not sel:
                continue
            folds = sorted({r["fold"] for r in sel}, key=str)
            row = {"skips": k, "label": label, "n_folds": len(folds)}
            for metric in METRICS:
                mean, std, n = mean_std([r[metric] for r in sel])
                fold_means = [mean_std([r[metric] for r in sel if r["fold"] == f])[0] for f in folds]
                fmean, fstd, _ = mean_std(fold_means)
                row.update({f"{metric}_mean_cases": mean, f"{metric}_std_cases": std, f"{metric}_n_cases": n,
                            f"{metric}_mean_folds": fmean, f"{metric}_std_folds": fstd})
                if k != reference and any(key[0] == reference for key in index):
                    x, y = [], []
                    for r in sel:
                        ref_row = index.get((reference, label, r["fold"], r["case"]))
                        if ref_row is not None:
                            x.append(r[metric])
                            y.append(ref_row[metric])
                    p, n_pairs = wilcoxon_p(x, y)
                    diffs = [a - b for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
                    row[f"{metric}_diff_vs_ref"] = sum(diffs) / len(diffs) if diffs else math.nan
                    row[f"{metric}_wilcoxon_p_vs_ref"] = p
                    row[f"{metric}_n_pairs"] = n_pairs
                else:
                    row[f"{metric}_diff_vs_ref"] = math.nan
                    row[f"{metric}_wilcoxon_p_vs_ref"] = math.nan
                    row[f"{metric}_n_pairs"] = 0
            out.append(row)
    return out


SUMMARY_COLUMNS = ["skips", "label", "n_folds"] + [
    f"{m}_{s}" for m in METRICS for s in ("mean_cases", "std_cases", "n_cases", "mean_folds", "std_folds",
                                          "diff_vs_ref", "wilcoxon_p_vs_ref", "n_pairs")]


def trend_statement(summary: list[dict], metric: str = "dice") -> str:
    """Whether the headline metric (label 'mean', or the only label) rises with the skip count."""
    labels = {r["label"] for r in summary}
    label = MEAN_LABEL if MEAN_LABEL in labels else next(iter(labels), None)
    pts = sorted((r["skips"], r[f"{metric}_mean_cases"]) for r in summary if r["label"] == label)
    pts = [(k, v) for k, v in pts if v is not None and math.isfinite(v)]
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
    return f"Mean Dice ({label}) by skip count: {seq}; it {verdict}."


def summary_markdown(summary: list[dict], run_rows: list[dict], meta: dict, missing: list[str]) -> str:
    ref = meta["reference"]
    lines = [f"# Skip-connection ablation: {meta['dataset']}", ""]
    lines.append(f"Configuration `{meta['configuration']}`, plans `{meta['plans']}`, trainers "
                 f"`{meta['trainer_pattern']}` for skips {', '.join(str(k) for k in meta['skips'])}, "
                 f"folds {', '.join(str(f) for f in meta['folds'])} (nnU-Net cross-validation; metrics on each "
                 f"fold's validation cases).")
    lines.append("")
    lines.append(trend_statement(summary))
    lines.append("")
    lines.append(f"| skips | label | Dice (cases) | Dice (folds) | HD95 mm (cases) | NSD@{meta['nsd_tolerance_mm']:g} mm "
                 f"(cases) | ΔDice vs {ref} | p (Dice) vs {ref} | p (HD95) vs {ref} | n |")
    lines.append("|---:|---|---|---|---|---|---|---|---|---:|")
    for r in summary:
        lines.append(
            f"| {r['skips']} | {r['label']} | {pm(r['dice_mean_cases'], r['dice_std_cases'])} | "
            f"{pm(r['dice_mean_folds'], r['dice_std_folds'])} | {pm(r['hd95_mm_mean_cases'], r['hd95_mm_std_cases'], 2)} | "
            f"{pm(r['nsd_mean_cases'], r['nsd_std_cases'])} | {fmt(r['dice_diff_vs_ref'])} | "
            f"{fmt_p(r['dice_wilcoxon_p_vs_ref'])} | {fmt_p(r['hd95_mm_wilcoxon_p_vs_ref'])} | {r['dice_n_cases']} |")
    lines += ["", "Mean ± std. *(cases)*: over all validation cases of all folds; *(folds)*: over the per-fold "
              "means. p: two-sided paired Wilcoxon signed-rank test (scipy) against "
              f"{ref} skips over the cases (paired by fold and case), no correction for multiple comparisons."
              + (f" `{MEAN_LABEL}`: per-case mean over the labels." if any(r["label"] == MEAN_LABEL for r in summary)
                 else ""), "", EMPTY_CONVENTION, ""]
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
    if missing:
        lines += ["## Missing", "", "These runs are not complete and are left out of the tables:", ""]
        lines += [f"- {m}" for m in missing]
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
            y = [r["dice_mean_cases"] for r in rs]
            e = [r["dice_std_cases"] for r in rs]
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
        res.per_case.extend(({"skips": int(k), **row} for row in per_case_rows(job, environ, meta["nsd_tolerance_mm"])))
    os.makedirs(out_dir, exist_ok=True)
    records = run_rows(jobs, os.path.join(out_dir, "runs"), environ)
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
    res.summary = summarize(res.per_case, meta["reference"])
    files = {
        "per_case.csv": csv_text(res.per_case, PER_CASE_COLUMNS),
        "summary.csv": csv_text(res.summary, SUMMARY_COLUMNS),
        "summary.md": summary_markdown(res.summary, flat_runs, meta, res.missing),
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
    """The whole study. Returns the exit code: 0 when every run completed and the report covers them all."""
    environ = os.environ if environ is None else environ
    skips = [int(k) for k in skips]
    folds = [str(f) for f in folds]
    # The full name (not the id) in the jobs: one record / log name per run however the data set was named.
    dataset = resolve_dataset_name(dataset, environ)
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
    if reference not in skips:
        echo(f"note: reference {reference} skips is not among --skips {skips}; no Wilcoxon tests.")
    result = aggregate(jobs, out_dir, meta, environ, echo)
    if result.summary:
        echo(trend_statement(result.summary))
    for f in result.files:
        echo(f"wrote {f}")
    if result.missing:
        echo(f"{len(result.missing)} of {len(jobs)} runs incomplete:\n  " + "\n  ".join(result.missing))
    return 0 if ok and result.complete else 1


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--dataset", required=True, help="nnU-Net data set id or name (planned and preprocessed)")
    p.add_argument("-c", "--configuration", default="2d", help="nnU-Net configuration")
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
