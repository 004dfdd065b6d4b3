"""Loading weights into :class:`~nnunet_swin.network.SwinUnet`: official Swin-Unet checkpoints and
ImageNet Swin encoders (Microsoft release files, timm state dicts, timm model names).

Files are read with ``torch.load(weights_only=True)``: a checkpoint from the internet cannot run code.
Nothing is dropped silently: every loader either maps each source tensor or says why it did not,
and returns a :class:`LoadReport`.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from nnunet_swin.network import NUM_STAGES, SwinBlock, SwinUnet, attention_mask, window_geometry

__all__ = ["LoadReport", "WeightLoadError", "load_official_checkpoint", "load_pretrained_encoder",
           "official_to_swinunet"]

StateDict = dict[str, torch.Tensor]

# official Swin-Unet key -> ours; first match wins (patterns are anchored at the start of the key)
_OFFICIAL_RULES: tuple[tuple[str, str], ...] = (
    (r"patch_embed\.", "encoder.patch_embed."),
    (r"layers\.(\d)\.blocks\.", r"encoder.stages.\1.blocks."),
    (r"layers\.(\d)\.downsample\.", r"encoder.stages.\1.downsample."),
    (r"norm\.", "encoder.norm."),
    (r"layers_up\.0\.", "decoder.stages.0.upsample."),
    (r"layers_up\.(\d)\.blocks\.", r"decoder.stages.\1.blocks."),
    (r"layers_up\.(\d)\.upsample\.", r"decoder.stages.\1.upsample."),
    (r"concat_back_dim\.(\d)\.", r"decoder.stages.\1.fuse."),
    (r"norm_up\.", "decoder.norm."),
    (r"up\.", "decoder.final_expand."),
    (r"output\.", "decoder.seg_layers.0."),
)
_OFFICIAL_PREFIXES = ("module.swin_unet.", "swin_unet.", "module.")
_BUFFERS = ("relative_position_index", "attn_mask")
# our deep-supervision heads (1/4, 1/8, 1/16), which the official model does not have
_AUX_HEAD_PREFIXES = tuple(f"decoder.seg_layers.{i}." for i in range(1, NUM_STAGES))


class WeightLoadError(RuntimeError):
    """A checkpoint does not fit the model; the message lists every mismatch."""


@dataclass
class LoadReport:
    """What a loader did with every tensor of the model and of the source."""

    loaded: list[str] = field(default_factory=list)  # model keys copied as they were
    adapted: dict[str, str] = field(default_factory=dict)  # model key -> how the source tensor was changed
    random: list[str] = field(default_factory=list)  # model keys the source did not cover (initialisation kept)
    ignored: dict[str, str] = field(default_factory=dict)  # source key -> why it was not used
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors, adapted {len(self.adapted)}, "
                 f"left {len(self.random)} at random init, ignored {len(self.ignored)} source tensors"]
        lines += [f"  adapted {k}: {how}" for k, how in self.adapted.items()]
        lines += [f"  random  {k}" for k in _collapse(self.random)]
        lines += [f"  ignored {k}: {why}" for k, why in self.ignored.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _collapse(keys: list[str]) -> list[str]:
    """Group keys by module for a readable report (``decoder.seg_layers.1.*``)."""
    return list(dict.fromkeys(k.rsplit(".", 1)[0] + ".*" for k in keys))  # the owning module, never wider


def _read(source: str | os.PathLike | Mapping) -> Mapping:
    """The checkpoint at ``source`` (a mapping is returned as it is). A file that is not a checkpoint (empty,
    a web page, text, truncated) or that holds Python objects the tensors-only unpickler refuses raises
    WeightLoadError saying which; a missing file raises FileNotFoundError."""
    if isinstance(source, Mapping):
        return source
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}" + (" (that is a folder)" if os.path.isdir(path)
                                                                     else ""))
    with open(path, "rb") as f:
        head = f.read(512)
    not_one = _not_a_checkpoint(head)
    if not_one:
        raise WeightLoadError(f"{path!r} is not a checkpoint: it is {not_one}; download or copy the file again")
    if head[8:9] == b"{":  # safetensors: an 8-byte header length, then the JSON header
        from safetensors.torch import load_file  # timm's dependency

        try:
            return load_file(path, device="cpu")
        except Exception as e:
            raise WeightLoadError(f"{path!r} looks like a safetensors file but cannot be read (truncated or "
                                  f"corrupt?): {e}") from e
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    try:
        with allow(_numpy_data_types()) if allow else nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # the pickle names a class or function beyond tensors and plain data
        found = _unsafe_globals(path)
        raise WeightLoadError(
            f"{path!r} holds Python objects besides tensors and plain data ({found}); they are not unpickled here, "
            f"since unpickling them can run any code. Where the file was made, save the weights alone: "
            f"torch.save(model.state_dict(), path)") from e
    except Exception as e:
        raise WeightLoadError(f"{path!r} is not a readable PyTorch checkpoint (truncated or corrupt, e.g. an "
                              f"interrupted download?): {_first_line(e)}") from e


def _not_a_checkpoint(head: bytes) -> str | None:
    """What the first bytes of a file say it is when it cannot be a checkpoint (None when it may be one)."""
    if not head:
        return "empty (0 bytes)"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or (text[:1] == b"<" and b"<html" in text):
        return ("an HTML page, not weights (a download that saved a web page, e.g. a login, error or redirect "
                "page, instead of the file)")
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80" or head[8:9] == b"{":  # torch zip, torch pickle, safetensors
        return None
    try:
        snippet = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return f"a text file beginning {snippet[:60]!r}"


def _numpy_data_types() -> list:
    """The numpy types nnU-Net's checkpoints keep beside the weights (logged losses and Dice as numpy
    scalars and arrays): plain data, which the tensors-only unpickler may rebuild. A torch without
    ``safe_globals`` (2.4) refuses them, and such a checkpoint is reported as holding Python objects."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")] if hasattr(np, "dtypes") else []
    return [np.dtype, np.ndarray, core.multiarray.scalar, core.multiarray._reconstruct, *dtypes]



