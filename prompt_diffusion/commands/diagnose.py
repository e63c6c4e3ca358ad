"""prompt-diffusion diagnose: is prompt diffusion doing anything for a trained model?

Builds the trainer exactly as prompt-diffusion train --eval-only does (same flags, config files
and KEY VALUE opts), loads --model-dir at --load-epoch and, on --split, reports the accuracy of
the generated prompts, the host's own prompts and the prompts overfitted with the true and with
the predicted label (paired differences to the host with standard errors, predictions fixed and
broken), how the generated residuals align with the overfitted ones, and the diffusion fit
(prompt_diffusion.diagnostics).

The run folder describes itself (its run_config.yaml: trainer, config files and opts), so
--model-dir alone is enough; flags and opts given on top change it (a dataset, its classes, the
split). Example (a CoCoOpPD run trained on base classes, diagnosed on the new ones):

    prompt-diffusion diagnose --model-dir output/dtd/CoCoOpPD/seed1 --max-images 500 \\
      DATASET.SUBSAMPLE_CLASSES new
"""
import argparse
import json
import os.path as osp

from prompt_diffusion.commands import HelpFormatter, train


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "diagnose",
        help="measure what prompt diffusion changes for a trained model (accuracy, alignment, fit)",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--split", choices=("test", "val", "train"), default="test",
                        help="which data to diagnose on")
    parser.add_argument("--max-images", type=int, default=None, help="at most this many images (default: all)")
    parser.add_argument("--json", type=str, default="", help="also write the numbers to this JSON file")
    parser.add_argument("--probe", action="store_true",
                        help="also fit a ridge regressor from the image feature to the overfitted residual on the "
                             "training images and score it on the split: can the residual be predicted at all?")
    train.add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from prompt_diffusion import engine
    from prompt_diffusion.diagnostics import diagnose, probe
    from prompt_diffusion.run_record import checkpoint_epoch
    from prompt_diffusion.wrapper import labelled_batches

    if not args.model_dir:
        raise SystemExit("prompt-diffusion diagnose: --model-dir (a trained PD run) is required")
    cfg, _ = train.prepare(args)
    if cfg.SEED >= 0:
        engine.set_random_seed(cfg.SEED)
    trainer = engine.build_trainer(cfg)
    if getattr(trainer, "pd", None) is None:
        raise SystemExit(f"prompt-diffusion diagnose: trainer {cfg.TRAINER.NAME} is not a prompt-diffusion "
                         "trainer with TRAINER.PD.ENABLE True")
    trainer.load_model(args.model_dir, epoch=checkpoint_epoch(args.model_dir, args.load_epoch))
    loader = {"test": trainer.test_loader, "val": trainer.val_loader, "train": trainer.train_loader_x}[args.split]
    if loader is None:
        raise SystemExit(f"prompt-diffusion diagnose: the dataset has no {args.split} split")
    trainer.set_model_mode("eval")
    training = args.split == "train"
    result = diagnose(trainer.pd, labelled_batches(trainer, loader, training), max_images=args.max_images, progress=True)
    print(result.report())
    probed = probe(trainer.pd, labelled_batches(trainer, trainer.train_loader_x, training=True),
                   labelled_batches(trainer, loader, training), max_images=args.max_images) if args.probe else None
    if probed is not None:
        print(probed.report())
    if args.json:
        numbers = asdict(result)
        if probed is not None:
            numbers["probe"] = asdict(probed)
        with open(osp.expanduser(args.json), "w") as stream:
            json.dump(numbers, stream, indent=2)
        print(f"numbers written to {args.json}")
    return 0
