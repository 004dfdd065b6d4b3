"""Suite-wide: the slowest test files start first, so the xdist workers (pyproject addopts, one file per
worker, xdist's own reordering off) finish together instead of one running nnU-Net's 5-fold test alone at
the end."""

from __future__ import annotations

import pytest

SLOWEST_FIRST = ("test_nnunet_cli.py", "test_ablation.py", "test_slurm.py", "test_msd_benchmark.py",
                 "test_3d.py", "test_network_compile.py", "test_registration.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file is kept
