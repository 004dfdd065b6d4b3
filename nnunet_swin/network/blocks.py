"""The modules with one job each: window attention, MLP, Swin block, patch embedding, patch merging and the
three up-sampling modes (patch expanding, bilinear/trilinear, transposed convolution), for 2 or 3 axes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn

from nnunet_swin.network.geometry import relative_position_index, stage_geometry
from nnunet_swin.network.ops import (
    _is_compiling,
    _ScaledResidual,
    _TokenGather,
    cast_together,
    gelu_linear,
    norm_linear,
    window_attention,
)
from nnunet_swin.network.plans import _per_axis

UPSAMPLING_MODES = ("patch_expand", "bilinear", "transposed_conv")


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
        qkv = norm_linear(x, norm, self.qkv, *weights[:2])
        bias = F.embedding(index, self.relative_position_bias_table).permute(2, 0, 1)  # heads, N, N
        # the CPU (and meta, which stands in for it in memory counts) takes the explicit formula
        sdpa = self.fused and (x.device.type not in ("cpu", "meta") or _is_compiling())
        out = window_attention(qkv, self.num_heads, bias, mask, self.scale, sdpa)
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

    def linear_params(self) -> list[torch.Tensor | None]:
        """The weight and bias of qkv, proj, fc1 and fc2: what autocast would cast to low precision."""
        return [t for lin in (self.attn.qkv, self.attn.proj, self.mlp.fc1, self.mlp.fc2) for t in (lin.weight, lin.bias)]

    @property
    def drop_prob(self) -> float:
        return self.drop_path.drop_prob if isinstance(self.drop_path, DropPath) else 0.0

    def _low_precision_weights(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        """Under autocast in eager mode: the eight matmul weights and biases cast in one copy. Otherwise None
        for each."""
        return cast_together(self.linear_params(), x.device.type) or [None] * 8

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

    def forward(self, x: torch.Tensor, weights: Sequence[torch.Tensor | None] | None = None,
                scales: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, *sizes, C) -> (B, *sizes, C). ``weights`` (the low-precision ``linear_params``) and ``scales``
        (the drop-path factors of both residuals, (2, B)) are made for every block of a network at once by
        ``SwinUnet``; a block run alone makes its own."""
        if weights is None:
            weights = self._low_precision_weights(x)
        p = self.drop_prob if self.training else 0.0
        if not p:
            x = x + self._attend(x, weights[:4])
            return x + self.mlp(x, self.norm2, weights[4:])
        if scales is None:
            keep = 1.0 - p
            scales = x.new_empty(2, x.shape[0]).bernoulli_(keep).div_(keep)  # both residuals, one draw
        scales = scales.to(x.dtype).view(2, x.shape[0], *[1] * (x.dim() - 1))
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
