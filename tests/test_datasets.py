"""The 15 CoOp benchmark datasets on tiny generated trees in CoOp's exact layouts.

Covers: class counts, labels and class names (renaming rules included) for all 15; few-shot
selection equal to Dassl's rule for seeds 1-3; the portable few-shot cache; base/new subsampling;
and the message of every bad input. ``build_tree`` is reused by ``test_datasets_check.py``.
"""
import json
import logging
import os
import random
import re
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import pytest
from PIL import Image

from prompt_diffusion.config import extend_cfg
from prompt_diffusion.data import BENCHMARK_DATASETS
from prompt_diffusion.data.fewshot import FewShotCacheError, FewShotError, subsample_classes
from prompt_diffusion.data.splits import DatasetSetupError, SplitFileError, read_split, write_split
from prompt_diffusion.engine import DATASET_REGISTRY, DatasetWrapper, Datum, get_cfg_default

# images per class in train / val / test of the generated split files
PER_SPLIT = {"train": 6, "val": 5, "test": 2}

# registry name -> (raw class keys as they appear in paths, class names upstream gives them)
SPLIT_FILE_CLASSES = {
    "OxfordPets": (["Abyssinian", "american_bulldog", "Bengal"],
                   ["abyssinian", "american_bulldog", "bengal"]),
    "OxfordFlowers": (["1", "2", "3"], ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]),
    "StanfordCars": (["1", "2", "3"], ["2012 Tesla Model S Sedan", "2012 BMW M3 Coupe", "1993 Volvo 240 Sedan"]),
    "Food101": (["apple_pie", "baby_back_ribs", "baklava"], ["apple_pie", "baby_back_ribs", "baklava"]),
    "DescribableTextures": (["banded", "blotchy", "braided"], ["banded", "blotchy", "braided"]),
    "EuroSAT": (["AnnualCrop", "Forest", "HerbaceousVegetation", "SeaLake"],
                ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Sea or Lake"]),
    "SUN397": (["a/abbey", "a/apartment_building/outdoor", "b/bedroom"],
               ["abbey", "outdoor apartment_building", "bedroom"]),
    "Caltech101": (["Faces", "Leopards", "Motorbikes", "accordion", "airplanes"],
                   ["face", "leopard", "motorbike", "accordion", "airplane"]),
    "UCF101": (["Apply_Eye_Makeup", "Apply_Lipstick", "Archery", "Baby_Crawling"],
               ["Apply_Eye_Makeup", "Apply_Lipstick", "Archery", "Baby_Crawling"]),
}
FGVC_VARIANTS = ["707-320", "727-200", "A300B4", "Cessna 172"]
WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475"]
WNID_NAMES = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark"]
# the variants' class folders (ImageNetV2 uses 0..4 in classnames.txt order)
VARIANT_WNIDS = {"ImageNet": WNIDS[:3], "ImageNetSketch": WNIDS, "ImageNetA": [WNIDS[1], WNIDS[3]],
                 "ImageNetR": [WNIDS[0], WNIDS[2], WNIDS[4]]}


def write_image(path: Path, shade: int) -> None:
    """A tiny PNG (the file name may say .jpg: PIL reads by content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade % 256, 90, 160)).save(path, format="PNG")


def _split_path(name: str, key: str, split: str, index: int, counter: int) -> str:
    """Where CoOp's layout puts image ``index`` of class ``key`` (relative to the image dir)."""
    if name == "OxfordPets":
        return f"{key}_{counter}.jpg"
    if name == "OxfordFlowers":
        return f"image_{counter:05d}.jpg"
    if name == "StanfordCars":
        return f"{'cars_test' if split == 'test' else 'cars_train'}/{counter:05d}.jpg"
    if name == "UCF101":
        return f"{key}/v_{key.replace('_', '')}_g{counter:02d}_c01.jpg"
    return f"{key}/{key.split('/')[-1]}_{counter:04d}.jpg"


