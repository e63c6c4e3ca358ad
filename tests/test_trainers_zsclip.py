"""ZeroshotCLIP: the dataset's hand-crafted template, CLIP's own logits, a clear error without a template;
template banks (TRAINER.ZEROSHOT): the ensemble and the per-image weighting and selection on the toy world."""
import clip
import pytest
import torch

from helpers import (align_tiny_clip, load_image_batch, make_image_folder, register_tiny_folder_dataset,
                     shared_toy_root, tiny_trainer_cfg)
from prompt_diffusion.backbones import build_tiny_clip, load_clip_file, save_clip
from prompt_diffusion.cli import main as cli_main
from prompt_diffusion.clip_prompting import encode_image, prompted_logits
from prompt_diffusion.config import extend_cfg
from prompt_diffusion.engine import DATASET_REGISTRY, build_trainer, get_cfg_default
from prompt_diffusion.test_time import selected_template_logits, template_weights, weighted_template_log_probs

import prompt_diffusion.data  # noqa: F401  (registers the datasets)
import prompt_diffusion.trainers  # noqa: F401  (registers the trainers)
from prompt_diffusion.trainers.imagenet_templates import IMAGENET_TEMPLATES
from prompt_diffusion.trainers.zsclip import (COMBINE_CHOICES, CUSTOM_TEMPLATES, class_text_features, template_bank,
                                              zeroshot_template)

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


# ------------------------------------------------------------------ template banks (TRAINER.ZEROSHOT)
TOY_MIXED = ["MODEL.BACKBONE.NAME", "toy", "INPUT.SIZE", (32, 32), "INPUT.TRANSFORMS", ("normalize",),
             "DATASET.NAME", "ToyWorldMixed", "DATASET.SUBSAMPLE_CLASSES", "new", "DATASET.TOY.TEST_PER_CLASS", 2,
             "DATALOADER.NUM_WORKERS", 0, "DATALOADER.TEST.BATCH_SIZE", 64, "USE_CUDA", False]


def toy_zeroshot(tmp_path, templates: str = "", combine: str = "ensemble"):
    """ZeroshotCLIP with the shipped toy CLIP on ToyWorldMixed's new half (2 test images per class)."""
    cfg = extend_cfg(get_cfg_default())
    cfg.merge_from_list(TOY_MIXED + ["DATASET.ROOT", str(shared_toy_root()), "TRAINER.NAME", "ZeroshotCLIP",
                                     "OUTPUT_DIR", str(tmp_path / "out"), "TRAINER.ZEROSHOT.TEMPLATES", templates,
                                     "TRAINER.ZEROSHOT.COMBINE", combine])
    cfg.freeze()
    return build_trainer(cfg)


def loader_images(trainer):
    images, labels = zip(*(trainer.parse_batch_test(batch) for batch in trainer.test_loader))
    return torch.cat(images), torch.cat(labels)


def write_templates(tmp_path, *templates: str) -> str:
    path = tmp_path / f"templates_{len(list(tmp_path.glob('templates_*')))}.txt"
    path.write_text("\n".join(templates) + "\n")
    return str(path)


def test_default_is_the_datasets_template_and_per_image_rules_combine_each_templates_logits(tmp_path):
    """Photo and sketch templates: each per-image rule gives what it gives on the logits of each
    template alone (two one-template models); the default is the dataset's template, as before."""
    photo = toy_zeroshot(tmp_path)  # TEMPLATES "": the dataset's "a photo of a {}."
    sketch = toy_zeroshot(tmp_path, write_templates(tmp_path, "a sketch of a {}."))
    both = write_templates(tmp_path, "a photo of a {}.", "", "a sketch of a {}.")  # a blank line is skipped
    images, _ = loader_images(photo)
    with torch.no_grad():
        photo_text = class_text_features(photo.clip_model, "a photo of a {}.", photo.dm.dataset.classnames)
        today = prompted_logits(encode_image(photo.clip_model.visual, images), photo_text, photo.clip_model.logit_scale)
        per_template = torch.stack([photo.model_inference(images), sketch.model_inference(images)], dim=1)  # [B, 2, K]
        weighted = toy_zeroshot(tmp_path, both, "weighted").model_inference(images)
        selected = toy_zeroshot(tmp_path, both, "select").model_inference(images)
    assert torch.equal(per_template[:, 0], today)
    assert torch.allclose(weighted, weighted_template_log_probs(per_template), atol=1e-5)
    assert torch.allclose(selected, selected_template_logits(per_template), atol=1e-5)
    assert (template_weights(per_template).argmax(dim=1) == 1).any()  # some images answer "sketch" best


def test_imagenet_templates_run_end_to_end_and_per_image_rules_change_predictions(tmp_path):
    predictions = {}
    for combine in COMBINE_CHOICES:
        trainer = toy_zeroshot(tmp_path / combine, "imagenet", combine)
        assert trainer.text_features.shape[:-1] == ((32,) if combine == "ensemble" else (len(IMAGENET_TEMPLATES), 32))
        images, labels = loader_images(trainer)
        with torch.no_grad():
            predictions[combine] = trainer.model_inference(images).argmax(dim=1)
        assert (predictions[combine] == labels).float().mean() > 0.5  # chance: 1/32
        assert trainer.test() > 50.0
    assert (predictions["weighted"] != predictions["ensemble"]).any()
    assert (predictions["select"] != predictions["ensemble"]).any()


def test_bad_template_banks_are_one_line_naming_them(tmp_path):
    cases = {
        write_templates(tmp_path, "a photo of a {}.", "a photo of a thing."): "'a photo of a thing.' needs one '{}'",
        write_templates(tmp_path, "a {} or a {}."): "'a {} or a {}.' needs one '{}'",
        write_templates(tmp_path, "  ", ""): "holds no template",
        str(tmp_path / "missing.txt"): "is neither '' (the dataset's template), a template bank (imagenet) nor a file",
    }
    for setting, message in cases.items():
        with pytest.raises(ValueError) as error:
            template_bank(setting, "a photo of a {}.")
        assert message in str(error.value) and "\n" not in str(error.value)
        assert setting in str(error.value)
    assert template_bank("", "a photo of a {}.") == ["a photo of a {}."]
    with pytest.raises(ValueError, match="dataset's template: template 'a photo.' needs one"):
        template_bank("", "a photo.")


def test_unknown_combine_is_one_line_from_the_command_line(tmp_path, capsys):
    code = cli_main(["train", "--root", str(tmp_path / "data"), "--trainer", "ZeroshotCLIP", "--eval-only",
                     "--dataset-config-file", "configs/datasets/toy_world_mixed.yaml",
                     "--output-dir", str(tmp_path / "out"), "MODEL.BACKBONE.NAME", "toy",
                     "TRAINER.ZEROSHOT.COMBINE", "mean"])
    error = capsys.readouterr().err
    assert code == 1
    assert ("prompt-diffusion train: error: TRAINER.ZEROSHOT.COMBINE = 'mean' is not allowed; choose one of "
            "['ensemble', 'weighted', 'select']\n") in error
