"""Swin-Unet (Cao et al., arXiv 2105.05537) as a size-agnostic 2D and 3D network.

With default options this computes what the official ``SwinTransformerSys`` computes at the sizes the
official code accepts (224 and 448 at window 7, ...), and it also runs at any size whose sides are
multiples of the network's ``size_multiple`` (32 by default): a stage that does not tile into windows is
padded at the end of each axis first and then cyclically shifted on the padded map (the order of Swin's
detection and segmentation code; timm 1.0 rolls before it pads), and the padding tokens are masked out of
attention (timm masks none), so they never change the result of real tokens. With ``spatial_dims=3``
every stride, window and mask is per axis, so nnU-Net's anisotropic 3D plans keep their thick-slice axis
(``strides_from_pooling``).

Speed and memory: tokens are kept channels-last (B, *sizes, C) from the patch embedding to the head
(channels-first at the module boundary only); pad, roll and window partition are one gather each way
(and each other's backward); the per-size geometry is shared by all blocks through one bounded cache; a
LayerNorm or GELU that feeds a Linear is recomputed in backward instead of keeping its output (about a
third less activation memory per block, bit-identical results). Eager steps are launch-bound on a GPU,
so a block keeps its kernel count low (one copy for q, k, v; one addition for scale, bias and mask; one
weight cast under autocast). Under torch.compile the geometry is built in-graph from static sizes: no
graph breaks.

One module per part: ``ops`` (custom autograd functions, window attention), ``geometry`` (windows,
shifts, padding, masks and their cache), ``blocks`` (attention, block, embedding, merging, expanding),
``options`` (``SwinUnetOptions``: the keyword options checked and resolved, and the strides and windows
they give), ``model`` (stages, encoder, decoder built from the encoder, ``SwinUnet``), ``plans`` (sizes
and nnU-Net plans to strides and windows). The package imports torch and timm layers only (never
nnU-Net), so it can be used and tested alone.
"""

from nnunet_swin.network.blocks import (
    UPSAMPLING_MODES,
    BilinearExpand,
    Mlp,
    PatchEmbed,
    PatchExpand,
    PatchMerging,
    SwinBlock,
    TransposedConvExpand,
    WindowAttention,
)
from nnunet_swin.network.geometry import (
    GEOMETRY_CACHE_BYTES,
    NUM_STAGES,
    SHIFT_MASK_VALUE,
    StageGeometry,
    attention_mask,
    build_geometry,
    relative_position_index,
    stage_geometry,
    window_geometry,
    window_order,
    window_partition,
)
from nnunet_swin.network.model import DecoderStage, EncoderStage, SwinDecoder, SwinEncoder, SwinStage, SwinUnet
from nnunet_swin.network.ops import gelu_linear, norm_linear, window_attention
from nnunet_swin.network.options import SwinUnetOptions, UnknownOptionError
from nnunet_swin.network.plans import (
    DEFAULT_3D_OPTIONS,
    fit_window_size,
    nearest_valid_sizes,
    options_for_plan,
    strides_from_pooling,
)

__all__ = [
    "SwinUnet", "SwinUnetOptions", "UnknownOptionError", "UPSAMPLING_MODES", "DEFAULT_3D_OPTIONS",
    "fit_window_size", "nearest_valid_sizes", "options_for_plan", "strides_from_pooling",
    # the parts, for tests, the weight loaders and users building their own variants
    "BilinearExpand", "DecoderStage", "EncoderStage", "Mlp", "PatchEmbed", "PatchExpand", "PatchMerging",
    "SwinBlock", "SwinDecoder", "SwinEncoder", "SwinStage", "TransposedConvExpand", "WindowAttention",
    "GEOMETRY_CACHE_BYTES", "NUM_STAGES", "SHIFT_MASK_VALUE", "StageGeometry", "attention_mask", "build_geometry",
    "relative_position_index", "stage_geometry", "window_geometry", "window_order", "window_partition",
    "gelu_linear", "norm_linear", "window_attention",
]
