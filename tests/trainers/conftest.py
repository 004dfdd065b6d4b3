"""Session fixtures for the trainer tests: temporary nnU-Net folders and a tiny synthetic 2D data set
planned and preprocessed once through ``nnUNetv2_plan_and_preprocess``."""

from __future__ import annotations

import pytest

from trainer_test_helpers import DATASET_ID, Workspace, nnunet_bin, run


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("nnunet_swin_trainers"))


@pytest.fixture(scope="session")
def planned(workspace: Workspace):
    """Dataset990: synthetic discs/bars at 112 x 80, planned and preprocessed (2d) once."""
    from nnunet_swin.synthetic import write_synthetic_dataset

    ds = write_synthetic_dataset(str(workspace.raw), DATASET_ID, "SwinSynthetic", num_train=10, num_test=3,
                                 shape=(112, 80), seed=1)
    # the planner calls torch.set_num_threads(nnUNet_n_proc_DA), so it needs >= 1 there
    run([nnunet_bin("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "2d", "-np", "1", "-npfp", "1"],
        {**workspace.env, "nnUNet_n_proc_DA": "1"})
    return ds
