"""Shared setup of the multi-modal trainer tests: tiny generated image folders, a tiny 3-layer CLIP,
CoPrompt description files, and the configs of the tiny runs."""
import json
from pathlib import Path

from helpers import make_image_folder, register_tiny_folder_dataset, tiny_trainer_cfg
from prompt_diffusion.backbones import build_tiny_clip, save_clip
from prompt_diffusion.trainers.coprompt_constants import description_file_name

BASE_CLASSES = ["red_square", "green_square", "blue_square", "yellow_square"]
NEW_CLASSES = ["purple_ring", "cyan_ring", "orange_ring"]

# trainer -> its cfg keys for the tiny runs (3-layer CLIP: prompt depth 3 = shallow + 2 deep)
TINY_SETTINGS = {
    "MaPLe": {"TRAINER.MAPLE.N_CTX": 2, "TRAINER.MAPLE.PROMPT_DEPTH": 3, "TRAINER.MAPLE.PREC": "fp32"},
    "PromptSRC": {"TRAINER.PROMPTSRC.N_CTX_TEXT": 2, "TRAINER.PROMPTSRC.N_CTX_VISION": 2,
                  "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT": 3, "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION": 3,
                  "TRAINER.PROMPTSRC.PREC": "fp32", "TRAINER.PROMPTSRC.GPA_MEAN": 2, "TRAINER.PROMPTSRC.GPA_STD": 1},
    "CoPrompt": {"TRAINER.CoPrompt.N_CTX": 2, "TRAINER.CoPrompt.PROMPT_DEPTH": 3, "TRAINER.CoPrompt.PREC": "fp32",
                 "TRAINER.W": 1.0, "DATALOADER.K_TRANSFORMS": 2,
                 "INPUT.TRANSFORMS": ("random_flip", "randaugment", "normalize")},
}


def write_descriptions(directory: Path, classnames, per_class: int = 3) -> Path:
    """A CoPrompt description file for the tiny dataset: ``per_class`` sentences per class."""
    table = {name.replace("_", " "): [f"a {name.replace('_', ' ')} drawn {style}." for style in
                                      ("large", "small", "in the middle", "at the edge")[:per_class]]
             for name in classnames}
    path = directory / description_file_name(register_tiny_folder_dataset())
    path.write_text(json.dumps(table))
    return path


def build_world(root: Path):
    """Base / new image folders, a tiny 3-layer CLIP file and a description folder under ``root``;
    returns ``(root, clip_path, descriptions_dir)`` for ``make_cfg``."""
    make_image_folder(root / "base", BASE_CLASSES, per_class=6)
    make_image_folder(root / "new", NEW_CLASSES, per_class=3, seed=1)
    clip_path = root / "tiny_clip.pt"
    save_clip(build_tiny_clip(vision_width=128, vision_layers=3, transformer_layers=3, transformer_heads=1), clip_path)
    descriptions = root / "descriptions"
    descriptions.mkdir()
    write_descriptions(descriptions, BASE_CLASSES + NEW_CLASSES)
    return root, clip_path, descriptions


def make_cfg(trainer, world, data, output_dir, lr=2.0, max_epoch=2, **extra):
    """The tiny run of ``trainer`` (``<Name>`` or ``<Name>PD``) on ``world``'s ``data`` folder;
    ``extra``: more ``KEY=value`` settings."""
    root, clip_path, descriptions = world
    settings = {"MODEL.TEXT_CHUNK": 16, "TRAINER.CoPrompt.DESCRIPTIONS_DIR": str(descriptions),
                **TINY_SETTINGS[trainer.replace("PD", "")], **extra}
    options = [item for key, value in settings.items() for item in (key, value)]
    return tiny_trainer_cfg(trainer, root / data, clip_path, output_dir, lr, max_epoch, options)


def record_losses(trainer):
    """Make ``trainer`` keep every training step's loss summary; returns the list it fills."""
    summaries = []
    step = trainer.forward_backward

    def recording_step(batch):
        summaries.append(step(batch))
        return summaries[-1]

    trainer.forward_backward = recording_step
    return summaries


def trainable_state(trainer):
    """The registered model's trainable tensors, by name (cloned)."""
    model = trainer._models[trainer.get_model_names()[0]]
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {name: value.clone() for name, value in model.state_dict().items() if name in trainable}
