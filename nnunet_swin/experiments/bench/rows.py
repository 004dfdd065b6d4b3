"""The rows ``nnunet-swin bench`` compares: SwinUnet variants, nnU-Net's CNN built from the plan nnU-Net would
write for the patch, the official Swin-Unet (``official_swin_unet``) and MONAI's SwinUNETR, as ``Candidate``
builders."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from nnunet_swin.experiments.official_swin_unet import build_official
from nnunet_swin.network import DEFAULT_3D_OPTIONS, SwinUnet, options_for_plan

OFFICIAL_ROW = "Official Swin-Unet (re-implementation)"
SWIN_ROW = "SwinUnet 3 skips"  # the default network, the one the CPU targets are about
CNN_ROW = "nnU-Net PlainConvUNet (DS)"
CNN_ROW_3D = "nnU-Net 3D PlainConvUNet (DS)"
#: The 3D SwinUnet rows: (embed_dim, gradient checkpointing).
SWIN_VARIANTS_3D = ((48, False), (48, True), (96, False), (96, True))
#: The 3D defaults the trainers use (``DEFAULT_3D_OPTIONS``), chosen from benchmarks/README.md's 3D figures.
SWIN_DEFAULT_3D = DEFAULT_3D_OPTIONS


def swin_3d_row(embed_dim: int, gradient_checkpointing: bool) -> str:
    return f"SwinUnet 3D C{embed_dim}" + (" grad checkpointing" if gradient_checkpointing else "")


SWIN_ROW_3D = swin_3d_row(**SWIN_DEFAULT_3D)


@dataclass
class Candidate:
    name: str
    build: Callable[[], nn.Module]
    autocast: torch.dtype | None = None
    compile: bool = False  # also measure torch.compile(model): compile seconds and the compiled step
    reference: bool = False  # the row the others are compared with (nnU-Net's CNN)



def nnunet_plan(patch: Sequence[int], spacing: Sequence[float] | None = None) -> dict:
    """The configuration nnU-Net's default ExperimentPlanner writes for this patch and spacing (isotropic 1 if
    not given), as in plans.json: ``patch_size`` (the planner pads it to its pooling's multiple),
    ``spacing`` and ``architecture`` (PlainConvUNet's class and kwargs: ``get_pool_and_conv_props`` gives the
    per-axis pooling and kernels; 32 features doubling per stage up to 512 in 2D and 320 in 3D, two convs per
    stage, instance norm, LeakyReLU: the planner's constants). 2D and 3D from the number of patch sides."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    dims = len(patch)
    spacing = [float(s) for s in spacing] if spacing is not None else [1.0] * dims
    if dims not in (2, 3) or len(spacing) != dims:
        raise ValueError(f"a plan needs 2 or 3 patch sides and as many spacings, got patch {list(patch)} and "
                         f"spacing {spacing}: give e.g. --patch 40 56 40 --spacing 1 1 1")
    _, strides, kernels, planned, _ = get_pool_and_conv_props(spacing, list(patch), 4, 999999)
    n = len(strides)
    return {"patch_size": [int(p) for p in planned], "spacing": spacing, "architecture": {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": dict(
            n_stages=n, features_per_stage=[min(32 * 2**i, 512 if dims == 2 else 320) for i in range(n)],
            conv_op=f"torch.nn.modules.conv.Conv{dims}d", kernel_sizes=[list(k) for k in kernels],
            strides=[list(s) for s in strides], n_conv_per_stage=[2] * n, n_conv_per_stage_decoder=[2] * (n - 1),
            conv_bias=True, norm_op=f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
            norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None, dropout_op_kwargs=None,
            nonlin="torch.nn.LeakyReLU", nonlin_kwargs={"inplace": True}),
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}


def swin_plan_options(plan: dict) -> dict:
    """The 3D SwinUnet's options that follow from a plan, as the trainers derive them (``options_for_plan``)."""
    return options_for_plan(plan["patch_size"], plan["architecture"]["arch_kwargs"]["strides"])


def nnunet_plain_unet(patch: Sequence[int], in_channels: int, num_classes: int,
                      spacing: Sequence[float] | None = None) -> nn.Module:
    """nnU-Net's default network for this patch (2D or 3D), built the way nnU-Net builds it from a plan:
    :func:`nnunet_plan`'s architecture through ``get_network_from_plans``, deep supervision on."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = nnunet_plan(patch, spacing)["architecture"]
    return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                  in_channels, num_classes, deep_supervision=True)


def candidates(device: str, in_channels: int, num_classes: int, patch: Sequence[int],
               include: Iterable[str] | None = None, compile_on_cpu: bool = False,
               exclude: Iterable[str] | None = None, spacing: Sequence[float] | None = None) -> list[Candidate]:
    """The default comparison. 2D (two patch sides): SwinUnet per skip count and attention path, with
    checkpointing, and on CUDA with bf16 autocast; nnU-Net's CNN; the official Swin-Unet
    (``official_swin_unet``, square patches only); MONAI's SwinUNETR in 2D. 3D (three
    sides): :func:`candidates_3d`. The CNN and the default SwinUnet (and on CUDA their bf16 rows) also measure
    torch.compile: on CUDA always, on the CPU with ``compile_on_cpu``. ``include`` / ``exclude``: keep only /
    drop the rows whose name contains one of these (the CNN row always stays); excluding "compile" keeps the
    rows but measures no compiled step."""
    if len(patch) == 3:
        rows = candidates_3d(device, in_channels, num_classes, patch, spacing)
    else:
        rows = _candidates_2d(device, in_channels, num_classes, (patch[0], patch[-1]))
    if include:
        wanted = [w.lower() for w in include]
        rows = [r for r in rows if r.reference or any(w in r.name.lower() for w in wanted)]
    unwanted = [w.lower() for w in exclude or ()]
    if unwanted:
        rows = [r for r in rows if r.reference or not any(w in r.name.lower() for w in unwanted)]
    if "compile" in unwanted or not (device.startswith("cuda") or compile_on_cpu):
        for r in rows:
            r.compile = False
    return rows


def _candidates_2d(device: str, in_channels: int, num_classes: int, patch: tuple[int, int]) -> list[Candidate]:
    def swin(**kw) -> Callable[[], nn.Module]:
        return lambda: SwinUnet(in_channels, num_classes, **kw)

    def cnn() -> nn.Module:
        return nnunet_plain_unet(patch, in_channels, num_classes)

    rows = [Candidate(CNN_ROW, cnn, compile=True, reference=True)]
    rows += [Candidate(f"SwinUnet {k} skips", swin(num_skips=k), compile=k == 3) for k in (3, 2, 1, 0)]
    rows += [Candidate("SwinUnet explicit attention", swin(fused_attention=False)),
             Candidate("SwinUnet grad checkpointing", swin(gradient_checkpointing=True))]
    if device.startswith("cuda"):
        rows += [Candidate("SwinUnet bf16", swin(), autocast=torch.bfloat16, compile=True),
                 Candidate("nnU-Net PlainConvUNet bf16", cnn, autocast=torch.bfloat16, compile=True)]
    if patch[0] == patch[1]:
        rows.append(Candidate(OFFICIAL_ROW, lambda: build_official(patch[0], in_channels, num_classes).train()))
    rows.append(Candidate("MONAI SwinUNETR 2D fs48", lambda: _monai_swinunetr(in_channels, num_classes, 2)))
    return rows


def candidates_3d(device: str, in_channels: int, num_classes: int, patch: Sequence[int],
                  spacing: Sequence[float] | None = None) -> list[Candidate]:
    """The 3D comparison at nnU-Net's plan for this patch and spacing (:func:`nnunet_plan`): its 3D
    PlainConvUNet; the 3D SwinUnet with :func:`swin_plan_options` of the same plan, at embed_dim 48 and 96,
    each with and without gradient checkpointing (:data:`SWIN_ROW_3D` is the trainers' default); on CUDA the
    default and the CNN under bf16 autocast; MONAI's SwinUNETR (feature size 48) on the patch zero-padded up to
    its multiple of 32 per side (its output cropped back), the padded size in the row's name."""
    plan = nnunet_plan(patch, spacing)
    options = swin_plan_options(plan)

    def swin(**kw) -> Callable[[], nn.Module]:
        return lambda: SwinUnet(in_channels, num_classes, spatial_dims=3, **options, **kw)

    def cnn() -> nn.Module:
        return nnunet_plain_unet(plan["patch_size"], in_channels, num_classes, plan["spacing"])

    rows = [Candidate(CNN_ROW_3D, cnn, compile=True, reference=True)]
    for dim, checkpointing in SWIN_VARIANTS_3D:
        name = swin_3d_row(dim, checkpointing)
        rows.append(Candidate(name, swin(embed_dim=dim, gradient_checkpointing=checkpointing),
                              compile=name == SWIN_ROW_3D))
    if device.startswith("cuda"):
        rows += [Candidate(f"{SWIN_ROW_3D} bf16", swin(**SWIN_DEFAULT_3D), autocast=torch.bfloat16, compile=True),
                 Candidate("nnU-Net 3D PlainConvUNet bf16", cnn, autocast=torch.bfloat16, compile=True)]
    padded = [-(-p // 32) * 32 for p in plan["patch_size"]]
    monai = "MONAI SwinUNETR 3D fs48" + ("" if padded == plan["patch_size"] else
                                          f" (patch padded to {'x'.join(map(str, padded))})")
    rows.append(Candidate(monai, lambda: PadToMultiple(_monai_swinunetr(in_channels, num_classes, 3), 32)))
    return rows


def _monai_swinunetr(in_channels: int, num_classes: int, spatial_dims: int) -> nn.Module:
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(in_channels=in_channels, out_channels=num_classes, feature_size=48, spatial_dims=spatial_dims)


class PadToMultiple(nn.Module):
    """``net`` on its input zero-padded at the end of every spatial axis up to a multiple of ``multiple``,
    its output cropped back: how a network that needs every side divisible by 32 (MONAI's SwinUNETR) takes
    nnU-Net's patch, and what that costs."""

    def __init__(self, net: nn.Module, multiple: int) -> None:
        super().__init__()
        self.net, self.multiple = net, multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = x.shape[2:]
        pad = [n for s in reversed(sizes) for n in (0, -s % self.multiple)]
        out = self.net(nn.functional.pad(x, pad) if any(pad) else x)
        return out[(..., *(slice(0, s) for s in sizes))]
