"""Few-shot sampling, its portable JSON cache, and the base/new class split.

Three pieces every benchmark dataset (and the toy world) shares:

* :func:`sample_fewshot` / :func:`generate_fewshot_splits` pick ``num_shots`` items per class with
  exactly the draws of Dassl's ``DatasetBase.generate_fewshot_dataset``: classes are visited in
  order of first appearance, and each class with enough items gets ``rng.sample(items,
  num_shots)``. Train is sampled first, then val with ``min(num_shots, 4)`` from the same stream,
  as the CoOp datasets do right after ``set_random_seed(cfg.SEED)``. A ``random.Random(seed)`` is in
  the same state as the global ``random`` after ``random.seed(seed)``, so for the same seed and the
  same split the same images are picked as upstream.
* :func:`load_or_generate_fewshot` keeps the selection in ``shot_<N>-seed_<S>.json`` with paths
  relative to the dataset directory (upstream pickles ``Datum`` objects with absolute paths, so its
  cache only works on the machine that wrote it). The cache directory is configurable
  (``DATASET.FEWSHOT_CACHE_DIR``), so a read-only dataset root works.
* :func:`subsample_classes` keeps the base (first ``ceil(K/2)`` sorted labels) or new (the rest)
  classes and relabels them from 0, as CoOp's ``OxfordPets.subsample_classes``.
* :func:`val_from_train` gives a dataset without a val split (ImageNet, an image folder without
  ``val/``) one drawn from its training images, so that model selection, calibration and every
  other fitted number never see a test image (upstream uses ImageNet's test images as its val).

Items are Dassl ``Datum`` objects (anything with ``impath``, ``label``, ``classname`` and
``domain`` attributes whose class accepts those four keyword arguments).
"""
import hashlib
import json
import logging
import math
import os
import random
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

from prompt_diffusion.data.splits import to_entries

logger = logging.getLogger(__name__)

SUBSAMPLE_CHOICES = ("all", "base", "new")
# the val split of a few-shot dataset gets at most this many images per class (CoOp's rule)
MAX_VAL_SHOTS = 4
# the share of each class's images a val split drawn from all of train takes (rounded)
VAL_FRACTION = 0.1
CACHE_FORMAT = "prompt-diffusion-fewshot/1"


class FewShotError(ValueError):
    """A class has fewer items than the requested number of shots (and fallback is off)."""


class FewShotCacheError(ValueError):
    """A few-shot cache file is unreadable or was made from a different split."""


def split_by_label(items: Sequence[Any]) -> "OrderedDict[int, List[Any]]":
    """Group items by ``label``; keys in order of first appearance (as Dassl's defaultdict)."""
    groups: "OrderedDict[int, List[Any]]" = OrderedDict()
    for item in items:
        groups.setdefault(item.label, []).append(item)
    return groups


def sample_fewshot(
    items: Sequence[Any],
    num_shots: int,
    rng: random.Random,
    *,
    allow_fewer: bool = False,
    repeat: bool = False,
    split_name: str = "train",
) -> List[Any]:
    """Pick ``num_shots`` items per class, drawing from ``rng`` exactly as Dassl does.

    For each label in order of first appearance: a class with at least ``num_shots`` items gets
    ``rng.sample(class_items, num_shots)``. A class with fewer items raises :class:`FewShotError`
    naming the class, unless ``repeat`` (``rng.choices(class_items, k=num_shots)``, Dassl's
    ``repeat=True``) or ``allow_fewer`` (keep all of its items and draw nothing, Dassl's default
    behaviour) is set. ``num_shots < 1`` returns ``items`` unchanged (a list copy).
    """
    if num_shots < 1:
        return list(items)
    selected: List[Any] = []
    for label, class_items in split_by_label(items).items():
        if len(class_items) >= num_shots:
            selected.extend(rng.sample(class_items, num_shots))
        elif repeat:
            selected.extend(rng.choices(class_items, k=num_shots))
        elif allow_fewer:
            logger.warning(
                "%s: class %d (%r) has %d images, fewer than %d shots; keeping all of them",
                split_name, label, class_items[0].classname, len(class_items), num_shots,
            )
            selected.extend(class_items)
        else:
            raise FewShotError(
                f"{split_name}: class {label} ({class_items[0].classname!r}) has only "
                f"{len(class_items)} images, fewer than the {num_shots} shots requested "
                f"(DATASET.NUM_SHOTS). Lower DATASET.NUM_SHOTS, or set "
                f"DATASET.FEWSHOT_ALLOW_FEWER True to keep all images of such classes "
                f"(Dassl's behaviour)."
            )
    return selected


