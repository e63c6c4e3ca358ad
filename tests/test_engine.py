"""The engine (built-in unless PD_ENGINE says otherwise): a toy linear probe on tiny PNG folders.

Also a script: ``python tests/test_engine.py RESULT.json DATA_ROOT OUTPUT_DIR`` runs the toy probe
for 2 epochs and writes its per-batch losses, learning rates, final accuracy and weights (the
Dassl parity test runs it under each engine).
"""
import io
import json
import math
import os
import os.path as osp
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from helpers import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, make_image_folder  # noqa: E402

from prompt_diffusion import engine  # noqa: E402
from prompt_diffusion.engine.logger import Logger  # noqa: E402
from prompt_diffusion.results import parse_log_text  # noqa: E402
from prompt_diffusion.engine import (  # noqa: E402
    DATASET_REGISTRY,
    TRAINER_REGISTRY,
    DatasetBase,
    Datum,
    TrainerX,
    build_lr_scheduler,
    build_optimizer,
    build_trainer,
    compute_accuracy,
    get_cfg_default,
    load_checkpoint,
    set_random_seed,
)

CLASSNAMES = ["red", "green", "blue", "yellow"]


@DATASET_REGISTRY.register(force=True)
class ToyColors(DatasetBase):
    """``<root>/{train,val,test}/<classname>/*.png``; labels follow ``CLASSNAMES``."""

    def __init__(self, cfg):
        splits = {name: self.read_split(osp.join(cfg.DATASET.ROOT, name)) for name in ("train", "val", "test")}
        train = self.generate_fewshot_dataset(splits["train"], num_shots=cfg.DATASET.NUM_SHOTS)
        super().__init__(train_x=train, val=splits["val"], test=splits["test"])

    @staticmethod
    def read_split(split_dir):
        return [
            Datum(impath=osp.join(split_dir, name, fname), label=label, classname=name)
            for label, name in enumerate(CLASSNAMES)
            for fname in sorted(os.listdir(osp.join(split_dir, name)))
        ]


@DATASET_REGISTRY.register(force=True)
class ToyColorsWithoutVal(DatasetBase):
    """ToyColors without its val split."""

    def __init__(self, cfg):
        colors = ToyColors(cfg)
        super().__init__(train_x=colors.train_x, test=colors.test)


