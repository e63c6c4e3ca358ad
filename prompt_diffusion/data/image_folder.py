"""``ImageFolder``: a user's own images, one folder per class, as a dataset like the benchmarks.

``DATASET.ROOT`` is the folder itself::

    ROOT/train/<class>/<image>     required
    ROOT/val/<class>/<image>       optional (absent: drawn from train, seeded; never the test split)
    ROOT/test/<class>/<image>      optional (absent: train is split per class, seeded, below)
    ROOT/classnames.txt            optional: ``<folder> <class name>`` per line (ImageNet's format)

Labels are the sorted positions of the ``train`` class folders; a class's name is its line in
``classnames.txt``, else the folder name with ``_`` read as a space. Without ``test/`` each class's
images (sorted, then shuffled by ``random.Random(SPLIT_SEED)``) give ``TEST_FRACTION`` to test and
``VAL_FRACTION`` to val, the rest to train: the same split on every machine. With ``test/`` and
without ``val/``, val is drawn from train by the run's seed (``fewshot.val_from_train``, as for ImageNet). Few-shot sampling
(``DATASET.NUM_SHOTS``), base/new halves (``DATASET.SUBSAMPLE_CLASSES``) and ``prompt-diffusion data
check --root ROOT --dataset ImageFolder`` are the benchmarks' (:class:`BenchmarkDataset`).

Every image is opened once (its header and data checked by PIL) when the folder is read, so a
corrupt or non-image file, an empty class folder or a val/test class that train lacks is one
error naming the path, from ``train``'s preflight (:meth:`ImageFolder.check_before_run`) before the
run folder is written.
"""
import os
import random
from functools import lru_cache
from typing import Dict, List, Sequence, Tuple

from PIL import Image
from tqdm import tqdm

from prompt_diffusion.data.benchmark import BenchmarkDataset
from prompt_diffusion.data.fewshot import VAL_FRACTION
from prompt_diffusion.data.imagenet import list_class_folders, list_images, read_classnames
from prompt_diffusion.data.splits import MAX_LISTED, DatasetSetupError, SplitEntry
from prompt_diffusion.engine import DATASET_REGISTRY

CLASSNAMES_FILE = "classnames.txt"
SPLIT_SEED = 0
TEST_FRACTION = 0.2
LAYOUT = ("{dataset_dir}/train/<class>/<image> (one folder per class; optional val/ and test/ alike, "
          "and classnames.txt with '<folder> <class name>' lines)")


def folder_classnames(dataset_dir: str, folders: Sequence[str]) -> List[Tuple[str, str]]:
    """``[(folder, class name)]``: ``classnames.txt`` when the folder has one (every class folder must
    be in it), else the folder names with ``_`` as spaces."""
    path = os.path.join(dataset_dir, CLASSNAMES_FILE)
    if not os.path.isfile(path):
        return [(folder, folder.replace("_", " ")) for folder in folders]
    names = read_classnames(path)
    unknown = [folder for folder in folders if folder not in names]
    if unknown:
        raise DatasetSetupError(f"{path}: class folder(s) {unknown[:MAX_LISTED]} of "
                                f"{os.path.join(dataset_dir, 'train')} have no line '<folder> <class name>'")
    return [(folder, names[folder]) for folder in folders]


def class_folder_entries(dataset_dir: str, split: str, labels: Dict[str, Tuple[int, str]]) -> List[SplitEntry]:
    """Entries of ``<dataset_dir>/<split>/<class>/<image>`` (paths relative to ``dataset_dir``); a
    class folder that train lacks, or one without images, is an error naming it."""
    split_dir = os.path.join(dataset_dir, split)
    entries: List[SplitEntry] = []
    for folder in list_class_folders(split_dir):
        if folder not in labels:
            raise DatasetSetupError(f"{os.path.join(split_dir, folder)}: class {folder!r} is not a class "
                                    f"folder of {os.path.join(dataset_dir, 'train')}")
        images = list_images(os.path.join(split_dir, folder))
        if not images:
            raise DatasetSetupError(f"{os.path.join(split_dir, folder)}: empty class folder (no image files)")
        label, classname = labels[folder]
        entries.extend((f"{split}/{folder}/{name}", label, classname) for name in images)
    if not entries:
        raise DatasetSetupError(f"{split_dir}: no class folders with images; expected {split}/<class>/<image>")
    return entries


