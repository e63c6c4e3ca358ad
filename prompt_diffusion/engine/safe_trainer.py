"""Trainer methods that replace Dassl's where Dassl breaks on a modern torch.

``SafeCheckpointsMixin`` is part of the built-in ``TrainerBase`` and is put in front of Dassl's
trainers by the Dassl bridge, so both engines save, resume and load the same way:
- ``save_model`` writes only plain data (no scheduler objects), atomically, plus the trainer name
  and the random states;
- ``resume_model_if_exist`` refuses another trainer's checkpoints and restores the random states;
- ``load_model`` loads ``weights_only`` and does not format a missing ``val_result``; trainers adapt it
  per model through ``_load_state_dict`` (e.g. to skip class-dependent buffers);
- ``remove_superseded_checkpoint``: every epoch is saved (the resume point), the ones
  ``TRAIN.CHECKPOINT_FREQ`` does not keep are removed once the next is written;
- ``detect_anomaly`` names the epoch, the batch and the last finite loss.
"""
import math
import os
import os.path as osp
from typing import Optional, Sequence

import torch

from prompt_diffusion.engine.checkpoint import (
    checkpoint_file,
    get_rng_state,
    load_checkpoint,
    load_state_dict_checked,
    missing_model_message,
    resume_from_checkpoint,
    save_checkpoint,
)


class SafeCheckpointsMixin:
    """Checkpoint and loss-check methods shared by the built-in engine and the Dassl bridge."""

    def _trainer_name(self) -> str:
        return self.cfg.TRAINER.NAME or type(self).__name__

    def save_model(self, epoch: int, directory: str, is_best: bool = False,
                   val_result: Optional[float] = None, model_name: str = "",
                   names: Optional[Sequence[str]] = None) -> None:
        """Save every registered model (or those in ``names``) to ``directory/<name>/`` as
        finished epoch ``epoch + 1``."""
        rng_state = get_rng_state()
        for name in self.get_model_names(names):
            optim, sched = self._optims[name], self._scheds[name]
            save_checkpoint(
                {
                    "state_dict": self._models[name].state_dict(),
                    "epoch": epoch + 1,
                    "optimizer": None if optim is None else optim.state_dict(),
                    "scheduler": None if sched is None else sched.state_dict(),
                    "val_result": None if val_result is None else float(val_result),
                    "trainer": self._trainer_name(),
                    "rng_state": rng_state,
                },
                osp.join(directory, name),
                is_best=is_best,
                model_name=model_name,
            )

    def kept_epoch(self, epoch: int) -> bool:
        """Whether the checkpoint of finished epoch ``epoch`` (1-based) stays once a later one is
        written: the last epoch, and every ``TRAIN.CHECKPOINT_FREQ``-th when that is positive."""
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        return epoch == self.max_epoch or (freq > 0 and epoch % freq == 0)

    def remove_superseded_checkpoint(self, epoch: int) -> None:
        """After epoch ``epoch`` (0-based) is saved, remove every model's checkpoint of the epoch before
        it unless ``kept_epoch`` keeps it: an interrupted run resumes from its last epoch, and the disk
        holds only the epochs asked for."""
        previous = epoch  # the 1-based number of the epoch before ``epoch``
        if previous < 1 or self.kept_epoch(previous):
            return
        for name in self.get_model_names():
            path = osp.join(self.output_dir, name, f"model.pth.tar-{previous}")
            if osp.exists(path):
                os.remove(path)

    def resume_model_if_exist(self, directory: str) -> int:
        """Resume every registered model from ``directory`` if all have checkpoints; returns the
        epoch to start from (0 when there is nothing to resume)."""
        names = self.get_model_names()
        if not all(osp.exists(osp.join(directory, name, "checkpoint")) for name in names):
            print("No checkpoint found, train from scratch")
            return 0
        print(f"Found checkpoint at {directory} (will resume training)")
        start_epoch = 0
        for name in names:
            start_epoch = resume_from_checkpoint(
                osp.join(directory, name), self._models[name], self._optims[name], self._scheds[name],
                expected_trainer=self._trainer_name(), restore_rng=True,
            )
        return start_epoch

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """Load the weights of ``model-best.pth.tar`` (or ``model.pth.tar-<epoch>``) of every model."""
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given "
                  "(ignore this if it's done on purpose)")
            return
        for name in self.get_model_names():
            self._load_registered_model(name, checkpoint_file(directory, name, epoch))

    def _load_registered_model(self, name: str, path: str, missing_ok: bool = False) -> None:
        """Load the weights at ``path`` into the registered model ``name`` (``_load_state_dict``);
        a missing file is an error, or with ``missing_ok`` a line in the log."""
        if not osp.exists(path):
            if missing_ok:
                print(f"Note: no {name} checkpoint at {path}; {name} stays freshly initialised")
                return
            raise FileNotFoundError(missing_model_message(path))
        checkpoint = load_checkpoint(path)
        val_result = checkpoint.get("val_result")
        shown = "" if val_result is None else f", val_result={val_result:.1f}"
        print(f"Load {path} to {name} (epoch={checkpoint['epoch']}{shown})")
        self._load_state_dict(name, checkpoint["state_dict"], path)

    def _load_state_dict(self, name: str, state_dict: dict, path: str) -> None:
        """Load a checkpoint's ``state_dict`` into the registered model ``name``: strictly, naming
        the differing keys (trainers override this to skip keys they recompute)."""
        load_state_dict_checked(self._models[name], state_dict, path)

    def _anomaly_message(self, what: str) -> str:
        epoch = getattr(self, "epoch", 0)
        batch = getattr(self, "batch_idx", 0)
        last = getattr(self, "_last_finite_loss", None)
        last_text = "none yet" if last is None else f"{last:.4f}"
        return (
            f"Loss is infinite or NaN! ({what}) at epoch {epoch + 1}/{getattr(self, 'max_epoch', '?')}, "
            f"batch {batch + 1}/{getattr(self, 'num_batches', '?')}; last finite loss: {last_text}. "
            "Training stopped; the checkpoints written so far are intact."
        )

    def detect_anomaly(self, loss: torch.Tensor) -> None:
        """Raise ``FloatingPointError`` on a non-finite loss, naming where it happened."""
        if not torch.isfinite(loss).all():
            raise FloatingPointError(self._anomaly_message("loss"))
        self._last_finite_loss = float(loss.detach().float().mean())

    def check_loss_summary(self, loss_summary: Optional[dict]) -> None:
        """Raise ``FloatingPointError`` if a value reported by ``forward_backward`` is not finite
        (covers trainers that call ``backward`` themselves, e.g. with AMP)."""
        for key, value in (loss_summary or {}).items():
            value = float(value.detach().float().mean()) if isinstance(value, torch.Tensor) else float(value)
            if not math.isfinite(value):
                raise FloatingPointError(self._anomaly_message(key))
            if key == "loss":
                self._last_finite_loss = value
