"""nnunet-swin bench: the side-by-side table, its files, and the complexity argument measured."""

import csv
import json
import os

import pytest
import torch

from nnunet_swin.cli import main
from nnunet_swin.experiments.bench import (candidates, complexity_table, forward_gmacs, nnunet_plain_unet, run_bench,
                                           saved_bytes)
from nnunet_swin import SwinUnet


def test_nnunet_cnn_is_built_from_the_default_2d_plan():
    model = nnunet_plain_unet((224, 224), 1, 9)
    # the reference notes' plan for 224: 6 stages, 32..512 features, deep supervision on
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
    """--only keeps, --skip drops rows by name; the CNN reference row always stays (built lazily, no GPU)."""
    names = [c.name for c in candidates("cuda", 1, 9, (64, 64), include=["bf16"], exclude=["compile"])]
    assert names == ["nnU-Net PlainConvUNet (DS)", "SwinUnet bf16", "nnU-Net PlainConvUNet bf16"]
    assert not any(c.compile for c in candidates("cuda", 1, 9, (64, 64), exclude=["compile", "PlainConvUNet"])
                   if not c.reference)


def test_default_model_costs_what_the_official_one_costs():
    assert forward_gmacs(SwinUnet(3, 9).eval(), torch.randn(1, 3, 224, 224)) == pytest.approx(6.11, abs=0.01)


def test_saved_activation_memory_of_the_default_model():
    """The memory target of the performance issue, counted as the reference notes count it
    (parameters included): the official model saves 303 MB per 224x224 image, ours must save <= 250 MB."""
    act, total = saved_bytes(SwinUnet(1, 9), torch.randn(1, 1, 224, 224))
    assert total / 2**20 <= 250
    ckpt_act, _ = saved_bytes(SwinUnet(1, 9, gradient_checkpointing=True), torch.randn(1, 1, 224, 224))
    assert ckpt_act <= act / 2


def test_complexity_formulas_match_counted_flops():
    rows = {r.attention: r for r in complexity_table(28, 28, dim=32, heads=1, window=7, repeats=1)}
    for name in ("global MSA", "W-MSA", "SW-MSA"):
        assert rows[name].counted_gmacs == pytest.approx(rows[name].formula_gmacs, rel=1e-6)
    assert rows["global MSA"].formula_gmacs > 2 * rows["W-MSA"].formula_gmacs


def test_cli_prints_the_table_and_writes_files(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--patch", "64", "--batch", "1", "--warmup", "0", "--repeats", "1",
                 "--only", "1 skips", "--out", str(out), "--png"]) == 0
    printed = capsys.readouterr().out
    assert "time vs CNN" in printed and "SwinUnet 1 skips" in printed
    rows = list(csv.DictReader(open(f"{out}.csv")))
    assert [r["name"] for r in rows] == ["nnU-Net PlainConvUNet (DS)", "SwinUnet 1 skips"]
    meta = json.load(open(f"{out}.json"))["meta"]
    assert meta["patch"] == [64, 64] and meta["device"] == "cpu"
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
