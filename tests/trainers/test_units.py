"""In-process checks of the trainer recipe (no nnU-Net subprocess): every plugin trainer builds the
network inference would build, in 2D and from anisotropic 3D plans, patch rounding per axis, deep-supervision
scales, the memory estimate, errors for configurations a network cannot take, the LR schedule, non-finite
steps."""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest
import torch

from nnunet_swin.trainers import (
    TRAINERS,
    AbstractSwinUnetTrainer,
    UnsupportedConfigurationError,
    WarmupPolyLRScheduler,
    deep_supervision_scales,
    nnUNetTrainerSwinUnet,
    round_patch_size,
)

#: nnU-Net's pooling for a prostate-like plan: in-plane only at first (3.6 mm slices), then isotropic.
ANISOTROPIC_POOL = [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]


def _arch(pool) -> dict:
    return {"network_class_name": "x", "arch_kwargs": {"strides": pool}, "_kw_requires_import": []}


def _plans(patch=(112, 80), patch_3d=(20, 320, 256), pool_3d=ANISOTROPIC_POOL, with_3d=True):
    configs = {"2d": {"data_identifier": "nnUNetPlans_2d", "patch_size": list(patch), "batch_size": 2,
                      "spacing": [1.0, 1.0], "architecture": _arch([[1, 1], [2, 2]])}}
    if with_3d:
        configs["3d_fullres"] = {"data_identifier": "nnUNetPlans_3d_fullres", "patch_size": list(patch_3d),
                                 "batch_size": 2, "spacing": [3.6, 0.62, 0.62], "architecture": _arch(pool_3d)}
        configs["3d_lowres"] = {"inherits_from": "3d_fullres", "data_identifier": "lowres"}
    return {"dataset_name": "Dataset990_X", "plans_name": "nnUNetPlans", "configurations": configs,
            "continue_training": False}


def _managers(plans: dict, configuration: str):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    return pm, pm.get_configuration(configuration)


def test_round_patch_size_never_smaller():
    assert round_patch_size([112, 80], 32) == [128, 96]
    assert round_patch_size([512, 448], 32) == [512, 448]
    assert round_patch_size([33, 1], 32) == [64, 32]
    assert round_patch_size([20, 321, 256], [4, 32, 32]) == [20, 352, 256]  # per axis
    assert round_patch_size([3, 17, 16], (2, 8, 8)) == [4, 24, 16]


