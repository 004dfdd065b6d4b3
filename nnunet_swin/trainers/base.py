"""The recipe every Swin-Unet trainer shares; the variants in ``nnunet_swin.trainers.variants`` only flip
class attributes.

What this adds to nnU-Net's ``nnUNetTrainer``:

* One network for 2D and 3D configurations. In 2D it is the paper's (patch 4, three 2x mergings). In 3D
  (3d_fullres, 3d_lowres, 3d_cascade_fullres) the embedding and merging strides per axis come from the
  plan's pooling (``strides_from_pooling(pool_op_kernel_sizes)``), so an axis nnU-Net does not pool (thick
  slices) is not merged either, and the window is fitted per axis to the first stage (``fit_window_size``);
  ``network_options_3d`` holds the 3D defaults (width, gradient checkpointing). Options merge as: 3D
  defaults < what the plan gives < the trainer's ``network_options``.
* Patch size: the plan's patch is rounded up, per axis, to the network's own multiple (patch embedding x
  the three merge strides: 32 x 32 in 2D, 64 with ``network_options={"patch_size": 8}``; in 3D a divisor
  of nnU-Net's patch, so normally unchanged) in the plans dict inside ``__init__``, *before*
  ``nnUNetTrainer.__init__`` builds its ConfigurationManager (``PlansManager`` keeps the dict itself, but
  ``get_configuration`` deep-copies the configuration and caches it). ``plans.json`` in the results folder
  (written from that same dict), the final validation, ``nnUNetv2_predict``, ensembling and export all see
  the same size.
* The network is built from the class and the plan in ``build_network_architecture`` (a classmethod with
  nnU-Net's 2.7+ signature, so inference rebuilds exactly what was trained from the class name and plans
  alone). A subclass changes the network through class attributes (``num_skips``, ``upsampling``,
  ``network_options``, ``network_options_3d``) or, to derive options from the plan, by overriding the one
  hook ``network_kwargs``; nothing else. A misspelt option stops with an error naming it and the closest
  valid one; a configuration the network cannot take, with an error naming the configurations that work.
* Deep supervision at the network's own output strides (2D: 1, 1/4, 1/8, 1/16; 3D: per axis, e.g.
  [1, 1/4, 1/4] on a thick-slice axis) with nnU-Net's loss weighting, or off (``deep_supervision =
  False``) with ``set_deep_supervision_enabled`` turned into a no-op. Output heads whose loss weight is 0
  (all auxiliary heads with DS off, the coarsest head with DS on) are frozen (``requires_grad=False``):
  they exist for strict checkpoint loading but take no part in training, so DDP as nnU-Net wraps it (no
  ``find_unused_parameters``) finds no unused parameter.
* A transformer recipe: AdamW (lr 3e-4, wd 5e-2 except norms, biases and position tables), linear
  warm-up over the first 5 % of epochs (Primus: 50 of 1000), poly decay, gradient clipping at 1.
  ``recipe = "sgd"`` gives the paper's SGD (lr 0.05, momentum 0.9, wd 1e-4, poly 0.9).
* Mixed precision: bf16 autocast on CUDA GPUs with native bf16 (compute capability 8.0+), fp32 everywhere
  else. Never fp16 with a GradScaler (fp16 overflows in Swin attention). nnU-Net's validation and predictor
  autocast to fp16 (no dtype given): the network built here carries ``fp16_autocast_dtype`` (bf16 where
  native, else None) and its forward computes in that, or in fp32, instead. No process-wide setting is
  changed, so a CNN trained or predicted later in the same process keeps nnU-Net's own precision.
* Non-finite loss or gradient norm: the optimizer step is skipped on the device (the fused optimizers'
  ``found_inf``, as GradScaler uses it: parameters and optimizer state stay as they were), so a step makes
  no host sync but the one read of the loss nnU-Net's own ``train_step`` makes; that read, after the step
  is queued, also brings the gradient norm. A skipped step is logged; training stops with an explanation
  after ``max_consecutive_nonfinite`` skipped steps in a row.
* The training log states the network derived from the plan: strides, token grid and window per stage,
  parameters, and the activation memory one batch saves for backward (measured with fake tensors).
* ImageNet initialisation (``imagenet_pretrained = True``) at the start of a fresh training, never in
  ``build_network_architecture`` (which also runs at inference); in 3D the loader inflates Swin-T's 2D
  weights along depth.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch._dynamo import OptimizedModule
from torch.optim.lr_scheduler import _LRScheduler

from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_swin.memory import estimated_saved_bytes
from nnunet_swin.network import DEFAULT_3D_OPTIONS, NUM_STAGES, SwinUnet, SwinUnetOptions, UnknownOptionError, \
    options_for_plan

#: Environment variable naming a Swin-T ImageNet checkpoint file for the IN1k trainers.
PRETRAINED_ENV = "NNUNET_SWIN_PRETRAINED"
#: timm model whose cached weights the IN1k trainers use when the variable is unset.
PRETRAINED_TIMM_NAME = "swin_tiny_patch4_window7_224.ms_in1k"


class UnsupportedConfigurationError(ValueError):
    """Raised for a configuration the trainer's network cannot be built for; the message names those that work."""


