"""The base class of the 15 CoOp benchmark datasets: layout checks, few-shot, base/new classes.

Every dataset reads the directory layout of CoOp's ``DATASETS.md`` under ``DATASET.ROOT``. A
subclass says where its files are (``dataset_dir``, ``image_subdir``, ``required``) and how to read
its splits into ``(path relative to the image dir, label, classname)`` entries
(:meth:`BenchmarkDataset.read_entries`); this class turns them into Dassl ``Datum`` lists, applies
``DATASET.NUM_SHOTS`` (few-shot train, val with ``min(shots, 4)``, as CoOp) and
``DATASET.SUBSAMPLE_CLASSES``. A dataset without a val split (ImageNet, an image folder without
``val/``) gets one drawn from its training images (``fewshot.val_from_train``), never its test split. The same ``read_entries`` serves ``prompt-diffusion data check``,
which needs no config.
"""
import json
import logging
import os
import textwrap
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

from prompt_diffusion.data.fewshot import load_or_generate_fewshot, subsample_classes, val_from_train
from prompt_diffusion.data.splits import (
    MAX_LISTED, SPLIT_NAMES, DatasetSetupError, SplitEntry, check_label_names, entries_to_data,
    load_split_entries, require_images,
)
from prompt_diffusion.engine import DatasetBase, Datum

logger = logging.getLogger(__name__)

COOP_DATASETS_MD = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"


@lru_cache(maxsize=1)
def expected_split_counts() -> Dict[str, Dict[str, Optional[int]]]:
    """``{dataset name: {"classes", "train", "val", "test"}}`` from ``split_counts.json``."""
    path = os.path.join(os.path.dirname(__file__), "split_counts.json")
    with open(path, "r", encoding="utf-8") as f:
        counts = json.load(f)
    counts.pop("_source")
    return counts


def dataset_key(cfg, key: str):
    """``cfg.DATASET.<key>``; a config without the project's keys gets an error saying so."""
    if key not in cfg.DATASET:
        raise KeyError(f"cfg.DATASET.{key} is missing: build the config with "
                       f"prompt_diffusion.config.extend_cfg(cfg), which adds the dataset keys")
    return cfg.DATASET[key]