def test_nnunet_keeps_the_plans_dict_but_copies_the_configuration():
    """What the docstrings say: PlansManager keeps the dict itself (plans.json is written from it), while
    get_configuration deep-copies the configuration and caches it, so the patch must be edited first."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = _plans()
    pm = PlansManager(plans)
    assert pm.plans is plans
    cm = pm.get_configuration("2d")
    plans["configurations"]["2d"]["patch_size"] = [128, 96]
    assert list(cm.patch_size) == [112, 80] and pm.get_configuration("2d") is cm


def test_plans_edited_before_nnunet_reads_the_configuration():
    plans = _plans()
    note = AbstractSwinUnetTrainer._adapt_plans_for_swin(plans, "2d")
    assert plans["configurations"]["2d"]["patch_size"] == [128, 96]
    assert "[112, 80]" in note and "[128, 96]" in note
    again = copy.deepcopy(plans)
    assert "kept" in AbstractSwinUnetTrainer._adapt_plans_for_swin(again, "2d")  # idempotent (--c, --val)
    assert again == plans


# --- 3D: the network from the plan ------------------------------------------------------------------
def test_3d_network_options_from_the_plan():
    """3D defaults < the plan's strides < the trainer's network_options; 2D ignores both 3D sources."""
    pm, cm = _managers(_plans(), "3d_fullres")
    kwargs = nnUNetTrainerSwinUnet.network_kwargs(cm)
    assert kwargs == {"num_skips": 3, "upsampling": "patch_expand", **nnUNetTrainerSwinUnet.network_options_3d,
                      "patch_size": [1, 4, 4], "merge_strides": [[2, 2, 2], [2, 2, 2], [1, 2, 2]], "spatial_dims": 3,
                      "window_size": [7, 7, 7]}  # a 20x80x64 first stage: window 7 pads each axis by <= 10 %
    assert kwargs["embed_dim"] == 48 and kwargs["gradient_checkpointing"] is True

    user = type("User", (nnUNetTrainerSwinUnet,), {"network_options": {"embed_dim": 24, "merge_strides": [2, 2, 2]}})
    kwargs = user.network_kwargs(cm)
    assert kwargs["embed_dim"] == 24 and kwargs["merge_strides"] == [2, 2, 2]  # the user's options win
    assert kwargs["patch_size"] == [1, 4, 4] and kwargs["gradient_checkpointing"] is True  # the rest stays

    # hippocampus-like: isotropic pooling embeds 4x4x4; window 7 would pad a 10x14x10 first stage to 14^3
    _, hippo = _managers(_plans(patch_3d=(40, 56, 40), pool_3d=[[1, 1, 1]] + [[2, 2, 2]] * 4), "3d_fullres")
    kwargs = nnUNetTrainerSwinUnet.network_kwargs(hippo)
    assert kwargs["patch_size"] == [4, 4, 4] and kwargs["window_size"] == [5, 7, 5]
    own = type("Own", (nnUNetTrainerSwinUnet,), {"network_options": {"window_size": 7, "patch_size": 2}})
    assert own.network_kwargs(hippo)["window_size"] == 7  # set by the user: not fitted
    assert type("P", (nnUNetTrainerSwinUnet,), {"network_options": {"patch_size": 2}}).network_kwargs(hippo)[
        "window_size"] == [7, 7, 7]  # fitted to the user's embedding: a 20x28x20 first stage

    _, cm2d = _managers(_plans(), "2d")
    assert nnUNetTrainerSwinUnet.network_kwargs(cm2d) == {"num_skips": 3, "upsampling": "patch_expand",
                                                          "spatial_dims": 2}


@pytest.mark.parametrize("cfg", ["3d_fullres", "3d_lowres"])
def test_3d_plan_kept_when_the_networks_multiple_divides_it(results_env, cfg):
    plans = _plans()
    note = nnUNetTrainerSwinUnet._adapt_plans_for_swin(plans, cfg)
    assert "[20, 320, 256] is already a multiple of [4, 32, 32] per axis; kept" in note
    assert nnUNetTrainerSwinUnet._network_options(*_managers(plans, cfg)).size_multiple == (4, 32, 32)
    trainer = nnUNetTrainerSwinUnet(plans, cfg, 0, {"labels": {"background": 0, "a": 1}}, torch.device("cpu"))
    assert list(trainer.configuration_manager.patch_size) == [20, 320, 256]


def test_3d_patch_rounded_per_axis_to_the_users_strides(results_env):
    """Isotropic strides set by the user on an anisotropic plan: each axis is rounded to its own multiple,
    in the plans dict, before nnU-Net's ConfigurationManager exists."""
    iso = type("Iso", (nnUNetTrainerSwinUnet,), {"network_options": {"patch_size": 2, "merge_strides": [2, 2, 1]}})
    plans = _plans(patch_3d=(20, 40, 56))
    assert iso._network_options(*_managers(plans, "3d_fullres")).size_multiple == (8, 8, 8)
    note = iso._adapt_plans_for_swin(plans, "3d_fullres")
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [24, 40, 56]
    assert "changed from the planned [20, 40, 56] to [24, 40, 56]" in note and "divisible by [8, 8, 8]" in note
    trainer = iso(plans, "3d_lowres", 0, {"labels": {"background": 0, "a": 1}}, torch.device("cpu"))
    assert list(trainer.configuration_manager.patch_size) == [24, 40, 56]  # lowres inherits the rounded patch


def test_deep_supervision_scales_of_an_anisotropic_plan():
    """The plan's pooling [1,2,2] x [1,2,2] embeds [1, 4, 4]; the mergings follow its next three steps."""
    plans = _plans(patch_3d=(8, 64, 64))
    pm, cm = _managers(plans, "3d_fullres")
    tiny = type("T", (nnUNetTrainerSwinUnet,), {"network_options": TINY, "deep_supervision": True})
    net = tiny.build_network_architecture(pm, cm, 1, 3, True)
    assert net.output_strides == ((1, 1, 1), (1, 4, 4), (2, 8, 8), (4, 16, 16))
    assert deep_supervision_scales(net.output_strides) == [[1.0, 1.0, 1.0], [1.0, 0.25, 0.25],
                                                           [0.5, 0.125, 0.125], [0.25, 0.0625, 0.0625]]
    with torch.no_grad():
        outs = net.eval()(torch.zeros(1, 1, 8, 64, 64))
    assert [tuple(o.shape[2:]) for o in outs] == [(8, 64, 64), (8, 16, 16), (4, 8, 8), (2, 4, 4)]
    # the coarsest head has loss weight 0 and is frozen, as in 2D (DDP finds no unused parameter)
    assert [h.weight.requires_grad for h in net.decoder.seg_layers] == [True, True, True, False]
    # a short plan (three poolings): missing steps are merges at the same resolution
    pm, cm = _managers(_plans(patch_3d=(8, 32, 32), pool_3d=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]),
                       "3d_fullres")
    assert tiny._network_options(pm, cm).output_strides == ((1, 1, 1), (2, 4, 4), (4, 8, 8), (4, 8, 8))