@TRAINER_REGISTRY.register(force=True)
class ToyLinearProbe(TrainerX):
    """Mean colour -> linear classifier, trained like CoOp (update_lr after the last batch)."""

    nan_at = None  # (epoch, batch_idx) where the loss is made NaN
    stop_after_epoch = None  # raise StopRun after this (1-based) epoch, checkpoint written

    def build_model(self):
        self.model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, self.num_classes))
        self.model.to(self.device)
        self.optim = build_optimizer(self.model, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("probe", self.model, self.optim, self.sched)
        self.history = []  # (epoch, batch, loss, lr)

    def forward_backward(self, batch):
        image, label = batch["img"].to(self.device), batch["label"].to(self.device)
        output = self.model(image)
        loss = F.cross_entropy(output, label)
        if self.nan_at == (self.epoch, self.batch_idx):
            loss = loss * float("nan")
        self.model_backward_and_update(loss)
        self.history.append((self.epoch, self.batch_idx, loss.item(), self.get_current_lr()))
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return {"loss": loss.item(), "acc": compute_accuracy(output, label)[0].item()}

    def after_epoch(self):
        super().after_epoch()
        if self.stop_after_epoch == self.epoch + 1:
            raise StopRun(self.epoch + 1)

    def after_train(self):
        self.epoch_after_training = self.epoch  # the epoch after_train sees (a PD trainer saves under it)
        super().after_train()


class StopRun(Exception):
    """Simulates a run killed after an epoch."""


class NotPlain:
    """An object torch.load(weights_only=True) refuses."""


def write_toy_data(root: Path) -> Path:
    make_image_folder(root / "train", CLASSNAMES, per_class=6, size=16, seed=1)
    make_image_folder(root / "val", CLASSNAMES, per_class=2, size=16, seed=2)
    make_image_folder(root / "test", CLASSNAMES, per_class=4, size=16, seed=3)
    return root


def toy_opts(data_root, output_dir, max_epoch=2, **overrides):
    """The toy run's settings as yacs ``KEY VALUE`` opts."""
    settings = {
        "DATASET.NAME": "ToyColors", "DATASET.ROOT": str(data_root), "OUTPUT_DIR": str(output_dir),
        "TRAINER.NAME": "ToyLinearProbe", "SEED": 1, "USE_CUDA": False,
        "DATALOADER.NUM_WORKERS": 0, "DATALOADER.TRAIN_X.BATCH_SIZE": 8, "DATALOADER.TEST.BATCH_SIZE": 8,
        "INPUT.SIZE": (16, 16), "INPUT.INTERPOLATION": "bicubic",
        "INPUT.TRANSFORMS": ["random_resized_crop", "random_flip", "normalize"],
        "INPUT.RRCROP_SCALE": (0.5, 1.0), "INPUT.PIXEL_MEAN": CLIP_PIXEL_MEAN,
        "INPUT.PIXEL_STD": CLIP_PIXEL_STD,
        "OPTIM.NAME": "sgd", "OPTIM.LR": 2.0, "OPTIM.MAX_EPOCH": max_epoch, "OPTIM.LR_SCHEDULER": "cosine",
        "OPTIM.WARMUP_EPOCH": 1, "OPTIM.WARMUP_TYPE": "linear", "OPTIM.WARMUP_MIN_LR": 1.0,
        "TRAIN.PRINT_FREQ": 2,
    }
    settings.update(overrides)
    opts = []
    for key, value in settings.items():
        opts += [key, repr(value) if isinstance(value, (tuple, list)) else str(value)]
    return opts


def toy_cfg(data_root, output_dir, **overrides):
    cfg = get_cfg_default()
    cfg.merge_from_list(toy_opts(data_root, output_dir, **overrides))
    cfg.freeze()
    return cfg


def build_toy(data_root, output_dir, **overrides):
    cfg = toy_cfg(data_root, output_dir, **overrides)
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_toy_data(tmp_path_factory.mktemp("toy_colors"))


# ---------------------------------------------------------------- training, logging, checkpoints

LOG_LINE = re.compile(
    r"epoch \[2/2\] batch \[2/3\] time \d+\.\d{3} \(\d+\.\d{3}\) data \d+\.\d{3} \(\d+\.\d{3}\) "
    r"loss \d+\.\d{4} \(\d+\.\d{4}\) acc \d+\.\d{4} \(\d+\.\d{4}\) lr \d\.\d{4}e[+-]\d\d eta \d+:\d\d:\d\d"
)


def test_train_command_trains_logs_and_evaluates(data_root, tmp_path):
    from prompt_diffusion.cli import main

    out = tmp_path / "run"
    dataset_file = tmp_path / "toy.yaml"
    dataset_file.write_text("DATASET:\n  NAME: ToyColors\nINPUT:\n  SIZE: (16, 16)\n")
    assert main(["train", "--dataset-config-file", str(dataset_file), "--seed", "0",
                 "--trainer", "ToyLinearProbe", "--output-dir", str(out), "--root", str(data_root),
                 *toy_opts(data_root, out)[4:]]) == 0  # DATASET.* come from the file and flags
    assert not isinstance(sys.stdout, Logger)  # the command closed its log, stdout is back
    log = (out / "log.txt").read_text()
    assert LOG_LINE.search(log), log[-2000:]
    accuracy = float(re.findall(r"\* accuracy: ([\d.]+)%", log)[-1])
    assert accuracy > 50.0  # chance is 25%
    checkpoint = torch.load(out / "probe" / "model.pth.tar-2", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["trainer"] == "ToyLinearProbe"
    assert (out / "probe" / "checkpoint").read_text() == "model.pth.tar-2\n"

    eval_out = tmp_path / "eval"
    assert main(["train", "--eval-only", "--model-dir", str(out), "--load-epoch", "2",
                 *toy_opts(data_root, eval_out)]) == 0
    eval_log = (eval_out / "log.txt").read_text()
    assert "(epoch=2)" in eval_log  # val_result=None is not formatted
    assert float(re.findall(r"\* accuracy: ([\d.]+)%", eval_log)[-1]) == accuracy
    metrics, _ = parse_log_text(eval_log, training=False)  # test() also reports model time per image
    assert metrics["accuracy"] == accuracy and metrics["time_per_image_ms"] > 0.0


def test_resume_continues_exactly(data_root, tmp_path):
    """With the default TRAIN.CHECKPOINT_FREQ (0: keep the last epoch only) every epoch is still
    saved, so a run stopped after its first epoch resumes from it; once the next epoch is written the
    first is removed."""
    straight = build_toy(data_root, tmp_path / "straight")
    straight.train()
    straight_acc = straight.test()
    assert sorted(p.name for p in (tmp_path / "straight" / "probe").glob("model.pth.tar-*")) == ["model.pth.tar-2"]

    interrupted = build_toy(data_root, tmp_path / "resumed")
    interrupted.stop_after_epoch = 1
    with pytest.raises(StopRun):
        interrupted.train()
    assert (tmp_path / "resumed" / "probe" / "model.pth.tar-1").exists()
    resumed = build_toy(data_root, tmp_path / "resumed")
    resumed.train()
    assert resumed.start_epoch == 1
    assert [h[2:] for h in resumed.history] == [h[2:] for h in straight.history if h[0] == 1]
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert straight.optim.state_dict()["state"][0]["momentum_buffer"].equal(
        resumed.optim.state_dict()["state"][0]["momentum_buffer"])
    assert straight.sched.state_dict() == resumed.sched.state_dict()
    assert resumed.test() == straight_acc
    # a finished run run again: nothing left to train, after_train sees the last epoch (not epoch 0)
    again = build_toy(data_root, tmp_path / "resumed")
    again.train()
    assert (again.start_epoch, again.epoch_after_training) == (2, 1) and again.history == []


def test_model_selection_never_sees_a_test_image(data_root, tmp_path):
    """An image folder with train/ and test/ and no val/ (the README's layout): the val split that
    selects the model (TEST.FINAL_MODEL best_val) holds images of train/ only, none of test/; a
    dataset with no val images at all refuses best_val and an evaluation on val."""
    import shutil

    import prompt_diffusion.data  # noqa: F401  (registers ImageFolder)
    from prompt_diffusion.config import extend_cfg

    folder = tmp_path / "my_images"
    for split in ("train", "test"):
        shutil.copytree(data_root / split, folder / split)
    cfg = extend_cfg(get_cfg_default())
    cfg.merge_from_list(toy_opts(folder, tmp_path / "run", **{"DATASET.NAME": "ImageFolder",
                                                              "TEST.FINAL_MODEL": "best_val"}))
    set_random_seed(cfg.SEED)
    trainer = build_trainer(cfg)
    val = {item.impath for item in trainer.val_loader.dataset.data_source}
    test = {item.impath for item in trainer.test_loader.dataset.data_source}
    train = {item.impath for item in trainer.train_loader_x.dataset.data_source}
    assert len(val) == 4 and all(Path(path).parts[-3] == "train" for path in val)  # one per class, from train/
    assert not val & test and not val & train
    trainer.train()
    best = load_checkpoint(str(tmp_path / "run" / "probe" / "model-best.pth.tar"))
    assert best["val_result"] in (0.0, 25.0, 50.0, 75.0, 100.0)  # a share of the 4 val images

    none = toy_cfg(data_root, tmp_path / "none", **{"DATASET.NAME": "ToyColorsWithoutVal"})
    trainer = build_trainer(none)
    assert trainer.val_loader is None
    with pytest.raises(ValueError, match=r"no val split to evaluate on \(DATASET.NAME ToyColorsWithoutVal\); the "
                                         "test split is never used in its place"):
        trainer.test(split="val")
    with pytest.raises(ValueError, match="TEST.FINAL_MODEL best_val selects the model on the val split, and "
                                         "DATASET.NAME ToyColorsWithoutVal has no val images here"):
        build_trainer(toy_cfg(data_root, tmp_path / "best", **{"DATASET.NAME": "ToyColorsWithoutVal",
                                                               "TEST.FINAL_MODEL": "best_val"}))


# ---------------------------------------------------------------- learning-rate schedules

def _lr_sequence(optim_overrides, n_epochs):
    cfg = get_cfg_default()
    for key, value in optim_overrides.items():
        cfg.OPTIM[key] = value
    optimizer = build_optimizer([nn.Parameter(torch.zeros(1))], cfg.OPTIM)
    scheduler = build_lr_scheduler(optimizer, cfg.OPTIM)
    lrs = []
    for _ in range(n_epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs, optimizer, scheduler


def test_warmup_cosine_reproduces_dassl_sequence():
    lr, T = 0.002, 5
    cosine = [lr * (1 + math.cos(math.pi * e / T)) / 2 for e in range(T)]
    # CoOp's setting: 1 constant warmup epoch at 1e-5, then cosine from epoch 0 (WARMUP_RECOUNT)
    lrs, _, _ = _lr_sequence({"NAME": "sgd", "LR": lr, "MAX_EPOCH": T, "LR_SCHEDULER": "cosine",
                              "WARMUP_EPOCH": 1, "WARMUP_TYPE": "constant", "WARMUP_CONS_LR": 1e-5}, T + 1)
    assert lrs == pytest.approx([1e-5] + cosine, rel=1e-9, abs=1e-15)
    # linear warmup over 2 epochs: min_lr, then LR * 1/2, then cosine
    lrs, _, _ = _lr_sequence({"LR": lr, "MAX_EPOCH": T, "LR_SCHEDULER": "cosine", "WARMUP_EPOCH": 2,
                              "WARMUP_TYPE": "linear", "WARMUP_MIN_LR": 1e-4}, T + 2)
    assert lrs == pytest.approx([1e-4, lr / 2] + cosine, rel=1e-9, abs=1e-15)
    # step schedules without warmup
    lrs, _, _ = _lr_sequence({"LR": 1.0, "LR_SCHEDULER": "multi_step", "STEPSIZE": (1, 3)}, 4)
    assert lrs == pytest.approx([1.0, 0.1, 0.1, 0.01])
    lrs, _, _ = _lr_sequence({"LR": 1.0, "LR_SCHEDULER": "single_step", "STEPSIZE": (2,)}, 4)
    assert lrs == pytest.approx([1.0, 1.0, 0.1, 0.1])


def test_warmup_scheduler_state_is_plain_and_resumes():
    settings = {"LR": 0.1, "MAX_EPOCH": 4, "LR_SCHEDULER": "cosine", "WARMUP_EPOCH": 1,
                "WARMUP_TYPE": "constant", "WARMUP_CONS_LR": 1e-3}
    full, _, _ = _lr_sequence(settings, 5)
    _, optimizer, scheduler = _lr_sequence(settings, 2)
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    _, optimizer2, scheduler2 = _lr_sequence(settings, 0)
    optimizer2.load_state_dict(state["optimizer"])
    scheduler2.load_state_dict(state["scheduler"])
    rest = []
    for _ in range(3):
        rest.append(optimizer2.param_groups[0]["lr"])
        optimizer2.step()
        scheduler2.step()
    assert rest == pytest.approx(full[2:])


# ---------------------------------------------------------------- bad input

def test_unknown_trainer_and_dataset_names_list_the_registered_ones(data_root, tmp_path):
    with pytest.raises(ValueError, match=r"ToyLinearProbe.*but got \[ToyLinearProbr\].*do you mean \[ToyLinearProbe\]"):
        build_toy(data_root, tmp_path, **{"TRAINER.NAME": "ToyLinearProbr"})
    with pytest.raises(ValueError, match=r"ToyColors.*but got \[ToyColour\]"):
        build_toy(data_root, tmp_path, **{"DATASET.NAME": "ToyColour"})


def test_config_file_errors_name_the_file_and_key(tmp_path):
    from prompt_diffusion.cli import build_parser
    from prompt_diffusion.commands.train import setup_cfg

    bad = tmp_path / "bad.yaml"
    bad.write_text("OPTIM:\n  LRR: 0.1\n")
    args = build_parser().parse_args(["train", "--config-file", str(bad)])
    with pytest.raises(KeyError, match=r"bad\.yaml.*OPTIM\.LRR"):
        setup_cfg(args)
    args = build_parser().parse_args(["train", "--dataset-config-file", str(tmp_path / "missing.yaml")])
    with pytest.raises(FileNotFoundError, match=r"--dataset-config-file .*missing\.yaml: no such file"):
        setup_cfg(args)
    args = build_parser().parse_args(["train", "OPTIM.NOPE", "1"])
    with pytest.raises(KeyError, match=r"command-line opts.*OPTIM\.NOPE"):
        setup_cfg(args)


def test_output_dir_of_another_trainer_or_shape_is_refused(data_root, tmp_path):
    build_toy(data_root, tmp_path, **{"OPTIM.MAX_EPOCH": 1}).train()
    other = build_toy(data_root, tmp_path, **{"OPTIM.MAX_EPOCH": 1})
    other.cfg.defrost()
    other.cfg.TRAINER.NAME = "CoOp"
    with pytest.raises(ValueError, match=r"written by trainer ToyLinearProbe, not CoOp"):
        other.train()
    wider = build_toy(data_root, tmp_path, **{"OPTIM.MAX_EPOCH": 1})
    wider.model[2] = nn.Linear(3, 7)
    with pytest.raises(RuntimeError, match=r"model\.pth\.tar-1.*does not fit"):
        wider.train()


def test_corrupt_checkpoint_is_reported_and_the_previous_one_survives(data_root, tmp_path):
    build_toy(data_root, tmp_path, **{"TRAIN.CHECKPOINT_FREQ": 1}).train()
    latest = tmp_path / "probe" / "model.pth.tar-2"
    latest.write_bytes(latest.read_bytes()[:200])  # truncated
    with pytest.raises(RuntimeError, match=r"model\.pth\.tar-2.*corrupt.*model\.pth\.tar-1"):
        build_toy(data_root, tmp_path, **{"TRAIN.CHECKPOINT_FREQ": 1}).train()
    assert load_checkpoint(str(tmp_path / "probe" / "model.pth.tar-1"))["epoch"] == 1


def test_checkpoint_writes_are_atomic_and_plain(tmp_path):
    from prompt_diffusion.engine.checkpoint import atomic_torch_save, save_checkpoint

    save_checkpoint({"state_dict": {"w": torch.ones(2)}, "epoch": 1}, str(tmp_path))
    target = tmp_path / "model.pth.tar-1"
    before = target.read_bytes()

    class Exploding:
        def __reduce__(self):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"w": torch.zeros(3), "boom": Exploding()}, str(target))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "model.pth.tar-1"]  # no temp left
    with pytest.raises(TypeError, match=r"state\['scheduler'\] is a .*NotPlain"):
        save_checkpoint({"state_dict": {}, "epoch": 1, "scheduler": NotPlain()}, str(tmp_path))
    assert target.read_bytes() == before


