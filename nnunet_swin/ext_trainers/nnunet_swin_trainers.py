"""Re-exports the Swin-Unet trainers for nnU-Net's trainer lookup (top-level module name on purpose)."""

from nnunet_swin.trainers import *  # noqa: F401,F403
