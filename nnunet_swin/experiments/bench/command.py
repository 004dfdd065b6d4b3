"""``nnunet-swin bench``: check the arguments, run the rows or the complexity table, print and write them."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import torch

from nnunet_swin.experiments.bench.complexity import complexity_table, format_complexity
from nnunet_swin.experiments.bench.measure import BenchResult, run_bench
from nnunet_swin.experiments.bench.rows import SWIN_DEFAULT_3D, nnunet_plan, swin_plan_options
from nnunet_swin.experiments.bench.tables import COLUMNS_3D, cpu_targets, format_table, format_targets, \
    write_results
from nnunet_swin.experiments.nnunet_files import atomic_write


def bench_command(device: str = "cpu", patch: tuple[int, ...] = (224,), batch: int = 4, in_channels: int = 1,
                  num_classes: int = 9, warmup: int = 2, repeats: int = 6, only: list[str] | None = None,
                  compile_on_cpu: bool = False, threads: int | None = None, out: str | None = None,
                  png: bool = False, complexity: bool = False, skip: list[str] | None = None,
                  spacing: list[float] | None = None) -> int:
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
    with_targets = device == "cpu" and not three_d

    def save(results: list[BenchResult], with_png: bool = False) -> list[str]:
        targets = cpu_targets(results) if with_targets else None
        return write_results(results, out, meta, with_png, targets) if out else []

    results = run_bench(device, size, batch, in_channels, num_classes, warmup, repeats, only, compile_on_cpu,
                        exclude=skip, on_result=save, spacing=spacing)
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
              "backward by one image (act+weights also counts the parameters backward holds); peak = CUDA max "
              "allocated or CPU peak RSS growth; with gradient checkpointing act counts only what the checkpoints "
              "keep; launches = kernel-launching ops of one training step, "
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
