"""``prompt-diffusion train``: CoOp's ``train.py`` (same flags, same config merge order).

Config: Dassl defaults + ``prompt_diffusion.config.extend_cfg`` -> ``--dataset-config-file`` ->
``--config-file`` -> flags (``--root``, ``--output-dir``, ``--seed`` ...) -> trailing ``KEY VALUE``
opts. Then seed, ``<OUTPUT_DIR>/log.txt``, ``build_trainer`` and either ``train()`` (resuming from
``OUTPUT_DIR`` when it holds checkpoints) or, with ``--eval-only``, ``load_model(--model-dir,
--load-epoch)`` + ``test()``.
"""
import argparse
import os
import os.path as osp
from typing import List, Optional

import torch
from yacs.config import CfgNode

from prompt_diffusion.config import extend_cfg


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train (or evaluate) a Dassl-style trainer from yacs config files",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CoOp's ``train.py`` flags, plus ``--allow-unsafe-checkpoints``."""
    parser.add_argument("--root", type=str, default="", help="path to dataset")
    parser.add_argument("--output-dir", type=str, default="", help="output directory")
    parser.add_argument("--resume", type=str, default="",
                        help="checkpoint directory (from which the training resumes)")
    parser.add_argument("--seed", type=int, default=None,
                        help="fixed seed (>= 0, 0 included); negative: random")
    parser.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    parser.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    parser.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    parser.add_argument("--config-file", type=str, default="", help="path to config file")
    parser.add_argument("--dataset-config-file", type=str, default="",
                        help="path to config file for dataset setup")
    parser.add_argument("--trainer", type=str, default="", help="name of trainer")
    parser.add_argument("--backbone", type=str, default="", help="name of CNN backbone")
    parser.add_argument("--head", type=str, default="", help="name of head")
    parser.add_argument("--eval-only", action="store_true", help="evaluation only")
    parser.add_argument("--model-dir", type=str, default="",
                        help="load model from this directory for eval-only mode")
    parser.add_argument("--load-epoch", type=int,
                        help="load model weights at this epoch for evaluation")
    parser.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    parser.add_argument("--allow-unsafe-checkpoints", action="store_true",
                        help="allow loading pickled checkpoints (e.g. upstream CoOp ones): "
                             "unpickling runs code from the file, use only files you trust")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="modify config options using the command-line, e.g. OPTIM.LR 0.01")


def merge_config_file(cfg: CfgNode, path: str, flag: str) -> None:
    """``cfg.merge_from_file(path)`` with errors that name the flag, the file and the key."""
    if not osp.isfile(path):
        raise FileNotFoundError(f"{flag} {path}: no such file")
    try:
        cfg.merge_from_file(path)
    except KeyError as error:
        raise KeyError(f"{flag} {path}: {error.args[0]} (not a key of the default config, "
                       "prompt_diffusion.config.extend_cfg or its trainer)") from error


def reset_cfg(cfg: CfgNode, args: argparse.Namespace) -> None:
    """Apply the command-line flags (step 3 of the merge order)."""
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.seed is not None:  # CoOp's `if args.seed:` drops --seed 0
        cfg.SEED = args.seed
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = args.source_domains
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = args.target_domains
    if args.transforms:
        cfg.INPUT.TRANSFORMS = args.transforms
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    if args.head:
        cfg.MODEL.HEAD.NAME = args.head


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """Defaults -> dataset file -> trainer file -> flags -> opts; returns the frozen config."""
    from prompt_diffusion.engine import get_cfg_default

    cfg = get_cfg_default()
    extend_cfg(cfg)
    if args.dataset_config_file:
        merge_config_file(cfg, args.dataset_config_file, "--dataset-config-file")
    if args.config_file:
        merge_config_file(cfg, args.config_file, "--config-file")
    reset_cfg(cfg, args)
    opts = list(args.opts or [])
    if opts and opts[0] == "--":
        opts = opts[1:]
    if len(opts) % 2:
        raise ValueError(f"command-line opts must be KEY VALUE pairs, got {opts}")
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError) as error:  # yacs asserts that each key exists
        raise KeyError(f"command-line opts: {error.args[0]} (not a key of the merged config)") from error
    cfg.freeze()
    return cfg


def print_args(args: argparse.Namespace, cfg: CfgNode) -> None:
    print("***************")
    print("** Arguments **")
    print("***************")
    for key in sorted(vars(args)):
        if key != "func":
            print(f"{key}: {getattr(args, key)}")
    print("************")
    print("** Config **")
    print("************")
    print(cfg)


def import_registries() -> None:
    """Import the project's trainers and datasets so their registries fill."""
    import prompt_diffusion.data  # noqa: F401
    import prompt_diffusion.trainers  # noqa: F401


def run(args: argparse.Namespace) -> int:
    """Run CoOp's ``main``: config, seed, logger, trainer, then evaluate or train."""
    from prompt_diffusion import engine
    from prompt_diffusion.engine.checkpoint import UNSAFE_ENV

    if args.allow_unsafe_checkpoints:
        os.environ[UNSAFE_ENV] = "1"
    cfg = setup_cfg(args)
    if cfg.SEED >= 0:
        print(f"Setting fixed seed: {cfg.SEED}")
        engine.set_random_seed(cfg.SEED)
    logger = engine.setup_logger(cfg.OUTPUT_DIR)
    try:
        print(f"Engine: {engine.engine_description()}")
        if torch.cuda.is_available() and cfg.USE_CUDA:
            torch.backends.cudnn.benchmark = True
        print_args(args, cfg)
        print("Collecting env info ...")
        print(f"** System info **\n{engine.collect_env_info()}\n")
        import_registries()
        trainer = engine.build_trainer(cfg)
        if args.eval_only:
            trainer.load_model(args.model_dir, epoch=args.load_epoch)
            trainer.test()
        elif not args.no_train:
            trainer.train()
    finally:
        if logger is not None:
            logger.close()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``train`` without the rest of the command line (``python -m prompt_diffusion.commands.train``)."""
    parser = argparse.ArgumentParser(prog="prompt-diffusion train", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
