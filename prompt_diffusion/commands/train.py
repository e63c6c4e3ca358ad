"""prompt-diffusion train: CoOp's train.py (same flags, same config merge order).

Config: Dassl defaults + prompt_diffusion.config.extend_cfg -> --dataset-config-file ->
--config-file -> flags (--root, --output-dir, --seed ...) -> KEY VALUE opts (flags may also come
after the opts); its paths are made absolute. Before anything is written: the trainer, dataset and
config values, the CLIP weights, the dataset's layout and the checkpoints to load or resume are
checked, and OUTPUT_DIR is locked for this run (run.lock; another run there is an error, and so is a
rerun there with another trainer, model or seed than its record). Then <OUTPUT_DIR>/log.txt (written
as the run goes; the environment report goes to <OUTPUT_DIR>/env.txt), the run folder records its
config (run_config.yaml) and class names (classnames.txt), and the trainer is built: train() saves
every epoch and resumes from OUTPUT_DIR when it holds checkpoints, so an interrupted run is resumed
by the same command; --eval-only loads --model-dir at --load-epoch (default: model-best, else the
last epoch) and tests. With --model-dir and no --config-file the run's record is the config (flags, a dataset file and
opts change it; a different backbone, trainer or prompt shape is an error naming both values):

  prompt-diffusion train --eval-only --model-dir output/dtd/CoCoOpPD/seed1 DATASET.SUBSAMPLE_CLASSES new

Paths configs/... not in the working folder are the installed package's configs.

A trainer defined outside this package is found with --import MODULE_OR_FILE (repeatable) or
through an installed package's "prompt_diffusion.plugins" entry point.

Example (CoCoOp with prompt diffusion on the base classes of DTD, 16 shots, seed 1):

  prompt-diffusion train --root $DATA --trainer CoCoOpPD --seed 1 \\
    --dataset-config-file configs/datasets/dtd.yaml \\
    --config-file configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml \\
    --output-dir output/dtd/CoCoOpPD/seed1 DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base
"""
import argparse
import os
import os.path as osp
import traceback
from typing import List, Optional, Tuple

import torch
from yacs.config import CfgNode

from prompt_diffusion.commands import HelpFormatter, ListThenOpts, OptsThenFlags
from prompt_diffusion.config import extend_cfg
from prompt_diffusion.run_record import (RUN_CONFIG, absolute_paths, check_same_model, check_same_run,
                                         checkpoint_epoch, run_config_path, write_classnames, write_run_config)
from prompt_diffusion.shipped import resolve_config_path, shipped_note


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train (or evaluate) a Dassl-style trainer from yacs config files",
        description=__doc__,
        formatter_class=HelpFormatter,
        add_help=False,
    )
    parser.add_argument("-h", "--help", action=HelpWithTrainers, nargs=0,
                        help="show this help message, with the registered trainers, and exit")
    add_arguments(parser)
    parser.set_defaults(func=run, _resume_hint="Run the same command again to resume from the last checkpoint "
                                               "in --output-dir.")
    return parser


class HelpWithTrainers(argparse.Action):
    """``--help``, ending with the trainers ``--trainer`` takes (this package's and the plug-ins')."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from prompt_diffusion.engine import TRAINER_REGISTRY
        from prompt_diffusion.plugins import load_plugins

        load_plugins(())
        parser.epilog = ("trainers (--trainer; <Name>PD: with prompt diffusion; --import adds your own): "
                         + ", ".join(sorted(TRAINER_REGISTRY.registered_names())))
        parser.print_help()
        parser.exit()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CoOp's ``train.py`` flags, plus ``--allow-unsafe-checkpoints``."""
    parser.add_argument("--root", type=str, default="", help="path to dataset")
    parser.add_argument("--output-dir", type=str, default="", help="output directory")
    parser.add_argument("--resume", type=str, default="",
                        help="checkpoint directory (from which the training resumes)")
    parser.add_argument("--seed", type=int, default=None,
                        help="fixed seed (>= 0, 0 included); negative: random")
    parser.add_argument("--source-domains", action=ListThenOpts, help="source domains for DA/DG")
    parser.add_argument("--target-domains", action=ListThenOpts, help="target domains for DA/DG")
    parser.add_argument("--transforms", action=ListThenOpts, help="data augmentation methods")
    parser.add_argument("--config-file", action="append", default=[],
                        help="path to config file (repeatable: merged in the order given, e.g. a trainer's config "
                             "then configs/profiles/toy_cpu.yaml); a configs/... path not in the working folder "
                             "is the installed package's")
    parser.add_argument("--dataset-config-file", type=str, default="",
                        help="path to config file for dataset setup (configs/... as --config-file)")
    parser.add_argument("--trainer", type=str, default="", help="name of trainer")
    parser.add_argument("--backbone", type=str, default="", help="name of CNN backbone")
    parser.add_argument("--head", type=str, default="", help="name of head")
    parser.add_argument("--eval-only", action="store_true", help="evaluation only")
    parser.add_argument("--model-dir", type=str, default="",
                        help="load model from this directory for eval-only mode")
    parser.add_argument("--load-epoch", type=int,
                        help="load model weights at this epoch for evaluation (not given: model-best.pth.tar, "
                             "saved only when validating)")
    parser.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    parser.add_argument("--allow-unsafe-checkpoints", action="store_true",
                        help="allow loading pickled checkpoints (e.g. upstream CoOp ones): "
                             "unpickling runs code from the file, use only files you trust")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE_OR_FILE",
                        help="import this module (dotted name) or .py file first, so the trainers and datasets "
                             "it registers can be used (repeatable)")
    parser.add_argument("opts", default=[], nargs=argparse.REMAINDER, action=OptsThenFlags,
                        help="modify config options using the command-line, e.g. OPTIM.LR 0.01")