def test_pickled_checkpoint_needs_explicit_permission(tmp_path):
    path = tmp_path / "upstream.pth.tar"
    torch.save({"state_dict": {"w": torch.ones(1)}, "scheduler": NotPlain()}, path)
    with pytest.raises(RuntimeError, match="PD_ALLOW_UNSAFE_CHECKPOINTS=1"):
        load_checkpoint(str(path))
    with pytest.warns(UserWarning, match="weights_only=False"):
        assert load_checkpoint(str(path), allow_unsafe=True)["state_dict"]["w"].item() == 1.0


def test_nan_loss_stops_with_epoch_batch_and_last_finite_loss(data_root, tmp_path):
    trainer = build_toy(data_root, tmp_path, **{"TRAIN.CHECKPOINT_FREQ": 1})
    trainer.nan_at = (1, 1)
    with pytest.raises(FloatingPointError, match=r"epoch 2/2, batch 2/3; last finite loss: \d+\.\d{4}"):
        trainer.train()
    assert load_checkpoint(str(tmp_path / "probe" / "model.pth.tar-1"))["epoch"] == 1
    assert not (tmp_path / "probe" / "model.pth.tar-2").exists()


# ---------------------------------------------------------------- data, metrics, logger

def test_dataset_base_and_data_manager(data_root, tmp_path):
    trainer = build_toy(data_root, tmp_path, **{"DATASET.NUM_SHOTS": 2, "DATALOADER.TRAIN_X.BATCH_SIZE": 4})
    dataset = trainer.dm.dataset
    assert dataset.classnames == CLASSNAMES and dataset.num_classes == 4
    assert dataset.lab2cname == dict(enumerate(CLASSNAMES))
    assert len(dataset.train_x) == 8 and len(trainer.train_loader_x) == 2
    assert sorted(dataset.split_dataset_by_label(dataset.train_x)) == [0, 1, 2, 3]
    batch = next(iter(trainer.train_loader_x))
    assert batch["img"].shape == (4, 3, 16, 16) and batch["label"].shape == (4,)
    assert set(batch) == {"img", "label", "domain", "impath", "index"}
    if engine.ENGINE == "builtin":  # Dassl's Datum only asserts
        with pytest.raises(FileNotFoundError, match="nowhere.png"):
            Datum(impath=str(tmp_path / "nowhere.png"))


