"""Decathlon (MSD) tasks as nnU-Net data sets: find them, check them, convert them, plan and preprocess them.

A task is a ``TaskXX_Name`` folder as downloaded and unpacked, or its ``.tar``. Every step either completes or
leaves nothing behind:

* checks (:func:`check_task_folder`) run before anything is written and name each problem;
* a ``.tar`` is checked without unpacking (a dry run stops there), then unpacked (``tarfile``'s ``data``
  filter, or the same refusals on Pythons without it: no absolute paths, no ``..``, no links out) and
  nnU-Net's ``nnUNetv2_convert_MSD_dataset`` writes into a staging folder inside ``$nnUNet_raw`` (the
  converter's nnU-Net paths point there); only a finished conversion is moved into place with one
  ``os.rename``, so ``$nnUNet_raw/DatasetXXX_Name`` is there complete or not at all;
* ``nnUNetv2_plan_and_preprocess`` is skipped when the plans and every requested configuration's
  preprocessed cases are there; an interrupted run is simply run again (nnU-Net rewrites its cases).

Data set id = task number + ``id_offset`` (0: ``Task04_Hippocampus`` -> ``Dataset004_Hippocampus``, as
nnU-Net's converter does by default).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Callable, Collection, Iterable, Sequence

from nnunet_swin.experiments.local import child_env
from nnunet_swin.experiments.nnunet_files import (
    NNUNET_PATH_VARS,
    env_path,
    load_json,
    log_tail,
    not_planned_message,
    planned_configurations,
)

TASK_RE = re.compile(r"^Task(\d{2,3})_([A-Za-z0-9]+)$")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
#: nnU-Net console scripts used here -> their entry points (run with this interpreter, so the same
#: environment as ours, whatever is first on PATH).
ENTRY_POINTS = {
    "nnUNetv2_convert_MSD_dataset": ("nnunetv2.dataset_conversion.convert_MSD_dataset", "entry_point"),
    "nnUNetv2_plan_and_preprocess": ("nnunetv2.experiment_planning.plan_and_preprocess_entrypoints",
                                     "plan_and_preprocess_entry"),
}
MAX_LISTED_PROBLEMS = 10


class TaskError(ValueError):
    """A task that is missing, malformed or in conflict: reported, and the task skipped."""


@dataclass(frozen=True)
class MSDTask:
    number: int
    name: str  # "Hippocampus"
    source: str  # the TaskXX_Name folder or its archive

    @property
    def task_name(self) -> str:
        return f"Task{self.number:02d}_{self.name}"

    @property
    def is_archive(self) -> bool:
        return os.path.isfile(self.source)

    def dataset_id(self, id_offset: int = 0) -> int:
        return self.number + id_offset

    def dataset_name(self, id_offset: int = 0) -> str:
        return f"Dataset{self.dataset_id(id_offset):03d}_{self.name}"


def _task_from_name(path: str) -> MSDTask | None:
    base = os.path.basename(os.path.normpath(path))
    if os.path.isfile(path):
        suffix = next((s for s in TAR_SUFFIXES if base.endswith(s)), None)
        if suffix is None:
            return None
        base = base[: -len(suffix)]
    m = TASK_RE.match(base)
    return MSDTask(int(m.group(1)), m.group(2), os.path.abspath(path)) if m else None


def discover_tasks(paths: Sequence[str], numbers: Iterable[int] | None = None) -> tuple[list[MSDTask], list[str]]:
    """Tasks in ``paths`` (each a ``TaskXX_Name`` folder, its archive, or a folder holding such), filtered by
    task number. Returns (tasks sorted by number, problems). An unpacked folder wins over an archive of
    the same task."""
    found: dict[int, MSDTask] = {}
    problems: list[str] = []

    def add(task: MSDTask) -> None:
        prev = found.get(task.number)
        if prev is None or (prev.is_archive and not task.is_archive):
            found[task.number] = task
        elif prev.name != task.name:
            problems.append(f"task number {task.number} appears twice ({prev.source} and {task.source}); "
                            f"using {prev.source}")

    for path in paths:
        if not os.path.exists(path):
            problems.append(f"{path}: does not exist")
            continue
        task = _task_from_name(path)
        if task is not None:
            add(task)
            continue
        if os.path.isdir(path):
            inner = [t for t in (_task_from_name(os.path.join(path, n)) for n in sorted(os.listdir(path))) if t]
            if inner:
                for t in inner:
                    add(t)
                continue
        problems.append(f"{path}: not an MSD task (a TaskXX_Name folder, TaskXX_Name.tar, or a folder holding them; "
                        "the name must be Task, two digits, '_', and letters/digits only, as the Decathlon ships it)")
    wanted = None if numbers is None else {int(n) for n in numbers}
    tasks = sorted((t for t in found.values() if wanted is None or t.number in wanted), key=lambda t: t.number)
    for n in sorted((wanted or set()) - {t.number for t in tasks}):
        problems.append(f"task {n:02d}: not found in {', '.join(paths)}")
    return tasks, problems


# --- checks ------------------------------------------------------------------------------------------
def _problems_text(problems: list[str]) -> str:
    shown = problems[:MAX_LISTED_PROBLEMS]
    more = len(problems) - len(shown)
    return "\n  ".join(shown + ([f"... and {more} more"] if more > 0 else []))


def _dataset_json_problems(meta: dict, is_file: Callable[[str], bool]) -> tuple[list[str], list[tuple[str, str, dict]]]:
    """Problems of an MSD dataset.json (``is_file``: whether a path relative to the task exists), and the
    (image, label, entry) of each training case whose files are there, for the NIfTI checks."""
    problems: list[str] = []
    modality, labels, training = meta.get("modality"), meta.get("labels"), meta.get("training")
    if not isinstance(modality, dict) or not modality:
        problems.append('dataset.json: "modality" must be a non-empty object like {"0": "MRI"} (MSD format; '
                        'an nnU-Net v2 data set with "channel_names" needs no conversion)')
    if not isinstance(labels, dict) or "0" not in labels or not all(str(k).isdigit() for k in labels):
        problems.append('dataset.json: "labels" must map label values to names and include "0", '
                        'like {"0": "background", "1": "tumour"}')
    if "test" not in meta:  # nnU-Net's converter ends with `del dataset_json["test"]`
        problems.append('dataset.json: "test" is missing (MSD lists the test images there and nnU-Net\'s converter '
                        'needs the key; add "test": [] if the task has no test images)')
    if not isinstance(training, list) or not training:
        problems.append('dataset.json: "training" must be a non-empty list of {"image": ..., "label": ...}')
        training = []
    cases = []
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or not {"image", "label"} <= set(entry):
            problems.append(f'dataset.json: training[{i}] lacks "image" or "label"')
            continue
        found = 0
        for key in ("image", "label"):
            rel = os.path.normpath(str(entry[key]))
            if not rel.endswith(".nii.gz"):
                problems.append(f"training[{i}] {key} {entry[key]}: not a .nii.gz file")
            elif not is_file(rel):
                problems.append(f"training[{i}] {key} {entry[key]}: file not found")
            else:
                found += 1
        if found == 2:
            cases.append((os.path.normpath(entry["image"]), os.path.normpath(entry["label"]), entry))
    return problems, cases


def _parse_dataset_json(text: str | None, problems: list[str]) -> dict | None:
    if text is None:
        problems.append("dataset.json is missing")
        return None
    try:
        meta = json.loads(text)
    except ValueError as e:
        problems.append(f"dataset.json cannot be read as JSON ({e})")
        return None
    if not isinstance(meta, dict):
        problems.append("dataset.json must hold a JSON object")
        return None
    return meta


def _malformed(shown: str, problems: list[str]) -> TaskError:
    return TaskError(f"{shown}: malformed MSD task:\n  " + _problems_text(problems))


def _missing_subfolders(is_dir: Callable[[str], bool]) -> list[str]:
    return [f"{sub}/ is missing" + (" (MSD ships one; an empty folder will do if you have no test images)"
                                    if sub == "imagesTs" else "")
            for sub in ("imagesTr", "labelsTr", "imagesTs") if not is_dir(sub)]


def check_task_folder(folder: str, shown: str | None = None) -> dict:
    """Check an unpacked task the way nnU-Net's converter and planner will use it; raise :class:`TaskError`
    listing every problem found (naming ``shown``, the task as the user gave it, default ``folder``).
    Returns MSD's dataset.json."""
    import nibabel as nib

    shown = shown or folder
    problems = _missing_subfolders(lambda sub: os.path.isdir(os.path.join(folder, sub)))
    text = None
    try:
        with open(os.path.join(folder, "dataset.json")) as f:
            text = f.read()
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as e:
        raise _malformed(shown, [*problems, f"dataset.json cannot be read ({e})"]) from None
    meta = _parse_dataset_json(text, problems)
    if meta is None:
        raise _malformed(shown, problems)
    json_problems, cases = _dataset_json_problems(meta, lambda rel: os.path.isfile(os.path.join(folder, rel)))
    problems += json_problems
    modality = meta.get("modality")
    want = len(modality) if isinstance(modality, dict) and len(modality) > 1 else 1
    for image, label, entry in cases:
        try:
            img_shape = nib.load(os.path.join(folder, image)).shape
            seg_shape = nib.load(os.path.join(folder, label)).shape
        except Exception as e:  # nibabel raises several types for broken files
            problems.append(f"training[{meta['training'].index(entry)}]: cannot read the NIfTI header "
                            f"({type(e).__name__}: {e})")
            continue
        channels = img_shape[3] if len(img_shape) == 4 else 1
        if len(img_shape) not in (3, 4) or channels != want:
            problems.append(f"{entry['image']}: shape {img_shape}, expected 3D (one modality) or 4D with "
                            f"{want} modalities last")
        elif tuple(seg_shape) != tuple(img_shape[:3]):
            problems.append(f"{entry['label']}: shape {seg_shape} differs from its image's {img_shape[:3]}")
    if problems:
        raise _malformed(shown, problems)
    return meta


