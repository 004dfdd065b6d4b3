"""Tests of the Decathlon data preparation (nnunet_swin/experiments/msd.py): finding tasks, checking them,
unpacking archives safely, converting through nnU-Net's own converter without ever leaving a half-converted
data set, and knowing when preprocessing is complete."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile

import numpy as np
import pytest

from nnunet_swin.experiments import msd
from nnunet_swin.synthetic import write_msd_task

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> str:
    """A small two-modality task (4D images, like Task05_Prostate)."""
    return write_msd_task(str(tmp_path_factory.mktemp("msd")), "Task97_SynthMSD", num_train=5, num_test=1,
                          shape=(3, 24, 32), modalities=("T2", "ADC"))


def _copy(task_dir: str, parent, name: str = "Task97_SynthMSD") -> str:
    dst = os.path.join(str(parent), name)
    shutil.copytree(task_dir, dst)
    return dst


def _tar(src_dir: str, archive: str) -> str:
    with tarfile.open(archive, "w") as tf:
        tf.add(src_dir, arcname=os.path.basename(src_dir))
    return archive


def _env(root) -> dict:
    env = dict(os.environ)
    for var in msd.NNUNET_PATH_VARS:
        env[var] = os.path.join(str(root), var)
        os.makedirs(env[var], exist_ok=True)
    env["PYTHONPATH"] = REPO + os.pathsep + os.environ.get("PYTHONPATH", "")
    return env


# --- discovery -----------------------------------------------------------------------------------------
def test_discover_folder_archive_and_parent(task_dir, tmp_path):
    _tar(task_dir, str(tmp_path / "Task97_SynthMSD.tar"))
    _tar(task_dir, str(tmp_path / "Task04_Hippocampus.tar"))
    (tmp_path / "notes.txt").write_text("x")
    tasks, problems = msd.discover_tasks([str(tmp_path)])
    assert [(t.number, t.name, t.is_archive) for t in tasks] == [(4, "Hippocampus", True), (97, "SynthMSD", True)]
    assert problems == []
    # an unpacked folder wins over the archive of the same task
    _copy(task_dir, tmp_path)
    tasks, _ = msd.discover_tasks([str(tmp_path)])
    assert [(t.number, t.is_archive) for t in tasks] == [(4, True), (97, False)]
    assert tasks[1].dataset_name() == "Dataset097_SynthMSD" and tasks[0].dataset_name(500) == "Dataset504_Hippocampus"


def test_discover_filters_by_number_and_reports_what_is_missing(task_dir, tmp_path):
    folder = _copy(task_dir, tmp_path)
    tasks, problems = msd.discover_tasks([folder, str(tmp_path / "nope")], numbers=[97, 5])
    assert [t.number for t in tasks] == [97]
    assert any("nope: does not exist" in p for p in problems)
    assert any(p.startswith("task 05: not found") for p in problems)
    odd = tmp_path / "Prostate_data"
    odd.mkdir()
    _, problems = msd.discover_tasks([str(odd)])
    assert len(problems) == 1 and "not an MSD task" in problems[0] and "TaskXX_Name" in problems[0]


# --- checks --------------------------------------------------------------------------------------------
def test_a_good_task_passes_the_checks(task_dir):
    meta = msd.check_task_folder(task_dir)
    assert meta["modality"] == {"0": "T2", "1": "ADC"} and len(meta["training"]) == 5


@pytest.mark.parametrize("breakage, message", [
    ("no_json", "dataset.json is missing"),
    ("bad_json", "cannot be read as JSON"),
    ("no_labels_dir", "labelsTr/ is missing"),
    ("missing_label_file", "file not found"),
    ("no_modality", '"modality" must be a non-empty object'),
    ("wrong_channels", "expected 3D (one modality) or 4D with 3 modalities"),
    ("label_shape", "differs from its image's"),
    ("no_test", '"test" is missing'),
])
def test_malformed_tasks_name_the_problem(task_dir, tmp_path, breakage, message):
    import nibabel as nib

    folder = _copy(task_dir, tmp_path)
    meta_path = os.path.join(folder, "dataset.json")
    meta = json.load(open(meta_path))
    if breakage == "no_json":
        os.unlink(meta_path)
    elif breakage == "bad_json":
        open(meta_path, "w").write("{not json")
    elif breakage == "no_labels_dir":
        shutil.rmtree(os.path.join(folder, "labelsTr"))
    elif breakage == "missing_label_file":
        os.unlink(os.path.join(folder, meta["training"][2]["label"]))
    elif breakage == "no_modality":
        del meta["modality"]
    elif breakage == "no_test":
        del meta["test"]
    elif breakage == "wrong_channels":
        meta["modality"]["2"] = "DWI"
    elif breakage == "label_shape":
        path = os.path.join(folder, meta["training"][0]["label"])
        nib.save(nib.Nifti1Image(np.zeros((5, 5, 3), np.uint8), np.eye(4)), path)
    if breakage in ("no_modality", "wrong_channels", "no_test"):
        json.dump(meta, open(meta_path, "w"))
    with pytest.raises(msd.TaskError, match="malformed MSD task|dataset.json") as e:
        msd.check_task_folder(folder)
    assert message in str(e.value)


# --- archives ------------------------------------------------------------------------------------------
def test_archive_unpacks_to_its_task_folder(task_dir, tmp_path):
    archive = _tar(task_dir, str(tmp_path / "Task97_SynthMSD.tar"))
    folder = msd.extract_task_archive(archive, str(tmp_path / "out"))
    assert folder == str(tmp_path / "out" / "Task97_SynthMSD")
    assert sorted(os.listdir(os.path.join(folder, "imagesTr"))) == sorted(os.listdir(os.path.join(task_dir, "imagesTr")))


def _tar_with(archive: str, names: list[str]) -> str:
    with tarfile.open(archive, "w") as tf:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 1
            tf.addfile(info, io.BytesIO(b"x"))
    return archive


@pytest.mark.parametrize("names, message", [
    (["Task97_SynthMSD/dataset.json", "Task97_SynthMSD/../../evil.txt"], "cannot unpack"),
    (["/abs/Task97_SynthMSD/dataset.json"], "expected one top-level TaskXX_Name folder"),
    (["Task97_SynthMSD/dataset.json", "Other/x"], "expected one top-level TaskXX_Name folder"),
])
def test_unsafe_or_odd_archives_are_refused(tmp_path, names, message):
    archive = _tar_with(str(tmp_path / "Task97_SynthMSD.tar"), names)
    with pytest.raises(msd.TaskError, match=message):
        msd.extract_task_archive(archive, str(tmp_path / "out"))
    assert not (tmp_path / "evil.txt").exists()


@pytest.fixture
def python_without_tar_filters(monkeypatch):
    """tarfile as on Python < 3.10.12 / 3.11.4: no ``data_filter``, and ``extractall`` takes no ``filter``."""
    original = tarfile.TarFile.extractall

    def old_extractall(self, path=".", members=None, *, numeric_owner=False):
        return original(self, path, members, numeric_owner=numeric_owner)

    monkeypatch.delattr(tarfile, "data_filter")
    monkeypatch.setattr(tarfile.TarFile, "extractall", old_extractall)


def test_archives_unpack_without_tar_filters(task_dir, tmp_path, python_without_tar_filters):
    archive = _tar(task_dir, str(tmp_path / "Task97_SynthMSD.tar"))
    folder = msd.extract_task_archive(archive, str(tmp_path / "out"))
    assert sorted(os.listdir(os.path.join(folder, "imagesTr"))) == sorted(os.listdir(os.path.join(task_dir, "imagesTr")))


@pytest.mark.parametrize("kind", ["parent", "symlink"])
def test_without_tar_filters_what_the_data_filter_refuses_is_refused(tmp_path, python_without_tar_filters, kind):
    archive = str(tmp_path / "Task97_SynthMSD.tar")
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("Task97_SynthMSD/dataset.json")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
        if kind == "parent":
            info = tarfile.TarInfo("Task97_SynthMSD/../../evil.txt")
            info.size = 1
            tf.addfile(info, io.BytesIO(b"x"))
        else:
            info = tarfile.TarInfo("Task97_SynthMSD/link")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(info)
    with pytest.raises(msd.TaskError, match="cannot unpack .*refusing to unpack"):
        msd.extract_task_archive(archive, str(tmp_path / "out"))
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out").exists()


def test_a_file_that_is_not_a_tar_is_reported(tmp_path):
    archive = tmp_path / "Task97_SynthMSD.tar"
    archive.write_bytes(b"this is not a tar archive" * 40)
    with pytest.raises(msd.TaskError, match="cannot unpack"):
        msd.extract_task_archive(str(archive), str(tmp_path / "out"))


# --- conversion ----------------------------------------------------------------------------------------
def test_convert_archive_through_nnunet_then_skip(task_dir, tmp_path):
    """The archive is unpacked and converted by nnUNetv2_convert_MSD_dataset (4D split into channels); a
    second call finds it complete; no staging folder is left."""
    env = _env(tmp_path / "nn")
    archive = _tar(task_dir, str(tmp_path / "Task97_SynthMSD.tar"))
    task = msd.MSDTask(97, "SynthMSD", archive)
    log = []
    name = msd.convert_task(task, 0, 1, env, str(tmp_path / "logs"), log.append)
    assert name == "Dataset097_SynthMSD"
    folder = os.path.join(env["nnUNet_raw"], name)
    meta = json.load(open(os.path.join(folder, "dataset.json")))
    assert meta["channel_names"] == {"0": "T2", "1": "ADC"} and meta["labels"] == {"background": 0, "disc": 1, "bar": 2}
    images = sorted(os.listdir(os.path.join(folder, "imagesTr")))
    assert len(images) == 10 and images[:2] == ["synthmsd_000_0000.nii.gz", "synthmsd_000_0001.nii.gz"]
    assert os.listdir(env["nnUNet_raw"]) == [name]  # staging removed
    log.clear()
    assert msd.convert_task(task, 0, 1, env, str(tmp_path / "logs"), log.append) == name
    assert any("already converted" in m for m in log) and not any(m.startswith("[run]") for m in log)


def test_malformed_task_leaves_nothing_in_nnunet_raw(task_dir, tmp_path):
    env = _env(tmp_path / "nn")
    folder = _copy(task_dir, tmp_path)
    os.unlink(os.path.join(folder, "labelsTr", "synthmsd_001.nii.gz"))
    with pytest.raises(msd.TaskError, match="file not found"):
        msd.convert_task(msd.MSDTask(97, "SynthMSD", folder), 0, 1, env, str(tmp_path / "logs"), lambda m: None)
    assert os.listdir(env["nnUNet_raw"]) == []


def test_taken_id_and_foreign_partial_folder_are_errors(task_dir, tmp_path):
    env = _env(tmp_path / "nn")
    task = msd.MSDTask(97, "SynthMSD", task_dir)
    os.makedirs(os.path.join(env["nnUNet_preprocessed"], "Dataset097_Other"))
    with pytest.raises(msd.TaskError, match="id 97 is already taken by Dataset097_Other.*--id-offset"):
        msd.convert_task(task, 0, 1, env, str(tmp_path / "logs"), lambda m: None)
    os.makedirs(os.path.join(env["nnUNet_raw"], "Dataset197_SynthMSD", "labelsTr"))
    with pytest.raises(msd.TaskError, match="not a complete conversion"):
        msd.convert_task(task, 100, 1, env, str(tmp_path / "logs"), lambda m: None)


# --- preprocessing state -------------------------------------------------------------------------------
def test_missing_preprocessing_reads_plans_and_case_files(tmp_path):
    env = _env(tmp_path)
    root = os.path.join(env["nnUNet_preprocessed"], "Dataset097_SynthMSD")
    assert msd.missing_preprocessing("Dataset097_SynthMSD", "nnUNetPlans", ["2d"], env) == ["2d"]
    os.makedirs(os.path.join(root, "nnUNetPlans_2d"))
    json.dump({"numTraining": 2}, open(os.path.join(root, "dataset.json"), "w"))
    plans = {"configurations": {"2d": {"data_identifier": "nnUNetPlans_2d"},
                                "3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres"},
                                "3d_mine": {"inherits_from": "2d"}}}
    json.dump(plans, open(os.path.join(root, "nnUNetPlans.json"), "w"))
    open(os.path.join(root, "nnUNetPlans_2d", "a.pkl"), "w").close()
    assert msd.missing_preprocessing("Dataset097_SynthMSD", "nnUNetPlans", ["2d", "3d_fullres"], env) == ["2d", "3d_fullres"]
    open(os.path.join(root, "nnUNetPlans_2d", "b.pkl"), "w").close()
    assert msd.missing_preprocessing("Dataset097_SynthMSD", "nnUNetPlans", ["2d", "3d_mine"], env) == []
    with pytest.raises(msd.TaskError, match="no configuration 3d_lowres; they have 2d, 3d_fullres, 3d_mine"):
        msd.missing_preprocessing("Dataset097_SynthMSD", "nnUNetPlans", ["3d_lowres"], env)
    # the benchmark's default 3D configuration: left out, not an error, where nnU-Net did not plan it
    assert msd.missing_preprocessing("Dataset097_SynthMSD", "nnUNetPlans", ["2d", "3d_lowres"], env,
                                     if_planned={"3d_lowres"}) == []
    assert msd.missing_preprocessing("Dataset097_SynthMSD", "nnUNetPlans", ["2d", "3d_fullres"], env,
                                     if_planned={"3d_fullres"}) == ["3d_fullres"]
    assert msd.missing_preprocessing("Dataset098_Unplanned", "nnUNetPlans", ["2d", "3d_fullres"], env,
                                     if_planned={"3d_fullres"}) == ["2d", "3d_fullres"]  # nnU-Net decides
