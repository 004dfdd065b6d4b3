#!/usr/bin/env bash
# One device call on a lent H200 (see benchmarks/README.md): bench at 224 and 512 (batch 24, fp32 / bf16 /
# bf16 + torch.compile) and a GPU smoke run of `nnunet-swin benchmark-msd` on a synthetic MSD task (real
# Swin-Unet and nnU-Net trainers, short schedule, nnU-Net's default torch.compile, --gpus 0 queue).
# Needs: .whl/ (nnunetv2 and its dependencies for Python 3.12, carried), torch already on the machine.
# Writes at most 7 files to $OUT (the device tool's limit is 8).
# Outcome on 2026-11-30 (benchmarks/README.md): both bench steps ran out of time in their torch.compile rows
# and the Swin-Unet training had not finished compiling epoch 0 after 200 s; the figures in the README come
# from h200_bf16_fix_check.sh (no compile rows) and a rerun of the benchmark-msd step with nnUNet_compile=f.
set -uo pipefail
OUT=${OUT:-/tmp/h200_out}; mkdir -p "$OUT"
LOG="$OUT/log.txt"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, nnunetv2, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"

echo "=== bench 224 batch 24"
timeout 180 python3 -m nnunet_swin.cli bench --device cuda --patch 224 --batch 24 --out /tmp/bench_224_b24
cp /tmp/bench_224_b24.csv /tmp/bench_224_b24.json "$OUT"/ 2>/dev/null

echo "=== benchmark-msd smoke on the GPU"
W=/tmp/msd; mkdir -p $W/ext $W/tasks
export nnUNet_raw=$W/raw nnUNet_preprocessed=$W/pre nnUNet_results=$W/res nnUNet_extTrainer=$W/ext
cat > $W/ext/gpu_short.py <<'PY'
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunet_swin.trainers import nnUNetTrainerSwinUnet_3skip


class _Short:
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 3
        self.num_iterations_per_epoch = 25
        self.num_val_iterations_per_epoch = 5


class GpuShortSwinUnet_3skip(_Short, nnUNetTrainerSwinUnet_3skip):
    pass


class GpuShortnnUNetTrainer(_Short, nnUNetTrainer):
    pass
PY
python3 -c "from nnunet_swin.synthetic import write_msd_task; write_msd_task('$W/tasks', 'Task97_SynthMSD', num_train=12, num_test=1, shape=(8, 128, 160))"
timeout 250 python3 -m nnunet_swin.cli benchmark-msd $W/tasks --trainers GpuShortSwinUnet_3skip:2d GpuShortnnUNetTrainer \
    --folds 0 --device cuda --gpus 0 -np 8 --out $W/out
echo "benchmark-msd exit code $?"
cp $W/out/Dataset097_SynthMSD/leaderboard.md "$OUT"/msd_leaderboard.md 2>/dev/null
cp $W/out/Dataset097_SynthMSD/leaderboard.csv "$OUT"/msd_leaderboard.csv 2>/dev/null
cp $W/out/runs.csv "$OUT"/msd_runs.csv 2>/dev/null
tail -n 25 $W/out/logs/*GpuShortSwin*fold_0.log

echo "=== bench 512 batch 24"
timeout 120 python3 -m nnunet_swin.cli bench --device cuda --patch 512 --batch 24 --only "3 skips" bf16 --out /tmp/bench_512_b24
cp /tmp/bench_512_b24.csv "$OUT"/ 2>/dev/null
date