def merge_config_file(cfg: CfgNode, path: str, flag: str) -> bool:
    """``cfg.merge_from_file(path)`` with errors that name the flag, the file and the key; a
    ``configs/...`` path absent from the working folder is the shipped config (returns True then)."""
    path, shipped = resolve_config_path(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f"{flag} {path}: no such file")
    try:
        cfg.merge_from_file(path)
    except KeyError as error:
        raise KeyError(f"{flag} {path}: {error.args[0]} (not a key of the default config, "
                       "prompt_diffusion.config.extend_cfg or its trainer)") from error
    return shipped


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


def setup_cfg(args: argparse.Namespace, notes: Optional[List[str]] = None) -> CfgNode:
    """Defaults -> dataset file -> trainer file(s) -> flags -> opts; returns the frozen config.
    ``notes`` gets the lines the log should say (shipped configs used, the run record read).

    ``--model-dir RUN`` without ``--config-file``: RUN's record (``run_config.yaml``) comes first, a
    dataset file replaces its dataset (``DATASET.ROOT`` kept), and the output folder is
    ``RUN/eval/<dataset>_<classes>`` unless ``--output-dir`` says otherwise. With or without, a key
    of ``run_record.MODEL_KEYS`` that differs from RUN's record is an error naming both values. A RUN
    without a record (trained before records, or in Python) needs ``--config-file`` or ``--trainer``."""
    from prompt_diffusion.engine import get_cfg_default

    cfg = get_cfg_default()
    extend_cfg(cfg)
    recorded = None
    has_record = bool(args.model_dir) and osp.isfile(osp.join(args.model_dir, RUN_CONFIG))
    if args.model_dir and (has_record or not (args.config_file or args.trainer)):  # else: the flags say it all
        recorded = cfg.clone()
        record = run_config_path(args.model_dir)
        merge_config_file(recorded, record, "--model-dir")
        if not args.config_file:  # the run describes itself
            cfg = recorded.clone()
            cfg.OUTPUT_DIR = ""
            if args.dataset_config_file:  # another dataset, described anew
                root = cfg.DATASET.ROOT
                cfg.DATASET = extend_cfg(get_cfg_default()).DATASET
                cfg.DATASET.ROOT = root
            if notes is not None:
                notes.append(f"Config: the record of --model-dir, {record}, then the flags and opts given")
    files = ([(args.dataset_config_file, "--dataset-config-file")] if args.dataset_config_file else []) + [
        (path, "--config-file") for path in args.config_file]
    shipped = [path for path, flag in files if merge_config_file(cfg, path, flag)]
    if shipped and notes is not None:
        notes.append(shipped_note(shipped))
    reset_cfg(cfg, args)
    opts = list(args.opts or [])
    if len(opts) % 2:
        raise ValueError(f"command-line opts must be KEY VALUE pairs, got {opts}")
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError) as error:  # yacs asserts that each key exists
        raise KeyError(f"command-line opts: {error.args[0]} (not a key of the merged config)") from error
    if recorded is not None:
        check_same_model(recorded, cfg, args.model_dir)
        if not cfg.OUTPUT_DIR:
            cfg.OUTPUT_DIR = osp.join(args.model_dir, "eval", f"{cfg.DATASET.NAME}_{cfg.DATASET.SUBSAMPLE_CLASSES}")
    absolute_paths(cfg)  # the record reads the same from any working folder
    cfg.freeze()
    return cfg


def print_args(args: argparse.Namespace, cfg: CfgNode) -> None:
    print("***************")
    print("** Arguments **")
    print("***************")
    for key in sorted(vars(args)):
        if key != "func" and not key.startswith("_"):
            print(f"{key}: {getattr(args, key)}")
    print("************")
    print("** Config **")
    print("************")
    print(cfg)


