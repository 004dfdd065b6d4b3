"""The official Swin-Unet (``SwinTransformerSys`` of Cao et al., arXiv 2105.05537) re-implemented plainly, as
the reference our network is compared with: by the parity tests and by ``nnunet-swin bench``'s official row.

Written from the paper and the official checkpoint layout (its state-dict key names and shapes), not from
the official repository's code, timm's, or this package's network (``nnunet_swin.network`` never imports
it): same keys and shapes as the official checkpoints (so they load strictly) and the same forward
arithmetic, at the sizes the official code accepts (square inputs tiled by the window at every stage).
Dropout rates are 0 and drop path is omitted, so in training mode it computes what it computes in eval.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn


def window_partition(x: torch.Tensor, m: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, m, m, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // m, m, w // m, m, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, m, m, c)


def window_reverse(windows: torch.Tensor, m: int, h: int, w: int) -> torch.Tensor:
    """(B * nW, m, m, C) -> (B, H, W, C)."""
    b = windows.shape[0] // ((h // m) * (w // m))
    x = windows.view(b, h // m, w // m, m, m, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, -1)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        self.window, self.num_heads = window, num_heads
        self.scale = (dim // num_heads) ** -0.5
        m = window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * m - 1) ** 2, num_heads))
        hh, ww = torch.meshgrid(torch.arange(m), torch.arange(m), indexing="ij")
        hh, ww = hh.flatten(), ww.flatten()  # token n has window coords (hh[n], ww[n])
        index = (hh[:, None] - hh[None, :] + m - 1) * (2 * m - 1) + (ww[:, None] - ww[None, :] + m - 1)
        self.register_buffer("relative_position_index", index.long())  # persistent, (M^2, M^2)
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)  # (B*nW, nH, N, N)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(bw, self.num_heads, n, n)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(bw, n, c))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, res: int, num_heads: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.res = res
        if res <= window:  # clamp rule; equality counts
            window, shift = res, 0
        assert res % window == 0, f"resolution {res} not divisible by window {window}"
        self.window, self.shift = window, shift
        if shift > 0:
            img = torch.zeros(1, res, res, 1)
            bands = [(0, res - window), (res - window, res - shift), (res - shift, res)]
            label = 0
            for h0, h1 in bands:
                for w0, w1 in bands:
                    img[:, h0:h1, w0:w1, :] = label
                    label += 1
            win = window_partition(img, window).view(-1, window * window)
            diff = win[:, None, :] - win[:, :, None]
            mask = torch.zeros_like(diff).masked_fill(diff != 0, -100.0)
            self.register_buffer("attn_mask", mask)  # persistent, (nW, M^2, M^2), key "<block>.attn_mask"
        else:
            self.attn_mask = None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, l, c = x.shape
        h = w = self.res
        assert l == h * w
        m, s = self.window, self.shift
        y = self.norm1(x).view(b, h, w, c)
        if s > 0:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = self.attn(window_partition(y, m).view(-1, m * m, c), self.attn_mask)
        y = window_reverse(y.view(-1, m, m, c), m, h, w)
        if s > 0:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + y.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int, res: int) -> None:
        super().__init__()
        self.res = res
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        assert self.res % 2 == 0
        x = x.view(b, self.res, self.res, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


def _pixels_from_channels(x: torch.Tensor, res: int, p: int) -> torch.Tensor:
    """'b (h w) (p1 p2 c) -> b (h p1 w p2) c' with p1 = p2 = p."""
    b, _, cc = x.shape
    c = cc // (p * p)
    x = x.view(b, res, res, p, p, c).permute(0, 1, 3, 2, 4, 5)  # b h p1 w p2 c
    return x.reshape(b, res * p * res * p, c)


class PatchExpand(nn.Module):
    def __init__(self, dim: int, res: int) -> None:
        super().__init__()
        self.res = res
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_pixels_from_channels(self.expand(x), self.res, 2))


class FinalPatchExpandX4(nn.Module):
    def __init__(self, dim: int, res: int) -> None:
        super().__init__()
        self.res = res
        self.expand = nn.Linear(dim, 16 * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_pixels_from_channels(self.expand(x), self.res, 4))


class Stage(nn.Module):
    """BasicLayer (``downsample``) / BasicLayer_up (``upsample``): blocks, then the optional resampler."""

    def __init__(self, dim: int, res: int, depth: int, heads: int, window: int, mlp_ratio: float,
                 downsample: bool = False, upsample: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, res, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio) for i in range(depth))
        if downsample:
            self.downsample = PatchMerging(dim, res)
        if upsample:
            self.upsample = PatchExpand(dim, res)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        for name in ("downsample", "upsample"):
            if hasattr(self, name):
                x = getattr(self, name)(x)
        return x


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=4, stride=4)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[2] == self.img_size and x.shape[3] == self.img_size, "input must equal img_size"
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinTransformerSys(nn.Module):
    def __init__(self, img_size: int, in_chans: int, num_classes: int, embed_dim: int, depths: Sequence[int],
                 num_heads: Sequence[int], window_size: int, mlp_ratio: float) -> None:
        super().__init__()
        assert isinstance(img_size, int)
        c, r = embed_dim, img_size // 4
        self.res0 = r
        self.patch_embed = PatchEmbed(img_size, in_chans, c)
        self.layers = nn.ModuleList(
            Stage(c * 2 ** i, r // 2 ** i, depths[i], num_heads[i], window_size, mlp_ratio, downsample=i < 3)
            for i in range(4))
        self.layers_up = nn.ModuleList([PatchExpand(c * 8, r // 8)] + [
            Stage(c * 2 ** (3 - i), r // 2 ** (3 - i), depths[3 - i], num_heads[3 - i], window_size, mlp_ratio,
                  upsample=i < 3) for i in range(1, 4)])
        self.concat_back_dim = nn.ModuleList(
            [nn.Identity()] + [nn.Linear(2 * c * 2 ** (3 - i), c * 2 ** (3 - i)) for i in range(1, 4)])
        self.norm = nn.LayerNorm(c * 8)
        self.norm_up = nn.LayerNorm(c)
        self.up = FinalPatchExpandX4(c, r)
        self.output = nn.Conv2d(c, num_classes, kernel_size=1, bias=False)
        self.apply(self._init_weights)
        for mod in self.modules():
            if isinstance(mod, WindowAttention):
                nn.init.trunc_normal_(mod.relative_position_bias_table, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.patch_embed(x)
        x_downsample: list[torch.Tensor] = []
        for layer in self.layers:
            x_downsample.append(x)  # stored BEFORE the stage runs
            x = layer(x)
        return self.norm(x), x_downsample

    def forward_up_features(self, x: torch.Tensor, x_downsample: list[torch.Tensor]) -> torch.Tensor:
        x = self.layers_up[0](x)
        for i in range(1, 4):
            x = torch.cat([x, x_downsample[3 - i]], dim=-1)  # [decoder, skip]
            x = self.layers_up[i](self.concat_back_dim[i](x))
        return self.norm_up(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.forward_features(x)
        x = self.up(self.forward_up_features(x, skips))
        b, s = x.shape[0], 4 * self.res0
        return self.output(x.view(b, s, s, -1).permute(0, 3, 1, 2))


def build_official(img_size: int, in_chans: int = 3, num_classes: int = 9, embed_dim: int = 96,
                   depths: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                   window_size: int = 7, mlp_ratio: float = 4.0) -> nn.Module:
    """The official network for square ``img_size`` inputs (224: the paper's Synapse model), in eval mode."""
    return SwinTransformerSys(img_size, in_chans, num_classes, embed_dim, depths, num_heads, window_size,
                              mlp_ratio).eval()


def _tokens_to_nchw(x: torch.Tensor) -> torch.Tensor:
    b, l, c = x.shape
    s = int(round(l ** 0.5))
    return x.view(b, s, s, c).permute(0, 3, 1, 2).contiguous()


def official_encoder_skips(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """[S0 (patch embed), S1, S2 (PatchMerging outputs), bottleneck after ``norm``], all NCHW."""
    bottleneck, skips = model.forward_features(x)
    return [_tokens_to_nchw(t) for t in (skips[0], skips[1], skips[2], bottleneck)]
