"""What the package promises about the environments it installs into: its metadata (ranges, no exact pins,
licence, Python), what the sdist ships, and that the newer torch APIs it uses fall back on the oldest
supported torch."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import torch._inductor.utils as inductor_utils
from packaging.requirements import Requirement

import nnunet_swin
from nnunet_swin.experiments import bench

REPO = Path(__file__).resolve().parents[1]


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


def _build(tmp_path: Path, kind: str) -> Path:
    """Build the sdist or wheel of this source tree (a copy, so no build files land in it) with this
    environment's setuptools, as pip does without build isolation."""
    src = tmp_path / "src"
    if not src.exists():
        shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info",
                                                                 "__pycache__", ".pytest_cache", "nnunet_swin_demo"))
    out = tmp_path / kind
    proc = subprocess.run([sys.executable, "-c", f"from setuptools import build_meta as b; print(b.build_{kind}"
                                                 f"({str(out)!r}))"], cwd=src, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / proc.stdout.split()[-1]


def test_sdist_ships_the_package_licence_and_metadata_but_no_partial_tests(tmp_path):
    with tarfile.open(_build(tmp_path, "sdist")) as sdist:
        names = [n.split("/", 1)[1] for n in sdist.getnames() if "/" in n]
        pkg_info = sdist.extractfile(next(m for m in sdist.getmembers() if m.name.endswith("/PKG-INFO"))).read()
    assert not [n for n in names if n.startswith("tests")], "tests must ship complete or not at all"
    for needed in ("LICENSE", "README.md", "pyproject.toml", "setup.py", "nnunet_swin/cli.py",
                   "nnunet_swin/ext_trainers/nnunet_swin_trainers.py"):
        assert needed in names
    assert b"License-Expression: Apache-2.0" in pkg_info


def test_wheel_metadata_states_ranges_licence_and_python(tmp_path):
    wheel = zipfile.ZipFile(_build(tmp_path, "wheel"))
    dist_info = next(n.split("/")[0] for n in wheel.namelist() if ".dist-info/" in n)
    meta = wheel.read(f"{dist_info}/METADATA").decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    runtime = [r for r in requires if "extra ==" not in r]
    assert not [r for r in runtime if "==" in r], runtime
    specs = {Requirement(r).name.lower(): Requirement(r).specifier for r in runtime}
    assert {"torch", "nnunetv2", "timm", "monai"} <= set(specs)
    assert not set(specs) & {"torchvision", "batchgenerators"}, "the package imports neither"
    torch_ok = [v for v in ("2.3.1", "2.4.0", "2.8.0", "2.9.1", "2.13.0", "2.14.1") if specs["torch"].contains(v)]
    assert torch_ok == ["2.4.0", "2.8.0", "2.13.0", "2.14.1"]  # nnU-Net excludes 2.9
    assert "License-Expression: Apache-2.0" in meta and "Requires-Python: >=3.10" in meta
    assert f"{dist_info}/licenses/LICENSE" in wheel.namelist()
    assert f"Version: {nnunet_swin.__version__}" in meta
