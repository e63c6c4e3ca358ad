"""DiffusionPromptWrapper: the Dassl shell of prompt diffusion over any Dassl-style trainer.

``DiffusionPromptWrapper.register(CoCoOp)`` registers ``CoCoOpPD``, a subclass of the user's ``CoCoOp``
that holds the method, ``method.PromptDiffusion``, as one attribute, ``self.pd``, and hands it the
engine's hooks: ``build_model`` builds and registers it (the host's ``OPTIM``, checkpoints, resume and
``--eval-only`` loading, through Dassl's ``register_model`` / ``save_model`` / ``load_model``),
``forward_backward`` runs its training step, ``model_inference`` its logits, ``after_epoch`` a
held-out check in the log and ``after_train`` the AMED distillation and the residual calibration.
``TRAINER.PD.ENABLE False`` leaves the host untouched (``self.pd`` is None).
"""
import os.path as osp
from contextlib import contextmanager
from typing import Iterator, Optional, Type

import torch
from torch import nn
from yacs.config import CfgNode

from prompt_diffusion.adapters import PromptAdapter, choose_adapter
from prompt_diffusion.after_training import (AMED_CHECK_IMAGES, LabelledBatch, calibrate, conditions, distill,
                                             evaluate_residuals, residual_batches)
from prompt_diffusion.config import add_pd_keys, extend_cfg, validate_pd_cfg
from prompt_diffusion.engine import (TRAINER_REGISTRY, build_lr_scheduler, build_optimizer, compute_accuracy,
                                     load_checkpoint)
from prompt_diffusion.engine.amp import backward, update
from prompt_diffusion.method import PromptDiffusion

__all__ = ["DiffusionPromptWrapper", "PD_MODEL_NAME", "labelled_batches"]

PD_MODEL_NAME = "prompt_diffusion"  # the registered model (checkpoint sub-directory of OUTPUT_DIR) holding self.pd
EARLIER_MODEL_NAMES = ("pd_generator", "pd_meta_net", "pd_amed")  # an earlier version's layout: refused


def labelled_batches(trainer, loader, training: bool = False) -> Iterator[LabelledBatch]:
    """The batches of a Dassl ``loader``, parsed as the trainer parses training (``training``) or test batches."""
    parse = trainer.parse_batch_train if training else trainer.parse_batch_test
    for batch in loader:
        images, labels = parse(batch)[:2]
        yield LabelledBatch(images, labels, torch.as_tensor(batch["index"]), batch.get("domain"))


@contextmanager
def _unregistered(trainer, name: str) -> Iterator[None]:
    """The registered model ``name`` hidden from the host's own ``load_model`` (which loads every
    registered model its own way, e.g. upstream CoOp's ``strict=False``)."""
    registries = (trainer._models, trainer._optims, trainer._scheds)
    entries = [registry.pop(name) for registry in registries]
    try:
        yield
    finally:
        for registry, entry in zip(registries, entries):
            registry[name] = entry


def _finish(trainer) -> None:
    """After the last epoch: distil AMED (training images' π; the check on val, else training images)
    and calibrate the residual gain (val images only), each once per run (flags in ``pd``'s state), and
    save the result under the last epoch's checkpoint, so an interrupted run finishes on its rerun."""
    pd, cfg, val = trainer.pd, trainer.cfg.TRAINER.PD, trainer.val_loader
    trainer.set_model_mode("eval")
    distilling, calibrating = pd.amed is not None and not pd.amed.distilled, cfg.CALIBRATE and not bool(pd.calibrated)
    if distilling:
        train = conditions(pd, (b.images for b in labelled_batches(trainer, trainer.train_loader_x, training=True)))
        check = (conditions(pd, (b.images for b in labelled_batches(trainer, val)), AMED_CHECK_IMAGES)
                 if val is not None else train[:AMED_CHECK_IMAGES])
        distill(pd, train, check, trainer.cfg.SEED, cfg.AMED.DISTILL_ITERS)
    if calibrating and val is not None:
        calibrate(pd, labelled_batches(trainer, val))
    if distilling or (calibrating and val is not None):
        trainer.save_model(trainer.max_epoch - 1, trainer.output_dir)


