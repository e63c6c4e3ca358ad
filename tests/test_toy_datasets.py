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


def test_mixed_world_draws_each_images_style_and_records_it_as_its_domain(root):
    """ToyWorldMixed: the style varies within every class, in every split, and each Datum's domain
    is its image's style (toy_world.image_style), which the oracle's templates name."""
    mixed = build_dataset(toy_cfg(root, "ToyWorldMixed", "base", shots=4))
    for split in (mixed.train_x, mixed.val, mixed.test):
        assert {item.domain for item in split} == set(range(len(toy_world.STYLES)))
    by_class = {}
    for item in mixed.train_x:
        by_class.setdefault(item.label, set()).add(item.domain)
    assert sum(len(styles) > 1 for styles in by_class.values()) >= 0.9 * len(by_class)
    seed = toy_datasets.ToyWorldMixed.stream_seed("test")
    for item in mixed.test[:8]:
        index = int(os.path.basename(item.impath).split(".")[0])
        assert toy_world.STYLES[item.domain] == toy_world.image_style(seed, index)
    assert toy_datasets.ToyWorldMixed.domain_templates[1] == "a sketch of a {}."
    assert mixed.test[0].impath != build_dataset(toy_cfg(root, "ToyWorld", "base", shots=4)).test[0].impath


def test_the_style_oracle_prompts_each_image_with_its_own_style(root):
    import torch

    import prompt_diffusion.trainers  # noqa: F401  (registers the trainers)
    from prompt_diffusion.engine import build_trainer
    from prompt_diffusion.trainers.zsclip import class_text_features

    cfg = toy_cfg(root, "ToyWorldMixed", "new", shots=1)
    cfg.TRAINER.NAME = "DomainOracleCLIP"
    cfg.MODEL.BACKBONE.NAME = "toy"
    cfg.INPUT.SIZE = (32, 32)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.OUTPUT_DIR = os.path.join(root, "oracle_run")
    oracle = build_trainer(cfg)
    batch = next(iter(oracle.test_loader))
    images, _ = oracle.parse_batch_test(batch)
    logits = oracle.model_inference(images)
    clip_model, names = oracle.clip_model, oracle.dm.dataset.classnames
    for row, domain in enumerate(batch["domain"][:6].tolist()):
        text = class_text_features(clip_model, toy_datasets.STYLE_TEMPLATES[domain], names)
        with torch.no_grad():
            feature = clip_model.encode_image(images[row: row + 1])
        expected = clip_model.logit_scale.exp() * torch.nn.functional.normalize(feature, dim=-1) @ text.t()
        torch.testing.assert_close(logits[row: row + 1], expected, rtol=1e-5, atol=1e-4)
    cfg.DATASET.NAME = "ToyWorld"
    with pytest.raises(ValueError, match="DomainOracleCLIP needs a dataset that names its domains' prompts"):
        build_trainer(cfg)