def test_evaluator_metrics_match_their_definitions(tmp_path, capsys):
    from prompt_diffusion.engine import build_evaluator

    cfg = get_cfg_default()
    evaluator = build_evaluator(cfg, lab2cname={0: "a", 1: "b", 2: "c"})
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = torch.tensor([0, 1, 1, 1, 2, 0])
    evaluator.process(F.one_hot(preds, 3).float(), labels)
    results = evaluator.evaluate()
    f1 = [2 * 1 / (2 * 1 + 1 + 1), 2 * 2 / (2 * 2 + 1 + 0), 2 * 1 / (2 * 1 + 0 + 1)]  # 2TP/(2TP+FP+FN)
    assert results["accuracy"] == pytest.approx(400 / 6)
    assert results["macro_f1"] == pytest.approx(100 * sum(f1) / 3)
    assert "* accuracy: 66.7%" in capsys.readouterr().out
    top = compute_accuracy(torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05]]), torch.tensor([0, 0]), topk=(1, 2))
    assert [t.item() for t in top] == [50.0, 100.0]


def test_setup_logger_tees_and_restores_stdout(tmp_path):
    console = sys.stdout
    logger = engine.setup_logger(str(tmp_path))
    print("hello log")
    logger.close()
    assert sys.stdout is console
    second = engine.setup_logger(str(tmp_path))  # an existing log.txt is kept
    second.close()
    assert (tmp_path / "log.txt").read_text() == "hello log\n"
    assert len(list(tmp_path.glob("log.txt-*"))) == 1