def generate_fewshot_splits(
    train: Sequence[Any],
    val: Optional[Sequence[Any]],
    num_shots: int,
    seed: Optional[int],
    *,
    allow_fewer: bool = False,
) -> Tuple[List[Any], Optional[List[Any]]]:
    """Few-shot train (``num_shots``) then val (``min(num_shots, 4)``), one RNG seeded by ``seed``.

    Same images as CoOp's ``generate_fewshot_dataset(train, ...)`` followed by
    ``generate_fewshot_dataset(val, ...)`` after ``set_random_seed(seed)``. ``val=None`` (ImageNet,
    whose val is its test set) samples train only. ``seed=None`` or negative: an unseeded RNG.
    """
    rng = random.Random(seed) if seed is not None and seed >= 0 else random.Random()
    train_fs = sample_fewshot(train, num_shots, rng, allow_fewer=allow_fewer, split_name="train")
    if val is None:
        return train_fs, None
    val_shots = min(num_shots, MAX_VAL_SHOTS)
    val_fs = sample_fewshot(val, val_shots, rng, allow_fewer=allow_fewer, split_name="val")
    return train_fs, val_fs


def subsample_classes(*datasets: Sequence[Any], subsample: str = "all") -> List[List[Any]]:
    """Keep the base or new half of the classes and relabel them from 0 (CoOp's rule).

    The label set comes from ``datasets[0]`` (the train split). With K sorted labels, base is the
    first ``ceil(K/2)`` and new the remaining ``K - ceil(K/2)``; the kept labels are renumbered
    ``0..`` in sorted order in every dataset, and items of other classes are dropped. ``"all"``
    returns the datasets unchanged. Returns one list per input dataset.
    """
    if subsample not in SUBSAMPLE_CHOICES:
        raise ValueError(
            f"DATASET.SUBSAMPLE_CLASSES must be one of {list(SUBSAMPLE_CHOICES)}, got {subsample!r}"
        )
    if subsample == "all":
        return [list(dataset) for dataset in datasets]
    labels = sorted({item.label for item in datasets[0]})
    n_base = math.ceil(len(labels) / 2)
    kept = labels[:n_base] if subsample == "base" else labels[n_base:]
    new_label = {old: new for new, old in enumerate(kept)}
    logger.info("SUBSAMPLE %s CLASSES: %d of %d", subsample.upper(), len(kept), len(labels))
    return [
        [
            type(item)(
                impath=item.impath, label=new_label[item.label],
                domain=item.domain, classname=item.classname,
            )
            for item in dataset
            if item.label in new_label
        ]
        for dataset in datasets
    ]


def val_from_train(train: Sequence[Any], selected: Sequence[Any], num_shots: int,
                   seed: Optional[int]) -> Tuple[List[Any], List[Any]]:
    """``(train, val)`` for a dataset without a val split: val drawn per class, seeded, from its
    training images, never from its test split.

    ``train`` is the full training split, ``selected`` the few-shot selection from it. With shots
    (``num_shots >= 1``) val takes ``min(num_shots, 4)`` (CoOp's val size) of the class's images the
    selection left out, and the selection trains unchanged (Dassl's images for the seed); a class
    whose images all train gives none. With every image in training (``num_shots < 1``),
    ``VAL_FRACTION`` of each class's images (rounded; at least one stays) move from train to val.
    The draws are ``random.Random(seed)``'s (unseeded for a missing or negative seed)."""
    rng = random.Random(seed) if seed is not None and seed >= 0 else random.Random()
    everything_trains = num_shots < 1
    chosen = {item.impath for item in selected}
    val: List[Any] = []
    for class_items in split_by_label(train).values():
        if everything_trains:
            candidates = class_items
            count = min(len(class_items) - 1, int(len(class_items) * VAL_FRACTION + 0.5))
        else:
            candidates = [item for item in class_items if item.impath not in chosen]
            count = min(num_shots, MAX_VAL_SHOTS, len(candidates))
        val.extend(rng.sample(candidates, count))
    held_out = {item.impath for item in val}
    return [item for item in selected if item.impath not in held_out], val


# ---------------------------------------------------------------------------------------------
# the portable cache


def fewshot_cache_path(
    dataset_dir: str, num_shots: int, seed: int, cache_dir: str = ""
) -> str:
    """Where ``shot_<N>-seed_<S>.json`` lives.

    ``cache_dir`` empty: ``<dataset_dir>/split_fewshot`` (upstream's place). Otherwise
    ``<cache_dir>/<basename of dataset_dir>`` so one writable directory serves all datasets.
    """
    name = f"shot_{num_shots}-seed_{seed}.json"
    if cache_dir:
        folder = os.path.join(os.path.abspath(os.path.expanduser(cache_dir)),
                              os.path.basename(os.path.normpath(dataset_dir)))
    else:
        folder = os.path.join(dataset_dir, "split_fewshot")
    return os.path.join(folder, name)


