"""Trained models (trainer x plans x configuration) as the MSD benchmark compares them: their folders, what
they cost (parameters and GMACs per patch, measured on the network nnU-Net's predictor builds), and nnU-Net's
``find_best_configuration`` over several of them. The measurements and ``find_best_configuration`` run in
helper processes (:mod:`nnunet_swin.experiments.worker`); results are cached next to the report. Only the
standard library is imported at module level.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from dataclasses import dataclass
from typing import Callable, Sequence

from nnunet_swin.experiments.local import child_env, worker_command
from nnunet_swin.experiments.nnunet_files import atomic_write, env_path, load_json, log_tail


@dataclass(frozen=True)
class Model:
    trainer: str
    plans: str
    configuration: str

    @property
    def folder(self) -> str:
        """nnU-Net's model folder name (``$nnUNet_results/<dataset>/<folder>``)."""
        return f"{self.trainer}__{self.plans}__{self.configuration}"


def model_dir_of(dataset: str, model: Model, environ) -> str:
    return os.path.join(env_path("nnUNet_results", environ), dataset, model.folder)


def cached(path: str, source_mtime: float, compute: Callable[[], object]):
    """JSON cache next to the report, valid while the file it was computed from is unchanged."""
    try:
        with open(path) as f:
            data = json.load(f)
        if data.get("source_mtime") == source_mtime:
            return data["value"]
    except (OSError, ValueError, KeyError):
        pass
    value = compute()
    atomic_write(path, json.dumps({"source_mtime": source_mtime, "value": value}))
    return value


def model_cost(model_dir: str, fold: str, cache_dir: str, environ, log_path: str) -> dict:
    """Parameters and GMACs per patch of the trained network, measured in a child process (nnU-Net's
    predictor rebuilds it from the model folder, as inference does), cached against the checkpoint."""
    checkpoint = os.path.join(model_dir, f"fold_{fold}", "checkpoint_final.pth")

    def compute() -> dict:
        out = os.path.join(cache_dir, f".{os.path.basename(model_dir)}.cost.json")
        cmd = worker_command("model-cost", "--model-dir", model_dir, "--fold", str(fold), "--out", out)
        with open(log_path, "a") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(environ, None),
                                 stdin=subprocess.DEVNULL)
        if rc != 0:
            raise RuntimeError(f"measuring {model_dir} failed; see {log_path}:\n{log_tail(log_path, 15)}")
        value = load_json(out)
        os.unlink(out)
        return value

    return cached(os.path.join(cache_dir, f"{os.path.basename(model_dir)}.cost.json"), os.path.getmtime(checkpoint),
                   compute)


def measure_model_cost(model_dir: str, fold: str) -> dict:
    """In the helper process: parameters and GMACs of one forward pass of one patch of the network nnU-Net's
    predictor builds from the trained folder, as inference does."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_swin.experiments.bench import forward_gmacs

    predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_dir, (fold if fold == "all" else int(fold),),
                                                   "checkpoint_final.pth")
    net = predictor.network.eval()
    patch = [int(s) for s in predictor.configuration_manager.patch_size]
    channels = len(predictor.dataset_json.get("channel_names", predictor.dataset_json.get("modality", {"0": 0})))
    gmacs = forward_gmacs(net, torch.zeros(1, channels, *patch))
    return {"params": sum(p.numel() for p in net.parameters()), "gmacs_per_patch": gmacs, "patch_size": patch,
            "network": type(net).__name__}


# --- find_best_configuration ---------------------------------------------------------------------------
def find_best_args(dataset: str, models: Sequence[Model], folds: Sequence[str], ensembling: bool,
                   num_processes: int) -> list[str]:
    args = ["-d", dataset, "-f", *map(str, folds), "-np", str(num_processes)]
    for m in models:
        args += ["--model", m.trainer, m.plans, m.configuration]
    return args + ([] if ensembling else ["--disable-ensembling"])


def run_find_best_configuration(dataset: str, models: Sequence[Sequence[str]], folds: Sequence[int],
                                ensembling: bool, num_processes: int) -> None:
    """In the helper process: nnU-Net's ``find_best_configuration`` over exactly these (trainer, plans,
    configuration) models (its command line would take every trainer x plans x configuration combination,
    and the Swin-Unet skip variants have no 3D runs by default)."""
    from nnunetv2.evaluation.find_best_configuration import find_best_configuration

    find_best_configuration(dataset, [{"plans": pl, "configuration": c, "trainer": tr} for tr, pl, c in models],
                            allow_ensembling=ensembling, num_processes=num_processes, overwrite=True,
                            folds=tuple(folds), strict=True)


def _find_best_current(info_path: str, dataset: str, models: Sequence[Model], folds: Sequence[str], ensembling: bool,
                       environ) -> dict | None:
    """inference_information.json when it was written for exactly these models, folds and ensembling setting
    after their last validation; else None."""
    try:
        info = load_json(info_path)
        considered = {(m["trainer"], m["plans"], m["configuration"]) for m in info["considered_models"]}
        same = (considered == {(m.trainer, m.plans, m.configuration) for m in models}
                and [str(f) for f in info["folds"]] == [str(f) for f in folds]
                and bool(info["ensembling_allowed"]) == ensembling)
        newest = max(os.path.getmtime(os.path.join(model_dir_of(dataset, m, environ), f"fold_{f}", "validation",
                                                   "summary.json")) for m in models for f in folds)
        return info if same and os.path.getmtime(info_path) >= newest else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find_best(dataset: str, models: Sequence[Model], folds: Sequence[str], ensembling: bool, num_processes: int,
              environ, log_path: str, echo: Callable[[str], None]) -> dict | None:
    """Run nnU-Net's find_best_configuration (unless its result is current); returns its
    inference_information.json, or None when it cannot run (e.g. fold 'all')."""
    if not all(str(f).isdigit() for f in folds):
        echo(f"note: find_best_configuration needs cross-validation folds, not {' '.join(folds)}; skipped")
        return None
    info_path = os.path.join(env_path("nnUNet_results", environ), dataset, "inference_information.json")
    info = _find_best_current(info_path, dataset, models, folds, ensembling, environ)
    if info is not None:
        echo(f"[skip] {dataset}: find_best_configuration is current")
        return info
    args = find_best_args(dataset, models, folds, ensembling, num_processes)
    echo(f"[run] find_best_configuration {shlex.join(args)}")
    with open(log_path, "a") as log:
        rc = subprocess.call(worker_command("find-best", *args),
                             stdout=log, stderr=subprocess.STDOUT, env=child_env(environ, None),
                             stdin=subprocess.DEVNULL)
    if rc != 0:
        raise RuntimeError(f"find_best_configuration failed (exit code {rc}); see {log_path}:\n{log_tail(log_path, 20)}")
    return load_json(info_path)


def selected(info: dict | None) -> tuple[set, str]:
    """(models find_best picked, a sentence saying so)."""
    if not info:
        return set(), "find_best_configuration was not run."
    best = info["best_model_or_ensemble"]
    picked = {(m["trainer"], m["plans_identifier"], m["configuration"]) for m in best["selected_model_or_models"]}
    what = " + ".join(f"{t} ({c}, {p})" for t, p, c in sorted(picked))
    kind = "the ensemble of" if len(picked) > 1 else "the single model"
    return picked, (f"nnU-Net's `find_best_configuration` picks {kind} {what}: cross-validation Dice "
                    f"{best['result_on_crossval_pre_pp']:.4f}, {best['result_on_crossval_post_pp']:.4f} after its "
                    "postprocessing.")
