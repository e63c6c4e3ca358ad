"""ImageNet and its four test-only variants (V2, Sketch, A, R), read from class folders.

Class names come from CoOp's ``classnames.txt`` (``<wnid> <class name>`` per line, CLIP's names).
ImageNet, Sketch, A and R label the class folders in sorted order; ImageNetV2's folders are named
``0..K-1`` after the line order of ``classnames.txt``. Image files inside a folder are taken in
sorted order (upstream uses ``os.listdir`` order, which differs between file systems; sorting
makes the ImageNet few-shot selection the same on every machine).
"""
import os
from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple

from tqdm import tqdm

from prompt_diffusion.data.benchmark import BenchmarkDataset
from prompt_diffusion.data.splits import DatasetSetupError, SplitEntry, SplitFileError
from prompt_diffusion.engine import DATASET_REGISTRY

CLASSNAMES_HOWTO = ("download classnames.txt from https://drive.google.com/file/d/"
                    "1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF/view (link in CoOp's DATASETS.md) into "
                    "{dataset_dir} (the variants use the same file as ImageNet: copy it)")


def read_classnames(path: str) -> "OrderedDict[str, str]":
    """``classnames.txt`` -> ``{wnid folder: class name}`` in file order."""
    classnames: "OrderedDict[str, str]" = OrderedDict()
    with open(path, "r", encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.strip().split(" ")
            if fields == [""]:
                continue
            if len(fields) < 2:
                raise SplitFileError(f"{path}:{line_no}: expected '<folder> <class name>', got "
                                     f"{line.strip()!r}")
            classnames[fields[0]] = " ".join(fields[1:])
    return classnames


def list_class_folders(image_dir: str) -> List[str]:
    """Sorted non-hidden sub-folders of ``image_dir`` (files such as README.txt are skipped)."""
    return sorted(entry.name for entry in os.scandir(image_dir)
                  if entry.is_dir() and not entry.name.startswith("."))


def list_images(folder: str) -> List[str]:
    """Sorted non-hidden file names in ``folder``."""
    return sorted(entry.name for entry in os.scandir(folder)
                  if entry.is_file() and not entry.name.startswith("."))


def folder_entries(
    image_dir: str, subdir: str, folders: Sequence[Tuple[str, str]], desc: str
) -> List[SplitEntry]:
    """Entries of ``<image_dir>/<subdir>/<folder>/<image>``; label = position in ``folders``.

    ``folders`` is ``[(folder name, class name), ...]``; paths are relative to ``image_dir``.
    """
    entries: List[SplitEntry] = []
    for label, (folder, classname) in enumerate(tqdm(folders, desc=desc, leave=False,
                                                      disable=True if len(folders) < 100 else None)):
        relfolder = f"{subdir}/{folder}" if subdir else folder
        folder_path = os.path.join(image_dir, relfolder)
        if not os.path.isdir(folder_path):
            raise DatasetSetupError(f"class folder not found: {folder_path}")
        entries.extend((f"{relfolder}/{name}", label, classname) for name in list_images(folder_path))
    return entries


def named_folders(folders: Sequence[str], classnames: Dict[str, str], source: str) -> List[Tuple[str, str]]:
    """``[(folder, class name)]``; a folder absent from ``classnames.txt`` is an error."""
    unknown = [folder for folder in folders if folder not in classnames]
    if unknown:
        raise DatasetSetupError(
            f"{len(unknown)} class folder(s) of {source} are not in classnames.txt, e.g. "
            f"{unknown[:5]}: use CoOp's ImageNet classnames.txt (1000 wnids)"
        )
    return [(folder, classnames[folder]) for folder in folders]


@DATASET_REGISTRY.register()
class ImageNet(BenchmarkDataset):
    """ILSVRC-2012: train from ``images/train``, test from ``images/val``; its val split is drawn from
    train (``BenchmarkDataset``), never the test images (upstream validates on them)."""

    dataset_dir = "imagenet"
    image_subdir = "images"
    listed_from_disk = True
    required = (
        ("images/train", "extract the ILSVRC-2012 training set (1,000 wnid folders) to "
                         "{dataset_dir}/images/train, or symlink it there"),
        ("images/val", "extract the ILSVRC-2012 validation set, sorted into 1,000 wnid folders, to "
                       "{dataset_dir}/images/val, or symlink it there"),
        ("classnames.txt", CLASSNAMES_HOWTO),
    )

    @classmethod
    def read_entries(cls, dataset_dir: str) -> Dict[str, List[SplitEntry]]:
        classnames = read_classnames(os.path.join(dataset_dir, "classnames.txt"))
        image_dir = os.path.join(dataset_dir, cls.image_subdir)
        train_folders = list_class_folders(os.path.join(image_dir, "train"))
        val_folders = list_class_folders(os.path.join(image_dir, "val"))
        if train_folders != val_folders:
            only_train = sorted(set(train_folders) - set(val_folders))
            only_val = sorted(set(val_folders) - set(train_folders))
            raise DatasetSetupError(
                f"{image_dir}: train and val must have the same class folders (labels are their "
                f"sorted positions); only in train: {only_train[:5]}, only in val: {only_val[:5]}"
            )
        folders = named_folders(train_folders, classnames, os.path.join(image_dir, "train"))
        return {
            "train": folder_entries(image_dir, "train", folders, "ImageNet train folders"),
            "test": folder_entries(image_dir, "val", folders, "ImageNet val folders"),
        }


class ImageNetVariant(BenchmarkDataset):
    """A test-only ImageNet variant with wnid class folders labelled in sorted order."""

    test_only = True
    listed_from_disk = True

    @classmethod
    def read_entries(cls, dataset_dir: str) -> Dict[str, List[SplitEntry]]:
        classnames = read_classnames(os.path.join(dataset_dir, "classnames.txt"))
        image_dir = os.path.join(dataset_dir, cls.image_subdir)
        folders = named_folders(list_class_folders(image_dir), classnames, image_dir)
        return {"test": folder_entries(image_dir, "", folders, f"{cls.__name__} folders")}


def _variant_required(image_subdir: str, how: str) -> Tuple[Tuple[str, str], ...]:
    return ((image_subdir, how), ("classnames.txt", CLASSNAMES_HOWTO))


@DATASET_REGISTRY.register()
class ImageNetSketch(ImageNetVariant):
    """ImageNet-Sketch: 1,000 wnid folders."""

    dataset_dir = "imagenet-sketch"
    image_subdir = "images"
    required = _variant_required("images", "download ImageNet-Sketch from "
                                 "https://github.com/HaohanWang/ImageNet-Sketch and extract it so "
                                 "that its wnid folders are in {dataset_dir}/images")


@DATASET_REGISTRY.register()
class ImageNetA(ImageNetVariant):
    """ImageNet-A: 200 wnid folders, names from ImageNet's ``classnames.txt``."""

    dataset_dir = "imagenet-adversarial"
    image_subdir = "imagenet-a"
    required = _variant_required("imagenet-a", "download imagenet-a.tar from "
                                 "https://github.com/hendrycks/natural-adv-examples and extract it "
                                 "in {dataset_dir}")


@DATASET_REGISTRY.register()
class ImageNetR(ImageNetVariant):
    """ImageNet-R: 200 wnid folders, names from ImageNet's ``classnames.txt``."""

    dataset_dir = "imagenet-rendition"
    image_subdir = "imagenet-r"
    required = _variant_required("imagenet-r", "download imagenet-r.tar from "
                                 "https://github.com/hendrycks/imagenet-r and extract it in "
                                 "{dataset_dir}")


@DATASET_REGISTRY.register()
class ImageNetV2(ImageNetVariant):
    """ImageNetV2 matched-frequency: folders ``0..K-1`` in the line order of ``classnames.txt``."""

    dataset_dir = "imagenetv2"
    image_subdir = "imagenetv2-matched-frequency-format-val"
    required = _variant_required(
        "imagenetv2-matched-frequency-format-val",
        "download https://s3-us-west-2.amazonaws.com/imagenetv2public/"
        "imagenetv2-matched-frequency.tar.gz and extract it in {dataset_dir}",
    )

    @classmethod
    def read_entries(cls, dataset_dir: str) -> Dict[str, List[SplitEntry]]:
        classnames = read_classnames(os.path.join(dataset_dir, "classnames.txt"))
        image_dir = os.path.join(dataset_dir, cls.image_subdir)
        folders = [(str(label), name) for label, name in enumerate(classnames.values())]
        return {"test": folder_entries(image_dir, "", folders, "ImageNetV2 folders")}
