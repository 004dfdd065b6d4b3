"""SwinUnet: shapes over sizes x skips x up-sampling, parameter counts, deep supervision, attention
paths, padding masks, mixed precision and input errors."""

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_swin import SwinUnet
from nnunet_swin import network
from nnunet_swin.network import blocks, geometry, ops
from nnunet_swin.network import model as model_module
from nnunet_swin.network import SwinBlock, attention_mask, window_geometry

SMALL = dict(embed_dim=24, num_heads=(1, 2, 4, 8), drop_path_rate=0.0)  # fast, same structure as the paper's


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# 64x64: every stage global or clamped; 96x160: non-square, padded windows; 224: the official grid
@pytest.mark.parametrize("size", [(64, 64), (96, 160), (224, 224)])
@pytest.mark.parametrize("num_skips", [0, 1, 2, 3])
@pytest.mark.parametrize("upsampling", ["patch_expand", "bilinear", "transposed_conv"])
def test_forward_backward_grid(size, num_skips, upsampling):
    model = SwinUnet(2, 3, num_skips=num_skips, upsampling=upsampling, **SMALL)
    x = torch.randn(1, 2, *size)
    y = model(x)
    assert y.shape == (1, 3, *size)
    y.square().mean().backward()
    for name, p in model.named_parameters():
        if name.startswith(("decoder.seg_layers.1.", "decoder.seg_layers.2.", "decoder.seg_layers.3.")):
            assert p.grad is None  # no deep supervision: the auxiliary heads are not used
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gets no gradient"


def test_default_is_the_papers_tiny_model():
    model = SwinUnet(3, 9)
    aux = sum(p.numel() for p in model.decoder.seg_layers[1:].parameters())
    assert _params(model) - aux == 27_168_900  # the official SwinTransformerSys at 9 classes, in_chans 3
    assert aux == (96 + 192 + 384) * 9
    assert _params(SwinUnet(1, 9)) - aux == 27_165_828
    block_rates = [b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0
                   for s in model.encoder.stages for b in s.blocks]
    assert block_rates == pytest.approx(torch.linspace(0, 0.2, 8).tolist())
    # the decoder reuses the rate of the encoder stage at the same resolution
    dec = [[b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0 for b in s.blocks]
           for s in model.decoder.stages]
    assert dec[1] == pytest.approx(block_rates[4:6]) and dec[3] == pytest.approx(block_rates[0:2])
    assert dec[0] == []  # official layers_up.0 is a bare PatchExpand
    assert model.decoder.seg_layers[0].bias is None and model.decoder.seg_layers[0].weight.shape == (9, 96, 1, 1)


@pytest.mark.parametrize("num_skips, removed", [(3, 0), (2, 295_296), (1, 295_296 + 73_920),
                                                 (0, 295_296 + 73_920 + 18_528)])
def test_skips_are_the_finest_scales(num_skips, removed):
    model = SwinUnet(3, 9, num_skips=num_skips)
    assert _params(SwinUnet(3, 9)) - _params(model) == removed
    fused = [i for i, s in enumerate(model.decoder.stages) if s.fuse is not None]
    assert fused == [3, 2, 1][:num_skips][::-1]  # 1 skip = 1/4 (stage 3), 2 = + 1/8, 3 = + 1/16
    if num_skips == 0:
        assert not any(isinstance(m, torch.nn.Linear) and m.in_features == 2 * m.out_features
                       for s in model.decoder.stages for m in [s.fuse] if m is not None)


def test_skip_tensors_feed_the_decoder():
    """A skip only matters when it exists: changing the 1/8 skip changes the output of a 2- and 3-skip
    model but not of a 1-skip model."""
    x = torch.randn(1, 1, 64, 96)
    for num_skips, expect_change in [(1, False), (2, True)]:
        model = SwinUnet(1, 2, num_skips=num_skips, **SMALL).eval()
        with torch.no_grad():
            feats = model.encoder.forward_tokens(x)
            base = model.decoder.forward_tokens(feats)
            feats[1] = feats[1] + 1.0
            changed = not torch.allclose(model.decoder.forward_tokens(feats), base)
        assert changed == expect_change


