"""Per-case segmentation metrics of one nnU-Net validation folder (statistics over them: :mod:`.stats`).

Dice is nnU-Net's own (``validation/summary.json``); HD95 and NSD are MONAI's, computed on the validation
predictions against ``$nnUNet_preprocessed/<dataset>/gt_segmentations`` with the reference image's spacing.
Only the standard library is imported at module level.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

from nnunet_swin.experiments.nnunet_files import load_json
from nnunet_swin.experiments.stats import MM, PX

DEFAULT_NSD_TOLERANCE_MM = 1.0
#: Columns of the rows :func:`per_case_rows` returns (each report adds its own in front).
CASE_ROW_COLUMNS = ("fold", "case", "label", "label_value", "dice", "hd95_mm", "nsd", "n_ref", "n_pred", "trainer")



def _model_folder(fold_dir: str) -> str:
    return os.path.dirname(os.path.abspath(fold_dir))


@dataclass
class _CaseContext:
    reader: object
    file_ending: str
    labels: list  # (key as in summary.json, name, label or region)
    ignore_label: int | None


def _context(fold_dir: str) -> _CaseContext:
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


def per_case_rows(fold_dir: str, gt_dir: str, fold: str, trainer: str, nsd_tolerance_mm: float) -> list[dict]:
    """Per validation case and label of one completed run (``fold_dir/validation``; the references in
    ``gt_dir``, nnU-Net's ``gt_segmentations``): nnU-Net's Dice, MONAI's HD95 and NSD (in ``distance_unit``:
    mm, or pixels for images without spacing), voxel counts."""
    import numpy as np
    from nnunetv2.evaluation.evaluate_predictions import region_or_label_to_mask

    val_dir = os.path.join(fold_dir, "validation")
    summary = load_json(os.path.join(val_dir, "summary.json"))
    ctx = _context(fold_dir)
    unit = distance_unit_of(ctx.reader)
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
            rows.append({"fold": fold, "case": case, "label": name,
                         "label_value": key, "dice": dice, "hd95_mm": hd, "nsd": nsd,
                         "n_ref": int(np.count_nonzero(r_mask)), "n_pred": int(np.count_nonzero(p_mask)),
                         "trainer": trainer, "distance_unit": unit})
    return rows