def check_task_archive(archive: str) -> dict:
    """Check an MSD archive without unpacking it: readable to its end, one ``TaskXX_Name`` folder, and its
    dataset.json (read from the archive) as :func:`check_task_folder` checks it, less the NIfTI headers.
    Raises :class:`TaskError` with the reasons a real run would give. Returns MSD's dataset.json."""
    try:
        with tarfile.open(archive) as tf:
            members, top = _archive_members(tf, archive)
            names = {os.path.normpath(m.name.lstrip("./"))[len(top) + 1:]: m for m in members
                     if os.path.normpath(m.name.lstrip("./")).startswith(top + "/")}
            member = names.get("dataset.json")
            text = tf.extractfile(member).read().decode("utf-8", "replace") if member and member.isfile() else None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise TaskError(f"{archive}: cannot unpack ({type(e).__name__}: {e})") from None
    folders = {os.path.dirname(n) for n in names} | {n for n, m in names.items() if m.isdir()}
    problems = _missing_subfolders(lambda sub: sub in folders)
    meta = _parse_dataset_json(text, problems)
    if meta is None:
        raise _malformed(archive, problems)
    problems += _dataset_json_problems(meta, lambda rel: rel in names and names[rel].isfile())[0]
    if problems:
        raise _malformed(archive, problems)
    return meta


