"""Small file, seeding and list helpers with Dassl's names (``dassl/utils/tools.py``)."""
import errno
import json
import os
import os.path as osp
import random
import warnings
from typing import Any, List

import numpy as np
import torch
from PIL import Image


def mkdir_if_missing(dirname: str) -> None:
    """Create ``dirname`` (and parents) unless it exists."""
    if dirname and not osp.exists(dirname):
        try:
            os.makedirs(dirname)
        except OSError as error:
            if error.errno != errno.EEXIST:
                raise


def check_isfile(fpath: str) -> bool:
    """True when ``fpath`` is a file; warns (as Dassl does) when it is not."""
    isfile = osp.isfile(fpath)
    if not isfile:
        warnings.warn(f'No file found at "{fpath}"')
    return isfile


def read_json(fpath: str) -> Any:
    with open(fpath, "r") as f:
        return json.load(f)


def write_json(obj: Any, fpath: str) -> None:
    mkdir_if_missing(osp.dirname(fpath))
    with open(fpath, "w") as f:
        json.dump(obj, f, indent=4, separators=(",", ": "))


def set_random_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def read_image(path: str) -> Image.Image:
    """Open an image file as RGB; an unreadable or truncated file raises an error naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as err:
        raise OSError(f"cannot read image {path}: {err}") from err


def listdir_nohidden(path: str, sort: bool = False) -> List[str]:
    """Entries of ``path`` that do not start with a dot."""
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    if sort:
        items.sort()
    return items


def tolist_if_not(x) -> list:
    return x if isinstance(x, list) else [x]


def collect_env_info() -> str:
    """torch's environment report plus the Pillow version (printed by the train command)."""
    import PIL
    from torch.utils.collect_env import get_pretty_env_info

    return get_pretty_env_info() + f"\n        Pillow ({PIL.__version__})"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cap_workers(cfg) -> str:
    """Lower ``DATALOADER.NUM_WORKERS`` to the available cores (more workers than cores only
    compete with the training process); returns the log line saying so, or ``""`` (unfrozen cfg)."""
    cores = available_cores()
    if cfg.DATALOADER.NUM_WORKERS <= cores:
        return ""
    asked, cfg.DATALOADER.NUM_WORKERS = cfg.DATALOADER.NUM_WORKERS, cores
    return f"DATALOADER.NUM_WORKERS {asked} -> {cores}: this process may use {cores} CPU core(s)"