def _unsafe_globals(path: str) -> str:
    try:
        return ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path)) or "unknown"
    except Exception:  # not a zip checkpoint: torch cannot list them
        return "classes or functions the file names"


def _first_line(e: Exception) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)


def _unwrap(checkpoint: Mapping) -> StateDict:
    for key in ("network_weights", "state_dict", "model"):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            checkpoint = checkpoint[key]
    return dict(checkpoint)


def _origin(source: str | os.PathLike | Mapping, checkpoint: Mapping) -> str:
    """How messages name the source: the file, and an nnU-Net checkpoint's trainer."""
    where = "the state dict" if isinstance(source, Mapping) else repr(os.fspath(source))
    if "network_weights" in checkpoint and "trainer_name" in checkpoint:
        return (f"{where} (an nnU-Net checkpoint of {checkpoint['trainer_name']}, "
                f"epoch {checkpoint.get('current_epoch', '?')})")
    return where


def _own_layout(state_dict: Mapping) -> bool:
    """Whether the tensors are already named as SwinUnet's (this package's state dicts, the network weights of
    an nnU-Net checkpoint of a Swin-Unet trainer)."""
    return "encoder.patch_embed.proj.weight" in state_dict


def _check_not_another_network(checkpoint: Mapping, state_dict: Mapping, origin: str) -> None:
    """An nnU-Net checkpoint of a network that is not Swin-Unet (its CNN, say) holds no weights for it."""
    if "network_weights" in checkpoint and not _own_layout(state_dict):
        first = ", ".join(list(state_dict)[:3])
        raise WeightLoadError(f"{origin} holds a network that is not a Swin-Unet (its first tensors: {first}); "
                              f"give a checkpoint of a Swin-Unet trainer")


