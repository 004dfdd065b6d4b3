"""SwinUnet in 3D: shapes and gradients over anisotropic sizes and strides x skips x up-sampling, deep
supervision, the per-axis layouts of merging and expanding, padding masks, the plan -> strides mapping
and the errors for sizes and options a configuration cannot take."""

import math

import pytest
import torch

from nnunet_swin import SwinUnet
from nnunet_swin import network
from nnunet_swin.network import blocks
from nnunet_swin.network import (PatchExpand, PatchMerging, SwinBlock, attention_mask, fit_window_size,
                                 options_for_plan, strides_from_pooling)

TINY = dict(spatial_dims=3, embed_dim=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), drop_path_rate=0.0)
#: nnU-Net-like plans: a prostate-like anisotropic one (few thick slices: depth pooled late) and an isotropic one.
PROSTATE_POOL = [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]]
ISO_POOL = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_strides_follow_nnunets_pooling_plan():
    assert strides_from_pooling(PROSTATE_POOL) == {"patch_size": [1, 4, 4],
                                                   "merge_strides": [[2, 2, 2], [2, 2, 2], [1, 2, 2]]}
    assert strides_from_pooling(ISO_POOL) == {"patch_size": [4, 4, 4], "merge_strides": [[2, 2, 2]] * 3}
    # fewer than five poolings (hippocampus-like 40x56x40): the missing mergings keep the resolution
    hippo = strides_from_pooling([[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]])
    assert hippo == {"patch_size": [4, 4, 4], "merge_strides": [[2, 2, 2], [1, 1, 1], [1, 1, 1]]}
    assert SwinUnet(1, 2, **{**TINY, **hippo}).size_multiple == (8, 8, 8)  # divides nnU-Net's patch
    net = SwinUnet(1, 2, **{**TINY, **strides_from_pooling(PROSTATE_POOL)})
    assert net.size_multiple == (4, 32, 32)  # nnU-Net's own multiple for this plan is (4, 64, 64)
    with pytest.raises(ValueError, match="equal length"):
        strides_from_pooling([[1, 1, 1], [2, 2]])


def test_windows_fit_the_first_stage_without_much_padding():
    # hippocampus-like: a 10x14x10 first stage; window 7 would pad it to 14x14x14, twice the tokens
    assert fit_window_size((40, 56, 40), (4, 4, 4)) == [5, 7, 5]
    assert fit_window_size((20, 320, 256), (1, 4, 4)) == [7, 7, 7]  # 20 -> 21, 80 -> 84, 64 -> 70: within 10 %
    assert fit_window_size((128, 128, 128), (4, 4, 4)) == [7, 7, 7]
    assert fit_window_size((8, 44, 52), (2, 4, 4)) == [4, 6, 7]  # 4 tokens: global; 11 -> 12 at 6; 13 -> 14 at 7
    assert fit_window_size((28, 28), (4, 4), max_padding=0.0) == [7, 7]


def test_options_for_a_plan_are_its_strides_with_fitted_windows_under_the_users_options():
    hippo = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert options_for_plan((40, 56, 40), hippo) == {**strides_from_pooling(hippo), "window_size": [5, 7, 5]}
    # the user's patch embedding wins, and the windows are fitted to it: a 20x28x20 first stage at patch 2
    assert options_for_plan((40, 56, 40), hippo, {"patch_size": 2})["window_size"] == [7, 7, 7]
    assert options_for_plan((40, 56, 40), hippo, {"window_size": 3})["window_size"] == 3


# (sizes, plan): anisotropic with depth kept early, and depth merged only in the last merging
GRID = [((8, 64, 96), PROSTATE_POOL),
        ((16, 32, 32), [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2], [2, 2, 2]])]


