"""Short, equal-budget 3D trainers for the synthetic 3d_fullres comparison (not part of the package)."""
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_swin.trainers import nnUNetTrainerSwinUnet, nnUNetTrainerSwinUnet_0skip

EPOCHS = int(os.environ.get("BENCH_EPOCHS", 8))
ITERS = int(os.environ.get("BENCH_ITERS", 16))


def _mk(base, name):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        base.__init__(self, plans, configuration, fold, dataset_json, device)
        self.num_epochs = EPOCHS
        self.num_iterations_per_epoch = ITERS
        self.num_val_iterations_per_epoch = 2
        self.save_every = 1000
    return type(name, (base,), {"__init__": __init__})


Bench3D_nnUNet = _mk(nnUNetTrainer, "Bench3D_nnUNet")
Bench3D_Swin = _mk(nnUNetTrainerSwinUnet, "Bench3D_Swin")  # the 3D default: 3 skips, width 48, checkpointing
Bench3D_Swin_0skip = _mk(nnUNetTrainerSwinUnet_0skip, "Bench3D_Swin_0skip")