class DiffusionPromptWrapper:
    """Mixin that turns a Dassl-style prompt-learning trainer into its prompt-diffusion variant (``register``):
    the adapter given in code, else ``TRAINER.PD.ADAPTER`` by name, else the one whose layout fits the model."""

    #: the adapter given to ``register`` (None: TRAINER.PD.ADAPTER, else layout detection)
    pd_adapter_class: Optional[Type[PromptAdapter]] = None

    @classmethod
    def register(cls, host: type, adapter: Optional[Type[PromptAdapter]] = None) -> type:
        """Register ``<Host>PD``, a subclass of ``host`` with prompt diffusion, in the engine's (or Dassl's)
        ``TRAINER_REGISTRY`` and return it; the same host and adapter again return the class registered before."""
        if not isinstance(host, type):
            raise TypeError(f"register() takes a trainer class, got {host!r}")
        if issubclass(host, DiffusionPromptWrapper):
            raise TypeError(f"{host.__name__} is already a prompt-diffusion trainer")
        name = f"{host.__name__}PD"
        if name in TRAINER_REGISTRY.registered_names():
            existing = TRAINER_REGISTRY.get(name)
            if issubclass(existing, cls) and existing.__bases__[-1] is host and existing.pd_adapter_class is adapter:
                return existing
            raise KeyError(f"a trainer named {name!r} is already registered ({existing.__module__}."
                           f"{existing.__qualname__}{'' if existing.__bases__[-1] is not host else ', another adapter'})")
        wrapped = type(name, (cls, host), {
            "__module__": host.__module__, "__qualname__": f"{host.__qualname__}PD", "pd_adapter_class": adapter,
            "__doc__": f"{host.__name__} with prompt diffusion (prompt_diffusion.DiffusionPromptWrapper)."})
        TRAINER_REGISTRY.register(wrapped)
        return wrapped

    def __init__(self, cfg: CfgNode):  # a user's own extend_cfg may know nothing of TRAINER.PD: its defaults
        super().__init__(cfg if "PD" in cfg.TRAINER else extend_cfg(cfg.clone(), [add_pd_keys]))

    def check_cfg(self, cfg: CfgNode) -> None:
        super().check_cfg(cfg)
        validate_pd_cfg(cfg)
        if cfg.TRAINER.PD.ENABLE and cfg.TEST.FINAL_MODEL == "best_val":
            raise ValueError("TEST.FINAL_MODEL 'best_val' with prompt diffusion: AMED distillation and the residual "
                             "calibration run on the last epoch's model; use TEST.FINAL_MODEL last_step")

    def build_model(self) -> None:
        super().build_model()
        self.pd: Optional[PromptDiffusion] = None
        cfg = self.cfg
        if not cfg.TRAINER.PD.ENABLE:
            print("Prompt diffusion is off (TRAINER.PD.ENABLE False): the host trainer runs unchanged")
            return
        model = self.model.module if isinstance(self.model, nn.DataParallel) else self.model
        adapter = choose_adapter(type(self).pd_adapter_class, cfg.TRAINER.PD.ADAPTER, model)(model, cfg)
        amp = getattr(self, "scaler", None) is not None  # the host trains under amp with a GradScaler
        self.pd = PromptDiffusion(adapter, cfg.TRAINER.PD, self.num_classes, torch.float16 if amp else None)
        optim = build_optimizer(self.pd, cfg.OPTIM)
        self.register_model(PD_MODEL_NAME, self.pd, optim, build_lr_scheduler(optim, cfg.OPTIM))

    def before_train(self) -> None:
        super().before_train()
        if self.pd is not None:
            refresh = self.cfg.TRAINER.PD.OVERFIT.REFRESH
            print(f"Prompt diffusion: per-sample overfitting {self.cfg.TRAINER.PD.OVERFIT.MODE} ({self.pd.overfit_text()}"
                  + ("; every step)" if self.cfg.TRAINER.PD.OVERFIT.MODE == "online" else f"; V* renewed every {refresh} epochs)"))
            if self.val_loader is None:
                print("Prompt diffusion: no val split, so no held-out check in the log and no residual calibration "
                      "(a test image never reaches a fitted number)")

    def forward_backward(self, batch: dict) -> dict:
        if self.pd is None:
            return super().forward_backward(batch)
        scaler = getattr(self, "scaler", None)  # the host's GradScaler (PREC amp), if any
        parsed = self.parse_batch_train(batch)  # (images, labels, ...): what the host's loss takes
        self.model_zero_grad()
        step = self.pd.training_step(parsed, lambda loss: backward(self, loss, scaler),
                                     grad_scale=1.0 if scaler is None else scaler.get_scale(),
                                     epoch=self.epoch, indices=batch.get("index"))
        update(self, scaler)  # every registered optimizer (the host's and the PD module's) steps once
        summary = dict(step.losses, acc=compute_accuracy(step.logits, parsed[1])[0].item())
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    def after_epoch(self) -> None:
        """The host's ``after_epoch``, then a log line on ``TRAINER.PD.DIAGNOSE_IMAGES`` val images (the
        generator's fit, the alignment of generated with overfitted residuals, accuracy against the host's)."""
        super().after_epoch()
        images = self.cfg.TRAINER.PD.DIAGNOSE_IMAGES if self.pd is not None else 0
        if images <= 0 or self.val_loader is None:
            return
        state = torch.random.get_rng_state()  # the check must not change the training's random stream
        self.set_model_mode("eval")
        items = list(residual_batches(self.pd, labelled_batches(self, self.val_loader), max_images=images))
        print(f"Prompt diffusion, epoch {self.epoch + 1}, held-out: {evaluate_residuals(self.pd, items).summary()}")
        torch.random.set_rng_state(state)

    def after_train(self) -> None:
        if self.pd is not None:
            _finish(self)
        super().after_train()

    def parse_batch_test(self, batch: dict):
        """The host's parsing, keeping the batch's dataset indices for ``model_inference`` (its noise seeds)."""
        self._pd_indices = torch.as_tensor(batch["index"]) if "index" in batch else None
        return super().parse_batch_test(batch)

    def model_inference(self, input):
        if self.pd is None:
            return super().model_inference(input)
        indices = getattr(self, "_pd_indices", None)
        if indices is None or len(indices) != len(input):
            raise ValueError("prompt diffusion's model_inference needs the batch's dataset indices (batch['index'], "
                             "which seed each image's noise): parse the batch with parse_batch_test first")
        return self.pd.logits(input, indices)

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """The host's ``load_model`` for its own models, then the PD module, strictly, from
        ``<directory>/prompt_diffusion/``; a host's run (no such folder) leaves it as built (said in the log)."""
        if self.pd is None:
            return super().load_model(directory, epoch)
        with _unregistered(self, PD_MODEL_NAME):
            super().load_model(directory, epoch)
        if not directory:
            return
        path = osp.join(directory, PD_MODEL_NAME, "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}")
        if osp.exists(path):
            self.pd.load_state_dict(load_checkpoint(path)["state_dict"])
            print(f"Load {path} to {PD_MODEL_NAME}")
        elif any(osp.isdir(osp.join(directory, name)) for name in EARLIER_MODEL_NAMES):
            raise ValueError(f"{directory} was trained by an earlier prompt-diffusion (its generator under "
                             f"{'/'.join(EARLIER_MODEL_NAMES)}, not {PD_MODEL_NAME}/): retrain it")
        else:
            print(f"Prompt diffusion: no {path} (a host's run): the host's weights load, the PD module stays as built")
