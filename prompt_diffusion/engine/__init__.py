"""Every Dassl name the project uses, from real Dassl or from the built-in engine.

``PD_ENGINE=auto|dassl|builtin`` (default ``auto``: Dassl when it imports). With Dassl, Dassl's own
objects are handed on (its registries, so trainers and datasets registered either way meet), with
the fixes of ``dassl_bridge``. Always from this package (both engines): ``build_lr_scheduler``,
the checkpoint functions, ``backward_and_update``, ``compute_accuracy``, ``setup_logger`` and the file/seed helpers. ``ENGINE`` is ``"dassl"`` or ``"builtin"``;
``engine_description()`` is the line the train command logs.
"""
from prompt_diffusion.engine.amp import backward_and_update
from prompt_diffusion.engine.checkpoint import (
    load_checkpoint,
    load_pretrained_weights,
    resume_from_checkpoint,
    save_checkpoint,
)
from prompt_diffusion.engine.evaluator import compute_accuracy
from prompt_diffusion.engine.logger import setup_logger
from prompt_diffusion.engine.optim import build_lr_scheduler
from prompt_diffusion.engine.selection import ENGINE_CHOICES, ENGINE_ENV, requested_engine, select_engine
from prompt_diffusion.engine.utils import (  # the same as dassl.utils' functions of these names
    check_isfile,
    collect_env_info,
    listdir_nohidden,
    mkdir_if_missing,
    read_image,
    read_json,
    set_random_seed,
    tolist_if_not,
    write_json,
)

ENGINE = select_engine()

if ENGINE == "dassl":
    from dassl.config import clean_cfg, get_cfg_default
    from dassl.data import DataManager
    from dassl.data.data_manager import DatasetWrapper, build_data_loader
    from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum, build_dataset
    from dassl.data.samplers import build_sampler
    from dassl.data.transforms import INTERPOLATION_MODES, build_transform
    from dassl.engine import TRAINER_REGISTRY, SimpleTrainer, TrainerBase, TrainerX, build_trainer
    from dassl.evaluation import EVALUATOR_REGISTRY, build_evaluator
    from dassl.optim import build_optimizer
    from dassl.utils import AverageMeter, MetricMeter, Registry, check_availability, count_num_param

    from prompt_diffusion.engine import dassl_bridge

    dassl_bridge.install_fixes()
    _DESCRIPTION = dassl_bridge.describe()
else:
    from prompt_diffusion.engine.checkpoint import count_num_param
    from prompt_diffusion.engine.data import (
        INTERPOLATION_MODES,
        DataManager,
        DatasetBase,
        DatasetWrapper,
        Datum,
        build_data_loader,
        build_dataset,
        build_sampler,
        build_transform,
    )
    from prompt_diffusion.engine.defaults import clean_cfg, get_cfg_default
    from prompt_diffusion.engine.evaluator import build_evaluator
    from prompt_diffusion.engine.meters import AverageMeter, MetricMeter
    from prompt_diffusion.engine.optim import build_optimizer
    from prompt_diffusion.engine.registry import (
        DATASET_REGISTRY,
        EVALUATOR_REGISTRY,
        TRAINER_REGISTRY,
        Registry,
        check_availability,
    )
    from prompt_diffusion.engine.trainer import SimpleTrainer, TrainerBase, TrainerX, build_trainer

    _DESCRIPTION = "builtin (prompt_diffusion.engine, Dassl-compatible; " + (
        "PD_ENGINE=builtin)" if requested_engine() == "builtin" else "PD_ENGINE=auto and Dassl is not importable)"
    )


def engine_description() -> str:
    """Which engine is in use, for the start of a log."""
    return _DESCRIPTION


__all__ = [
    "ENGINE", "ENGINE_CHOICES", "ENGINE_ENV", "engine_description",
    "TRAINER_REGISTRY", "DATASET_REGISTRY", "EVALUATOR_REGISTRY", "Registry", "check_availability",
    "TrainerBase", "SimpleTrainer", "TrainerX", "build_trainer",
    "Datum", "DatasetBase", "DataManager", "DatasetWrapper", "build_data_loader", "build_dataset",
    "build_sampler", "build_transform", "INTERPOLATION_MODES", "build_evaluator",
    "get_cfg_default", "clean_cfg", "build_optimizer", "build_lr_scheduler",
    "save_checkpoint", "load_checkpoint", "resume_from_checkpoint", "load_pretrained_weights", "backward_and_update",
    "count_num_param", "setup_logger", "set_random_seed", "compute_accuracy",
    "MetricMeter", "AverageMeter",
    "mkdir_if_missing", "check_isfile", "read_json", "write_json", "read_image", "listdir_nohidden",
    "collect_env_info", "tolist_if_not",
]
