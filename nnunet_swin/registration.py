"""How nnU-Net finds the Swin-Unet trainers, and ``nnunet-swin doctor``.

Mechanism: nnU-Net 2.8 looks trainers up in its own package, then in every directory listed in the
environment variable ``nnUNet_extTrainer`` (``os.pathsep``-separated). ``pip install .`` of this project
puts ``nnunet_swin_ext_trainer.pth`` at the root of site-packages; Python runs its one line
(``PTH_LINE``, only ``os``) at every interpreter start, and it *appends*
``<site-packages>/nnunet_swin/ext_trainers`` to ``nnUNet_extTrainer`` unless already there. A user's own
value is kept in front. ``pip install -e .`` installs the same hook naming the source tree's
``nnunet_swin/ext_trainers`` (``pth_line``; setuptools' editable wheel carries files written to its
install directory). ``nnUNetv2_train``, ``nnUNetv2_predict``, ``nnUNetv2_predict_from_modelfolder`` and
the ``-num_gpus`` workers (which inherit the environment) therefore find the trainers in a fresh shell
with no set-up step.

Manual fallback (``python -S``, an environment that drops .pth files, or a source tree only on
``PYTHONPATH``)::

    export nnUNet_extTrainer="${nnUNet_extTrainer:+$nnUNet_extTrainer:}$(nnunet-swin ext-trainer-dir)"

This module imports only the standard library at import time (``setup.py`` loads it to write the
.pth file); torch and nnU-Net are imported inside the doctor functions.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import NamedTuple

ENV_VAR = "nnUNet_extTrainer"
PTH_NAME = "nnunet_swin_ext_trainer.pth"
_PTH_TEMPLATE = (
    "import os; _nsw_d = {directory}; "
    "_nsw_v = os.environ.get('nnUNet_extTrainer', ''); "
    "_nsw_d in _nsw_v.split(os.pathsep) or not os.path.isdir(_nsw_d) or "
    "os.environ.__setitem__('nnUNet_extTrainer', _nsw_v + os.pathsep + _nsw_d if _nsw_v else _nsw_d)"
)
#: Executed by site.py at interpreter start (``sitedir`` is the site-packages directory being
#: processed). Only ``os``; a no-op when the directory is already listed or missing.
PTH_LINE = _PTH_TEMPLATE.format(directory="os.path.join(sitedir, 'nnunet_swin', 'ext_trainers')")
TRAINER_MODULE = "nnunet_swin_trainers"


def pth_line(directory: str | None = None) -> str:
    """The .pth line: ``PTH_LINE`` for a regular install; for an editable one (``pip install -e .``, the
    package stays in the source tree) the line names the tree's trainer ``directory`` itself."""
    return PTH_LINE if directory is None else _PTH_TEMPLATE.format(directory=repr(os.path.abspath(directory)))


def ext_trainer_dir() -> str:
    """The directory to put on ``nnUNet_extTrainer`` (the one of the imported nnunet_swin)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "ext_trainers")


def append_to_env(value: str | None, directory: str | None = None) -> str:
    """``value`` with ``directory`` appended (os.pathsep), unchanged if it is already listed."""
    directory = directory or ext_trainer_dir()
    value = value or ""
    parts = [p for p in value.split(os.pathsep) if p]
    if any(os.path.abspath(p) == os.path.abspath(directory) for p in parts):
        return value
    return value + os.pathsep + directory if value else directory


def register(environ=None) -> str:
    """Append the trainer directory to ``nnUNet_extTrainer`` in ``environ`` (default: this process)."""
    environ = os.environ if environ is None else environ
    environ[ENV_VAR] = append_to_env(environ.get(ENV_VAR), ext_trainer_dir())
    return environ[ENV_VAR]


def is_registered(environ=None) -> bool:
    environ = os.environ if environ is None else environ
    dirs = [os.path.abspath(p) for p in environ.get(ENV_VAR, "").split(os.pathsep) if p]
    return any(os.path.isfile(os.path.join(d, TRAINER_MODULE + ".py")) for d in dirs)


def installed_pth_files() -> list[str]:
    """The .pth hook files present in this interpreter's site-packages directories."""
    import site

    dirs = list(getattr(site, "getsitepackages", lambda: [])())
    user = getattr(site, "getusersitepackages", lambda: None)()
    if user:
        dirs.append(user)
    return [os.path.join(d, PTH_NAME) for d in dirs if os.path.isfile(os.path.join(d, PTH_NAME))]