def test_configuration_the_network_cannot_take_names_those_that_work(results_env):
    bad = type("Bad", (nnUNetTrainerSwinUnet,), {"network_options": {"window_size": [7, 7]}})  # a 2D window
    with pytest.raises(UnsupportedConfigurationError) as err:
        bad(_plans(), "3d_fullres", 0, {"labels": {"background": 0, "a": 1}}, torch.device("cpu"))
    msg = str(err.value)
    assert "3D configuration with patch [20, 320, 256]" in msg and "window_size" in msg
    assert "Configurations of these plans it can train: 2d." in msg
    assert bad._configurations_that_work(_plans()) == ["2d"]
    assert nnUNetTrainerSwinUnet._configurations_that_work(_plans()) == ["2d", "3d_fullres", "3d_lowres"]



@pytest.mark.parametrize("attr, cfg", [("network_options", "2d"), ("network_options_3d", "3d_fullres")])
def test_misspelt_network_option_is_named_not_called_an_unsupported_configuration(results_env, attr, cfg):
    """A typo in a subclass's options stops the trainer at construction with the key, the attribute holding
    it and the closest valid name, not as a configuration the network cannot take."""
    from nnunet_swin.network import UnknownOptionError

    typo = type("Typo", (nnUNetTrainerSwinUnet,), {attr: {"window_sise": 8}})
    with pytest.raises(UnknownOptionError) as err:
        typo(_plans(), cfg, 0, {"labels": {"background": 0, "a": 1}}, torch.device("cpu"))
    msg = str(err.value)
    assert not isinstance(err.value, UnsupportedConfigurationError)
    assert msg.startswith(f"Typo.{attr}: unknown SwinUnet option 'window_sise' (did you mean 'window_size'?)")
    assert "options are: spatial_dims, patch_size" in msg
    with pytest.raises(UnknownOptionError, match="Typo.network_kwargs\\(\\): unknown SwinUnet option 'embed'"):
        type("Typo", (nnUNetTrainerSwinUnet,), {"network_kwargs": classmethod(lambda cls, cm=None: {"embed": 4})}
             ).build_network_architecture(*_managers(_plans(), "2d"), 1, 2, False)


TINY = dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))


def _fake_cm(patch):
    return _managers(_plans(patch, with_3d=False), "2d")


def _tiny(trainer):
    """A narrow copy: what is checked is that the variant's attributes reach the network, quickly."""
    return type(trainer.__name__, (trainer,), {"network_options": {**trainer.network_options, **TINY}})


@pytest.mark.parametrize("trainer", TRAINERS, ids=lambda t: t.__name__)
def test_every_plugin_trainer_builds_its_network(trainer):
    pm, cm = _fake_cm((64, 96))
    assert trainer.network_kwargs(cm).get("embed_dim", 96) == 96  # the paper's Swin-T unless a variant says
    trainer = _tiny(trainer)
    net = trainer.build_network_architecture(pm, cm, 1, 3, enable_deep_supervision=False)
    assert net.decoder.num_skips == trainer.num_skips
    expand = {"patch_expand": "PatchExpand", "bilinear": "BilinearExpand", "transposed_conv": "TransposedConvExpand"}
    assert type(net.decoder.final_expand).__name__ == expand[trainer.upsampling]
    assert not net.decoder.deep_supervision  # inference: plain logits
    with torch.no_grad():
        out = net.eval()(torch.zeros(1, 1, 64, 96))
    assert out.shape == (1, 3, 64, 96)
    # same state-dict keys whatever the DS flag: strict loading at inference works
    net_ds = trainer.build_network_architecture(pm, cm, 1, 3, enable_deep_supervision=True)
    assert net_ds.state_dict().keys() == net.state_dict().keys()


