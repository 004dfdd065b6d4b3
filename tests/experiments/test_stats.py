"""Tests of the statistics helpers both reports use (nnunet_swin/experiments/stats.py), with
scipy.stats.wilcoxon as the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import wilcoxon

from nnunet_swin.experiments import stats


def test_a_consistent_small_difference_is_tested_not_called_equal():
    """Every case 1e-9 better: np.allclose calls the variants equal, the signed-rank test does not
    (all 8 signs agree: exact p = 2 / 2^8)."""
    x = np.full(8, 0.9)
    y = x + np.arange(1, 9) * 1e-9
    assert np.allclose(x, y)  # the old shortcut returned p = 1 here
    test = stats.wilcoxon_p(x, y)
    assert test.p == wilcoxon(x, y).pvalue == 2 / 2 ** 8
    assert (test.n_pairs, test.n_nonzero) == (8, 8)


def test_zero_differences_and_nan_pairs_are_dropped_and_counted():
    x = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.95, 0.5, math.nan]
    y = [1.0, 0.7, 0.8, 0.7, 0.6, 0.45, 0.3, 0.95, 0.7, 0.2]  # two exact ties, one NaN
    test = stats.wilcoxon_p(x, y)
    nonzero = [(a, b) for a, b in zip(x, y) if math.isfinite(a) and a != b]
    assert (test.n_pairs, test.n_nonzero) == (9, 7)
    assert test.p == wilcoxon([a for a, _ in nonzero], [b for _, b in nonzero]).pvalue
    assert test.min_p == 2 / 2 ** 7 and test.can_reach(0.05)


@pytest.mark.parametrize("n, reachable", [(5, False), (6, True)])
def test_the_smallest_possible_p_decides_whether_005_is_reachable(n, reachable):
    x, y = np.arange(n) + 0.5, np.arange(n) + 1.0  # every sign equal: the smallest p there is
    test = stats.wilcoxon_p(x, y)
    assert test.p == wilcoxon(x, y).pvalue == test.min_p == 2 / 2 ** n
    assert test.can_reach(0.05) is reachable


def test_equal_values_and_no_pairs():
    assert stats.wilcoxon_p([0.5, 0.7], [0.5, 0.7]) == stats.PairedTest(1.0, 2, 0)
    empty = stats.wilcoxon_p([math.nan], [0.5])
    assert math.isnan(empty.p) and (empty.n_pairs, empty.n_nonzero) == (0, 0)


def test_distance_unit_columns():
    rows = [{"hd95_mm": 2.0, "distance_unit": "px"}]
    assert stats.distance_unit(rows) == "px" and stats.distance_unit([{"hd95_mm": 1.0}]) == "mm"
    renamed, cols = stats.columns_in_unit(rows, ["case", "hd95_mm", "hd95_mm_mean_all"], "px")
    assert cols == ["case", "hd95_px", "hd95_px_mean_all"] and renamed[0]["hd95_px"] == 2.0
    with pytest.raises(ValueError, match="mix HD95/NSD in mm and in pixels"):
        stats.distance_unit(rows + [{"distance_unit": "mm"}])