def test_staged_lr_param_groups():
    cfg = get_cfg_default()
    cfg.OPTIM.NAME, cfg.OPTIM.LR, cfg.OPTIM.STAGED_LR, cfg.OPTIM.NEW_LAYERS = "adamw", 0.01, True, ("head",)
    model = nn.Module()
    model.body, model.head = nn.Linear(2, 2), nn.Linear(2, 3)
    optimizer = build_optimizer(model, cfg.OPTIM)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.001, 0.01])
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 2]
    cfg.OPTIM.NAME = "lamb"
    with pytest.raises(ValueError, match=r"optim must be one of .*but got lamb"):
        build_optimizer(model, cfg.OPTIM)


def test_best_val_checkpoint_is_deployed(data_root, tmp_path, capsys):
    trainer = build_toy(data_root, tmp_path, **{"TEST.FINAL_MODEL": "best_val"})
    trainer.train()
    best = load_checkpoint(str(tmp_path / "probe" / "model-best.pth.tar"))
    assert best["val_result"] == trainer.best_result and best["epoch"] in (1, 2)
    out = capsys.readouterr().out
    assert "Evaluate on the *val* set" in out
    assert re.search(r"model-best\.pth\.tar to probe \(epoch=\d, val_result=\d+\.\d\)", out)