@pytest.mark.parametrize("trainer", TRAINERS, ids=lambda t: t.__name__)
def test_every_plugin_trainer_builds_its_3d_network_from_the_plan(trainer):
    pm, cm = _managers(_plans(patch_3d=(8, 64, 64)), "3d_fullres")
    trainer = _tiny(trainer)
    net = trainer.build_network_architecture(pm, cm, 2, 3, enable_deep_supervision=False)
    assert net.spatial_dims == 3 and net.size_multiple == (4, 32, 32) and net.decoder.num_skips == trainer.num_skips
    expand = {"patch_expand": "PatchExpand", "bilinear": "BilinearExpand", "transposed_conv": "TransposedConvExpand"}
    assert type(net.decoder.final_expand).__name__ == expand[trainer.upsampling]
    x = torch.randn(1, 2, 8, 64, 64)
    out = net.train()(x)
    assert out.shape == (1, 3, 8, 64, 64)
    out.square().mean().backward()
    assert all(p.grad is not None for n, p in net.named_parameters() if p.requires_grad)
    # nnUNetv2_predict rebuilds the same network from the class and plans: strict loading works
    again = trainer.build_network_architecture(pm, cm, 2, 3, enable_deep_supervision=True)
    again.load_state_dict(net.state_dict())


def test_unrounded_plans_rejected_at_build():
    pm, cm = _fake_cm((112, 80))
    with pytest.raises(ValueError, match=r"not divisible by the network's multiple \[32, 32\] per axis"):
        nnUNetTrainerSwinUnet.build_network_architecture(pm, cm, 1, 2, False)


def test_warmup_poly_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupPolyLRScheduler(opt, 3e-4, max_steps=100, warmup_steps=5)
    lrs = []
    for epoch in range(100):
        sched.step(epoch)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(3e-4 / 5) and lrs[4] == pytest.approx(3e-4)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] < 1e-5


# --- a real trainer on the session's preprocessed data, in this process -----------------------------
def _trainer(trainer, workspace, monkeypatch, device: str = "cpu"):
    """``trainer`` on the session's planned 2D data set (fold all), constructed."""
    import json

    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, workspace.env[k])
    pre = workspace.pre / "Dataset990_SwinSynthetic"
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False
    return trainer(plans, "2d", "all", json.loads((pre / "dataset.json").read_text()), torch.device(device))


def _initialized_trainer(trainer, workspace, monkeypatch):
    """``trainer`` on the session's planned 2D data set (fold all, CPU), initialised."""
    tr = _trainer(trainer, workspace, monkeypatch)
    tr.initialize()
    return tr


@pytest.fixture
def tiny_trainer_class(planned, workspace, monkeypatch):
    """A narrow 2D trainer with deep supervision, from the user folder the subprocess tests use."""
    import sys

    monkeypatch.syspath_prepend(str(workspace.user_ext))
    sys.modules.pop("user_trainers", None)
    import user_trainers

    return user_trainers.TestSwin_3skip_DS


@pytest.fixture
def tiny_trainer(tiny_trainer_class, workspace, monkeypatch):
    return _initialized_trainer(tiny_trainer_class, workspace, monkeypatch)


def test_deep_supervision_matches_network(tiny_trainer):
    tr = tiny_trainer
    assert tr._get_deep_supervision_scales() == [[1.0, 1.0], [0.25, 0.25], [0.125, 0.125], [0.0625, 0.0625]]
    tr.set_deep_supervision_enabled(True)
    outs = tr.network(torch.zeros(1, 1, 128, 96))
    assert [tuple(o.shape[2:]) for o in outs] == [(128, 96), (32, 24), (16, 12), (8, 6)]
    tr.set_deep_supervision_enabled(False)
    assert tr.network(torch.zeros(1, 1, 128, 96)).shape == (1, 3, 128, 96)
    # with DS off the hook is a no-op even when nnU-Net asks for True after validation
    tr.enable_deep_supervision = False
    tr.set_deep_supervision_enabled(True)
    assert tr.network.decoder.deep_supervision is False


