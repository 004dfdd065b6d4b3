"""Swin-Unet (Cao et al., arXiv 2105.05537) as a size-agnostic 2D network.

With default options this computes what the official ``SwinTransformerSys`` computes at the sizes the
official code accepts (224 and 448 at window 7, ...), and it also runs at any H x W divisible by 32:
a stage that does not tile into windows is padded bottom/right first and then cyclically shifted on
the padded map (the order of Swin's segmentation code and timm), and the padding tokens are masked out
of attention, so they never change the result of real tokens.

Speed and memory: tokens are kept channels-last (B, H, W, C) from the patch embedding to the head (NCHW
at the module boundary only); pad, roll and window partition are one gather each way (and each other's
backward); the per-size geometry is shared by all blocks through one bounded cache; a LayerNorm or GELU
that feeds a Linear is recomputed in backward instead of keeping its output (about a third less
activation memory per block, bit-identical results). Eager steps are launch-bound on a GPU, so a block
keeps its kernel count low (one copy for q, k, v; one addition for scale, bias and mask; one weight cast
under autocast). Under torch.compile the geometry is built in-graph from static sizes: no graph breaks.

The module imports torch and timm layers only (never nnU-Net), so it can be used and tested alone.
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils.checkpoint import checkpoint

__all__ = ["SwinUnet", "UPSAMPLING_MODES", "fit_window_size", "nearest_valid_sizes", "strides_from_pooling"]

UPSAMPLING_MODES = ("patch_expand", "bilinear", "transposed_conv")
SHIFT_MASK_VALUE = -100.0  # the official value: finite, so fp16-safe, and what the checkpoints were trained with
NUM_STAGES = 4  # Swin-Unet is built for four stages: three skips at 1/4, 1/8, 1/16 and a 1/32 bottleneck
GEOMETRY_CACHE_BYTES = 256 * 2**20  # stage geometries kept (LRU) beyond the 8 one image size needs at most


def _is_compiling() -> bool:
    return torch.compiler.is_compiling()


def _autocast_dtype(device: str) -> torch.dtype | None:
    """The dtype autocast computes in on this device type, or None when it is off (or, like on the meta
    device, does not exist)."""
    if not torch.amp.is_autocast_available(device) or not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device)


def _forward_autocast(ctx) -> AbstractContextManager:
    """The autocast state a custom function's forward ran under (``ctx.autocast``), for its backward."""
    device, dtype = ctx.autocast
    return torch.autocast(device, dtype=dtype) if dtype is not None else nullcontext()


class _RecomputedLinear(torch.autograd.Function):
    """``linear(fn(x))`` that keeps ``x`` for backward instead of ``fn(x)`` and recomputes the cheap,
    memory-bound ``fn`` (LayerNorm, GELU) there; the matmuls are never recomputed."""

    @staticmethod
    def forward(ctx, x, weight, bias, fn, *fn_params):
        out = F.linear(fn(x, *fn_params), weight, bias)
        ctx.fn, ctx.out_dtype, ctx.has_bias = fn, out.dtype, bias is not None
        device = x.device.type  # backward runs outside autocast: recompute fn under the forward's autocast state
        ctx.autocast = (device, _autocast_dtype(device))
        ctx.save_for_backward(x, weight, bias, *fn_params)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, *params = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiate the plain formula so double backward is right
            return _RecomputedLinear._differentiable_backward(ctx, grad_out, x, weight, bias, params)
        with torch.enable_grad(), _forward_autocast(ctx):
            leaves = [x.detach().requires_grad_(), *(p.detach().requires_grad_() for p in params)]
            y = ctx.fn(*leaves)
        dt = ctx.out_dtype  # the dtype autocast ran the linear in
        g = grad_out.reshape(-1, grad_out.shape[-1]).to(dt)
        grad_w = (g.t() @ y.detach().reshape(-1, y.shape[-1]).to(dt)).to(weight.dtype)
        grad_b = g.sum(0).to(weight.dtype) if ctx.has_bias else None
        grad_y = (g @ weight.to(dt)).view(y.shape).to(y.dtype)
        grads = torch.autograd.grad(y, leaves, grad_y)
        return grads[0], grad_w, grad_b, None, *grads[1:]

    @staticmethod
    def _differentiable_backward(ctx, grad_out, x, weight, bias, params):
        """Backward as a graph of the saved inputs (``create_graph=True``): ``linear(fn(x))`` is recomputed
        with autograd recording, so gradients of these gradients (double backward) are exact."""
        with _forward_autocast(ctx):
            out = F.linear(ctx.fn(x, *params), weight, bias)
        inputs = [x, weight, bias, *params]
        wanted = [t for t in inputs if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
        result = [next(grads) if t is not None and t.requires_grad else None for t in inputs]
        return result[0], result[1], result[2], None, *result[3:]


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, weight.shape, weight, bias)  # eps 1e-5, as nn.LayerNorm and the official code


