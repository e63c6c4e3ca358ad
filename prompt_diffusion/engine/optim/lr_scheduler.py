"""``build_lr_scheduler``: Dassl's schedulers with warmup, working on every torch version.

Dassl's warmup wrappers pass ``verbose`` to torch's scheduler (a TypeError on torch >= 2.7) and
store the wrapped scheduler object in their state dict (refused by ``torch.load(weights_only=
True)``). These wrappers follow the same learning-rate sequence, and their state dict holds the
successor's state dict instead of the object.

Sequence with ``WARMUP_EPOCH = W`` (epoch index e = number of ``step()`` calls so far):
e < W: the warmup rate (constant ``WARMUP_CONS_LR``; or linear: ``WARMUP_MIN_LR`` at e = 0, then
``LR * e / W``); e >= W: the successor's rate at successor epoch e - W (``WARMUP_RECOUNT``) or e.
"""
from typing import List

import torch
from torch.optim.lr_scheduler import LRScheduler
from yacs.config import CfgNode

AVAI_SCHEDS = ["single_step", "multi_step", "cosine"]
AVAI_WARMUPS = ["constant", "linear"]


class _BaseWarmupScheduler(LRScheduler):
    """Runs ``warmup_epoch`` epochs of warmup rates, then hands each ``step()`` to ``successor``."""

    def __init__(self, optimizer: torch.optim.Optimizer, successor: LRScheduler, warmup_epoch: int,
                 last_epoch: int = -1):
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        super().__init__(optimizer, last_epoch)

    def warmup_lrs(self) -> List[float]:
        """The rates of warmup epoch ``self.last_epoch`` (< ``warmup_epoch``)."""
        raise NotImplementedError

    def get_lr(self) -> List[float]:
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return self.warmup_lrs()

    def step(self, epoch=None) -> None:
        if epoch is not None:
            raise TypeError("warmup schedulers step one epoch at a time: call step() without an epoch")
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step()
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step()

    def state_dict(self) -> dict:
        """Plain data only: the successor is stored as its own state dict."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "successor")}
        state["successor"] = self.successor.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Accepts this class's state dict, or Dassl's (which holds the successor object)."""
        state = dict(state_dict)
        successor = state.pop("successor")
        if isinstance(successor, LRScheduler):
            successor = successor.state_dict()
        self.successor.load_state_dict(successor)
        self.__dict__.update(state)


class ConstantWarmupScheduler(_BaseWarmupScheduler):
    """Warmup at the constant rate ``cons_lr``."""

    def __init__(self, optimizer, successor, warmup_epoch: int, cons_lr: float, last_epoch: int = -1):
        self.cons_lr = cons_lr
        super().__init__(optimizer, successor, warmup_epoch, last_epoch)

    def warmup_lrs(self) -> List[float]:
        return [self.cons_lr for _ in self.base_lrs]


class LinearWarmupScheduler(_BaseWarmupScheduler):
    """Warmup from ``min_lr`` (epoch 0), then ``base_lr * epoch / warmup_epoch``."""

    def __init__(self, optimizer, successor, warmup_epoch: int, min_lr: float, last_epoch: int = -1):
        self.min_lr = min_lr
        super().__init__(optimizer, successor, warmup_epoch, last_epoch)

    def warmup_lrs(self) -> List[float]:
        if self.last_epoch == 0:
            return [self.min_lr for _ in self.base_lrs]
        return [lr * self.last_epoch / self.warmup_epoch for lr in self.base_lrs]


def _build_successor(optimizer: torch.optim.Optimizer, optim_cfg: CfgNode) -> LRScheduler:
    name, stepsize = optim_cfg.LR_SCHEDULER, optim_cfg.STEPSIZE
    if name == "single_step":
        if isinstance(stepsize, (list, tuple)):
            stepsize = stepsize[-1]
        if not isinstance(stepsize, int):
            raise TypeError(
                f"For single_step lr_scheduler, OPTIM.STEPSIZE must be an integer, but got {type(stepsize)}"
            )
        if stepsize <= 0:
            stepsize = optim_cfg.MAX_EPOCH
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=stepsize, gamma=optim_cfg.GAMMA)
    if name == "multi_step":
        if not isinstance(stepsize, (list, tuple)):
            raise TypeError(
                f"For multi_step lr_scheduler, OPTIM.STEPSIZE must be a list, but got {type(stepsize)}"
            )
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(stepsize), gamma=optim_cfg.GAMMA)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(optim_cfg.MAX_EPOCH))


def build_lr_scheduler(optimizer: torch.optim.Optimizer, optim_cfg: CfgNode) -> LRScheduler:
    """``OPTIM.LR_SCHEDULER`` (single_step, multi_step, cosine), wrapped in a warmup when
    ``OPTIM.WARMUP_EPOCH > 0``. Stepped once per epoch (by ``update_lr``)."""
    if optim_cfg.LR_SCHEDULER not in AVAI_SCHEDS:
        raise ValueError(f"scheduler must be one of {AVAI_SCHEDS}, but got {optim_cfg.LR_SCHEDULER}")
    scheduler = _build_successor(optimizer, optim_cfg)
    if optim_cfg.WARMUP_EPOCH <= 0:
        return scheduler
    if not optim_cfg.WARMUP_RECOUNT:
        scheduler.last_epoch = optim_cfg.WARMUP_EPOCH
    if optim_cfg.WARMUP_TYPE == "constant":
        return ConstantWarmupScheduler(optimizer, scheduler, optim_cfg.WARMUP_EPOCH, optim_cfg.WARMUP_CONS_LR)
    if optim_cfg.WARMUP_TYPE == "linear":
        return LinearWarmupScheduler(optimizer, scheduler, optim_cfg.WARMUP_EPOCH, optim_cfg.WARMUP_MIN_LR)
    raise ValueError(f"OPTIM.WARMUP_TYPE must be one of {AVAI_WARMUPS}, but got {optim_cfg.WARMUP_TYPE!r}")
