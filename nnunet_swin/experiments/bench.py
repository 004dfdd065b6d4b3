"""Side-by-side speed and memory of SwinUnet, nnU-Net's default 2D CNN, the official Swin-Unet and MONAI's
SwinUNETR; with a 3D patch, of the 3D SwinUnet, nnU-Net's 3D CNN and MONAI's 3D SwinUNETR at nnU-Net's plan.

Everything runs in one process on one device so the ratios are fair: the same threads, the same
allocator, the same input. Times are medians over repeats after warm-up (with min and max), CPU
seconds are process time (robust when other processes share the cores), activation memory is the
unique storage saved for backward in one forward of one image, and peak memory is CUDA's max
allocated or, on the CPU, the process's peak RSS since the model's first step. Kernel launches are
the operations one steady training step sends to the device (``count_kernel_launches``); with
compile on, a row also gets ``torch.compile(model)``'s cold compile time and its steady step time.
In 3D no launches are counted and no inference is timed; ``repeats`` 0 or the meta device measure parameters,
GMACs and saved activations only (the large 3D plans take minutes a step on a CPU).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from nnunet_swin.experiments.runner import atomic_write
from nnunet_swin.memory import saved_bytes
from nnunet_swin.network import DEFAULT_3D_OPTIONS, SwinBlock, SwinUnet, options_for_plan

__all__ = ["COLUMNS_3D", "BenchResult", "Candidate", "PadToMultiple", "Target", "bench_command", "candidates",
           "candidates_3d", "complexity_table", "count_kernel_launches", "cpu_targets", "format_table",
           "nnunet_plain_unet", "nnunet_plan", "run_bench", "swin_plan_options", "write_results"]

# The official architecture, re-implemented from the paper as the tests' oracle. It lives in the
# repository's tests (not in the installed package), so its bench row exists only in a checkout.
_CHECKOUT = Path(__file__).resolve().parents[2]
OFFICIAL_REFERENCE = (_CHECKOUT / "tests" / "official_reference.py" if (_CHECKOUT / "pyproject.toml").is_file()
                      else None)
OFFICIAL_ROW = "Official Swin-Unet (tests/official_reference.py)"
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


@dataclass
class BenchResult:
    name: str
    params_m: float
    gmacs: float  # forward multiply-adds per image (FLOPs / 2)
    train_ms_per_img: float = math.nan  # NaN: not measured
    train_ms_min: float = math.nan
    train_ms_max: float = math.nan
    train_cpu_s_per_step: float = math.nan
    infer_ms_per_img: float = math.nan
    saved_act_mb_per_img: float = math.nan
    saved_total_mb_per_img: float = math.nan  # parameters included, as the reference notes count "saved act."
    peak_mb: float = math.nan
    tflops: float = math.nan  # achieved fwd+bwd TFLOP/s (3x forward FLOPs)
    rel_time: float = math.nan  # train time / reference train time
    rel_act: float = math.nan
    launches_fp32: float = math.nan  # kernel-launching ops per training step (count_kernel_launches)
    launches_bf16: float = math.nan  # the same under bf16 autocast
    compile_s: float = math.nan  # first torch.compile'd training step minus a steady compiled step
    compiled_ms_per_img: float = math.nan  # steady torch.compile'd training step
    compiled_peak_mb: float = math.nan
    saved_act_gb_per_batch: float = math.nan  # saved_act_mb_per_img times the batch
    train_s_per_step: float = math.nan  # median wall seconds of one training step of the whole batch
    error: str = ""
    extra: dict = field(default_factory=dict)


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
               exclude: Iterable[str] | None = None, official: str | Path | None = OFFICIAL_REFERENCE,
               spacing: Sequence[float] | None = None) -> list[Candidate]:
    """The default comparison. 2D (two patch sides): SwinUnet per skip count and attention path, with
    checkpointing, and on CUDA with bf16 autocast; nnU-Net's CNN; the official Swin-Unet (when ``official``,
    the reference implementation's file, exists and the patch is square); MONAI's SwinUNETR in 2D. 3D (three
    sides): :func:`candidates_3d`. The CNN and the default SwinUnet (and on CUDA their bf16 rows) also measure
    torch.compile: on CUDA always, on the CPU with ``compile_on_cpu``. ``include`` / ``exclude``: keep only /
    drop the rows whose name contains one of these (the CNN row always stays); excluding "compile" keeps the
    rows but measures no compiled step."""
    if len(patch) == 3:
        rows = candidates_3d(device, in_channels, num_classes, patch, spacing)
    else:
        rows = _candidates_2d(device, in_channels, num_classes, (patch[0], patch[-1]), official)
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


def _candidates_2d(device: str, in_channels: int, num_classes: int, patch: tuple[int, int],
                   official: str | Path | None) -> list[Candidate]:
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
    if official is not None and Path(official).is_file() and patch[0] == patch[1]:
        rows.append(Candidate(OFFICIAL_ROW, _official_builder(Path(official), patch[0], in_channels, num_classes)))
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


def _official_builder(path: Path, size: int, in_channels: int, num_classes: int) -> Callable[[], nn.Module]:
    """``build_official`` of the reference implementation at ``path``, in training mode."""

    def build() -> nn.Module:
        spec = importlib.util.spec_from_file_location("nnunet_swin_official_reference", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.build_official(size, in_channels, num_classes).train()

    return build


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


def _loss(out) -> torch.Tensor:
    """The output's mean, or the sum of the means of deep supervision's outputs (no ``0 +`` op)."""
    outs = out if isinstance(out, (list, tuple)) else [out]
    loss = outs[0].float().mean()
    for o in outs[1:]:
        loss = loss + o.float().mean()
    return loss


def _train_step(model: nn.Module, run: Callable, x: torch.Tensor, autocast: torch.dtype | None) -> None:
    """What the bench times as a training step: forward (autocast), loss, backward, zero_grad."""
    with _autocast(x.device, autocast):
        out = run(x)
    _loss(out).backward()
    model.zero_grad(set_to_none=True)


#: Operators that reach dispatch but launch no kernel although their schema is not a view: ``_unsafe_view``
#: relabels a fresh tensor (matmul's reshape), ``new_empty`` only allocates. With these skipped, the
#: unchanged network of issue 10 counts exactly the 1017 / 1490 it quotes.
_NO_KERNEL = (torch.ops.aten._unsafe_view, torch.ops.aten.new_empty)


class _LaunchCounter(TorchDispatchMode):
    """Counts the operations that reach the dispatcher below autograd and autocast, i.e. the ones that run
    a kernel, except aliasing views (``func.is_view``: a view, transpose, expand launches nothing) and
    :data:`_NO_KERNEL`."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func.overloadpacket not in _NO_KERNEL:
            self.count += 1
        return func(*args, **(kwargs or {}))


