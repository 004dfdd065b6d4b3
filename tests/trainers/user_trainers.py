"""Short subclasses of the plugin's trainers, as a user would write them. The test fixture copies this
file into a temporary directory that is put on ``nnUNet_extTrainer`` *by the user*; the plugin's own
directory is appended after it, so both the user's trainers and the plugin's are found.

Absolute imports only (nnU-Net imports this as a top-level module).
"""

import os

import torch

from nnunet_swin.trainers import (
    nnUNetTrainerSwinUnet_0skip,
    nnUNetTrainerSwinUnet_1skip,
    nnUNetTrainerSwinUnet_2skip,
    nnUNetTrainerSwinUnet_3skip,
)

TINY = dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), drop_path_rate=0.0)


class _Short:
    """A few epochs of a few iterations; ``NNUNET_SWIN_TEST_CRASH_AT`` simulates an interruption."""

    network_options = TINY
    test_epochs = 1
    test_iters = 2

    def _shorten(self):
        self.num_epochs = int(os.environ.get("NNUNET_SWIN_TEST_EPOCHS", self.test_epochs))
        self.num_iterations_per_epoch = int(os.environ.get("NNUNET_SWIN_TEST_ITERS", self.test_iters))
        self.num_val_iterations_per_epoch = 1
        self.save_every = 1

    def on_epoch_start(self):
        crash_at = os.environ.get("NNUNET_SWIN_TEST_CRASH_AT")
        if crash_at is not None and self.current_epoch == int(crash_at):
            raise KeyboardInterrupt(f"simulated interruption at the start of epoch {self.current_epoch}")
        super().on_epoch_start()


def _init(base):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        base.__init__(self, plans, configuration, fold, dataset_json, device)
        self._shorten()

    return __init__


class TestSwin_0skip(_Short, nnUNetTrainerSwinUnet_0skip):
    __init__ = _init(nnUNetTrainerSwinUnet_0skip)


class TestSwin_1skip(_Short, nnUNetTrainerSwinUnet_1skip):
    __init__ = _init(nnUNetTrainerSwinUnet_1skip)


class TestSwin_2skip(_Short, nnUNetTrainerSwinUnet_2skip):
    __init__ = _init(nnUNetTrainerSwinUnet_2skip)


class TestSwin_3skip_DS(_Short, nnUNetTrainerSwinUnet_3skip):
    """Deep supervision on (whatever the default is), so both DS paths run through nnU-Net."""

    deep_supervision = True
    __init__ = _init(nnUNetTrainerSwinUnet_3skip)


class TestSwin_ISBI(_Short, nnUNetTrainerSwinUnet_3skip):
    network_options = dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), drop_path_rate=0.0)
    test_epochs = 8
    test_iters = 12
    __init__ = _init(nnUNetTrainerSwinUnet_3skip)

    def _shorten(self):
        super()._shorten()
        self.num_val_iterations_per_epoch = 2
        self.initial_lr = 1e-3
