#!/usr/bin/env bash
# Synthetic anisotropic volumes (spacing 3 x 1 x 1), nnU-Net's 3d_fullres plan, fold 0 of nnU-Net's CNN and the
# 3D Swin-Unet with 3 and 0 skips on the same short budget (BENCH_EPOCHS x BENCH_ITERS), on the CPU, two at a time.
# Usage: bash benchmarks/synthetic3d/run_cpu.sh OUT_DIR   (prints fold-0 validation Dice and seconds per epoch)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mkdir -p "$1" && cd "$1" && pwd)"
export nnUNet_raw="$out/raw" nnUNet_preprocessed="$out/pre" nnUNet_results="$out/res"
export nnUNet_extTrainer="$here" nnUNet_n_proc_DA=1 OMP_NUM_THREADS=1
python -c "from nnunet_swin.synthetic import write_synthetic_volumes as w; w('$nnUNet_raw', 993, 'Synth3D', num_train=24, num_test=0, shape=(24, 64, 64), spacing=(3.0, 1.0, 1.0), seed=5)"
nnUNetv2_plan_and_preprocess -d 993 -c 3d_fullres -np 1 -npfp 1 > "$out/plan.log" 2>&1
for t in Bench3D_nnUNet Bench3D_Swin Bench3D_Swin_0skip; do
  nnUNetv2_train 993 3d_fullres 0 -tr "$t" -device cpu > "$out/$t.log" 2>&1 &
  [ "$t" = Bench3D_Swin ] && wait
done
wait
for t in Bench3D_nnUNet Bench3D_Swin Bench3D_Swin_0skip; do
  python - "$nnUNet_results" "$t" "$out/$t.log" <<'PY'
import json, re, sys, glob
res, t, log = sys.argv[1:]
s = json.load(open(glob.glob(f"{res}/Dataset993_Synth3D/{t}__nnUNetPlans__3d_fullres/fold_0/validation/summary.json")[0]))
times = [float(x) for x in re.findall(r"Epoch time: ([0-9.]+) s", open(log).read())]
fg = s["foreground_mean"]["Dice"]
per = {k: round(v["Dice"], 3) for k, v in s["mean"].items()}
print(f"{t}: foreground Dice {fg:.3f} per label {per}; epoch s median {sorted(times)[len(times)//2]:.1f}")
PY
done