def round_patch_size(patch_size: Sequence[int], multiple: int | Sequence[int]) -> list[int]:
    """Round every side up to its multiple (one int for all axes or one per axis); never smaller than planned."""
    multiples = [int(multiple)] * len(patch_size) if isinstance(multiple, int) else [int(m) for m in multiple]
    return [int(math.ceil(int(s) / m) * m) for s, m in zip(patch_size, multiples, strict=True)]


def deep_supervision_scales(output_strides: Sequence[Sequence[int]]) -> list[list[float]]:
    """nnU-Net's deep-supervision scales (fraction of the patch per axis, highest resolution first) for a
    network's output strides, e.g. strides (1, 1, 1), (1, 4, 4), ... -> [1, 1, 1], [1, 0.25, 0.25], ..."""
    return [[1 / int(s) for s in stride] for stride in output_strides]


class WarmupPolyLRScheduler(_LRScheduler):
    """Linear warm-up over ``warmup_steps`` then poly decay to 0 at ``max_steps``, stepped with the
    epoch number as nnU-Net does (``lr_scheduler.step(current_epoch)``), so it is stateless and a
    resumed training (``--c``) lands on the right learning rate by itself."""

    def __init__(self, optimizer, initial_lr: float, max_steps: int, warmup_steps: int = 0, exponent: float = 0.9):
        self.initial_lr = initial_lr
        self.max_steps = max_steps
        self.warmup_steps = warmup_steps
        self.exponent = exponent
        self.ctr = 0
        super().__init__(optimizer, -1)

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.initial_lr * (step + 1) / self.warmup_steps
        span = max(1, self.max_steps - self.warmup_steps)
        frac = min(1.0, (step - self.warmup_steps) / span)
        return self.initial_lr * (1 - frac) ** self.exponent

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        lr = self.lr_at(int(current_step))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def native_bf16() -> bool:
    """Whether the CUDA GPU computes bf16 natively (compute capability 8.0+). torch's default
    ``is_bf16_supported()`` also says True for emulated bf16 (V100, T4), which is slower than fp32."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def _bf16_if_native() -> torch.dtype | None:
    """The dtype Swin-Unet computes in under CUDA autocast: bf16 where native, else None (fp32)."""
    return torch.bfloat16 if native_bf16() else None


def _start_momentum_at_zero(optimizer: torch.optim.SGD) -> None:
    """Give every trainable parameter a zero momentum buffer. Fused SGD allocates the buffers uninitialised
    on its first step and fills them in the kernel, which a skipped step (``found_inf``) never runs; from
    zero, with dampening 0, the first step is the same (buffer = gradient)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad:
                optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)


