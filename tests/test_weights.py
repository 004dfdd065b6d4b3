"""Weight loading: official Swin-Unet checkpoints, ImageNet Swin encoders, round trips.

The official model is ``nnunet_swin.experiments.official_swin_unet`` (an independent re-implementation,
checked here against the official checkpoint layout); the ImageNet encoder
is timm's Swin-T with random (non-trivial) weights, so nothing is downloaded. Every check compares
values, never just "it runs".
"""

from __future__ import annotations

import fnmatch
import math
import os
import re

import numpy as np
import pytest
import timm
import torch
from timm.layers import resize_rel_pos_bias_table
from torch import nn

from nnunet_swin import SwinUnet
from nnunet_swin.experiments import official_swin_unet as ref
from nnunet_swin.weights import LoadReport, WeightLoadError, load_official_checkpoint, load_pretrained_encoder

BUFFERS = ("relative_position_index", "attn_mask")
SMALL = dict(embed_dim=24, num_heads=(1, 2, 4, 8))  # quick to build; what is checked does not depend on width
AUX_HEADS = ["decoder.seg_layers.1.weight", "decoder.seg_layers.2.weight", "decoder.seg_layers.3.weight"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """These tests run a few large single-image forwards; on a machine whose cores are busy, two intra-op
    threads spin-wait on each other and cost several times the CPU time of one. Restored afterwards, so
    other test modules keep their setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def randomise_(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial weights: LayerNorm gains around 1 (not 1), biases and bias tables non-zero,
    matrices at 1/sqrt(fan_in) so attention is far from uniform."""
    g = torch.Generator().manual_seed(seed)
    norms = {id(m.weight) for m in module.modules() if isinstance(m, nn.LayerNorm)}
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if id(p) in norms:
                p.copy_(1 + 0.3 * r)
            elif name.endswith("relative_position_bias_table"):
                p.copy_(r)
            elif p.ndim == 1:
                p.copy_(0.1 * r)
            else:
                p.copy_(r / math.sqrt(p[0].numel()))
    return module


def prefixed(sd: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in sd.items()}


# ----------------------------------------------------------------------------------------------------
# 1. official parity


@pytest.fixture(scope="module")
def official224():
    model = randomise_(ref.build_official(224), seed=1)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        return model.state_dict(), x, model(x), ref.official_encoder_skips(model, x)


def _check_official_load(sd, source, x, y_ref, skips_ref, report_prefix=""):
    model = SwinUnet(3, 9).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_official_checkpoint(model, source)
    with torch.no_grad():
        y = model(x)
        skips = model.encoder(x)
    assert y.shape == y_ref.shape == (1, 9, *x.shape[2:])
    assert rel_err(y, y_ref) < 1e-4
    for ours, theirs in zip(skips, skips_ref, strict=True):
        assert rel_err(ours, theirs) < 1e-4
    # the report: the 3 aux heads are the only random tensors, and they kept their initialisation
    assert isinstance(report, LoadReport)
    assert sorted(report.random) == AUX_HEADS
    for k in AUX_HEADS:
        assert torch.equal(model.state_dict()[k], before[k])
    assert report.adapted == {}
    params = [k for k in sd if not k.endswith(BUFFERS)]
    assert len(report.loaded) == len(set(report.loaded)) == len(params)
    assert set(report.loaded) | set(AUX_HEADS) == set(model.state_dict())
    assert set(report.ignored) == {report_prefix + k for k in sd if k.endswith(BUFFERS)}
    return model


@pytest.mark.parametrize("form", ["swin_unet.", "module.swin_unet.", "", "file"])
def test_official_checkpoint_parity_224(official224, form, tmp_path):
    sd, x, y_ref, skips_ref = official224
    if form == "file":
        path = tmp_path / "official.pth"
        torch.save(prefixed(sd, "swin_unet."), path)  # what the official trainer writes (ViT_seg wraps swin_unet)
        model = _check_official_load(sd, path, x, y_ref, skips_ref, "swin_unet.")
        assert torch.equal(model.encoder.patch_embed.proj.weight, sd["patch_embed.proj.weight"])
    else:
        _check_official_load(sd, prefixed(sd, form), x, y_ref, skips_ref, form)


def test_official_checkpoint_parity_448(tmp_path):
    oracle = randomise_(ref.build_official(448), seed=2)
    x = torch.randn(1, 3, 448, 448, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        y_ref, skips_ref = oracle(x), ref.official_encoder_skips(oracle, x)
    sd = oracle.state_dict()
    assert "layers.2.blocks.1.attn_mask" in sd  # at 448 the 1/16 stage (28x28) is shifted, unlike at 224
    path = tmp_path / "official448.pth"
    torch.save(prefixed(sd, "module.swin_unet."), path)
    _check_official_load(sd, str(path), x, y_ref, skips_ref, "module.swin_unet.")


# ----------------------------------------------------------------------------------------------------
# 2. bad official checkpoints


@pytest.fixture(scope="module")
def default_model():
    return SwinUnet(3, 9)


def _load_error(model, source) -> str:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightLoadError) as info:
        load_official_checkpoint(model, source)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a failed load changed the model"
    return str(info.value)


def test_official_other_num_classes(default_model):
    msg = _load_error(default_model, ref.build_official(224, num_classes=4).state_dict())
    assert "output.weight" in msg and "(4, 96, 1, 1)" in msg and "(9, 96, 1, 1)" in msg
    assert "num_classes=4" in msg


def test_official_other_window(default_model):
    msg = _load_error(default_model, prefixed(ref.build_official(256, window_size=8).state_dict(), "swin_unet."))
    assert "swin_unet.layers.0.blocks.0.attn.relative_position_bias_table: checkpoint (225, 3) vs model (169, 3)" in msg
    assert "swin_unet.layers_up.3.blocks.1.attn.relative_position_bias_table" in msg
    assert "window_size=8" in msg
    assert "relative_position_index" in msg  # the persisted index does not fit window 7 either


def test_official_other_depths(default_model):
    msg = _load_error(default_model, ref.build_official(224, depths=(2, 2, 6, 2)).state_dict())
    for j in range(2, 6):
        assert f"layers.2.blocks.{j}.attn.qkv.weight" in msg
        assert f"layers_up.1.blocks.{j}.mlp.fc2.bias" in msg
    assert "more Swin blocks" in msg
    assert "layers.2.blocks.1.attn.qkv.weight" not in msg  # blocks the model has are not mismatches


def test_official_fewer_skips():
    model = SwinUnet(3, 9, num_skips=1)
    msg = _load_error(model, ref.build_official(224).state_dict())
    assert "concat_back_dim.1.weight" in msg and "concat_back_dim.2.bias" in msg
    assert "concat_back_dim.3" not in msg  # the 1/4 skip exists in both
    assert "num_skips=1" in msg


def test_official_other_in_chans(default_model):
    msg = _load_error(default_model, ref.build_official(224, in_chans=1).state_dict())
    assert "patch_embed.proj.weight: checkpoint (96, 1, 4, 4) vs model (96, 3, 4, 4)" in msg
    assert "input_channels=1" in msg


def test_official_extra_and_missing_keys(default_model, official224):
    sd = prefixed(official224[0], "swin_unet.")
    extra = {**sd, "swin_unet.aux_classifier.weight": torch.zeros(3)}
    msg = _load_error(default_model, extra)
    assert "swin_unet.aux_classifier.weight" in msg
    assert msg.count("\n") == 1  # exactly one mismatch listed
    missing = {k: v for k, v in sd.items() if k != "swin_unet.layers.1.blocks.0.attn.qkv.weight"}
    msg = _load_error(default_model, missing)
    assert "layers.1.blocks.0.attn.qkv.weight" in msg and "missing" in msg
    assert msg.count("\n") == 1


class _Payload:
    """Unpickling this creates a directory: a stand-in for code execution."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("payload", ["function", "instance"])
@pytest.mark.parametrize("loader", [load_official_checkpoint, load_pretrained_encoder])
def test_pickled_code_is_refused(default_model, tmp_path, payload, loader):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"x": os.system} if payload == "function" else {"model": _Payload(str(marker))}, path)
    refused = r"holds Python objects besides tensors and plain data \(posix\.(system|mkdir)\); they are not unpickled"
    with pytest.raises(WeightLoadError, match=refused) as err:
        loader(default_model, path)
    assert not marker.exists() and "weights_only=False" not in str(err.value)


def test_missing_file(default_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_official_checkpoint(default_model, tmp_path / "nope.pth")


# ----------------------------------------------------------------------------------------------------
# 3. ImageNet encoders (timm and Microsoft layouts)


def timm_features(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Skips at 1/4, 1/8, 1/16 and the bottleneck of timm's Swin, NCHW. timm runs NHWC and merges
    at the start of the next stage, so a skip (the input of our stage i) is timm's merge output."""
    with torch.no_grad():
        s0 = model.patch_embed(x)
        s1 = model.layers[1].downsample(model.layers[0](s0))
        s2 = model.layers[2].downsample(model.layers[1].blocks(s1))
        bottleneck = model.norm(model.layers[3](model.layers[2].blocks(s2)))
    return [t.permute(0, 3, 1, 2) for t in (s0, s1, s2, bottleneck)]


@pytest.fixture(scope="module")
def swin_t():
    model = randomise_(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False), seed=3).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(13))
    return model, x, timm_features(model, x)


