"""How ``nnunet-swin bench`` measures a row: parameters, forward GMACs, activations saved for backward, kernel
launches, timed eager training and inference steps, and ``torch.compile``'s cold compile and steady step; and
``run_bench``, which measures every row in one process on one device, so the ratios are fair."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from nnunet_swin.experiments.bench.rows import Candidate, candidates, nnunet_plan
from nnunet_swin.memory import saved_bytes

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
    saved_total_mb_per_img: float = math.nan  # the same with the parameters that backward holds on to
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
#: relabels a fresh tensor (matmul's reshape), ``new_empty`` only allocates.
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
    if launches and device.type != "meta":  # counting runs a training step: nothing runs on meta
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
              exclude: Iterable[str] | None = None,
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
    rows = candidates(device, in_channels, num_classes, patch, include, compile_on_cpu, exclude, spacing)
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
