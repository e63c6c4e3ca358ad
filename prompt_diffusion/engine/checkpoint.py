"""Checkpoint files with Dassl's layout, safe to load with ``torch.load(weights_only=True)``.

Layout (as Dassl): ``<output>/<model name>/model.pth.tar-<epoch>``, ``model-best.pth.tar`` and a
``checkpoint`` text file naming the latest file. A checkpoint is a dict ``state_dict, epoch,
optimizer, scheduler, val_result`` (+ ``trainer`` and ``rng_state`` written by this engine).

Unlike Dassl: writes are atomic (temporary file, then ``os.replace``), a state that
``weights_only`` could not load is refused before writing, and loading uses ``weights_only=True``.
Pickled checkpoints (upstream CoOp-family ones) load only when the caller allows it
(``allow_unsafe=True`` or ``PD_ALLOW_UNSAFE_CHECKPOINTS=1``), with a warning.
"""
import os
import os.path as osp
import pickle
import random
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from typing import Any, Callable, List, Optional

import numpy as np
import torch
import torch.nn as nn

from prompt_diffusion.engine.interrupt import sigint_held
from prompt_diffusion.engine.utils import mkdir_if_missing

UNSAFE_ENV = "PD_ALLOW_UNSAFE_CHECKPOINTS"
_PLAIN_TYPES = (torch.Tensor, int, float, bool, str, bytes, type(None), torch.Size, torch.dtype,
                torch.device)


