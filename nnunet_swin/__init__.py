"""nnunet_swin: Swin-Unet and its ablations as trainers for an unmodified nnU-Net v2.

The network and weight loaders are imported on first use (PEP 562), so ``import nnunet_swin.cli`` and
the start-up registration hook stay fast; the trainers live in ``nnunet_swin.trainers`` and import
nnU-Net.
"""

from importlib import import_module

__all__ = ["SwinUnet", "load_official_checkpoint", "load_pretrained_encoder"]
__version__ = "0.1.0"

_LAZY = {"SwinUnet": "nnunet_swin.network", "load_official_checkpoint": "nnunet_swin.weights",
         "load_pretrained_encoder": "nnunet_swin.weights"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nnunet_swin' has no attribute {name!r}")