def test_deep_supervision_outputs_and_runtime_switch():
    model = SwinUnet(1, 4, deep_supervision=True, **SMALL)
    x = torch.randn(2, 1, 96, 128)
    outs = model(x)
    assert [o.shape for o in outs] == [(2, 4, 96, 128), (2, 4, 24, 32), (2, 4, 12, 16), (2, 4, 6, 8)]
    sum(o.mean() for o in outs).backward()
    assert all(p.grad is not None for p in model.decoder.seg_layers.parameters())
    model.decoder.deep_supervision = False  # what nnU-Net's set_deep_supervision_enabled does
    model.eval()
    with torch.no_grad():
        single = model(x)
        model.decoder.deep_supervision = True
        assert torch.equal(model(x)[0], single)


def test_encoder_returns_nchw_skips_then_bottleneck():
    model = SwinUnet(3, 2).eval()  # eval: drop path off, so both calls compute the same
    feats = model.encoder(torch.randn(1, 3, 224, 160))
    assert [tuple(f.shape) for f in feats] == [(1, 96, 56, 40), (1, 192, 28, 20), (1, 384, 14, 10), (1, 768, 7, 5)]
    assert torch.equal(model.decoder(feats), model.decoder.forward_tokens([f.permute(0, 2, 3, 1) for f in feats]))


@pytest.mark.parametrize("size", [(224, 224), (96, 160)])
def test_fused_attention_equals_explicit_formula(size):
    model = SwinUnet(1, 3, **SMALL).eval()
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        fused = model(x)
        model.set_fused_attention(False)
        explicit = model(x)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)


def _attention_inputs(masked: bool, dtype: torch.dtype = torch.float32):
    """Token-major qkv for 2 images x 4 windows of 7x7 tokens, 3 heads of 8 channels; a bias laid out as the
    model's (a permuted table lookup); shift masks."""
    qkv = torch.randn(2, 4, 49, 3 * 24, dtype=dtype, requires_grad=True)
    bias = torch.randn(49, 49, 3).permute(2, 0, 1).requires_grad_()
    mask = attention_mask((28, 28), (7, 7), (3, 3), torch.device("cpu"))[:4] if masked else None
    return qkv, bias, mask


@pytest.mark.parametrize("masked", [False, True])
def test_sdpa_equals_explicit_window_attention(masked):
    """The two formulas behind ``fused``: on the CPU the model takes the explicit one, so compare directly."""
    qkv, bias, mask = _attention_inputs(masked)
    outs, grads = [], []
    for sdpa in (True, False):
        out = network.window_attention(qkv, 3, bias, mask, 8**-0.5, sdpa)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), (qkv, bias)))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_window_attention_backward_equals_autograd(masked, dtype):
    """The hand-written backward of the explicit formula against autograd through the same formula, and
    its double backward (create_graph) against autograd's."""
    qkv, bias, mask = _attention_inputs(masked, dtype)
    weight = torch.randn(2, 4, 49, 24)
    results = []
    for fn in (network.window_attention, ops._plain_window_attention):
        args = (qkv, 3, bias, mask, 8**-0.5) + ((False,) if fn is network.window_attention else ())
        out = fn(*args)
        results.append((out, *torch.autograd.grad((out.float() * weight).sum(), (qkv, bias))))
    assert type(results[0][0].grad_fn).__name__ == "_WindowAttentionBackward"
    assert results[1][0].grad_fn is not None and type(results[1][0].grad_fn).__name__ != "_WindowAttentionBackward"
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for ours, plain in zip(*results):
        assert ours.dtype == plain.dtype
        torch.testing.assert_close(ours, plain, **tol)
    if dtype == torch.float32:
        second = []
        for fn in (network.window_attention, ops._plain_window_attention):
            args = (qkv, 3, bias, mask, 8**-0.5) + ((False,) if fn is network.window_attention else ())
            g_qkv, g_bias = torch.autograd.grad((fn(*args) * weight).sum(), (qkv, bias), create_graph=True)
            second.append(torch.autograd.grad(g_qkv.square().sum() + g_bias.square().sum(), (qkv, bias)))
        for ours, plain in zip(*second):
            torch.testing.assert_close(ours, plain, rtol=1e-4, atol=1e-5)


