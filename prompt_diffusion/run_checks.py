"""What ``prompt-diffusion train`` (and ``diagnose``, ``predict``) check before writing anything: the
config's names and values, and the checkpoints a run will load or resume from.

Each check raises one error naming the key or the file and its value, so that a bad command leaves
no run folder behind (no log, no record of a bad value, no ``RUN/eval/...``).
"""
import glob
import os.path as osp
from typing import Optional

from yacs.config import CfgNode

from prompt_diffusion.engine.checkpoint import check_checkpoint_file, read_latest_checkpoint_name, saved_epochs


def check_run_config(cfg: CfgNode) -> None:
    """The trainer and the dataset are registered, every ``TRAINER.<X>.PREC`` is a precision, and a
    prompt-diffusion trainer's ``TRAINER.PD`` values are allowed (``config.validate_pd_cfg``)."""
    from prompt_diffusion.backbones import check_precision
    from prompt_diffusion.config import validate_pd_cfg
    from prompt_diffusion.engine import DATASET_REGISTRY, TRAINER_REGISTRY
    from prompt_diffusion.engine.registry import get_most_similar_str_to_a_from_b
    from prompt_diffusion.trainer_kinds import is_pd_trainer

    for key, name, registry in (("TRAINER.NAME", cfg.TRAINER.NAME, TRAINER_REGISTRY),
                                ("DATASET.NAME", cfg.DATASET.NAME, DATASET_REGISTRY)):
        names = sorted(registry.registered_names())
        if name not in names:
            closest = get_most_similar_str_to_a_from_b(name, names)
            raise ValueError(f"{key} {name!r} is not registered (closest: {closest}); registered: {', '.join(names)}")
    for node_name, node in cfg.TRAINER.items():
        if isinstance(node, dict) and "PREC" in node:
            check_precision(node.PREC, key=f"TRAINER.{node_name}.PREC")
    if is_pd_trainer(cfg.TRAINER.NAME):
        validate_pd_cfg(cfg)


def check_model_dir_checkpoints(model_dir: str, epoch: Optional[int]) -> None:
    """The files ``load_model(model_dir, epoch)`` reads (``model-best.pth.tar`` for no epoch, else
    ``model.pth.tar-<epoch>``, one per registered model's folder) exist and are torch archives."""
    file_name = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
    files = sorted(glob.glob(osp.join(glob.escape(model_dir), "*", file_name)))
    if not files:
        epochs = sorted({e for folder in glob.glob(osp.join(glob.escape(model_dir), "*")) for e in saved_epochs(folder)})
        saved = f"saved epochs: {', '.join(map(str, epochs))}" if epochs else "no model.pth.tar-<epoch> there"
        raise FileNotFoundError(f"--model-dir {model_dir}: no {file_name} in its model folders ({saved}; "
                                "--load-epoch N picks one)")
    for path in files:
        check_checkpoint_file(path)


def check_resume_checkpoints(directory: str) -> None:
    """The checkpoint each model folder of ``directory`` names as its latest (the files a rerun
    resumes from) is a torch archive."""
    for pointer in sorted(glob.glob(osp.join(glob.escape(directory), "*", "checkpoint"))):
        folder = osp.dirname(pointer)
        check_checkpoint_file(osp.join(folder, read_latest_checkpoint_name(folder)))