def to_microsoft(timm_model: nn.Module) -> dict:
    """timm layout -> the Microsoft release layout: merging at the end of a stage, ``head.*``, persisted buffers."""
    sd = {}
    for k, v in timm_model.state_dict().items():
        k = re.sub(r"^layers\.(\d)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", k)
        sd[re.sub(r"^head\.fc\.", "head.", k)] = v.clone()
    for name, module in timm_model.named_modules():
        if re.fullmatch(r"layers\.\d\.blocks\.\d+", name):
            sd[f"{name}.attn.relative_position_index"] = module.attn.relative_position_index.clone()
            if module.attn_mask is not None:
                sd[f"{name}.attn_mask"] = module.attn_mask.clone()
    return sd


@pytest.fixture(scope="module")
def sources(swin_t, tmp_path_factory):
    timm_sd = {k: v.clone() for k, v in swin_t[0].state_dict().items()}
    ms = to_microsoft(swin_t[0])
    assert "layers.0.downsample.reduction.weight" in ms and "head.weight" in ms and "layers.3.downsample.norm.bias" not in ms
    assert any(k.endswith("attn_mask") for k in ms)
    path = tmp_path_factory.mktemp("ms") / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": ms}, path)
    return {"timm": (timm_sd, timm_sd), "microsoft": (str(path), ms)}