def build_tree(root: Path, name: str) -> List[str]:
    """Write dataset ``name`` under ``root`` in CoOp's layout; returns its class names by label."""
    cls = BENCHMARK_DATASETS[name]
    dataset_dir = root / cls.dataset_dir
    image_dir = dataset_dir / cls.image_subdir
    if name in SPLIT_FILE_CLASSES:
        keys, classnames = SPLIT_FILE_CLASSES[name]
        split: Dict[str, list] = {"train": [], "val": [], "test": []}
        counter = 0
        for label, (key, classname) in enumerate(zip(keys, classnames)):
            for split_name, count in PER_SPLIT.items():
                for index in range(count):
                    counter += 1
                    relpath = _split_path(name, key, split_name, index, counter)
                    write_image(image_dir / relpath, counter)
                    split[split_name].append([relpath, label, classname])
        (dataset_dir / cls.split_file).write_text(json.dumps(split))
        return classnames
    if name == "FGVCAircraft":
        (dataset_dir / "variants.txt").parent.mkdir(parents=True, exist_ok=True)
        (dataset_dir / "variants.txt").write_text("\n".join(FGVC_VARIANTS) + "\n")
        counter = 1000
        for split_name, count in PER_SPLIT.items():
            lines = []
            for variant in FGVC_VARIANTS:
                for _ in range(count):
                    counter += 1
                    write_image(image_dir / f"{counter:07d}.jpg", counter)
                    lines.append(f"{counter:07d} {variant}")
            (dataset_dir / f"images_variant_{split_name}.txt").write_text("\n".join(lines) + "\n")
        return FGVC_VARIANTS
    dataset_dir.mkdir(parents=True, exist_ok=True)
    (dataset_dir / "classnames.txt").write_text(
        "".join(f"{wnid} {cname}\n" for wnid, cname in zip(WNIDS, WNID_NAMES)))
    if name == "ImageNetV2":
        for label in range(len(WNIDS)):
            for index in range(2):
                write_image(image_dir / str(label) / f"{index}.jpeg", label)
        return WNID_NAMES
    wnids = VARIANT_WNIDS[name]
    subdirs = {"train": PER_SPLIT["train"], "val": 3} if name == "ImageNet" else {"": 2}
    for subdir, count in subdirs.items():
        for wnid in wnids:
            for index in range(count):
                write_image(image_dir / subdir / wnid / f"{wnid}_{index}.JPEG", index)
    if name == "ImageNetR":
        (image_dir / "README.txt").write_text("not a class\n")
    return [WNID_NAMES[WNIDS.index(wnid)] for wnid in wnids]


def make_cfg(root: Path, name: str, num_shots: int = -1, seed: int = 1, **dataset_keys):
    """A real Dassl default config with the project's keys, set for one dataset."""
    cfg = extend_cfg(get_cfg_default())
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = num_shots
    cfg.SEED = seed
    for key, value in dataset_keys.items():
        cfg.DATASET[key] = value
    return cfg


def load(root: Path, name: str, **kwargs):
    return DATASET_REGISTRY.get(name)(make_cfg(root, name, **kwargs))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """All 15 datasets under one root (read-only use: tests that break things copy it)."""
    root = tmp_path_factory.mktemp("coop_data")
    for name in BENCHMARK_DATASETS:
        build_tree(root, name)
    return root


def copy_dataset(tree: Path, tmp_path: Path, name: str) -> Path:
    """A private copy of one dataset (for tests that change files); returns the new root."""
    folder = BENCHMARK_DATASETS[name].dataset_dir
    shutil.copytree(tree / folder, tmp_path / "root" / folder)
    return tmp_path / "root"


# ---- loading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BENCHMARK_DATASETS))
def test_dataset_loads_with_upstream_classes(tmp_path, name):
    classnames = build_tree(tmp_path, name)
    dataset = load(tmp_path, name)
    assert dataset.num_classes == len(classnames)
    assert dataset.classnames == classnames
    test_only = BENCHMARK_DATASETS[name].test_only
    for items in (dataset.train_x, dataset.test) if test_only else (dataset.train_x, dataset.val, dataset.test):
        assert items
        for item in items:
            assert dataset.lab2cname[item.label] == item.classname
            assert os.path.isfile(item.impath)
    if test_only:  # upstream: train_x = test = the data, no val
        assert dataset.train_x is dataset.test and dataset.val is None
    elif name == "ImageNet":  # its val split is drawn from train (upstream's is the test set): no test image in it
        val, test = {d.impath for d in dataset.val}, {d.impath for d in dataset.test}
        assert not val & test and not val & {d.impath for d in dataset.train_x}
        assert all("/images/train/" in path for path in val) and len(dataset.test) == 3 * 3
        assert len(dataset.train_x) + len(dataset.val) == 3 * PER_SPLIT["train"]
    else:
        sizes = [len(dataset.train_x), len(dataset.val), len(dataset.test)]
        assert sizes == [len(classnames) * PER_SPLIT[s] for s in ("train", "val", "test")]