@pytest.mark.parametrize("sizes, pool", GRID)
@pytest.mark.parametrize("num_skips", [0, 1, 2, 3])
@pytest.mark.parametrize("upsampling", ["patch_expand", "bilinear", "transposed_conv"])
def test_forward_backward_grid(sizes, pool, num_skips, upsampling):
    model = SwinUnet(2, 3, num_skips=num_skips, upsampling=upsampling, deep_supervision=True,
                     **TINY, **strides_from_pooling(pool))
    x = torch.randn(1, 2, *sizes)
    outputs = model(x)
    assert [tuple(y.shape) for y in outputs] == [
        (1, 3, *(s // st for s, st in zip(sizes, stride))) for stride in model.output_strides]
    sum(y.square().mean() for y in outputs).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gets no gradient"


def test_output_strides_and_description_of_an_anisotropic_plan():
    model = SwinUnet(1, 2, **TINY, **strides_from_pooling(PROSTATE_POOL))
    assert model.output_strides == ((1, 1, 1), (1, 4, 4), (2, 8, 8), (4, 16, 16))
    info = model.describe((20, 320, 256))
    assert info["patch_size"] == [1, 4, 4] and info["merge_strides"] == [[2, 2, 2], [2, 2, 2], [1, 2, 2]]
    assert [s["size"] for s in info["stages"]] == [[20, 80, 64], [10, 40, 32], [5, 20, 16], [5, 10, 8]]
    # a window never exceeds its stage: an axis no longer than 7 is attended globally
    assert [s["window"] for s in info["stages"]] == [[7, 7, 7], [7, 7, 7], [5, 7, 7], [5, 7, 7]]
    assert [s["dim"] for s in info["stages"]] == [12, 24, 48, 96]


def test_per_axis_windows_and_bias_table():
    block = SwinBlock(8, 2, window_size=(3, 5, 5), shifted=True)
    assert block.attn.relative_position_bias_table.shape == (5 * 9 * 9, 2)
    index = block.attn.relative_position_index
    assert index.shape == (75, 75) and int(index.max()) == 5 * 9 * 9 - 1
    assert int(index[0, 0]) == (2 * 9 + 4) * 9 + 4  # zero offset addresses the table's centre
    y = block(torch.randn(2, 6, 10, 15, 8))
    assert y.shape == (2, 6, 10, 15, 8)


def test_patch_merging_groups_neighbours_first_axis_fastest(monkeypatch):
    """In 2D the official order is (0,0), (1,0), (0,1), (1,1); in 3D the first axis's offset is still the
    fastest, and an axis with stride 1 is not merged."""
    monkeypatch.setattr(blocks, "norm_linear", lambda x, norm, linear: x)  # expose the regrouping only
    x = torch.arange(4 * 4 * 6, dtype=torch.float32).view(1, 4, 4, 6, 1)
    merged = PatchMerging(1, (2, 1, 2))(x)
    assert merged.shape == (1, 2, 4, 3, 4)
    expected = [x[0, d, h, w, 0] for w in (0, 1) for h in (0,) for d in (0, 1)]
    assert merged[0, 0, 0, 0].tolist() == [float(v) for v in expected]


def test_patch_expand_unfolds_in_the_official_channel_order():
    """Channel k of a token goes to offset (k // 4, k // 2 % 2, k % 2) of its 2x2x2 block: ``(p1 p2 p3 c)``."""
    expand = PatchExpand(8, 1, (2, 2, 2))
    with torch.no_grad():
        expand.expand.weight.copy_(torch.eye(8))
    x = torch.arange(8, dtype=torch.float32).view(1, 1, 1, 1, 8)
    block = expand.project(x)[0, :, :, :, 0]
    assert block.shape == (2, 2, 2)
    assert all(block[k // 4, k // 2 % 2, k % 2] == k for k in range(8))


def test_padding_keys_are_masked_for_every_real_query():
    sizes, window, shift = (5, 9, 10), (3, 4, 4), (1, 2, 2)
    mask = attention_mask(sizes, window, shift, torch.device("cpu"))
    order, inverse = network.window_order(sizes, window, shift, torch.device("cpu"))
    total = math.prod(sizes)
    real = (order < total).view(mask.shape[0], -1)
    assert mask.shape == (2 * 3 * 3, 48, 48)
    key_pad = ~real[:, None, :] & real[:, :, None]
    assert (mask[key_pad] == float("-inf")).all() and not (mask[real[:, :, None] & real[:, None, :]] ==
                                                           float("-inf")).any()
    assert torch.equal(order[inverse], torch.arange(total))  # the inverse gather undoes the order


def test_gradient_checkpointing_gives_the_same_gradients_in_3d():
    model = SwinUnet(1, 2, **TINY, **strides_from_pooling(PROSTATE_POOL))
    x = torch.randn(1, 1, 8, 32, 32)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(x).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("shape, message", [
    ((1, 1, 8, 60, 64), r"H=60 \(nearest: 32 or 64\)"),
    ((1, 1, 6, 64, 64), r"D=6 \(nearest: 4 or 8\)"),
    ((1, 1, 64, 64), r"3D network and expects \(B, C, D, H, W\)"),
])
def test_sizes_the_configuration_cannot_take_say_what_would_work(shape, message):
    model = SwinUnet(1, 2, **TINY, **strides_from_pooling(PROSTATE_POOL))
    with pytest.raises(ValueError, match=message):
        model(torch.randn(*shape))


@pytest.mark.parametrize("options, message", [
    (dict(patch_size=(4, 4)), r"patch_size needs one positive int per axis \(3 for a 3D network\)"),
    (dict(merge_strides=[[2, 2, 2]] * 2), "merge_strides needs 3 entries"),
    (dict(merge_strides=[[2, 2, 2], [2, 0, 2], [2, 2, 2]]), "merge_strides needs one positive int per axis"),
    (dict(window_size=(7, 7)), "window_size needs one positive int per axis"),
    (dict(spatial_dims=1), "spatial_dims must be 2 or 3"),
])
def test_bad_3d_options_raise(options, message):
    with pytest.raises(ValueError, match=message):
        SwinUnet(1, 2, **{**TINY, **options})
