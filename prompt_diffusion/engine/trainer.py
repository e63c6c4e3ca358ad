"""The built-in trainers: ``TrainerBase``, ``SimpleTrainer``, ``TrainerX`` (Dassl's ``trainer.py``).

Construction (``SimpleTrainer.__init__``): ``check_cfg`` -> ``build_data_loader`` -> ``build_model``
-> evaluator. ``train()``: ``before_train`` (resume from ``OUTPUT_DIR`` or ``RESUME``) -> per epoch
``before_epoch``, ``run_epoch``, ``after_epoch`` (checkpoints) -> ``after_train`` (final test).
Every epoch is saved, so an interrupted run resumes from its last finished epoch whatever
``TRAIN.CHECKPOINT_FREQ`` says; that key says which epochs stay (every N-th, and the last), the
others are removed once the next one is written.
The learning rate is stepped by the trainer itself (``update_lr``), as in Dassl.

Every ``TRAIN.PRINT_FREQ`` batches ``run_epoch`` prints Dassl's line::

    epoch [1/2] batch [5/8] time 0.012 (0.015) data 0.004 (0.005) loss 1.2345 (1.4567) acc 50.0000 (41.2500) lr 1.0000e-05 eta 0:00:01
"""
import datetime
import os.path as osp
import sys
import time
from collections import OrderedDict
from typing import List, Optional

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm
from yacs.config import CfgNode

from prompt_diffusion.engine.data import DataManager
from prompt_diffusion.engine.evaluator import build_evaluator
from prompt_diffusion.engine.interrupt import raise_if_interrupted
from prompt_diffusion.engine.meters import AverageMeter, MetricMeter
from prompt_diffusion.engine.predictions import PredictionRecord
from prompt_diffusion.engine.registry import TRAINER_REGISTRY, check_availability
from prompt_diffusion.engine.safe_trainer import SafeCheckpointsMixin
from prompt_diffusion.engine.timing import InferenceTimer
from prompt_diffusion.engine.utils import tolist_if_not


def progress_enabled() -> bool:
    """Progress bars only when stdout is a terminal (log files and test runners stay clean)."""
    return bool(getattr(sys.stdout, "isatty", lambda: False)())


class TrainerBase(SafeCheckpointsMixin):
    """Registered models with their optimizers and schedulers, and the generic epoch loop."""

    def __init__(self):
        self._models = OrderedDict()
        self._optims = OrderedDict()
        self._scheds = OrderedDict()
        self._writer = None

    def register_model(self, name: str = "model", model: Optional[nn.Module] = None, optim=None,
                       sched=None) -> None:
        """Track ``model`` (and its optimizer/scheduler) under ``name`` for saving and modes."""
        for attribute in ("_models", "_optims", "_scheds"):
            if self.__dict__.get(attribute) is None:
                raise AttributeError(f"Cannot assign {attribute[1:-1]} before super().__init__() call")
        if name in self._models:
            raise KeyError(f"Found duplicate model names: {name!r} is already registered")
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names=None) -> List[str]:
        names_real = list(self._models.keys())
        if names is None:
            return names_real
        names = tolist_if_not(names)
        for name in names:
            if name not in names_real:
                raise KeyError(f"Model {name!r} is not registered (registered: {names_real})")
        return names

    def set_model_mode(self, mode: str = "train", names=None) -> None:
        for name in self.get_model_names(names):
            if mode == "train":
                self._models[name].train()
            elif mode in ("test", "eval"):
                self._models[name].eval()
            else:
                raise KeyError(f"mode must be 'train', 'test' or 'eval', got {mode!r}")

    def update_lr(self, names=None) -> None:
        """Step the scheduler of each model (once per epoch, called by the trainer)."""
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def init_writer(self, log_dir: str) -> None:
        """Open a TensorBoard writer when the ``tensorboard`` package is installed."""
        if self._writer is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("TensorBoard is not installed: no event files are written (pip install tensorboard)")
            return
        print(f"Initialize tensorboard (log_dir={log_dir})")
        self._writer = SummaryWriter(log_dir=log_dir)

    def close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def write_scalar(self, tag: str, scalar_value, global_step: Optional[int] = None) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, scalar_value, global_step)

    def train(self, start_epoch: int, max_epoch: int) -> None:
        """Generic training loop over epochs ``start_epoch .. max_epoch - 1``."""
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        self.before_train()
        # the last finished epoch: what after_train sees when a resumed run has no epoch left to train
        self.epoch = self.start_epoch - 1
        for self.epoch in range(self.start_epoch, self.max_epoch):
            self.before_epoch()
            self.run_epoch()
            self.after_epoch()
        self.after_train()

    def before_train(self):
        pass

    def after_train(self):
        pass

    def before_epoch(self):
        pass

    def after_epoch(self):
        pass

    def run_epoch(self):
        raise NotImplementedError

    def test(self):
        raise NotImplementedError

    def parse_batch_train(self, batch):
        raise NotImplementedError

    def parse_batch_test(self, batch):
        raise NotImplementedError

    def forward_backward(self, batch):
        raise NotImplementedError

    def model_inference(self, input):
        raise NotImplementedError

    def model_zero_grad(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss: torch.Tensor) -> None:
        self.detect_anomaly(loss)
        loss.backward()

    def model_update(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss: torch.Tensor, names=None) -> None:
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)