def _load_own_layout(model: SwinUnet, state_dict: StateDict, origin: str) -> LoadReport:
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise WeightLoadError(f"{origin} is in SwinUnet's own layout but does not fit this model (built with other "
                              f"options?): {e}") from e
    return LoadReport(loaded=list(model.state_dict()),
                      notes=[f"source: {origin}, already in SwinUnet's layout: loaded as it is (strict)"])


def _rename_official(key: str) -> str | None:
    for prefix in _OFFICIAL_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    for pattern, repl in _OFFICIAL_RULES:
        new, n = re.subn("^" + pattern, repl, key)
        if n:
            return new
    return None


def _check_official_buffer(model: SwinUnet, ours: str, value: torch.Tensor) -> str | None:
    """Official checkpoints persist the index and the shift mask; both must agree with our geometry."""
    block = model.get_submodule(ours[: ours.index(".attn")])
    if not isinstance(block, SwinBlock):
        return "not a buffer of a Swin block"
    if ours.endswith("relative_position_index"):
        expected = block.attn.relative_position_index
        if value.shape != expected.shape or not torch.equal(value.cpu(), expected.cpu()):
            return (f"relative_position_index {tuple(value.shape)} does not fit window_size="
                    f"{block.window_size} (expected {tuple(expected.shape)})")
        return None
    # attn_mask (nW, N, N) belongs to a square stage of side sqrt(nW) * M
    side = round(value.shape[0] ** 0.5) * round(value.shape[1] ** 0.5)
    wh, sh = window_geometry(side, block.window_size[0], block.shifted)
    expected = attention_mask((side, side), (wh, wh), (sh, sh), torch.device("cpu"))
    if expected is None or expected.shape != value.shape or not torch.equal(expected, value.float().cpu()):
        return f"attn_mask {tuple(value.shape)} is not the shift mask of a {side}x{side} stage at window {block.window_size}"
    return None


def official_to_swinunet(model: SwinUnet, state_dict: Mapping[str, torch.Tensor]) -> tuple[StateDict, LoadReport]:
    """Map an official Swin-Unet state dict onto ``model``'s keys; raise listing every mismatch."""
    ours = model.state_dict()
    mapped: StateDict = {}
    report = LoadReport()
    problems: list[str] = []
    for key, value in state_dict.items():
        new = _rename_official(key)
        if new is None:
            problems.append(f"{key}: not a Swin-Unet tensor")
            continue
        if new.endswith(_BUFFERS):
            try:
                why = _check_official_buffer(model, new, value)
            except AttributeError:
                why = "belongs to a block this model does not have"
            if why:
                problems.append(f"{key}: {why}")
            else:
                report.ignored[key] = "buffer recomputed by the model (checked equal)"
            continue
        if new not in ours:
            problems.append(f"{key}: no such tensor in this model ({_hint(new, model)})")
        elif ours[new].shape != value.shape:
            problems.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(ours[new].shape)}"
                            f"{_shape_hint(new, value, ours[new])}")
        elif new in mapped:
            problems.append(f"{key}: maps to {new}, which another checkpoint tensor already filled")
        else:
            mapped[new] = value
    official_only = [k for k in ours if k not in mapped and not k.startswith(_AUX_HEAD_PREFIXES)]
    problems += [f"{_official_name(k)}: missing from the checkpoint (model has {k} {tuple(ours[k].shape)})"
                 for k in official_only]
    if problems:
        raise WeightLoadError("checkpoint does not fit this SwinUnet (built with other settings?):\n  "
                              + "\n  ".join(problems))
    report.loaded = list(mapped)
    report.random = [k for k in ours if k not in mapped]
    return mapped, report


