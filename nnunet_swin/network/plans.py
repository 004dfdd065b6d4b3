"""Sizes and strides: what an input side must be a multiple of, and nnU-Net's plan (its pooling per axis, its
patch) turned into the network's per-axis strides and windows. Plain values in, plain values out."""

from __future__ import annotations

import math
from collections.abc import Sequence


def nearest_valid_sizes(size: int, multiple: int) -> tuple[int, int]:
    """The nearest sizes at or below and above ``size`` that are multiples of ``multiple``."""
    below = max(multiple, size // multiple * multiple)
    return below, math.ceil(size / multiple) * multiple


def _per_axis(value: int | Sequence[int], dims: int) -> tuple[int, ...]:
    """An int for every axis, or a sequence with one value per axis, as a tuple."""
    return (int(value),) * dims if isinstance(value, int) else tuple(int(v) for v in value)


def strides_from_pooling(pool_op_kernel_sizes: Sequence[Sequence[int]]) -> dict[str, list]:
    """Patch-embedding and merging strides per axis from nnU-Net's plan (``pool_op_kernel_sizes``).

    Swin-Unet halves the resolution five times: twice in the patch embedding (4x4 in 2D) and once per
    patch merging. nnU-Net's pooling steps (its first entry, stage 0, is all ones) are mapped onto those
    five slots in order: the embedding takes the product of the first two steps, the three mergings the
    next three. So an axis with few, thick slices is only merged where nnU-Net pools it, and the network's
    multiple (``size_multiple``) always divides nnU-Net's planned patch. Missing steps (plans with fewer
    than five poolings) are all ones, a merging that doubles channels at the same resolution; steps
    beyond five are not used (the bottleneck stays at 1/32 of an axis pooled at every step).
    """
    steps = [[int(s) for s in step] for step in pool_op_kernel_sizes[1:]]
    if not pool_op_kernel_sizes or any(len(step) != len(pool_op_kernel_sizes[0]) for step in steps):
        raise ValueError(f"pool_op_kernel_sizes must be a non-empty list of per-axis strides of equal length, "
                         f"got {pool_op_kernel_sizes}")
    dims = len(pool_op_kernel_sizes[0])
    steps = (steps + [[1] * dims] * 5)[:5]
    return {"patch_size": [a * b for a, b in zip(steps[0], steps[1])], "merge_strides": steps[2:]}


def fit_window_size(size: Sequence[int], patch_size: Sequence[int], max_window: int = 7,
                    max_padding: float = 0.1) -> list[int]:
    """Per axis, the largest window up to ``max_window`` (and no larger than the axis) that pads the first stage's token grid (the input
    ``size`` over ``patch_size``; the largest grid by far, in 3D 8x the next) by at most ``max_padding``.

    Padding tokens cost attention and MLP compute like real ones: a hippocampus-like 40x56x40 patch at
    patch 4 gives a 10x14x10 first stage, which window 7 pads to 14x14x14 (twice the tokens) and window 5
    tiles exactly. Deeper stages clamp the window as always. 2D plans keep the official window 7."""
    windows = []
    for s, p in zip(size, patch_size):
        n = s // p
        windows.append(next(min(w, n) for w in range(max_window, 0, -1)
                            if math.ceil(n / w) * w <= (1 + max_padding) * n))
    return windows


#: The 3D defaults (the trainers' ``network_options_3d``, bench's default 3D row): width 48 with gradient
#: checkpointing saves 0.14-0.16x the activations of nnU-Net's 3D CNN at its typical plans; without
#: checkpointing the prostate-like plan's 102,400-token first stage saves more than the CNN (benchmarks/README.md).
DEFAULT_3D_OPTIONS = {"embed_dim": 48, "gradient_checkpointing": True}


def options_for_plan(patch: Sequence[int], pool_op_kernel_sizes: Sequence[Sequence[int]],
                     options: dict | None = None) -> dict:
    """SwinUnet options for an nnU-Net 3D plan: the strides of its pooling (``strides_from_pooling``), then
    ``options`` over them, and, unless ``options`` sets ``window_size``, windows fitted to the first stage at
    the resulting patch embedding (``fit_window_size``)."""
    merged = {**strides_from_pooling(pool_op_kernel_sizes), **(options or {})}
    if "window_size" not in merged:
        merged["window_size"] = fit_window_size(patch, _per_axis(merged["patch_size"], len(patch)))
    return merged
