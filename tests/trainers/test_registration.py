"""Registration with nnU-Net: the .pth hook appends (never replaces) ``nnUNet_extTrainer``, a built wheel
ships it at the root of site-packages, and a fresh interpreter then finds every plugin trainer through
nnU-Net's own lookup next to a user's own trainer directory."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from nnunet_swin.registration import (
    ENV_VAR,
    Lookup,
    PTH_LINE,
    PTH_NAME,
    append_to_env,
    ext_trainer_dir,
    fresh_process_lookup,
    installed_pth_files,
    lookup_in_subprocess,
    paths_verdict,
)
from trainer_test_helpers import HERE, REPO

PLUGIN_TRAINERS = [
    "nnUNetTrainerSwinUnet", "nnUNetTrainerSwinUnet_0skip", "nnUNetTrainerSwinUnet_1skip",
    "nnUNetTrainerSwinUnet_2skip", "nnUNetTrainerSwinUnet_3skip", "nnUNetTrainerSwinUnet_bilinear",
    "nnUNetTrainerSwinUnet_transposedconv", "nnUNetTrainerSwinUnet_SGD", "nnUNetTrainerSwinUnet_DS",
    "nnUNetTrainerSwinUnetIN1k", "nnUNetTrainerSwinUnetIN1k_0skip", "nnUNetTrainerSwinUnetIN1k_1skip",
    "nnUNetTrainerSwinUnetIN1k_2skip", "nnUNetTrainerSwinUnetIN1k_3skip", "nnUNetTrainerSwinUnet_demo",
]


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in (ENV_VAR, "PYTHONPATH")}
    env.update(extra)
    return env


def test_append_to_env():
    d = ext_trainer_dir()
    assert append_to_env(None, d) == d
    assert append_to_env("/mine", d) == "/mine" + os.pathsep + d
    assert append_to_env("/mine" + os.pathsep + d, d) == "/mine" + os.pathsep + d


@pytest.mark.parametrize("user_value", [None, "/my/trainers", "/a" + os.pathsep + "/b"])
def test_pth_line_appends_and_imports_only_os(tmp_path, user_value):
    site_dir = tmp_path / "site"
    (site_dir / "nnunet_swin" / "ext_trainers").mkdir(parents=True)
    (site_dir / PTH_NAME).write_text(PTH_LINE + "\n")
    code = ("import site, sys, os; site.addsitedir(sys.argv[1]); site.addsitedir(sys.argv[1]); "
            "print(os.environ.get('nnUNet_extTrainer')); print('torch' in sys.modules, 'nnunetv2' in sys.modules)")
    env = _clean_env(**({ENV_VAR: user_value} if user_value else {}))
    out = subprocess.run([sys.executable, "-S", "-c", code, str(site_dir)], env=env, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    expected_dir = str(site_dir / "nnunet_swin" / "ext_trainers")
    assert out[0] == (user_value + os.pathsep + expected_dir if user_value else expected_dir)  # once, appended
    assert out[1] == "False False"


def _build_wheel(tmp_path: Path) -> Path:
    try:
        import setuptools  # noqa: F401
    except ImportError:
        pytest.skip("setuptools not available to build the wheel offline")
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info",
                                                             "__pycache__", "tests", "nnunet_swin_demo", "*.pth"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot build a wheel offline here: {proc.stderr[-500:]}")
    return next((tmp_path / "dist").glob("*.whl"))


def test_wheel_hook_lets_a_fresh_process_find_every_trainer(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert PTH_NAME in names, "the .pth must sit at the root of site-packages"
    assert "nnunet_swin/ext_trainers/nnunet_swin_trainers.py" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    user_dir = tmp_path / "user_ext"
    user_dir.mkdir()
    shutil.copy(HERE / "user_trainers.py", user_dir)
    # a fresh interpreter (-S: this environment's own .pth hook, present when the project is pip-installed
    # here, must not register its copy first); site.addsitedir processes the wheel's .pth exactly as
    # interpreter start-up does for site-packages; this environment's packages come after it on sys.path
    code = (
        "import os, sys, site; site.addsitedir(sys.argv[1]); sys.path.extend(sys.argv[2].split(os.pathsep));"
        "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find;"
        "names = sys.argv[3:];"
        "found = [find(n) for n in names];"
        "print('ENV', os.environ['nnUNet_extTrainer']);"
        "print('MODS', sorted({c.__module__.split('.')[0] for c in found}));"
        "import nnunet_swin; print('FROM', nnunet_swin.__file__)"
    )
    proc = subprocess.run([sys.executable, "-S", "-c", code, str(target), os.pathsep.join(site.getsitepackages()),
                           *PLUGIN_TRAINERS, "TestSwin_1skip"],
                          env=_clean_env(**{ENV_VAR: str(user_dir)}), cwd=str(tmp_path), capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line[:4] in ("ENV ", "MODS", "FROM"))
    assert lines["ENV"] == str(user_dir) + os.pathsep + str(target / "nnunet_swin" / "ext_trainers")
    assert lines["FROM"].startswith(str(target))
    assert "nnunet_swin" in lines["MODS"] and "user_trainers" in lines["MODS"]


@pytest.mark.skipif(not installed_pth_files(), reason="nnunet-swin is not pip-installed in this environment")
def test_installed_package_registers_in_a_fresh_shell():
    lookup = fresh_process_lookup("nnUNetTrainerSwinUnet_1skip")
    assert lookup.found, lookup.message


def test_cli_ext_trainer_dir_and_doctor():
    env = _clean_env(PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "nnunet_swin.cli", "ext-trainer-dir"], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == ext_trainer_dir() and Path(out, "nnunet_swin_trainers.py").is_file()
    proc = subprocess.run([sys.executable, "-m", "nnunet_swin.cli", "doctor", "--no-subprocess"],
                          env={**env, ENV_VAR: out}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for section in ("[versions]", "[paths]", "[registration]", "[device]", "nnunetv2", "nnUNet_results"):
        assert section in proc.stdout
    assert "registration: OK" in proc.stdout


# --- nnunet-swin doctor in each set-up, each in its own bare virtual environment --------------------
def _bare_venv(tmp_path: Path, *path_entries: str) -> tuple[Path, Path]:
    """A new venv without this environment's .pth files; ``path_entries`` (plain sys.path lines, whose own
    .pth files do not run) give it torch and nnU-Net. Returns (python, site-packages)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "deps.pth").write_text("\n".join(path_entries) + "\n")
    return python, Path(purelib)


