"""The default benchmark-msd models on a CPU-sized schedule (5 epochs x 10 iterations), for the example
leaderboard in benchmarks/README.md. nnU-Net finds them through nnUNet_extTrainer (run_cpu_example.sh)."""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_swin.trainers import (nnUNetTrainerSwinUnet_0skip, nnUNetTrainerSwinUnet_1skip,
                                  nnUNetTrainerSwinUnet_2skip, nnUNetTrainerSwinUnet_3skip)


class _Short:
    # nnU-Net records the init arguments by name: keep nnUNetTrainer's exact signature.
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 5
        self.num_iterations_per_epoch = 10
        self.num_val_iterations_per_epoch = 3


class nnUNetTrainerSwinUnet_0skip_5ep(_Short, nnUNetTrainerSwinUnet_0skip):
    pass


class nnUNetTrainerSwinUnet_1skip_5ep(_Short, nnUNetTrainerSwinUnet_1skip):
    pass


class nnUNetTrainerSwinUnet_2skip_5ep(_Short, nnUNetTrainerSwinUnet_2skip):
    pass


class nnUNetTrainerSwinUnet_3skip_5ep(_Short, nnUNetTrainerSwinUnet_3skip):
    pass


class nnUNetTrainer_5ep(_Short, nnUNetTrainer):
    pass
