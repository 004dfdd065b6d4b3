"""SwinUnet's output heads (``decoder.seg_layers``, nnU-Net's name), checkpoints with the older head names,
and the fp16 guard in ``SwinUnet.forward``."""

from __future__ import annotations

import pytest
import torch

from nnunet_swin.network import SwinUnet

TINY = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), drop_path_rate=0.0)


def _model(num_classes: int = 3, **kw) -> SwinUnet:
    torch.manual_seed(0)
    return SwinUnet(1, num_classes, **TINY, **kw).eval()


def test_seg_layers_follow_the_output_order():
    model = _model(deep_supervision=True)
    widths = [head.in_channels for head in model.decoder.seg_layers]
    assert widths == [16, 16, 32, 64]  # full resolution, then 1/4, 1/8, 1/16 (the output list's order)
    with torch.no_grad():
        outs = model(torch.randn(1, 1, 64, 64))
        # each output is its own head: zeroing seg_layers[i] zeroes output i only
        model.decoder.seg_layers[2].weight.zero_()
        after = model(torch.randn(1, 1, 64, 64))
    assert [tuple(o.shape[2:]) for o in outs] == [(64, 64), (16, 16), (8, 8), (4, 4)]
    assert [bool(o.abs().sum() == 0) for o in after] == [False, False, True, False]


def test_checkpoint_with_old_head_names_loads_strictly():
    """Results folders trained before the rename store decoder.head / decoder.aux_heads.i."""
    model = _model(deep_supervision=True)
    renamed = {"decoder.seg_layers.0.weight": "decoder.head.weight",
               **{f"decoder.seg_layers.{i}.weight": f"decoder.aux_heads.{i - 1}.weight" for i in (1, 2, 3)}}
    old = {renamed.get(k, k): v.clone() for k, v in model.state_dict().items()}
    assert "decoder.head.weight" in old and not any(".seg_layers." in k for k in old)
    fresh = SwinUnet(1, 3, **TINY, deep_supervision=True).eval()
    fresh.load_state_dict(old)  # strict, as nnUNetv2_predict loads
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(fresh(x), model(x), strict=True))
    assert "decoder.head.weight" in old  # the caller's dict is not modified


@pytest.fixture
def loud_model() -> SwinUnet:
    """fp32 activations of 1e5 after the patch embedding: past fp16's 65504."""
    model = _model()
    with torch.no_grad():
        model.encoder.patch_embed.norm.weight.fill_(1e5)
    return model


def test_fp16_autocast_computes_in_fp32_and_stays_finite(loud_model):
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        reference = loud_model(x)
        with torch.autocast("cpu", dtype=torch.float16):  # what nnU-Net's validation/predictor enter on CUDA
            unguarded = loud_model.decoder.forward_tokens(loud_model.encoder.forward_tokens(x))
            guarded = loud_model(x)
    assert torch.isfinite(reference).all()
    assert not torch.isfinite(unguarded).all()  # the model really overflows in fp16
    assert guarded.dtype == torch.float32 and torch.equal(guarded, reference)


def test_bf16_autocast_is_left_alone(loud_model):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = loud_model(torch.randn(1, 1, 64, 64))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