def seeded_split(entries: Sequence[SplitEntry]) -> Dict[str, List[SplitEntry]]:
    """Train, val and test of one labelled list, per class: ``TEST_FRACTION`` and ``VAL_FRACTION``
    of each class's images (rounded; every class keeps at least one training image)."""
    by_label: Dict[int, List[SplitEntry]] = {}
    for entry in entries:
        by_label.setdefault(entry[1], []).append(entry)
    rng = random.Random(SPLIT_SEED)
    splits: Dict[str, List[SplitEntry]] = {"train": [], "val": [], "test": []}
    for label in sorted(by_label):
        items = sorted(by_label[label])
        rng.shuffle(items)
        n_test = min(len(items) - 1, int(len(items) * TEST_FRACTION + 0.5))
        n_val = min(len(items) - 1 - n_test, int(len(items) * VAL_FRACTION + 0.5))
        splits["test"] += items[:n_test]
        splits["val"] += items[n_test:n_test + n_val]
        splits["train"] += items[n_test + n_val:]
    for name in ("train", "val", "test"):
        splits[name].sort(key=lambda entry: (entry[1], entry[0]))
    return splits


def unreadable_images(paths: Sequence[str]) -> List[str]:
    """``"<path> (<PIL's error type>)"`` for every file PIL cannot read as an image (header and data)."""
    bad = []
    for path in tqdm(paths, desc="checking images", leave=False, disable=True if len(paths) < 500 else None):
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as error:  # PIL raises many types for bad files; each is reported, none kept
            bad.append(f"{path} ({type(error).__name__})")
    return bad


def folder_signature(dataset_dir: str) -> Tuple[Tuple[str, int, int], ...]:
    """``(path, size, mtime)`` of every file the read looks at (``train/``, ``val/``, ``test/``,
    ``classnames.txt``; not the few-shot cache beside them): what the memoised read depends on."""
    paths = [os.path.join(dataset_dir, CLASSNAMES_FILE)] if os.path.isfile(os.path.join(dataset_dir, CLASSNAMES_FILE)) else []
    for split in ("train", "val", "test"):
        for top, _, files in os.walk(os.path.join(dataset_dir, split)):
            paths += [os.path.join(top, name) for name in files]
    return tuple(sorted((path, os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in paths))


@lru_cache(maxsize=4)
def _read_folder(dataset_dir: str, signature: Tuple[Tuple[str, int, int], ...]) -> Dict[str, List[SplitEntry]]:
    """The splits of an image folder, every image verified; memoised on the folder's files, so the
    preflight's read serves the dataset's build in the same process."""
    train_dir = os.path.join(dataset_dir, "train")
    folders = folder_classnames(dataset_dir, list_class_folders(train_dir))
    labels = {folder: (label, classname) for label, (folder, classname) in enumerate(folders)}
    entries = {"train": class_folder_entries(dataset_dir, "train", labels)}
    for split in ("val", "test"):
        if os.path.isdir(os.path.join(dataset_dir, split)):
            entries[split] = class_folder_entries(dataset_dir, split, labels)
    if "test" not in entries:
        entries = {**seeded_split(entries["train"]), **({"val": entries["val"]} if "val" in entries else {})}
        if not entries["val"]:
            del entries["val"]
    bad = unreadable_images([os.path.join(dataset_dir, relpath) for items in entries.values() for relpath, _, _ in items])
    if bad:
        raise DatasetSetupError(f"not a readable image: {bad[0]}; remove or replace it" if len(bad) == 1 else
                                f"{len(bad)} files under {dataset_dir} are not readable images: "
                                + "; ".join(bad[:MAX_LISTED]) + "; remove or replace them")
    return entries


@DATASET_REGISTRY.register()
class ImageFolder(BenchmarkDataset):
    """A folder of one's own images: ``DATASET.ROOT/train/<class>/<image>`` (+ optional val/, test/)."""

    dataset_dir = ""  # DATASET.ROOT is the dataset's folder
    image_subdir = ""
    listed_from_disk = True
    required = (("train", "put the images there as " + LAYOUT),)

    @classmethod
    def locate(cls, root: str) -> str:
        if not os.path.isdir(root):
            raise DatasetSetupError(f"ImageFolder: DATASET.ROOT {root} is not a folder; expected " + LAYOUT.format(
                dataset_dir=root))
        return os.path.normpath(root)

    @classmethod
    def require_layout(cls, dataset_dir: str) -> None:
        if not os.path.isdir(os.path.join(dataset_dir, "train")):
            raise DatasetSetupError(f"ImageFolder: {os.path.join(dataset_dir, 'train')} not found; expected "
                                    + LAYOUT.format(dataset_dir=dataset_dir))

    @classmethod
    def read_entries(cls, dataset_dir: str) -> Dict[str, List[SplitEntry]]:
        dataset_dir = os.path.abspath(dataset_dir)
        return {split: list(items) for split, items in _read_folder(dataset_dir, folder_signature(dataset_dir)).items()}

    @classmethod
    def check_before_run(cls, cfg) -> None:
        """The layout check and the whole read (every image verified): bad input fails before the
        run writes anything."""
        cls.read_checked_entries(cls.locate(os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))))
