"""What the package promises about the environments it installs into: the newer torch APIs it uses fall back
on the oldest supported torch."""

from __future__ import annotations

import contextlib

import torch._inductor.utils as inductor_utils

from nnunet_swin.experiments import bench


def test_cold_compile_cache_falls_back_to_the_old_name(monkeypatch):
    """Before torch renamed it to ``fresh_cache``, inductor's fresh cache was ``fresh_inductor_cache``."""
    entered = []

    @contextlib.contextmanager
    def old_fresh_inductor_cache():
        entered.append(True)
        yield

    monkeypatch.delattr(inductor_utils, "fresh_cache")
    monkeypatch.setattr(inductor_utils, "fresh_inductor_cache", old_fresh_inductor_cache)
    with bench.fresh_inductor_cache():
        pass
    assert entered == [True]


def test_cold_compile_cache_uses_the_current_name(monkeypatch):
    entered = []

    @contextlib.contextmanager
    def fresh_cache():
        entered.append("fresh_cache")
        yield

    monkeypatch.setattr(inductor_utils, "fresh_cache", fresh_cache)
    with bench.fresh_inductor_cache():
        pass
    assert entered == ["fresh_cache"]