def _without_our_directory(environ) -> dict:
    """``environ`` as a new shell has it when nothing but the .pth hook registers us: our directory (this
    copy's, or any ``nnunet_swin/ext_trainers``) removed from nnUNet_extTrainer, the user's own entries kept."""
    env = dict(environ)
    mine = os.path.abspath(ext_trainer_dir())
    kept = [p for p in env.get(ENV_VAR, "").split(os.pathsep)
            if p and os.path.abspath(p) != mine and not p.rstrip(os.sep).endswith(os.path.join("nnunet_swin", "ext_trainers"))]
    if kept:
        env[ENV_VAR] = os.pathsep.join(kept)
    else:
        env.pop(ENV_VAR, None)
    return env


class Lookup(NamedTuple):
    """What nnU-Net's trainer lookup did in a fresh interpreter. ``broken_entry``: the ``nnUNet_extTrainer``
    entry whose module raised on import (nnU-Net's lookup stops there), else None."""

    found: bool
    message: str
    broken_entry: str | None = None


def _classes_defined_in(folders: list[str]) -> set[str]:
    """Names of the classes defined in the .py files under ``folders`` (read as text, nothing imported)."""
    pattern = re.compile(r"^class\s+(\w+)", re.M)
    names: set[str] = set()
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                if name.endswith(".py"):
                    try:
                        with open(os.path.join(root, name), errors="replace") as f:
                            names.update(pattern.findall(f.read()))
                    except OSError:
                        continue
    return names


