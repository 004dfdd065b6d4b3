#!/usr/bin/env bash
# nnU-Net's cascade through the 3D Swin-Unet on the CPU: synthetic 128^3 volumes planned with a 1 GB memory
# target (so nnU-Net adds 3d_lowres and 3d_cascade_fullres), 3d_lowres on all 5 folds (their validation writes
# the next stage's input for every training case), 3d_cascade_fullres fold 0 on those, then nnUNetv2_predict
# with 3d_lowres and with the cascade on the lowres prediction. Prints what each step produced.
# Usage: bash benchmarks/cascade3d/run_cpu.sh OUT_DIR
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mkdir -p "$1" && cd "$1" && pwd)"
export nnUNet_raw="$out/raw" nnUNet_preprocessed="$out/pre" nnUNet_results="$out/res"
export nnUNet_extTrainer="$here" nnUNet_n_proc_DA=1 OMP_NUM_THREADS=1
t=Cascade_Swin
python -c "from nnunet_swin.synthetic import write_synthetic_volumes as w; w('$nnUNet_raw', 994, 'Cascade3D', num_train=5, num_test=1, shape=(128, 128, 128), spacing=(1.0, 1.0, 1.0), seed=0)"
nnUNetv2_plan_and_preprocess -d 994 -c 3d_fullres 3d_lowres -np 1 1 -npfp 1 -gpu_memory_target 1 > "$out/plan.log" 2>&1
for fold in 0 1 2 3 4; do
  nnUNetv2_train 994 3d_lowres "$fold" -tr "$t" -device cpu > "$out/lowres_$fold.log" 2>&1
done
nnUNetv2_train 994 3d_cascade_fullres 0 -tr "$t" -device cpu > "$out/cascade_0.log" 2>&1
images="$nnUNet_raw/Dataset994_Cascade3D/imagesTs"
nnUNetv2_predict -i "$images" -o "$out/pred_lowres" -d 994 -c 3d_lowres -f 0 -tr "$t" -device cpu \
  > "$out/pred_lowres.log" 2>&1
nnUNetv2_predict -i "$images" -o "$out/pred_cascade" -d 994 -c 3d_cascade_fullres -f 0 -tr "$t" -device cpu \
  -prev_stage_predictions "$out/pred_lowres" > "$out/pred_cascade.log" 2>&1
python - "$out" <<'PY'
import glob, json, sys
import nibabel as nib, numpy as np, torch
out = sys.argv[1]
plans = json.load(open(f"{out}/pre/Dataset994_Cascade3D/nnUNetPlans.json"))["configurations"]
for c in ("3d_lowres", "3d_fullres", "3d_cascade_fullres"):
    p = plans[c]
    print(f"plan {c}: patch {p.get('patch_size', 'as 3d_fullres')}, spacing {p.get('spacing', 'as 3d_fullres')}, "
          f"previous stage {p.get('previous_stage')}, next stage {p.get('next_stage')}")
res = f"{out}/res/Dataset994_Cascade3D"
print("next-stage inputs written by the 5 lowres folds:",
      len(glob.glob(f"{res}/Cascade_Swin__nnUNetPlans__3d_lowres/predicted_next_stage/3d_cascade_fullres/*")))
ckpt = torch.load(f"{res}/Cascade_Swin__nnUNetPlans__3d_cascade_fullres/fold_0/checkpoint_final.pth",
                  map_location="cpu", weights_only=False)
print("cascade network input channels (image + one-hot of the lowres foreground labels):",
      ckpt["network_weights"]["encoder.patch_embed.proj.weight"].shape[1])
image = nib.load(glob.glob(f"{out}/raw/Dataset994_Cascade3D/imagesTs/*.nii.gz")[0])
for stage in ("lowres", "cascade"):
    pred = nib.load(glob.glob(f"{out}/pred_{stage}/*.nii.gz")[0])
    labels = np.unique(np.asarray(pred.dataobj)).tolist()
    print(f"prediction {stage}: shape {pred.shape} (image {image.shape}), labels {labels}")
PY
