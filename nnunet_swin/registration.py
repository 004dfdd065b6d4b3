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
import subprocess
import sys

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


def lookup_in_subprocess(env: dict, trainer: str = "nnUNetTrainerSwinUnet", timeout: float = 300) -> tuple[bool, str]:
    """Find ``trainer`` the way nnUNetv2_train does, in a new interpreter (site-packages .pth files run)
    started with ``env``. Returns (found, message)."""
    code = ("import os; from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; "
            f"c = f({trainer!r}); print('FOUND', c.__module__, os.environ.get('nnUNet_extTrainer'))")
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout} s"
    out = (proc.stdout + proc.stderr).strip()
    found = [line for line in out.splitlines() if line.startswith("FOUND")]
    if proc.returncode == 0 and found:
        return True, found[-1]
    return False, out.splitlines()[-1] if out else f"exit code {proc.returncode}"


def fresh_process_lookup(trainer: str = "nnUNetTrainerSwinUnet", timeout: float = 300) -> tuple[bool, str]:
    """Whether a new shell finds ``trainer`` with no set-up step: a fresh interpreter whose environment
    lacks our directory, so only the installed .pth hook can add it."""
    return lookup_in_subprocess(_without_our_directory(os.environ), trainer, timeout)


def registration_status(check_fresh_process: bool = True) -> tuple[bool, dict]:
    """Whether nnU-Net commands started from this shell find the trainers, and the doctor's registration
    section (``verdict`` says it in words, ``fix`` what to do when they do not)."""
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
    here_ok, here_msg = lookup_in_subprocess(dict(os.environ))
    new_env = _without_our_directory(os.environ)
    new_ok, new_msg = (here_ok, here_msg) if new_env == dict(os.environ) else lookup_in_subprocess(new_env)
    status["nnU-Net started from this shell finds nnUNetTrainerSwinUnet"] = f"{here_ok} ({here_msg})"
    status["a new shell finds it with no set-up"] = f"{new_ok} ({new_msg})"
    if here_ok and new_ok:
        status["verdict"] = "OK: the .pth hook registers the trainers in every new Python process"
    elif here_ok:
        status["verdict"] = (f"OK in this shell: its {ENV_VAR} lists the trainer directory. No .pth hook does it "
                             f"for new shells: keep the export in your shell start-up file (e.g. ~/.bashrc), "
                             f"or reinstall (pip install . or pip install -e .) to get the hook")
    elif new_ok:
        status["verdict"] = (f"NOT WORKING in this shell, although a new shell would work: this shell's "
                             f"{ENV_VAR} breaks nnU-Net's lookup ({here_msg})")
        status["fix"] = f"unset {ENV_VAR}, or remove the entry that fails from it"
    else:
        status["verdict"] = "NOT WORKING: nnU-Net does not find the trainers"
        status["fix"] = fix
    return here_ok, status


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def doctor_report(check_fresh_process: bool = True) -> tuple[bool, dict]:
    """Whether registration works from this shell, and everything `nnunet-swin doctor` prints as a dict
    of sections."""
    report: dict[str, dict] = {}
    report["versions"] = {
        "python": sys.version.split()[0],
        "nnunet-swin": _version("nnunet-swin") + f" (imported from {os.path.dirname(os.path.abspath(__file__))})",
        "nnunetv2": _version("nnunetv2"),
        "torch": _version("torch"),
        "timm": _version("timm"),
        "monai": _version("monai"),
    }
    paths = {}
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        val = os.environ.get(var)
        paths[var] = "NOT SET" if val is None else (val + ("" if os.path.isdir(val) else "  (missing directory)"))
    for var in ("nnUNet_n_proc_DA", "nnUNet_compile", "NNUNET_SWIN_PRETRAINED"):
        if var in os.environ:
            paths[var] = os.environ[var]
    report["paths"] = paths

    ok, report["registration"] = registration_status(check_fresh_process)

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
    report["device"] = dev
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
    """Print the report; exit code 0 when nnU-Net commands started from this shell find the trainers, else 1."""
    ok, report = doctor_report(check_fresh_process)
    print(format_report(report))
    reg = report["registration"]
    print("\nregistration:", reg["verdict"] + (" - see 'fix' above" if "fix" in reg else ""))
    return 0 if ok else 1
