"""The toy-world datasets: base-to-new by the upstream rule, test-only style targets, ToySizes."""
import os

import pytest
from PIL import Image

import prompt_diffusion.data  # noqa: F401  (registers the datasets)
from prompt_diffusion.config import extend_cfg
from prompt_diffusion.data import toy_datasets, toy_world
from prompt_diffusion.engine import build_dataset, get_cfg_default

from helpers import shared_toy_root

TEST_PER_CLASS = 2


@pytest.fixture(scope="module")
def root():
    return str(shared_toy_root())


def toy_cfg(root: str, name: str, subsample: str = "all", shots: int = 16, seed: int = 1):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.DATASET.NAME = name
    cfg.DATASET.ROOT = root
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.DATASET.TOY.TEST_PER_CLASS = TEST_PER_CLASS
    cfg.SEED = seed
    return cfg


def shapes_of(classnames):
    return {name.split(" ")[1] for name in classnames}


def test_base_to_new_follows_the_upstream_rule(root):
    base = build_dataset(toy_cfg(root, "ToyWorld", "base"))
    new = build_dataset(toy_cfg(root, "ToyWorld", "new"))
    everything = build_dataset(toy_cfg(root, "ToyWorld", "all"))
    assert everything.num_classes == 64 and base.num_classes == 32 and new.num_classes == 32
    # base = lower half of the labels = the first four shapes of DATASET_SHAPES, all colours
    assert base.classnames == everything.classnames[:32] and new.classnames == everything.classnames[32:]
    assert shapes_of(base.classnames) == set(toy_datasets.DATASET_SHAPES[:4])
    assert shapes_of(new.classnames) == set(toy_datasets.DATASET_SHAPES[4:])
    assert everything.classnames[:2] == [f"{c} {toy_datasets.DATASET_SHAPES[0]}" for c in toy_world.COLOUR_NAMES[:2]]
    # few-shot: 16 per class in train, min(16, 4) in val; test keeps every image of its classes
    assert len(base.train_x) == 32 * 16 and len(base.val) == 32 * 4
    assert len(base.test) == 32 * TEST_PER_CLASS and len(new.test) == 32 * TEST_PER_CLASS
    assert sorted({d.label for d in new.test}) == list(range(32))
    for datum in base.train_x[:3] + new.test[:3]:
        with Image.open(datum.impath) as image:
            assert image.size == (toy_world.IMAGE_SIZE, toy_world.IMAGE_SIZE)


def test_fewshot_selection_is_seeded_and_files_are_reused(root):
    folder = os.path.join(root, toy_datasets.WORLD_DIR, "shapes_photo", f"train-{toy_datasets.TRAIN_PER_CLASS}")
    first = build_dataset(toy_cfg(root, "ToyWorld", "base", seed=1))
    stamp = os.stat(os.path.join(folder, "red_circle", "00000.png")).st_mtime_ns
    again = build_dataset(toy_cfg(root, "ToyWorld", "base", seed=1))
    other = build_dataset(toy_cfg(root, "ToyWorld", "base", seed=2))
    assert [d.impath for d in again.train_x] == [d.impath for d in first.train_x]
    assert [d.impath for d in other.train_x] != [d.impath for d in first.train_x]
    assert os.stat(os.path.join(folder, "red_circle", "00000.png")).st_mtime_ns == stamp
    assert not [name for name in os.listdir(os.path.dirname(folder)) if ".tmp" in name]


@pytest.mark.parametrize("name,style", [("ToyWorldSketch", "sketch"), ("ToyWorldRendition", "rendition"),
                                        ("ToyWorldClutter", "clutter")])
def test_style_targets_are_test_only_with_base_and_new_halves(root, name, style):
    dataset = build_dataset(toy_cfg(root, name, "all"))
    assert type(dataset).style == style
    assert dataset.num_classes == 64
    assert dataset.classnames == [c.name for c in toy_datasets.shape_colour_classes()]
    assert len(dataset.test) == 64 * TEST_PER_CLASS and dataset.train_x == dataset.test
    for half in ("base", "new"):  # the same halves as ToyWorld's, so a domain has base and new columns
        subset = build_dataset(toy_cfg(root, name, half))
        photo = build_dataset(toy_cfg(root, "ToyWorld", half))
        assert subset.classnames == photo.classnames and subset.num_classes == 32
        assert len(subset.test) == 32 * TEST_PER_CLASS and subset.train_x == subset.test


def test_sizes_is_a_cross_dataset_target_with_another_attribute_family(root):
    dataset = build_dataset(toy_cfg(root, "ToySizes", "all", shots=4))
    assert dataset.num_classes == 16
    assert dataset.classnames[:2] == [f"small {toy_datasets.DATASET_SHAPES[0]}", f"large {toy_datasets.DATASET_SHAPES[0]}"]
    assert len(dataset.train_x) == 16 * 4 and len(dataset.test) == 16 * TEST_PER_CLASS
    # the split seeds differ from every other toy dataset's
    seeds = {cls.stream_seed(split) for cls in toy_datasets.TOY_DATASETS.values() for split in ("train", "val", "test")}
    assert len(seeds) == 3 * len(toy_datasets.TOY_DATASETS) and not seeds & {0, 1}
