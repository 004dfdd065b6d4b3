"""The trainers users name with ``-tr``: each is a few class attributes on top of the shared recipe.

Every class has its own name, hence its own results folder ``<Trainer>__<plans>__<configuration>`` and
checkpoint identity (nnU-Net keys both by class name). Every one trains 2D and 3D configurations (3D:
strides from the plan, ``network_options_3d``; the ImageNet family inflates Swin-T's weights to 3D).
"""

import os

import torch

from nnunet_swin.trainers.base import AbstractSwinUnetTrainer


class nnUNetTrainerSwinUnet(AbstractSwinUnetTrainer):
    """Swin-Unet as in the paper (Swin-T, 3 skip connections, patch expanding), nnU-Net data pipeline,
    AdamW transformer recipe. Deep supervision: see ``AbstractSwinUnetTrainer.deep_supervision``."""


# --- skip-connection ablation (paper Table 4) --------------------------------------------------------
class nnUNetTrainerSwinUnet_0skip(nnUNetTrainerSwinUnet):
    num_skips = 0


class nnUNetTrainerSwinUnet_1skip(nnUNetTrainerSwinUnet):
    num_skips = 1


class nnUNetTrainerSwinUnet_2skip(nnUNetTrainerSwinUnet):
    num_skips = 2


class nnUNetTrainerSwinUnet_3skip(nnUNetTrainerSwinUnet):
    """Same network as nnUNetTrainerSwinUnet; its own folder so the ablation table is complete."""
    num_skips = 3


# --- up-sampling ablation (paper Table 3) ------------------------------------------------------------
class nnUNetTrainerSwinUnet_bilinear(nnUNetTrainerSwinUnet):
    upsampling = "bilinear"


class nnUNetTrainerSwinUnet_transposedconv(nnUNetTrainerSwinUnet):
    upsampling = "transposed_conv"


# --- recipe variants ---------------------------------------------------------------------------------
class nnUNetTrainerSwinUnet_SGD(nnUNetTrainerSwinUnet):
    """The paper's optimiser: SGD lr 0.05, momentum 0.9, weight decay 1e-4, poly 0.9, no warm-up; gradients
    clipped at 12 as nnU-Net does (the paper does not clip)."""
    recipe = "sgd"


class nnUNetTrainerSwinUnet_DS(nnUNetTrainerSwinUnet):
    """Deep supervision on: the loss also supervises the three coarser outputs (1/4, 1/8 and 1/16 in 2D; the
    plan's strides per axis in 3D), weighted 1/2^i with nnU-Net's normalisation (the coarsest gets weight 0,
    as in nnU-Net)."""
    deep_supervision = True


# --- ImageNet-initialised family ---------------------------------------------------------------------
class nnUNetTrainerSwinUnetIN1k(nnUNetTrainerSwinUnet):
    """Encoder (and mirrored decoder) initialised from ImageNet-1k Swin-T at the start of training, from the
    file in $NNUNET_SWIN_PRETRAINED or timm's cache of swin_tiny_patch4_window7_224.ms_in1k. In 3D the
    weights are inflated along depth and the width stays Swin-T's (96), which they fix."""
    imagenet_pretrained = True
    network_options_3d = {**nnUNetTrainerSwinUnet.network_options_3d, "embed_dim": 96}


class nnUNetTrainerSwinUnetIN1k_0skip(nnUNetTrainerSwinUnetIN1k):
    num_skips = 0


class nnUNetTrainerSwinUnetIN1k_1skip(nnUNetTrainerSwinUnetIN1k):
    num_skips = 1


class nnUNetTrainerSwinUnetIN1k_2skip(nnUNetTrainerSwinUnetIN1k):
    num_skips = 2


class nnUNetTrainerSwinUnetIN1k_3skip(nnUNetTrainerSwinUnetIN1k):
    num_skips = 3


# --- short schedules ---------------------------------------------------------------------------------
class ShortSchedule:
    """Mixin for a shorter schedule on any nnU-Net trainer, ours or nnU-Net's own (nnU-Net ships
    ``_Xepochs`` variants of ``nnUNetTrainer`` only)::

        class MyShort_1skip(ShortSchedule, nnUNetTrainerSwinUnet_1skip):
            epochs, iterations = 5, 10

    ``threads`` (optional) sets torch's CPU threads in the training process."""

    epochs: int = 5
    iterations: int = 10
    val_iterations: int = 3
    threads: int | None = None

    # nnU-Net records the init arguments by name, so this keeps nnUNetTrainer's exact signature.
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.epochs
        self.num_iterations_per_epoch = self.iterations
        self.num_val_iterations_per_epoch = self.val_iterations
        if self.threads:
            torch.set_num_threads(self.threads)


class nnUNetTrainerSwinUnet_demo(nnUNetTrainerSwinUnet):
    """What ``nnunet-swin demo`` trains: the paper's network, a CPU-sized schedule
    (NNUNET_SWIN_DEMO_EPOCHS epochs x NNUNET_SWIN_DEMO_ITERS iterations, default 10 x 25)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # nnU-Net records the init arguments by name, so subclasses keep this exact signature.
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("NNUNET_SWIN_DEMO_EPOCHS", 10))
        self.num_iterations_per_epoch = int(os.environ.get("NNUNET_SWIN_DEMO_ITERS", 25))
        self.num_val_iterations_per_epoch = int(os.environ.get("NNUNET_SWIN_DEMO_VAL_ITERS", 5))
        self.save_every = max(1, self.num_epochs // 2)


TRAINERS = [
    nnUNetTrainerSwinUnet,
    nnUNetTrainerSwinUnet_0skip, nnUNetTrainerSwinUnet_1skip, nnUNetTrainerSwinUnet_2skip,
    nnUNetTrainerSwinUnet_3skip,
    nnUNetTrainerSwinUnet_bilinear, nnUNetTrainerSwinUnet_transposedconv,
    nnUNetTrainerSwinUnet_SGD, nnUNetTrainerSwinUnet_DS,
    nnUNetTrainerSwinUnetIN1k,
    nnUNetTrainerSwinUnetIN1k_0skip, nnUNetTrainerSwinUnetIN1k_1skip, nnUNetTrainerSwinUnetIN1k_2skip,
    nnUNetTrainerSwinUnetIN1k_3skip,
    nnUNetTrainerSwinUnet_demo,
]