class AbstractSwinUnetTrainer(nnUNetTrainer):
    """The Swin-Unet recipe for nnU-Net v2. Not meant to be run itself: use ``nnUNetTrainerSwinUnet`` or
    one of its variants. A variant sets class attributes; a user's subclass may do the same (e.g. set
    ``network_options = {"embed_dim": 48}`` or ``num_epochs`` in ``__init__``)."""

    # --- network -------------------------------------------------------------------------------------
    num_skips: int = 3
    upsampling: str = "patch_expand"
    #: Extra SwinUnet keyword arguments for every configuration (embed_dim, depths, num_heads, window_size,
    #: drop_path_rate, patch_size, merge_strides, ...); they win over the 3D defaults and the plan's strides.
    network_options: dict[str, Any] = {}
    #: Defaults for 3D configurations only, under ``network_options``: VT-UNet's and SwinUNETR's width and
    #: gradient checkpointing (a 3D batch holds many more tokens than a 2D one).
    network_options_3d: dict[str, Any] = dict(DEFAULT_3D_OPTIONS)
    # --- training recipe -----------------------------------------------------------------------------
    #: Whether the loss supervises the three coarser outputs too (see README "Deep supervision").
    deep_supervision: bool = False
    recipe: str = "adamw"  # "adamw" (default transformer recipe) or "sgd" (the paper's)
    warmup_fraction: float = 0.05  # of num_epochs, linear warm-up (AdamW recipe only)
    max_consecutive_nonfinite: int = 25
    #: Load ImageNet Swin-T weights into the encoder (and mirrored decoder) at the start of training.
    imagenet_pretrained: bool = False

    # ------------------------------------------------------------------------------------------------
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # Must happen before nnUNetTrainer.__init__ builds (deep-copies and caches) its ConfigurationManager.
        patch_note = self._adapt_plans_for_swin(plans, configuration)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.print_to_log_file(patch_note)

        if self.recipe == "adamw":
            self.initial_lr = 3e-4
            self.weight_decay = 5e-2
            self.grad_clip = 1.0
        elif self.recipe == "sgd":
            self.initial_lr = 0.05
            self.weight_decay = 1e-4
            self.grad_clip = 12.0  # nnU-Net's; the paper does not clip
        else:
            raise ValueError(f"recipe must be 'adamw' or 'sgd', got {self.recipe!r}")
        self.enable_deep_supervision = bool(self.deep_supervision)
        # Never fp16 + GradScaler for Swin: bf16 autocast where the GPU has it natively, fp32 otherwise.
        self.grad_scaler = None
        self.autocast_dtype = _bf16_if_native() if self.device.type == "cuda" else None
        self._nonfinite_total = 0
        self._nonfinite_in_a_row = 0
        self._weights_loaded = False  # set when weights are loaded into the network after initialize()
        self.imagenet_report = None

    # --- plans ---------------------------------------------------------------------------------------
    @classmethod
    def _adapt_plans_for_swin(cls, plans: dict, configuration: str) -> str:
        """Round the configuration's patch to the network's multiple in the plans dict itself; return a log line."""
        if configuration not in plans.get("configurations", {}):
            return f"Swin-Unet: configuration {configuration!r} not in plans; nnU-Net will complain."
        plans_manager = PlansManager(plans)
        configuration_manager = plans_manager.get_configuration(configuration)
        patch = [int(s) for s in configuration_manager.patch_size]
        multiple = list(cls._network_options(plans_manager, configuration_manager).size_multiple)
        new = round_patch_size(patch, multiple)
        if new == patch:
            return f"Swin-Unet: planned patch size {patch} is already a multiple of {multiple} per axis; kept."
        plans["configurations"][configuration]["patch_size"] = new
        return (f"Swin-Unet: patch size changed from the planned {patch} to {new}: the network needs the sides "
                f"divisible by {multiple} (patch embedding x the strides of its three patch mergings, per axis); "
                f"rounded up so no context is lost. Written to the plans, so plans.json, validation and "
                f"nnUNetv2_predict use {new}. Preprocessed data is unchanged (nnU-Net pads images smaller than "
                f"the patch).")

    # --- network: the one hook a subclass overrides, then what follows from it ---------------------------
    @classmethod
    def network_kwargs(cls, configuration_manager: ConfigurationManager | None = None) -> dict[str, Any]:
        """The one hook for a subclass that wants another network: SwinUnet's keyword options
        (``SwinUnetOptions``' fields) for a configuration. Fixed options need no override: set the class
        attributes ``num_skips``, ``upsampling``, ``network_options`` (every configuration) and
        ``network_options_3d`` (3D only). Override this to derive options from the plan; everything else
        (strides, patch rounding, deep supervision, inference) follows from what it returns.

        By default, 2D (or None): the paper's network with this trainer's options, whatever the plan. 3D:
        ``network_options_3d`` < embedding and merging strides from the plan's pooling < ``network_options``,
        windows fitted to the first stage unless set (``options_for_plan``)."""
        dims = 2 if configuration_manager is None else len(configuration_manager.patch_size)
        kwargs: dict[str, Any] = {"num_skips": cls.num_skips, "upsampling": cls.upsampling}
        if dims == 2:
            kwargs.update(cls.network_options)
        else:  # the patch in the plans is final by the time a network is built: inference gets the same windows
            kwargs.update(cls.network_options_3d)
            kwargs.update(options_for_plan(configuration_manager.patch_size,
                                           configuration_manager.pool_op_kernel_sizes, cls.network_options))
        kwargs["spatial_dims"] = dims
        return kwargs

    @classmethod
    def _network_options(cls, plans_manager: PlansManager,
                         configuration_manager: ConfigurationManager) -> SwinUnetOptions:
        """``network_kwargs`` checked and resolved: strides, windows and the size multiple without building a
        module. A misspelt option raises UnknownOptionError naming the attribute that holds it; options this
        configuration cannot take raise UnsupportedConfigurationError naming the configurations that work."""
        kwargs = cls.network_kwargs(configuration_manager)
        try:
            return SwinUnetOptions.from_dict(kwargs)
        except UnknownOptionError as e:
            where = next((f"{cls.__name__}.{attr}" for attr in ("network_options", "network_options_3d")
                          if e.names[0] in getattr(cls, attr)), f"{cls.__name__}.network_kwargs()")
            raise UnknownOptionError(f"{where}: {e}", e.names) from None
        except ValueError as e:
            patch = list(configuration_manager.patch_size)
            working = cls._configurations_that_work(plans_manager.plans)
            raise UnsupportedConfigurationError(
                f"{cls.__name__} cannot build its network for the {len(patch)}D configuration with patch {patch} "
                f"and nnU-Net pooling {configuration_manager.pool_op_kernel_sizes}: {e}. Configurations of these "
                f"plans it can train: {', '.join(working) or 'none'}. Swin-Unet takes 2D and 3D patches; in 3D its "
                f"strides come from the plan's pooling unless network_options sets patch_size / merge_strides "
                f"(and window_size) for every axis.") from e

    @classmethod
    def _configurations_that_work(cls, plans: dict) -> list[str]:
        """Names of the configurations in ``plans`` this trainer can build its network for."""
        plans_manager = PlansManager(plans)
        names = []
        for name in plans.get("configurations", {}):
            try:
                SwinUnetOptions.from_dict(cls.network_kwargs(plans_manager.get_configuration(name)))
            except Exception:  # a configuration the network cannot take, or a broken one, is not offered
                continue
            names.append(name)
        return names

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """nnU-Net's entry point (its signature), at training *and* inference (nnUNetv2_predict): builds the
        network from the class and the plans alone, loads no weights. Not the hook to override: see
        ``network_kwargs``."""
        deep_supervision = bool(enable_deep_supervision and cls.deep_supervision)
        options = cls._network_options(plans_manager, configuration_manager)
        patch = [int(s) for s in configuration_manager.patch_size]
        multiple = list(options.size_multiple)
        if any(s % m for s, m in zip(patch, multiple)):
            raise ValueError(f"{cls.__name__}: patch size {patch} is not divisible by the network's multiple "
                             f"{multiple} per axis; these plans were not rounded for this trainer's network (it "
                             f"rounds the patch up to {round_patch_size(patch, multiple)} when training starts).")
        net = SwinUnet(num_input_channels, num_output_channels, deep_supervision=deep_supervision,
                       **options.as_dict())
        net.fp16_autocast_dtype = _bf16_if_native()  # what nnU-Net's fp16 validation and predictor run it in
        # A head whose output the loss ignores gets no gradient; frozen, DDP does not wait for one.
        weights = cls.deep_supervision_weights() if deep_supervision else (1.0,) + (0.0,) * (NUM_STAGES - 1)
        for head, weight in zip(net.decoder.seg_layers, weights, strict=True):
            head.requires_grad_(weight != 0)
        return net

    @staticmethod
    def deep_supervision_weights() -> tuple[float, ...]:
        """Loss weight of each deep-supervision output (highest resolution first): nnU-Net's 1/2^i with the
        coarsest set to 0, normalised. nnU-Net itself uses 1e-6 instead of 0 under DDP without compile
        (only to keep that head in DDP's graph); here the coarsest head is frozen instead, so 1 and N GPUs,
        compiled or not, optimise the same loss."""
        weights = [1 / 2**i for i in range(NUM_STAGES)]
        weights[-1] = 0.0
        return tuple(w / sum(weights) for w in weights)

    def _unwrapped_network(self) -> nn.Module:
        mod = self.network.module if self.is_ddp else self.network
        if isinstance(mod, OptimizedModule):
            mod = mod._orig_mod
        return mod

    def initialize(self):
        super().initialize()
        net = self._unwrapped_network()
        # nnU-Net's -pretrained_weights loads into the network after initialize(), with load_state_dict
        net.register_load_state_dict_post_hook(self._note_weights_loaded)
        self.print_to_log_file(self._network_report(net))
        scales = self._get_deep_supervision_scales()
        self.print_to_log_file(
            f"Swin-Unet: deep supervision {f'on (scales {scales})' if scales else 'off'}, recipe {self.recipe} "
            f"(lr {self.initial_lr}, wd {self.weight_decay}, clip {self.grad_clip}), "
            f"precision {'bf16 autocast' if self.autocast_dtype is not None else 'fp32'}")

    def _note_weights_loaded(self, _module: nn.Module, _incompatible_keys) -> None:
        self._weights_loaded = True

    def _network_report(self, net: SwinUnet) -> str:
        """The network as derived from the plan, for the log: strides, token grid and window per stage,
        parameters, and the activations one batch saves for backward."""
        patch = [int(s) for s in self.configuration_manager.patch_size]
        options = net.options
        stages = "; ".join(f"{'x'.join(map(str, st['size']))} tokens, window {'x'.join(map(str, st['window']))}, "
                           f"{st['dim']} channels" for st in net.describe(patch)["stages"])
        strides = [list(s) for s in (*net.output_strides[1:], net.size_multiple)]
        params = sum(p.numel() for p in net.parameters())
        shape = (self.batch_size, self.num_input_channels, *patch)
        precision = str(self.autocast_dtype).replace("torch.", "") + " autocast" if self.autocast_dtype else "fp32"
        try:
            memory = f"{estimated_saved_bytes(net, shape, self.autocast_dtype) / 2**20:.0f} MiB"
        except Exception as e:  # an estimate for the log: never a reason to stop training
            memory = f"not measured ({type(e).__name__}: {e})"
        pooling = f", nnU-Net's pooling {self.configuration_manager.pool_op_kernel_sizes}" if len(patch) != 2 else ""
        return (f"Swin-Unet: {type(self).__name__}, {len(patch)}D network for {self.configuration_name} "
                f"(patch {patch}{pooling}): options {options.as_dict()}; strides of the four stages {strides}; "
                f"stages at this patch: {stages}; parameters "
                f"{params / 1e6:.2f} M; memory estimate: {memory} of activations saved for backward per batch of "
                f"{self.batch_size} in {precision}, gradient checkpointing "
                f"{'on' if options.gradient_checkpointing else 'off'} (measured with fake tensors: shapes only, "
                f"no compute; parameters, gradients and optimizer state come on top)")

    # --- deep supervision ----------------------------------------------------------------------------
    def _get_deep_supervision_scales(self):
        if not self.enable_deep_supervision:
            return None
        # from the plans, not self.network: nnU-Net's _build_loss may run before the network exists
        return deep_supervision_scales(self._network_options(self.plans_manager, self.configuration_manager)
                                       .output_strides)

    def _build_loss(self):
        loss = super()._build_loss()
        if isinstance(loss, DeepSupervisionWrapper):  # the weights the frozen heads were chosen by
            loss.weight_factors = self.deep_supervision_weights()
        return loss

    def set_deep_supervision_enabled(self, enabled: bool):
        # nnU-Net calls this with True after validation whatever the trainer wants: with DS off it is a no-op.
        if not self.enable_deep_supervision:
            return
        self._unwrapped_network().decoder.deep_supervision = bool(enabled)

    # --- optimisation --------------------------------------------------------------------------------
    def configure_optimizers(self):
        # Frozen output heads stay in the groups (they never get a gradient, so never change): the groups
        # keep their size and order, and optimizer states of checkpoints from before the freezing load (--c).
        net = self._unwrapped_network()
        skip = net.no_weight_decay()
        named = list(net.named_parameters())
        decay = [p for n, p in named if n not in skip]
        no_decay = [p for n, p in named if n in skip]
        # Fused kernels skip a non-finite step on the device (found_inf); elsewhere (MPS) train_step checks
        # on the host.
        fused = self.device.type in ("cuda", "cpu")
        if self.recipe == "sgd":
            groups = [{"params": decay + no_decay, "weight_decay": self.weight_decay}]
            optimizer = torch.optim.SGD(groups, self.initial_lr, momentum=0.9, fused=fused)
            if fused:
                _start_momentum_at_zero(optimizer)
            scheduler = WarmupPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, 0)
        else:
            groups = [{"params": decay, "weight_decay": self.weight_decay},
                      {"params": no_decay, "weight_decay": 0.0}]
            optimizer = torch.optim.AdamW(groups, self.initial_lr, betas=(0.9, 0.999), fused=fused)
            warmup = max(1, round(self.warmup_fraction * self.num_epochs)) if self.warmup_fraction > 0 else 0
            scheduler = WarmupPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, warmup)
        return optimizer, scheduler

    def _autocast(self):
        if self.device.type == "cuda" and self.autocast_dtype is not None:
            return torch.autocast("cuda", dtype=self.autocast_dtype)
        return dummy_context()

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, list):
            target = [t.to(self.device, non_blocking=True) for t in target]
        else:
            target = target.to(self.device, non_blocking=True)

        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            output = self.network(data)
            loss = self.loss(output, target)
        # backward even on a non-finite loss so every DDP rank takes part in the all-reduce; the
        # non-finite gradient norm then makes every rank skip the same step.
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
        self._step_unless_nonfinite(loss.detach(), grad_norm)
        # the one host read of a step (nnU-Net's own train_step reads the loss), once the step is queued
        loss_value, norm_value = torch.stack([loss.detach().float(), grad_norm.float()]).cpu().numpy()
        if np.isfinite(loss_value) and np.isfinite(norm_value):
            self._nonfinite_in_a_row = 0
            return {"loss": np.asarray(loss_value)}
        self._handle_nonfinite(loss_value, norm_value)
        return {"loss": np.array(np.nan, dtype=np.float32)}

    def _step_unless_nonfinite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """``optimizer.step()``, made a no-op on the device when the loss or the gradient norm is non-finite:
        a fused optimizer told ``found_inf`` skips its whole update, step counts included. An optimizer
        without that (a subclass's own) is stepped or not after a host check."""
        found_inf = (~(torch.isfinite(loss) & torch.isfinite(grad_norm))).float()
        if not getattr(self.optimizer, "_step_supports_amp_scaling", False):
            if not found_inf.item():
                self.optimizer.step()
            return
        self.optimizer.found_inf = found_inf
        try:
            self.optimizer.step()
        finally:
            del self.optimizer.found_inf

    def _handle_nonfinite(self, loss_value, grad_norm) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._nonfinite_total += 1
        self._nonfinite_in_a_row += 1
        what = "loss" if not np.isfinite(loss_value) else "gradient norm"
        self.print_to_log_file(
            f"WARNING: non-finite {what} (loss {float(loss_value)}, grad norm {float(grad_norm)}) in epoch "
            f"{self.current_epoch}: optimizer step skipped ({self._nonfinite_in_a_row} in a row, "
            f"{self._nonfinite_total} in total).")
        if self._nonfinite_in_a_row >= self.max_consecutive_nonfinite:
            raise FloatingPointError(
                f"{type(self).__name__}: {self._nonfinite_in_a_row} optimizer steps in a row had a non-finite "
                f"{what}; stopping instead of training on NaNs. Try a lower learning rate, the AdamW recipe "
                f"(nnUNetTrainerSwinUnet) rather than SGD, fp32 (unset nnUNet_compile / use a GPU with bf16), "
                f"and check the input data for NaN/inf. Resume with `--c` from the last checkpoint.")

    def on_train_epoch_end(self, train_outputs: list[dict]):
        finite = [o for o in train_outputs if np.isfinite(o["loss"]).all()]
        skipped = len(train_outputs) - len(finite)
        if skipped:
            self.print_to_log_file(f"{skipped} of {len(train_outputs)} steps skipped for non-finite values; "
                                   f"the epoch's train loss is the mean of the others.")
        super().on_train_epoch_end(finite or train_outputs)

    # --- ImageNet initialisation ---------------------------------------------------------------------
    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        if self.imagenet_pretrained:
            self._maybe_load_imagenet()
        super().on_train_start()

    def _maybe_load_imagenet(self) -> None:
        if self.current_epoch > 0:
            self.print_to_log_file("Swin-Unet: resuming from a checkpoint; ImageNet weights not loaded.")
            return
        net = self._unwrapped_network()
        if self._weights_loaded:
            self.print_to_log_file("Swin-Unet: weights were loaded before training started (-pretrained_weights); "
                                   "ImageNet weights not loaded over them.")
            return
        source = os.environ.get(PRETRAINED_ENV) or PRETRAINED_TIMM_NAME
        try:
            from nnunet_swin.weights import load_pretrained_encoder
        except ImportError as e:  # pragma: no cover - depends on the installed version
            raise RuntimeError(f"{type(self).__name__} needs nnunet_swin.weights ({e}).") from e
        try:
            self.imagenet_report = load_pretrained_encoder(net, source)
        except (FileNotFoundError, RuntimeError) as e:
            raise RuntimeError(
                f"{type(self).__name__} starts from ImageNet Swin-T weights but they could not be loaded from "
                f"{source!r}: {e}\nTo get them, either\n"
                f"  * on a machine with internet: python -c \"import timm; timm.create_model("
                f"'{PRETRAINED_TIMM_NAME}', pretrained=True)\"  (fills timm's Hugging Face cache; copy "
                f"~/.cache/huggingface to offline machines), or\n"
                f"  * download swin_tiny_patch4_window7_224.pth (the official Swin-T ImageNet-1k checkpoint) "
                f"and `export {PRETRAINED_ENV}=/path/to/swin_tiny_patch4_window7_224.pth`.\n"
                f"Or train from scratch with nnUNetTrainerSwinUnet.") from e
        self.print_to_log_file(f"Swin-Unet: ImageNet weights loaded from {source}: {self.imagenet_report}")

