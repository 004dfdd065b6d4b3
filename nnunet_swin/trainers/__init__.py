"""nnU-Net v2 trainers for Swin-Unet (importing this imports nnunetv2).

``nnUNetv2_train DATASET 2d FOLD -tr nnUNetTrainerSwinUnet`` (or ``3d_fullres``, ``3d_lowres``) finds
these classes through the ``nnunet_swin/ext_trainers`` directory on ``nnUNet_extTrainer`` (see
``nnunet_swin.registration``).
"""

from nnunet_swin.trainers.base import (
    AbstractSwinUnetTrainer,
    UnsupportedConfigurationError,
    WarmupPolyLRScheduler,
    deep_supervision_scales,
    round_patch_size,
)
from nnunet_swin.trainers.variants import *  # noqa: F401,F403
from nnunet_swin.trainers.variants import TRAINERS, ShortSchedule

__all__ = ["AbstractSwinUnetTrainer", "UnsupportedConfigurationError", "WarmupPolyLRScheduler",
           "deep_supervision_scales", "round_patch_size", "ShortSchedule", "TRAINERS",
           *[t.__name__ for t in TRAINERS]]
