"""Stages, encoder, decoder and ``SwinUnet`` itself: the U-Net assembled from the blocks, its options checked
once at build time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from nnunet_swin.network.blocks import _UPSAMPLERS, PatchEmbed, PatchMerging, SwinBlock, WindowAttention, \
    _channels_first, _channels_last, _conv
from nnunet_swin.network.geometry import NUM_STAGES, window_geometry
from nnunet_swin.network.ops import _autocast_dtype, cast_together, norm_linear
from nnunet_swin.network.options import SwinUnetOptions
from nnunet_swin.network.plans import nearest_valid_sizes

#: Per-forward inputs of each Swin block, made once for all blocks: low-precision weights, drop-path factors.
BlockInputs = dict[SwinBlock, tuple[list[torch.Tensor] | None, torch.Tensor | None]]


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

    def run_blocks(self, x: torch.Tensor, shared: BlockInputs | None = None) -> torch.Tensor:
        for block in self.blocks:
            weights, scales = shared.get(block, (None, None)) if shared else (None, None)
            if self.grad_checkpointing and x.requires_grad:
                x = checkpoint(block, x, weights, scales, use_reentrant=False)
            else:
                x = block(x, weights, scales)
        return x


class EncoderStage(SwinStage):
    """Swin blocks, then PatchMerging at the end of the stage (the official layout, not timm's)."""

    def __init__(self, *args, downsample: Sequence[int] | None, **kwargs):
        super().__init__(*args, **kwargs)
        self.downsample = PatchMerging(self.dim, downsample) if downsample is not None else None

    def forward(self, x: torch.Tensor, shared: BlockInputs | None = None) -> torch.Tensor:
        x = self.run_blocks(x, shared)
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

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None,
                shared: BlockInputs | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.fuse is not None:
            x = self.fuse(torch.cat([x, skip], dim=-1))
        x = self.run_blocks(x, shared)
        return x, (self.upsample(x) if self.upsample is not None else None)


class SwinEncoder(nn.Module):
    """Patch embedding, three Swin stages ending in PatchMerging, the bottleneck stage and its norm.

    ``forward`` returns the skips finest first (1/4, 1/8, 1/16 of the input with the default strides,
    channels first), then the 1/32 bottleneck. As in the official code a skip is the *input* of a stage
    (the patch embedding, then the PatchMerging outputs), not the output of the Swin blocks at that scale.
    """

    def __init__(self, input_channels: int, options: SwinUnetOptions):
        super().__init__()
        self.input_channels = input_channels
        #: The resolved options this encoder was built from (the decoder is built from them too).
        self.options = options
        depths = options.depths
        rates = torch.linspace(0, options.drop_path_rate, sum(depths), device="cpu").tolist()  # also on meta
        offsets = [sum(depths[:i]) for i in range(NUM_STAGES + 1)]
        #: Drop-path rate of every block, per stage; the decoder stage at the same resolution reuses them.
        self.drop_path = [rates[offsets[i] : offsets[i + 1]] for i in range(NUM_STAGES)]
        self.patch_embed = PatchEmbed(input_channels, options.embed_dim, options.patch_size)
        self.stages = nn.ModuleList(
            EncoderStage(*_stage_args(options, i, self.drop_path[i]),
                         downsample=options.merge_strides[i] if i < NUM_STAGES - 1 else None)
            for i in range(NUM_STAGES)
        )
        self.norm = nn.LayerNorm(options.stage_dims[-1])

    def forward_tokens(self, x: torch.Tensor, shared: BlockInputs | None = None) -> list[torch.Tensor]:
        """Like ``forward`` but channels-last (B, *sizes, C), which is what the decoder consumes. ``shared``:
        per-block inputs made once per forward by ``SwinUnet``."""
        x = self.patch_embed(x)
        outputs = []
        for stage in self.stages:
            outputs.append(x)
            x = stage(x, shared)
        return outputs[:-1] + [self.norm(x)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [_channels_first(t) for t in self.forward_tokens(x)]


class SwinDecoder(nn.Module):
    """Mirror of the encoder, built from it: a bare expand from the bottleneck, then three stages of skip
    fusion, Swin blocks and expand (each by the stride of the encoder's merging at that scale), then
    LayerNorm, the final expand by the patch size and a bias-free 1x1 head. Everything it needs is in the
    encoder's options (widths, depths, heads, windows, strides, and the decoder's own ``num_skips`` and
    ``upsampling``) and drop-path rates.

    ``deep_supervision`` is a plain attribute (nnU-Net's trainer sets it): when True, ``forward``
    returns logits at full size and at the three finest token scales (1/4, 1/8, 1/16 of the input with
    the default strides; ``SwinUnet.output_strides``), highest resolution first. The auxiliary heads
    exist either way, so checkpoints load with it on or off.
    """

    def __init__(self, encoder: SwinEncoder, num_classes: int, deep_supervision: bool = False):
        super().__init__()
        options = encoder.options
        num_skips, upsampling = options.num_skips, options.upsampling
        self.deep_supervision = deep_supervision
        self.num_skips = num_skips
        embed_dim = options.embed_dim
        stages = []
        for i in range(NUM_STAGES):  # i = 0 at the bottleneck ... i = 3 at the finest token scale
            enc = NUM_STAGES - 1 - i  # the encoder stage at the same resolution
            dim, depth, *rest = _stage_args(options, enc, encoder.drop_path[enc])
            stages.append(
                DecoderStage(
                    dim,
                    depth if i else 0,  # official layers_up.0 is a bare PatchExpand
                    *rest,
                    fuse=i > 0 and enc < num_skips,  # k skips: the k finest scales
                    upsampling=upsampling if enc else None,
                    scale=options.merge_strides[enc - 1] if enc else None,
                )
            )
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(embed_dim)
        self.final_expand = _UPSAMPLERS[upsampling](embed_dim, embed_dim, options.patch_size)
        # Output heads, one per output in deep-supervision order: seg_layers[0] is the full-resolution head,
        # then the finest token scale (reads the normed features of the last stage) and the two coarser ones.
        # nnU-Net's -pretrained_weights skips every key containing ".seg_layers.", so fine-tuning between label
        # sets works; this order is the old head, aux_heads.0-2 order, so optimizer states of older
        # checkpoints still line up.
        conv = _conv(options.spatial_dims)
        self.seg_layers = nn.ModuleList(
            conv(embed_dim * 2 ** max(0, i - 1), num_classes, kernel_size=1, bias=False) for i in range(NUM_STAGES)
        )
        self.register_load_state_dict_pre_hook(_rename_old_head_keys)

    def forward_tokens(self, features: Sequence[torch.Tensor],
                       shared: BlockInputs | None = None) -> torch.Tensor | list[torch.Tensor]:
        """features: channels-last skips (finest first) then the bottleneck, as the encoder makes them;
        ``shared``: per-block inputs made once per forward by ``SwinUnet``."""
        skips = features[:-1]
        x: torch.Tensor | None = features[-1]
        per_scale = []  # decoder features, coarsest first
        for i, stage in enumerate(self.stages):
            enc = NUM_STAGES - 1 - i
            out, x = stage(x, skips[enc] if stage.fuse is not None else None, shared)
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


def _stage_args(options: SwinUnetOptions, stage: int, drop_path: Sequence[float]) -> tuple:
    """The positional ``SwinStage`` arguments of encoder stage ``stage`` (and its decoder twin)."""
    return (options.stage_dims[stage], options.depths[stage], options.num_heads[stage], options.window_size,
            drop_path, options.mlp_ratio, options.qkv_bias, options.fused_attention)


#: Output-head names before they became ``seg_layers`` (checkpoints written until then use them).
_OLD_HEAD_KEYS = {"head.weight": "seg_layers.0.weight",
                  **{f"aux_heads.{i}.weight": f"seg_layers.{i + 1}.weight" for i in range(NUM_STAGES - 1)}}


def _rename_old_head_keys(module, state_dict, prefix, *_args) -> None:
    """load_state_dict pre-hook of SwinDecoder: rename ``head`` / ``aux_heads.i`` in an older checkpoint to
    ``seg_layers.0`` / ``seg_layers.i+1``, so results folders trained before the rename still predict."""
    for old, new in _OLD_HEAD_KEYS.items():
        if prefix + old in state_dict and prefix + new not in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)


class SwinUnet(nn.Module):
    """Swin-Unet: a pure-transformer U-Net from Swin blocks with shifted windows, patch merging and
    patch expanding (Cao et al., arXiv 2105.05537), in 2D and, with per-axis strides, in 3D.

    Args:
        input_channels: image channels (modalities); nnU-Net passes this.
        num_classes: output channels (segmentation heads); nnU-Net passes this.
        deep_supervision: also return logits at the three finest token scales (``output_strides``).
        options: keyword options, :class:`SwinUnetOptions`' fields (strides, windows, width, depths, heads,
            up-sampling, skips, ...); the paper's Swin-T network by default. An unknown name raises
            ``UnknownOptionError`` naming it and the closest valid one.

    All options are plain JSON values, so nnU-Net's ``get_network_from_plans`` can build the network
    from a plans file naming ``nnunet_swin.SwinUnet``. Every input side must be divisible by its
    ``size_multiple`` (patch size x merge strides: 32 by default); any such size works.

    What callers read instead of reaching into submodules: ``options`` (the resolved
    :class:`SwinUnetOptions`), ``stage_strides``, ``stage_windows``, ``size_multiple``, ``output_strides``,
    ``no_weight_decay()`` and ``describe(size)``. What a caller may set: ``fp16_autocast_dtype``.
    """

    def __init__(self, input_channels: int, num_classes: int, *, deep_supervision: bool = False, **options: Any):
        super().__init__()
        opts = SwinUnetOptions.from_dict(options)
        if input_channels < 1 or num_classes < 1:
            raise ValueError(f"input_channels and num_classes must be >= 1, got {input_channels} and {num_classes}")
        self.input_channels = input_channels
        self.num_classes = num_classes
        #: The resolved options (per-axis tuples): what this network was built from.
        self.options = opts
        self.spatial_dims = opts.spatial_dims
        #: Stride of each token scale (the four stages), finest first.
        self.stage_strides = opts.stage_strides
        #: The window each stage is built with, per axis (clamped to the token grid at run time: ``describe``).
        self.stage_windows = opts.stage_windows
        self.size_multiple = opts.size_multiple
        self.output_strides = opts.output_strides
        self.encoder = SwinEncoder(input_channels, opts)
        self.decoder = SwinDecoder(self.encoder, num_classes, deep_supervision)
        #: Every Swin block, encoder first; one keep probability per residual of each block that drops paths.
        self._swin_blocks = tuple(m for m in self.modules() if isinstance(m, SwinBlock))
        keep = [1.0 - b.drop_prob for b in self._swin_blocks if b.drop_prob for _ in range(2)]
        self.register_buffer("drop_path_keep", torch.tensor(keep, dtype=torch.float32).view(-1, 1), persistent=False)
        self.apply(_init_weights)
        self.set_grad_checkpointing(opts.gradient_checkpointing)
        #: What ``forward`` computes in when it finds itself under fp16 autocast (nnU-Net's validation and
        #: predictor autocast without a dtype, i.e. fp16): ``torch.bfloat16`` where the device has it natively
        #: (a trainer knows), or None for float32. Never fp16 itself: it overflows in attention and MLPs.
        self.fp16_autocast_dtype: torch.dtype | None = None

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters that take no weight decay (timm's convention): the relative-position bias
        tables, as timm's Swin lists them, and every bias and norm weight (one dimension or less), which
        timm's optimizer factory adds by itself; a trainer needs nothing else to build its groups."""
        return {name for name, p in self.named_parameters()
                if p.ndim <= 1 or name.endswith(".bias") or "relative_position_bias_table" in name}

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
        stages = []
        for stride, window, dim in zip(self.stage_strides, self.stage_windows, self.options.stage_dims):
            grid = [s // st for s, st in zip(size, stride)]
            stages.append({"size": grid, "window": [window_geometry(g, m, False)[0] for g, m in zip(grid, window)],
                           "dim": dim})
        return {"patch_size": list(self.options.patch_size),
                "merge_strides": [list(m) for m in self.options.merge_strides],
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
        if _autocast_dtype(device) == torch.float16:  # fp16 overflows (max 65504): bf16 or float32 instead
            if self.fp16_autocast_dtype is not None:
                with torch.autocast(device, dtype=self.fp16_autocast_dtype):
                    return self._forward(x)
            with torch.autocast(device, enabled=False):
                return self._forward(x.float())
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        shared = self._shared_block_inputs(x)
        return self.decoder.forward_tokens(self.encoder.forward_tokens(x, shared), shared)

    def _shared_block_inputs(self, x: torch.Tensor) -> BlockInputs:
        """What every Swin block would otherwise make for itself, made once per forward (eager runs are
        bound by kernel launches): the drop-path factors of all blocks in one draw, and under autocast in
        eager mode the matmul weights of all blocks in one cast (compiled, autocast's casts are fused)."""
        blocks = self._swin_blocks
        flat = cast_together([p for b in blocks for p in b.linear_params()], x.device.type)
        weights = [None] * len(blocks) if flat is None else [flat[i : i + 8] for i in range(0, len(flat), 8)]
        scales = [None] * len(blocks)
        if self.training:
            dropping = [i for i, b in enumerate(blocks) if b.drop_prob]
            if dropping:
                keep = self.drop_path_keep
                drawn = x.new_empty(len(keep), x.shape[0]).bernoulli_(keep).div_(keep)  # x's dtype, as timm
                for row, i in enumerate(dropping):
                    scales[i] = drawn[2 * row : 2 * row + 2]
        return dict(zip(blocks, zip(weights, scales)))


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