class SimpleTrainer(TrainerBase):
    """Data loaders, model, evaluator, checkpoints and testing from a config."""

    def __init__(self, cfg: CfgNode):
        super().__init__()
        self.check_cfg(cfg)
        if torch.cuda.is_available() and cfg.USE_CUDA:
            self.device = torch.device("cuda")
        else:
            self.device = torch.device("cpu")
        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR
        self.cfg = cfg
        self.build_data_loader()
        if cfg.TEST.FINAL_MODEL == "best_val" and not cfg.TEST.NO_TEST and self.val_loader is None:
            raise ValueError(f"TEST.FINAL_MODEL best_val selects the model on the val split, and DATASET.NAME "
                             f"{cfg.DATASET.NAME} has no val images here; use TEST.FINAL_MODEL last_step")
        self.build_model()
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname)
        self.best_result = -np.inf

    def check_cfg(self, cfg: CfgNode) -> None:
        """Check trainer-specific settings (e.g. a required sampler); raise on bad ones."""

    def build_data_loader(self, custom_tfm_train=None, custom_tfm_test=None) -> None:
        """Create ``dm``, the loaders and ``num_classes``, ``num_source_domains``, ``lab2cname``
        (with the given train / test transforms instead of the configured ones, when given)."""
        dm = DataManager(self.cfg, custom_tfm_train=custom_tfm_train, custom_tfm_test=custom_tfm_test)
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = dm.train_loader_u  # optional, can be None
        self.val_loader = dm.val_loader  # optional, can be None
        self.test_loader = dm.test_loader
        self.num_classes = dm.num_classes
        self.num_source_domains = dm.num_source_domains
        self.lab2cname = dm.lab2cname  # {label: classname}
        self.dm = dm

    def build_model(self) -> None:
        """Build and register the model with its optimizer and scheduler (trainers override it)."""
        raise NotImplementedError(
            "The built-in engine has no Dassl backbone zoo (SimpleNet); the trainer must define "
            "build_model() and call register_model(name, model, optim, sched)"
        )

    def train(self) -> None:
        super().train(self.start_epoch, self.max_epoch)

    def before_train(self) -> None:
        directory = self.cfg.RESUME or self.cfg.OUTPUT_DIR
        self.start_epoch = self.resume_model_if_exist(directory)
        self.init_writer(osp.join(self.output_dir, "tensorboard"))  # the folder only when tensorboard writes there
        self.time_start = time.time()

    def after_train(self) -> None:
        print("Finish training")
        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                print("Deploy the model with the best val performance")
                self.load_model(self.output_dir)
            else:
                print("Deploy the last-epoch model")
            self.test()
        elapsed = str(datetime.timedelta(seconds=round(time.time() - self.time_start)))
        print(f"Elapsed: {elapsed}")
        self.close_writer()

    def after_epoch(self) -> None:
        """Validate (``best_val``: ``model-best.pth.tar`` when val improves), then save the epoch, the
        point a rerun resumes from, and remove the previous one unless ``kept_epoch`` keeps it."""
        if not self.cfg.TEST.NO_TEST and self.cfg.TEST.FINAL_MODEL == "best_val":
            curr_result = self.test(split="val")
            if curr_result > self.best_result:
                self.best_result = curr_result
                self.save_model(self.epoch, self.output_dir, val_result=curr_result,
                                model_name="model-best.pth.tar")
        self.save_model(self.epoch, self.output_dir)
        self.remove_superseded_checkpoint(self.epoch)

    @torch.no_grad()
    def test(self, split: Optional[str] = None) -> float:
        """Evaluate on ``split`` (default ``TEST.SPLIT``); prints Dassl's result block plus
        ``* time_per_image_ms`` and returns the first metric (accuracy). Without a val loader, ``val``
        is an error: Dassl falls back to the test split, which would select models on test images."""
        self.set_model_mode("eval")
        self.evaluator.reset()
        if split is None:
            split = self.cfg.TEST.SPLIT
        if split == "val" and self.val_loader is None:
            raise ValueError(f"no val split to evaluate on (DATASET.NAME {self.cfg.DATASET.NAME}); the test split "
                             "is never used in its place")
        split = "val" if split == "val" else "test"
        data_loader = self.val_loader if split == "val" else self.test_loader
        print(f"Evaluate on the *{split}* set")
        timer = InferenceTimer()
        predictions = PredictionRecord(split)
        for batch in tqdm(data_loader, disable=not progress_enabled()):
            raise_if_interrupted()
            input, label = self.parse_batch_test(batch)
            output = timer.time(lambda: self.model_inference(input), label.shape[0])
            self.evaluator.process(output, label)
            predictions.add(batch.get("impath"), label, output, batch.get("domain"))
        results = self.evaluator.evaluate()
        predictions.write(self.output_dir)
        # model time only (engine/timing.py says what it includes), read by `prompt-diffusion table` for Figure 4
        print(f"* time_per_image_ms: {timer.milliseconds_per_image():.2f}")
        for k, v in results.items():
            self.write_scalar(f"{split}/{k}", v, self.epoch)
        return list(results.values())[0]

    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        return self.model(input)

    def parse_batch_test(self, batch: dict):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def get_current_lr(self, names=None) -> float:
        name = self.get_model_names(names)[0]
        return self._optims[name].param_groups[0]["lr"]


