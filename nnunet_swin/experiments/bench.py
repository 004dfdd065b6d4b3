"""Side-by-side speed and memory of SwinUnet, nnU-Net's default 2D CNN and MONAI's SwinUNETR.

Everything runs in one process on one device so the ratios are fair: the same threads, the same
allocator, the same input. Times are medians over repeats after warm-up (with min and max), CPU
seconds are process time (robust when other processes share the cores), activation memory is the
unique storage saved for backward in one forward of one image, and peak memory is CUDA's max
allocated or, on the CPU, the process's peak RSS since the model's first step.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nnunet_swin.experiments.runner import atomic_write
from nnunet_swin.network import SwinUnet

__all__ = ["BenchResult", "Candidate", "bench_command", "candidates", "complexity_table", "format_table",
           "nnunet_plain_unet", "run_bench", "saved_bytes", "write_results"]


@dataclass
class Candidate:
    name: str
    build: Callable[[], nn.Module]
    autocast: torch.dtype | None = None
    compile: bool = False
    reference: bool = False  # the row the others are compared with (nnU-Net's CNN)


@dataclass
class BenchResult:
    name: str
    params_m: float
    gmacs: float  # forward multiply-adds per image (FLOPs / 2)
    train_ms_per_img: float
    train_ms_min: float
    train_ms_max: float
    train_cpu_s_per_step: float
    infer_ms_per_img: float
    saved_act_mb_per_img: float
    saved_total_mb_per_img: float  # parameters included, as the reference notes count "saved act."
    peak_mb: float
    tflops: float  # achieved fwd+bwd TFLOP/s (3x forward FLOPs)
    rel_time: float = math.nan  # train time / reference train time
    rel_act: float = math.nan
    error: str = ""
    extra: dict = field(default_factory=dict)


def nnunet_plain_unet(patch: tuple[int, int], in_channels: int, num_classes: int) -> nn.Module:
    """nnU-Net's default 2D network for this patch, built the way nnU-Net builds it from a plan: the
    planner's topology function and ``get_network_from_plans`` with the default plan's kwargs."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    _, strides, kernels, _, _ = get_pool_and_conv_props((1.0, 1.0), patch, 4, 999999)
    n = len(strides)
    kwargs = dict(
        n_stages=n, features_per_stage=[min(32 * 2**i, 512) for i in range(n)],
        conv_op="torch.nn.modules.conv.Conv2d", kernel_sizes=[list(k) for k in kernels],
        strides=[list(s) for s in strides], n_conv_per_stage=[2] * n, n_conv_per_stage_decoder=[2] * (n - 1),
        conv_bias=True, norm_op="torch.nn.modules.instancenorm.InstanceNorm2d",
        norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None, dropout_op_kwargs=None,
        nonlin="torch.nn.LeakyReLU", nonlin_kwargs={"inplace": True},
    )
    return get_network_from_plans("dynamic_network_architectures.architectures.unet.PlainConvUNet", kwargs,
                                  ["conv_op", "norm_op", "dropout_op", "nonlin"], in_channels, num_classes,
                                  deep_supervision=True)


def candidates(device: str, in_channels: int, num_classes: int, patch: tuple[int, int],
               include: Iterable[str] | None = None, compile_on_cpu: bool = False,
               exclude: Iterable[str] | None = None) -> list[Candidate]:
    """The default comparison: SwinUnet per skip count and attention path, with checkpointing, and on
    CUDA with bf16 autocast and torch.compile; nnU-Net's CNN; MONAI's SwinUNETR in 2D. ``include`` /
    ``exclude``: keep only / drop the rows whose name contains one of these (the CNN row always stays)."""

    def swin(**kw) -> Callable[[], nn.Module]:
        return lambda: SwinUnet(in_channels, num_classes, **kw)

    rows = [Candidate("nnU-Net PlainConvUNet (DS)", lambda: nnunet_plain_unet(patch, in_channels, num_classes),
                      reference=True)]
    rows += [Candidate(f"SwinUnet {k} skips", swin(num_skips=k)) for k in (3, 2, 1, 0)]
    rows += [Candidate("SwinUnet explicit attention", swin(fused_attention=False)),
             Candidate("SwinUnet grad checkpointing", swin(gradient_checkpointing=True))]
    if device.startswith("cuda"):
        rows += [Candidate("SwinUnet bf16", swin(), autocast=torch.bfloat16),
                 Candidate("SwinUnet bf16 + compile", swin(), autocast=torch.bfloat16, compile=True),
                 Candidate("nnU-Net PlainConvUNet bf16", lambda: nnunet_plain_unet(patch, in_channels, num_classes),
                           autocast=torch.bfloat16)]
    elif compile_on_cpu:
        rows.append(Candidate("SwinUnet compile", swin(), compile=True))
    rows.append(Candidate("MONAI SwinUNETR 2D fs48", lambda: _monai_swinunetr(in_channels, num_classes)))
    if include:
        wanted = [w.lower() for w in include]
        rows = [r for r in rows if r.reference or any(w in r.name.lower() for w in wanted)]
    if exclude:
        unwanted = [w.lower() for w in exclude]
        rows = [r for r in rows if r.reference or not any(w in r.name.lower() for w in unwanted)]
    return rows


