"""nnunet-swin bench: the side-by-side table, its files, and the complexity argument measured."""

import csv
import json
import os

import math

import pytest
import torch
from torch import nn

from nnunet_swin.cli import main
from nnunet_swin.experiments.bench import (CNN_ROW, CNN_ROW_3D, OFFICIAL_ROW, SWIN_ROW, SWIN_ROW_3D, BenchResult,
                                           Candidate, PadToMultiple, bench_one, candidates, complexity_table,
                                           count_kernel_launches, cpu_targets, forward_gmacs, format_table,
                                           nnunet_plain_unet, nnunet_plan, run_bench,
                                           swin_plan_options)
from nnunet_swin import SwinUnet


class _Tiny(nn.Module):
    """Two outputs, like deep supervision: an elementwise branch with a view and a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return [(x * self.w).relu().transpose(0, 1), self.lin(x)]


def test_kernel_launches_of_a_tiny_model_counted_by_hand():
    """fp32: forward mul, relu, addmm (transpose and Linear's weight.t() are views: not counted); loss two
    means and their add; backward ones_like (the seed), two divs (mean), threshold_backward (relu), mul and
    sum (w's broadcast gradient), mm (weight) and sum (bias): 3 + 3 + 8 = 14. bf16 autocast adds 7 casts:
    x, weight, bias to bf16, the Linear output's .float(), and in backward the output gradient to bf16 and
    the weight and bias gradients back to fp32. A cache built by the first call is not counted."""
    model, x = _Tiny(), torch.randn(4, 3)
    assert count_kernel_launches(model, x) == 14
    assert count_kernel_launches(model, x, torch.bfloat16) == 21
    assert all(p.grad is None for p in model.parameters())

    class Cached(_Tiny):
        cache = None

        def forward(self, x):
            if self.cache is None:
                self.cache = torch.zeros(3) + 1  # two ops, once
            return super().forward(x * self.cache)

    assert count_kernel_launches(Cached(), x) == 15  # + the multiplication by the cache


def test_cpu_targets_met_and_not_met():
    """Wall time and CPU seconds each: the SwinUnet <= 0.60x the CNN, the official >= 1.3x the SwinUnet."""
    def row(name, ms, cpu_s):
        return BenchResult(name, 1.0, 1.0, ms, 1.0, 1.0, cpu_s, *([1.0] * 5))

    met = cpu_targets([row(CNN_ROW, 100, 10), row(SWIN_ROW, 60, 6), row(OFFICIAL_ROW, 78, 7.8)])
    assert [t.met for t in met] == [True, True, True, True] and met[0].value == pytest.approx(0.6)
    missed = cpu_targets([row(CNN_ROW, 100, 10), row(SWIN_ROW, 61, 5), row(OFFICIAL_ROW, 79, 6)])
    assert [t.met for t in missed] == [False, False, True, False]
    assert "(CPU s)" in missed[2].what and missed[3].value == pytest.approx(1.2)
    no_official = cpu_targets([row(CNN_ROW, 100, 10), row(SWIN_ROW, 50, 5)])
    assert no_official[1].met is None and math.isnan(no_official[1].value)


def test_compile_columns_on_a_tiny_model():
    """torch.compile with inductor, cold cache: compile seconds and the compiled step next to eager (a Linear:
    its matmuls are library calls, so inductor compiles no C++ and the test stays fast)."""
    tiny = Candidate("tiny", lambda: nn.Linear(8, 4), compile=True)
    r = bench_one(tiny, torch.device("cpu"), torch.randn(2, 8), warmup=1, repeats=2)
    assert not r.error and r.compile_s > 0.1 and r.compiled_ms_per_img > 0  # tracing alone takes that long
    # addmm, mean; backward ones_like, div, mm (weight), sum (bias)
    assert r.launches_fp32 == count_kernel_launches(nn.Linear(8, 4), torch.randn(1, 8)) == 6
    assert "compile s" in format_table([r]) and f"{r.compile_s:.1f}" in format_table([r])


def test_nnunet_cnn_is_built_from_the_default_2d_plan():
    model = nnunet_plain_unet((224, 224), 1, 9)
    # nnU-Net's plan for 224: 6 stages, 32..512 features, deep supervision on
    assert len(model.encoder.stages) == 6 and model.decoder.deep_supervision
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(20.63e6, rel=0.01)


def test_bench_rows_and_ratios():
    results = run_bench("cpu", (64, 64), batch=1, warmup=0, repeats=1, include=["3 skips", "0 skips"],
                        log=lambda s: None)
    names = [r.name for r in results]
    assert names == ["nnU-Net PlainConvUNet (DS)", "SwinUnet 3 skips", "SwinUnet 0 skips"]
    assert not any(r.error for r in results)
    cnn, swin3, swin0 = results
    assert cnn.rel_time == 1.0 and swin3.rel_time == pytest.approx(swin3.train_ms_per_img / cnn.train_ms_per_img)
    assert swin3.params_m == pytest.approx(27.171876)  # 1 input channel, with the 3 DS heads and swin0.params_m < swin3.params_m
    assert 0 < swin0.gmacs < swin3.gmacs
    assert swin3.saved_total_mb_per_img > swin3.saved_act_mb_per_img > 0


def test_rows_can_be_chosen_and_left_out():
    """--only keeps, --skip drops rows by name; the CNN reference row always stays (built lazily, no GPU);
    --skip compile keeps the rows without their compiled step."""
    rows = candidates("cuda", 1, 9, (64, 64), include=["bf16"])
    assert [c.name for c in rows] == ["nnU-Net PlainConvUNet (DS)", "SwinUnet bf16", "nnU-Net PlainConvUNet bf16"]
    assert all(c.compile for c in rows)
    assert not any(c.compile for c in candidates("cuda", 1, 9, (64, 64), include=["bf16"], exclude=["compile"]))
    cpu = candidates("cpu", 1, 9, (64, 64), compile_on_cpu=True)
    assert [c.name for c in cpu if c.compile] == [CNN_ROW, SWIN_ROW]
    assert OFFICIAL_ROW in [c.name for c in cpu]
    assert OFFICIAL_ROW not in [c.name for c in candidates("cpu", 1, 9, (64, 96))]  # the official takes squares
    assert not any(c.compile for c in candidates("cpu", 1, 9, (64, 64)))


def test_official_row_without_a_checkout(tmp_path):
    """The package copied alone (as a wheel installs it: no tests/, no pyproject.toml beside it) and run from
    an unrelated folder still has the official Swin-Unet's row; the meta device measures shapes only."""
    import shutil
    import subprocess
    import sys

    import nnunet_swin

    site = tmp_path / "site"
    shutil.copytree(os.path.dirname(nnunet_swin.__file__), site / "nnunet_swin",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import sys, nnunet_swin; from nnunet_swin.cli import main; print('from', nnunet_swin.__file__); "
            "sys.exit(main(sys.argv[1:]))")
    argv = ["bench", "--device", "meta", "--patch", "224", "--only", "Official", "--out", str(tmp_path / "b")]
    run = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(site)}, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"from {site / 'nnunet_swin' / '__init__.py'}" in run.stdout
    rows = {r["name"]: r for r in json.loads((tmp_path / "b.json").read_text())["results"]}
    assert list(rows) == [CNN_ROW, OFFICIAL_ROW]
    assert rows[OFFICIAL_ROW]["params_m"] == pytest.approx(27.165828) and not rows[OFFICIAL_ROW]["error"]


def test_default_model_costs_what_the_official_one_costs():
    assert forward_gmacs(SwinUnet(3, 9).eval(), torch.randn(1, 3, 224, 224)) == pytest.approx(6.11, abs=0.01)


def test_complexity_formulas_match_counted_flops():
    rows = {r.attention: r for r in complexity_table((28, 28), dim=32, heads=1, window=7, repeats=1)}
    for name in ("global MSA", "W-MSA", "SW-MSA"):
        assert rows[name].counted_gmacs == pytest.approx(rows[name].formula_gmacs, rel=1e-6)
    assert rows["global MSA"].formula_gmacs > 2 * rows["W-MSA"].formula_gmacs


def test_complexity_of_a_3d_stage():
    """Per-axis windows that do not tile the stage: the formula counts the padded tokens the block computes."""
    rows = {r.attention: r for r in complexity_table((4, 10, 6), dim=16, heads=2, window=(2, 5, 4), repeats=1)}
    for name in ("global MSA", "W-MSA", "SW-MSA"):
        assert rows[name].counted_gmacs == pytest.approx(rows[name].formula_gmacs, rel=1e-6) and rows[name].ms > 0
    assert rows["W-MSA"].formula_gmacs == pytest.approx((4 * 320 * 16**2 + 2 * 320 * 40 * 16) / 1e9)  # 4x10x8
    too_large = complexity_table((4, 10, 6), dim=16, heads=2, window=(2, 5, 4), repeats=1, max_global_tokens=100)
    assert math.isnan(too_large[0].counted_gmacs) and too_large[0].formula_gmacs == rows["global MSA"].formula_gmacs


def test_cli_prints_the_table_and_writes_files(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--patch", "64", "--batch", "1", "--warmup", "0", "--repeats", "1",
                 "--only", "1 skips", "--out", str(out), "--png"]) == 0
    printed = capsys.readouterr().out
    assert "time vs CNN" in printed and "SwinUnet 1 skips" in printed and "launches bf16" in printed
    assert f"target: {SWIN_ROW} / {CNN_ROW} train step (wall)" in printed and "not measured (row missing)" in printed
    rows = list(csv.DictReader(open(f"{out}.csv")))
    assert [r["name"] for r in rows] == ["nnU-Net PlainConvUNet (DS)", "SwinUnet 1 skips"]
    assert float(rows[1]["launches_fp32"]) > 100 and rows[1]["compile_s"] == "nan"
    saved = json.load(open(f"{out}.json"))
    meta = saved["meta"]
    assert meta["patch"] == [64, 64] and meta["device"] == "cpu"
    assert [t["met"] for t in saved["targets"]] == [None] * 4
    assert (tmp_path / "bench.png").stat().st_size > 1000
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(f"{out}.csv").st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.csv", "bench.json", "bench.png"]  # no temp files


