"""prompt-diffusion demo: base-to-new on the toy world, host trainers against their PD variants.

Runs on the CPU with the small CLIP that ships with the package and the procedural ToyWorld
dataset (rendered on first use), so it needs no download. It is the experiment spec
configs/experiments/demo.yaml with this command line's changes (written to OUT/demo.yaml), run as
prompt-diffusion sweep runs a spec and printed as prompt-diffusion table prints one: Base, New, H
(mean ± population std over seeds) and what each PD variant changes over its host, image by image.
The table is also written as Markdown, CSV and a PNG bar chart. Finished runs are kept: running the
same command again only runs what is missing.

Examples:

  prompt-diffusion demo                                    # zero-shot CLIP, CoCoOp, CoCoOpPD; 1 seed
  prompt-diffusion demo --seeds 1 2 3 --methods CoOp CoOpPD --output-dir pd_demo_coop
"""
import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    from prompt_diffusion.commands import HelpFormatter, ListThenOpts, OptsThenFlags
    from prompt_diffusion.demo import DEMO_METHODS, DemoSettings

    parser = subparsers.add_parser(
        "demo", help="base-to-new on the toy world with the shipped small CLIP (CPU, minutes)",
        description=__doc__, formatter_class=HelpFormatter,
    )
    defaults = DemoSettings(out_dir=".")
    parser.add_argument("--output-dir", default="pd_demo", help="folder for the runs, the spec and the table")
    parser.add_argument("--root", default=None,
                        help="DATASET.ROOT: where the toy world is rendered (reused between runs); not given: "
                             "OUTPUT_DIR/data")
    parser.add_argument("--seeds", action=ListThenOpts, kind=int, default=list(defaults.seeds), help="few-shot seeds")
    parser.add_argument("--methods", action=ListThenOpts, allowed=DEMO_METHODS, default=list(defaults.methods),
                        metavar="METHOD", help=f"trainers to compare, from {', '.join(DEMO_METHODS)}")
    parser.add_argument("--shots", type=int, default=defaults.shots, help="training images per base class")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="training epochs (OPTIM.MAX_EPOCH)")
    parser.add_argument("--test-per-class", type=int, default=defaults.test_per_class,
                        help="test images per class (DATASET.TOY.TEST_PER_CLASS)")
    parser.add_argument("--no-zero-shot", action="store_true", help="leave out the ZeroshotCLIP row")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch threads of each run")
    parser.add_argument("--jobs", type=int, default=defaults.jobs, help="runs at a time")
    parser.add_argument("--verbose", action="store_true",
                        help="show every console line of the runs, not only their progress (all of it is in "
                             "each run's console.txt and log.txt)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], action=OptsThenFlags,
                        help="KEY VALUE config options added to every run, e.g. TRAINER.PD.OVERFIT.ITERS 5")
    parser.set_defaults(func=run, _resume_hint="Run the same command again: finished runs are kept, the "
                                               "interrupted one resumes from its last checkpoint.")
    return parser


def run(args: argparse.Namespace) -> int:
    from prompt_diffusion.demo import DemoSettings, main

    settings = DemoSettings(
        out_dir=args.output_dir, methods=tuple(args.methods), seeds=tuple(args.seeds), shots=args.shots,
        epochs=args.epochs, test_per_class=args.test_per_class, data_root=args.root,
        zero_shot=not args.no_zero_shot, verbose=args.verbose, threads=args.threads, jobs=args.jobs, extra_opts=list(args.opts),
    )
    main(settings)
    return 0