def check_task(task: "MSDTask") -> dict:
    """The checks a real run makes before converting ``task`` (its folder, or its archive unopened)."""
    return check_task_archive(task.source) if task.is_archive else check_task_folder(task.source)


# --- unpacking ----------------------------------------------------------------------------------------
def _archive_members(tf: tarfile.TarFile, archive: str) -> tuple[list[tarfile.TarInfo], str]:
    """The archive's members and its one top-level folder; raises TaskError for another layout and
    tarfile.ReadError when the archive ends before its last member's data (a cut-off download)."""
    members = tf.getmembers()
    tops = {m.name.lstrip("./").split("/")[0] for m in members}
    tops = {t for t in tops if t and not t.startswith("._")}  # macOS metadata files in MSD archives
    if len(tops) != 1 or not TASK_RE.match(next(iter(tops))):
        raise TaskError(f"{archive}: expected one top-level TaskXX_Name folder in the archive, found "
                        f"{sorted(tops)[:5]}")
    last = max((m for m in members if m.isfile() and m.size), key=lambda m: m.offset_data + m.size, default=None)
    if last is not None:
        tf.fileobj.seek(last.offset_data + last.size - 1)
        if not tf.fileobj.read(1):
            raise tarfile.ReadError("unexpected end of data")
    return members, tops.pop()


def _unsafe_member(m: tarfile.TarInfo) -> str | None:
    """Why the ``data`` filter would refuse a member (for Pythons without tarfile filters)."""
    parts = m.name.replace("\\", "/").split("/")
    if m.name.startswith("/") or os.path.isabs(m.name) or ".." in parts:
        return "a path outside the folder"
    if not (m.isfile() or m.isdir()):
        return "a link or special file"
    return None


def extract_all(tf: tarfile.TarFile, dest: str) -> None:
    """``tf.extractall(dest, filter="data")``; on Pythons before 3.10.12 / 3.11.4, which have no filters,
    the members the data filter would refuse (paths out of ``dest``, links, devices) are refused first."""
    if hasattr(tarfile, "data_filter"):
        tf.extractall(dest, filter="data")
        return
    for m in tf.getmembers():
        why = _unsafe_member(m)
        if why:
            raise tarfile.TarError(f"{m.name}: {why}; refusing to unpack")
    tf.extractall(dest)


