"""Per-case segmentation metrics of nnU-Net validation folders and the small statistics both reports use
(the skip ablation and the MSD benchmark).

Dice is nnU-Net's own (``validation/summary.json``); HD95 and NSD are MONAI's, computed on the validation
predictions against ``$nnUNet_preprocessed/<dataset>/gt_segmentations`` with the reference image's spacing.
Only the standard library is imported at module level.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Sequence

from nnunet_swin.experiments.runner import Job, resolve_dataset_name

DEFAULT_NSD_TOLERANCE_MM = 1.0
METRICS = ("dice", "hd95_mm", "nsd")
#: Columns of the rows :func:`per_case_rows` returns.
CASE_COLUMNS = ("fold", "case", "label", "label_value", "dice", "hd95_mm", "nsd", "n_ref", "n_pred", "trainer")

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


def _model_folder(fold_dir: str) -> str:
    return os.path.dirname(os.path.abspath(fold_dir))


def load_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


@dataclass
class _CaseContext:
    reader: object
    file_ending: str
    labels: list  # (key as in summary.json, name, label or region)
    ignore_label: int | None


def _context(fold_dir: str, environ) -> _CaseContext:
    from nnunetv2.evaluation.evaluate_predictions import label_or_region_to_key
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    model = _model_folder(fold_dir)
    dataset_json = load_json(os.path.join(model, "dataset.json"))
    plans = load_json(os.path.join(model, "plans.json"))
    plans_manager = PlansManager(plans)
    lm = plans_manager.get_label_manager(dataset_json)
    targets = lm.foreground_regions if lm.has_regions else lm.foreground_labels
    names = {}
    for name, value in dataset_json["labels"].items():
        key = tuple(value) if isinstance(value, (list, tuple)) else int(value)
        names[key if not (isinstance(key, tuple) and len(key) == 1) else key[0]] = name
    labels = []
    for t in targets:
        t_key = tuple(t) if isinstance(t, (list, tuple)) else int(t)
        labels.append((label_or_region_to_key(t_key), names.get(t_key, str(t_key)), t_key))
    return _CaseContext(plans_manager.image_reader_writer_class(), dataset_json["file_ending"], labels, lm.ignore_label)


def distance_unit_of(reader) -> str:
    """:data:`PX` for nnU-Net's natural-image reader (no spacing in the files), else :data:`MM`."""
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    return PX if isinstance(reader, NaturalImage2DIO) else MM


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


def _squeeze_spatial(seg, spacing):
    """(c, z, y, x)-style array from nnU-Net's reader -> spatial array without singleton axes + spacing."""
    import numpy as np

    arr = np.asarray(seg)[0]
    sp = [float(s) for s in spacing][-arr.ndim:]
    keep = [i for i, s in enumerate(arr.shape) if s > 1] or list(range(arr.ndim))
    return arr.reshape([arr.shape[i] for i in keep]), [sp[i] for i in keep]


def surface_metrics(pred_mask, ref_mask, spacing: Sequence[float], nsd_tolerance_mm: float) -> tuple[float, float]:
    """(HD95 in mm, NSD at the tolerance) via MONAI, with this module's empty-mask convention."""
    import numpy as np
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    p_any, r_any = bool(pred_mask.any()), bool(ref_mask.any())
    if not p_any and not r_any:
        return math.nan, math.nan
    if p_any != r_any:
        diagonal = float(np.sqrt(sum((n * s) ** 2 for n, s in zip(ref_mask.shape, spacing))))
        return diagonal, 0.0
    p = torch.from_numpy(np.ascontiguousarray(pred_mask, dtype=np.float32))[None, None]
    r = torch.from_numpy(np.ascontiguousarray(ref_mask, dtype=np.float32))[None, None]
    sp = [float(s) for s in spacing]
    hd = compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=sp).item()
    nsd = compute_surface_dice(p, r, [float(nsd_tolerance_mm)], include_background=True, spacing=sp).item()
    return float(hd), float(nsd)


def per_case_rows(job: Job, environ=None, nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> list[dict]:
    """Per validation case and label of one completed run (its ``validation/`` folder): nnU-Net's Dice,
    MONAI's HD95 and NSD (in ``distance_unit``: mm, or pixels for images without spacing), voxel counts."""
    import numpy as np
    from nnunetv2.evaluation.evaluate_predictions import region_or_label_to_mask

    environ = os.environ if environ is None else environ
    fold_dir = job.fold_dir(environ)
    val_dir = os.path.join(fold_dir, "validation")
    summary = load_json(os.path.join(val_dir, "summary.json"))
    ctx = _context(fold_dir, environ)
    unit = distance_unit_of(ctx.reader)
    gt_dir = os.path.join(environ.get("nnUNet_preprocessed", ""), resolve_dataset_name(job.dataset, environ),
                          "gt_segmentations")
    rows = []
    for entry in summary["metric_per_case"]:
        pred_file = entry.get("prediction_file", "")
        base = os.path.basename(pred_file)
        if not os.path.isfile(pred_file):
            pred_file = os.path.join(val_dir, base)
        ref_file = entry.get("reference_file", "")
        if not os.path.isfile(ref_file):
            ref_file = os.path.join(gt_dir, os.path.basename(ref_file) or base)
        case = base[: -len(ctx.file_ending)] if base.endswith(ctx.file_ending) else os.path.splitext(base)[0]
        ref_seg, ref_props = ctx.reader.read_seg(ref_file)
        pred_seg, _ = ctx.reader.read_seg(pred_file)
        ref, spacing = _squeeze_spatial(ref_seg, ref_props["spacing"])
        pred, _ = _squeeze_spatial(pred_seg, ref_props["spacing"])
        if pred.shape != ref.shape:
            raise ValueError(f"{pred_file}: prediction shape {pred.shape} differs from reference {ref.shape}")
        valid = None if ctx.ignore_label is None else ref != ctx.ignore_label
        for key, name, target in ctx.labels:
            r_mask = region_or_label_to_mask(ref, target)
            p_mask = region_or_label_to_mask(pred, target)
            if valid is not None:
                r_mask, p_mask = r_mask & valid, p_mask & valid
            nn_metrics = entry.get("metrics", {}).get(key, {})
            dice = nn_metrics.get("Dice", math.nan)
            dice = math.nan if dice is None else float(dice)
            hd, nsd = surface_metrics(p_mask, r_mask, spacing, nsd_tolerance_mm)
            rows.append({"fold": job.fold, "case": case, "label": name,
                         "label_value": key, "dice": dice, "hd95_mm": hd, "nsd": nsd,
                         "n_ref": int(np.count_nonzero(r_mask)), "n_pred": int(np.count_nonzero(p_mask)),
                         "trainer": job.trainer, "distance_unit": unit})
    return rows


# --- statistics and formatting ----------------------------------------------------------------------
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