def test_fused_attention_gradients_equal_explicit():
    model = SwinUnet(1, 3, **SMALL)
    x = torch.randn(1, 1, 64, 96)
    grads = []
    for fused in (True, False):
        model.zero_grad()
        model.set_fused_attention(fused)
        model(x).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_window_geometry_follows_the_official_clamp():
    assert window_geometry(56, 7, True) == (7, 3)
    assert window_geometry(7, 7, True) == (7, 0)  # equality counts: a 7x7 bottleneck is global, unshifted
    assert window_geometry(5, 7, True) == (5, 0)
    assert window_geometry(14, 7, False) == (7, 0)


def test_shift_mask_matches_the_official_three_bands():
    """At sizes the official code accepts, our mask equals its [0,H-M), [H-M,H-s), [H-s,H) labelling."""
    h, m, s = 28, 7, 3
    labels = torch.zeros(h, h)
    cnt = 0
    for hs in (slice(0, h - m), slice(h - m, h - s), slice(h - s, None)):
        for ws in (slice(0, h - m), slice(h - m, h - s), slice(h - s, None)):
            labels[hs, ws] = cnt
            cnt += 1
    win = labels.view(h // m, m, h // m, m).permute(0, 2, 1, 3).reshape(-1, m * m)
    official = (win[:, None, :] != win[:, :, None]).float() * -100.0
    assert torch.equal(attention_mask((h, h), (m, m), (s, s), torch.device("cpu")), official)
    assert attention_mask((h, h), (m, m), (0, 0), torch.device("cpu")) is None  # tiling and unshifted: no mask


def test_pad_then_shift_keeps_windows_whole():
    """A 64x64 stage at window 7 (a 256 patch): padded to 70 first, then rolled, so every real token of a
    shifted block attends to at least 9 real keys (rolling the real 64 and padding afterwards split the
    wrapped band: five tokens saw at most 2 keys, one only itself)."""
    h, m, s = 64, 7, 3
    mask = attention_mask((h, h), (m, m), (s, s), torch.device("cpu"))
    order, _ = network.window_order((h, h), (m, m), (s, s), torch.device("cpu"))
    real = (order < h * h).view(mask.shape[0], -1)  # nW, N: real query tokens
    visible = (mask == 0).sum(-1)  # keys each query attends to with weight not scaled by -100 or -inf
    assert visible[real].min() >= 9
    assert (mask[real] == float("-inf")).any()  # padding keys stay masked out for real queries
    assert order[:7].tolist() == list(range(3 * 64 + 3, 3 * 64 + 10))  # the first window starts at (3, 3)


def test_geometry_is_shared_between_blocks_and_bounded(monkeypatch):
    """One cache entry per (size, window, shift, device), used by every block with that geometry, and
    bounded memory however many sizes are seen (predicting whole images of many sizes)."""
    geometry._GEOMETRY_CACHE.clear()
    model = SwinUnet(1, 2, **SMALL).eval()
    with torch.no_grad():
        model(torch.randn(1, 1, 64, 96))
    assert len(geometry._GEOMETRY_CACHE) == 8  # 4 stage sizes x (shifted, not): encoder and decoder share them
    assert {key[0] for key in geometry._GEOMETRY_CACHE} == {(16, 24), (8, 12), (4, 6), (2, 3)}
    limit = 2 * 2**20
    monkeypatch.setattr(geometry, "GEOMETRY_CACHE_BYTES", limit)
    for k in range(1, 41):  # 40 more stage sizes, as whole images of many sizes would bring
        for shifted in (False, True):
            network.stage_geometry((8 * k, 64), (7, 7), shifted, torch.device("cpu"))
        held = sum(g.nbytes for g in geometry._GEOMETRY_CACHE.values())
        assert held <= limit or len(geometry._GEOMETRY_CACHE) == 8
    assert 8 <= len(geometry._GEOMETRY_CACHE) < 40
    assert ((320, 64), (7, 7), True, "cpu") in geometry._GEOMETRY_CACHE
    assert ((64, 64), (7, 7), True, "cpu") not in geometry._GEOMETRY_CACHE


def test_inference_mode_does_not_poison_training():
    """Predict under inference_mode, then train at the same size (predict-then-fine-tune in one process)."""
    model = SwinUnet(1, 2, **SMALL)
    x = torch.randn(1, 1, 32, 224)  # a size no other test uses, so its geometry is first built below
    with torch.inference_mode():
        model(x)
    model(x).mean().backward()
    assert model.encoder.patch_embed.proj.weight.grad is not None


def test_recomputed_linear_supports_double_backward():
    """Second-order gradients (e.g. an input-gradient penalty) through the recomputing LayerNorm/GELU linear."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    nw = torch.randn(5, dtype=torch.float64, requires_grad=True)
    nb = torch.randn(5, dtype=torch.float64, requires_grad=True)
    norm = lambda *t: ops._RecomputedLinear.apply(t[0], t[1], t[2], ops._layer_norm, t[3], t[4])
    gelu = lambda *t: ops._RecomputedLinear.apply(t[0], t[1], t[2], F.gelu)
    assert torch.autograd.gradgradcheck(norm, (x, w, b, nw, nb))
    assert torch.autograd.gradgradcheck(gelu, (x, w, b))


def test_explicit_attention_keeps_float64():
    model = SwinUnet(1, 2, fused_attention=False, **SMALL).double().eval()
    x = torch.randn(1, 1, 32, 64, dtype=torch.float64)
    with torch.no_grad():
        explicit = model(x)
        model.set_fused_attention(True)
        fused = model(x)  # SDPA computes float64 in float64
    torch.testing.assert_close(explicit, fused, rtol=1e-12, atol=1e-12)


# (block, input): 10x12 does not tile 7x7 windows (padded to 14x14); 5x9x10 does not tile 3x4x4 (6x12x12)
PADDED = {"2d": (dict(dim=16, num_heads=2, window_size=7), (2, 10, 12, 16)),
          "3d": (dict(dim=8, num_heads=2, window_size=(3, 4, 4)), (2, 5, 9, 10, 8))}


@pytest.mark.parametrize("case", PADDED)
@pytest.mark.parametrize("shifted", [False, True])
def test_padding_tokens_do_not_change_real_tokens(monkeypatch, case, shifted):
    """Padding tokens read some real token (their value is never used): make them read random other tokens
    and the output must not move; the check bites, because without the -inf keys it does move."""
    options, shape = PADDED[case]
    block = SwinBlock(**options, shifted=shifted).eval()
    x = torch.randn(*shape)
    build, total = geometry.build_geometry, math.prod(shape[1:-1])

    def scrambled(*args, **kwargs):
        geo = build(*args, **kwargs)
        return geo._replace(gather=torch.where(geo.order >= total, torch.randint_like(geo.gather, 0, total),
                                               geo.gather))

    with torch.no_grad():
        geometry._GEOMETRY_CACHE.clear()
        reference = block(x)
        monkeypatch.setattr(geometry, "build_geometry", scrambled)
        geometry._GEOMETRY_CACHE.clear()
        torch.testing.assert_close(block(x), reference, rtol=1e-5, atol=1e-5)
        monkeypatch.setattr(geometry, "attention_mask",
                            lambda *a: attention_mask(*a).masked_fill(attention_mask(*a) == float("-inf"), 0.0))
        geometry._GEOMETRY_CACHE.clear()
        assert not torch.allclose(block(x), reference, atol=1e-3)
    geometry._GEOMETRY_CACHE.clear()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fused", [True, False])
def test_attention_stays_finite_under_autocast(dtype, fused):
    """Logits far beyond fp16's range (65504) must not become inf/NaN under autocast."""
    model = SwinUnet(1, 2, fused_attention=fused, **SMALL).eval()
    block = model.encoder.stages[0].blocks[0]
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        for b in model.encoder.stages[0].blocks:
            b.attn.qkv.weight.mul_(3000.0)
        # the test bites: these logits overflow when computed naively in fp16
        qkv = block.attn.qkv(block.norm1(model.encoder.patch_embed(x))).flatten(0, 2).half()
        assert torch.isinf((qkv[:, :24] * 24**-0.5) @ qkv[:, 24:48].T).any()
        with torch.autocast("cpu", dtype=dtype):
            y = model(x)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
def test_gradient_checkpointing_gives_the_same_gradients(autocast):
    """Also with drop path and bf16: the recomputed blocks reuse the forward's drop-path draw and weight cast."""
    x = torch.randn(2, 1, 64, 64)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(1)
        model = SwinUnet(1, 2, gradient_checkpointing=ckpt, **{**SMALL, "drop_path_rate": 0.5})
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            loss = model(x).float().square().mean()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1])