def extract_task_archive(archive: str, dest: str) -> str:
    """Unpack an MSD archive (one top-level ``TaskXX_Name`` folder) into ``dest``; returns that folder."""
    try:
        with tarfile.open(archive) as tf:
            top = _archive_members(tf, archive)[1]
            extract_all(tf, dest)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise TaskError(f"{archive}: cannot unpack ({type(e).__name__}: {e})") from None
    return os.path.join(dest, top)


# --- nnU-Net commands -----------------------------------------------------------------------------------
def nnunet_argv(program: str, args: Sequence[str]) -> list[str]:
    """argv that runs nnU-Net's console script ``program`` with this interpreter."""
    module, func = ENTRY_POINTS[program]
    code = f"import sys; sys.argv[0] = {program!r}; from {module} import {func}; sys.exit({func}())"
    return [sys.executable, "-c", code, *args]


def run_nnunet(program: str, args: Sequence[str], log_path: str, environ: dict, echo: Callable[[str], None]) -> None:
    """Run an nnU-Net command with its output appended to ``log_path``; raise :class:`TaskError` on failure."""
    shown = shlex.join([program, *args])
    echo(f"[run] {shown}")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"\n===== {shown}\n")
        log.flush()
        rc = subprocess.call(nnunet_argv(program, args), stdout=log, stderr=subprocess.STDOUT, env=environ,
                             stdin=subprocess.DEVNULL)
    if rc != 0:
        raise TaskError(f"{program} failed (exit code {rc}); last lines of {log_path}:\n{log_tail(log_path, 25)}")


# --- conversion ---------------------------------------------------------------------------------------
def _datasets_with_id(dataset_id: int, environ) -> dict[str, str]:
    """{folder name: root variable} of every data set with this id in nnUNet_raw/preprocessed/results."""
    prefix = f"Dataset{dataset_id:03d}_"
    hits = {}
    for var in NNUNET_PATH_VARS:
        root = environ.get(var)
        if root and os.path.isdir(root):
            hits.update({d: var for d in os.listdir(root) if d.startswith(prefix)})
    return hits


def _converted_ok(folder: str) -> bool:
    try:
        with open(os.path.join(folder, "dataset.json")) as f:
            n = int(json.load(f)["numTraining"])
        labels = [x for x in os.listdir(os.path.join(folder, "labelsTr")) if x.endswith(".nii.gz")]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return len(labels) == n


def check_id_free(task: MSDTask, id_offset: int, environ) -> None:
    """Raise :class:`TaskError` when another data set has the task's id (nnU-Net's converter would refuse)."""
    name = task.dataset_name(id_offset)
    others = {d: v for d, v in _datasets_with_id(task.dataset_id(id_offset), environ).items() if d != name}
    if others:
        d, var = next(iter(others.items()))
        raise TaskError(f"{task.task_name}: data set id {task.dataset_id(id_offset)} is already taken by {d} in {var}; "
                        f"use --id-offset N to give the MSD tasks ids N + task number")


def conversion_args(task: MSDTask, source: str, id_offset: int, num_processes: int) -> list[str]:
    return ["-i", source, "-overwrite_id", str(task.dataset_id(id_offset)), "-np", str(num_processes)]


