#!/usr/bin/env bash
# Issue 10's GPU measurements in ONE device call of at most 8 minutes (benchmarks/README.md says how to run it):
#  1. `nnunet-swin bench` at 224 and 512, batch 24: nnU-Net's CNN and the default Swin-Unet, fp32 and bf16,
#     eager and torch.compile'd (train img/s, compile seconds, peak memory, kernel launches per step);
#  2. a short real `nnUNetv2_train ... -device cuda` with nnU-Net's default torch.compile on a synthetic 2D
#     data set, Swin-Unet (nnUNetTrainerSwinUnet_bench) and nnUNetTrainer (nnUNetTrainer_bench): epoch 0
#     (compile included), steady seconds per epoch and their difference.
# Every part has a hard time limit, and bench writes its CSV/JSON after every row, so what finished comes
# back when a part runs out of time. At most 7 files under $OUT.
# Usage (repository root): bash benchmarks/gpu/compile_and_train.sh          # on the GPU machine
#                          bash benchmarks/gpu/compile_and_train.sh --smoke  # CPU, tiny sizes: the plumbing
# SIZES="224" (or "") limits the bench part to those sizes (none).
# If .whl/ (wheels of nnunetv2 and its dependencies) is in the repository root, they are installed first.
set -uo pipefail
lim() { local left=$((DEADLINE - SECONDS - 5)); [ "$1" -lt "$left" ] && echo "$1" || echo $((left > 1 ? left : 1)); }
SMOKE=0; [ "${1:-}" = "--smoke" ] && SMOKE=1
# the whole call (the device tool allows 8 minutes); each part gets at most what is left of it
DEADLINE=$((SECONDS + ${BUDGET_S:-$([ $SMOKE = 1 ] && echo 1500 || echo 465)}))
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-/tmp/gpu_bench_out}; mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [ -d "$ROOT/.whl" ]; then
    timeout "$(lim 60)" $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$ROOT"/.whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$ROOT:${PYTHONPATH:-}
if [ $SMOKE = 1 ]; then
    # no compile in the smoke run (minutes on 2 cores; tests/experiments/test_bench.py covers it)
    DEVICE=cpu; SIZES=${SIZES-64}; BATCH=2; BENCH_EXTRA="--skip compile --warmup 0 --repeats 1 --threads 2"
    T_BENCH=300; T_PLAN=600; T_SWIN=300; T_CNN=300; IMG=64; CASES=10; NP=2
    export NNUNET_SWIN_BENCH_EPOCHS=3 NNUNET_SWIN_BENCH_ITERS=3 NNUNET_SWIN_BENCH_VAL_ITERS=2
else
    DEVICE=cuda; SIZES=${SIZES-224 512}; BATCH=24; BENCH_EXTRA="--warmup 2 --repeats 5"
    T_BENCH=110; T_PLAN=90; T_SWIN=110; T_CNN=70; IMG=256; CASES=24; NP=8
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi
date -u
$PY -c "import torch, nnunetv2; print('torch', torch.__version__, 'nnunetv2', nnunetv2.__version__ if hasattr(nnunetv2, '__version__') else '')"

for S in $SIZES; do
    echo "=== bench $S, batch $BATCH, $DEVICE (limit ${T_BENCH} s)"
    timeout -k 5 "$(lim $T_BENCH)" $PY -m nnunet_swin.cli bench --device $DEVICE --patch $S --batch $BATCH \
        --only "3 skips" bf16 $BENCH_EXTRA --out "$OUT/bench_${S}_b${BATCH}"
    echo "bench $S exit code $? (124: time limit; the rows finished before it are in the files)"
done

echo "=== nnUNetv2_train with nnU-Net's default compile, $DEVICE"
W=/tmp/gpu_bench_work; rm -rf "$W"; mkdir -p "$W/ext"
cp "$ROOT/benchmarks/gpu/epoch_times.py" "$W/ext/"
export nnUNet_raw=$W/raw nnUNet_preprocessed=$W/pre nnUNet_results=$W/res nnUNet_extTrainer=$W/ext nnUNet_n_proc_DA=4
unset nnUNet_compile  # nnU-Net's default: compile on CUDA (nnU-Net never compiles on the CPU)
timeout "$(lim 60)" $PY -c "from nnunet_swin.synthetic import write_synthetic_dataset as w; w('$W/raw', 997, num_train=$CASES, num_test=0, shape=($IMG, $IMG))" &&
timeout "$(lim $T_PLAN)" nnUNetv2_plan_and_preprocess -d 997 -c 2d -np $NP > "$W/plan.log" 2>&1
echo "plan_and_preprocess exit code $?"; tail -n 3 "$W/plan.log"
for TR_T in nnUNetTrainerSwinUnet_bench:$T_SWIN nnUNetTrainer_bench:$T_CNN; do
    TR=${TR_T%%:*}; echo "--- $TR (limit $(lim ${TR_T##*:}) s)"
    timeout -k 5 "$(lim ${TR_T##*:})" nnUNetv2_train 997 2d 0 -tr $TR -device $DEVICE > "$W/$TR.log" 2>&1
    echo "$TR exit code $? (124: time limit)"; grep -E "Using torch.compile|Epoch time|Traceback|Error" "$W/$TR.log" | head -n 12
done
$PY "$ROOT/benchmarks/gpu/epoch_times.py" "$W/res" "$OUT/train_epochs.json"
date -u