def test_weight_decay_groups_are_the_networks_own(tiny_trainer):
    """AdamW decays every parameter but those the network names in ``no_weight_decay()``."""
    tr = tiny_trainer
    optimizer, _ = tr.configure_optimizers()
    skip = tr.network.no_weight_decay()
    names = {id(p): n for n, p in tr.network.named_parameters()}
    decay, no_decay = ({names[id(p)] for p in g["params"]} for g in optimizer.param_groups)
    assert no_decay == skip and decay == set(names.values()) - skip
    assert [g["weight_decay"] for g in optimizer.param_groups] == [tr.weight_decay, 0.0]
    assert "encoder.stages.0.blocks.0.attn.relative_position_bias_table" in no_decay
    assert "encoder.stages.0.blocks.0.attn.qkv.weight" in decay


def _batch(tr, data: torch.Tensor) -> dict:
    """A training batch of ``data`` (2 x 1 x 128 x 96) with an all-background target at every DS scale."""
    target = [torch.zeros(2, 1, int(128 * s[0]), int(96 * s[1])) for s in tr._get_deep_supervision_scales()]
    return {"data": data, "target": target}


def test_nonfinite_loss_skips_step_then_stops(tiny_trainer):
    tr = tiny_trainer
    tr.set_deep_supervision_enabled(True)
    before = {k: v.clone() for k, v in tr.network.state_dict().items()}
    bad = _batch(tr, torch.full((2, 1, 128, 96), float("nan")))
    out = tr.train_step(bad)
    assert np.isnan(out["loss"])
    after = tr.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a non-finite step must not change weights"
    log = open(tr.log_file).read()
    assert "non-finite loss" in log and "step skipped" in log
    assert np.isfinite(tr.train_step(_batch(tr, torch.randn(2, 1, 128, 96)))["loss"])  # training goes on
    tr.max_consecutive_nonfinite = 3
    with pytest.raises(FloatingPointError, match="non-finite"):
        for _ in range(3):
            tr.train_step(bad)


def _state(tr) -> tuple[dict, dict]:
    """Copies of the network's parameters and of every tensor and number in the optimizer's state."""
    params = {n: p.detach().clone() for n, p in tr.network.named_parameters()}
    opt = copy.deepcopy(tr.optimizer.state_dict()["state"])
    return params, opt


def _assert_same_state(a: tuple[dict, dict], b: tuple[dict, dict]) -> None:
    assert a[0].keys() == b[0].keys() and all(torch.equal(a[0][n], b[0][n]) for n in a[0])
    assert a[1].keys() == b[1].keys()
    for i in a[1]:
        assert a[1][i].keys() == b[1][i].keys(), i
        assert all(torch.equal(torch.as_tensor(a[1][i][k]), torch.as_tensor(b[1][i][k])) for k in a[1][i]), i


@contextlib.contextmanager
def _nan_gradient(param: torch.Tensor):
    """Within: backward gives ``param`` a NaN gradient (the loss stays finite)."""
    handle = param.register_hook(lambda g: torch.full_like(g, float("nan")))
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("recipe", ["adamw", "sgd"])
def test_nonfinite_gradient_leaves_parameters_and_optimizer_state_unchanged(tiny_trainer_class, workspace,
                                                                            monkeypatch, recipe):
    """A finite loss whose gradient is not finite: the step is skipped on the device, as the first step
    (the optimizer's state then holds zeros only, as a fresh one would start from) and after steps."""
    tr = _initialized_trainer(type(f"T_{recipe}", (tiny_trainer_class,), {"recipe": recipe}), workspace, monkeypatch)
    tr.set_deep_supervision_enabled(True)
    weight = tr.network.decoder.seg_layers[0].weight
    good = _batch(tr, torch.randn(2, 1, 128, 96))
    for first in (True, False):
        before = _state(tr)
        with _nan_gradient(weight):
            out = tr.train_step(good)
        assert np.isnan(out["loss"])
        after = _state(tr)
        assert all(torch.equal(before[0][n], after[0][n]) for n in before[0]), "a skipped step changed weights"
        if first:  # the optimizer may make its state on the skipped step, but only zeros (no step counted)
            assert all(not torch.as_tensor(v).any() for st in after[1].values() for v in st.values())
            assert np.isfinite(tr.train_step(good)["loss"])  # then a real step, which moves the weights
            assert not torch.equal(weight, after[0]["decoder.seg_layers.0.weight"])
        else:
            _assert_same_state(before, after)
    log = open(tr.log_file).read()
    assert log.count("non-finite gradient norm") == 2 and "step skipped (1 in a row, 2 in total)" in log


