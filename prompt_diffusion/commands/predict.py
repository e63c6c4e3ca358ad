"""prompt-diffusion predict --model-dir RUN IMAGE_OR_FOLDER... [KEY VALUE ...]: what a trained run predicts.

Prints the top-k classes with their probabilities for every image (a folder: every image file below
it), or writes them with --json / --csv. The run folder describes itself (its run_config.yaml and
classnames.txt, written by prompt-diffusion train), so nothing else is needed; --classnames FILE
scores the images against other class names (one a line: classes the run never trained on, the
point of base-to-new), and KEY VALUE opts after the images change the run's config (e.g. TRAINER.PD.NFE 10).
For a prompt-diffusion trainer, --host also gives the host's own prediction (TRAINER.PD.ENABLE False).

Example:

  prompt-diffusion predict --model-dir output/my_photos/CoCoOpPD holiday/ --top-k 3 --csv predictions.csv
"""
import argparse
import contextlib
import io
import sys

from prompt_diffusion.commands import HelpFormatter, OptsThenFlags


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict", help="top-k classes of image files for a trained run (table, --json, --csv)",
        description=__doc__, formatter_class=HelpFormatter,
    )
    parser.add_argument("--model-dir", default="", help="the run folder (prompt-diffusion train's --output-dir); "
                                                        "required")
    parser.add_argument("opts", nargs=argparse.REMAINDER, action=OptsThenFlags, leading="images", default=[],
                        metavar="IMAGE_OR_FOLDER ... [KEY VALUE ...]",
                        help="image files and folders of them, then config opts that change the run's config, "
                             "e.g. TRAINER.PD.NFE 10")
    parser.add_argument("--top-k", type=int, default=5, help="classes shown per image")
    parser.add_argument("--classnames", default="", metavar="FILE",
                        help="class names to score against, one a line (default: the run's classnames.txt)")
    parser.add_argument("--json", default="", metavar="FILE", help="write the predictions to this JSON file")
    parser.add_argument("--csv", default="", metavar="FILE",
                        help="write them to this CSV file (image, rank, class, probability)")
    parser.add_argument("--host", action="store_true",
                        help="prompt-diffusion trainers: also the host's prediction (its own prompts)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the run's test "
                                                                     "batch size, DATALOADER.TEST.BATCH_SIZE)")
    parser.add_argument("--load-epoch", type=int, help="the checkpoint's epoch (default: model-best, else the last)")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE_OR_FILE",
                        help="import this module or .py file first (the run's trainer, if defined outside)")
    parser.add_argument("--verbose", action="store_true", help="show the trainer's build output")
    parser.set_defaults(func=run, images=[])
    return parser


def build_predictor(args: argparse.Namespace):
    """The run's trainer, built from its record to score ``args.images`` against its class names (or
    ``--classnames``), its weights loaded; every input checked before anything is built."""
    from prompt_diffusion import engine
    from prompt_diffusion.commands import train
    from prompt_diffusion.predict import image_paths, prediction_config
    from prompt_diffusion.run_record import checkpoint_epoch, read_classnames, run_classnames

    if args.top_k < 1:
        raise ValueError(f"--top-k {args.top_k}: must be at least 1")
    if not args.model_dir:
        raise ValueError("--model-dir RUN is required: the run folder to predict with")
    if not args.images:
        raise ValueError("no image given: prompt-diffusion predict --model-dir RUN IMAGE_OR_FOLDER ... [KEY VALUE ...]")
    train_args = argparse.Namespace(**{**vars(train.build_parser().parse_args([])), "model_dir": args.model_dir,
                                       "load_epoch": args.load_epoch, "opts": list(args.opts),
                                       "imports": args.imports})
    cfg, _ = train.prepare(train_args, check_dataset=False)
    classnames = read_classnames(args.classnames) if args.classnames else run_classnames(args.model_dir)
    paths = image_paths(args.images)
    cfg.defrost()
    prediction_config(cfg, paths, classnames, args.batch_size)
    cfg.freeze()
    with contextlib.redirect_stdout(sys.stdout if args.verbose else io.StringIO()):
        if cfg.SEED >= 0:
            engine.set_random_seed(cfg.SEED)
        trainer = engine.build_trainer(cfg)
        trainer.load_model(args.model_dir, epoch=checkpoint_epoch(args.model_dir, args.load_epoch))
    return trainer


def run(args: argparse.Namespace) -> int:
    from prompt_diffusion.predict import csv_text, format_table, json_text, predict
    from prompt_diffusion.run_record import write_atomically

    predictions = predict(build_predictor(args), top_k=args.top_k, with_host=args.host)
    for path, text in ((args.json, json_text), (args.csv, csv_text)):
        if path:
            write_atomically(path, text(predictions))
            print(f"{len(predictions)} predictions written to {path}", file=sys.stderr)
    if not (args.json or args.csv):
        print(format_table(predictions))
    return 0