def convert_task(task: MSDTask, id_offset: int = 0, num_processes: int = 4, environ: dict | None = None,
                 log_dir: str = ".", echo: Callable[[str], None] = print) -> str:
    """``$nnUNet_raw/DatasetXXX_Name`` for the task, converted now or found complete. Returns its name."""
    environ = dict(os.environ if environ is None else environ)
    raw = env_path("nnUNet_raw", environ)
    name = task.dataset_name(id_offset)
    check_id_free(task, id_offset, environ)
    target = os.path.join(raw, name)
    if os.path.isdir(target):
        if _converted_ok(target):
            echo(f"[skip] {task.task_name}: already converted to {target}")
            return name
        raise TaskError(f"{target} exists but is not a complete conversion (dataset.json's numTraining does not match "
                        f"labelsTr/); nnunet-swin did not write it. Move it away and run again.")
    os.makedirs(raw, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{task.task_name}.converting.", dir=raw)  # same file system: atomic rename
    try:
        source = task.source
        if task.is_archive:
            echo(f"[unpack] {task.source}")
            source = extract_task_archive(task.source, os.path.join(staging, "archive"))
        check_task_folder(source, task.source)
        child = child_env(environ, None)
        for var in NNUNET_PATH_VARS:  # the converter refuses ids present anywhere: give it empty folders
            child[var] = os.path.join(staging, var)
            os.makedirs(child[var])
        run_nnunet("nnUNetv2_convert_MSD_dataset", conversion_args(task, source, id_offset, num_processes),
                   os.path.join(log_dir, f"{name}__convert.log"), child, echo)
        converted = os.path.join(child["nnUNet_raw"], name)
        if not _converted_ok(converted):
            raise TaskError(f"{task.task_name}: nnUNetv2_convert_MSD_dataset finished but {converted} is incomplete")
        os.rename(converted, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    echo(f"[done] {task.task_name} -> {target}")
    return name


# --- planning and preprocessing -----------------------------------------------------------------------
def _data_identifier(plans: dict, configuration: str) -> str | None:
    configs = plans.get("configurations", {})
    seen = set()
    while configuration in configs and configuration not in seen:
        seen.add(configuration)
        c = configs[configuration]
        if c.get("data_identifier"):
            return c["data_identifier"]
        configuration = c.get("inherits_from")
    return None


def missing_preprocessing(dataset: str, plans_name: str, configurations: Sequence[str], environ=None,
                          if_planned: Collection[str] = ()) -> list[str]:
    """Configurations of ``plans_name`` whose preprocessed cases are not all there (all of them when the
    plans file is missing). Raises :class:`TaskError` for a configuration the plans do not have, unless it is
    in ``if_planned`` (the benchmark's default 3d_fullres: nnU-Net plans it for 3D images only), which is
    then left out."""
    environ = os.environ if environ is None else environ
    root = os.path.join(env_path("nnUNet_preprocessed", environ), dataset)
    try:
        plans = load_json(os.path.join(root, plans_name + ".json"))
    except (OSError, ValueError):
        return list(configurations)
    planned = list(plans.get("configurations", {}))
    problem = not_planned_message(dataset, plans_name, [c for c in configurations if c not in if_planned], planned)
    if problem:
        raise TaskError(problem)
    configurations = [c for c in configurations if c in planned]
    try:
        n_cases = int(load_json(os.path.join(root, "dataset.json"))["numTraining"])
    except (OSError, ValueError, KeyError, TypeError):
        return list(configurations)
    todo = []
    for c in configurations:
        folder = os.path.join(root, _data_identifier(plans, c) or "")
        n = len([f for f in os.listdir(folder) if f.endswith(".pkl")]) if os.path.isdir(folder) else 0
        if n != n_cases:
            todo.append(c)
    return todo


def preprocess_args(dataset_id: int, planner: str, configurations: Sequence[str], num_processes: int) -> list[str]:
    return ["-d", str(dataset_id), "-pl", planner, "-c", *configurations, "-np", str(num_processes),
            "--verify_dataset_integrity"]


def plan_and_preprocess(dataset: str, dataset_id: int, planner: str, plans_name: str, configurations: Sequence[str],
                        num_processes: int = 4, environ: dict | None = None, log_dir: str = ".",
                        echo: Callable[[str], None] = print, if_planned: Collection[str] = ()) -> None:
    """Run ``nnUNetv2_plan_and_preprocess`` for the configurations not yet complete (none: nothing runs).
    ``if_planned``: configurations to preprocess only if nnU-Net plans them (it skips the ones it did not)."""
    environ = dict(os.environ if environ is None else environ)
    todo = missing_preprocessing(dataset, plans_name, configurations, environ, if_planned)
    if not todo:
        planned = planned_configurations(dataset, plans_name, environ) or []
        echo(f"[skip] {dataset}: {plans_name} {' '.join(c for c in configurations if c in planned)} already "
             "preprocessed")
        return
    child = child_env(environ, None)
    if child.get("nnUNet_n_proc_DA") == "0":  # nnU-Net's VRAM estimate calls torch.set_num_threads(n_proc_DA)
        child["nnUNet_n_proc_DA"] = "1"
    run_nnunet("nnUNetv2_plan_and_preprocess", preprocess_args(dataset_id, planner, todo, num_processes),
               os.path.join(log_dir, f"{dataset}__{plans_name}__preprocess.log"), child, echo)
    still = missing_preprocessing(dataset, plans_name, todo, environ, if_planned)
    if still:
        raise TaskError(f"{dataset}: nnUNetv2_plan_and_preprocess finished but {plans_name} {' '.join(still)} "
                        "lacks preprocessed cases")
    echo(f"[done] {dataset}: {plans_name} {' '.join(todo)} planned and preprocessed")
