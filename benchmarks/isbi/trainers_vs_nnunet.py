"""Short, equal-budget trainers for the ISBI comparison (not part of the package)."""
import os, time
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunet_swin.trainers import nnUNetTrainerSwinUnet, nnUNetTrainerSwinUnet_0skip, nnUNetTrainerSwinUnet_3skip

EPOCHS = int(os.environ.get("BENCH_EPOCHS", 6))
ITERS = int(os.environ.get("BENCH_ITERS", 12))

class _Budget:
    def _budget(self):
        self.num_epochs = EPOCHS
        self.num_iterations_per_epoch = ITERS
        self.num_val_iterations_per_epoch = 2
        self.save_every = 1000
    def on_epoch_start(self):
        self._cpu0, self._wall0 = time.process_time(), time.time()
        super().on_epoch_start()
    def on_epoch_end(self):
        cpu, wall = time.process_time() - self._cpu0, time.time() - self._wall0
        self.print_to_log_file(f"BENCH epoch {self.current_epoch} cpu_s {cpu:.1f} wall_s {wall:.1f}")
        super().on_epoch_end()

def _mk(base, name, **attrs):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        base.__init__(self, plans, configuration, fold, dataset_json, device)
        self._budget()
    return type(name, (_Budget, base), {"__init__": __init__, **attrs})

Bench_nnUNet = _mk(nnUNetTrainer, "Bench_nnUNet")
Bench_Swin3_noDS = _mk(nnUNetTrainerSwinUnet_3skip, "Bench_Swin3_noDS", deep_supervision=False)
Bench_Swin3_DS = _mk(nnUNetTrainerSwinUnet_3skip, "Bench_Swin3_DS", deep_supervision=True)
Bench_Swin0_noDS = _mk(nnUNetTrainerSwinUnet_0skip, "Bench_Swin0_noDS", deep_supervision=False)
Bench_Swin0_DS = _mk(nnUNetTrainerSwinUnet_0skip, "Bench_Swin0_DS", deep_supervision=True)