def test_blocks_share_one_weight_cast_with_the_same_result():
    """SwinUnet casts every block's matmul weights under autocast in one copy; blocks run without it (the
    encoder and decoder on their own) cast their own: same values, so the same outputs and gradients."""
    torch.manual_seed(0)
    model = SwinUnet(1, 2, **SMALL).eval()
    x = torch.randn(1, 1, 64, 64)
    results = []
    for run in (model, lambda t: model.decoder.forward_tokens(model.encoder.forward_tokens(t))):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = run(x).float()
        out.square().mean().backward()
        results.append((out, [p.grad for p in model.parameters() if p.grad is not None]))
    (out_shared, grads_shared), (out_own, grads_own) = results
    assert torch.equal(out_shared, out_own)
    assert len(grads_shared) == len(grads_own)
    for a, b in zip(grads_shared, grads_own):
        torch.testing.assert_close(a, b)


def test_one_drop_path_draw_per_forward_is_timms_distribution():
    """Each block that drops paths gets two factors per image (attention and MLP residual), 0 or 1/keep,
    kept with its own probability: the mean stays 1, as timm's DropPath (scale_by_keep)."""
    torch.manual_seed(0)
    model = SwinUnet(1, 2, **{**SMALL, "drop_path_rate": 0.4}).train()
    shared = model._shared_block_inputs(torch.zeros(20000, 1, 1, 1))
    dropping = [b for b in model._swin_blocks if b.drop_prob]
    assert len(dropping) == len(model._swin_blocks) - 2  # the first block of the encoder and its decoder twin
    for block in dropping:
        weights, scales = shared[block]
        keep = 1 - block.drop_prob
        assert weights is None and scales.shape == (2, 20000)
        assert scales.unique().tolist() == [0.0, pytest.approx(1 / keep)]
        assert (scales != 0).float().mean(1).tolist() == [pytest.approx(keep, abs=0.015)] * 2
    assert not torch.equal(shared[dropping[0]][1], shared[dropping[1]][1])  # independent per block
    assert all(s is None for _, s in model.eval()._shared_block_inputs(torch.zeros(2, 1, 1, 1)).values())