def _official_name(ours: str) -> str:
    """The official name of one of our keys, for messages."""
    for pattern, repl in _OFFICIAL_RULES:
        m = re.match(re.escape(repl).replace(re.escape("\\1"), r"(\d)"), ours)
        if m:
            template = pattern.replace(r"(\d)", m.group(1) if m.groups() else "").replace("\\", "")
            return template + ours[m.end():]
    return ours


def _hint(key: str, model: SwinUnet) -> str:
    if ".fuse." in key:
        return f"the checkpoint has this skip fusion but the model has num_skips={model.options.num_skips}"
    if ".blocks." in key:
        return "the checkpoint has more Swin blocks than the model's depths"
    return "different architecture"


def _shape_hint(key: str, theirs: torch.Tensor, ours: torch.Tensor) -> str:
    if key == "decoder.seg_layers.0.weight":
        return f": the checkpoint predicts {theirs.shape[0]} classes; build the model with num_classes={theirs.shape[0]}"
    if key == "encoder.patch_embed.proj.weight" and theirs.shape[1] != ours.shape[1]:
        return (f": the checkpoint takes {theirs.shape[1]} input channels (the official wrapper repeats grayscale "
                f"to 3); build the model with input_channels={theirs.shape[1]}")
    if key.endswith("relative_position_bias_table"):
        side = (round(theirs.shape[0] ** 0.5) + 1) // 2
        return f": the checkpoint was trained with window_size={side}"
    return ""


def load_official_checkpoint(model: SwinUnet, source: str | os.PathLike | Mapping) -> LoadReport:
    """Load a checkpoint saved by the official Swin-Unet training code (keys prefixed ``swin_unet.``,
    ``module.swin_unet.`` or bare) into ``model``, which must be built with the same settings. A state dict
    already in SwinUnet's own layout (``model.state_dict()``, or the ``network_weights`` of an nnU-Net
    ``checkpoint_final.pth`` of a Swin-Unet trainer) is loaded as it is, strictly.

    Every checkpoint tensor maps to exactly one of ours; the persisted index and shift-mask buffers
    are checked against the model's geometry. Our auxiliary deep-supervision heads, which the
    official model does not have, stay at their initialisation (listed in ``report.random``).
    """
    checkpoint = _read(source)
    state_dict = _unwrap(checkpoint)
    origin = _origin(source, checkpoint)
    if _own_layout(state_dict):
        return _load_own_layout(model, state_dict, origin)
    _check_not_another_network(checkpoint, state_dict, origin)
    mapped, report = official_to_swinunet(model, state_dict)
    model.load_state_dict(mapped, strict=False)
    return report


# ----------------------------------------------------------------------------------------------------
# ImageNet Swin encoders


def _source_state_dict(source: str | os.PathLike | Mapping) -> tuple[StateDict, str]:
    if isinstance(source, Mapping) or os.path.isfile(os.fspath(source)):
        checkpoint = _read(source)
        state_dict, origin = _unwrap(checkpoint), _origin(source, checkpoint)
        if _own_layout(state_dict):
            raise WeightLoadError(
                f"{origin} is already in SwinUnet's layout (a Swin-Unet trained here), not an ImageNet Swin "
                f"encoder: load it whole with nnunet_swin.load_official_checkpoint(model, path), or fine-tune from "
                f"it with nnUNetv2_train ... -pretrained_weights path")
        _check_not_another_network(checkpoint, state_dict, origin)
        return state_dict, "file" if not isinstance(source, Mapping) else "state dict"
    name = os.fspath(source)
    import timm  # only needed for model names

    swin_names = timm.list_models(module="swin_transformer")
    if not timm.is_model(name.split(".")[0]):
        raise FileNotFoundError(f"{name!r} is neither a file nor a timm model name; give the path of a Swin "
                                f"checkpoint (Microsoft release .pth or timm state dict) or a timm name such as "
                                f"'swin_tiny_patch4_window7_224.ms_in1k'")
    if name.split(".")[0] not in swin_names:
        raise WeightLoadError(f"timm model {name!r} is not a Swin Transformer, whose weights are the only ones the "
                              f"encoder takes; timm names that work: {', '.join(swin_names)} (with a tag such as "
                              f"'.ms_in1k'), or the path of a Swin checkpoint file")
    try:
        return timm.create_model(name, pretrained=True).state_dict(), f"timm:{name}"
    except Exception as e:
        raise FileNotFoundError(
            f"could not get pretrained weights for timm model {name!r} ({type(e).__name__}: {e}). Without internet, "
            f"put the file in timm's cache (Hugging Face hub cache) on a machine that has it, or download the "
            f"Microsoft release file swin_tiny_patch4_window7_224.pth and pass its path instead") from e


