"""The statistics and formatting both reports use (the skip ablation and the MSD benchmark): means and
standard deviations that leave NaN out, the paired Wilcoxon test with what it rests on, the distance unit of
HD95/NSD columns, the empty-mask convention, and number formatting. Only the standard library is imported at
module level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

METRICS = ("dice", "hd95_mm", "nsd")

EMPTY_CONVENTION = (
    "Empty masks: Dice is nnU-Net's (from `validation/summary.json`): NaN when prediction and reference are "
    "both empty, 0 when exactly one is. HD95 and NSD are MONAI's (`compute_hausdorff_distance(percentile=95)`, "
    "`compute_surface_dice`) with the spacing of the reference image; when both masks are empty they are NaN; "
    "when exactly one is empty MONAI's HD95 is undefined and is set here to the image diagonal (the "
    "largest distance possible in the image), NSD is 0. NaN values are left out of means, stds and tests "
    "(the n columns count the values used)."
)
#: Distance unit of HD95 and NSD: millimetres from the image spacing, or pixels for images nnU-Net reads
#: without a physical spacing (PNG and other natural images: its reader returns spacing 1).
MM, PX = "mm", "px"
PIXEL_NOTE = ("HD95 and NSD (and the NSD tolerance) are in pixels: nnU-Net reads these images without a physical "
              "spacing (spacing 1).")


def distance_unit(rows: Sequence[dict]) -> str:
    """The one distance unit of per-case rows (rows from before units were recorded are in mm)."""
    units = {r.get("distance_unit", MM) for r in rows} or {MM}
    if len(units) > 1:
        raise ValueError("per-case rows mix HD95/NSD in mm and in pixels; they cannot be averaged together")
    return units.pop()


def columns_in_unit(rows: Sequence[dict], columns: Sequence[str], unit: str) -> tuple[list[dict], list[str]]:
    """Rows and column names with ``_mm`` in the names replaced by ``_px`` when ``unit`` is pixels, so a
    CSV never calls a pixel distance millimetres."""
    if unit == MM:
        return list(rows), list(columns)
    rename = {c: c.replace("_mm", "_" + unit) for c in columns}
    return [{rename.get(k, k): v for k, v in r.items()} for r in rows], [rename[c] for c in columns]


def mean_std(values) -> tuple[float, float, int]:
    import numpy as np

    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], float)
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, int(v.size)


@dataclass(frozen=True)
class PairedTest:
    """A two-sided paired Wilcoxon signed-rank test, with what it really rests on."""

    p: float
    #: Pairs where both values are finite.
    n_pairs: int
    #: Of those, pairs with a non-zero difference: the test ranks only these (Wilcoxon's zero treatment).
    n_nonzero: int

    @property
    def min_p(self) -> float:
        """The smallest p the exact test can give with ``n_nonzero`` pairs: 2 / 2^n (every sign equal)."""
        return min(1.0, 2.0 ** (1 - self.n_nonzero))

    def can_reach(self, alpha: float = 0.05) -> bool:
        return self.min_p < alpha


def wilcoxon_p(x: Sequence[float], y: Sequence[float]) -> PairedTest:
    """Paired Wilcoxon signed-rank test of ``x`` against ``y`` over the pairs where both are finite.

    Zero differences are dropped (Wilcoxon's original treatment, scipy's default ``zero_method``) before
    calling scipy, so scipy uses the exact null distribution up to 50 non-zero pairs (with zeros present it
    would switch to the normal approximation). Only exactly equal pairs count as zero: a consistent small
    difference is a difference. No non-zero pair: p = 1 (scipy's value; nothing differs)."""
    import numpy as np
    from scipy.stats import wilcoxon

    a, b = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    nonzero = a != b
    n, n_nonzero = int(a.size), int(nonzero.sum())
    if n == 0:
        return PairedTest(math.nan, 0, 0)
    if n_nonzero == 0:
        return PairedTest(1.0, n, 0)
    return PairedTest(float(wilcoxon(a[nonzero], b[nonzero]).pvalue), n, n_nonzero)


def fmt(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def pm(mean, std, digits=3) -> str:
    if mean is None or not math.isfinite(mean):
        return "–"
    return fmt(mean, digits) + ("" if std is None or not math.isfinite(std) else f" ± {fmt(std, digits)}")


def fmt_p(p) -> str:
    if p is None or not math.isfinite(p):
        return "–"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"