def prepare(args: argparse.Namespace, check_dataset: bool = True,
            loads_model: bool = True) -> Tuple[CfgNode, List[str]]:
    """What ``train``, ``diagnose`` and ``predict`` do before building a trainer, cheapest checks
    first: the registries (``--import``, plug-ins), the config (``run_checks.check_run_config``: names
    and values), the checkpoints of ``--model-dir`` (when the command loads it: ``loads_model``) or the
    ones a training run resumes from, the data-loader workers (capped at the available cores), the
    CLIP weights file (before any data is rendered or read) and the dataset's own checks
    (``check_before_run``: a benchmark's layout, an image folder's every image), so bad input fails
    before the run folder is written (``check_dataset=False``: not the dataset, for ``predict``, which
    reads image files instead). Returns the frozen config and the lines the log should start with
    (plug-ins imported, workers capped)."""
    from prompt_diffusion.backbones import check_backbone_weights
    from prompt_diffusion.data import check_dataset_before_run
    from prompt_diffusion.engine.checkpoint import UNSAFE_ENV
    from prompt_diffusion.engine.utils import cap_workers
    from prompt_diffusion.plugins import load_plugins
    from prompt_diffusion.run_checks import check_model_dir_checkpoints, check_resume_checkpoints, check_run_config

    if args.allow_unsafe_checkpoints:
        os.environ[UNSAFE_ENV] = "1"
    imported = load_plugins(args.imports)
    notes = [f"Imported plug-in modules: {', '.join(imported)}"] if imported else []
    cfg = setup_cfg(args, notes)
    check_run_config(cfg)
    if args.model_dir and loads_model:
        check_model_dir_checkpoints(args.model_dir, checkpoint_epoch(args.model_dir, args.load_epoch))
    elif not loads_model:
        check_resume_checkpoints(cfg.RESUME or cfg.OUTPUT_DIR)
    check_backbone_weights(cfg)
    if check_dataset:
        check_dataset_before_run(cfg)
    cfg.defrost()
    capped = cap_workers(cfg)
    cfg.freeze()
    return cfg, notes + ([capped] if capped else [])


def run(args: argparse.Namespace) -> int:
    """Run CoOp's ``main``: config and checks, the folder's lock, seed, logger, trainer, then evaluate
    or train."""
    from prompt_diffusion.run_lock import RunLock

    cfg, notes = prepare(args, loads_model=args.eval_only)
    lock = RunLock(cfg.OUTPUT_DIR)
    taken_over = lock.acquire()
    try:
        check_same_run(cfg.OUTPUT_DIR, cfg)
        return run_locked(args, cfg, notes + ([taken_over] if taken_over else []))
    finally:
        lock.release()


def run_locked(args: argparse.Namespace, cfg: CfgNode, notes: List[str]) -> int:
    """The run itself, its folder locked: logger, seed, records, the trainer, then evaluate or train."""
    from prompt_diffusion import engine
    from prompt_diffusion.engine.interrupt import raise_if_interrupted, sigint_remembered

    logger = engine.setup_logger(cfg.OUTPUT_DIR)
    try:
        print(f"Engine: {engine.engine_description()}")
        for note in notes:
            print(note)
        if cfg.SEED >= 0:
            print(f"Setting fixed seed: {cfg.SEED}")
            engine.set_random_seed(cfg.SEED)
        if torch.cuda.is_available() and cfg.USE_CUDA:
            torch.backends.cudnn.benchmark = True
        print_args(args, cfg)
        env_file = osp.join(cfg.OUTPUT_DIR, "env.txt")
        with open(env_file, "w", encoding="utf-8") as stream:
            stream.write(engine.collect_env_info() + "\n")
        print(f"System info (torch's environment report): {env_file}")
        print(f"Run record: {write_run_config(cfg.OUTPUT_DIR, cfg)}")
        with sigint_remembered():  # a Ctrl-C swallowed by a finaliser is raised at the next batch
            trainer = engine.build_trainer(cfg)
            write_classnames(cfg.OUTPUT_DIR, list(trainer.dm.dataset.classnames))
            if args.eval_only:
                trainer.load_model(args.model_dir, epoch=checkpoint_epoch(args.model_dir, args.load_epoch))
                trainer.test()
            elif not args.no_train:
                trainer.train()
            raise_if_interrupted()
    except KeyboardInterrupt:
        print("Interrupted (Ctrl-C); the same command resumes the run from its last checkpoint.")
        raise
    except Exception:
        if logger is not None:  # the console gets the message alone (cli.main); the log keeps the traceback
            logger.write_to_file_only(traceback.format_exc())
        raise
    finally:
        if logger is not None:
            logger.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """``train``'s own parser (its flags and defaults, without the rest of the command line)."""
    parser = argparse.ArgumentParser(prog="prompt-diffusion train", description=__doc__, formatter_class=HelpFormatter)
    add_arguments(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``train`` without the rest of the command line (``python -m prompt_diffusion.commands.train``)."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