def known_trainer_names() -> set[str]:
    """Trainer names to suggest for a misspelt one: every nnUNetTrainer subclass imported by now (nnU-Net's,
    ours, those a lookup loaded from nnUNet_extTrainer) and the classes defined in the nnUNet_extTrainer
    folders. Imports nnU-Net and, if it imports, this plugin's trainers."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    try:
        import nnunet_swin.trainers  # noqa: F401  (our variants, whether or not a lookup imported them)
    except Exception:  # a broken plugin is the lookup's finding, not a reason to give no suggestions
        pass
    names, todo = set(), [nnUNetTrainer]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    folders = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p and os.path.isdir(p)]
    return names | _classes_defined_in(folders)


# Run by a fresh interpreter: nnU-Net's own lookup of argv[1]. On failure it names the nnUNet_extTrainer entry
# whose module failed to import, or the registered trainer names closest to the one asked for.
_LOOKUP_CODE = """
import difflib, os, sys, traceback
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find
name = sys.argv[1]
entries = [os.path.abspath(p) for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
try:
    cls = find(name)
except RuntimeError:
    from nnunet_swin.registration import known_trainer_names
    print("MISSING", " ".join(difflib.get_close_matches(name, sorted(known_trainer_names()), n=3, cutoff=0.75)))
    sys.exit(1)
except Exception as e:
    files = [f.filename for f in traceback.extract_tb(e.__traceback__)] + [getattr(e, "filename", None) or ""]
    for f in reversed(files):
        entry = next((d for d in entries if os.path.abspath(f).startswith(d + os.sep)), None)
        if entry:
            print("BROKEN", entry, "|", f, "|", type(e).__name__ + ":", " ".join(str(e).split()))
            sys.exit(1)
    raise
print("FOUND", cls.__module__, os.environ.get("nnUNet_extTrainer"))
"""


def lookup_in_subprocess(env: dict, trainer: str = "nnUNetTrainerSwinUnet", timeout: float = 300) -> Lookup:
    """Find ``trainer`` the way nnUNetv2_train does, in a new interpreter (site-packages .pth files run)
    started with ``env``."""
    try:
        proc = subprocess.run([sys.executable, "-c", _LOOKUP_CODE, trainer], env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Lookup(False, f"timed out after {timeout} s")
    out = (proc.stdout + proc.stderr).strip()
    last = {line.split(" ", 1)[0]: line for line in out.splitlines() if line.startswith(("FOUND", "MISSING", "BROKEN"))}
    if proc.returncode == 0 and "FOUND" in last:
        return Lookup(True, last["FOUND"])
    if "BROKEN" in last:
        entry, path, error = (part.strip() for part in last["BROKEN"][len("BROKEN "):].split(" | ", 2))
        return Lookup(False, f"{path} (on {ENV_VAR} as {entry}) fails to import: {error}", entry)
    if "MISSING" in last:
        close = last["MISSING"][len("MISSING"):].split()
        hint = (f"; did you mean {close[0]}?" + (f" (also close: {', '.join(close[1:])})" if close[1:] else "")
                if close else "; 'nnunet-swin trainers' lists this plugin's")
        return Lookup(False, f"nnU-Net finds no trainer named {trainer!r}{hint}")
    return Lookup(False, out.splitlines()[-1] if out else f"exit code {proc.returncode}")


def fresh_process_lookup(trainer: str = "nnUNetTrainerSwinUnet", timeout: float = 300) -> Lookup:
    """Whether a new shell finds ``trainer`` with no set-up step: a fresh interpreter whose environment
    lacks our directory, so only the installed .pth hook can add it."""
    return lookup_in_subprocess(_without_our_directory(os.environ), trainer, timeout)


def registration_status(check_fresh_process: bool = True,
                        progress: Callable[[str], None] = lambda line: None) -> tuple[bool, dict]:
    """Whether nnU-Net commands started from this shell find the trainers, and the doctor's registration
    section (``verdict`` says it in words, ``fix`` what to do when they do not). ``progress`` gets a line
    before each check that takes seconds."""
    status: dict = {
        "trainer directory": ext_trainer_dir(),
        ENV_VAR: os.environ.get(ENV_VAR, "NOT SET"),
        "registered in this process": is_registered(),
        ".pth hook": ", ".join(installed_pth_files()) or "not installed (reinstall: pip install . or pip "
                                                          "install -e .; python -S skips .pth files)",
    }
    fix = f'export {ENV_VAR}="${{{ENV_VAR}:+${ENV_VAR}:}}$(nnunet-swin ext-trainer-dir)"'
    if not check_fresh_process:
        ok = status["registered in this process"]
        status["verdict"] = "OK in this process (not checked in a fresh process)" if ok else "NOT WORKING"
        if not ok:
            status["fix"] = fix
        return ok, status
    progress("nnU-Net's trainer lookup in a fresh Python process started from this shell ...")
    here = lookup_in_subprocess(dict(os.environ))
    new_env = _without_our_directory(os.environ)
    if new_env == dict(os.environ):
        new = here
    else:
        progress("... and in one started from a new shell (only the .pth hook registers the plugin there) ...")
        new = lookup_in_subprocess(new_env)
    status["nnU-Net started from this shell finds nnUNetTrainerSwinUnet"] = f"{here.found} ({here.message})"
    status["a new shell finds it with no set-up"] = f"{new.found} ({new.message})"
    broken = None if here.found else here.broken_entry
    if broken and os.path.abspath(broken) != os.path.abspath(ext_trainer_dir()):
        status["verdict"] = (f"NOT WORKING: a module of your own on {ENV_VAR} fails to import, and nnU-Net's "
                             f"trainer lookup stops there: {here.message}")
        status["fix"] = f"fix that module, or take {broken} off {ENV_VAR}"
    elif broken:
        status["verdict"] = f"NOT WORKING: this plugin's trainer module fails to import: {here.message}"
        status["fix"] = "check the versions above against the supported ones, or reinstall nnunet-swin"
    elif here.found and new.found:
        status["verdict"] = "OK: the .pth hook registers the trainers in every new Python process"
    elif here.found:
        status["verdict"] = (f"OK in this shell: its {ENV_VAR} lists the trainer directory. No .pth hook does it "
                             f"for new shells: keep the export in your shell start-up file (e.g. ~/.bashrc), "
                             f"or reinstall (pip install . or pip install -e .) to get the hook")
    elif new.found:
        status["verdict"] = (f"NOT WORKING in this shell, although a new shell would work: this shell's "
                             f"{ENV_VAR} breaks nnU-Net's lookup ({here.message})")
        status["fix"] = f"unset {ENV_VAR}, or remove the entry that fails from it"
    else:
        status["verdict"] = "NOT WORKING: nnU-Net does not find the trainers"
        status["fix"] = fix
    return here.found, status


def trainer_summaries() -> list[tuple[str, str]]:
    """(name, what it changes) for every trainer the plugin registers: the first sentence of the class's own
    docstring, else the class attributes it sets on top of its parent."""
    from nnunet_swin.trainers.variants import TRAINERS

    rows = []
    for cls in TRAINERS:
        doc = cls.__dict__.get("__doc__")
        if doc:
            summary = " ".join(doc.replace("``", "").split()).split(". ")[0].rstrip(".")
        else:
            changed = [f"{k} = {v!r}" for k, v in vars(cls).items() if not k.startswith("_") and not callable(v)]
            summary = f"{cls.__bases__[0].__name__} with {', '.join(changed)}"
        rows.append((cls.__name__, summary))
    return rows


def print_trainers() -> int:
    """``nnunet-swin trainers``: one line per registered trainer."""
    rows = trainer_summaries()
    width = max(len(name) for name, _ in rows)
    print(f"Trainers this plugin registers with nnU-Net (nnUNetv2_train DATASET CONFIGURATION FOLD -tr NAME; 2D "
          f"and 3D configurations):")
    for name, summary in rows:
        print(f"  {name.ljust(width)}  {summary}")
    return 0


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


_PATH_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def paths_verdict(environ=None) -> str:
    """One line on nnU-Net's three folder variables: OK, or which are unset or name no directory and what
    that stops working."""
    environ = os.environ if environ is None else environ
    unset = [v for v in _PATH_VARS if not environ.get(v)]
    missing = [v for v in _PATH_VARS if environ.get(v) and not os.path.isdir(environ[v])]
    if not unset and not missing:
        return "OK: nnUNet_raw, nnUNet_preprocessed and nnUNet_results name existing directories"
    problems = ([f"{', '.join(unset)} not set"] if unset else []) + \
               ([f"{', '.join(missing)} not an existing directory"] if missing else [])
    return (f"INCOMPLETE: {'; '.join(problems)}. nnU-Net's plan, train and predict commands need all three, "
            f"e.g. export nnUNet_raw=/data/nnUNet_raw nnUNet_preprocessed=/data/nnUNet_preprocessed "
            f"nnUNet_results=/data/nnUNet_results (nnunet-swin demo sets its own under --workdir)")


def doctor_report(check_fresh_process: bool = True, progress: Callable[[str], None] = lambda line: None,
                  on_section: Callable[[str, dict], None] = lambda name, entries: None) -> tuple[bool, dict]:
    """Whether registration works from this shell, and everything `nnunet-swin doctor` prints as a dict of
    sections; ``on_section`` gets each section as soon as it is checked, ``progress`` a line before each
    check that takes seconds."""
    report: dict[str, dict] = {}

    def add(name: str, entries: dict) -> None:
        report[name] = entries
        on_section(name, entries)

    add("versions", {
        "python": sys.version.split()[0],
        "nnunet-swin": _version("nnunet-swin") + f" (imported from {os.path.dirname(os.path.abspath(__file__))})",
        "nnunetv2": _version("nnunetv2"),
        "torch": _version("torch"),
        "timm": _version("timm"),
        "monai": _version("monai"),
    })
    paths = {}
    for var in _PATH_VARS:
        val = os.environ.get(var)
        paths[var] = "NOT SET" if not val else (val + ("" if os.path.isdir(val) else "  (missing directory)"))
    for var in ("nnUNet_n_proc_DA", "nnUNet_compile", "NNUNET_SWIN_PRETRAINED"):
        if var in os.environ:
            paths[var] = os.environ[var]
    paths["verdict"] = paths_verdict()
    add("paths", paths)

    ok, registration = registration_status(check_fresh_process, progress)
    add("registration", registration)

    progress("the device (imports torch) ...")
    import torch

    dev = {"cpu threads": torch.get_num_threads(), "cpu cores": os.cpu_count()}
    if torch.cuda.is_available():
        dev["device"] = f"cuda: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible)"
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        dev["compute capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        dev["precision"] = ("bf16 autocast (native bf16)" if native
                            else "fp32 (no native bf16 below compute capability 8.0)")
        dev["use"] = "-device cuda (default)"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        dev["device"] = "mps"
        dev["use"] = "-device mps"
    else:
        dev["device"] = "cpu only"
        dev["use"] = "-device cpu (slow; fine for the demo)"
    add("device", dev)
    return ok, report


def format_report(report: dict) -> str:
    lines = []
    for section, entries in report.items():
        lines.append(f"[{section}]")
        width = max((len(k) for k in entries), default=0)
        for key, value in entries.items():
            lines.append(f"  {key.ljust(width)}  {value}")
    return "\n".join(lines)


def doctor(check_fresh_process: bool = True) -> int:
    """Print each section as it is checked, then the verdicts; exit code 0 when nnU-Net commands started from
    this shell find the trainers, else 1 (unset nnU-Net paths are reported, not counted: the demo needs none)."""
    print("nnunet-swin doctor: versions, nnU-Net's paths, the registration (fresh Python processes, seconds "
          "each) and the device", flush=True)
    ok, report = doctor_report(check_fresh_process, lambda line: print(f"  checking {line}", flush=True),
                               lambda name, entries: print(format_report({name: entries}), flush=True))
    reg = report["registration"]
    print("\nregistration:", reg["verdict"] + (" - see 'fix' above" if "fix" in reg else ""))
    print("paths:", report["paths"]["verdict"])
    return 0 if ok else 1
