"""Checks a study makes before its first conversion or training, so a typo costs seconds, not a study.

Owns the trainer check (nnU-Net's own lookup, ``recursive_find_trainer_class_by_name``, the one
``nnUNetv2_train`` uses, which also searches ``nnUNet_extTrainer``; close names suggested) and the device
check (``cuda`` or ``mps`` that torch does not see), both answered by one helper process started with the
environment the training would get (``worker preflight``). A failed check is a :class:`SetupError`: one
line, exit code 2, nothing written. Only the standard library is imported at module level.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import os
import subprocess
from typing import Sequence

from nnunet_swin.experiments.local import child_env, worker_command
from nnunet_swin.registration import known_trainer_names

#: How long the helper process may take (it imports torch and nnU-Net's trainer modules).
PREFLIGHT_TIMEOUT_S = 120


class SetupError(ValueError):
    """Bad input found before any work: reported as one line, exit code 2."""


def preflight_report(trainers: Sequence[str]) -> dict:
    """In the helper process: which trainers nnU-Net's lookup cannot load (and why), the trainer names it
    could (for suggestions), and the devices torch sees."""
    import torch
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    missing = {}
    for name in dict.fromkeys(trainers):
        with contextlib.redirect_stdout(io.StringIO()):  # the lookup prints every folder it searches
            try:
                recursive_find_trainer_class_by_name(name)
            except Exception as e:  # not found, not an nnUNetTrainer, or a module that fails to import
                missing[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    known = sorted(known_trainer_names()) if missing else []
    mps = getattr(torch.backends, "mps", None)
    return {"missing": missing, "known": known, "cuda": torch.cuda.is_available(),
            "mps": bool(mps and mps.is_available())}


def preflight(trainers: Sequence[str], environ: dict) -> dict:
    """:func:`preflight_report` in a process with the training's environment (its nnUNet_extTrainer)."""
    args = [a for t in dict.fromkeys(trainers) for a in ("--trainer", t)]
    try:
        proc = subprocess.run(worker_command("preflight", *args), env=child_env(environ, None), capture_output=True,
                              text=True, timeout=PREFLIGHT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SetupError(f"checking the trainers with nnU-Net's lookup took over {PREFLIGHT_TIMEOUT_S} s") from None
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SetupError(f"checking the trainers with nnU-Net's lookup failed: {last}") from None


def trainer_problem(names: Sequence[str], reason: str, known: Sequence[str]) -> str:
    """One line: the trainers nnU-Net cannot load (for one reason), why, and the names closest to the first."""
    close = difflib.get_close_matches(names[0], known, n=3, cutoff=0.8)
    hint = f"; did you mean {' or '.join(close)}?" if close else "; `nnunet-swin trainers` lists ours"
    if reason.startswith("RuntimeError: Could not find"):
        reason = "not found in nnunetv2.training.nnUNetTrainer or on nnUNet_extTrainer"
    return f"trainer{'s' if len(names) > 1 else ''} {', '.join(names)}: {reason}{hint}"


def device_problem(device: str | None, report: dict) -> str | None:
    """One line when torch does not see the device the runs would train on."""
    if device == "cuda" and not report["cuda"]:
        return ("--device cuda: torch sees no CUDA GPU on this machine; use --device cpu (slow), or run on a GPU "
                "node or with --slurm")
    if device == "mps" and not report["mps"]:
        return "--device mps: torch sees no Apple GPU (MPS) on this machine; use --device cpu"
    return None


def check_devices_and_trainers(trainers: Sequence[str], device: str | None, environ: dict) -> None:
    """Raise :class:`SetupError` for the first trainer nnU-Net cannot load or a device torch does not see
    (``device`` None: not checked, e.g. for a SLURM script written on a login node)."""
    report = preflight(trainers, environ)
    by_reason: dict[str, list[str]] = {}  # a misspelled pattern: one line for all its trainers
    for name, reason in report["missing"].items():  # nnU-Net's message, less the name and its search path
        by_reason.setdefault(reason.split(" in nnunetv2")[0].replace(name, "*"), []).append(name)
    problems = [trainer_problem(names, report["missing"][names[0]], report["known"]) for names in by_reason.values()]
    problem = "; ".join(problems) or device_problem(device, report)
    if problem:
        raise SetupError(problem)
