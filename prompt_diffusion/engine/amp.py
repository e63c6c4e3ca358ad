"""The optimizer step of a trainer, with or without a ``GradScaler`` (mixed precision, ``PREC amp``).

``backward_and_update`` is one step from one loss. A step whose loss is backpropagated in parts
(the prompt-diffusion wrapper backpropagates the host's loss before its per-sample overfitting,
which reuses that pass) is ``trainer.model_zero_grad()``, ``backward`` per part, then ``update``.
"""
from typing import Optional

import torch


def backward_and_update(trainer, loss: torch.Tensor, scaler: Optional["torch.amp.GradScaler"] = None) -> None:
    """One step of every registered optimizer of ``trainer`` (a Dassl-style trainer, either engine).

    Without ``scaler``: the trainer's own ``model_backward_and_update(loss)``. With one (``PREC amp``,
    CUDA or CPU): zero the gradients, check the loss (``detect_anomaly``), backward the scaled loss, step
    each optimizer through the scaler (it skips steps with inf/NaN gradients) and update the scale.
    """
    if scaler is None:
        trainer.model_backward_and_update(loss)
        return
    trainer.model_zero_grad()
    backward(trainer, loss, scaler)
    update(trainer, scaler)


def backward(trainer, loss: torch.Tensor, scaler: Optional["torch.amp.GradScaler"] = None) -> None:
    """Accumulate the gradients of ``loss`` after checking it (``detect_anomaly``): the trainer's own
    ``model_backward``, or the scaled loss's backward with ``scaler``."""
    if scaler is None:
        trainer.model_backward(loss)
        return
    trainer.detect_anomaly(loss)
    scaler.scale(loss).backward()


def update(trainer, scaler: Optional["torch.amp.GradScaler"] = None) -> None:
    """Step every registered optimizer on the accumulated gradients: the trainer's own
    ``model_update``, or through ``scaler`` (which skips steps with inf/NaN gradients) and update the scale."""
    if scaler is None:
        trainer.model_update()
        return
    for name in trainer.get_model_names():
        if trainer._optims[name] is not None:
            scaler.step(trainer._optims[name])
    scaler.update()