def test_load_pretrained_weights_keeps_matching_tensors(tmp_path, capsys):
    from prompt_diffusion.engine import load_pretrained_weights, save_checkpoint

    source = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    save_checkpoint({"state_dict": source.state_dict(), "epoch": 1}, str(tmp_path))
    target = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 5))
    load_pretrained_weights(target, str(tmp_path / "model.pth.tar-1"))
    assert torch.equal(target[0].weight, source[0].weight)
    assert "discarded due to unmatched keys or size: ['1.weight', '1.bias']" in capsys.readouterr().out


def test_engine_choice_is_checked(monkeypatch):
    from prompt_diffusion.engine.selection import requested_engine, select_engine

    monkeypatch.setenv("PD_ENGINE", "Builtin")
    assert requested_engine() == "builtin" and select_engine() == "builtin"
    monkeypatch.setenv("PD_ENGINE", "torch")
    with pytest.raises(ValueError, match=r"PD_ENGINE='torch' is not allowed; use one of \['auto', 'dassl', 'builtin'\]"):
        requested_engine()


# ---------------------------------------------------------------- script for the parity test

def run_toy(result_path, data_root, output_dir):
    """Train the toy probe for 2 epochs and dump what the parity test compares."""
    trainer = build_toy(data_root, output_dir)
    trainer.train()
    result = {
        "engine": engine.ENGINE,
        "history": trainer.history,
        "accuracy": trainer.test(),
        "weights": {k: v.tolist() for k, v in trainer.model.state_dict().items()},
    }
    Path(result_path).write_text(json.dumps(result))


def test_time_per_image_leaves_out_the_warmup_batch_and_load_spikes():
    from prompt_diffusion.engine.timing import InferenceTimer

    timer = InferenceTimer()
    for seconds, images in [(5.0, 10), (0.02, 10), (0.9, 10), (0.03, 10), (0.01, 5)]:  # warm-up, a spike
        timer.record(seconds, images)
    assert timer.milliseconds_per_image() == pytest.approx(2.5)  # median of 2, 90, 3, 2 ms
    single = InferenceTimer()
    assert single.time(lambda: torch.zeros(3), 3).shape == (3,)
    assert single.milliseconds_per_image() > 0.0  # one batch: timed although it is the warm-up


if __name__ == "__main__":
    run_toy(*sys.argv[1:4])