@pytest.mark.parametrize("shape, message", [
    ((1, 1, 100, 64), r"H=100 \(nearest: 96 or 128\)"),
    ((1, 1, 64, 70), r"W=70 \(nearest: 64 or 96\)"),
    ((1, 3, 64, 64), "3 channels but the network was built for input_channels=1"),
    ((1, 1, 64), r"expects \(B, C, H, W\)"),
])
def test_bad_inputs_say_what_would_work(shape, message):
    with pytest.raises(ValueError, match=message):
        SwinUnet(1, 2, **SMALL)(torch.randn(*shape))


@pytest.mark.parametrize("options, message", [
    (dict(num_skips=4), "num_skips must be 0, 1, 2 or 3"),
    (dict(upsampling="nearest"), "upsampling must be one of"),
    (dict(depths=(2, 2, 2)), "need 4 entries"),
    (dict(num_heads=(5, 6, 12, 24)), r"not divisible by num_heads\[0\]=5"),
    (dict(drop_path_rate=1.5), r"drop_path_rate must be in \[0, 1\)"),
])
def test_bad_options_raise(options, message):
    with pytest.raises(ValueError, match=message):
        SwinUnet(1, 2, **options)


def test_window_8_suits_power_of_two_patches():
    model = SwinUnet(1, 2, window_size=8, **SMALL)
    assert model(torch.randn(1, 1, 256, 256)).shape == (1, 2, 256, 256)
    assert model.encoder.stages[0].blocks[0].attn.relative_position_bias_table.shape == (225, 1)


