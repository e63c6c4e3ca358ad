"""Optimizers and learning-rate schedulers built from ``cfg.OPTIM`` (Dassl's ``dassl.optim``)."""
from prompt_diffusion.engine.optim.lr_scheduler import (
    AVAI_SCHEDS,
    ConstantWarmupScheduler,
    LinearWarmupScheduler,
    build_lr_scheduler,
)
from prompt_diffusion.engine.optim.optimizer import AVAI_OPTIMS, build_optimizer

__all__ = [
    "AVAI_OPTIMS", "AVAI_SCHEDS", "build_optimizer", "build_lr_scheduler",
    "ConstantWarmupScheduler", "LinearWarmupScheduler",
]
