"""``nnunet-swin demo``: the whole nnU-Net workflow with Swin-Unet on a synthetic 2D data set.

1. writes a disc/bar data set in nnU-Net raw format (``nnunet_swin.synthetic``),
2. ``nnUNetv2_plan_and_preprocess -c 2d``,
3. ``nnUNetv2_train ID 2d 0 -tr nnUNetTrainerSwinUnet_demo`` (GPU when present, else CPU; short schedule);
   any other ``--trainer`` trains on the same schedule through a subclass the demo writes into its workdir
   (``short_schedule_trainer``), found by nnU-Net on ``nnUNet_extTrainer`` like every other trainer,
4. ``nnUNetv2_predict`` on the held-out images,
5. ``nnUNetv2_evaluate_simple`` against their labels; prints Dice per label,
6. writes ``overlay.png`` (image | ground truth | prediction) for a few held-out cases.

Everything runs through nnU-Net's own commands in subprocesses, exactly as a user would type them; the
trainers are found through ``nnUNet_extTrainer`` (appended here too, in case the .pth hook is absent).
On 2 CPU cores the default takes about 10 minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import time

import numpy as np

from nnunet_swin.experiments.nnunet_files import is_progress_line
from nnunet_swin.registration import ENV_VAR, append_to_env, lookup_in_subprocess, register
from nnunet_swin.synthetic import SYNTHETIC_LABELS, dataset_folder_name, write_synthetic_dataset

DEFAULT_TRAINER = "nnUNetTrainerSwinUnet_demo"  # reads the schedule from NNUNET_SWIN_DEMO_EPOCHS/_ITERS
VAL_ITERATIONS = 5
_SHORT_MODULE = "nnunet_swin_demo_trainer"


def nnunet_command(name: str) -> str:
    """Path of an nnU-Net console script, next to this interpreter first (un-activated venvs)."""
    local = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.isfile(local):
        return local
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: is nnunetv2 installed in this environment?")
    return found


def pick_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def nnunet_env(workdir: str, base: dict | None = None, device: str = "cpu") -> dict:
    """Environment for nnU-Net subprocesses: its three folders under ``workdir`` (not created here), our
    trainers on nnUNet_extTrainer, this nnunet_swin importable, and CPU-friendly worker counts."""
    env = dict(os.environ if base is None else base)
    workdir = os.path.abspath(workdir)
    for var, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        env[var] = os.path.join(workdir, sub)
    register(env)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    site_dirs = {os.path.abspath(d) for d in getattr(site, "getsitepackages", lambda: [])()}
    if pkg_parent not in site_dirs:  # a source checkout: make it importable in the children
        env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if device != "cuda":
        cores = os.cpu_count() or 2
        env.setdefault("nnUNet_n_proc_DA", str(max(1, min(4, cores // 2))))
        env.setdefault("nnUNet_def_n_proc", str(max(1, min(4, cores // 2))))
    return env


def short_schedule_trainer(trainer: str, epochs: int, iters: int, directory: str) -> str:
    """Write into ``directory`` (to be put last on nnUNet_extTrainer) a module defining ``trainer`` on the
    demo's schedule, and return that subclass's name. The module finds ``trainer`` by nnU-Net's own lookup, so
    any trainer nnU-Net finds works: its own, this plugin's, or a user's on nnUNet_extTrainer (an earlier
    entry, so the lookup meets it before this directory)."""
    name = f"{trainer}_demo{epochs}x{iters}"
    os.makedirs(directory, exist_ok=True)
    code = (f'"""Written by nnunet-swin demo: {trainer} for {epochs} epochs of {iters} iterations."""\n\n'
            f"from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name\n\n"
            f"from nnunet_swin.trainers import ShortSchedule\n\n\n"
            f"class {name}(ShortSchedule, recursive_find_trainer_class_by_name({trainer!r})):\n"
            f"    epochs, iterations, val_iterations = {epochs}, {iters}, {VAL_ITERATIONS}\n")
    with open(os.path.join(directory, _SHORT_MODULE + ".py"), "w", encoding="utf-8") as f:
        f.write(code)
    return name


def run_step(title: str, cmd: list[str], env: dict, verbose: bool = False, log_path: str | None = None) -> str:
    """Run ``cmd`` streaming progress lines; raise with the output tail when it fails."""
    start = time.time()
    print(f"\n==> {title}\n    $ {' '.join(cmd)}", flush=True)
    lines: list[str] = []
    log = open(log_path, "a") if log_path else None
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if log:
                log.write(line)
            text = line.rstrip()
            if verbose or is_progress_line(text):
                print(f"    [{time.time() - start:6.0f}s] {text[:200]}", flush=True)
        rc = proc.wait()
    finally:
        if log:
            log.close()
    if rc != 0:
        tail = "".join(lines[-40:])
        raise RuntimeError(f"{title} failed (exit code {rc}). Last output:\n{tail}")
    print(f"    done in {time.time() - start:.0f} s", flush=True)
    return "".join(lines)


def write_overlay(image_dir: str, gt_dir: str, pred_dir: str, cases: list[str], out_png: str, n: int = 4) -> str:
    """A grid: one row per case, columns image | ground truth | prediction (labels coloured)."""
    from PIL import Image

    colours = np.array([[0, 0, 0], [255, 80, 40], [40, 160, 255], [80, 255, 80], [255, 255, 0]], np.float32)
    rows = []
    for case in cases[:n]:
        img = np.asarray(Image.open(os.path.join(image_dir, f"{case}_0000.png")).convert("L"), np.float32)
        grey = np.repeat(img[..., None], 3, axis=2)
        panels = [grey]
        for folder in (gt_dir, pred_dir):
            seg = np.asarray(Image.open(os.path.join(folder, f"{case}.png")), np.int64)
            colour = colours[np.clip(seg, 0, len(colours) - 1)]
            mask = (seg > 0)[..., None]
            panels.append(np.where(mask, 0.45 * grey + 0.55 * colour, grey))
        sep = np.full((img.shape[0], 4, 3), 255, np.float32)
        rows.append(np.concatenate([panels[0], sep, panels[1], sep, panels[2]], axis=1))
    grid = np.concatenate([np.concatenate([r, np.full((4, r.shape[1], 3), 255, np.float32)], axis=0) for r in rows])
    Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8)).resize(
        (grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(out_png)
    return out_png


def run_demo(workdir: str = "nnunet_swin_demo", dataset_id: int = 990, trainer: str = "nnUNetTrainerSwinUnet_demo",
             epochs: int | None = None, iters: int | None = None, num_train: int = 40, num_test: int = 10,
             size: tuple[int, int] = (96, 128), device: str = "auto", seed: int = 0, verbose: bool = False) -> int:
    t0 = time.time()
    device = pick_device(device)
    workdir = os.path.abspath(workdir)
    env = nnunet_env(workdir, device=device)
    epochs = epochs if epochs is not None else (50 if device == "cuda" else 10)
    iters = iters if iters is not None else 25
    print(f"nnunet-swin demo: checking that nnU-Net finds the trainer {trainer} ...", flush=True)
    lookup = lookup_in_subprocess(env, trainer)
    if not lookup.found:
        print(f"nnunet-swin demo: error: --trainer {trainer}: {lookup.message}", file=sys.stderr)
        return 2
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[var], exist_ok=True)
    if trainer == DEFAULT_TRAINER:
        env["NNUNET_SWIN_DEMO_EPOCHS"], env["NNUNET_SWIN_DEMO_ITERS"] = str(epochs), str(iters)
        env["NNUNET_SWIN_DEMO_VAL_ITERS"] = str(VAL_ITERATIONS)
        trained = trainer
    else:
        short_dir = os.path.join(workdir, "ext_trainers")
        trained = short_schedule_trainer(trainer, epochs, iters, short_dir)
        env[ENV_VAR] = append_to_env(env.get(ENV_VAR), short_dir)
    log_path = os.path.join(workdir, "demo_log.txt")
    print(f"nnunet-swin demo: workdir {workdir}, device {device}, trainer {trained}, {epochs} epochs x {iters} "
          f"iterations (full log: {log_path})", flush=True)

    print("\n==> 1/5 writing a synthetic 2D data set (discs = label 1, bars = label 2)", flush=True)
    ds = write_synthetic_dataset(env["nnUNet_raw"], dataset_id, "SwinDemo", num_train, num_test, size, seed)
    print(f"    {len(ds.train_cases)} training and {len(ds.test_cases)} held-out cases of {size[0]}x{size[1]} "
          f"in {ds.folder}", flush=True)
    name = dataset_folder_name(dataset_id, "SwinDemo")
    for stale in (os.path.join(env["nnUNet_preprocessed"], name), os.path.join(env["nnUNet_results"], name)):
        shutil.rmtree(stale, ignore_errors=True)

    np_workers = env.get("nnUNet_def_n_proc", "2")
    run_step("2/5 nnU-Net plan and preprocess (2d)",
             [nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", "2d", "-np", np_workers],
             {**env, "nnUNet_n_proc_DA": env.get("nnUNet_n_proc_DA") or "1"}, verbose, log_path)
    plans = json.load(open(os.path.join(env["nnUNet_preprocessed"], name, "nnUNetPlans.json")))
    print(f"    nnU-Net planned patch {plans['configurations']['2d']['patch_size']}, "
          f"batch {plans['configurations']['2d']['batch_size']}", flush=True)

    run_step(f"3/5 training {trained} on fold 0",
             [nnunet_command("nnUNetv2_train"), str(dataset_id), "2d", "0", "-tr", trained, "-device", device],
             env, verbose, log_path)

    pred_dir = os.path.join(workdir, "predictions")
    shutil.rmtree(pred_dir, ignore_errors=True)
    run_step("4/5 predicting the held-out cases",
             [nnunet_command("nnUNetv2_predict"), "-i", ds.images_ts, "-o", pred_dir, "-d", str(dataset_id),
              "-c", "2d", "-tr", trained, "-f", "0", "-device", device, "-npp", np_workers, "-nps", np_workers],
             env, verbose, log_path)

    summary_file = os.path.join(pred_dir, "summary.json")
    labels = [v for k, v in SYNTHETIC_LABELS.items() if v != 0]
    run_step("5/5 evaluating against the held-out labels",
             [nnunet_command("nnUNetv2_evaluate_simple"), ds.labels_ts, pred_dir, "-l", *map(str, labels),
              "-o", summary_file, "-np", np_workers], env, verbose, log_path)
    summary = json.load(open(summary_file))
    names = {v: k for k, v in SYNTHETIC_LABELS.items()}
    print("\nDice on the held-out cases:")
    for label in labels:
        print(f"  {label} {names[label]:<10} {summary['mean'][str(label)]['Dice']:.3f}")
    print(f"  mean foreground {summary['foreground_mean']['Dice']:.3f}")
    overlay = write_overlay(ds.images_ts, ds.labels_ts, pred_dir, ds.test_cases, os.path.join(workdir, "overlay.png"))
    print(f"\nOverlay (image | ground truth | prediction): {overlay}")
    print(f"Model: {os.path.join(env['nnUNet_results'], name)}")
    print(f"Total time {time.time() - t0:.0f} s")
    return 0