def _assert_plain(value: Any, where: str = "state") -> None:
    """Raise ``TypeError`` naming the first entry ``torch.load(weights_only=True)`` would refuse."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint key {where}[{key!r}] is a {type(key).__name__}; use str or int keys")
            _assert_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _assert_plain(item, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN_TYPES):
        raise TypeError(
            f"checkpoint entry {where} is a {type(value).__module__}.{type(value).__name__}, which "
            "torch.load(weights_only=True) cannot read; store its state_dict() or plain values"
        )


def atomic_torch_save(obj: Any, fpath: str) -> None:
    """``torch.save`` into a temporary file next to ``fpath``, then rename it over ``fpath``."""
    _atomic_write(fpath, lambda f: torch.save(obj, f))


@sigint_held()
def _atomic_write(fpath: str, write: Callable) -> None:
    """``write(file)`` into a temporary file next to ``fpath``, then rename it over ``fpath``; a Ctrl-C
    during it stops the run once the file is written (``sigint_held``)."""
    directory = osp.dirname(osp.abspath(fpath))
    mkdir_if_missing(directory)
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=f".{osp.basename(fpath)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, fpath)
    except BaseException:
        if osp.exists(tmp_path):
            os.remove(tmp_path)
        raise


def save_checkpoint(state: dict, save_dir: str, is_best: bool = False,
                    remove_module_from_keys: bool = True, model_name: str = "") -> str:
    """Write ``state`` to ``save_dir/model_name`` (default ``model.pth.tar-<state["epoch"]>``),
    point ``save_dir/checkpoint`` at it and, if ``is_best``, copy it to ``model-best.pth.tar``.
    Returns the written path."""
    if remove_module_from_keys:  # drop nn.DataParallel's "module." prefix
        state["state_dict"] = OrderedDict(
            (k[7:] if k.startswith("module.") else k, v) for k, v in state["state_dict"].items()
        )
    _assert_plain(state)
    if not model_name:
        model_name = f"model.pth.tar-{state['epoch']}"
    fpath = osp.join(save_dir, model_name)
    atomic_torch_save(state, fpath)
    print(f"Checkpoint saved to {fpath}")
    _atomic_write(osp.join(save_dir, "checkpoint"), lambda f: f.write(f"{model_name}\n".encode()))
    if is_best:
        best_fpath = osp.join(save_dir, "model-best.pth.tar")
        atomic_torch_save(state, best_fpath)
        print(f'Best checkpoint saved to "{best_fpath}"')
    return fpath


def _unsafe_allowed(allow_unsafe: Optional[bool]) -> bool:
    if allow_unsafe is not None:
        return allow_unsafe
    return os.environ.get(UNSAFE_ENV, "0") not in ("", "0", "false", "False")


def _corrupt_error(fpath: str, error: Exception) -> RuntimeError:
    siblings = sorted(f for f in os.listdir(osp.dirname(osp.abspath(fpath))) if f.startswith("model"))
    return RuntimeError(
        f'Checkpoint "{fpath}" is corrupt or truncated ({type(error).__name__}: {error}). '
        f"Checkpoints in the same folder: {siblings}"
    )


def check_checkpoint_file(fpath: str) -> None:
    """Refuse a checkpoint that is not a torch archive (truncated, corrupt), before anything loads
    or writes: the error of ``load_checkpoint`` for such a file. Cheap: the zip directory is read,
    not the tensors."""
    try:
        with zipfile.ZipFile(fpath) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                raise zipfile.BadZipFile("a zip archive without data.pkl")
    except (zipfile.BadZipFile, OSError) as error:
        raise _corrupt_error(fpath, error) from None


def saved_epochs(directory: str) -> List[int]:
    """The epochs with a ``model.pth.tar-<epoch>`` in ``directory``, ascending."""
    if not osp.isdir(directory):
        return []
    found = (name[len("model.pth.tar-"):] for name in os.listdir(directory) if name.startswith("model.pth.tar-"))
    return sorted(int(epoch) for epoch in found if epoch.isdigit())


def missing_model_message(model_path: str) -> str:
    """Why ``--eval-only`` found nothing at ``model_path``, and which epochs can be loaded instead."""
    directory, file_name = osp.split(model_path)
    epochs = saved_epochs(directory)
    asked = ("no model-best.pth.tar (saved only when validating; give --load-epoch N)"
             if file_name == "model-best.pth.tar" else f"no {file_name}")
    if epochs:
        return f"No model at {model_path}: {asked}; {directory} has epoch(s) {', '.join(map(str, epochs))}"
    where = directory if osp.isdir(directory) else f"{directory} does not exist"
    return f"No model at {model_path}: {asked}; no model.pth.tar-<epoch> in {where}"


def load_checkpoint(fpath: str, allow_unsafe: Optional[bool] = None) -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)`` onto the CPU, wherever it was saved.

    The loaded tensors then go where the model is: ``load_state_dict`` copies into the model's
    parameters (on its device), an optimizer's ``load_state_dict`` moves its state to its
    parameters. So a checkpoint written on a GPU loads on a CPU-only machine or on another GPU index,
    and one written on a CPU loads into a model on a GPU. (Dassl maps onto the GPU when one is
    present, which fails for a checkpoint written on ``cuda:1`` read on a one-GPU machine.)

    A file holding pickled objects (e.g. an upstream CoOp checkpoint with a scheduler object)
    loads only when ``allow_unsafe`` is True (default: env ``PD_ALLOW_UNSAFE_CHECKPOINTS=1``);
    then ``weights_only=False`` is used, with a warning: unpickling runs code from the file.
    """
    if fpath is None:
        raise ValueError("File path is None")
    if not osp.exists(fpath):
        raise FileNotFoundError(f'File is not found at "{fpath}"')
    map_location = "cpu"
    try:
        return torch.load(fpath, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if not zipfile.is_zipfile(fpath):  # torch's format is a zip archive: this file is garbage
            raise _corrupt_error(fpath, error) from error
        if not _unsafe_allowed(allow_unsafe):
            raise RuntimeError(
                f'Checkpoint "{fpath}" holds pickled Python objects that torch.load(weights_only=True) '
                f"refuses ({error}). If you trust the file (e.g. an upstream CoOp checkpoint), allow it "
                f"with {UNSAFE_ENV}=1 or `prompt-diffusion train --allow-unsafe-checkpoints`."
            ) from error
    except Exception as error:
        raise _corrupt_error(fpath, error) from error
    warnings.warn(f'Loading "{fpath}" with weights_only=False: unpickling can run code from the file')
    return torch.load(fpath, map_location=map_location, weights_only=False)


def get_rng_state() -> dict:
    """Python, NumPy and torch random states as plain data (weights_only-safe)."""
    version, py_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [version, list(py_state), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the states written by ``get_rng_state``."""
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():  # the GPUs this machine has (a run may move)
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)


def read_latest_checkpoint_name(fdir: str) -> str:
    """The file named in ``fdir/checkpoint`` (the latest checkpoint written there)."""
    with open(osp.join(fdir, "checkpoint"), "r") as f:
        return f.readlines()[0].strip("\n")


def checkpoint_file(directory: str, name: str, epoch: Optional[int] = None) -> str:
    """``<directory>/<name>/model-best.pth.tar``, or ``model.pth.tar-<epoch>`` for an ``epoch``:
    the file ``load_model`` reads for the registered model ``name``."""
    return osp.join(directory, name, "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}")


def load_state_dict_checked(module: nn.Module, state_dict: dict, fpath: str) -> None:
    """``module.load_state_dict`` whose error names the checkpoint file."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as error:
        raise RuntimeError(
            f'Checkpoint "{fpath}" does not fit {type(module).__name__} (another model or shape?): {error}'
        ) from error


def resume_from_checkpoint(fdir: str, model: nn.Module, optimizer=None, scheduler=None,
                           expected_trainer: Optional[str] = None, restore_rng: bool = False) -> int:
    """Load the latest checkpoint of ``fdir`` into model/optimizer/scheduler; returns its epoch
    (the number of finished epochs, i.e. the epoch to start from).

    ``expected_trainer``: refuse a checkpoint written by another trainer. ``restore_rng``: restore
    the random states saved with it, so a resumed run continues like an uninterrupted one.
    """
    fpath = osp.join(fdir, read_latest_checkpoint_name(fdir))
    print(f'Loading checkpoint from "{fpath}"')
    checkpoint = load_checkpoint(fpath)
    written_by = checkpoint.get("trainer")
    if expected_trainer and written_by and written_by != expected_trainer:
        raise ValueError(
            f'Checkpoint "{fpath}" was written by trainer {written_by}, not {expected_trainer}: '
            "use another output directory (or remove this one) to train from scratch"
        )
    load_state_dict_checked(model, checkpoint["state_dict"], fpath)
    print("Loaded model weights")
    if optimizer is not None and checkpoint.get("optimizer") is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        print("Loaded optimizer")
    if scheduler is not None and checkpoint.get("scheduler") is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
        print("Loaded scheduler")
    if restore_rng and checkpoint.get("rng_state") is not None:
        set_rng_state(checkpoint["rng_state"])
        print("Restored random states")
    start_epoch = checkpoint["epoch"]
    print(f"Previous epoch: {start_epoch}")
    return start_epoch


def count_num_param(model: Optional[nn.Module] = None, params=None) -> int:
    """Number of parameters of ``model``, or of ``params`` (tensors or param-group dicts)."""
    if model is not None:
        return sum(p.numel() for p in model.parameters())
    if params is not None:
        return sum(p["params"].numel() if isinstance(p, dict) else p.numel() for p in params)
    raise ValueError("model and params must provide at least one.")


def load_pretrained_weights(model: nn.Module, weight_path: str) -> None:
    """Copy the tensors of ``weight_path`` whose name and shape match into ``model``; report the
    discarded ones. ``"module."`` prefixes are dropped."""
    checkpoint = load_checkpoint(weight_path)
    state_dict = checkpoint.get("state_dict", checkpoint)
    model_dict = model.state_dict()
    matched, discarded = OrderedDict(), []
    for key, value in state_dict.items():
        key = key[7:] if key.startswith("module.") else key
        if key in model_dict and model_dict[key].size() == value.size():
            matched[key] = value
        else:
            discarded.append(key)
    model_dict.update(matched)
    model.load_state_dict(model_dict)
    if not matched:
        warnings.warn(f"Cannot load {weight_path} (check the key names manually)")
        return
    print(f"Successfully loaded pretrained weights from {weight_path}")
    if discarded:
        print(f"Layers discarded due to unmatched keys or size: {discarded}")
