"""``nnunet-swin``: a thin argparse front end; every subcommand's work lives in its own module.

Options that mean what nnU-Net's do also take nnU-Net's names (``-d``, ``-tr``, ``-device``). Every subcommand
is registered the same way: a function ``add_parser(subparsers) -> ArgumentParser`` that adds
its parser with ``set_defaults(func=...)`` (``func(args) -> exit code``), listed in ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from importlib import metadata

from nnunet_swin import __version__
from nnunet_swin.experiments import ablation, msd_benchmark


class HelpFormatter(argparse.HelpFormatter):
    """Appends an option's default to its help, once: not when the help already states it, nor for options
    without one (None, False or 0, an empty list) or that take no value (switches). Every subcommand's
    parser uses it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or action.default in (None, False, argparse.SUPPRESS) or action.default == []
                or action.nargs == 0 or not action.option_strings):
            return text
        default = " ".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else "%(default)s"
        return f"{text} (default: {default})"


def _add(sub, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description or help)


def demo_parser(sub) -> argparse.ArgumentParser:
    p = _add(sub, "demo", "synthetic 2D data set -> nnU-Net plan/preprocess -> train a trainer -> predict held-out "
                          "cases -> Dice per label and an overlay PNG")
    p.add_argument("--workdir", default="nnunet_swin_demo",
                   help="folder for the demo's nnUNet_raw, nnUNet_preprocessed and nnUNet_results")
    p.add_argument("-d", "--dataset-id", type=int, default=990, help="nnU-Net data set id the demo writes (and replaces)")
    p.add_argument("-tr", "--trainer", default="nnUNetTrainerSwinUnet_demo",
                   help="any trainer nnU-Net finds (nnunet-swin trainers lists this plugin's); it trains on the "
                        "demo's short schedule (default: nnUNetTrainerSwinUnet_demo, the paper's network)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: 10 on the CPU, 50 on a GPU)")
    p.add_argument("--iters", type=int, default=25, help="training iterations per epoch")
    p.add_argument("--num-train", type=int, default=40, help="synthetic training cases")
    p.add_argument("--num-test", type=int, default=10, help="synthetic held-out cases")
    p.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"), help="image size")
    p.add_argument("-device", "--device", choices=("auto", "cuda", "cpu", "mps"), default="auto",
                   help="nnU-Net's -device; auto: cuda when a GPU is there, else cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument("--verbose", action="store_true", help="show nnU-Net's full output")

    def run(args: argparse.Namespace) -> int:
        from nnunet_swin.demo import run_demo

        return run_demo(workdir=args.workdir, dataset_id=args.dataset_id, trainer=args.trainer, epochs=args.epochs,
                        iters=args.iters, num_train=args.num_train, num_test=args.num_test, size=tuple(args.size),
                        device=args.device, seed=args.seed, verbose=args.verbose)

    p.set_defaults(func=run)
    return p


def doctor_parser(sub) -> argparse.ArgumentParser:
    p = _add(sub, "doctor", "registration with nnU-Net, nnU-Net's paths, versions and the device",
             "Checks, printing as it goes: versions, nnU-Net's three path variables, whether nnU-Net finds the "
             "trainers (from this shell and from a new one) and the device. Exit code 0 when nnU-Net commands "
             "started from this shell find the trainers, else 1.")
    p.add_argument("--no-subprocess", action="store_true",
                   help="skip the check in a fresh Python process (faster, less conclusive)")

    def run(args: argparse.Namespace) -> int:
        from nnunet_swin.registration import doctor

        return doctor(check_fresh_process=not args.no_subprocess)

    p.set_defaults(func=run)
    return p


def trainers_parser(sub) -> argparse.ArgumentParser:
    p = _add(sub, "trainers", "list the trainers this plugin registers with nnU-Net and what each changes")

    def run(args: argparse.Namespace) -> int:
        from nnunet_swin.registration import print_trainers

        return print_trainers()

    p.set_defaults(func=run)
    return p


def ext_trainer_dir_parser(sub) -> argparse.ArgumentParser:
    p = _add(sub, "ext-trainer-dir", "print the directory to put on nnUNet_extTrainer (manual set-up)")
    p.add_argument("--export", action="store_true",
                   help="print a shell line that appends it to nnUNet_extTrainer: eval \"$(nnunet-swin "
                        "ext-trainer-dir --export)\"")

    def run(args: argparse.Namespace) -> int:
        from nnunet_swin.registration import ENV_VAR, ext_trainer_dir

        d = ext_trainer_dir()
        if args.export:
            print(f'export {ENV_VAR}="${{{ENV_VAR}:+${ENV_VAR}:}}{d}"')
        else:
            print(d)
        return 0

    p.set_defaults(func=run)
    return p


def bench_parser(sub) -> argparse.ArgumentParser:
    p = _add(sub, "bench", "side-by-side speed, memory, kernel launches and torch.compile: SwinUnet variants, "
                           "nnU-Net's 2D or 3D CNN, the official Swin-Unet, MONAI SwinUNETR")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda or meta (default: cpu; meta: shapes only, no memory used and no step timed: "
                        "parameters, GMACs and saved activations)")
    p.add_argument("--patch", type=int, nargs="+", default=[224], metavar="N",
                   help="H [W] for 2D (default: 224); D H W for 3D at nnU-Net's plan for that patch, e.g. 40 56 40")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("SD", "SH", "SW"),
                   help="3D only: the voxel spacing nnU-Net plans the CNN's pooling (and SwinUnet's strides) for "
                        "(default: 1 1 1), e.g. 3.6 0.62 0.62 for a prostate-like plan")
    p.add_argument("--batch", type=int, default=4, help="images per step")
    p.add_argument("--in-channels", type=int, default=1, help="input channels")
    p.add_argument("--classes", type=int, default=9, help="output classes")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per row before the timed ones")
    p.add_argument("--repeats", type=int, default=6,
                   help="timed training steps per row (default: 6); 0: none, only parameters, GMACs and saved "
                        "activations (for 3D patches too slow to train on this machine)")
    p.add_argument("--only", nargs="+", metavar="TEXT", help="only rows whose name contains one of these "
                                                             "(the nnU-Net CNN row is always kept)")
    p.add_argument("--skip", nargs="+", metavar="TEXT", help="leave out rows whose name contains one of these, "
                                                             "e.g. --skip MONAI; --skip compile keeps the rows "
                                                             "but measures no compiled step (compiling takes minutes)")
    p.add_argument("--compile", action="store_true",
                   help="on the CPU also measure torch.compile (compile seconds, compiled step) for the CNN and "
                        "the default SwinUnet (always on with --device cuda)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--out", help="write OUT.csv and OUT.json (and OUT.png with --png)")
    p.add_argument("--png", action="store_true", help="also plot the table to OUT.png")
    p.add_argument("--complexity", action="store_true",
                   help="global MSA against W-MSA/SW-MSA for one stage: formulas, counted FLOPs, time")

    def run(args: argparse.Namespace) -> int:
        from nnunet_swin.experiments.bench import bench_command

        return bench_command(args.device, tuple(args.patch), args.batch, args.in_channels, args.classes,
                             args.warmup, args.repeats, args.only, args.compile, args.threads, args.out,
                             args.png, args.complexity, args.skip, args.spacing)

    p.set_defaults(func=run)
    return p


#: Every subcommand, in the order ``nnunet-swin --help`` lists them.
SUBCOMMANDS: tuple[Callable[..., argparse.ArgumentParser], ...] = (
    demo_parser, doctor_parser, trainers_parser, ext_trainer_dir_parser, bench_parser,
    ablation.add_parser, msd_benchmark.add_parser,
)


def version_line() -> str:
    """This package's version and the versions it runs with (read from the installed metadata, no imports)."""
    def installed(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return (f"nnunet-swin {__version__} (nnunetv2 {installed('nnunetv2')}, torch {installed('torch')}, "
            f"Python {sys.version.split()[0]})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet-swin", description="Swin-Unet trainers for nnU-Net v2",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                parser_class=functools.partial(argparse.ArgumentParser, formatter_class=HelpFormatter))
    for add_parser in SUBCOMMANDS:
        command = add_parser(sub)
        command.set_defaults(command_parser=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if unknown:  # argparse would report these with the top-level usage; the subcommand's is the one that helps
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
