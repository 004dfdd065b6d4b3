"""The default benchmark-msd models on a CPU-sized schedule (5 epochs x 10 iterations), for the example
leaderboard in benchmarks/README.md. nnU-Net finds them through nnUNet_extTrainer (run_cpu_example.sh)."""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_swin.trainers import (ShortSchedule, nnUNetTrainerSwinUnet_0skip, nnUNetTrainerSwinUnet_1skip,
                                  nnUNetTrainerSwinUnet_2skip, nnUNetTrainerSwinUnet_3skip)


class _Short(ShortSchedule):
    epochs, iterations, val_iterations = 5, 10, 3


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