def test_built_by_nnunet_from_a_plans_entry():
    """nnU-Net's get_network_from_plans locates the class by its dotted name and passes JSON kwargs."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch_kwargs = dict(embed_dim=24, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=8, num_skips=2)
    model = get_network_from_plans("nnunet_swin.SwinUnet", arch_kwargs, [], input_channels=1, output_channels=3,
                                   deep_supervision=True)
    assert isinstance(model, SwinUnet) and model.decoder.deep_supervision and model.decoder.num_skips == 2
    assert [o.shape[-1] for o in model(torch.randn(1, 1, 64, 64))] == [64, 16, 8, 4]


def test_network_module_does_not_import_nnunet():
    code = "import sys, nnunet_swin.network, nnunet_swin.weights; print('nnunetv2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_recomputed_norms_give_exact_gradients():
    """LayerNorm/GELU outputs are recomputed in backward instead of kept: the gradients must equal
    plain autograd's through the same modules."""
    torch.manual_seed(3)
    model = SwinUnet(1, 2, **SMALL)
    x = torch.randn(2, 1, 64, 96)
    model(x).square().mean().backward()
    ours = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    with pytest.MonkeyPatch.context() as mp:  # plain autograd: the same functions without the custom backward
        for module in (blocks, model_module):
            mp.setattr(module, "norm_linear", lambda x, norm, lin, *_: F.linear(norm(x) if norm is not None else x,
                                                                               lin.weight.flatten(1), lin.bias))
        mp.setattr(blocks, "gelu_linear", lambda x, lin, *_: lin(F.gelu(x)))
        model(x).square().mean().backward()
    plain = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(ours) == len(plain)
    for a, b in zip(ours, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_recomputation_in_backward_runs_under_the_forwards_autocast():
    """Backward runs outside autocast. The LayerNorm recomputed there must see the forward's autocast state:
    without it, on CUDA, bf16 activations meet fp32 norm weights and layer_norm raises (the
    CPU's layer_norm accepts the mix, so the state itself is checked here)."""
    seen = []

    def spy_norm(x, weight, bias):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return F.layer_norm(x, weight.shape, weight, bias)

    torch.manual_seed(0)
    norm, lin = nn.LayerNorm(16), nn.Linear(16, 8)
    x = torch.randn(4, 16).to(torch.bfloat16).requires_grad_()  # e.g. the output of a bf16 linear
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops._RecomputedLinear.apply(x, lin.weight, lin.bias, spy_norm, norm.weight, norm.bias)
        reference = F.linear(F.layer_norm(x, (16,), norm.weight, norm.bias), lin.weight, lin.bias)
    ours = torch.autograd.grad(out.float().sum(), (x, lin.weight, norm.weight))
    plain = torch.autograd.grad(reference.float().sum(), (x, lin.weight, norm.weight))
    assert seen == [(True, torch.bfloat16)] * 2  # forward, and the recomputation in backward
    for a, b in zip(ours, plain):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b)