class TrainerX(SimpleTrainer):
    """A trainer over labeled data only (``train_loader_x``)."""

    def run_epoch(self) -> None:
        self.set_model_mode("train")
        losses = MetricMeter()
        batch_time = AverageMeter()
        data_time = AverageMeter()
        self.num_batches = len(self.train_loader_x)
        bar = tqdm(total=self.num_batches, leave=False, disable=not progress_enabled(),
                   desc=f"epoch {self.epoch + 1}/{self.max_epoch}")
        end = time.time()
        for self.batch_idx, batch in enumerate(self.train_loader_x):
            raise_if_interrupted()
            data_time.update(time.time() - end)
            loss_summary = self.forward_backward(batch)
            self.check_loss_summary(loss_summary)
            batch_time.update(time.time() - end)
            losses.update(loss_summary)
            bar.update(1)

            meet_freq = (self.batch_idx + 1) % self.cfg.TRAIN.PRINT_FREQ == 0
            only_few_batches = self.num_batches < self.cfg.TRAIN.PRINT_FREQ
            if meet_freq or only_few_batches:
                line = self._progress_line(batch_time, data_time, losses)
                if bar.disable:
                    print(line)
                else:
                    bar.write(line, file=sys.stdout)

            n_iter = self.epoch * self.num_batches + self.batch_idx
            for name, meter in losses.meters.items():
                self.write_scalar("train/" + name, meter.avg, n_iter)
            self.write_scalar("train/lr", self.get_current_lr(), n_iter)
            end = time.time()
        bar.close()

    def _progress_line(self, batch_time: AverageMeter, data_time: AverageMeter, losses: MetricMeter) -> str:
        """Dassl's log line: epoch, batch, timings, losses, learning rate and ETA."""
        nb_remain = self.num_batches - self.batch_idx - 1
        nb_remain += (self.max_epoch - self.epoch - 1) * self.num_batches
        eta = str(datetime.timedelta(seconds=int(batch_time.avg * nb_remain)))
        return " ".join([
            f"epoch [{self.epoch + 1}/{self.max_epoch}]",
            f"batch [{self.batch_idx + 1}/{self.num_batches}]",
            f"time {batch_time.val:.3f} ({batch_time.avg:.3f})",
            f"data {data_time.val:.3f} ({data_time.avg:.3f})",
            f"{losses}",
            f"lr {self.get_current_lr():.4e}",
            f"eta {eta}",
        ])

    def parse_batch_train(self, batch: dict):
        return batch["img"].to(self.device), batch["label"].to(self.device), batch["domain"].to(self.device)


def build_trainer(cfg: CfgNode):
    """Instantiate the trainer registered as ``cfg.TRAINER.NAME`` with ``cfg``."""
    check_availability(cfg.TRAINER.NAME, TRAINER_REGISTRY.registered_names())
    if cfg.VERBOSE:
        print(f"Loading trainer: {cfg.TRAINER.NAME}")
    return TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)
