"""Swin's complexity argument measured for one stage: global MSA against W-MSA and SW-MSA, by formula, by
torch's FLOP counter and by the clock."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from nnunet_swin.experiments.bench.measure import _sync
from nnunet_swin.network import SwinBlock


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
