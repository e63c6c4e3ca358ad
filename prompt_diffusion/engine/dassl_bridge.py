"""Hand on real Dassl, with the fixes it needs on a modern torch and numpy.

Imported only when the Dassl engine is selected. ``install_fixes()`` replaces, inside Dassl, so
that trainers written for Dassl (``from dassl.engine import TrainerX`` ...) work unchanged:
- ``build_lr_scheduler``: Dassl's warmup schedulers pass the removed ``verbose`` argument
  (TypeError on torch >= 2.7) -> ``prompt_diffusion.engine.optim.build_lr_scheduler``;
- ``save_checkpoint``/``load_checkpoint``: scheduler objects in checkpoints and loading under
  torch's ``weights_only`` default (torch >= 2.6) -> ``prompt_diffusion.engine.checkpoint``;
- ``compute_accuracy``: Dassl's ``.view`` fails for top-k with k > 1 on current torch ->
  ``prompt_diffusion.engine.evaluator.compute_accuracy``;
- ``TrainerBase.save_model``/``resume_model_if_exist``/``load_model``/``detect_anomaly``: load_model
  formats ``val_result=None`` (crash on last-epoch checkpoints) -> ``SafeCheckpointsMixin``.
- ``data.transforms.randaugment.SolarizeAdd``: uses the ``np.int`` alias numpy 1.24 removed (an
  AttributeError whenever RandAugment draws it, e.g. CoPrompt's views) -> ``_solarize_add``.
Also ``SimpleTrainer.test`` -> the built-in one (same loop and result lines, plus the
``* time_per_image_ms`` line that `prompt-diffusion table` reads for Figure 4).
"""
import dassl
import dassl.data.transforms.randaugment as dassl_randaugment
import dassl.engine.trainer as dassl_trainer
import dassl.metrics
import dassl.metrics.accuracy
import dassl.optim
import dassl.optim.lr_scheduler
import dassl.utils
import dassl.utils.torchtools
import numpy as np
import PIL.ImageOps
from PIL import Image

from prompt_diffusion.engine import checkpoint as safe_checkpoint
from prompt_diffusion.engine.evaluator import compute_accuracy
from prompt_diffusion.engine.optim import build_lr_scheduler
from prompt_diffusion.engine.safe_trainer import SafeCheckpointsMixin
from prompt_diffusion.engine.trainer import SimpleTrainer as BuiltinSimpleTrainer

_PATCHED_MARK = "_prompt_diffusion_fixes"
FIXED_TRAINER_METHODS = ("save_model", "resume_model_if_exist", "load_model", "_load_registered_model",
                         "_load_state_dict", "detect_anomaly", "check_loss_summary", "_anomaly_message",
                         "_trainer_name")


def _solarize_add(img: Image.Image, addition: int = 0, threshold: int = 128) -> Image.Image:
    """Dassl's ``SolarizeAdd`` (add to every pixel, clip, solarize) without ``np.int``."""
    pixels = np.clip(np.asarray(img, dtype=np.int64) + addition, 0, 255).astype(np.uint8)
    return PIL.ImageOps.solarize(Image.fromarray(pixels), threshold)


def install_fixes() -> None:
    """Patch Dassl's modules and ``TrainerBase`` once (idempotent)."""
    if getattr(dassl, _PATCHED_MARK, False):
        return
    for module in (dassl.optim, dassl.optim.lr_scheduler, dassl_trainer):
        module.build_lr_scheduler = build_lr_scheduler
    for module in (dassl.utils, dassl.utils.torchtools, dassl_trainer):
        for name in ("save_checkpoint", "load_checkpoint", "resume_from_checkpoint"):
            if hasattr(module, name):
                setattr(module, name, getattr(safe_checkpoint, name))
    for module in (dassl.metrics, dassl.metrics.accuracy):
        module.compute_accuracy = compute_accuracy
    for name in FIXED_TRAINER_METHODS:
        setattr(dassl_trainer.TrainerBase, name, SafeCheckpointsMixin.__dict__[name])
    dassl_trainer.SimpleTrainer.test = BuiltinSimpleTrainer.__dict__["test"]
    dassl_randaugment.SolarizeAdd = _solarize_add
    setattr(dassl, _PATCHED_MARK, True)


def describe() -> str:
    """One line for the log: which Dassl, and what was fixed."""
    return (
        f"dassl {getattr(dassl, '__version__', '?')} ({dassl.__path__[0]}), with prompt-diffusion fixes "
        "(warmup scheduler, weights_only checkpoints, load_model, top-k accuracy)"
    )
