"""Small data sets: a synthetic 2D generator in nnU-Net raw format (demo, tests, ablations, benchmarks),
the same task as 3D volumes in the Medical Segmentation Decathlon's layout (MSD benchmark tests), and a
converter for the ISBI 2012 membrane images.

Synthetic task: grey textured background with bright discs (label 1) and dark bars (label 2),
smooth shading, blur and noise. Easy enough that a short training gets a clear Dice, hard enough that
a trivial prediction does not (the shapes cover ~10-25 % of the image).

Only numpy, scipy, Pillow and nibabel (all nnU-Net dependencies); 2D images are written as PNG, the format
nnU-Net reads 2D natural images in (``NaturalImage2DIO``), MSD volumes as NIfTI.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

SYNTHETIC_LABELS = {"background": 0, "disc": 1, "bar": 2}


def synthetic_case(rng: np.random.Generator, shape: Sequence[int] = (96, 128)) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8, H x W) and its label map (uint8: 0 background, 1 disc, 2 bar)."""
    from scipy.ndimage import gaussian_filter

    h, w = int(shape[0]), int(shape[1])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    seg = np.zeros((h, w), np.uint8)
    scale = min(h, w)
    # bars first, discs drawn on top
    for _ in range(rng.integers(1, 3)):
        cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
        angle = rng.uniform(0, np.pi)
        length, width = rng.uniform(0.3, 0.6) * scale, rng.uniform(0.06, 0.12) * scale
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        seg[(np.abs(u) < length / 2) & (np.abs(v) < width / 2)] = 2
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        ry, rx = rng.uniform(0.06, 0.16) * scale, rng.uniform(0.06, 0.16) * scale
        seg[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1

    background = gaussian_filter(rng.normal(0, 1, (h, w)), 3) * 12
    shading = 20 * ((xx / w) * rng.uniform(-1, 1) + (yy / h) * rng.uniform(-1, 1))
    img = 110 + background + shading
    img[seg == 1] += rng.uniform(55, 80)
    img[seg == 2] -= rng.uniform(45, 65)
    img = gaussian_filter(img, 0.8) + rng.normal(0, 8, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8), seg


@dataclass
class RawDataset:
    """Where a written data set lies and what it holds."""

    folder: str
    dataset_id: int
    name: str
    train_cases: list[str]
    test_cases: list[str]
    labels: dict

    @property
    def images_ts(self) -> str:
        return os.path.join(self.folder, "imagesTs")

    @property
    def labels_ts(self) -> str:
        return os.path.join(self.folder, "labelsTs")


def dataset_folder_name(dataset_id: int, name: str) -> str:
    return f"Dataset{int(dataset_id):03d}_{name}"


def write_raw_dataset(
    raw_root: str,
    dataset_id: int,
    name: str,
    train: Iterable[tuple[str, np.ndarray, np.ndarray]],
    test: Iterable[tuple[str, np.ndarray, np.ndarray]] = (),
    labels: dict | None = None,
    channel_name: str = "intensity",
    overwrite: bool = True,
    spacing: Sequence[float] | None = None,
) -> RawDataset:
    """Write (case_id, image, seg) cases plus dataset.json in nnU-Net's raw format: 2D uint8 HxW as PNGs, or,
    with ``spacing`` (z, y, x), z x y x x volumes as NIfTI at that spacing. Test cases go to imagesTs/labelsTs
    (labelsTs is not part of nnU-Net's format; used for evaluation)."""
    labels = dict(labels or {"background": 0, "foreground": 1})
    folder = os.path.join(raw_root, dataset_folder_name(dataset_id, name))
    if overwrite and os.path.isdir(folder):
        shutil.rmtree(folder)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    ending = ".png" if spacing is None else ".nii.gz"
    written = {"Tr": [], "Ts": []}
    for split, cases in (("Tr", train), ("Ts", test)):
        for case_id, img, seg in cases:
            for array, sub, stem in ((img, "images", f"{case_id}_0000"), (seg, "labels", case_id)):
                path = os.path.join(folder, f"{sub}{split}", stem + ending)
                if spacing is None:
                    _save_png(array, path)
                else:
                    _save_nifti(array, spacing, path)
            written[split].append(case_id)
    dataset_json = {
        "channel_names": {"0": channel_name},
        "labels": labels,
        "numTraining": len(written["Tr"]),
        "file_ending": ending,
        "name": name,
        "description": "written by nnunet_swin.synthetic",
    }
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(dataset_json, f, indent=2)
    return RawDataset(folder, int(dataset_id), name, written["Tr"], written["Ts"], labels)


def write_synthetic_dataset(
    raw_root: str,
    dataset_id: int = 990,
    name: str = "SwinSynthetic",
    num_train: int = 40,
    num_test: int = 10,
    shape: Sequence[int] = (96, 128),
    seed: int = 0,
) -> RawDataset:
    """The synthetic disc/bar data set in nnU-Net raw format (deterministic for a given seed)."""
    rng = np.random.default_rng(seed)
    train = [(f"syn_{i:03d}", *synthetic_case(rng, shape)) for i in range(num_train)]
    test = [(f"syn_test_{i:03d}", *synthetic_case(rng, shape)) for i in range(num_test)]
    return write_raw_dataset(raw_root, dataset_id, name, train, test, SYNTHETIC_LABELS, "synthetic")


def synthetic_volume(rng: np.random.Generator, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """A volume (float32, z x y x x) and its label map (uint8) whose every slice is an independent synthetic
    case: a thick-slice stack, as in anisotropic MRI."""
    slices = [synthetic_case(rng, shape[1:]) for _ in range(int(shape[0]))]
    return np.stack([s[0] for s in slices]).astype(np.float32), np.stack([s[1] for s in slices])


def _save_png(image: np.ndarray, path: str) -> None:
    from PIL import Image

    Image.fromarray(np.asarray(image, np.uint8)).save(path)


def _save_nifti(volume: np.ndarray, spacing: Sequence[float], path: str) -> None:
    """Save a (z, y, x[, c]) array as NIfTI, which stores (x, y, z[, c]), with voxel ``spacing`` (z, y, x)."""
    import nibabel as nib

    affine = np.diag([float(spacing[2]), float(spacing[1]), float(spacing[0]), 1.0])
    nib.save(nib.Nifti1Image(np.moveaxis(volume, (0, 1, 2), (2, 1, 0)), affine), path)


def write_synthetic_volumes(
    raw_root: str,
    dataset_id: int = 992,
    name: str = "SwinSynthetic3D",
    num_train: int = 6,
    num_test: int = 2,
    shape: Sequence[int] = (16, 48, 40),
    spacing: Sequence[float] = (3.0, 1.0, 1.0),
    seed: int = 0,
) -> RawDataset:
    """The synthetic task as anisotropic volumes (``shape`` and ``spacing`` z, y, x) in nnU-Net raw format
    (NIfTI), for 3D configurations; test cases go to imagesTs/labelsTs as in ``write_raw_dataset``."""
    rng = np.random.default_rng(seed)
    train = [(f"vol_{i:03d}", *synthetic_volume(rng, shape)) for i in range(num_train)]
    test = [(f"vol_test_{i:03d}", *synthetic_volume(rng, shape)) for i in range(num_test)]
    return write_raw_dataset(raw_root, dataset_id, name, train, test, SYNTHETIC_LABELS, "MRI", spacing=spacing)


def write_msd_task(
    parent: str,
    task: str = "Task97_SynthMSD",
    num_train: int = 6,
    num_test: int = 1,
    shape: Sequence[int] = (6, 48, 64),
    modalities: Sequence[str] = ("MRI",),
    spacing: Sequence[float] = (3.0, 1.0, 1.0),
    seed: int = 0,
) -> str:
    """A task folder as the Decathlon ships it: ``imagesTr``/``labelsTr``/``imagesTs`` NIfTI volumes (4D with
    the modalities last when there are several, as in MSD), and MSD's ``dataset.json`` (``modality``,
    ``labels`` with string keys, ``training`` pairs, ``test``). ``shape`` and ``spacing`` are (z, y, x);
    every slice is an independent synthetic case. Returns the folder."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(parent, task)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    prefix = task.split("_", 1)[1].lower()

    def volume() -> tuple[np.ndarray, np.ndarray]:
        img, seg = synthetic_volume(rng, shape)
        channels = [img] + [255 - img + rng.normal(0, 5, img.shape) for _ in modalities[1:]]
        data = np.stack(channels, -1)  # z, y, x, c
        return (data if len(modalities) > 1 else data[..., 0]).astype(np.float32), seg

    training, test = [], []
    for i in range(num_train + num_test):
        name = f"{prefix}_{i:03d}.nii.gz"
        img, seg = volume()
        split = "Tr" if i < num_train else "Ts"
        _save_nifti(img, spacing, os.path.join(folder, f"images{split}", name))
        if split == "Tr":
            _save_nifti(seg.astype(np.uint8), spacing, os.path.join(folder, "labelsTr", name))
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            test.append(f"./imagesTs/{name}")
    dataset_json = {
        "name": task.split("_", 1)[1], "description": "synthetic, written by nnunet_swin.synthetic.write_msd_task",
        "tensorImageSize": "4D" if len(modalities) > 1 else "3D",
        "modality": {str(i): m for i, m in enumerate(modalities)},
        "labels": {str(v): k for k, v in SYNTHETIC_LABELS.items()},
        "numTraining": len(training), "numTest": len(test), "training": training, "test": test,
    }
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(dataset_json, f, indent=4)
    return folder


# --- real data: ISBI 2012 membranes ------------------------------------------------------------------
def find_isbi2012(repo_root: str | None = None) -> str | None:
    """The ISBI 2012 membrane folder (images/, labels/) if present, else None."""
    candidates = [os.environ.get("NNUNET_SWIN_ISBI2012", "")]
    root = repo_root or os.getcwd()
    candidates += [os.path.join(root, "..", "shared", "data", "isbi2012-membrane"),
                   "/work/shared/data/isbi2012-membrane"]
    for c in candidates:
        if c and os.path.isdir(os.path.join(c, "images")) and os.path.isdir(os.path.join(c, "labels")):
            return os.path.abspath(c)
    return None


def write_isbi2012_dataset(
    source: str,
    raw_root: str,
    dataset_id: int = 991,
    name: str = "ISBI2012",
    size: int | None = None,
    test_ids: Sequence[int] = (),
    max_cases: int | None = None,
) -> RawDataset:
    """ISBI 2012 membranes in nnU-Net raw format; label 1 = membrane (pixel == 0 in labels/N.png).
    ``size`` resizes (area for the image, nearest on the membrane mask) to size x size to save compute."""
    from PIL import Image

    ids = sorted(int(os.path.splitext(f)[0]) for f in os.listdir(os.path.join(source, "images")) if f.endswith(".png"))
    if max_cases is not None:
        ids = ids[:max_cases]
    train, test = [], []
    for i in ids:
        img = Image.open(os.path.join(source, "images", f"{i}.png")).convert("L")
        lab = Image.open(os.path.join(source, "labels", f"{i}.png")).convert("L")
        if size is not None:
            img = img.resize((size, size), Image.BOX)
            lab = lab.resize((size, size), Image.NEAREST)
        seg = (np.asarray(lab) == 0).astype(np.uint8)
        case = (f"isbi_{i:02d}", np.asarray(img), seg)
        (test if i in set(test_ids) else train).append(case)
    return write_raw_dataset(raw_root, dataset_id, name, train, test, {"background": 0, "membrane": 1}, "EM")


def dice(pred: np.ndarray, gt: np.ndarray, label: int) -> float:
    p, g = pred == label, gt == label
    denom = p.sum() + g.sum()
    return float("nan") if denom == 0 else float(2 * (p & g).sum() / denom)
