"""SwinUnet's options: its keyword arguments checked and resolved per axis once, and the strides, windows and
channels per stage they give, known without building a module (a trainer needs the network's multiple
before the network exists)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from nnunet_swin.network.blocks import UPSAMPLING_MODES
from nnunet_swin.network.geometry import NUM_STAGES
from nnunet_swin.network.plans import _per_axis


class UnknownOptionError(TypeError):
    """An option name SwinUnet does not have; the message names it, the closest valid name and all of them.
    A TypeError, as Python's own for an unexpected keyword argument. ``names``: the unknown names."""

    def __init__(self, message: str, names: Sequence[str]):
        super().__init__(message)
        self.names = list(names)


@dataclass(frozen=True)
class SwinUnetOptions:
    """Every SwinUnet option (all plain JSON values), resolved: after construction ``patch_size`` and
    ``window_size`` are tuples with one int per axis, ``merge_strides`` one such tuple per merging,
    ``depths`` and ``num_heads`` tuples. Invalid values raise ValueError naming the option.

    spatial_dims: 2 (images) or 3 (volumes).
    patch_size: patch-embedding stride, one int for every axis or one per axis (4: the paper).
    merge_strides: stride of each of the three patch mergings, per axis (2: the paper; 1 keeps an axis, e.g.
        a thick-slice axis of an anisotropic 3D plan; ``strides_from_pooling``).
    window_size: attention window, one int or one per axis; each stage clamps it to its size.
    embed_dim, depths, num_heads, mlp_ratio, qkv_bias, drop_path_rate: as in the paper's "tiny" model by
        default. Drop path grows linearly over the encoder blocks and the decoder reuses the rate of the
        encoder stage at the same resolution.
    upsampling: "patch_expand" (the paper), "bilinear" (trilinear in 3D) or "transposed_conv" (its ablation).
    num_skips: 0-3 skip connections, always the finest ones: 1 = 1/4; 2 = 1/4 and 1/8; 3 = 1/4, 1/8 and
        1/16 (the paper's model). A missing skip has no concat and no fusion layer.
    fused_attention: use torch's scaled_dot_product_attention (same result as the explicit formula).
    gradient_checkpointing: recompute each Swin block in backward to save activation memory.
    """

    spatial_dims: int = 2
    patch_size: int | Sequence[int] = 4
    merge_strides: Sequence[int | Sequence[int]] = (2, 2, 2)
    embed_dim: int = 96
    depths: Sequence[int] = (2, 2, 2, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    window_size: int | Sequence[int] = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.2
    upsampling: str = "patch_expand"
    num_skips: int = 3
    fused_attention: bool = True
    gradient_checkpointing: bool = False

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> SwinUnetOptions:
        """The options of a keyword dict (a plans entry, a trainer's ``network_options``); an unknown name
        raises UnknownOptionError naming it and its closest valid name, before any value is looked at."""
        unknown = [name for name in options if name not in cls.names()]
        if unknown:
            raise UnknownOptionError("; ".join(unknown_option_message(name) for name in unknown)
                                     + f". SwinUnet's options are: {', '.join(cls.names())}", unknown)
        return cls(**options)

    def __post_init__(self) -> None:
        for name, kind, what in (("spatial_dims", int, "an int"), ("embed_dim", int, "an int"),
                                 ("num_skips", int, "an int"), ("mlp_ratio", (int, float), "a number"),
                                 ("drop_path_rate", (int, float), "a number"), ("upsampling", str, "a string")):
            value = getattr(self, name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise TypeError(f"{name} must be {what}, got {value!r}")
        dims = self.spatial_dims
        if dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {dims!r}")
        merges = self.merge_strides
        if isinstance(merges, (int, str)) or len(merges) != NUM_STAGES - 1:
            raise ValueError(f"merge_strides needs {NUM_STAGES - 1} entries (one per patch merging), got {merges!r}")
        resolved = dict(patch_size=_per_axis(self.patch_size, dims), window_size=_per_axis(self.window_size, dims),
                        merge_strides=tuple(_per_axis(m, dims) for m in merges), depths=tuple(self.depths),
                        num_heads=tuple(self.num_heads))
        for name, value in resolved.items():
            object.__setattr__(self, name, value)
        self._check()

    def _check(self) -> None:
        dims = self.spatial_dims
        for name, value in (("patch_size", self.patch_size), ("window_size", self.window_size),
                            *(("merge_strides", m) for m in self.merge_strides)):
            if len(value) != dims or min(value) < 1:
                raise ValueError(f"{name} needs one positive int per axis ({dims} for a {dims}D network), "
                                 f"got {list(value)}")
        if len(self.depths) != NUM_STAGES or len(self.num_heads) != NUM_STAGES:
            raise ValueError(f"depths and num_heads need {NUM_STAGES} entries (three merging stages and the "
                             f"bottleneck), got {list(self.depths)} and {list(self.num_heads)}")
        if any(d < 1 for d in self.depths):
            raise ValueError(f"every stage needs at least one Swin block, got depths={list(self.depths)}")
        for i, (dim, heads) in enumerate(zip(self.stage_dims, self.num_heads)):
            if dim % heads:
                raise ValueError(f"stage {i} has {dim} channels, not divisible by num_heads[{i}]={heads}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.upsampling not in UPSAMPLING_MODES:
            raise ValueError(f"upsampling must be one of {UPSAMPLING_MODES}, got {self.upsampling!r}")
        if self.num_skips not in range(NUM_STAGES):
            raise ValueError(f"num_skips must be 0, 1, 2 or 3, got {self.num_skips!r}")
        if self.embed_dim % 2:
            raise ValueError(f"embed_dim must be even (PatchExpand halves channels), got {self.embed_dim}")

    def as_dict(self) -> dict[str, Any]:
        """The resolved options as JSON values (lists), e.g. for a plans entry or a log line."""

        def plain(value: Any) -> Any:
            return [plain(v) for v in value] if isinstance(value, tuple) else value

        return {name: plain(getattr(self, name)) for name in self.names()}

    @property
    def stage_strides(self) -> tuple[tuple[int, ...], ...]:
        """Stride of each of the four token scales (the stages), finest first, per axis."""
        strides = [self.patch_size]
        for m in self.merge_strides:
            strides.append(tuple(a * b for a, b in zip(strides[-1], m)))
        return tuple(strides)

    @property
    def size_multiple(self) -> tuple[int, ...]:
        """What every input side must be a multiple of: patch size x the three merge strides, per axis."""
        return self.stage_strides[-1]

    @property
    def output_strides(self) -> tuple[tuple[int, ...], ...]:
        """Stride of each deep-supervision output, highest resolution first: full size, then the three finest
        token scales."""
        return ((1,) * self.spatial_dims, *self.stage_strides[:-1])

    @property
    def stage_windows(self) -> tuple[tuple[int, ...], ...]:
        """The window each stage is built with, per axis (the same for all; at a given input size a stage
        clamps it to its token grid: ``SwinUnet.describe``)."""
        return (self.window_size,) * NUM_STAGES

    @property
    def stage_dims(self) -> tuple[int, ...]:
        """Channels of each stage, finest first."""
        return tuple(self.embed_dim * 2**i for i in range(NUM_STAGES))


def unknown_option_message(name: str) -> str:
    """"unknown SwinUnet option 'x' (did you mean 'y'?)" for a name that is not one of SwinUnet's options."""
    close = difflib.get_close_matches(name, SwinUnetOptions.names(), n=1)
    return f"unknown SwinUnet option {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