def test_cli_refuses_cuda_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["bench", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().out


def test_swin_unet_training_step_kernel_launches():
    """One eager training step at 224 (the launch-bound case on a GPU) of the default architecture; the
    width does not change the count (embed_dim 24 with the default heads counts what 96 does, in a quarter
    of the time). An upper bound, so a change that adds launches to the eager step fails here."""
    x = torch.randn(1, 1, 224, 224)
    counts = [count_kernel_launches(SwinUnet(1, 2, embed_dim=24), x, dtype) for dtype in (None, torch.bfloat16)]
    assert counts[0] <= 809 and counts[1] <= 906, counts


def _params_m(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def test_3d_bench_at_an_anisotropic_plan():
    """Three patch sides: nnU-Net's 3D CNN from the planner's topology at this spacing (thick slices: the first
    pooling in-plane only), the 3D SwinUnet with the strides of the same plan; parameters are the networks' own,
    GMACs and saved activations positive, a step timed; no kernel launches counted in 3D. The meta device gives
    the same counts without running anything."""
    patch, spacing = (8, 32, 32), (3.0, 1.0, 1.0)
    plan = nnunet_plan(patch, spacing)
    assert plan["architecture"]["arch_kwargs"]["strides"] == [[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]]
    # the embedding takes the first two poolings, the first merging the third; a 4x8x8 first stage: windows 4
    options = dict(patch_size=[2, 4, 4], merge_strides=[[1, 2, 2], [1, 1, 1], [1, 1, 1]], window_size=[4, 4, 4])
    assert swin_plan_options(plan) == options
    kw = dict(batch=2, in_channels=1, num_classes=3, warmup=0, include=["C48"], spacing=spacing,
              log=lambda s: None)
    results = run_bench("cpu", patch, repeats=1, **kw)
    assert [r.name for r in results] == [CNN_ROW_3D, "SwinUnet 3D C48", "SwinUnet 3D C48 grad checkpointing"]
    assert not any(r.error for r in results)
    cnn, swin, ckpt = results
    cnn_net = nnunet_plain_unet(patch, 1, 3, spacing)
    assert isinstance(cnn_net.encoder.stages[0][0].convs[0].conv, nn.Conv3d)
    assert cnn.params_m == pytest.approx(_params_m(cnn_net))
    swin_net = SwinUnet(1, 3, spatial_dims=3, **options, embed_dim=48)
    assert swin.params_m == pytest.approx(_params_m(swin_net)) == pytest.approx(ckpt.params_m)
    assert cnn.rel_act == 1.0 and swin.rel_act == pytest.approx(swin.saved_act_mb_per_img / cnn.saved_act_mb_per_img)
    for r in results:
        assert r.gmacs > 0 and r.saved_act_mb_per_img > 0 and r.train_s_per_step > 0 and r.train_cpu_s_per_step > 0
        assert r.saved_act_gb_per_batch == pytest.approx(r.saved_act_mb_per_img * 2 / 1024)
        assert math.isnan(r.launches_fp32) and math.isnan(r.infer_ms_per_img)
    assert ckpt.gmacs == pytest.approx(swin.gmacs) and ckpt.saved_act_mb_per_img < swin.saved_act_mb_per_img / 2
    # the meta device (SwinUnet's forward asks torch whether autocast is on there, which raises: the CNN only)
    (on_meta,) = run_bench("meta", patch, repeats=1, **{**kw, "include": ["no such row"]})
    assert (on_meta.params_m, on_meta.gmacs, on_meta.saved_act_mb_per_img) == pytest.approx(
        (cnn.params_m, cnn.gmacs, cnn.saved_act_mb_per_img))
    assert math.isnan(on_meta.train_s_per_step) and not on_meta.error


def test_3d_rows_monai_padding_and_cuda_rows():
    """MONAI's SwinUNETR needs sides divisible by 32: its row runs on the padded patch and says so; on CUDA
    the default 3D SwinUnet and the CNN get bf16 rows, and they measure torch.compile."""
    names = [c.name for c in candidates("cpu", 1, 3, (40, 56, 40))]
    assert names[0] == CNN_ROW_3D and SWIN_ROW_3D in names
    assert names[-1] == "MONAI SwinUNETR 3D fs48 (patch padded to 64x64x64)"
    assert candidates("cpu", 1, 3, (64, 32, 96))[-1].name == "MONAI SwinUNETR 3D fs48"
    cuda = candidates("cuda", 1, 3, (40, 56, 40), include=["bf16"])
    assert [c.name for c in cuda] == [CNN_ROW_3D, f"{SWIN_ROW_3D} bf16", "nnU-Net 3D PlainConvUNet bf16"]
    assert all(c.compile for c in cuda)
    seen = []
    inner = nn.Conv3d(1, 2, 1)
    inner.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    x = torch.randn(1, 1, 40, 56, 40)
    out = PadToMultiple(inner, 32)(x)
    assert seen == [(1, 1, 64, 64, 64)] and out.shape == (1, 2, 40, 56, 40)
    assert torch.allclose(out, inner(x), atol=1e-6)  # a 1x1x1 conv: the padding does not reach real voxels


def test_cli_3d_memory_only_run(tmp_path, capsys):
    out = tmp_path / "bench3d"
    assert main(["bench", "--patch", "8", "32", "32", "--spacing", "3", "1", "1", "--batch", "2", "--repeats", "0",
                 "--classes", "3", "--only", "C48", "--skip", "checkpointing", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "bench 3D: patch 8x32x32" in printed and "no timed steps" in printed and "act GB/batch" in printed
    assert "target:" not in printed  # the CPU targets are about the 2D model
    rows = list(csv.DictReader(open(f"{out}.csv")))
    assert [r["name"] for r in rows] == [CNN_ROW_3D, "SwinUnet 3D C48"]
    assert float(rows[1]["saved_act_gb_per_batch"]) > 0 and rows[1]["train_s_per_step"] == "nan"
    meta = json.load(open(f"{out}.json"))["meta"]
    assert meta["patch"] == [8, 32, 32] and meta["spacing"] == [3.0, 1.0, 1.0]
    assert meta["pool_op_kernel_sizes"] == [[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]]


def test_cli_refuses_a_spacing_without_a_3d_patch(capsys):
    assert main(["bench", "--patch", "64", "--spacing", "1", "1", "1"]) == 2
    assert "three for 3D" in capsys.readouterr().out
    assert main(["bench", "--patch", "8", "8", "8", "8"]) == 2
