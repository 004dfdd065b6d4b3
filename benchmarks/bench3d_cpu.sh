#!/usr/bin/env bash
# The 3D figures of benchmarks/README.md ("3D: SwinUnet against nnU-Net's 3D CNN and MONAI's SwinUNETR"):
# at nnU-Net's typical 3D plans, parameters, GMACs and saved activations of every row, and training steps
# timed where one step takes a few minutes at most on a 2-core CPU. About 30 min on 2 quiet cores.
# Run from a checkout: `python -m nnunet_swin.cli` is the checkout's code.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
bench() { "$PY" -m nnunet_swin.cli bench --classes 3 --threads 2 "$@"; }
hippocampus=(--patch 40 56 40 --batch 9)
prostate=(--patch 20 320 256 --spacing 3.6 0.62 0.62 --batch 2)
iso128=(--patch 128 128 128 --batch 2)

# hippocampus-like: every row but MONAI timed (MONAI's padded 64^3 batch 9 takes minutes a step)
bench "${hippocampus[@]}" --skip MONAI --warmup 1 --repeats 3 --out benchmarks/cpu3d_hippocampus_b9
# the large plans: memory and GMACs of every SwinUnet row (one forward of one patch), then one timed step of
# the CNN and the checkpointed rows
for plan in prostate iso128; do
    declare -n args=$plan
    bench "${args[@]}" --skip MONAI --repeats 0 --out "benchmarks/cpu3d_${plan}_b2_memory"
    bench "${args[@]}" --only "grad checkpointing" --warmup 0 --repeats 1 --out "benchmarks/cpu3d_${plan}_b2_time"
done
# MONAI's SwinUNETR on the meta device (shapes only: 12-15 GB of saved activations per patch at the large plans)
for plan in hippocampus prostate iso128; do
    declare -n args=$plan
    bench "${args[@]}" --device meta --only MONAI --out "benchmarks/cpu3d_${plan}_monai"
done
# one first stage's attention: global against (shifted) windows, formula, counted, timed
for plan in hippocampus prostate; do
    declare -n args=$plan
    bench "${args[@]}" --complexity --out "benchmarks/cpu3d_${plan}"
done