def norm_linear(x: torch.Tensor, norm: nn.LayerNorm | None, linear: nn.Linear | nn.Conv2d,
                weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``linear(norm(x))`` on channels-last tokens keeping only ``x`` for backward (a 1x1 convolution
    counts as a linear layer). ``weight``/``bias`` replace the linear's own (its low-precision copies)."""
    if weight is None:
        weight, bias = linear.weight.flatten(1), linear.bias
    if norm is None:
        return F.linear(x, weight, bias)
    if not torch.is_grad_enabled() or _is_compiling():  # nothing to save / inductor plans recompute itself
        return F.linear(norm(x), weight, bias)
    return _RecomputedLinear.apply(x, weight, bias, _layer_norm, norm.weight, norm.bias)


def gelu_linear(x: torch.Tensor, linear: nn.Linear, weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """``linear(gelu(x))`` keeping only ``x`` for backward."""
    if weight is None:
        weight, bias = linear.weight, linear.bias
    if not torch.is_grad_enabled() or _is_compiling():
        return F.linear(F.gelu(x), weight, bias)
    return _RecomputedLinear.apply(x, weight, bias, F.gelu)


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
    the padded map (the order of Swin's detection/segmentation code and timm), so a shifted window never
    splits a band. Pairs in different shift regions get -100 (the official value). Padding keys get
    -inf for real queries, so padding cannot change a real token; a padding query may attend to other
    padding, which keeps every softmax row finite (padding outputs are cropped away).
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


class _TokenGather(torch.autograd.Function):
    """``x.index_select(1, index)`` whose backward is another gather, ``grad.index_select(1, grad_index)``
    (after appending a zero token when ``pad_grad``), instead of autograd's zero-fill plus scatter-add.

    Exact for the window gathers: they move every real token exactly once, and the extra reads of padding
    positions get a zero gradient (padding keys are masked out of real queries, padding outputs cropped)."""

    @staticmethod
    def forward(ctx, x, index, grad_index, pad_grad):
        ctx.grad_index, ctx.pad_grad = grad_index, pad_grad
        return x.index_select(1, index)

    @staticmethod
    def backward(ctx, grad):
        if ctx.pad_grad:
            grad = F.pad(grad, (0, 0, 0, 1))
        return grad.index_select(1, ctx.grad_index), None, None, None


class _ScaledResidual(torch.autograd.Function):
    """``x + branch * scale`` (drop path: ``scale`` is 0 or 1/keep per image) as one kernel each way."""

    @staticmethod
    def forward(ctx, x, branch, scale):
        ctx.save_for_backward(scale)
        return torch.addcmul(x, branch, scale)

    @staticmethod
    def backward(ctx, grad):
        (scale,) = ctx.saved_tensors
        return grad, grad * scale, None


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, additive: torch.Tensor, scale: float,
                     sdpa: bool) -> torch.Tensor:
    """softmax(scale * q k^T + additive) v for q, k, v (B, nW, heads, N, d) and additive (nW or 1, heads, N, N),
    broadcast over the batch (never copied per image).

    ``sdpa`` uses torch's scaled_dot_product_attention; otherwise the explicit formula: q k^T in the
    input dtype except float16 (whose logits can overflow; they are computed in float32), then scale and
    bias in one addition that promotes to at least float32, so the softmax runs in float32 (float64 for
    float64 inputs). On the CPU a learnable bias sends SDPA to its unfused path, which takes more kernels
    than this formula.
    """
    b, nw, heads, n, d = q.shape
    if sdpa:  # windows folded into the head axis: the (nW*heads, N, N) bias broadcasts over the batch
        q, k, v = (t.reshape(b, nw * heads, n, d) for t in (q, k, v))
        mask = additive.expand(nw, heads, n, n).reshape(nw * heads, n, n).to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale).view(b, nw, heads, n, d)
    if q.dtype == torch.float16:
        with torch.autocast(q.device.type, enabled=False):
            logits = q.float() @ k.float().transpose(-2, -1)
    else:
        logits = q @ k.transpose(-2, -1)
    additive = additive.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    attn = torch.add(additive, logits, alpha=scale).softmax(-1)
    return attn.to(v.dtype) @ v


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative-position bias.

    ``fused`` uses torch's scaled_dot_product_attention where it has a fused kernel (CUDA, and under
    torch.compile), else the explicit formula (``window_attention``); both compute the same thing.
    """

    def __init__(self, dim: int, num_heads: int, window_size: Sequence[int], qkv_bias: bool = True,
                 fused: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.window_size = tuple(window_size)
        self.fused = fused
        table = math.prod(2 * m - 1 for m in self.window_size)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table, num_heads))
        self.register_buffer("relative_position_index",
                             relative_position_index(self.window_size, self.window_size), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, index: torch.Tensor, mask: torch.Tensor | None,
                norm: nn.LayerNorm | None = None, weights: Sequence[torch.Tensor | None] = (None,) * 4) -> torch.Tensor:
        """x: (B, nW, N, C) windows, normalised by ``norm`` first; index: (N, N) bias-table index from the
        stage geometry; mask: (nW, N, N) or None; weights: low-precision qkv and proj weight and bias, or
        None for the modules' own. Returns (B, nW, N, C)."""
        b, nw, n, c = x.shape
        heads = self.num_heads
        qkv = norm_linear(x, norm, self.qkv, *weights[:2]).view(b, nw, n, 3, heads, self.head_dim)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).contiguous().unbind(0)  # one copy; each (B, nW, heads, N, d)
        additive = F.embedding(index, self.relative_position_bias_table).permute(2, 0, 1)  # heads, N, N
        additive = additive[None] if mask is None else additive + mask[:, None]
        # the CPU (and meta, which stands in for it in memory counts) takes the explicit formula
        sdpa = self.fused and (x.device.type not in ("cpu", "meta") or _is_compiling())
        out = window_attention(q, k, v, additive, self.scale, sdpa)
        out = out.transpose(2, 3).reshape(b, nw, n, c)
        return F.linear(out, *weights[2:]) if weights[2] is not None else self.proj(out)