def _source_config(state_dict: StateDict) -> dict:
    """Structure of a Swin classification checkpoint, read from its tensors."""
    depths = [0] * 4
    heads = [0] * 4
    for k, v in state_dict.items():
        m = re.match(r"layers\.(\d)\.blocks\.(\d+)\.attn\.relative_position_bias_table$", k)
        if m:
            i = int(m.group(1))
            depths[i] = max(depths[i], int(m.group(2)) + 1)
            heads[i] = v.shape[1]
    if "patch_embed.proj.weight" not in state_dict or not all(depths):
        raise WeightLoadError("not a 4-stage Swin Transformer checkpoint: expected patch_embed.proj.weight and "
                              "layers.{0-3}.blocks.*.attn.relative_position_bias_table")
    return dict(embed_dim=state_dict["patch_embed.proj.weight"].shape[0], depths=tuple(depths),
                num_heads=tuple(heads))


def _to_timm_layout(state_dict: StateDict, model: SwinUnet, config: dict) -> StateDict:
    """Microsoft or timm layout -> timm layout at this model's in-plane window and patch size (the last
    two axes; all of them in 2D), by timm's own ``checkpoint_filter_fn`` (moves PatchMerging to the start
    of the next stage, drops persisted buffers, resizes relative-position tables and resamples the patch
    kernel)."""
    import timm
    from timm.models.swin_transformer import checkpoint_filter_fn

    window = model.options.window_size[-2:]
    patch = model.options.patch_size[-2:]
    skeleton = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, device="meta", num_classes=0, **config,
        window_size=window, patch_size=patch,
        img_size=tuple(p * 8 * w * 2 for p, w in zip(patch, window)),  # no stage clamps the window
    )
    microsoft = "layers.0.downsample.reduction.weight" in state_dict
    if not microsoft and "head.fc.weight" not in state_dict:
        # timm tells the layouts apart by its head; a headless timm dict must not be taken for Microsoft's
        state_dict = {**state_dict, "head.fc.weight": torch.empty(0)}
    return checkpoint_filter_fn(state_dict, skeleton)


_MERGE_KEY = re.compile(r"encoder\.stages\.(\d)\.downsample\.(norm\.weight|norm\.bias|reduction\.weight)$")


