"""End to end in 3D through nnU-Net's own console scripts in subprocesses, on the CPU: anisotropic synthetic
volumes, ``nnUNetv2_plan_and_preprocess -c 3d_fullres``, ``nnUNetv2_train ... 3d_fullres`` with short
subclasses of the 0- and 3-skip trainers (the user's, from ``user_trainers.py``), ``nnUNetv2_predict``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from trainer_test_helpers import nnunet_bin, run

pytestmark = pytest.mark.slow

DATASET_3D = 992
TRAINERS_3D = ("TestSwin_0skip", "TestSwin_3skip_DS")


def _train_in_parallel(workspace, trainers) -> dict[str, str]:
    """Both trainings at once (each is mostly start-up and validation at this size); their outputs."""
    procs = {t: subprocess.Popen([nnunet_bin("nnUNetv2_train"), str(DATASET_3D), "3d_fullres", "0", "-tr", t,
                                  "-device", "cpu"], env={**workspace.env, "OMP_NUM_THREADS": "1"},
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for t in trainers}
    outputs = {}
    for t, p in procs.items():
        outputs[t], _ = p.communicate(timeout=600)
        assert p.returncode == 0, f"{t} failed:\n{outputs[t][-5000:]}"
    return outputs


def test_3d_fullres_plan_train_predict_on_anisotropic_volumes(workspace):
    import nibabel as nib

    from nnunet_swin.synthetic import write_synthetic_volumes

    ds = write_synthetic_volumes(str(workspace.raw), DATASET_3D, "SwinSynthetic3D", num_train=5, num_test=1,
                                 shape=(16, 48, 40), spacing=(3.0, 1.0, 1.0), seed=2)
    # one fingerprint worker: its default of 8 spawns 8 interpreters for 6 small volumes
    run([nnunet_bin("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_3D), "-c", "3d_fullres", "-np", "1",
         "-npfp", "1"], {**workspace.env, "nnUNet_n_proc_DA": "1"})
    name = Path(ds.folder).name
    planned = json.loads((workspace.pre / name / "nnUNetPlans.json").read_text())["configurations"]["3d_fullres"]
    # thick slices: nnU-Net pools in-plane first, so the embedding is [2, 4, 4] and the network's multiple
    # [4, 8, 8] divides the planned patch, which is kept
    assert planned["patch_size"] == [16, 48, 40]
    assert planned["architecture"]["arch_kwargs"]["strides"] == [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]

    outputs = _train_in_parallel(workspace, TRAINERS_3D)
    for trainer, output in outputs.items():
        assert "planned patch size [16, 48, 40] is already a multiple of [4, 8, 8] per axis; kept" in output
        assert "3D network for 3d_fullres" in output
        assert "strides of the four stages [[2, 4, 4], [4, 8, 8], [4, 8, 8], [4, 8, 8]]" in output
        # windows fitted to the 8x12x10 first stage (window 7 would pad it to 14x14x14), then clamped
        assert "8x12x10 tokens, window 4x6x5" in output and "4x6x5 tokens, window 4x6x5" in output
        assert "of activations saved for backward per batch of 2 in fp32" in output
        folder = workspace.res / name / f"{trainer}__nnUNetPlans__3d_fullres"
        saved = json.loads((folder / "plans.json").read_text())
        assert saved["configurations"]["3d_fullres"]["patch_size"] == [16, 48, 40]
        assert (folder / "fold_0" / "checkpoint_final.pth").exists()
        assert (folder / "fold_0" / "validation" / "summary.json").exists()
    assert "deep supervision on (scales [[1.0, 1.0, 1.0], [0.5, 0.25, 0.25], [0.25, 0.125, 0.125], " \
           "[0.25, 0.125, 0.125]])" in outputs["TestSwin_3skip_DS"]

    # nnUNetv2_predict rebuilds the network from the class name and plans.json alone and loads the checkpoint
    # trained with deep supervision strictly; each training's final validation above already predicted too
    out = workspace.root / "pred3d"
    run([nnunet_bin("nnUNetv2_predict"), "-i", ds.images_ts, "-o", str(out), "-d", str(DATASET_3D), "-c", "3d_fullres",
         "-tr", "TestSwin_3skip_DS", "-f", "0", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"],
        workspace.env)
    for case in ds.test_cases:
        image = nib.load(Path(ds.images_ts) / f"{case}_0000.nii.gz")
        pred = nib.load(out / f"{case}.nii.gz")
        assert pred.shape == image.shape == (40, 48, 16)
        assert set(pred.get_fdata().astype(int).ravel()) <= {0, 1, 2}
