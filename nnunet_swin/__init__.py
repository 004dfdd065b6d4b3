"""nnunet_swin: Swin-Unet and its ablations as trainers for an unmodified nnU-Net v2.

Importing the package loads the network and the weight loaders only (torch and timm); the trainers
live in ``nnunet_swin.trainers`` and import nnU-Net on demand.
"""

from nnunet_swin.network import SwinUnet

__all__ = ["SwinUnet"]
__version__ = "0.1.0"