def test_training_step_under_bf16_autocast():
    model = SwinUnet(1, 2, **SMALL)
    x = torch.randn(2, 1, 64, 64)
    model(x).float().square().mean().backward()
    reference = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x).float().square().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert F.cosine_similarity(torch.cat([g.flatten() for g in grads]), reference, dim=0) > 0.98


def test_compiles_without_graph_breaks():
    """torch.compile(fullgraph=True) raises on any graph break; the eager backend keeps it quick."""
    torch._dynamo.reset()
    model = SwinUnet(1, 2, embed_dim=24, num_heads=(1, 2, 4, 8), drop_path_rate=0.1)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    x = torch.randn(1, 1, 64, 96)  # padded windows, clamped windows and shifted masks all in one graph
    compiled(x).mean().backward()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


def test_package_exports_the_public_api_lazily():
    code = ("import sys, nnunet_swin.cli; assert 'torch' not in sys.modules, 'cli import pulled in torch'; "
            "import nnunet_swin, nnunet_swin.weights as w; "
            "assert nnunet_swin.load_official_checkpoint is w.load_official_checkpoint; "
            "assert nnunet_swin.load_pretrained_encoder is w.load_pretrained_encoder; print(nnunet_swin.SwinUnet.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "SwinUnet"


def test_misspelt_option_is_named_with_the_closest_valid_one():
    with pytest.raises(network.UnknownOptionError) as err:
        SwinUnet(1, 2, window_sise=8, **SMALL)
    assert isinstance(err.value, TypeError) and err.value.names == ["window_sise"]
    assert str(err.value).startswith("unknown SwinUnet option 'window_sise' (did you mean 'window_size'?). "
                                     "SwinUnet's options are: spatial_dims, patch_size, merge_strides")


def test_an_option_of_the_wrong_type_is_named():
    with pytest.raises(TypeError, match="embed_dim must be an int, got '96'"):
        SwinUnet(1, 2, embed_dim="96")


def test_the_model_exposes_its_options_strides_windows_and_weight_decay():
    """What trainers and weight loaders read instead of reaching into submodules."""
    model = SwinUnet(1, 2, spatial_dims=3, patch_size=(1, 4, 4), merge_strides=[2, (1, 2, 2), 2], window_size=(2, 7, 7),
                     **SMALL)
    assert model.options.patch_size == (1, 4, 4) and model.options.merge_strides == ((2, 2, 2), (1, 2, 2), (2, 2, 2))
    assert model.options.as_dict()["window_size"] == [2, 7, 7] and model.options.embed_dim == 24
    assert model.stage_strides == ((1, 4, 4), (2, 8, 8), (2, 16, 16), (4, 32, 32))
    assert model.size_multiple == (4, 32, 32)
    assert model.stage_windows == ((2, 7, 7),) * 4
    assert [s.blocks[0].window_size for s in model.encoder.stages] == list(model.stage_windows)
    # rebuilt from its resolved options it is the same network
    again = SwinUnet(1, 2, **model.options.as_dict())
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    skip = model.no_weight_decay()
    params = dict(model.named_parameters())
    assert skip == {n for n, p in params.items() if p.ndim <= 1 or "relative_position_bias_table" in n}
    assert "encoder.stages.0.blocks.0.attn.relative_position_bias_table" in skip
    assert "decoder.stages.1.fuse.bias" in skip and "encoder.norm.weight" in skip
    assert "encoder.stages.0.blocks.0.attn.qkv.weight" not in skip


def test_decoder_is_built_from_the_encoder():
    encoder = model_module.SwinEncoder(1, network.SwinUnetOptions(num_skips=1, **SMALL))
    decoder = model_module.SwinDecoder(encoder, 2)
    reference = SwinUnet(1, 2, num_skips=1, **SMALL).decoder
    assert {k: v.shape for k, v in decoder.state_dict().items()} == \
           {k: v.shape for k, v in reference.state_dict().items()}
    assert [len(s.blocks) for s in decoder.stages] == [0, 2, 2, 2]
    assert [s.fuse is not None for s in decoder.stages] == [False, False, False, True]