def _monai_swinunetr(in_channels: int, num_classes: int) -> nn.Module:
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(in_channels=in_channels, out_channels=num_classes, feature_size=48, spatial_dims=2)


def _loss(out) -> torch.Tensor:
    outs = out if isinstance(out, (list, tuple)) else [out]
    return sum(o.float().mean() for o in outs)


def forward_gmacs(model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2 / 1e9


def saved_bytes(model: nn.Module, x: torch.Tensor, autocast: torch.dtype | None = None) -> tuple[int, int]:
    """Unique storage bytes kept for backward by one forward: activations only, and including the
    parameters that backward also holds on to (how ../shared/reference counts "saved act.")."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), t.device)] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _autocast(x.device, autocast):
        out = model(x)
    del out
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for (ptr, _), n in seen.items() if ptr not in params), sum(seen.values())


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


def bench_one(c: Candidate, device: torch.device, x: torch.Tensor, warmup: int, repeats: int) -> BenchResult:
    torch.manual_seed(0)
    model = c.build().to(device)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    gmacs = forward_gmacs(model, x[:1])
    act, total = (n / 2**20 for n in saved_bytes(model, x[:1], c.autocast))
    run = torch.compile(model) if c.compile else model
    baseline = _reset_peak(device)
    wall, cpu = [], []
    for i in range(warmup + repeats):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        with _autocast(device, c.autocast):
            loss = _loss(run(x))
        loss.backward()
        model.zero_grad(set_to_none=True)
        _sync(device)
        if i >= warmup:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    peak = _peak(device, baseline)
    infer = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            _sync(device)
            t0 = time.perf_counter()
            with _autocast(device, c.autocast):
                run(x)
            _sync(device)
            if i >= warmup:
                infer.append(time.perf_counter() - t0)
    b = x.shape[0]
    step = statistics.median(wall)
    return BenchResult(
        name=c.name, params_m=params, gmacs=gmacs, train_ms_per_img=step / b * 1e3,
        train_ms_min=min(wall) / b * 1e3, train_ms_max=max(wall) / b * 1e3,
        train_cpu_s_per_step=statistics.median(cpu), infer_ms_per_img=statistics.median(infer) / b * 1e3,
        saved_act_mb_per_img=act, saved_total_mb_per_img=total, peak_mb=peak, tflops=3 * 2 * gmacs * b / step / 1e3,
    )


def run_bench(device: str = "cpu", patch: tuple[int, int] = (224, 224), batch: int = 4, in_channels: int = 1,
              num_classes: int = 9, warmup: int = 2, repeats: int = 6, include: Iterable[str] | None = None,
              compile_on_cpu: bool = False, log: Callable[[str], None] = print,
              exclude: Iterable[str] | None = None) -> list[BenchResult]:
    dev = torch.device(device)
    x = torch.randn(batch, in_channels, *patch, device=dev)
    results = []
    rows = candidates(device, in_channels, num_classes, patch, include, compile_on_cpu, exclude)
    for c in rows:
        log(f"  measuring {c.name} ...")
        try:
            results.append(bench_one(c, dev, x, warmup, repeats))
        except Exception as e:  # one failing candidate (e.g. compile) must not lose the others
            results.append(BenchResult(c.name, *([math.nan] * 11), error=f"{type(e).__name__}: {e}"[:300]))
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    ref = next((r for r, c in zip(results, rows) if c.reference), None)
    if ref is not None:
        for r in results:
            r.rel_time = r.train_ms_per_img / ref.train_ms_per_img
            r.rel_act = r.saved_act_mb_per_img / ref.saved_act_mb_per_img
    return results


_COLUMNS = [("name", "model", "{}"), ("params_m", "params M", "{:.2f}"), ("gmacs", "GMACs/img", "{:.2f}"),
            ("train_ms_per_img", "train ms/img", "{:.3g}"), ("train_ms_min", "min", "{:.3g}"),
            ("train_ms_max", "max", "{:.3g}"), ("train_cpu_s_per_step", "CPU s/step", "{:.2f}"),
            ("infer_ms_per_img", "infer ms/img", "{:.3g}"), ("saved_act_mb_per_img", "act MB/img", "{:.0f}"),
            ("saved_total_mb_per_img", "act+weights MB", "{:.0f}"),
            ("peak_mb", "peak MB", "{:.0f}"), ("tflops", "TFLOP/s", "{:.3f}"), ("rel_time", "time vs CNN", "{:.2f}x"),
            ("rel_act", "act vs CNN", "{:.2f}x")]


def format_table(results: list[BenchResult]) -> str:
    """A Markdown table (readable in a terminal too)."""
    head = "| " + " | ".join(h for _, h, _ in _COLUMNS) + " |"
    lines = [head, "|" + "---|" * len(_COLUMNS)]
    for r in results:
        if r.error:
            lines.append(f"| {r.name} | failed: {r.error} |")
            continue
        lines.append("| " + " | ".join(fmt.format(getattr(r, k)) for k, _, fmt in _COLUMNS) + " |")
    return "\n".join(lines)


def write_results(results: list[BenchResult], out_prefix: str, meta: dict, png: bool = False) -> list[str]:
    """``<prefix>.csv``, ``<prefix>.json`` (with the run's settings) and optionally ``<prefix>.png``."""
    rows = [asdict(r) for r in results]
    fields = [k for k in rows[0] if k != "extra"]
    table = io.StringIO()
    writer = csv.DictWriter(table, fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    written = [out_prefix + ".csv", out_prefix + ".json"]
    atomic_write(written[0], table.getvalue())
    atomic_write(written[1], json.dumps({"meta": meta, "results": rows}, indent=1, default=str))
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


def complexity_table(h: int = 56, w: int = 56, dim: int = 96, heads: int = 3, window: int = 7, batch: int = 1,
                     device: str = "cpu", repeats: int = 5) -> list[ComplexityRow]:
    """Swin's complexity argument, measured: Omega(MSA) = 4hwC^2 + 2(hw)^2C against
    Omega(W-MSA) = 4hwC^2 + 2M^2hwC, next to FLOPs counted by torch and timed runs of one Swin block's
    attention at this stage (a global window is a window as large as the stage)."""
    from nnunet_swin.network import SwinBlock

    dev = torch.device(device)
    x = torch.randn(batch, h, w, dim, device=dev)
    rows = []
    for name, win, shifted in (("global MSA", max(h, w), False), ("W-MSA", window, False), ("SW-MSA", window, True)):
        block = SwinBlock(dim, heads, win, shifted).to(dev).eval()
        m = min(win, h) * min(win, w)
        formula = 4 * h * w * dim**2 + 2 * (h * w) * m * dim
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
        rows.append(ComplexityRow(name, formula * batch / 1e9, counter.get_total_flops() / 2 / 1e9,
                                  statistics.median(times) * 1e3))
    return rows


def format_complexity(rows: list[ComplexityRow], h: int, w: int, dim: int, window: int) -> str:
    lines = [f"One stage: {h}x{w} tokens, C={dim}, M={window}",
             "| attention | formula GMACs | counted GMACs | ms |", "|---|---|---|---|"]
    lines += [f"| {r.attention} | {r.formula_gmacs:.3f} | {r.counted_gmacs:.3f} | {r.ms:.1f} |" for r in rows]
    return "\n".join(lines)


def bench_command(device: str = "cpu", patch: tuple[int, ...] = (224,), batch: int = 4, in_channels: int = 1,
                  num_classes: int = 9, warmup: int = 2, repeats: int = 6, only: list[str] | None = None,
                  compile_on_cpu: bool = False, threads: int | None = None, out: str | None = None,
                  png: bool = False, complexity: bool = False, skip: list[str] | None = None) -> int:
    """What ``nnunet-swin bench`` does: print the side-by-side table (or the complexity table) and
    write CSV/JSON (and a PNG) next to ``out``."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda was asked for but torch sees no CUDA device; use --device cpu")
        return 2
    if threads:
        torch.set_num_threads(threads)
    hw = (patch[0], patch[-1])
    meta = dict(device=device, patch=list(hw), batch=batch, threads=torch.get_num_threads(), torch=torch.__version__,
                date=time.strftime("%Y-%m-%d"), card=torch.cuda.get_device_name() if device.startswith("cuda") else
                _cpu_name())
    if complexity:
        h, w = hw[0] // 4, hw[1] // 4
        rows = complexity_table(h, w, device=device, batch=batch)
        print(format_complexity(rows, h, w, 96, 7))
        if out:
            atomic_write(out + "_complexity.json", json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]},
                                                                indent=1))
        return 0
    print(f"nnunet-swin bench: patch {hw[0]}x{hw[1]}, batch {batch}, {device} ({meta['card']}), "
          f"{meta['threads']} threads, fp32 unless marked; median of {repeats} steps after {warmup} warm-up")
    results = run_bench(device, hw, batch, in_channels, num_classes, warmup, repeats, only, compile_on_cpu,
                        exclude=skip)
    print(format_table(results))
    print("train = forward + loss + backward + zero_grad (no optimizer step); act = unique storage saved for "
          "backward by one image (act+weights also counts the parameters backward holds, as the reference "
          "notes do); peak = CUDA max allocated or CPU peak RSS growth; with gradient checkpointing act counts "
          "only what the checkpoints keep.")
    if out:
        for path in write_results(results, out, meta, png):
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