def _inflate(model: SwinUnet, target: str, value: torch.Tensor) -> tuple[torch.Tensor, str | None]:
    """The 3D counterpart of a 2D Swin tensor (depth is the first spatial axis), as video Swin models
    inflate ImageNet weights, chosen so that a volume constant along depth gives on every slice exactly
    the 2D encoder's features of that slice (up to the -100 of the shift mask, as in 2D):

    - patch kernel: replicated over the ``pd`` depth taps and divided by ``pd``;
    - relative-position table: the 2D table repeated for every depth offset (a bias that does not depend
      on depth, so attention over a depth-constant window averages identical keys);
    - PatchMerging with stride ``(sd, 2, 2)``: its ``4 * sd`` channel blocks are ordered depth offset
      fastest, so each 2D block is repeated ``sd`` times in the LayerNorm (the statistics of duplicated
      blocks are the 2D ones) and its reduction weight is split evenly over the ``sd`` depth offsets
      (every token of the group contributes, rather than offset 0 only);
    - per-token tensors (LayerNorms, qkv, proj, MLP, biases) are shape-free in depth and come back as
      they are, as does everything whose depth extent is 1 (``sd = 1``: the 2D group).

    Returns the tensor and how it was inflated (None when unchanged)."""
    if target == "encoder.patch_embed.proj.weight":
        depth = model.options.patch_size[0]
        return (value[:, :, None].expand(-1, -1, depth, -1, -1) / depth,
                f"inflated to a 3D kernel of depth {depth}: the 2D kernel replicated along depth and divided "
                f"by {depth}")
    if target.endswith("relative_position_bias_table"):
        offsets = 2 * model.options.window_size[0] - 1
        if offsets == 1:
            return value, None
        return value.repeat(offsets, 1), (f"inflated: the 2D table repeated for each of the {offsets} depth offsets "
                                          f"{tuple(value.shape)} -> ({offsets * value.shape[0]}, {value.shape[1]})")
    m = _MERGE_KEY.match(target)
    if m:
        depth = model.options.merge_strides[int(m.group(1))][0]
        if depth == 1:
            return value, None
        blocks = value.unflatten(-1, (4, 1, -1)).expand(*value.shape[:-1], 4, depth, -1)
        if m.group(2) == "reduction.weight":
            return ((blocks / depth).flatten(-3),
                    f"inflated: each 2D channel block's weight split evenly over the {depth} depth offsets")
        return blocks.flatten(-3), f"inflated: each 2D channel block repeated for the {depth} depth offsets"
    return value, None


def _merge_without_counterpart(model: SwinUnet, stage: int) -> str | None:
    """Why the 2D 2x2 merging has no counterpart in our merging after ``stage`` (None when it has one)."""
    stride = model.options.merge_strides[stage]
    if stride[-2:] == (2, 2):
        return None
    return (f"our merging after stage {stage} has stride {list(stride)}, not 2x2 in-plane (a plan with fewer "
            f"poolings); a 2x2 merging has no faithful counterpart, so it keeps its initialisation")