def _installed_without_this_plugin(tmp_path: Path) -> str:
    """A folder of links to everything installed here except this plugin (its package, metadata, hooks), for
    a bare venv's sys.path: torch and nnU-Net come from here, the plugin only from where the test puts it
    (CI installs it non-editable, and site-packages' copy would shadow the source tree under test)."""
    deps = tmp_path / "deps"
    deps.mkdir()
    for site_dir in site.getsitepackages():
        for entry in Path(site_dir).iterdir():
            skip = entry.name.startswith(("nnunet_swin", "nnunet-swin", "__editable__")) or entry.suffix == ".pth"
            if not skip and not (deps / entry.name).exists():
                (deps / entry.name).symlink_to(entry)
    return str(deps)


def _doctor(python: Path, cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "nnunet_swin.cli", "doctor"], env=_clean_env(**env), cwd=str(cwd),
                          capture_output=True, text=True, timeout=600)


def test_editable_install_registers_and_doctor_says_so(tmp_path):
    """pip install -e . = setuptools' PEP 660 build_editable + installing that wheel: the wheel carries the
    hook, naming the source tree's trainer directory, and a new shell finds the trainers."""
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info",
                                                             "__pycache__", "tests", "*.pth"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_editable({str(dist)!r})"],
                   cwd=str(src), check=True, capture_output=True)
    wheel = next(dist.glob("*.whl"))
    line = zipfile.ZipFile(wheel).read(PTH_NAME).decode()
    assert repr(str(src / "nnunet_swin" / "ext_trainers")) in line
    python, purelib = _bare_venv(tmp_path, _installed_without_this_plugin(tmp_path))
    zipfile.ZipFile(wheel).extractall(purelib)  # what pip does with a pure wheel (less RECORD/INSTALLER)
    proc = _doctor(python, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"imported from {src / 'nnunet_swin'}" in proc.stdout
    assert "registration: OK: the .pth hook registers the trainers in every new Python process" in proc.stdout


def test_doctor_after_its_own_fix_without_the_hook(tmp_path):
    """The source tree importable but no .pth hook, and the user followed the doctor's fix (exported
    nnUNet_extTrainer): OK for this shell, and it says new shells need the export too."""
    python, _ = _bare_venv(tmp_path, _installed_without_this_plugin(tmp_path), str(REPO))
    directory = subprocess.run([str(python), "-m", "nnunet_swin.cli", "ext-trainer-dir"], env=_clean_env(),
                               cwd=str(tmp_path), capture_output=True, text=True, check=True).stdout.strip()
    assert directory == str(REPO / "nnunet_swin" / "ext_trainers")
    proc = _doctor(python, tmp_path, **{ENV_VAR: directory})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "registration: OK in this shell" in proc.stdout and "~/.bashrc" in proc.stdout
    assert "a new shell finds it with no set-up                          False" in proc.stdout


@pytest.mark.parametrize("here, new_shell, verdict, code", [
    (True, True, "OK: the .pth hook", 0),
    (True, False, "OK in this shell", 0),
    (False, True, "NOT WORKING in this shell, although a new shell would work", 1),
    (False, False, "NOT WORKING: nnU-Net does not find the trainers", 1),
])
def test_doctor_verdicts(monkeypatch, capsys, here, new_shell, verdict, code):
    """Each combination of the two fresh-process lookups (this shell's environment, and a new shell's:
    our directory removed from nnUNet_extTrainer) gives its own verdict and exit code."""
    from nnunet_swin import registration

    monkeypatch.setenv(ENV_VAR, "/mine" + os.pathsep + ext_trainer_dir())
    monkeypatch.setattr(registration, "lookup_in_subprocess",
                        lambda env, *a, **k: Lookup(here, "x") if ext_trainer_dir() in env.get(ENV_VAR, "")
                        else Lookup(new_shell, "y"))
    assert registration.doctor() == code
    out = capsys.readouterr().out
    assert f"registration: {verdict}" in out
    assert ("fix" in out.split("[device]")[0]) == (code == 1)


def _doctor_here(env: dict) -> subprocess.Popen:
    """``nnunet-swin doctor`` of this source tree in a subprocess with ``env`` (PYTHONPATH: this tree)."""
    return subprocess.Popen([sys.executable, "-m", "nnunet_swin.cli", "doctor"],
                            env={**_clean_env(PYTHONPATH=str(REPO)), **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_doctor_names_a_users_broken_trainer_module(tmp_path):
    """A module of the user's on nnUNet_extTrainer that fails to import stops nnU-Net's lookup before it
    reaches the plugin: the doctor names that entry and file, and does not blame the registration."""
    user_dir = tmp_path / "my_trainers"
    user_dir.mkdir()
    (user_dir / "my_broken_trainer.py").write_text("import a_module_that_does_not_exist_anywhere\n")
    proc = _doctor_here({ENV_VAR: str(user_dir) + os.pathsep + ext_trainer_dir()})
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, out
    verdict = next(line for line in out.splitlines() if line.startswith("registration:"))
    assert "a module of your own" in verdict and str(user_dir / "my_broken_trainer.py") in verdict, verdict
    assert "ModuleNotFoundError" in verdict and "a_module_that_does_not_exist_anywhere" in verdict
    fix = next(line for line in out.splitlines() if line.strip().startswith("fix"))
    assert f"take {user_dir} off {ENV_VAR}" in fix and "ext-trainer-dir" not in fix


def test_doctor_prints_as_it_checks_and_judges_unset_paths():
    """Sections come out as they are checked (the versions seconds before the registration, which starts
    fresh interpreters), and unset nnU-Net paths get a verdict of their own."""
    env = {ENV_VAR: ext_trainer_dir(), "nnUNet_raw": "", "nnUNet_preprocessed": "", "nnUNet_results": ""}
    proc = _doctor_here(env)
    seen: dict[str, float] = {}
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        for mark in ("nnunet-swin doctor:", "[versions]", "[registration]", "[device]", "paths:"):
            if line.startswith(mark):
                seen.setdefault(mark, time.monotonic())
    assert proc.wait(timeout=600) == 0, "".join(lines)
    assert list(seen) == ["nnunet-swin doctor:", "[versions]", "[registration]", "[device]", "paths:"], seen
    assert seen["[registration]"] - seen["[versions]"] > 1.0, "the versions were not printed before the lookups"
    verdict = next(line for line in lines if line.startswith("paths:"))
    assert "INCOMPLETE: nnUNet_raw, nnUNet_preprocessed, nnUNet_results not set" in verdict, verdict


def test_paths_verdict(tmp_path):
    dirs = {v: str(tmp_path / v) for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for d in dirs.values():
        os.mkdir(d)
    assert paths_verdict(dirs).startswith("OK")
    assert paths_verdict({}).startswith("INCOMPLETE: nnUNet_raw, nnUNet_preprocessed, nnUNet_results not set.")
    broken = {**dirs, "nnUNet_results": str(tmp_path / "nowhere")}
    del broken["nnUNet_raw"]
    assert paths_verdict(broken).startswith("INCOMPLETE: nnUNet_raw not set; nnUNet_results not an existing "
                                            "directory.")


def test_lookup_suggests_the_closest_trainer_names():
    env = _clean_env(PYTHONPATH=str(REPO), **{ENV_VAR: ext_trainer_dir()})
    missing = lookup_in_subprocess(env, "nnUNetTrainerSwinUnt_1skip")
    assert not missing.found and missing.broken_entry is None
    assert "no trainer named 'nnUNetTrainerSwinUnt_1skip'; did you mean nnUNetTrainerSwinUnet_1skip?" in missing.message
    found = lookup_in_subprocess(env, "nnUNetTrainerSwinUnet_1skip")
    assert found.found and "nnunet_swin" in found.message
