"""Hand on real Dassl, with the fixes it needs on a modern torch and numpy.

Imported only when the Dassl engine is selected. ``install_fixes()`` changes Dassl's own function
and class objects, so that trainers written for Dassl (``from dassl.engine import TrainerX`` ...)
work unchanged *whatever the import order*: upstream ``train.py`` imports its trainer modules, which
bind ``build_lr_scheduler``, ``load_checkpoint`` ... by name, before anything imports this package.
Rebinding module attributes would miss those copies, so a fixed function keeps its identity and
its body is replaced by a call to the project's version (``_redirect``); fixed methods are set on
the class that defines them. ``FIXES`` lists every fix; ``describe()`` logs them.
"""
from typing import Callable, Tuple

import dassl
import dassl.data.transforms.randaugment as dassl_randaugment
import dassl.engine.trainer as dassl_trainer
import dassl.metrics.accuracy
import dassl.optim.lr_scheduler
import dassl.utils.torchtools
import numpy as np
import PIL.ImageOps
from PIL import Image

from prompt_diffusion.engine import checkpoint as safe_checkpoint
from prompt_diffusion.engine.evaluator import compute_accuracy
from prompt_diffusion.engine.optim import build_lr_scheduler
from prompt_diffusion.engine.safe_trainer import SafeCheckpointsMixin
from prompt_diffusion.engine.trainer import SimpleTrainer as BuiltinSimpleTrainer
from prompt_diffusion.engine.trainer import TrainerBase as BuiltinTrainerBase

_PATCHED_MARK = "_prompt_diffusion_fixes"
FIXED_TRAINER_METHODS = ("save_model", "resume_model_if_exist", "load_model", "_load_registered_model",
                         "_load_state_dict", "detect_anomaly", "check_loss_summary", "_anomaly_message",
                         "_trainer_name", "kept_epoch", "remove_superseded_checkpoint")


def _solarize_add(img: Image.Image, addition: int = 0, threshold: int = 128) -> Image.Image:
    """Dassl's ``SolarizeAdd`` (add to every pixel, clip, solarize) without ``np.int``."""
    pixels = np.clip(np.asarray(img, dtype=np.int64) + addition, 0, 255).astype(np.uint8)
    return PIL.ImageOps.solarize(Image.fromarray(pixels), threshold)


# (Dassl function, its replacement, why): each redirected in place by ``_redirect``.
REDIRECTED_FUNCTIONS: Tuple[Tuple[Callable, Callable, str], ...] = (
    (dassl.optim.lr_scheduler.build_lr_scheduler, build_lr_scheduler,
     "warmup schedulers pass the removed `verbose` argument (TypeError on torch >= 2.7)"),
    (dassl.utils.torchtools.save_checkpoint, safe_checkpoint.save_checkpoint,
     "pickles scheduler objects; writes are not atomic"),
    (dassl.utils.torchtools.load_checkpoint, safe_checkpoint.load_checkpoint,
     "fails under torch's weights_only default (torch >= 2.6)"),
    (dassl.utils.torchtools.resume_from_checkpoint, safe_checkpoint.resume_from_checkpoint,
     "no check of the writing trainer or of missing weights; can restore the saved random states"),
    (dassl.metrics.accuracy.compute_accuracy, compute_accuracy,
     "`.view` fails for top-k with k > 1 on current torch"),
    (dassl_randaugment.SolarizeAdd, _solarize_add,
     "uses the `np.int` alias numpy 1.24 removed (RandAugment, e.g. CoPrompt's views)"),
)

FIXES: Tuple[str, ...] = tuple(
    f"{original.__module__}.{original.__name__} -> {replacement.__module__}.{replacement.__name__}: {why}"
    for original, replacement, why in REDIRECTED_FUNCTIONS
) + (
    "dassl.engine.trainer.TrainerBase." + "/".join(FIXED_TRAINER_METHODS)
    + " -> SafeCheckpointsMixin: load_model formats val_result=None (crash on last-epoch checkpoints); "
    "a non-finite loss raises FloatingPointError naming epoch and batch",
    "dassl.engine.trainer.SimpleTrainer.test -> the built-in one: same loop and result lines, plus the "
    "`* time_per_image_ms` line Figure 4 reads; no val split is an error, not the test split",
    "dassl.engine.trainer.SimpleTrainer.after_epoch -> the built-in one: every epoch saved (an interrupted "
    "run resumes), TRAIN.CHECKPOINT_FREQ says which stay",
    "dassl.engine.trainer.TrainerBase.train -> the built-in one: after_train sees the last finished epoch "
    "when a resumed run has none left",
)


def _redirect(function: Callable, replacement: Callable) -> None:
    """Make every call of ``function``, however it was bound, call ``replacement`` instead.

    The function object keeps its identity (names bound by ``from dassl.optim import ...`` before
    this ran still point at it); its code becomes ``return <replacement>(*args, **kwargs)``, with
    ``replacement`` stored under a private name in the function's own module globals.
    """
    alias = f"_prompt_diffusion_{function.__name__}"
    function.__globals__[alias] = replacement
    namespace: dict = {}
    exec(f"def forward(*args, **kwargs):\n    return {alias}(*args, **kwargs)\n", namespace)
    function.__code__ = namespace["forward"].__code__
    function.__defaults__ = function.__kwdefaults__ = None
    function.__wrapped__ = replacement  # inspect.signature shows the replacement's parameters
    function.__doc__ = replacement.__doc__


def install_fixes() -> None:
    """Patch Dassl's functions and ``TrainerBase`` once (idempotent), wherever they are bound."""
    if getattr(dassl, _PATCHED_MARK, False):
        return
    for original, replacement, _ in REDIRECTED_FUNCTIONS:
        _redirect(original, replacement)
    for name in FIXED_TRAINER_METHODS:
        setattr(dassl_trainer.TrainerBase, name, SafeCheckpointsMixin.__dict__[name])
    dassl_trainer.SimpleTrainer.test = BuiltinSimpleTrainer.__dict__["test"]
    dassl_trainer.SimpleTrainer.after_epoch = BuiltinSimpleTrainer.__dict__["after_epoch"]
    dassl_trainer.TrainerBase.train = BuiltinTrainerBase.__dict__["train"]
    setattr(dassl, _PATCHED_MARK, True)


def describe() -> str:
    """For the log: which Dassl, and every fix ``install_fixes`` installs (one per line)."""
    header = (f"dassl {getattr(dassl, '__version__', '?')} ({dassl.__path__[0]}), "
              f"with {len(FIXES)} prompt-diffusion fixes:")
    return "\n".join([header] + [f"  - {fix}" for fix in FIXES])
