"""ZeroshotCLIP: the dataset's hand-crafted template, CLIP's own logits, a clear error without a template."""
import clip
import pytest
import torch

from helpers import align_tiny_clip, load_image_batch, make_image_folder, register_tiny_folder_dataset, tiny_trainer_cfg
from prompt_diffusion.backbones import build_tiny_clip, load_clip_file, save_clip
from prompt_diffusion.engine import DATASET_REGISTRY, build_trainer

import prompt_diffusion.trainers  # noqa: F401  (registers the trainers)
from prompt_diffusion.trainers.zsclip import CUSTOM_TEMPLATES, zeroshot_template

CLASSES = ["red_square", "green_square", "blue_square", "yellow_square"]
TEMPLATE = "a photo of a {}."


def _templated_dataset() -> str:
    """``TinyImageFolder`` with a ``zeroshot_template`` (a dataset outside the CoOp benchmark)."""
    name = "TinyTemplatedFolder"
    if name not in DATASET_REGISTRY.registered_names():
        base = DATASET_REGISTRY.get(register_tiny_folder_dataset())
        DATASET_REGISTRY.register(type(name, (base,), {"zeroshot_template": TEMPLATE}))
    return name


def test_zeroshot_clip_gives_clips_own_logits(tmp_path):
    images_by_class = make_image_folder(tmp_path / "data", CLASSES, per_class=4)
    clip_path = tmp_path / "clip.pt"
    save_clip(align_tiny_clip(build_tiny_clip(transformer_heads=1), images_by_class, steps=6), clip_path)
    cfg = tiny_trainer_cfg("ZeroshotCLIP", tmp_path / "data", clip_path, tmp_path / "out", lr=0.0,
                           options=["DATASET.NAME", _templated_dataset()])
    trainer = build_trainer(cfg)
    accuracy = trainer.test()
    assert accuracy > 100 / len(CLASSES) + 10

    names = trainer.dm.dataset.classnames
    paths = [p for name in names for p in images_by_class[name]]
    reference = load_clip_file(clip_path)
    images = load_image_batch(paths)
    with torch.no_grad():
        logits, _ = reference(images, clip.tokenize([TEMPLATE.format(n.replace("_", " ")) for n in names]))
        assert (trainer.model_inference(images) - logits).abs().max() <= 1e-4


def test_unknown_dataset_without_template_is_refused():
    assert zeroshot_template("EuroSAT") == CUSTOM_TEMPLATES["EuroSAT"] == "a centered satellite photo of {}."
    with pytest.raises(KeyError, match="zeroshot_template"):
        zeroshot_template("TinyImageFolder", dataset=object())
