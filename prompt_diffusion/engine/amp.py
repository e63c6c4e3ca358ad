"""The optimizer step of a trainer, with or without a ``GradScaler`` (mixed precision on CUDA)."""
from typing import Optional

import torch


def backward_and_update(trainer, loss: torch.Tensor, scaler: Optional["torch.amp.GradScaler"] = None) -> None:
    """One step of every registered optimizer of ``trainer`` (a Dassl-style trainer, either engine).

    Without ``scaler``: the trainer's own ``model_backward_and_update(loss)``. With one (``PREC amp``
    on CUDA): zero the gradients, check the loss (``detect_anomaly``), backward the scaled loss, step
    each optimizer through the scaler (it skips steps with inf/NaN gradients) and update the scale.
    """
    if scaler is None:
        trainer.model_backward_and_update(loss)
        return
    trainer.model_zero_grad()
    trainer.detect_anomaly(loss)
    scaler.scale(loss).backward()
    for name in trainer.get_model_names():
        if trainer._optims[name] is not None:
            scaler.step(trainer._optims[name])
    scaler.update()
