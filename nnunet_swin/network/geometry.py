"""Where each token attends at one stage: per-axis windows clamped to the stage, the cyclic shift, padding
to whole windows, the gathers that replace pad + roll + partition, the relative-position index and the
additive mask, shared by every block of that geometry through one bounded cache."""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch._subclasses.fake_tensor import FakeTensor

from nnunet_swin.network.ops import _is_compiling

SHIFT_MASK_VALUE = -100.0  # the official value: finite, so fp16-safe, and what the checkpoints were trained with
NUM_STAGES = 4  # Swin-Unet is built for four stages: three skips at 1/4, 1/8, 1/16 and a 1/32 bottleneck
GEOMETRY_CACHE_BYTES = 256 * 2**20  # stage geometries kept (LRU) beyond the 8 one image size needs at most


def window_geometry(size: int, window: int, shifted: bool) -> tuple[int, int]:
    """Window and shift along one axis. An axis no longer than the window is attended globally with
    no shift; equality counts, as in the official code (so a 7x7 stage at window 7 is global)."""
    if size <= window:
        return size, 0
    return window, (window // 2 if shifted else 0)


def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """(B, *sizes, C) -> (B, nW, prod(window), C), windows and the tokens inside them in row-major order."""
    b, *sizes, c = x.shape
    n = len(sizes)
    split = [v for size, w in zip(sizes, window) for v in (size // w, w)]
    x = x.view(b, *split, c).permute(0, *range(1, 2 * n, 2), *range(2, 2 * n + 1, 2), 2 * n + 1)
    return x.reshape(b, math.prod([s // w for s, w in zip(sizes, window)]), math.prod(window), c)


def relative_position_index(window: Sequence[int], table_window: Sequence[int]) -> torch.Tensor:
    """Index into a (prod(2M-1), heads) bias table for every token pair of a window (each side <= M).

    For a clamped window the index addresses the centre of the full table: offsets within +-(w-1)
    are a subset of +-(M-1), so one table (and one checkpoint) serves every input size.
    """
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]  # axes, N, N
    index = torch.zeros_like(rel[0])
    for offsets, m in zip(rel, table_window):
        index = index * (2 * m - 1) + (offsets + m - 1)
    return index


def _band_labels(padded: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """Shift region of every position along one axis of the padded, rolled map: the official three
    bands [0, P-M), [P-M, P-s), [P-s, P) of the padded length P, or all 0 without a shift."""
    pos = torch.arange(padded, device=device)
    if not shift:
        return torch.zeros_like(pos)
    return (pos >= padded - window).long() + (pos >= padded - shift).long()


def _rolled_positions(size: int, padded: int, shift: int, device: torch.device) -> torch.Tensor:
    """Position in the padded map read at each position of the map rolled by ``-shift`` (>= size: padding)."""
    return (torch.arange(padded, device=device) + shift) % padded


def _along(t: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    """A 1-D tensor viewed along ``axis`` of an ``ndim``-D grid, for broadcasting."""
    return t.view([-1 if a == axis else 1 for a in range(ndim)])


def _padded(sizes: Sequence[int], window: Sequence[int]) -> list[int]:
    return [math.ceil(s / w) * w for s, w in zip(sizes, window)]


def attention_mask(sizes: Sequence[int], window: Sequence[int], shift: Sequence[int], device: torch.device
                   ) -> torch.Tensor | None:
    """Additive (nW, N, N) mask for a padded-then-rolled stage, or None when no token needs masking.

    The map is padded at the end of every axis to whole windows first and the cyclic shift is taken on
    the padded map (the order of Swin's detection/segmentation code), so a shifted window never splits a
    band. (timm 1.0 does the opposite: it rolls the unpadded map, then pads, and masks no padding key, so
    at sizes that do not tile into windows its results differ from these.) Pairs in different shift regions
    get -100 (the official value). Padding keys get -inf for real queries, so padding cannot change a real
    token; a padding query may attend to other padding, which keeps every softmax row finite (padding
    outputs are cropped away).
    """
    padded, n = _padded(sizes, window), len(sizes)
    if not any(shift) and list(padded) == list(sizes):
        return None
    pad = torch.zeros(padded, dtype=torch.bool, device=device)
    region = torch.zeros(padded, dtype=torch.long, device=device)
    for axis, (size, p, w, s) in enumerate(zip(sizes, padded, window, shift)):
        pad = pad | _along(_rolled_positions(size, p, s, device) >= size, axis, n)
        region = region * 3 + _along(_band_labels(p, w, s, device), axis, n)
    win = window_partition(torch.stack([region.float(), pad.float()], -1)[None], window)[0]  # nW, N, 2
    region, pad = win[..., 0], win[..., 1]
    mask = torch.zeros(region.shape[0], region.shape[1], region.shape[1], device=device)
    mask = mask.masked_fill(region[:, :, None] != region[:, None, :], SHIFT_MASK_VALUE)
    key_is_pad = (pad[:, None, :] > 0) & (pad[:, :, None] == 0)
    return mask.masked_fill(key_is_pad, float("-inf"))


def window_order(sizes: Sequence[int], window: Sequence[int], shift: Sequence[int], device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token gathers that replace pad + roll + window partition and their inverse.

    ``order[k]`` is the flat source index (into the prod(sizes) tokens, or prod(sizes) for a padding
    token) of the k-th token in window order of the map padded at the end of each axis and then rolled
    by ``-shift``; ``inverse[p]`` is where source token p sits in that order. One ``index_select`` each
    way costs one copy instead of the pad, roll, partition, reverse, roll-back and crop copies.
    """
    padded, n, total = _padded(sizes, window), len(sizes), math.prod(sizes)
    src = torch.zeros((), dtype=torch.long, device=device)
    outside = torch.zeros((), dtype=torch.bool, device=device)
    for axis, (size, p, s) in enumerate(zip(sizes, padded, shift)):
        pos = _along(_rolled_positions(size, p, s, device), axis, n)
        src, outside = src * size + pos, outside | (pos >= size)
    src = torch.where(outside, torch.full_like(src, total), src)
    order = window_partition(src[None, ..., None], window).reshape(-1)
    # padding (= total) sorts last; a static-shape inverse, so torch.compile can build it in-graph
    inverse = torch.argsort(order, stable=True)[:total]
    return order, inverse


class StageGeometry(NamedTuple):
    """What a Swin block needs to attend in windows at one stage size: window per axis, the token gathers
    (``window_order``; ``gather`` reads token 0 for padding, whose value the mask makes irrelevant), the
    bias-table index (``relative_position_index``) and the mask (``attention_mask``)."""

    window: tuple[int, ...]
    identity: bool  # one window, no shift, no padding: tokens are already in window order
    padded: bool
    order: torch.Tensor
    gather: torch.Tensor
    inverse: torch.Tensor
    index: torch.Tensor
    mask: torch.Tensor | None

    @property
    def nbytes(self) -> int:
        tensors = (self.order, self.gather, self.inverse, self.index, self.mask)
        return sum(t.nbytes for t in tensors if t is not None)


def build_geometry(sizes: Sequence[int], window: Sequence[int], shifted: bool, device: torch.device
                   ) -> StageGeometry:
    per_axis = [window_geometry(s, m, shifted) for s, m in zip(sizes, window)]
    win, shift = tuple([w for w, _ in per_axis]), tuple([s for _, s in per_axis])
    total = math.prod(sizes)
    order, inverse = window_order(sizes, win, shift, device)
    padded = order.numel() > total
    gather = torch.where(order < total, order, torch.zeros_like(order)) if padded else order
    index = relative_position_index(win, window).to(device)
    return StageGeometry(win, win == tuple(sizes), padded, order, gather, inverse, index,
                         attention_mask(sizes, win, shift, device))


_GEOMETRY_CACHE: OrderedDict[tuple, StageGeometry] = OrderedDict()
_FAKE_GEOMETRY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def stage_geometry(sizes: tuple[int, ...], window: tuple[int, ...], shifted: bool, device: torch.device
                   ) -> StageGeometry:
    """``build_geometry``, shared by every block with the same (size, window, shift, device) through one
    LRU cache bounded to ``GEOMETRY_CACHE_BYTES`` (but never fewer than the 8 entries of one image size),
    so predicting images of many sizes does not grow memory.

    Entries are built with inference mode and autograd off: a size first met under
    ``torch.inference_mode()`` must still serve later training (inference tensors cannot be saved for
    backward). Under torch.compile the geometry is built in-graph from the static sizes instead (no
    Python state is read or mutated there). Geometry built under a FakeTensorMode (memory estimates
    from shapes alone) holds no data: it is shared in a cache that lives as long as that mode.
    """
    if _is_compiling():
        return build_geometry(sizes, window, shifted, device)
    key = (sizes, window, shifted, str(device))
    geometry = _GEOMETRY_CACHE.get(key)
    if geometry is None:
        with torch.inference_mode(False), torch.no_grad():
            geometry = build_geometry(sizes, window, shifted, device)
        if isinstance(geometry.order, FakeTensor):  # shared within its fake mode only, like real ones
            return _FAKE_GEOMETRY.setdefault(geometry.order.fake_mode, {}).setdefault(key, geometry)
        _GEOMETRY_CACHE[key] = geometry
        held = sum(g.nbytes for g in _GEOMETRY_CACHE.values())
        while len(_GEOMETRY_CACHE) > 2 * NUM_STAGES and held > GEOMETRY_CACHE_BYTES:
            held -= _GEOMETRY_CACHE.popitem(last=False)[1].nbytes
    else:
        _GEOMETRY_CACHE.move_to_end(key)
    return geometry
