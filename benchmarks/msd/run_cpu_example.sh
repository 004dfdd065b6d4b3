#!/usr/bin/env bash
# The example leaderboard of benchmarks/README.md: the default benchmark-msd models (on a 5-epoch CPU
# schedule) on a synthetic task in the Decathlon's layout, folds 0 and 1, on the CPU.
# Usage: bash benchmarks/msd/run_cpu_example.sh [WORKDIR]   (from the repository root, package installed
# or the repository on PYTHONPATH)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
W=${1:-/tmp/msd_cpu_example}
mkdir -p "$W/tasks" "$W/ext"
cp "$HERE/short_trainers.py" "$W/ext/"
export nnUNet_raw=$W/raw nnUNet_preprocessed=$W/pre nnUNet_results=$W/res nnUNet_extTrainer=$W/ext
python -c "from nnunet_swin.synthetic import write_msd_task; write_msd_task('$W/tasks', 'Task97_SynthMSD', num_train=10, num_test=1, shape=(8, 64, 64), modalities=('T2', 'ADC'), seed=3)"
python -m nnunet_swin.cli benchmark-msd "$W/tasks" --tasks 97 \
    --trainers nnUNetTrainerSwinUnet_0skip_5ep nnUNetTrainerSwinUnet_1skip_5ep nnUNetTrainerSwinUnet_2skip_5ep \
               nnUNetTrainerSwinUnet_3skip_5ep nnUNetTrainer_5ep \
    --folds 0 1 --device cpu -np 2 --out "$W/out"
cp "$W/out/Dataset097_SynthMSD/leaderboard.md" "$W/out/Dataset097_SynthMSD/leaderboard.csv" "$HERE/"