def test_imagenet_variant_labels_follow_folders(tree):
    a = load(tree, "ImageNetA")  # 2 of the 5 wnids: labels are their sorted positions
    assert a.classnames == ["goldfish", "tiger shark"]
    v2 = load(tree, "ImageNetV2")  # folder i is line i of classnames.txt
    assert {(os.path.basename(os.path.dirname(d.impath)), d.label) for d in v2.test} == {
        (str(i), i) for i in range(5)}


def test_every_dataset_has_a_config():
    import yaml

    configs = Path(__file__).resolve().parents[1] / "configs" / "datasets"
    names = {yaml.safe_load(path.read_text())["DATASET"]["NAME"] for path in configs.glob("*.yaml")}
    assert set(BENCHMARK_DATASETS) <= names  # other files (the toy world) may sit beside them


def test_split_file_round_trip(tmp_path, tree):
    dataset = load(tree, "Caltech101")
    image_dir = tree / "caltech-101" / "101_ObjectCategories"
    write_split(dataset.train_x, dataset.val, dataset.test, str(tmp_path / "split.json"), str(image_dir))
    text = (tmp_path / "split.json").read_text()
    assert str(tree) not in text and '"Faces/Faces_0001.jpg",' in text
    again = read_split(str(tmp_path / "split.json"), str(image_dir), Datum)
    for before, after in zip((dataset.train_x, dataset.val, dataset.test), again):
        assert [(d.impath, d.label, d.classname) for d in before] == [
            (d.impath, d.label, d.classname) for d in after]


# ---- few-shot ----------------------------------------------------------------------------------


def dassl_fewshot(items, num_shots):
    """Dassl's generate_fewshot_dataset, written out: global ``random``, classes in first-seen order."""
    tracker = defaultdict(list)
    for item in items:
        tracker[item.label].append(item)
    selected = []
    for class_items in tracker.values():
        selected.extend(random.sample(class_items, num_shots) if len(class_items) >= num_shots
                        else class_items)
    return selected


def paths(items) -> List[str]:
    return [item.impath for item in items]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("name", ["Caltech101", "FGVCAircraft", "ImageNet"])
def test_fewshot_equals_dassl_rule(tmp_path, tree, name, seed):
    root = copy_dataset(tree, tmp_path, name)
    full = load(root, name)
    random.seed(seed)  # Dassl's set_random_seed, then train, then val with min(shots, 4)
    everything = full.train_x  # ImageNet's full train: train_x and the val drawn from it, in reading order
    if name == "ImageNet":
        everything = sorted(full.train_x + full.val, key=lambda d: (d.label, d.impath))
    expected_train = dassl_fewshot(everything, 4)

    dataset = load(root, name, num_shots=4, seed=seed)
    assert paths(dataset.train_x) == paths(expected_train)
    if name == "ImageNet":  # up to 4 per class of the training images the selection left out, none of test
        left_out = set(paths(everything)) - set(paths(expected_train))
        assert dataset.val and set(paths(dataset.val)) <= left_out
    else:
        assert paths(dataset.val) == paths(dassl_fewshot(full.val, 4))
    assert paths(dataset.test) == paths(full.test)
    # second run reads the cache and gives the same selection
    assert paths(load(root, name, num_shots=4, seed=seed).train_x) == paths(expected_train)


