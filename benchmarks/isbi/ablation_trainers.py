"""CPU-budget Swin-Unet trainers for the ISBI 2012 skip ablation (256 x 256 images, small Swin)."""
import os

import torch

from nnunet_swin.trainers import (nnUNetTrainerSwinUnet_0skip, nnUNetTrainerSwinUnet_1skip,
                                  nnUNetTrainerSwinUnet_2skip, nnUNetTrainerSwinUnet_3skip)


class _Cpu:
    network_options = {"embed_dim": 24, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8), "window_size": 8,
                       "drop_path_rate": 0.1}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        torch.set_num_threads(1)  # shared 2-core machine
        self.num_epochs = int(os.environ.get("ISBI_EPOCHS", 12))
        self.num_iterations_per_epoch = int(os.environ.get("ISBI_ITERS", 25))
        self.num_val_iterations_per_epoch = 5


class IsbiCpu_0skip(_Cpu, nnUNetTrainerSwinUnet_0skip):
    pass


class IsbiCpu_1skip(_Cpu, nnUNetTrainerSwinUnet_1skip):
    pass


class IsbiCpu_2skip(_Cpu, nnUNetTrainerSwinUnet_2skip):
    pass


class IsbiCpu_3skip(_Cpu, nnUNetTrainerSwinUnet_3skip):
    pass
