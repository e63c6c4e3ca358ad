"""``prompt-diffusion demo``: base-to-new on the toy world, a host trainer against its PD variant.

Runs on the CPU with the small CLIP that ships with the package and the procedural ``ToyWorld``
dataset (rendered on first use), so it needs no download. Prints the paper-style table (Base, New,
H and what PD changes) and writes it as Markdown, CSV and a PNG bar chart next to the run folders.
See ``prompt_diffusion.demo`` for what runs and which settings differ from the upstream configs.
"""
import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo", help="base-to-new on the toy world with the shipped small CLIP (CPU, minutes)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from prompt_diffusion.demo import DEMO_METHODS, DemoSettings

    defaults = DemoSettings(out_dir=".")
    parser.add_argument("--out", default="pd_demo", help="folder for the runs, the rendered data and the table")
    parser.add_argument("--data-root", default=None,
                        help="where the toy world is rendered (reused between runs); default: <out>/data")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds), help="few-shot seeds")
    parser.add_argument("--methods", nargs="+", default=list(defaults.methods), choices=DEMO_METHODS,
                        metavar="METHOD", help=f"trainers to compare, from {', '.join(DEMO_METHODS)}")
    parser.add_argument("--shots", type=int, default=defaults.shots, help="training images per base class")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--test-per-class", type=int, default=defaults.test_per_class,
                        help="test images per class (DATASET.TOY.TEST_PER_CLASS)")
    parser.add_argument("--no-zero-shot", action="store_true", help="leave out the ZeroshotCLIP row")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--verbose", action="store_true", help="show the trainers' output (always in log.txt)")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="KEY VALUE config options added to every run, e.g. TRAINER.PD.OVERFIT.ITERS 5")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from prompt_diffusion.demo import DemoSettings, main

    opts = list(args.opts or [])
    if opts and opts[0] == "--":
        opts = opts[1:]
    settings = DemoSettings(
        out_dir=args.out, methods=tuple(args.methods), seeds=tuple(args.seeds), shots=args.shots,
        epochs=args.epochs, test_per_class=args.test_per_class, data_root=args.data_root, zero_shot=not args.no_zero_shot,
        verbose=args.verbose, extra_opts=opts,
    )
    main(settings, threads=args.threads or None)
    return 0