def test_fewshot_cache_is_portable(tmp_path, tree):
    root = copy_dataset(tree, tmp_path, "EuroSAT")
    first = load(root, "EuroSAT", num_shots=2, seed=1)
    cache = root / "eurosat" / "split_fewshot" / "shot_2-seed_1.json"
    text = cache.read_text()
    assert str(tmp_path) not in text  # relative paths only
    data = json.loads(text)
    assert data["train"][0][0].startswith("2750/AnnualCrop/") and len(data["val"]) == 4 * 2

    # a cache written elsewhere (here: reordered by hand) is what the loader uses
    data["train"] = data["train"][::-1]
    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved)
    (moved / "eurosat" / "split_fewshot" / "shot_2-seed_1.json").write_text(json.dumps(data))
    second = load(moved, "EuroSAT", num_shots=2, seed=1)
    relative = [os.path.relpath(p, moved) for p in paths(second.train_x)]
    assert relative == [os.path.relpath(p, root) for p in paths(first.train_x)][::-1]


def test_fewshot_cache_dir_for_read_only_roots(tmp_path, tree, caplog):
    root = copy_dataset(tree, tmp_path, "DescribableTextures")
    cache_dir = tmp_path / "cache"
    dataset = load(root, "DescribableTextures", num_shots=2, FEWSHOT_CACHE_DIR=str(cache_dir))
    assert (cache_dir / "dtd" / "shot_2-seed_1.json").is_file()
    assert not (root / "dtd" / "split_fewshot").exists()
    # an unwritable cache place: the selection is still made, and the warning names the key
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING):
        again = load(root, "DescribableTextures", num_shots=2, FEWSHOT_CACHE_DIR=str(blocker))
    assert paths(again.train_x) == paths(dataset.train_x)
    assert "DATASET.FEWSHOT_CACHE_DIR" in caplog.text


def test_stale_fewshot_cache_is_refused(tmp_path, tree):
    root = copy_dataset(tree, tmp_path, "Food101")
    load(root, "Food101", num_shots=2)
    split_path = root / "food-101" / "split_zhou_Food101.json"
    split = json.loads(split_path.read_text())
    split["train"] = split["train"][1:]
    split_path.write_text(json.dumps(split))
    with pytest.raises(FewShotCacheError, match="shot_2-seed_1.json.*different split"):
        load(root, "Food101", num_shots=2)


def test_too_many_shots_names_the_class_and_falls_back_only_when_asked(tmp_path, tree):
    root = copy_dataset(tree, tmp_path, "OxfordPets")
    with pytest.raises(FewShotError, match=r"train: class 0 \('abyssinian'\) has only 6 images.*"
                                           r"DATASET.FEWSHOT_ALLOW_FEWER"):
        load(root, "OxfordPets", num_shots=8)
    dataset = load(root, "OxfordPets", num_shots=8, FEWSHOT_ALLOW_FEWER=True)
    assert len(dataset.train_x) == 3 * PER_SPLIT["train"] and len(dataset.val) == 3 * 4


# ---- base / new --------------------------------------------------------------------------------


@pytest.mark.parametrize("name, n_base, n_new", [("Caltech101", 3, 2), ("UCF101", 2, 2)])
def test_base_new_split_and_relabelling(tree, name, n_base, n_new):
    everything = load(tree, name)
    base = load(tree, name, SUBSAMPLE_CLASSES="base")
    new = load(tree, name, SUBSAMPLE_CLASSES="new")
    assert (base.num_classes, new.num_classes) == (n_base, n_new)
    assert base.classnames == everything.classnames[:n_base]
    assert new.classnames == everything.classnames[n_base:]
    for dataset, offset in ((base, 0), (new, n_base)):
        for split in ("train_x", "val", "test"):
            items = getattr(dataset, split)
            assert sorted({item.label for item in items}) == list(range(dataset.num_classes))
            assert all(everything.lab2cname[item.label + offset] == item.classname for item in items)
            assert len(items) == dataset.num_classes * len(getattr(everything, split)) // everything.num_classes


def test_subsample_rejects_unknown_choice(tree):
    with pytest.raises(ValueError, match="DATASET.SUBSAMPLE_CLASSES must be one of.*'novel'"):
        subsample_classes(load(tree, "DescribableTextures").train_x, subsample="novel")


# ---- bad input ---------------------------------------------------------------------------------


def test_missing_dataset_dir_names_path_and_files(tmp_path):
    with pytest.raises(DatasetSetupError) as err:
        load(tmp_path, "Caltech101")
    message = str(err.value)
    assert str(tmp_path / "caltech-101") in message
    assert "split_zhou_Caltech101.json" in message and "101_ObjectCategories.tar.gz" in message