def load_pretrained_encoder(model: SwinUnet, source: str | os.PathLike | Mapping, *,
                            mirror_decoder: bool = True) -> LoadReport:
    """Initialise the encoder from ImageNet Swin weights, as the paper does.

    ``source``: a Microsoft release file (``{"model": ...}``, PatchMerging at the end of a stage), a
    timm state dict or file (PatchMerging at the start of the next stage), or a timm model name
    (timm's pretrained loading; offline when the weights are in its cache). The patch embedding is
    adapted to ``model.input_channels`` (1 channel: the RGB kernels summed, which equals repeating a
    grayscale image to RGB as the official code does), relative-position tables are resized when the
    window differs, and with ``mirror_decoder`` the encoder blocks are copied into the decoder blocks
    at the same resolution (the official ``load_from``). Extra source blocks (Swin-T has 6 in its third
    stage) are reported as ignored; fusion, expand, norm and head layers stay random.

    A 3D model (``spatial_dims=3``) gets the 2D weights inflated along its first (depth) axis so that a
    volume constant along depth reproduces the 2D encoder on its slices (``_inflate``): the patch kernel
    replicated over depth and divided by its depth, the bias tables repeated for every depth offset, each
    merging's channel blocks spread evenly over its depth offsets; in-plane patch and window go through
    the same resampling as in 2D. A merging that is not 2x2 in-plane (2D or 3D) stays random and the
    source merging is reported as ignored with the reason; ``report.adapted`` says what was inflated.
    """
    from timm.models import adapt_input_conv

    raw, origin = _source_state_dict(source)
    config = _source_config(raw)
    ours = model.state_dict()
    report = LoadReport(notes=[f"source: {origin}, embed_dim {config['embed_dim']}, depths {list(config['depths'])}"])
    if model.spatial_dims == 3:
        report.notes.append(
            f"2D weights inflated along depth (the first axis) for this 3D model: patch kernel of depth "
            f"{model.options.patch_size[0]}, relative-position tables over "
            f"{2 * model.options.window_size[0] - 1} depth offsets, mergings of depth "
            f"strides {[m[0] for m in model.options.merge_strides]}; a volume constant "
            f"along depth gives the 2D encoder's features on every slice")
    converted = _to_timm_layout(raw, model, config)
    for k in raw:
        if k.endswith(_BUFFERS):
            report.ignored[k] = "buffer recomputed by the model"
    targets: StateDict = {}
    problems = []

    def put(target: str, src: str, value: torch.Tensor, *hows: str | None) -> None:
        if target not in ours:
            report.ignored[source_key(src)] = f"the model has no {target}"
            return
        if model.spatial_dims == 3:
            value, inflated = _inflate(model, target, value)
            hows = (*hows, inflated)
        how = "; ".join(h for h in hows if h)
        if ours[target].shape != value.shape:
            problems.append(f"{src} -> {target}: source {tuple(value.shape)} vs model {tuple(ours[target].shape)}")
            return
        targets[target] = value
        if how:
            report.adapted[target] = how

    raw_tables = {k: v.shape for k, v in raw.items() if k.endswith("relative_position_bias_table")}
    microsoft = "layers.0.downsample.reduction.weight" in raw

    def source_key(k: str) -> str:  # undo timm's renaming so the report names the source's own keys
        if microsoft:
            k = re.sub(r"^layers\.(\d)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", k)
            k = re.sub(r"^head\.fc\.", "head.", k)
        return k

    for k, v in converted.items():
        if k.startswith("head"):
            if source_key(k) in raw:  # not the placeholder _to_timm_layout adds to a headless timm dict
                report.ignored[source_key(k)] = "classification head"
            continue
        if k == "patch_embed.proj.weight":
            hows = []
            if v.shape[-2:] != raw[k].shape[-2:]:
                hows.append(f"kernel {tuple(raw[k].shape[-2:])} -> {tuple(v.shape[-2:])} (timm resample_patch_embed)")
            if v.shape[1] != model.input_channels:
                hows.append(f"{v.shape[1]} -> {model.input_channels} input channels (timm adapt_input_conv)")
                v = adapt_input_conv(model.input_channels, v)
            put("encoder.patch_embed.proj.weight", k, v, *hows)
            continue
        m = re.match(r"layers\.(\d)\.(blocks\.\d+\..*|downsample\..*)$", k)
        if m:
            stage, rest = int(m.group(1)), m.group(2)
            if rest.startswith("downsample"):  # timm: merging that starts stage i ends our stage i-1
                why = _merge_without_counterpart(model, stage - 1)
                if why:
                    report.ignored[source_key(k)] = why
                else:
                    put(f"encoder.stages.{stage - 1}.{rest}", k, v)
                continue
            how = None
            if k.endswith("relative_position_bias_table") and raw_tables.get(k, v.shape) != v.shape:
                how = f"relative-position table resized {tuple(raw_tables[k])} -> {tuple(v.shape)} (timm)"
            put(f"encoder.stages.{stage}.{rest}", k, v, how)
            mirror = f"decoder.stages.{NUM_STAGES - 1 - stage}.{rest}"  # official load_from: layers.i -> layers_up.3-i
            if mirror_decoder and mirror in ours:
                put(mirror, k, v.clone(), f"mirrored from encoder {k}", how)
            continue
        put(f"encoder.{k}", k, v)
    if problems:
        raise WeightLoadError("pretrained weights do not fit this SwinUnet:\n  " + "\n  ".join(problems))
    model.load_state_dict(targets, strict=False)
    report.loaded = [k for k in targets if k not in report.adapted]
    report.random = [k for k in ours if k not in targets]
    return report