def test_imagenet_trainer_loads_at_train_start_and_explains_missing_weights(planned, workspace, monkeypatch, tmp_path):
    """The IN1k family loads weights in on_train_start (never in build_network_architecture, which
    inference runs); a missing file stops with instructions."""
    from nnunet_swin.trainers import nnUNetTrainerSwinUnetIN1k

    pm, cm = _fake_cm((64, 64))
    monkeypatch.setenv("NNUNET_SWIN_PRETRAINED", str(tmp_path / "missing.pth"))
    nnUNetTrainerSwinUnetIN1k.build_network_architecture(pm, cm, 1, 2, False)  # builds without weights
    tr = _initialized_trainer(nnUNetTrainerSwinUnetIN1k, workspace, monkeypatch)
    with pytest.raises(RuntimeError) as err:
        tr._maybe_load_imagenet()
    msg = str(err.value)
    assert "NNUNET_SWIN_PRETRAINED" in msg and "timm.create_model" in msg and "missing.pth" in msg

    # a Swin-T checkpoint file (timm layout, random values) is loaded into the encoder
    timm = pytest.importorskip("timm")
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
    path = tmp_path / "swin_t.pth"
    torch.save(ref.state_dict(), path)
    monkeypatch.setenv("NNUNET_SWIN_PRETRAINED", str(path))
    tr._maybe_load_imagenet()
    assert tr.imagenet_report is not None
    ours = tr.network.state_dict()
    key = next(k for k in ours if k.startswith("encoder.") and k.endswith("1.blocks.0.attn.qkv.weight"))
    assert torch.equal(ours[key], ref.layers[1].blocks[0].attn.qkv.weight.detach())