def test_missing_split_file_names_path_and_download(tmp_path, tree):
    root = copy_dataset(tree, tmp_path, "SUN397")
    (root / "sun397" / "split_zhou_SUN397.json").unlink()
    with pytest.raises(DatasetSetupError) as err:
        load(root, "SUN397")
    message = str(err.value)
    assert f"{root / 'sun397' / 'split_zhou_SUN397.json'}: download split_zhou_SUN397.json" in message
    assert "drive.google.com" in message and "SUN397.tar.gz" not in message


def test_truncated_split_file_gives_parse_position(tmp_path, tree):
    root = copy_dataset(tree, tmp_path, "UCF101")
    split_path = root / "ucf101" / "split_zhou_UCF101.json"
    split_path.write_text(split_path.read_text()[:200])
    with pytest.raises(SplitFileError, match=r"split_zhou_UCF101.json is not valid JSON: .* line 1, "
                                             r"column \d+ \(character \d+\)"):
        load(root, "UCF101")


def test_malformed_split_entry_is_named(tmp_path, tree):
    root = copy_dataset(tree, tmp_path, "EuroSAT")
    split_path = root / "eurosat" / "split_zhou_EuroSAT.json"
    split = json.loads(split_path.read_text())
    split["val"][3] = ["Forest/x.jpg", 1]
    split_path.write_text(json.dumps(split))
    with pytest.raises(SplitFileError, match=r"val\[3\] must be \[impath, label, classname\]"):
        load(root, "EuroSAT")


def test_split_listing_absent_images_counts_and_lists_them(tmp_path, tree):
    root = copy_dataset(tree, tmp_path, "StanfordCars")
    removed = sorted((root / "stanford_cars" / "cars_train").iterdir())[:7]
    for path in removed:
        path.unlink()
    with pytest.raises(DatasetSetupError) as err:
        load(root, "StanfordCars")
    message = str(err.value)
    assert "7 of 39 images listed in StanfordCars" in message
    assert str(removed[0]) in message and "... and 2 more" in message


def test_unknown_fgvc_variant_names_file_and_line(tmp_path, tree):
    root = copy_dataset(tree, tmp_path, "FGVCAircraft")
    list_path = root / "fgvc_aircraft" / "images_variant_val.txt"
    lines = list_path.read_text().splitlines()
    lines[2] = lines[2].split(" ")[0] + " Boeing 999"
    list_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SplitFileError, match=r"images_variant_val.txt:3: variant 'Boeing 999'"):
        load(root, "FGVCAircraft")


def test_class_folder_missing_from_classnames(tmp_path, tree):
    root = copy_dataset(tree, tmp_path, "ImageNetSketch")
    write_image(root / "imagenet-sketch" / "images" / "n99999999" / "0.jpg", 0)
    with pytest.raises(DatasetSetupError, match=r"not in classnames.txt, e.g. \['n99999999'\]"):
        load(root, "ImageNetSketch")


def test_renamed_class_names_are_flagged(tmp_path, tree, caplog):
    root = copy_dataset(tree, tmp_path, "EuroSAT")
    split_path = root / "eurosat" / "split_zhou_EuroSAT.json"
    split_path.write_text(split_path.read_text().replace("Sea or Lake", "SeaLake"))
    with caplog.at_level(logging.WARNING):
        dataset = load(root, "EuroSAT")
    assert dataset.classnames[-1] == "SeaLake"
    assert "13 images have class names that differ" in caplog.text and "'Sea or Lake'" in caplog.text


def test_unreadable_image_names_its_path(tmp_path, tree):
    root = copy_dataset(tree, tmp_path, "DescribableTextures")
    dataset = load(root, "DescribableTextures")
    not_an_image, truncated = dataset.test[0].impath, dataset.test[1].impath
    Path(not_an_image).write_bytes(b"not an image")
    image_bytes = Path(truncated).read_bytes()
    Path(truncated).write_bytes(image_bytes[: len(image_bytes) // 2])
    wrapper = DatasetWrapper(make_cfg(root, "DescribableTextures"), dataset.test)
    for index, path in enumerate((not_an_image, truncated)):
        with pytest.raises(OSError, match=re.escape(path)):
            wrapper[index]
