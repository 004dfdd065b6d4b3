"""``nnunet-swin``: a thin argparse front end; every subcommand lives in its own module.

Each subcommand is registered by a function that adds its subparser with ``set_defaults(func=...)``:
``_add_<name>`` here for the small ones, ``add_<name>_parser`` in the experiment modules for
``ablate-skips`` and ``benchmark-msd``.
"""

from __future__ import annotations

import argparse
import sys

from nnunet_swin.experiments import ablation, msd_benchmark


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="synthetic 2D data set -> nnU-Net plan/preprocess -> train Swin-Unet -> "
                                     "predict held-out cases -> Dice per label and an overlay PNG")
    p.add_argument("--workdir", default="nnunet_swin_demo",
                   help="folder for nnUNet_raw/preprocessed/results of the demo (default: ./nnunet_swin_demo)")
    p.add_argument("--dataset-id", type=int, default=990)
    p.add_argument("--trainer", default="nnUNetTrainerSwinUnet_demo",
                   help="trainer to train (default: the paper's network on a short schedule)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 10 on CPU, 50 on GPU)")
    p.add_argument("--iters", type=int, default=None, help="iterations per epoch (default 25)")
    p.add_argument("--num-train", type=int, default=40)
    p.add_argument("--num-test", type=int, default=10)
    p.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    p.add_argument("--device", choices=("auto", "cuda", "cpu", "mps"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="show nnU-Net's full output")

    def run(args):
        from nnunet_swin.demo import run_demo

        return run_demo(workdir=args.workdir, dataset_id=args.dataset_id, trainer=args.trainer, epochs=args.epochs,
                        iters=args.iters, num_train=args.num_train, num_test=args.num_test, size=tuple(args.size),
                        device=args.device, seed=args.seed, verbose=args.verbose)

    p.set_defaults(func=run)


def _add_doctor(sub) -> None:
    p = sub.add_parser("doctor", help="registration with nnU-Net, nnU-Net paths, versions and the device")
    p.add_argument("--no-subprocess", action="store_true",
                   help="skip the check in a fresh Python process (faster, less conclusive)")

    def run(args):
        from nnunet_swin.registration import doctor

        return doctor(check_fresh_process=not args.no_subprocess)

    p.set_defaults(func=run)


def _add_ext_trainer_dir(sub) -> None:
    p = sub.add_parser("ext-trainer-dir", help="print the directory to put on nnUNet_extTrainer (manual set-up)")
    p.add_argument("--export", action="store_true",
                   help="print a shell line that appends it to nnUNet_extTrainer: eval \"$(nnunet-swin "
                        "ext-trainer-dir --export)\"")

    def run(args):
        from nnunet_swin.registration import ENV_VAR, ext_trainer_dir

        d = ext_trainer_dir()
        if args.export:
            print(f'export {ENV_VAR}="${{{ENV_VAR}:+${ENV_VAR}:}}{d}"')
        else:
            print(d)
        return 0

    p.set_defaults(func=run)


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="side-by-side speed, memory, kernel launches and torch.compile: SwinUnet "
                                     "variants, nnU-Net's 2D or 3D CNN, the official Swin-Unet, MONAI SwinUNETR")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda or meta (default cpu; meta: shapes only, no memory used and no step timed: "
                        "parameters, GMACs and saved activations)")
    p.add_argument("--patch", type=int, nargs="+", default=[224], metavar="N",
                   help="H [W] for 2D (default 224); D H W for 3D at nnU-Net's plan for that patch, e.g. 40 56 40")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("SD", "SH", "SW"),
                   help="3D only: the voxel spacing nnU-Net plans the CNN's pooling (and SwinUnet's strides) for "
                        "(default 1 1 1), e.g. 3.6 0.62 0.62 for a prostate-like plan")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--classes", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=6,
                   help="timed training steps per row (default 6); 0: none, only parameters, GMACs and saved "
                        "activations (for 3D patches too slow to train on this machine)")
    p.add_argument("--only", nargs="+", metavar="TEXT", help="only rows whose name contains one of these "
                                                             "(the nnU-Net CNN row is always kept)")
    p.add_argument("--skip", nargs="+", metavar="TEXT", help="leave out rows whose name contains one of these, "
                                                             "e.g. --skip MONAI; --skip compile keeps the rows "
                                                             "but measures no compiled step (compiling takes minutes)")
    p.add_argument("--compile", action="store_true",
                   help="on the CPU also measure torch.compile (compile seconds, compiled step) for the CNN and "
                        "the default SwinUnet (always on with --device cuda)")
    p.add_argument("--official", metavar="PY",
                   help="the official Swin-Unet's reference implementation for its row (default: "
                        "tests/official_reference.py of the checkout this runs from, if there)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--out", help="write OUT.csv and OUT.json (and OUT.png with --png)")
    p.add_argument("--png", action="store_true")
    p.add_argument("--complexity", action="store_true",
                   help="global MSA against W-MSA/SW-MSA for one stage: formulas, counted FLOPs, time")

    def run(args):
        from nnunet_swin.experiments.bench import bench_command

        return bench_command(args.device, tuple(args.patch), args.batch, args.in_channels, args.classes,
                             args.warmup, args.repeats, args.only, args.compile, args.threads, args.out,
                             args.png, args.complexity, args.skip, args.official, args.spacing)

    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet-swin", description="Swin-Unet trainers for nnU-Net v2")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_demo, _add_doctor, _add_ext_trainer_dir, _add_bench, ablation.add_parser, msd_benchmark.add_parser):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