def test_imagenet_weights_not_loaded_over_pretrained_weights(planned, workspace, monkeypatch, tmp_path):
    """nnUNetv2_train -pretrained_weights loads after initialize(); the IN1k trainer then keeps those weights
    (a missing ImageNet file would raise if it tried to load it)."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    from nnunet_swin.trainers import nnUNetTrainerSwinUnetIN1k

    monkeypatch.setenv("NNUNET_SWIN_PRETRAINED", str(tmp_path / "missing.pth"))
    tr = _initialized_trainer(nnUNetTrainerSwinUnetIN1k, workspace, monkeypatch)
    source = {k: v + 1 for k, v in tr.network.state_dict().items()}
    torch.save({"network_weights": source}, tmp_path / "checkpoint_final.pth")
    load_pretrained_weights(tr.network, str(tmp_path / "checkpoint_final.pth"))
    tr._maybe_load_imagenet()
    assert tr.imagenet_report is None
    key = "encoder.patch_embed.proj.weight"
    assert torch.equal(tr.network.state_dict()[key], source[key])


# --- patch multiple of the trainer's own network ----------------------------------------------------
class _Patch8(nnUNetTrainerSwinUnet):
    network_options = {**TINY, "patch_size": 8}


def test_patch_rounded_to_the_networks_own_multiple():
    plans = _plans()
    note = _Patch8._adapt_plans_for_swin(plans, "2d")
    assert plans["configurations"]["2d"]["patch_size"] == [128, 128]  # 112 x 80 -> multiples of 8 x 2^3 = 64
    assert "divisible by [64, 64]" in note
    pm, cm = _managers(plans, "2d")
    net = _Patch8.build_network_architecture(pm, cm, 1, 2, False)
    with torch.no_grad():
        assert net.eval()(torch.zeros(1, 1, 128, 128)).shape == (1, 2, 128, 128)
    assert nnUNetTrainerSwinUnet._network_options(pm, cm).size_multiple == (32, 32)
    assert _Patch8._network_options(pm, cm).size_multiple == (64, 64)


# --- precision ----------------------------------------------------------------------------------------
def _fake_gpu(monkeypatch, gpu: str | None) -> bool:
    """Make torch see no CUDA, a V100 (capability 7.0: bf16 only emulated, though torch's default
    ``is_bf16_supported()`` says True) or an A100 (8.0: native bf16); return whether bf16 is native."""
    native = gpu == "A100"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu is not None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: gpu is not None and (native or including_emulation))
    return native


GPUS = [(None, None), ("V100", None), ("A100", torch.bfloat16)]


@pytest.mark.parametrize("gpu, expected", GPUS)
def test_bf16_only_where_the_gpu_has_it_natively_and_no_process_state_changes(planned, workspace, monkeypatch,
                                                                               gpu, expected):
    """Constructing a trainer for CUDA, building its network (what ``initialize`` and nnUNetv2_predict
    call) and running its autocast leave the process's CUDA autocast dtype as it was: a CNN trained or
    predicted later in the same process must not find bf16 under its GradScaler."""
    from nnunet_swin.trainers import base

    native = _fake_gpu(monkeypatch, gpu)
    assert base.native_bf16() is native
    before = torch.get_autocast_dtype("cuda")
    trainer = type("T", (nnUNetTrainerSwinUnet,), {"network_options": TINY})
    tr = _trainer(trainer, workspace, monkeypatch, "cuda")
    assert tr.autocast_dtype is expected and tr.grad_scaler is None
    net = trainer.build_network_architecture(tr.plans_manager, tr.configuration_manager, 1, 3, False)
    assert torch.get_autocast_dtype("cuda") == before
    assert net.fp16_autocast_dtype is expected  # what nnU-Net's fp16 validation and predictor run it in
    with tr._autocast():
        if expected is not None:
            assert torch.get_autocast_dtype("cuda") == expected
    assert torch.get_autocast_dtype("cuda") == before


@pytest.mark.parametrize("gpu, expected", GPUS)
def test_network_computes_in_bf16_or_fp32_under_an_fp16_autocast(monkeypatch, gpu, expected):
    """nnU-Net's validation and predictor autocast without a dtype, i.e. fp16, which overflows in Swin
    attention: the trainer's network computes in bf16 there where the GPU has it natively and in fp32
    elsewhere (the CPU's autocast stands in for CUDA's: the forward treats both alike)."""
    _fake_gpu(monkeypatch, gpu)
    pm, cm = _fake_cm((64, 64))
    torch.manual_seed(0)
    net = type("T", (nnUNetTrainerSwinUnet,), {"network_options": TINY}).build_network_architecture(
        pm, cm, 1, 2, False).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        reference = net(x)
        with torch.autocast("cpu", dtype=torch.float16):
            out = net(x)
    assert out.dtype == (expected or torch.float32)
    torch.testing.assert_close(out.float(), reference, **({} if expected is None else dict(rtol=0.05, atol=0.05)))


# --- deep-supervision loss weights and frozen heads --------------------------------------------------
@pytest.fixture
def results_env(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    return tmp_path


@pytest.mark.parametrize("is_ddp", [False, True])
@pytest.mark.parametrize("compiled", [False, True])
def test_ds_loss_weights_do_not_depend_on_ddp_or_compile(results_env, is_ddp, compiled):
    """nnU-Net gives the 1/16 output weight 1e-6 under DDP without compile and 0 otherwise; ours is 0
    everywhere and its head is frozen, so no configuration has an unused trainable parameter."""
    from trainer_test_helpers import dataset_json, small_plans

    from nnunet_swin.trainers import nnUNetTrainerSwinUnet_DS

    tiny = {"network_options": TINY}
    tr = type("DS", (nnUNetTrainerSwinUnet_DS,), tiny)(small_plans(), "2d", 0, dataset_json(2), torch.device("cpu"))
    tr.is_ddp = is_ddp
    tr._do_i_compile = lambda: compiled
    assert tr._build_loss().weight_factors == pytest.approx((4 / 7, 2 / 7, 1 / 7, 0.0), abs=0)
    net = tr.build_network_architecture(tr.plans_manager, tr.configuration_manager, 1, 3, True)
    assert [h.weight.requires_grad for h in net.decoder.seg_layers] == [True, True, True, False]
    no_ds = type("NoDS", (nnUNetTrainerSwinUnet,), tiny)
    net = no_ds.build_network_architecture(tr.plans_manager, tr.configuration_manager, 1, 3, True)
    assert [h.weight.requires_grad for h in net.decoder.seg_layers] == [True, False, False, False]


# --- ImageNet weights in 3D -------------------------------------------------------------------------
def test_imagenet_trainer_in_3d_loads_inflated_swin_t_at_train_start(results_env, monkeypatch, tmp_path):
    """An IN1k trainer on a 3D plan keeps Swin-T's width, builds without weights (inference), and loads
    Swin-T inflated along depth when training starts."""
    from nnunet_swin.trainers import nnUNetTrainerSwinUnetIN1k_0skip

    timm = pytest.importorskip("timm")
    plans = _plans(patch_3d=(8, 64, 64))
    tr = nnUNetTrainerSwinUnetIN1k_0skip(plans, "3d_fullres", 0, {"labels": {"background": 0, "a": 1}},
                                         torch.device("cpu"))
    assert tr.network_kwargs(tr.configuration_manager)["embed_dim"] == 96
    tr.network = tr.build_network_architecture(tr.plans_manager, tr.configuration_manager, 1, 2, False)
    assert tr.network.spatial_dims == 3 and tr.network.decoder.num_skips == 0
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
    path = tmp_path / "swin_t.pth"
    torch.save(ref.state_dict(), path)
    monkeypatch.setenv("NNUNET_SWIN_PRETRAINED", str(path))
    tr._maybe_load_imagenet()
    assert "encoder.patch_embed.proj.weight" in tr.imagenet_report.adapted  # the 2D kernel spread over depth
    ours = tr.network.state_dict()
    assert torch.equal(ours["encoder.stages.1.blocks.0.attn.qkv.weight"], ref.layers[1].blocks[0].attn.qkv.weight)


# --- fine-tuning with nnU-Net's -pretrained_weights ---------------------------------------------------
def _checkpoint(tmp_path, net, name: str, rename=None) -> str:
    sd = {(rename or {}).get(k, k): v.clone() for k, v in net.state_dict().items()}
    path = str(tmp_path / name)
    torch.save({"network_weights": sd}, path)  # the part of an nnU-Net checkpoint the loader reads
    return path


OLD_HEAD_NAMES = {"decoder.seg_layers.0.weight": "decoder.head.weight",
                  **{f"decoder.seg_layers.{i}.weight": f"decoder.aux_heads.{i - 1}.weight" for i in (1, 2, 3)}}


@pytest.mark.parametrize("old_names", [False, True], ids=["current", "old_head_names"])
def test_pretrained_weights_between_label_sets(tmp_path, old_names):
    """nnUNetv2_train -pretrained_weights: nnU-Net's loader skips '.seg_layers.' keys, so a model trained on
    2 foreground labels initialises one for 4; checkpoints with the older head names load the same way."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    trainer = type("T", (nnUNetTrainerSwinUnet,), {"network_options": TINY})
    pm, cm = _fake_cm((64, 64))
    torch.manual_seed(0)
    source = trainer.build_network_architecture(pm, cm, 1, 3, True)
    path = _checkpoint(tmp_path, source, "source.pth", OLD_HEAD_NAMES if old_names else None)
    torch.manual_seed(1)
    target = trainer.build_network_architecture(pm, cm, 1, 5, True)
    heads_before = {k: v.clone() for k, v in target.state_dict().items() if ".seg_layers." in k}
    load_pretrained_weights(target, path)
    src, tgt = source.state_dict(), target.state_dict()
    body = [k for k in tgt if ".seg_layers." not in k]
    assert body and all(torch.equal(src[k], tgt[k]) for k in body)
    assert len(heads_before) == 4 and all(torch.equal(v, tgt[k]) for k, v in heads_before.items())  # kept
    # same labels: nnUNetv2_predict's strict load_state_dict of an old results folder
    same = trainer.build_network_architecture(pm, cm, 1, 3, False)
    same.load_state_dict(torch.load(path, weights_only=True)["network_weights"])
    assert torch.equal(same.decoder.seg_layers[0].weight, source.decoder.seg_layers[0].weight)


def test_a_step_reads_the_device_once_after_the_optimizer_step(tiny_trainer, monkeypatch):
    """Whether a step is skipped is decided on the device: the only host read of a step (nnU-Net's own
    train_step reads the loss) comes after ``optimizer.step()`` is queued, finite step or not, so the
    CPU never waits for the GPU before it has queued the whole step."""
    tr = tiny_trainer
    tr.set_deep_supervision_enabled(True)
    events = []
    for name in ("cpu", "item", "tolist", "numpy", "__bool__", "__float__"):
        method = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, *a, _m=method, _n=name, **k: (events.append(_n),
                                                                                         _m(t, *a, **k))[1])
    step = tr.optimizer.step
    monkeypatch.setattr(tr.optimizer, "step", lambda *a, **k: (events.append("step"), step(*a, **k))[1])
    for data in (torch.randn(2, 1, 128, 96), torch.full((2, 1, 128, 96), float("nan"))):
        events.clear()
        tr.train_step(_batch(tr, data))
        assert events == ["step", "cpu", "numpy"]
