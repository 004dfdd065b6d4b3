"""What ``nnunet-swin bench`` prints and writes: the CPU targets, the Markdown tables, and the CSV, JSON and PNG
files."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass

from nnunet_swin.experiments.bench.measure import BenchResult
from nnunet_swin.experiments.bench.rows import CNN_ROW, OFFICIAL_ROW, SWIN_ROW
from nnunet_swin.experiments.nnunet_files import atomic_write

@dataclass
class Target:
    what: str
    value: float  # the measured ratio
    bound: str  # "<= 0.60", ">= 1.3"
    met: bool | None  # None: a row it needs was not measured


def cpu_targets(results: list[BenchResult]) -> list[Target]:
    """The CPU targets the default SwinUnet's eager training step is held to: at most 0.60x nnU-Net's CNN,
    and at least 1.3x faster than the official network, from this run's rows; each on the median wall time
    and on the median process (CPU) seconds, which other jobs on the cores disturb less."""
    targets = []
    for field_name, unit in (("train_ms_per_img", "wall"), ("train_cpu_s_per_step", "CPU s")):
        t = {r.name: getattr(r, field_name) for r in results}
        swin, cnn, official = (t.get(name, math.nan) for name in (SWIN_ROW, CNN_ROW, OFFICIAL_ROW))
        checks = [(f"{SWIN_ROW} / {CNN_ROW} train step ({unit})", swin / cnn, 0.60, False),
                  (f"{OFFICIAL_ROW} / {SWIN_ROW} train step ({unit})", official / swin, 1.3, True)]
        targets += [Target(what, ratio, f"{'>=' if at_least else '<='} {bound}",
                           None if math.isnan(ratio) else (ratio >= bound if at_least else ratio <= bound))
                    for what, ratio, bound, at_least in checks]
    return targets


def format_targets(targets: list[Target]) -> str:
    word = {True: "met", False: "NOT met", None: "not measured (row missing)"}
    return "\n".join(f"target: {t.what} = {t.value:.2f}x, wanted {t.bound}x: {word[t.met]}" for t in targets)


_COLUMNS = [("name", "model", "{}"), ("params_m", "params M", "{:.2f}"), ("gmacs", "GMACs/img", "{:.2f}"),
            ("train_ms_per_img", "train ms/img", "{:.3g}"), ("train_ms_min", "min", "{:.3g}"),
            ("train_ms_max", "max", "{:.3g}"), ("train_cpu_s_per_step", "CPU s/step", "{:.2f}"),
            ("infer_ms_per_img", "infer ms/img", "{:.3g}"), ("saved_act_mb_per_img", "act MB/img", "{:.0f}"),
            ("saved_total_mb_per_img", "act+weights MB", "{:.0f}"),
            ("peak_mb", "peak MB", "{:.0f}"), ("tflops", "TFLOP/s", "{:.3f}"), ("rel_time", "time vs CNN", "{:.2f}x"),
            ("rel_act", "act vs CNN", "{:.2f}x"), ("launches_fp32", "launches fp32", "{:.0f}"),
            ("launches_bf16", "launches bf16", "{:.0f}"), ("compile_s", "compile s", "{:.1f}"),
            ("compiled_ms_per_img", "compiled ms/img", "{:.3g}"), ("compiled_peak_mb", "compiled peak MB", "{:.0f}")]


#: 3D: per step of the whole batch (a 3D batch is a few large patches), no launches or inference.
COLUMNS_3D = [("name", "model", "{}"), ("params_m", "params M", "{:.2f}"), ("gmacs", "GMACs/img", "{:.1f}"),
              ("saved_act_mb_per_img", "act MB/img", "{:.0f}"), ("saved_act_gb_per_batch", "act GB/batch", "{:.2f}"),
              ("rel_act", "act vs CNN", "{:.2f}x"), ("train_s_per_step", "train s/step", "{:.3g}"),
              ("train_cpu_s_per_step", "CPU s/step", "{:.3g}"), ("peak_mb", "peak MB", "{:.0f}"),
              ("rel_time", "time vs CNN", "{:.2f}x"), ("compile_s", "compile s", "{:.1f}"),
              ("compiled_ms_per_img", "compiled ms/img", "{:.3g}")]


def format_table(results: list[BenchResult], columns: list[tuple[str, str, str]] = _COLUMNS) -> str:
    """A Markdown table (readable in a terminal too); "-" where a figure was not measured (no compile, no
    timed steps)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    lines = [head, "|" + "---|" * len(columns)]
    for r in results:
        if math.isnan(r.params_m):
            lines.append(f"| {r.name} | failed: {r.error} |")
            continue
        cells = ["-" if isinstance(v, float) and math.isnan(v) else fmt.format(v)
                 for v, fmt in ((getattr(r, k), fmt) for k, _, fmt in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"{r.name}: {r.error}" for r in results if r.error and not math.isnan(r.params_m)]
    return "\n".join(lines)


def write_results(results: list[BenchResult], out_prefix: str, meta: dict, png: bool = False,
                  targets: list[Target] | None = None) -> list[str]:
    """``<prefix>.csv``, ``<prefix>.json`` (with the run's settings and targets) and optionally
    ``<prefix>.png``."""
    rows = [asdict(r) for r in results]
    fields = [k for k in rows[0] if k != "extra"]
    table = io.StringIO()
    writer = csv.DictWriter(table, fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    written = [out_prefix + ".csv", out_prefix + ".json"]
    atomic_write(written[0], table.getvalue())
    summary = {"meta": meta, "results": rows, "targets": [asdict(t) for t in targets or []]}
    atomic_write(written[1], json.dumps(summary, indent=1, default=str))
    if png:
        written.append(_bar_chart(results, out_prefix + ".png"))
    return written


def _bar_chart(results: list[BenchResult], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if not r.error]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(ok) + 1.5))
    for ax, key, label in zip(axes, ("train_ms_per_img", "saved_act_mb_per_img"),
                              ("training ms per image", "activation MB per image")):
        ax.barh([r.name for r in ok], [getattr(r, key) for r in ok], color="tab:blue")
        ax.invert_yaxis()
        ax.set_xlabel(label)
    axes[1].set_yticklabels([])
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
    return path