def count_kernel_launches(model: nn.Module, x: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> int:
    """Kernel-launching operations in one steady training step of ``model`` on ``x``: forward (under
    ``autocast_dtype`` autocast if given), loss = mean of the output (summed over deep supervision's
    outputs), backward; aliasing views not counted. Eager CUDA at small sizes is bound by these launches.
    One uncounted step runs first, so lazily built caches and the first gradient allocation are not part
    of the count; gradients are reset to None before and after, as a training loop's zero_grad does."""
    model.train()
    _train_step(model, model, x, autocast_dtype)
    with _LaunchCounter() as counter:
        with _autocast(x.device, autocast_dtype):
            out = model(x)
        _loss(out).backward()
    model.zero_grad(set_to_none=True)
    return counter.count


def forward_gmacs(model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2 / 1e9


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _reset_peak(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    try:  # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _rss_mb("VmRSS")


def _peak(device: torch.device, baseline: float) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20 - baseline
    return _rss_mb("VmHWM") - baseline


def _rss_mb(field_name: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed_steps(model: nn.Module, run: Callable, x: torch.Tensor, autocast: torch.dtype | None,
                 steps: int) -> tuple[list[float], list[float]]:
    """Wall and process seconds of ``steps`` training steps."""
    wall, cpu = [], []
    for _ in range(steps):
        _sync(x.device)
        t0, c0 = time.perf_counter(), time.process_time()
        _train_step(model, run, x, autocast)
        _sync(x.device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def fresh_inductor_cache():
    """Inductor's context manager for a cold compile: ``fresh_cache``, or ``fresh_inductor_cache`` in the older
    torch releases the package supports, before it was renamed."""
    from torch._inductor import utils

    return (getattr(utils, "fresh_cache", None) or utils.fresh_inductor_cache)()


def compiled_step(model: nn.Module, x: torch.Tensor, autocast: torch.dtype | None, warmup: int,
                  repeats: int) -> tuple[float, float, float]:
    """``torch.compile(model)`` as nnU-Net calls it (inductor, graphs may break), compiled cold (a fresh
    inductor cache, dynamo reset): (compile seconds = first step minus the steady step, steady seconds per
    step = median of ``repeats`` after ``warmup`` more, peak memory MB of the steady steps)."""
    torch._dynamo.reset()
    run = torch.compile(model)
    with fresh_inductor_cache():
        first, _ = _timed_steps(model, run, x, autocast, 1)
        _timed_steps(model, run, x, autocast, warmup)
        baseline = _reset_peak(x.device)
        wall, _ = _timed_steps(model, run, x, autocast, repeats)
        peak = _peak(x.device, baseline)
    torch._dynamo.reset()
    step = statistics.median(wall)
    return first[0] - step, step, peak


def bench_eager(c: Candidate, device: torch.device, x: torch.Tensor, warmup: int, repeats: int,
                launches: bool = True, inference: bool = True) -> tuple[BenchResult, nn.Module]:
    """A row's eager figures, and its model (for the compiled measurement). ``launches`` / ``inference``:
    count the kernel launches / time inference too. With ``repeats`` 0, or on the meta device (shapes only,
    nothing runs), no step is timed: parameters, GMACs and saved activations only."""
    torch.manual_seed(0)
    model = c.build().to(device).train()
    b, one = x.shape[0], x[:1].clone()  # a view x[:1] would count the whole batch's input as saved
    gmacs = forward_gmacs(model, one)
    act, total = (n / 2**20 for n in saved_bytes(model, one, c.autocast))
    result = BenchResult(name=c.name, params_m=sum(p.numel() for p in model.parameters()) / 1e6, gmacs=gmacs,
                         saved_act_mb_per_img=act, saved_total_mb_per_img=total,
                         saved_act_gb_per_batch=act * b / 1024)
    if launches:
        result.launches_fp32, result.launches_bf16 = (count_kernel_launches(model, one, dtype)
                                                      for dtype in (None, torch.bfloat16))
    if not repeats or device.type == "meta":
        return result, model
    baseline = _reset_peak(device)
    _timed_steps(model, model, x, c.autocast, warmup)
    wall, cpu = _timed_steps(model, model, x, c.autocast, repeats)
    result.peak_mb = _peak(device, baseline)
    step = statistics.median(wall)
    result.train_s_per_step, result.train_ms_per_img = step, step / b * 1e3
    result.train_ms_min, result.train_ms_max = min(wall) / b * 1e3, max(wall) / b * 1e3
    result.train_cpu_s_per_step, result.tflops = statistics.median(cpu), 3 * 2 * gmacs * b / step / 1e3
    if inference:
        infer = []
        with torch.no_grad():
            for i in range(warmup + repeats):
                _sync(device)
                t0 = time.perf_counter()
                with _autocast(device, c.autocast):
                    model(x)
                _sync(device)
                if i >= warmup:
                    infer.append(time.perf_counter() - t0)
        result.infer_ms_per_img = statistics.median(infer) / b * 1e3
    return result, model


def add_compiled(result: BenchResult, model: nn.Module, c: Candidate, x: torch.Tensor, warmup: int,
                 repeats: int) -> None:
    """The compiled columns of a row; a failing compile is recorded in ``error``, the eager figures stay."""
    try:
        compile_s, step, result.compiled_peak_mb = compiled_step(model, x, c.autocast, warmup, repeats)
        result.compile_s, result.compiled_ms_per_img = compile_s, step / x.shape[0] * 1e3
    except Exception as e:
        result.error = f"torch.compile: {type(e).__name__}: {e}"[:300]


def bench_one(c: Candidate, device: torch.device, x: torch.Tensor, warmup: int, repeats: int) -> BenchResult:
    """One row: eager, and compiled if the candidate asks for it."""
    result, model = bench_eager(c, device, x, warmup, repeats)
    if c.compile:
        add_compiled(result, model, c, x, warmup, repeats)
    return result


def run_bench(device: str = "cpu", patch: Sequence[int] = (224, 224), batch: int = 4, in_channels: int = 1,
              num_classes: int = 9, warmup: int = 2, repeats: int = 6, include: Iterable[str] | None = None,
              compile_on_cpu: bool = False, log: Callable[[str], None] = print,
              exclude: Iterable[str] | None = None, official: str | Path | None = OFFICIAL_REFERENCE,
              on_result: Callable[[list[BenchResult]], None] | None = None,
              spacing: Sequence[float] | None = None) -> list[BenchResult]:
    """Every candidate row eager, then the compiled measurements (the nnU-Net CNN's last: its compile does
    not depend on this package). ``on_result`` gets the results so far after each measurement (to write
    them, so a run cut short by a time limit still leaves what it finished). A 3D ``patch`` runs at nnU-Net's
    plan for it and ``spacing`` (the patch padded to the plan's multiple, if it is not one) and counts no
    kernel launches and times no inference; ``repeats`` 0 or the meta device: no timed steps (see
    :func:`bench_eager`)."""
    dev = torch.device(device)
    three_d = len(patch) == 3
    if three_d:
        patch = nnunet_plan(patch, spacing)["patch_size"]
    x = torch.randn(batch, in_channels, *patch, device=dev)
    results: list[BenchResult] = []
    rows = candidates(device, in_channels, num_classes, patch, include, compile_on_cpu, exclude, official, spacing)
    models: dict[int, nn.Module] = {}
    ref = None
    for i, c in enumerate(rows):
        log(f"  measuring {c.name} ...")
        try:
            r, model = bench_eager(c, dev, x, warmup, repeats, launches=not three_d, inference=not three_d)
            if c.compile and repeats and dev.type != "meta":
                models[i] = model
        except Exception as e:  # one failing candidate must not lose the others
            r = BenchResult(c.name, math.nan, math.nan, error=f"{type(e).__name__}: {e}"[:300])
        if c.reference:
            ref = r
        if ref is not None:
            r.rel_time = r.train_ms_per_img / ref.train_ms_per_img
            r.rel_act = r.saved_act_mb_per_img / ref.saved_act_mb_per_img
        results.append(r)
        _report(results, on_result, dev)
    for i in sorted(models, key=lambda i: rows[i].reference):
        log(f"  compiling {rows[i].name} ...")
        add_compiled(results[i], models.pop(i), rows[i], x, warmup, repeats)
        _report(results, on_result, dev)
    return results


def _report(results: list[BenchResult], on_result: Callable[[list[BenchResult]], None] | None,
            device: torch.device) -> None:
    if on_result is not None:
        on_result(results)
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class Target:
    what: str
    value: float  # the measured ratio
    bound: str  # "<= 0.60", ">= 1.3"
    met: bool | None  # None: a row it needs was not measured


def cpu_targets(results: list[BenchResult]) -> list[Target]:
    """Issue 10's CPU targets for the default SwinUnet's eager training step: at most 0.60x nnU-Net's CNN,
    and at least 1.3x faster than the official-equivalent network, from this run's rows; each on the
    median wall time and on the median process (CPU) seconds, which other jobs on the cores disturb less."""
    targets = []
    for field_name, unit in (("train_ms_per_img", "wall"), ("train_cpu_s_per_step", "CPU s")):
        t = {r.name: getattr(r, field_name) for r in results}
        swin, cnn, official = (t.get(name, math.nan) for name in (SWIN_ROW, CNN_ROW, OFFICIAL_ROW))
        checks = [(f"{SWIN_ROW} / {CNN_ROW} train step ({unit})", swin / cnn, 0.60, False),
                  (f"{OFFICIAL_ROW} / {SWIN_ROW} train step ({unit})", official / swin, 1.3, True)]
        targets += [Target(what, ratio, f"{'>=' if at_least else '<='} {bound}",
                           None if math.isnan(ratio) else (ratio >= bound if at_least else ratio <= bound))
                    for what, ratio, bound, at_least in checks]
    return targets


def format_targets(targets: list[Target]) -> str:
    word = {True: "met", False: "NOT met", None: "not measured (row missing)"}
    return "\n".join(f"target: {t.what} = {t.value:.2f}x, wanted {t.bound}x: {word[t.met]}" for t in targets)


_COLUMNS = [("name", "model", "{}"), ("params_m", "params M", "{:.2f}"), ("gmacs", "GMACs/img", "{:.2f}"),
            ("train_ms_per_img", "train ms/img", "{:.3g}"), ("train_ms_min", "min", "{:.3g}"),
            ("train_ms_max", "max", "{:.3g}"), ("train_cpu_s_per_step", "CPU s/step", "{:.2f}"),
            ("infer_ms_per_img", "infer ms/img", "{:.3g}"), ("saved_act_mb_per_img", "act MB/img", "{:.0f}"),
            ("saved_total_mb_per_img", "act+weights MB", "{:.0f}"),
            ("peak_mb", "peak MB", "{:.0f}"), ("tflops", "TFLOP/s", "{:.3f}"), ("rel_time", "time vs CNN", "{:.2f}x"),
            ("rel_act", "act vs CNN", "{:.2f}x"), ("launches_fp32", "launches fp32", "{:.0f}"),
            ("launches_bf16", "launches bf16", "{:.0f}"), ("compile_s", "compile s", "{:.1f}"),
            ("compiled_ms_per_img", "compiled ms/img", "{:.3g}"), ("compiled_peak_mb", "compiled peak MB", "{:.0f}")]


#: 3D: per step of the whole batch (a 3D batch is a few large patches), no launches or inference.
COLUMNS_3D = [("name", "model", "{}"), ("params_m", "params M", "{:.2f}"), ("gmacs", "GMACs/img", "{:.1f}"),
              ("saved_act_mb_per_img", "act MB/img", "{:.0f}"), ("saved_act_gb_per_batch", "act GB/batch", "{:.2f}"),
              ("rel_act", "act vs CNN", "{:.2f}x"), ("train_s_per_step", "train s/step", "{:.3g}"),
              ("train_cpu_s_per_step", "CPU s/step", "{:.3g}"), ("peak_mb", "peak MB", "{:.0f}"),
              ("rel_time", "time vs CNN", "{:.2f}x"), ("compile_s", "compile s", "{:.1f}"),
              ("compiled_ms_per_img", "compiled ms/img", "{:.3g}")]


def format_table(results: list[BenchResult], columns: list[tuple[str, str, str]] = _COLUMNS) -> str:
    """A Markdown table (readable in a terminal too); "-" where a figure was not measured (no compile, no
    timed steps)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    lines = [head, "|" + "---|" * len(columns)]
    for r in results:
        if math.isnan(r.params_m):
            lines.append(f"| {r.name} | failed: {r.error} |")
            continue
        cells = ["-" if isinstance(v, float) and math.isnan(v) else fmt.format(v)
                 for v, fmt in ((getattr(r, k), fmt) for k, _, fmt in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"{r.name}: {r.error}" for r in results if r.error and not math.isnan(r.params_m)]
    return "\n".join(lines)


def write_results(results: list[BenchResult], out_prefix: str, meta: dict, png: bool = False,
                  targets: list[Target] | None = None) -> list[str]:
    """``<prefix>.csv``, ``<prefix>.json`` (with the run's settings and targets) and optionally
    ``<prefix>.png``."""
    rows = [asdict(r) for r in results]
    fields = [k for k in rows[0] if k != "extra"]
    table = io.StringIO()
    writer = csv.DictWriter(table, fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    written = [out_prefix + ".csv", out_prefix + ".json"]
    atomic_write(written[0], table.getvalue())
    summary = {"meta": meta, "results": rows, "targets": [asdict(t) for t in targets or []]}
    atomic_write(written[1], json.dumps(summary, indent=1, default=str))
    if png:
        written.append(_bar_chart(results, out_prefix + ".png"))
    return written


def _bar_chart(results: list[BenchResult], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if not r.error]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(ok) + 1.5))
    for ax, key, label in zip(axes, ("train_ms_per_img", "saved_act_mb_per_img"),
                              ("training ms per image", "activation MB per image")):
        ax.barh([r.name for r in ok], [getattr(r, key) for r in ok], color="tab:blue")
        ax.invert_yaxis()
        ax.set_xlabel(label)
    axes[1].set_yticklabels([])
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
    return path


# ----------------------------------------------------------------------------------------------------
# global MSA against (S)W-MSA for one stage


@dataclass
class ComplexityRow:
    attention: str
    formula_gmacs: float
    counted_gmacs: float
    ms: float


def complexity_table(size: Sequence[int] = (56, 56), dim: int = 96, heads: int = 3, window: int | Sequence[int] = 7,
                     batch: int = 1, device: str = "cpu", repeats: int = 5,
                     max_global_tokens: int = 8192) -> list[ComplexityRow]:
    """Swin's complexity argument, measured, at a stage of ``size`` tokens (2D or 3D; ``window`` per axis):
    Omega(MSA) = 4NC^2 + 2N^2C against Omega(W-MSA) = 4N'C^2 + 2MN'C (N tokens, N' of them after padding
    to whole windows, M tokens per window), next to FLOPs counted by torch and timed runs of one Swin block's
    attention (a global window is one as large as the stage). Global attention over more than
    ``max_global_tokens`` tokens (a 3D stage: its N x N relative-position index and scores take gigabytes) is
    only given by the formula (NaN counted and time)."""
    dev = torch.device(device)
    sizes = tuple(size)
    windows = (window,) * len(sizes) if isinstance(window, int) else tuple(window)
    x = torch.randn(batch, *sizes, dim, device=dev)
    rows = []
    for name, win, shifted in (("global MSA", sizes, False), ("W-MSA", windows, False), ("SW-MSA", windows, True)):
        clamped = [min(w, s) for w, s in zip(win, sizes)]
        padded = math.prod(-(-s // w) * w for s, w in zip(sizes, clamped))
        formula = (4 * padded * dim**2 + 2 * padded * math.prod(clamped) * dim) * batch / 1e9
        if name == "global MSA" and math.prod(sizes) > max_global_tokens:
            rows.append(ComplexityRow(name, formula, math.nan, math.nan))
            continue
        block = SwinBlock(dim, heads, win, shifted).to(dev).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            block._attend(x)
        with torch.no_grad():
            block._attend(x)  # warm-up and mask cache
            times = []
            for _ in range(repeats):
                _sync(dev)
                t0 = time.perf_counter()
                block._attend(x)
                _sync(dev)
                times.append(time.perf_counter() - t0)
        rows.append(ComplexityRow(name, formula, counter.get_total_flops() / 2 / 1e9, statistics.median(times) * 1e3))
    return rows


def format_complexity(rows: list[ComplexityRow], size: Sequence[int], dim: int, window: Sequence[int]) -> str:
    lines = [f"One stage: {'x'.join(map(str, size))} tokens, C={dim}, M={'x'.join(map(str, window))}",
             "| attention | formula GMACs | counted GMACs | ms |", "|---|---|---|---|"]
    lines += [f"| {r.attention} | {r.formula_gmacs:.3f} | " + ("too large to run (formula only) | - |"
              if math.isnan(r.ms) else f"{r.counted_gmacs:.3f} | {r.ms:.1f} |") for r in rows]
    return "\n".join(lines)


def bench_command(device: str = "cpu", patch: tuple[int, ...] = (224,), batch: int = 4, in_channels: int = 1,
                  num_classes: int = 9, warmup: int = 2, repeats: int = 6, only: list[str] | None = None,
                  compile_on_cpu: bool = False, threads: int | None = None, out: str | None = None,
                  png: bool = False, complexity: bool = False, skip: list[str] | None = None,
                  official: str | None = None, spacing: list[float] | None = None) -> int:
    """What ``nnunet-swin bench`` does: print the side-by-side table (or the complexity table), on the CPU
    in 2D the targets, and write CSV/JSON (and a PNG) next to ``out``, the CSV/JSON after every row. Three
    patch sides: the 3D comparison at nnU-Net's plan for the patch and ``spacing``."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda was asked for but torch sees no CUDA device; use --device cpu")
        return 2
    three_d = len(patch) == 3
    if len(patch) > 3 or (spacing is not None and not three_d):
        print(f"error: --patch {' '.join(map(str, patch))}" + (f" --spacing {' '.join(map(str, spacing))}"
                                                                if spacing is not None else "") +
              ": give one or two patch sides for 2D (no spacing), or three for 3D with an optional spacing of "
              "three values, e.g. --patch 20 320 256 --spacing 3.6 0.62 0.62")
        return 2
    if threads:
        torch.set_num_threads(threads)
    size = [patch[0], patch[-1]]
    meta = dict(device=device, patch=size, batch=batch, threads=torch.get_num_threads(), torch=torch.__version__,
                date=time.strftime("%Y-%m-%d"), card=torch.cuda.get_device_name() if device.startswith("cuda") else
                _cpu_name())
    if three_d:
        try:
            plan = nnunet_plan(patch, spacing)
        except ValueError as e:
            print(f"error: {e}")
            return 2
        size = plan["patch_size"]
        meta.update(patch=size, requested_patch=list(patch), spacing=plan["spacing"],
                    pool_op_kernel_sizes=plan["architecture"]["arch_kwargs"]["strides"])
    if complexity:  # the first stage: 2D the paper's (C 96, window 7), 3D the default 3D SwinUnet's
        dim, window, stride = 96, (7, 7), (4, 4)
        if three_d:
            options = swin_plan_options(plan)
            dim, window, stride = SWIN_DEFAULT_3D["embed_dim"], options["window_size"], options["patch_size"]
        grid = [s // st for s, st in zip(size, stride)]
        rows = complexity_table(grid, dim, window=window, device=device, batch=batch)
        print(format_complexity(rows, grid, dim, window))
        if out:
            atomic_write(out + "_complexity.json", json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]},
                                                                indent=1))
        return 0
    timed = repeats > 0 and device != "meta"
    if three_d:
        asked = "" if size == list(patch) else f" (asked {'x'.join(map(str, patch))}, padded to the plan's multiple)"
        print(f"nnunet-swin bench 3D: patch {'x'.join(map(str, size))}{asked}, nnU-Net's plan at spacing "
              f"{meta['spacing']} pools {meta['pool_op_kernel_sizes'][1:]}; batch {batch}, {device} ({meta['card']}), "
              f"{meta['threads']} threads, fp32 unless marked; " +
              (f"median of {repeats} steps after {warmup} warm-up" if timed else
               "no timed steps: parameters, GMACs and saved activations only"))
    else:
        print(f"nnunet-swin bench: patch {size[0]}x{size[1]}, batch {batch}, {device} ({meta['card']}), "
              f"{meta['threads']} threads, fp32 unless marked; median of {repeats} steps after {warmup} warm-up")
    if official is not None and not Path(official).is_file():
        print(f"error: --official {official}: no such file; give the path of tests/official_reference.py "
              "in a checkout of nnunet_swin")
        return 2
    with_targets = device == "cpu" and not three_d

    def save(results: list[BenchResult], with_png: bool = False) -> list[str]:
        targets = cpu_targets(results) if with_targets else None
        return write_results(results, out, meta, with_png, targets) if out else []

    results = run_bench(device, size, batch, in_channels, num_classes, warmup, repeats, only, compile_on_cpu,
                        exclude=skip, official=official or OFFICIAL_REFERENCE, on_result=save, spacing=spacing)
    if three_d:
        print(format_table(results, COLUMNS_3D))
        print("act = unique storage saved for backward by one forward of one patch (with gradient checkpointing "
              "only what the checkpoints keep), act GB/batch = that times the batch; GMACs = forward "
              "multiply-adds per patch (torch's FLOP counter); train = forward + loss + backward + zero_grad of "
              "the whole batch (no optimizer step); peak = CUDA max allocated or CPU peak RSS growth; MONAI's "
              "row runs on the patch zero-padded to multiples of 32 and is charged for it.")
    else:
        print(format_table(results))
        print("train = forward + loss + backward + zero_grad (no optimizer step); act = unique storage saved for "
              "backward by one image (act+weights also counts the parameters backward holds, as the reference "
              "notes do); peak = CUDA max allocated or CPU peak RSS growth; with gradient checkpointing act "
              "counts only what the checkpoints keep; launches = kernel-launching ops of one training step, "
              "aliasing views not counted (count_kernel_launches); compile s = first torch.compile'd step minus "
              "a steady one, cold cache.")
    if with_targets:
        print(format_targets(cpu_targets(results)))
    if out:
        for path in save(results, png):
            print(f"wrote {path}")
    return 0 if not any(r.error for r in results) else 1


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"