def split_fingerprint(train: Sequence[Any], val: Optional[Sequence[Any]], base_dir: str) -> str:
    """SHA-1 of the source splits (relative paths, labels, class names, in order).

    Stored in the cache so a cache made from a different split is refused, not silently used.
    Independent of where the dataset lies on disk.
    """
    digest = hashlib.sha1()
    for name, items in (("train", train), ("val", val or [])):
        digest.update(name.encode())
        for relpath, label, classname in to_entries(items, base_dir):
            digest.update(f"\0{relpath}\0{label}\0{classname}".encode())
    return digest.hexdigest()


def read_fewshot_cache(
    path: str, base_dir: str, datum_cls: type, fingerprint: str
) -> Tuple[List[Any], Optional[List[Any]]]:
    """Read a cache written by :func:`write_fewshot_cache`; items rebuilt under ``base_dir``."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise FewShotCacheError(
            f"few-shot cache {path} is not valid JSON ({err.msg} at line {err.lineno}, column "
            f"{err.colno}); delete it and it will be regenerated"
        ) from err
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        raise FewShotCacheError(
            f"few-shot cache {path} is not a {CACHE_FORMAT} file; delete it and it will be regenerated"
        )
    if data.get("source_fingerprint") != fingerprint:
        raise FewShotCacheError(
            f"few-shot cache {path} was made from a different split than the one loaded now "
            f"(the split file or its images changed). Delete it to regenerate it, or point "
            f"DATASET.FEWSHOT_CACHE_DIR to another directory."
        )

    def rebuild(entries):
        return [
            datum_cls(impath=os.path.join(base_dir, *relpath.split("/")), label=int(label),
                      classname=classname)
            for relpath, label, classname in entries
        ]

    val = data.get("val")
    return rebuild(data["train"]), (None if val is None else rebuild(val))


def write_fewshot_cache(
    path: str,
    train: Sequence[Any],
    val: Optional[Sequence[Any]],
    base_dir: str,
    *,
    num_shots: int,
    seed: int,
    fingerprint: str,
) -> None:
    """Write the selection as JSON with paths relative to ``base_dir`` (atomic: temp + rename)."""
    data: Dict[str, Any] = {
        "format": CACHE_FORMAT,
        "num_shots": num_shots,
        "seed": seed,
        "source_fingerprint": fingerprint,
        "train": to_entries(train, base_dir),
        "val": None if val is None else to_entries(val, base_dir),
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp_path = f"{path}.tmp{os.getpid()}"
    with open(tmp_path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp_path, path)


def load_or_generate_fewshot(
    train: Sequence[Any],
    val: Optional[Sequence[Any]],
    *,
    num_shots: int,
    seed: Optional[int],
    dataset_dir: str,
    cache_dir: str = "",
    allow_fewer: bool = False,
) -> Tuple[List[Any], Optional[List[Any]]]:
    """The few-shot train/val of a dataset: from the cache when present, else sampled and cached.

    ``train``/``val`` are the full splits (``val=None``: train only). Item paths must lie under
    ``dataset_dir``; the cache stores them relative to it, so it is valid on any machine. With a
    negative or missing ``seed`` the selection is random and is not cached. If the cache directory
    is not writable the selection is still returned and a warning names the directory and the key
    (``DATASET.FEWSHOT_CACHE_DIR``) that moves it.
    """
    if num_shots < 1:
        return list(train), (None if val is None else list(val))
    if seed is None or seed < 0:
        logger.warning("SEED=%s: the few-shot selection is random and is not cached", seed)
        return generate_fewshot_splits(train, val, num_shots, None, allow_fewer=allow_fewer)
    if not train:
        raise ValueError(f"few-shot sampling of {dataset_dir}: the train split is empty")
    path = fewshot_cache_path(dataset_dir, num_shots, seed, cache_dir)
    fingerprint = split_fingerprint(train, val, dataset_dir)
    if os.path.exists(path):
        logger.info("Loading few-shot split from %s", path)
        return read_fewshot_cache(path, dataset_dir, type(train[0]), fingerprint)
    train_fs, val_fs = generate_fewshot_splits(train, val, num_shots, seed, allow_fewer=allow_fewer)
    try:
        write_fewshot_cache(path, train_fs, val_fs, dataset_dir,
                            num_shots=num_shots, seed=seed, fingerprint=fingerprint)
        logger.info("Saved few-shot split to %s", path)
    except OSError as err:
        logger.warning(
            "could not write the few-shot cache %s (%s); the selection is used without caching. "
            "Set DATASET.FEWSHOT_CACHE_DIR to a writable directory to keep it.", path, err,
        )
    return train_fs, val_fs
