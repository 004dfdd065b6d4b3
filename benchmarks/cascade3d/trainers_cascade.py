"""A small, short Swin-Unet trainer for the 3d_lowres -> 3d_cascade_fullres pipeline check (not part of the
package): the check is that nnU-Net's cascade runs through our trainers, not what it learns."""
import torch

from nnunet_swin.trainers import nnUNetTrainerSwinUnet


class Cascade_Swin(nnUNetTrainerSwinUnet):
    network_options = dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), drop_path_rate=0.0)

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1