class Mlp(nn.Module):
    """fc1, GELU, fc2 (the official block MLP; dropout is 0 there)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, norm: nn.LayerNorm | None = None,
                weights: Sequence[torch.Tensor | None] = (None,) * 4) -> torch.Tensor:
        """``fc2(gelu(fc1(norm(x))))``, keeping neither the norm nor the GELU output for backward."""
        return gelu_linear(norm_linear(x, norm, self.fc1, *weights[:2]), self.fc2, *weights[2:])


class SwinBlock(nn.Module):
    """Pre-norm Swin block: (shifted-)window attention then MLP, each with a residual and drop path.
    ``window_size`` is per axis (an int means a square 2D window); each stage clamps it to its size."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int | Sequence[int],
        shifted: bool,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        fused_attention: bool = True,
    ):
        super().__init__()
        self.window_size = _per_axis(window_size, 2) if isinstance(window_size, int) else tuple(window_size)
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, self.window_size, qkv_bias, fused_attention)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _low_precision_weights(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        """Under autocast in eager mode: the eight matmul weights and biases cast in one copy (autocast
        would cast each one, and cast each gradient back, separately). Otherwise None for each."""
        linears = (self.attn.qkv, self.attn.proj, self.mlp.fc1, self.mlp.fc2)
        device = x.device.type
        dtype = None if _is_compiling() else _autocast_dtype(device)
        if dtype is None:
            return [None] * 8
        params = [t for lin in linears for t in (lin.weight, lin.bias)]
        if any(p is None or p.dtype == dtype for p in params):
            return [None] * 8
        flat = torch.cat([p.reshape(-1) for p in params]).to(dtype)
        return [t.view_as(p) for t, p in zip(flat.split([p.numel() for p in params]), params)]

    def _attend(self, x: torch.Tensor, weights: Sequence[torch.Tensor | None] = (None,) * 4) -> torch.Tensor:
        """norm1 and attention in windows: pad, roll and partition are one gather, and one gather back
        crops the padding and undoes the roll. norm1 runs after the gather (LayerNorm is per token);
        padding tokens then hold a copy of a real token, which cannot matter because they are masked out
        of every real token's attention."""
        b, *sizes, c = x.shape
        geo = stage_geometry(tuple(sizes), self.window_size, self.shifted, x.device)
        tokens = x.reshape(b, -1, c)
        if geo.identity:
            windows = tokens
        elif _is_compiling():
            windows = tokens.index_select(1, geo.gather)
        else:
            windows = _TokenGather.apply(tokens, geo.gather, geo.inverse, False)
        out = self.attn(windows.view(b, -1, math.prod(geo.window), c), geo.index, geo.mask, self.norm1, weights)
        out = out.view(b, -1, c)
        if geo.identity:
            return out.view(x.shape)
        if _is_compiling():
            return out.index_select(1, geo.inverse).view(x.shape)
        return _TokenGather.apply(out, geo.inverse, geo.order, geo.padded).view(x.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, *sizes, C) -> (B, *sizes, C)."""
        weights = self._low_precision_weights(x)
        p = self.drop_path.drop_prob if isinstance(self.drop_path, DropPath) and self.training else 0.0
        if not p:
            x = x + self._attend(x, weights[:4])
            return x + self.mlp(x, self.norm2, weights[4:])
        keep = 1.0 - p
        scales = x.new_empty(2, x.shape[0], *[1] * (x.dim() - 1)).bernoulli_(keep).div_(keep)  # both residuals, one draw
        residual = torch.addcmul if _is_compiling() else _ScaledResidual.apply
        x = residual(x, self._attend(x, weights[:4]), scales[0])
        return residual(x, self.mlp(x, self.norm2, weights[4:]), scales[1])


def _conv(dims: int, transposed: bool = False) -> type[nn.Module]:
    return {(2, False): nn.Conv2d, (3, False): nn.Conv3d, (2, True): nn.ConvTranspose2d,
            (3, True): nn.ConvTranspose3d}[dims, transposed]


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(-1, 1)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(1, -1)


class PatchEmbed(nn.Module):
    """Non-overlapping patches (stride per axis) to tokens: strided conv, then LayerNorm (patch_norm=True)."""

    def __init__(self, in_channels: int, dim: int, patch_size: Sequence[int]):
        super().__init__()
        self.proj = _conv(len(patch_size))(in_channels, dim, kernel_size=tuple(patch_size), stride=tuple(patch_size))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Cin, *sizes) -> (B, *sizes / patch, C)."""
        return self.norm(_channels_last(self.proj(x)))


class PatchMerging(nn.Module):
    """Neighbours within a ``stride`` block concatenated, LayerNorm, Linear to 2C without bias. In 2D with
    stride 2x2 the channel blocks are in the official order (0,0), (1,0), (0,1), (1,1): the first axis's
    offset varies fastest, in every dimension. An axis with stride 1 is not merged (anisotropic plans)."""

    def __init__(self, dim: int, stride: Sequence[int]):
        super().__init__()
        self.stride = tuple(stride)
        group = math.prod(self.stride)
        self.norm = nn.LayerNorm(group * dim)
        self.reduction = nn.Linear(group * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, *sizes, c = x.shape
        n = len(sizes)
        split = [v for size, s in zip(sizes, self.stride) for v in (size // s, s)]
        # (b, coarse_0, offset_0, coarse_1, offset_1, ..., c) -> (b, coarse..., offsets last-axis-first, c)
        x = x.view(b, *split, c).permute(0, *range(1, 2 * n, 2), *range(2 * n, 0, -2), 2 * n + 1)
        x = x.reshape(b, *[size // s for size, s in zip(sizes, self.stride)], -1)
        return norm_linear(x, self.norm, self.reduction)


class PatchExpand(nn.Module):
    """Linear C -> prod(scale) * C_out without bias, each token unfolded to a ``scale`` block in the
    official ``(p1 p2 c)`` channel order, then LayerNorm. Scale 2, C_out=C/2 is Swin-Unet's PatchExpand;
    scale 4, C_out=C its FinalPatchExpand_X4."""

    def __init__(self, dim: int, out_dim: int, scale: Sequence[int]):
        super().__init__()
        self.scale = tuple(scale)
        self.expand = nn.Linear(dim, math.prod(self.scale) * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        b, *sizes, _ = x.shape
        n = len(sizes)
        x = self.expand(x).view(b, *sizes, *self.scale, -1)
        # (b, coarse..., offsets..., c) -> (b, coarse_0, offset_0, coarse_1, offset_1, ..., c)
        x = x.permute(0, *[a for i in range(1, n + 1) for a in (i, n + i)], 2 * n + 1)
        return x.reshape(b, *[size * s for size, s in zip(sizes, self.scale)], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.project(x))


class BilinearExpand(nn.Module):
    """The paper's bilinear up-sampling ablation (trilinear in 3D): Linear C -> C_out (no bias),
    interpolation by ``scale``, LayerNorm. The projection runs before the interpolation; both are linear,
    so the order only saves work."""

    def __init__(self, dim: int, out_dim: int, scale: Sequence[int]):
        super().__init__()
        self.scale = tuple(float(s) for s in scale)
        self.mode = "bilinear" if len(scale) == 2 else "trilinear"
        self.expand = nn.Linear(dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        x = _channels_first(self.expand(x))
        return _channels_last(F.interpolate(x, scale_factor=self.scale, mode=self.mode, align_corners=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.project(x))


class TransposedConvExpand(nn.Module):
    """The paper's transposed-convolution up-sampling ablation: kernel = stride = ``scale``, LayerNorm."""

    def __init__(self, dim: int, out_dim: int, scale: Sequence[int]):
        super().__init__()
        self.expand = _conv(len(scale), transposed=True)(dim, out_dim, kernel_size=tuple(scale), stride=tuple(scale))
        self.norm = nn.LayerNorm(out_dim)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return _channels_last(self.expand(_channels_first(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.project(x))


_UPSAMPLERS: dict[str, type[nn.Module]] = {
    "patch_expand": PatchExpand,
    "bilinear": BilinearExpand,
    "transposed_conv": TransposedConvExpand,
}


class SwinStage(nn.Module):
    """``depth`` Swin blocks (even blocks W-MSA, odd blocks SW-MSA) at one resolution."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: Sequence[int],
        drop_path: Sequence[float],
        mlp_ratio: float,
        qkv_bias: bool,
        fused_attention: bool,
    ):
        super().__init__()
        self.dim = dim
        self.grad_checkpointing = False
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, i % 2 == 1, mlp_ratio, qkv_bias, drop_path[i], fused_attention)
            for i in range(depth)
        )

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and x.requires_grad:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class EncoderStage(SwinStage):
    """Swin blocks, then PatchMerging at the end of the stage (the official layout, not timm's)."""

    def __init__(self, *args, downsample: Sequence[int] | None, **kwargs):
        super().__init__(*args, **kwargs)
        self.downsample = PatchMerging(self.dim, downsample) if downsample is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.run_blocks(x)
        return self.downsample(x) if self.downsample is not None else x


class DecoderStage(SwinStage):
    """Optional skip fusion (concat [x, skip], Linear 2C -> C with bias), Swin blocks, optional up-sampling
    by the stride of the encoder's merging at this scale.

    ``forward`` returns the features after the blocks (for the deep-supervision head) and the
    up-sampled tensor for the next stage (or None at the last stage).
    """

    def __init__(self, *args, fuse: bool, upsampling: str | None, scale: Sequence[int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fuse = nn.Linear(2 * self.dim, self.dim) if fuse else None
        self.upsample = _UPSAMPLERS[upsampling](self.dim, self.dim // 2, scale) if upsampling else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.fuse is not None:
            x = self.fuse(torch.cat([x, skip], dim=-1))
        x = self.run_blocks(x)
        return x, (self.upsample(x) if self.upsample is not None else None)


class SwinEncoder(nn.Module):
    """Patch embedding, three Swin stages ending in PatchMerging, the bottleneck stage and its norm.

    ``forward`` returns the skips finest first (1/4, 1/8, 1/16 of the input with the default strides,
    channels first), then the 1/32 bottleneck. As in the official code a skip is the *input* of a stage
    (the patch embedding, then the PatchMerging outputs), not the output of the Swin blocks at that scale.
    """

    def __init__(
        self,
        input_channels: int,
        patch_size: Sequence[int],
        merge_strides: Sequence[Sequence[int]],
        embed_dim: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        window_size: Sequence[int],
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: Sequence[Sequence[float]],
        fused_attention: bool,
    ):
        super().__init__()
        self.input_channels = input_channels
        self.patch_embed = PatchEmbed(input_channels, embed_dim, patch_size)
        self.stages = nn.ModuleList(
            EncoderStage(
                embed_dim * 2**i,
                depths[i],
                num_heads[i],
                window_size,
                drop_path[i],
                mlp_ratio,
                qkv_bias,
                fused_attention,
                downsample=merge_strides[i] if i < NUM_STAGES - 1 else None,
            )
            for i in range(NUM_STAGES)
        )
        self.norm = nn.LayerNorm(embed_dim * 2 ** (NUM_STAGES - 1))

    def forward_tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Like ``forward`` but channels-last (B, *sizes, C), which is what the decoder consumes."""
        x = self.patch_embed(x)
        outputs = []
        for stage in self.stages:
            outputs.append(x)
            x = stage(x)
        return outputs[:-1] + [self.norm(x)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [_channels_first(t) for t in self.forward_tokens(x)]


class SwinDecoder(nn.Module):
    """Mirror of the encoder: a bare expand from the bottleneck, then three stages of skip fusion,
    Swin blocks and expand (each by the stride of the encoder's merging at that scale), then LayerNorm,
    the final expand by the patch size and a bias-free 1x1 head.

    ``deep_supervision`` is a plain attribute (nnU-Net's trainer sets it): when True, ``forward``
    returns logits at full size and at the three finest token scales (1/4, 1/8, 1/16 of the input with
    the default strides; ``SwinUnet.output_strides``), highest resolution first. The auxiliary heads
    exist either way, so checkpoints load with it on or off.
    """

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        window_size: Sequence[int],
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: Sequence[Sequence[float]],
        fused_attention: bool,
        upsampling: str,
        num_skips: int,
        patch_size: Sequence[int],
        merge_strides: Sequence[Sequence[int]],
        deep_supervision: bool,
    ):
        super().__init__()
        self.deep_supervision = deep_supervision
        self.num_skips = num_skips
        stages = []
        for i in range(NUM_STAGES):  # i = 0 at the bottleneck ... i = 3 at the finest token scale
            enc = NUM_STAGES - 1 - i  # the encoder stage at the same resolution
            stages.append(
                DecoderStage(
                    embed_dim * 2**enc,
                    depths[enc] if i else 0,  # official layers_up.0 is a bare PatchExpand
                    num_heads[enc],
                    window_size,
                    drop_path[enc],
                    mlp_ratio,
                    qkv_bias,
                    fused_attention,
                    fuse=i > 0 and enc < num_skips,  # k skips: the k finest scales
                    upsampling=upsampling if enc else None,
                    scale=merge_strides[enc - 1] if enc else None,
                )
            )
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(embed_dim)
        self.final_expand = _UPSAMPLERS[upsampling](embed_dim, embed_dim, patch_size)
        # Output heads, one per output in deep-supervision order: seg_layers[0] is the full-resolution head,
        # then the finest token scale (reads the normed features of the last stage) and the two coarser ones.
        # nnU-Net's -pretrained_weights skips every key containing ".seg_layers.", so fine-tuning between label
        # sets works; this order is the old head, aux_heads.0-2 order, so optimizer states of older
        # checkpoints still line up.
        conv = _conv(len(patch_size))
        self.seg_layers = nn.ModuleList(
            conv(embed_dim * 2 ** max(0, i - 1), num_classes, kernel_size=1, bias=False) for i in range(NUM_STAGES)
        )
        self.register_load_state_dict_pre_hook(_rename_old_head_keys)

    def forward_tokens(self, features: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """features: channels-last skips (finest first) then the bottleneck, as the encoder makes them."""
        skips = features[:-1]
        x: torch.Tensor | None = features[-1]
        per_scale = []  # decoder features, coarsest first
        for i, stage in enumerate(self.stages):
            enc = NUM_STAGES - 1 - i
            out, x = stage(x, skips[enc] if stage.fuse is not None else None)
            if i:
                per_scale.append(out)
        finest = self.norm(per_scale[-1])
        # the final expand's LayerNorm at full resolution is recomputed in backward, not kept
        head, *aux_heads = self.seg_layers
        logits = _channels_first(norm_linear(self.final_expand.project(finest), self.final_expand.norm, head))
        if not self.deep_supervision:
            return logits
        per_scale[-1] = finest
        aux = [_channels_first(norm_linear(feat, None, head)) for head, feat in zip(aux_heads, reversed(per_scale))]
        return [logits, *aux]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """features: channels-first skips then the bottleneck, as ``SwinEncoder.forward`` returns them."""
        return self.forward_tokens([_channels_last(f) for f in features])


#: Output-head names before they became ``seg_layers`` (checkpoints written until then use them).
_OLD_HEAD_KEYS = {"head.weight": "seg_layers.0.weight",
                  **{f"aux_heads.{i}.weight": f"seg_layers.{i + 1}.weight" for i in range(NUM_STAGES - 1)}}


def _rename_old_head_keys(module, state_dict, prefix, *_args) -> None:
    """load_state_dict pre-hook of SwinDecoder: rename ``head`` / ``aux_heads.i`` in an older checkpoint to
    ``seg_layers.0`` / ``seg_layers.i+1``, so results folders trained before the rename still predict."""
    for old, new in _OLD_HEAD_KEYS.items():
        if prefix + old in state_dict and prefix + new not in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)


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


class SwinUnet(nn.Module):
    """Swin-Unet: a pure-transformer U-Net from Swin blocks with shifted windows, patch merging and
    patch expanding (Cao et al., arXiv 2105.05537), in 2D and, with per-axis strides, in 3D.

    Args:
        input_channels: image channels (modalities); nnU-Net passes this.
        num_classes: output channels (segmentation heads); nnU-Net passes this.
        deep_supervision: also return logits at the three finest token scales (``output_strides``).
        spatial_dims: 2 (images) or 3 (volumes).
        patch_size: patch-embedding stride, one int for every axis or one per axis (4: the paper).
        merge_strides: stride of each of the three patch mergings, per axis (2: the paper; 1 keeps an
            axis, e.g. a thick-slice axis of an anisotropic 3D plan; ``strides_from_pooling``).
        window_size: attention window, one int or one per axis; each stage clamps it to its size.
        embed_dim, depths, num_heads, mlp_ratio, qkv_bias, drop_path_rate: as in the paper's "tiny"
            model by default. Drop path grows linearly over the encoder blocks and the decoder reuses
            the rate of the encoder stage at the same resolution.
        upsampling: "patch_expand" (the paper), "bilinear" (trilinear in 3D) or "transposed_conv"
            (its ablation).
        num_skips: 0-3 skip connections, always the finest ones: 1 = 1/4; 2 = 1/4 and 1/8;
            3 = 1/4, 1/8 and 1/16 (the paper's model). A missing skip has no concat and no fusion layer.
        fused_attention: use torch's scaled_dot_product_attention (same result as the explicit formula).
        gradient_checkpointing: recompute each Swin block in backward to save activation memory.

    All options are plain JSON values, so nnU-Net's ``get_network_from_plans`` can build the network
    from a plans file naming ``nnunet_swin.SwinUnet``. Every input side must be divisible by its
    ``size_multiple`` (patch size x merge strides: 32 by default); any such size works.
    """

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        deep_supervision: bool = False,
        spatial_dims: int = 2,
        patch_size: int | Sequence[int] = 4,
        merge_strides: Sequence[int | Sequence[int]] = (2, 2, 2),
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int | Sequence[int] = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.2,
        upsampling: str = "patch_expand",
        num_skips: int = 3,
        fused_attention: bool = True,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        patch, window = _per_axis(patch_size, spatial_dims), _per_axis(window_size, spatial_dims)
        if isinstance(merge_strides, (int, str)) or len(merge_strides) != NUM_STAGES - 1:
            raise ValueError(f"merge_strides needs {NUM_STAGES - 1} entries (one per patch merging), "
                             f"got {merge_strides!r}")
        merges = [_per_axis(m, spatial_dims) for m in merge_strides]
        _check_options(input_channels, num_classes, spatial_dims, patch, merges, window, embed_dim, depths,
                       num_heads, drop_path_rate, upsampling, num_skips)
        self.input_channels = input_channels
        self.num_classes = num_classes
        self.spatial_dims = spatial_dims
        strides = [patch]
        for m in merges:
            strides.append(tuple(a * b for a, b in zip(strides[-1], m)))
        #: Stride of each token scale (the four stages), finest first.
        self.stage_strides = tuple(strides)
        self.size_multiple = strides[-1]
        self.output_strides = ((1,) * spatial_dims, *strides[:-1])
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # also when built on meta
        offsets = [sum(depths[:i]) for i in range(NUM_STAGES + 1)]
        drop_path = [rates[offsets[i] : offsets[i + 1]] for i in range(NUM_STAGES)]
        common = dict(num_heads=num_heads, window_size=window, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                      drop_path=drop_path, fused_attention=fused_attention)
        self.encoder = SwinEncoder(input_channels, patch, merges, embed_dim, depths, **common)
        self.decoder = SwinDecoder(num_classes, embed_dim, depths, upsampling=upsampling, num_skips=num_skips,
                                   patch_size=patch, merge_strides=merges, deep_supervision=deep_supervision,
                                   **common)
        self.apply(_init_weights)
        self.set_grad_checkpointing(gradient_checkpointing)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every Swin block during backward instead of keeping its activations."""
        for module in self.modules():
            if isinstance(module, SwinStage):
                module.grad_checkpointing = enable

    def set_fused_attention(self, enable: bool = True) -> None:
        for module in self.modules():
            if isinstance(module, WindowAttention):
                module.fused = enable

    def describe(self, size: Sequence[int]) -> dict:
        """What this network does at input ``size`` (for logs): strides, and per stage the token grid, the
        window after clamping (attention is global along an axis no longer than the window) and channels."""
        self._check_size(tuple(size))
        window = self.encoder.stages[0].blocks[0].window_size
        stages = []
        for stride, stage in zip(self.stage_strides, self.encoder.stages):
            grid = [s // st for s, st in zip(size, stride)]
            stages.append({"size": grid, "window": [window_geometry(g, m, False)[0] for g, m in zip(grid, window)],
                           "dim": stage.dim})
        return {"patch_size": list(self.stage_strides[0]),
                "merge_strides": [[b // a for a, b in zip(s0, s1)] for s0, s1 in zip(self.stage_strides,
                                                                                   self.stage_strides[1:])],
                "size_multiple": list(self.size_multiple), "stages": stages}

    def _check_size(self, size: tuple[int, ...]) -> None:
        if len(size) != self.spatial_dims:
            raise ValueError(f"this SwinUnet is {self.spatial_dims}D: expected {self.spatial_dims} spatial sizes, "
                             f"got {list(size)}")
        axes = "HW" if self.spatial_dims == 2 else "DHW"
        bad = [(axis, s, m) for axis, s, m in zip(axes, size, self.size_multiple) if s % m]
        if bad:
            hints = ", ".join(f"{axis}={s} (nearest: {' or '.join(map(str, nearest_valid_sizes(s, m)))})"
                              for axis, s, m in bad)
            raise ValueError(f"input size {list(size)} is not divisible by {list(self.size_multiple)} per axis "
                             f"(patch size x the three merge strides): {hints}")

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError for an input this network cannot take, naming sizes that work."""
        if x.dim() != self.spatial_dims + 2:
            layout = "(B, C, H, W)" if self.spatial_dims == 2 else "(B, C, D, H, W)"
            raise ValueError(f"this SwinUnet is a {self.spatial_dims}D network and expects {layout} input, "
                             f"got shape {tuple(x.shape)}")
        if x.shape[1] != self.input_channels:
            raise ValueError(
                f"input has {x.shape[1]} channels but the network was built for input_channels={self.input_channels}"
            )
        self._check_size(tuple(x.shape[2:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self.check_input(x)
        device = x.device.type
        if _autocast_dtype(device) == torch.float16:
            # fp16 overflows in Swin attention and MLPs (max 65504). nnU-Net's validation and predictor
            # autocast to fp16 unless told otherwise: compute in float32 then, never in fp16.
            with torch.autocast(device, enabled=False):
                return self._forward(x.float())
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.decoder.forward_tokens(self.encoder.forward_tokens(x))


def _check_options(input_channels, num_classes, spatial_dims, patch, merges, window, embed_dim, depths, num_heads,
                   drop_path_rate, upsampling, num_skips) -> None:
    if input_channels < 1 or num_classes < 1:
        raise ValueError(f"input_channels and num_classes must be >= 1, got {input_channels} and {num_classes}")
    for name, value in (("patch_size", patch), ("window_size", window), *(("merge_strides", m) for m in merges)):
        if len(value) != spatial_dims or min(value) < 1:
            raise ValueError(f"{name} needs one positive int per axis ({spatial_dims} for a {spatial_dims}D network), "
                             f"got {list(value)}")
    if len(depths) != NUM_STAGES or len(num_heads) != NUM_STAGES:
        raise ValueError(f"depths and num_heads need {NUM_STAGES} entries (three merging stages and the "
                         f"bottleneck), got {list(depths)} and {list(num_heads)}")
    if any(d < 1 for d in depths):
        raise ValueError(f"every stage needs at least one Swin block, got depths={list(depths)}")
    for i, heads in enumerate(num_heads):
        if (embed_dim * 2**i) % heads:
            raise ValueError(f"stage {i} has {embed_dim * 2**i} channels, not divisible by num_heads[{i}]={heads}")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
    if upsampling not in UPSAMPLING_MODES:
        raise ValueError(f"upsampling must be one of {UPSAMPLING_MODES}, got {upsampling!r}")
    if num_skips not in range(NUM_STAGES):
        raise ValueError(f"num_skips must be 0, 1, 2 or 3, got {num_skips!r}")
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even (PatchExpand halves channels), got {embed_dim}")


def _init_weights(module: nn.Module) -> None:
    """The official initialisation: Linear trunc-normal(0.02) with zero bias, LayerNorm 1/0;
    convolutions keep PyTorch's default."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