class BenchmarkDataset(DatasetBase):
    """A CoOp benchmark dataset built from ``cfg.DATASET`` (ROOT, NUM_SHOTS, SUBSAMPLE_CLASSES ...).

    Class attributes a subclass sets:
      ``dataset_dir``  folder under ``DATASET.ROOT`` (after construction, the instance attribute of
                       the same name is the full path, as upstream)
      ``image_subdir`` folder under the dataset dir that split paths are relative to
      ``required``     ``(path relative to the dataset dir, how to get it)`` pairs; the text may use
                       ``{dataset_dir}`` for the full path
      ``test_only``    the ImageNet variants: train and test are the same list, no few-shot
      ``listed_from_disk`` entries come from listing folders, so no image-exists check is needed
    """

    dataset_dir = ""
    image_subdir = ""
    required: Tuple[Tuple[str, str], ...] = ()
    test_only = False
    listed_from_disk = False

    def __init__(self, cfg):
        name = type(self).__name__
        root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
        self.dataset_dir = self.locate(root)
        self.image_dir = os.path.join(self.dataset_dir, self.image_subdir)
        entries = self.read_checked_entries(self.dataset_dir)
        data = {split: entries_to_data(items, self.image_dir, Datum) for split, items in entries.items()}

        if self.test_only:
            subsample = dataset_key(cfg, "SUBSAMPLE_CLASSES")
            if subsample != "all":
                logger.warning("%s is test-only: DATASET.SUBSAMPLE_CLASSES=%r is ignored (as upstream)",
                               name, subsample)
            super().__init__(train_x=data["test"], test=data["test"])
            return

        full_train, val, test = data["train"], data.get("val"), data["test"]
        train, val = load_or_generate_fewshot(
            full_train, val,
            num_shots=cfg.DATASET.NUM_SHOTS, seed=cfg.SEED, dataset_dir=self.dataset_dir,
            cache_dir=dataset_key(cfg, "FEWSHOT_CACHE_DIR"),
            allow_fewer=dataset_key(cfg, "FEWSHOT_ALLOW_FEWER"),
        )
        if val is None:  # no val split: drawn from train (upstream reads ImageNet's test images as val)
            train, val = val_from_train(full_train, train, cfg.DATASET.NUM_SHOTS, cfg.SEED)
        train, val, test = subsample_classes(train, val, test, subsample=dataset_key(cfg, "SUBSAMPLE_CLASSES"))
        super().__init__(train_x=train, val=val or None, test=test)

    # ---- layout -------------------------------------------------------------------------------

    @classmethod
    def locate(cls, root: str) -> str:
        """The dataset's folder under ``root``; raises :class:`DatasetSetupError` if absent."""
        dataset_dir = os.path.join(root, cls.dataset_dir)
        if not os.path.isdir(dataset_dir):
            raise DatasetSetupError(
                f"{cls.__name__}: dataset folder not found: {dataset_dir}\n"
                f"  fix: create it under DATASET.ROOT={root} with:\n"
                + textwrap.indent(cls.setup_text(dataset_dir), "    ")
            )
        return dataset_dir

    @classmethod
    def setup_text(cls, dataset_dir: str, only: Optional[Sequence[str]] = None) -> str:
        """One line per required path (or those in ``only``): where it goes and how to get it."""
        return "\n".join(
            f"{os.path.join(dataset_dir, path)}: {how.format(dataset_dir=dataset_dir)}"
            for path, how in cls.required if only is None or path in only
        )

    @classmethod
    def missing_required(cls, dataset_dir: str) -> List[str]:
        """The required paths (relative to the dataset dir) that do not exist."""
        return [path for path, _ in cls.required if not os.path.exists(os.path.join(dataset_dir, path))]

    @classmethod
    def require_layout(cls, dataset_dir: str) -> None:
        """Raise :class:`DatasetSetupError` listing every missing required path and its fix."""
        missing = cls.missing_required(dataset_dir)
        if missing:
            raise DatasetSetupError(
                f"{cls.__name__}: {len(missing)} required path(s) missing in {dataset_dir}; fix:\n"
                + textwrap.indent(cls.setup_text(dataset_dir, only=missing), "    ")
                + f"\n  (layouts: {COOP_DATASETS_MD})"
            )

    @classmethod
    def check_before_run(cls, cfg) -> None:
        """The cheap layout checks (folder and required files), which ``train`` runs before it writes
        the run folder; reading the splits waits for the dataset's build."""
        cls.require_layout(cls.locate(os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))))

    # ---- reading ------------------------------------------------------------------------------

    @classmethod
    def read_entries(cls, dataset_dir: str) -> Dict[str, List[SplitEntry]]:
        """``{"train", "val", "test"}`` (test-only datasets: ``{"test"}``) -> split entries.

        Paths are relative to ``<dataset_dir>/<image_subdir>``. Called after
        :meth:`require_layout`, so required files exist.
        """
        raise NotImplementedError(f"{cls.__name__} must implement read_entries")

    @classmethod
    def read_checked_entries(cls, dataset_dir: str) -> Dict[str, List[SplitEntry]]:
        """:meth:`read_entries` after the layout check, every listed image checked on disk."""
        cls.require_layout(dataset_dir)
        entries = cls.read_entries(dataset_dir)
        if not cls.listed_from_disk:
            require_images([entry for items in entries.values() for entry in items],
                           os.path.join(dataset_dir, cls.image_subdir),
                           f"{cls.__name__} ({dataset_dir})",
                           fix=textwrap.indent(cls.setup_text(dataset_dir), "    "))
        cls.warn_renamed_classes(entries)
        return entries

    @classmethod
    def expected_classname(cls, relpath: str) -> Optional[str]:
        """The class name upstream's rule gives the image at ``relpath``; None if not derivable."""
        return None

    @classmethod
    def classname_mismatches(cls, entries: Dict[str, List[SplitEntry]]) -> List[Tuple[str, str, str]]:
        """``(relpath, name in the split, name by upstream's rule)`` where the two differ."""
        found = []
        for items in entries.values():
            for relpath, _, classname in items:
                expected = cls.expected_classname(relpath)
                if expected is not None and expected != classname:
                    found.append((relpath, classname, expected))
        return found

    @classmethod
    def warn_renamed_classes(cls, entries: Dict[str, List[SplitEntry]]) -> None:
        """Warn when class names differ from upstream's naming rule (prompts would differ)."""
        mismatches = cls.classname_mismatches(entries)
        if mismatches:
            examples = "; ".join(f"{path}: {got!r} (upstream: {want!r})"
                                 for path, got, want in mismatches[:MAX_LISTED])
            logger.warning("%s: %d images have class names that differ from upstream's naming rule, "
                           "so text prompts differ from published runs, e.g. %s",
                           cls.__name__, len(mismatches), examples)


class SplitFileDataset(BenchmarkDataset):
    """A dataset whose splits come from CoOp's ``split_zhou_<Name>.json`` (paths under the image dir)."""

    split_file = ""

    @classmethod
    def read_entries(cls, dataset_dir: str) -> Dict[str, List[SplitEntry]]:
        path = os.path.join(dataset_dir, cls.split_file)
        fix = cls.setup_text(dataset_dir, only=[cls.split_file])
        splits = load_split_entries(path, fix)
        check_label_names(splits, path)
        return splits


def split_file_howto(split_file: str, drive_id: str) -> str:
    """How to get a CoOp split file (Google Drive link of CoOp's DATASETS.md)."""
    return (f"download {split_file} from https://drive.google.com/file/d/{drive_id}/view "
            f"(link in {COOP_DATASETS_MD}) and put it in {{dataset_dir}}")


def count_classes(entries: Dict[str, List[SplitEntry]]) -> int:
    """Number of distinct labels over all splits."""
    return len({label for items in entries.values() for _, label, _ in items})


def split_sizes(entries: Dict[str, List[SplitEntry]]) -> Dict[str, Optional[int]]:
    """``{"train", "val", "test"}`` -> number of entries (None where the split does not exist)."""
    return {name: (len(entries[name]) if name in entries else None) for name in SPLIT_NAMES}