def timm_name(key: str, layout: str) -> str:
    if layout == "microsoft":
        key = re.sub(r"^layers\.(\d)\.downsample\.", lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", key)
        key = re.sub(r"^head\.", "head.fc.", key)
    return key


def our_name(timm_key: str) -> str | None:
    if timm_key.startswith("head."):
        return None
    if m := re.match(r"layers\.(\d)\.downsample\.(.*)", timm_key):
        return f"encoder.stages.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
    if m := re.match(r"layers\.(\d)\.(blocks\..*)", timm_key):
        return f"encoder.stages.{m.group(1)}.{m.group(2)}"
    return "encoder." + timm_key


def mirrored(key: str) -> str | None:
    m = re.match(r"encoder\.stages\.(\d)\.(blocks\..*)", key)
    return f"decoder.stages.{3 - int(m.group(1))}.{m.group(2)}" if m else None


@pytest.mark.parametrize("layout", ["timm", "microsoft"])
def test_imagenet_encoder_features_and_report(swin_t, sources, layout):
    _, x, feats = swin_t
    source, sd = sources[layout]
    model = SwinUnet(3, 9).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_pretrained_encoder(model, source)
    with torch.no_grad():
        ours = model.encoder(x)
    for scale, (a, b) in enumerate(zip(ours[:3], feats[:3])):
        assert a.shape == b.shape == (1, 96 * 2**scale, 56 // 2**scale, 56 // 2**scale)
        assert rel_err(a, b) < 1e-5, f"skip at 1/{4 * 2**scale}"

    state = model.state_dict()
    loaded, adapted, random = set(report.loaded), set(report.adapted), set(report.random)
    assert not (loaded & adapted or loaded & random or adapted & random)
    assert loaded | adapted | random == set(state)

    # every source tensor is loaded (with its value) or ignored with a reason
    extra_blocks = {k for k in sd if re.match(r"layers\.2\.blocks\.[2-5]\.", k)}
    assert len(extra_blocks) == 4 * (13 + (layout == "microsoft") * 1) + (layout == "microsoft") * 2  # + index, 2 masks
    for k, v in sd.items():
        t = timm_name(k, layout)
        if k in report.ignored or t in report.ignored:
            continue
        target = our_name(t)
        assert target in loaded, f"source {k} neither loaded nor ignored"
        assert torch.equal(state[target], v), target
    ignored = set(report.ignored)
    assert {k for k in extra_blocks if not k.endswith(BUFFERS)} <= ignored  # Swin-T blocks 2-5 of stage 2
    assert "head.fc.weight" in ignored or "head.weight" in ignored
    for k in ignored:
        assert k.endswith(BUFFERS) or k.startswith("head.") or k in extra_blocks, f"{k} ignored"

    # decoder blocks mirror the encoder (encoder stage i -> decoder stage 3 - i), as separate tensors
    decoder_blocks = [k for k in state if re.match(r"decoder\.stages\.\d\.blocks\.", k)]
    assert len(decoder_blocks) == 3 * 2 * 13
    for k in decoder_blocks:
        source_key = next(e for e in state if mirrored(e) == k)
        assert torch.equal(state[k], state[source_key]) and not torch.equal(state[k], before[k])
        assert "mirrored" in report.adapted[k]
    assert model.decoder.stages[1].blocks[0].attn.qkv.weight.data_ptr() != \
        model.encoder.stages[2].blocks[0].attn.qkv.weight.data_ptr()

    # fusion, expand, norm and heads stay random: exactly those, and untouched
    expected_random = {k for k in state if k.startswith("decoder.") and k not in decoder_blocks}
    assert random == expected_random
    assert any(".fuse." in k for k in random) and any(".upsample." in k for k in random)
    assert {"decoder.final_expand.expand.weight", "decoder.seg_layers.0.weight", *AUX_HEADS} <= random
    for k in random:
        assert torch.equal(state[k], before[k]), k


@pytest.mark.parametrize("layout", ["timm", "timm_headless", "microsoft"])
def test_imagenet_report_names_source_keys(sources, layout):
    """``LoadReport.ignored`` is keyed by *source* key: a reader must find every name in the file."""
    source, sd = sources["timm" if layout == "timm_headless" else layout]
    if layout == "timm_headless":
        sd = source = {k: v for k, v in sd.items() if not k.startswith("head.")}
    report = load_pretrained_encoder(SwinUnet(3, 2, depths=(2, 2, 6, 2)), source)
    assert set(report.ignored) <= set(sd), sorted(set(report.ignored) - set(sd))


def test_report_text_never_calls_loaded_tensors_random(sources):
    """Each "random <pattern>" line of ``str(report)`` must cover only tensors that really stayed random
    (the decoder stages hold mirrored, i.e. loaded, blocks next to their random fuse/upsample layers)."""
    model = SwinUnet(3, 2)
    report = load_pretrained_encoder(model, sources["timm"][0])
    patterns = [line.split()[1] for line in str(report).splitlines() if line.startswith("  random ")]
    assert patterns
    for pattern in patterns:
        covered = fnmatch.filter(model.state_dict(), pattern)
        assert covered and set(covered) <= set(report.random), (pattern, sorted(set(covered) - set(report.random))[:3])


def test_patch_kernel_resampling_is_reported(sources):
    """A model with another patch size gets timm's resampled 4x4 kernel: that is an adaptation, not a plain load."""
    model = SwinUnet(3, 2, patch_size=2)
    report = load_pretrained_encoder(model, sources["timm"][0])
    assert model.encoder.patch_embed.proj.weight.shape == (96, 3, 2, 2)
    assert "encoder.patch_embed.proj.weight" not in report.loaded
    assert "encoder.patch_embed.proj.weight" in report.adapted


def test_imagenet_encoder_full_depth_bottleneck(swin_t, sources):
    _, x, feats = swin_t
    model = SwinUnet(3, 9, depths=(2, 2, 6, 2)).eval()
    report = load_pretrained_encoder(model, sources["timm"][0])
    with torch.no_grad():
        ours = model.encoder(x)
    assert ours[3].shape == (1, 768, 7, 7)
    for a, b in zip(ours, feats, strict=True):
        assert rel_err(a, b) < 1e-5
    assert set(report.ignored) == {"head.fc.weight", "head.fc.bias"}
    assert torch.equal(model.decoder.stages[1].blocks[5].mlp.fc1.weight, model.encoder.stages[2].blocks[5].mlp.fc1.weight)


# ----------------------------------------------------------------------------------------------------
# 4. adaptation: channels and window


def test_grayscale_patch_embedding_is_rgb_sum(swin_t, sources):
    timm_model, x, _ = swin_t
    gray = x[:, :1]
    model = SwinUnet(1, 2).eval()
    report = load_pretrained_encoder(model, sources["timm"][0])
    assert "3 -> 1" in report.adapted["encoder.patch_embed.proj.weight"]
    src = sources["timm"][0]["patch_embed.proj.weight"]
    assert torch.allclose(model.encoder.patch_embed.proj.weight, src.sum(1, keepdim=True))
    with torch.no_grad():
        ours = model.encoder(gray)
    for a, b in zip(ours[:3], timm_features(timm_model, gray.repeat(1, 3, 1, 1))[:3]):
        assert rel_err(a, b) < 1e-5


def test_multimodal_patch_embedding(sources):
    model = SwinUnet(4, 2)
    report = load_pretrained_encoder(model, sources["microsoft"][0])
    how = report.adapted["encoder.patch_embed.proj.weight"]
    assert "3 -> 4" in how
    src = sources["timm"][0]["patch_embed.proj.weight"]
    expected = torch.cat([src, src[:, :1]], 1) * 3 / 4  # timm: channels cycled R, G, B, R and rescaled
    assert torch.allclose(model.encoder.patch_embed.proj.weight, expected)
    assert torch.equal(model.encoder.patch_embed.proj.bias, sources["timm"][0]["patch_embed.proj.bias"])


def test_window_8_resizes_bias_tables(sources):
    sd = sources["timm"][0]
    model = SwinUnet(3, 2, window_size=8)
    report = load_pretrained_encoder(model, sd)
    state = model.state_dict()
    for i, heads in enumerate((3, 6, 12, 24)):
        for j in range(2):
            key = f"encoder.stages.{i}.blocks.{j}.attn.relative_position_bias_table"
            assert state[key].shape == (225, heads)
            assert "resize" in report.adapted[key] and "(169" in report.adapted[key]
            src = sd[f"layers.{i}.blocks.{j}.attn.relative_position_bias_table"]
            assert torch.allclose(state[key], resize_rel_pos_bias_table(src, (8, 8), (225, heads)))
            if i < 3:
                mirror = f"decoder.stages.{3 - i}.blocks.{j}.attn.relative_position_bias_table"
                assert torch.equal(state[mirror], state[key]) and "resize" in report.adapted[mirror]
    # the centre of the resized table (offset 0) stays close to the source's centre
    src0 = sd["layers.0.blocks.0.attn.relative_position_bias_table"]
    assert torch.allclose(state["encoder.stages.0.blocks.0.attn.relative_position_bias_table"][112], src0[84], atol=0.3)
    assert torch.equal(state["encoder.stages.0.blocks.0.attn.qkv.weight"], sd["layers.0.blocks.0.attn.qkv.weight"])


# ----------------------------------------------------------------------------------------------------
# 5. timm model names


def test_timm_name_offline_says_how_to_get_weights(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub

    # huggingface_hub reads HF_HUB_OFFLINE once, at import: setenv alone would not switch an imported hub
    # offline, so the module constant is patched as well (is_offline_mode() reads it at call time)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    assert hub.is_offline_mode()
    with pytest.raises(FileNotFoundError) as info:
        load_pretrained_encoder(SwinUnet(3, 2), "swin_tiny_patch4_window7_224.ms_in1k")
    msg = str(info.value)
    assert "swin_tiny_patch4_window7_224.ms_in1k" in msg
    assert "cache" in msg and "swin_tiny_patch4_window7_224.pth" in msg and "path" in msg


def test_neither_file_nor_timm_name(tmp_path):
    for source in ("not_a_swin_model_anywhere", tmp_path / "missing.pth"):
        with pytest.raises(FileNotFoundError, match="neither a file nor a timm model name"):
            load_pretrained_encoder(SwinUnet(3, 2), source)


# ----------------------------------------------------------------------------------------------------
# 6. round trip


def test_state_dict_round_trip_with_and_without_deep_supervision(tmp_path):
    torch.manual_seed(0)
    small = dict(embed_dim=32, num_heads=(1, 2, 4, 8), drop_path_rate=0.0)  # the layout is what matters here
    model = randomise_(SwinUnet(3, 4, **small), seed=5).eval()
    keys = list(model.state_dict())
    assert not [k for k in keys if k.endswith(BUFFERS)]
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        y = model(x)
        model(torch.randn(1, 3, 96, 224))  # caches masks for other sizes: must not reach the state dict
        model.decoder.deep_supervision = True
        y_ds = model(x)
        model.decoder.deep_supervision = False
    assert list(model.state_dict()) == keys
    path = tmp_path / "swinunet.pth"
    torch.save(model.state_dict(), path)
    for deep_supervision in (False, True):
        fresh = SwinUnet(3, 4, deep_supervision=deep_supervision, **small).eval()
        assert list(fresh.state_dict()) == keys
        fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
        with torch.no_grad():
            out = fresh(x)
        if deep_supervision:
            assert [o.shape[2:] for o in out] == [(64, 96), (16, 24), (8, 12), (4, 6)]
            assert all(torch.equal(a, b) for a, b in zip(out, y_ds, strict=True))
            assert torch.equal(out[0], y)
        else:
            assert torch.equal(out, y)


# ----------------------------------------------------------------------------------------------------
# 7. ImageNet initialisation in 3D: 2D weights inflated along depth (the first axis)

ANISO = dict(spatial_dims=3, patch_size=(2, 4, 4), merge_strides=[(2, 2, 2), (1, 2, 2), (2, 2, 2)],
             window_size=(3, 7, 7))  # depth: tokens 8, 4, 4, 2 at window 3 (padded and shifted at 8)


def depth_constant(x: torch.Tensor, depth: int) -> torch.Tensor:
    return x[:, :, None].expand(-1, -1, depth, -1, -1).contiguous()


@pytest.mark.parametrize("layout", ["timm", "microsoft"])
def test_3d_inflation_reproduces_2d_encoder_on_depth_constant_volume(sources, layout):
    """Every encoder feature of the inflated 3D model on a volume constant along depth is the 2D model's
    feature of that image on every slice: patch embedding, the Swin blocks (in-plane windows padded and
    shifted at 64x64, depth windows of 3 padded and shifted at 8 tokens), mergings with depth stride 2 and 1,
    and the bottleneck norm."""
    source = sources[layout][0]
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(15))
    model2d, model3d = SwinUnet(3, 2).eval(), SwinUnet(3, 2, **ANISO).eval()
    load_pretrained_encoder(model2d, source)
    report = load_pretrained_encoder(model3d, source)
    with torch.no_grad():
        flat, volume = model2d.encoder(x), model3d.encoder(depth_constant(x, 16))
    assert [tuple(f.shape[2:]) for f in volume] == [(8, 16, 16), (4, 8, 8), (4, 4, 4), (2, 2, 2)]
    for scale, (a, b) in enumerate(zip(flat, volume, strict=True)):
        assert rel_err(b, depth_constant(a, b.shape[2])) < 1e-5, f"feature {scale}"
    assert any("inflated along depth" in n and "[2, 1, 2]" in n for n in report.notes)


def test_3d_inflated_tensors_and_report(sources):
    sd = sources["timm"][0]
    model = SwinUnet(3, 2, **ANISO)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_pretrained_encoder(model, sd)
    state = model.state_dict()

    kernel = state["encoder.patch_embed.proj.weight"]
    assert kernel.shape == (96, 3, 2, 4, 4)
    assert torch.allclose(kernel[:, :, 0], sd["patch_embed.proj.weight"] / 2)
    assert torch.equal(kernel[:, :, 0], kernel[:, :, 1])

    tables = [k for k in state if k.endswith("relative_position_bias_table")]
    assert len(tables) == 8 + 6  # encoder blocks and their decoder mirrors
    for key in tables:
        m = re.match(r"(encoder|decoder)\.stages\.(\d)\.(blocks\.\d)\.", key)
        stage = int(m.group(2)) if m.group(1) == "encoder" else 3 - int(m.group(2))
        src = sd[f"layers.{stage}.{m.group(3)}.attn.relative_position_bias_table"]
        assert state[key].shape == (5 * 169, src.shape[1])  # (2*3 - 1) depth offsets x (2*7 - 1)^2
        per_offset = state[key].view(5, 169, -1)
        assert torch.equal(per_offset[2], src)  # depth offset 0 is the centre: the 2D table
        assert all(torch.equal(t, src) for t in per_offset)
        assert "inflated" in report.adapted[key] and "5 depth offsets" in report.adapted[key]
    # the merging's channel blocks run depth offset fastest: (d, h, w) = (0,0,0), (1,0,0), (0,1,0), ...
    c = 96
    norm = state["encoder.stages.0.downsample.norm.weight"].view(4, 2, c)
    reduction = state["encoder.stages.0.downsample.reduction.weight"].view(2 * c, 4, 2, c)
    src_norm = sd["layers.1.downsample.norm.weight"].view(4, c)
    src_reduction = sd["layers.1.downsample.reduction.weight"].view(2 * c, 4, c)
    assert torch.equal(norm[:, 0], src_norm) and torch.equal(norm[:, 1], src_norm)
    assert torch.allclose(reduction[:, :, 0], src_reduction / 2) and torch.equal(reduction[:, :, 0], reduction[:, :, 1])
    assert torch.allclose(reduction.sum(2), src_reduction)  # a depth-constant group gives the 2D result
    # depth stride 1: the 3D group is the 2D one, loaded unchanged
    assert torch.equal(state["encoder.stages.1.downsample.reduction.weight"],
                       sd["layers.2.downsample.reduction.weight"])
    assert "encoder.stages.1.downsample.reduction.weight" in report.loaded

    inflated = {k for k, how in report.adapted.items() if "inflated" in how}
    merges = {f"encoder.stages.{i}.downsample.{t}"
              for i in (0, 2) for t in ("norm.weight", "norm.bias", "reduction.weight")}
    assert inflated == {"encoder.patch_embed.proj.weight", *tables, *merges}
    # per-token tensors are the 2D ones; the decoder mirrors the encoder; the rest kept its initialisation
    assert torch.equal(state["encoder.stages.2.blocks.1.mlp.fc1.weight"], sd["layers.2.blocks.1.mlp.fc1.weight"])
    assert torch.equal(state["decoder.stages.1.blocks.1.attn.qkv.weight"], sd["layers.2.blocks.1.attn.qkv.weight"])
    assert torch.equal(state["encoder.norm.weight"], sd["norm.weight"])
    assert set(report.random) == {k for k in state if k.startswith("decoder.") and ".blocks." not in k}
    assert all(torch.equal(state[k], before[k]) for k in report.random)
    assert set(report.ignored) == {"head.fc.weight", "head.fc.bias"} | {
        k for k in sd if re.match(r"layers\.2\.blocks\.[2-5]\.", k)}


def test_3d_in_plane_resampling_and_grayscale(sources):
    """In-plane patch 2 and window 8 go through timm's resampling first, then the inflation; one input channel
    is the RGB sum, inflated."""
    sd = sources["timm"][0]
    model = SwinUnet(1, 2, spatial_dims=3, patch_size=(1, 2, 2), merge_strides=[(1, 2, 2)] * 3, window_size=(2, 8, 8))
    report = load_pretrained_encoder(model, sd)
    state = model.state_dict()
    key = "encoder.stages.1.blocks.0.attn.relative_position_bias_table"
    resized = resize_rel_pos_bias_table(sd["layers.1.blocks.0.attn.relative_position_bias_table"], (8, 8), (225, 6))
    assert state[key].shape == (3 * 225, 6)
    assert torch.allclose(state[key].view(3, 225, 6)[1], resized)
    assert "resized (169, 6) -> (225, 6)" in report.adapted[key] and "inflated" in report.adapted[key]
    kernel = state["encoder.patch_embed.proj.weight"]
    assert kernel.shape == (96, 1, 1, 2, 2)
    how = report.adapted["encoder.patch_embed.proj.weight"]
    assert "(4, 4) -> (2, 2)" in how and "3 -> 1 input channels" in how and "depth 1" in how
    assert not any(".downsample." in k and "inflated" in text for k, text in report.adapted.items())  # depth stride 1


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_merging_without_in_plane_counterpart_stays_random(sources, spatial_dims):
    """A plan with few poolings gives mergings of stride 1 in-plane (hippocampus: [2,2,2], [1,1,1], [1,1,1]);
    a 2x2 merging has no faithful counterpart there: reported ignored with the reason, kept at initialisation,
    and the features before it still match the 2D model."""
    sd = sources["microsoft"][1]
    model = SwinUnet(3, 2, spatial_dims=spatial_dims, patch_size=4, window_size=7,
                     merge_strides=[(2,) * spatial_dims, (1,) * spatial_dims, (1,) * spatial_dims]).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_pretrained_encoder(model, sources["microsoft"][0])
    for stage in (1, 2):
        for t in ("norm.weight", "norm.bias", "reduction.weight"):
            assert f"layers.{stage}.downsample.{t}" in sd
            assert "not 2x2 in-plane" in report.ignored[f"layers.{stage}.downsample.{t}"]
            ours = f"encoder.stages.{stage}.downsample.{t}"
            assert ours in report.random and torch.equal(model.state_dict()[ours], before[ours])
    assert "encoder.stages.0.downsample.reduction.weight" in report.loaded + list(report.adapted)
    model2d = SwinUnet(3, 2).eval()
    load_pretrained_encoder(model2d, sources["microsoft"][0])
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(16))
    with torch.no_grad():
        flat = model2d.encoder(x)[:2]
        ours = model.encoder(x if spatial_dims == 2 else depth_constant(x, 8))[:2]
    for a, b in zip(flat, ours):
        assert rel_err(b, a if spatial_dims == 2 else depth_constant(a, b.shape[2])) < 1e-5


def _official_keys(img_size: int, depths: tuple[int, ...] = (2, 2, 2, 2), window: int = 7) -> list[str]:
    """The official checkpoint's keys in state-dict order, generated from their patterns."""
    block = ["norm1.weight", "norm1.bias", "attn.relative_position_bias_table", "attn.relative_position_index",
             "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias", "norm2.weight",
             "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]

    def stage(prefix: str, depth: int, res: int) -> list[str]:
        out = []
        for j in range(depth):
            if j % 2 == 1 and res > window:
                out.append(f"{prefix}.blocks.{j}.attn_mask")
            out += [f"{prefix}.blocks.{j}.{k}" for k in block]
        return out

    r = img_size // 4
    keys = ["patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight", "patch_embed.norm.bias"]
    for i in range(4):
        keys += stage(f"layers.{i}", depths[i], r // 2 ** i)
        if i < 3:
            keys += [f"layers.{i}.downsample.{k}" for k in ("reduction.weight", "norm.weight", "norm.bias")]
    keys += ["layers_up.0.expand.weight", "layers_up.0.norm.weight", "layers_up.0.norm.bias"]
    for i in range(1, 4):
        keys += stage(f"layers_up.{i}", depths[3 - i], r // 2 ** (3 - i))
        if i < 3:
            keys += [f"layers_up.{i}.upsample.{k}" for k in ("expand.weight", "norm.weight", "norm.bias")]
    keys += [f"concat_back_dim.{i}.{k}" for i in range(1, 4) for k in ("weight", "bias")]
    keys += ["norm.weight", "norm.bias", "norm_up.weight", "norm_up.bias", "up.expand.weight", "up.norm.weight",
             "up.norm.bias", "output.weight"]
    return keys


@pytest.mark.parametrize("img_size", [224, 448])
def test_reference_model_has_the_official_checkpoint_layout(img_size):
    """The reference's keys in the official order, its parameter counts per module and the sample shapes of
    the official Swin-T Synapse checkpoint, so official weights load into it strictly."""
    model = ref.build_official(img_size)
    sd = model.state_dict()
    assert list(sd.keys()) == _official_keys(img_size)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 27_168_900, n_params
    assert not list(model.concat_back_dim[0].parameters())
    if img_size == 224:
        assert len(sd) == 238 and len(sd) - len(list(model.parameters())) == 20
        samples = {  # the official checkpoint's shapes
            "patch_embed.proj.weight": (96, 3, 4, 4), "layers.0.blocks.1.attn_mask": (64, 49, 49),
            "layers.1.blocks.1.attn_mask": (16, 49, 49), "layers.2.blocks.1.attn_mask": (4, 49, 49),
            "layers.0.blocks.0.attn.relative_position_bias_table": (169, 3),
            "layers.3.blocks.1.attn.relative_position_index": (49, 49),
            "layers.3.blocks.1.attn.qkv.weight": (2304, 768),
            "layers.2.downsample.reduction.weight": (768, 1536), "layers.1.downsample.norm.weight": (768,),
            "layers_up.0.expand.weight": (1536, 768), "layers_up.0.norm.weight": (384,),
            "layers_up.1.upsample.expand.weight": (768, 384), "layers_up.2.upsample.norm.bias": (96,),
            "layers_up.3.blocks.1.attn_mask": (64, 49, 49), "layers_up.1.blocks.1.attn_mask": (4, 49, 49),
            "concat_back_dim.1.weight": (384, 768), "concat_back_dim.3.bias": (96,),
            "up.expand.weight": (1536, 96), "output.weight": (9, 96, 1, 1), "norm.weight": (768,),
        }
        for k, shape in samples.items():
            assert tuple(sd[k].shape) == shape, (k, tuple(sd[k].shape), shape)
        per_module = {"patch_embed": 4_896, "layers.0": 299_190, "layers.1": 1_188_204, "layers.2": 4_735_704,
                      "layers.3": 14_183_856, "layers_up.0": 1_180_416, "layers_up.1": 3_848_280,
                      "layers_up.2": 965_676, "layers_up.3": 224_694, "concat_back_dim.1": 295_296,
                      "concat_back_dim.2": 73_920, "concat_back_dim.3": 18_528, "norm": 1_536, "norm_up": 192,
                      "up": 147_648, "output": 864}
        for name, n in per_module.items():
            got = sum(p.numel() for p in model.get_submodule(name).parameters())
            assert got == n, (name, got, n)
        n1 = sum(p.numel() for p in ref.build_official(224, in_chans=1).parameters())
        assert n1 == 27_165_828, n1
    blocks = [b for b in model.modules() if isinstance(b, ref.SwinBlock)]
    assert len(blocks) == 14
    for b in blocks:
        assert b.attn.relative_position_index.dtype == torch.int64
        if b.attn_mask is not None:
            assert set(b.attn_mask.unique().tolist()) <= {0.0, -100.0}


@pytest.mark.parametrize("content, message", [
    (b"", "is not a checkpoint: it is empty (0 bytes)"),
    (b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>", "it is an HTML page, not weights"),
    (b"  <html lang='en'><body>404</body></html>", "it is an HTML page, not weights"),
    (b"Access denied\n", "it is a text file beginning 'Access denied\\n'"),
    ("truncated", "is not a readable PyTorch checkpoint (truncated or corrupt"),
])
@pytest.mark.parametrize("loader", [load_official_checkpoint, load_pretrained_encoder])
def test_a_file_that_is_not_a_checkpoint_says_what_it_is(tmp_path, content, message, loader):
    path = tmp_path / "weights.pth"
    if content == "truncated":
        torch.save({"w": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:600])
    else:
        path.write_bytes(content)
    with pytest.raises(WeightLoadError, match=re.escape(message)) as err:
        loader(SwinUnet(1, 2, **SMALL), path)
    assert "weights_only=False" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="no checkpoint file at"):
        load_official_checkpoint(SwinUnet(1, 2, **SMALL), tmp_path / "missing.pth")


def _nnunet_checkpoint(weights: dict, trainer: str) -> dict:
    """What nnU-Net's trainer saves as checkpoint_final.pth: the weights and, beside them, numpy values."""
    return {"network_weights": weights, "optimizer_state": {"state": {}, "param_groups": []},
            "grad_scaler_state": None, "logging": {"mean_fg_dice": [np.float64(0.5)], "lrs": [0.01],
                                                   "train_losses": [np.array(0.3, dtype=np.float32)]},
            "_best_ema": np.float64(0.4), "current_epoch": 7, "init_args": {"configuration": "2d", "fold": 0},
            "trainer_name": trainer, "inference_allowed_mirroring_axes": (0, 1)}


def test_own_layout_and_nnunet_checkpoints_are_recognised(tmp_path):
    """A SwinUnet state dict, bare or as the network weights of nnU-Net's checkpoint_final.pth, loads as it
    is; the ImageNet loader says what it is and which function loads it; an nnU-Net checkpoint of another
    network says so."""
    trained = SwinUnet(1, 2, **SMALL)
    bare, final = tmp_path / "swinunet.pth", tmp_path / "checkpoint_final.pth"
    torch.save(trained.state_dict(), bare)
    torch.save(_nnunet_checkpoint(trained.state_dict(), "nnUNetTrainerSwinUnet"), final)
    for path in (bare, final):
        model = SwinUnet(1, 2, **SMALL)
        report = load_official_checkpoint(model, path)
        assert all(torch.equal(v, trained.state_dict()[k]) for k, v in model.state_dict().items())
        assert "already in SwinUnet's layout: loaded as it is" in report.notes[0]
        with pytest.raises(WeightLoadError, match="already in SwinUnet's layout.*nnunet_swin.load_official_checkpoint"):
            load_pretrained_encoder(model, path)
    assert "an nnU-Net checkpoint of nnUNetTrainerSwinUnet, epoch 7" in load_official_checkpoint(model, final).notes[0]
    from safetensors.torch import save_file  # the format of timm's and Hugging Face's weight files

    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, tmp_path / "swinunet.safetensors")
    model = SwinUnet(1, 2, **SMALL)
    load_official_checkpoint(model, tmp_path / "swinunet.safetensors")
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(WeightLoadError, match="does not fit this model"):
        load_official_checkpoint(SwinUnet(1, 3, **SMALL), final)
    cnn = tmp_path / "cnn.pth"
    torch.save(_nnunet_checkpoint({"encoder.stages.0.0.convs.0.conv.weight": torch.zeros(2, 1, 3, 3)},
                                  "nnUNetTrainer"), cnn)
    for loader in (load_official_checkpoint, load_pretrained_encoder):
        with pytest.raises(WeightLoadError, match="nnUNetTrainer, epoch 7\\) holds a network that is not a Swin-Unet"):
            loader(SwinUnet(1, 2, **SMALL), cnn)


def test_a_timm_name_that_is_not_swin_is_refused_before_any_download(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("timm.create_model must not be called for a non-Swin name")

    monkeypatch.setattr(timm, "create_model", no_download)
    with pytest.raises(WeightLoadError, match="'resnet50' is not a Swin Transformer.*swin_tiny_patch4_window7_224"):
        load_pretrained_encoder(SwinUnet(1, 2, **SMALL), "resnet50")


def test_without_safe_globals_an_nnunet_checkpoint_is_refused_by_name(tmp_path, monkeypatch):
    """torch 2.4 has no ``safe_globals``: plain state dicts still load, and nnU-Net's checkpoint, whose numpy
    values that torch cannot allow, is refused with the names of what it holds."""
    monkeypatch.delattr(torch.serialization, "safe_globals")
    trained = SwinUnet(1, 2, **SMALL)
    torch.save(trained.state_dict(), tmp_path / "bare.pth")
    load_official_checkpoint(SwinUnet(1, 2, **SMALL), tmp_path / "bare.pth")
    torch.save(_nnunet_checkpoint(trained.state_dict(), "nnUNetTrainerSwinUnet"), tmp_path / "final.pth")
    with pytest.raises(WeightLoadError, match=r"holds Python objects besides tensors and plain data \(numpy\."):
        load_official_checkpoint(SwinUnet(1, 2, **SMALL), tmp_path / "final.pth")
