"""nnU-Net's folders, files and logs as the studies read them, and the file helpers every report uses.

Owns: the three nnU-Net path variables and data set names, the planned configurations of a plans file, the
lines of nnU-Net's training logs (epochs, epoch times, the progress lines worth showing), and writing files
atomically (text, CSV). Only the standard library is imported.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from typing import Iterable, Sequence

NNUNET_PATH_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")

#: Lines of nnU-Net's output a person follows a training by (the demo and the studies pass these through).
PROGRESS_MARKERS = ("Swin-Unet:", "Epoch ", "train_loss", "val_loss", "Pseudo dice", "Epoch time",
                    "Mean Validation Dice", "Training done", "Predicting", "Done with", "WARNING",
                    "Error", "error", "Traceback")


def is_progress_line(line: str) -> bool:
    """Whether a line of nnU-Net's output is one of :data:`PROGRESS_MARKERS`' lines."""
    return any(m in line for m in PROGRESS_MARKERS)


class PlansError(ValueError):
    """A plans file that is there but cannot be read (cut off, not JSON, no configurations)."""


# --- files -------------------------------------------------------------------------------------------
def atomic_write(path: str, data: str | bytes) -> None:
    """Write ``data`` to a temp file in ``path``'s directory, then ``os.replace`` it onto ``path``, so a
    reader (or an interruption) never sees a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be shared like any file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _csv_value(row.get(c)) for c in columns})
    return buf.getvalue()


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if v != v else f"{v:.6g}"  # NaN -> empty
    return v


def load_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def log_tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.rstrip().splitlines())


# --- nnU-Net's paths and data sets -------------------------------------------------------------------
def env_path(var: str, environ=None) -> str:
    environ = os.environ if environ is None else environ
    value = environ.get(var)
    if not value:
        raise RuntimeError(f"{var} is not set; nnU-Net needs nnUNet_raw, nnUNet_preprocessed and nnUNet_results "
                           f"(see nnU-Net's documentation/set_environment_variables.md).")
    return value


def resolve_dataset_name(dataset: str | int, environ=None) -> str:
    """``Dataset123_Name`` for an id or name, looked up in nnUNet_preprocessed, nnUNet_results and
    nnUNet_raw *as they are now* (nnunetv2.paths reads them once at import time)."""
    environ = os.environ if environ is None else environ
    dataset = str(dataset)
    if dataset.startswith("Dataset"):
        return dataset
    try:
        ident = int(dataset)
    except ValueError:
        raise ValueError(f"dataset must be an integer id or a name like Dataset123_Name, got {dataset!r}") from None
    prefix = f"Dataset{ident:03d}_"
    if not any(environ.get(v) for v in NNUNET_PATH_VARS):
        raise RuntimeError(f"cannot resolve data set id {ident}: none of {', '.join(NNUNET_PATH_VARS)} is set.")
    for var in ("nnUNet_preprocessed", "nnUNet_results", "nnUNet_raw"):
        root = environ.get(var)
        if root and os.path.isdir(root):
            hits = sorted(d for d in os.listdir(root) if d.startswith(prefix) and os.path.isdir(os.path.join(root, d)))
            if len(hits) > 1:
                raise RuntimeError(f"more than one data set with id {ident} in {root}: {hits}")
            if hits:
                return hits[0]
    raise RuntimeError(f"no data set with id {ident} (Dataset{ident:03d}_*) in nnUNet_preprocessed, nnUNet_results "
                       f"or nnUNet_raw; run nnUNetv2_plan_and_preprocess -d {ident} first.")


def gt_segmentations_dir(dataset: str, environ=None) -> str:
    """nnU-Net's copy of a data set's reference segmentations (what its validation is scored against)."""
    environ = os.environ if environ is None else environ
    return os.path.join(environ.get("nnUNet_preprocessed", ""), resolve_dataset_name(dataset, environ),
                        "gt_segmentations")


def read_plans(dataset: str, plans: str, environ=None) -> dict | None:
    """``$nnUNet_preprocessed/<dataset>/<plans>.json``; None when it is not there. Raises :class:`PlansError`
    when it is there but unreadable: a cut-off file is not a data set that was never planned."""
    path = os.path.join(env_path("nnUNet_preprocessed", environ), dataset, plans + ".json")
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise PlansError(f"{path} cannot be read ({type(e).__name__}: {e}); plan the data set again, e.g. "
                         f"nnUNetv2_plan_and_preprocess -d {dataset_id_text(dataset)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("configurations"), dict):
        raise PlansError(f"{path} has no \"configurations\" object; plan the data set again, e.g. "
                         f"nnUNetv2_plan_and_preprocess -d {dataset_id_text(dataset)}")
    return data


def planned_configurations(dataset: str, plans: str, environ=None) -> list[str] | None:
    """The configurations in ``$nnUNet_preprocessed/<dataset>/<plans>.json`` (nnU-Net plans 3d_fullres only
    for 3D images, 3d_lowres only for large ones), in its order; None when that plans file is not there."""
    data = read_plans(dataset, plans, environ)
    return None if data is None else list(data["configurations"])


def dataset_id_text(dataset: str) -> str:
    """The id of ``Dataset123_Name`` as nnU-Net's commands take it ('123'), or the name itself."""
    m = re.match(r"Dataset(\d+)_", dataset)
    return str(int(m.group(1))) if m else dataset


def not_planned_message(dataset: str, plans: str, configurations: Iterable[str], planned: Sequence[str]
                        ) -> str | None:
    """The error for configurations the plans lack, naming the ones they have; None when all are planned."""
    absent = [c for c in configurations if c not in planned]
    if not absent:
        return None
    return (f"{dataset}: plans {plans} have no configuration {', '.join(absent)}; they have "
            f"{', '.join(planned) or 'none'}")


# --- training logs -----------------------------------------------------------------------------------
def _training_log_lines(fold_dir: str) -> Iterable[str]:
    """Lines of every nnU-Net ``training_log_*.txt`` in the folder (a resumed run writes a new log)."""
    try:
        names = sorted(n for n in os.listdir(fold_dir) if n.startswith("training_log") and n.endswith(".txt"))
    except OSError:
        return
    for name in names:
        try:
            with open(os.path.join(fold_dir, name), errors="replace") as f:
                yield from f
        except OSError:
            continue


def epochs_from_logs(fold_dir: str) -> int | None:
    """Number of epochs trained, from nnU-Net's training logs ("...: Epoch N" lines)."""
    epochs = [int(m.group(1)) + 1 for m in map(re.compile(r":\s*Epoch (\d+)\s*$").search, _training_log_lines(fold_dir))
              if m]
    return max(epochs) if epochs else None


def epoch_times_from_logs(fold_dir: str) -> list[float]:
    """Seconds per epoch as nnU-Net logs them ("Epoch time: 12.34 s"), training and its validation step."""
    pattern = re.compile(r"Epoch time:\s*([0-9.]+)\s*s")
    return [float(m.group(1)) for m in map(pattern.search, _training_log_lines(fold_dir)) if m]
