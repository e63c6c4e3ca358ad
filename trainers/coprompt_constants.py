"""CoPrompt's per-dataset settings and the names of its description files.

CoPrompt (Roy & Etemad, ICLR 2024) tunes the prompt depth, the number of prompt tokens, the
consistency weight ``W`` (and, for Food101, the number of epochs) per dataset; upstream merges them
last, over the config files and the command line. ``TRAINER.CoPrompt.DATASET_OVERRIDES`` names
which of these keys are applied (all of them by default, as upstream).
"""
from typing import Dict, List, Sequence

from yacs.config import CfgNode

# key -> value, per ``DATASET.NAME`` (values as in CoPrompt's ``trainers/constants.py``)
DATASET_OVERRIDES: Dict[str, Dict[str, object]] = {
    "ImageNet": {"TRAINER.CoPrompt.PROMPT_DEPTH": 12, "TRAINER.CoPrompt.N_CTX": 4, "TRAINER.W": 8.0},
    "Caltech101": {"TRAINER.CoPrompt.PROMPT_DEPTH": 12, "TRAINER.CoPrompt.N_CTX": 4, "TRAINER.W": 4.0},
    "OxfordPets": {"TRAINER.CoPrompt.PROMPT_DEPTH": 12, "TRAINER.CoPrompt.N_CTX": 2, "TRAINER.W": 0.1},
    "StanfordCars": {"TRAINER.CoPrompt.PROMPT_DEPTH": 12, "TRAINER.CoPrompt.N_CTX": 4, "TRAINER.W": 4.0},
    "OxfordFlowers": {"TRAINER.CoPrompt.PROMPT_DEPTH": 9, "TRAINER.CoPrompt.N_CTX": 4, "TRAINER.W": 8.0},
    "Food101": {
        "TRAINER.CoPrompt.PROMPT_DEPTH": 9, "TRAINER.CoPrompt.N_CTX": 4, "TRAINER.W": 0.5, "OPTIM.MAX_EPOCH": 5,
    },
    "FGVCAircraft": {"TRAINER.CoPrompt.PROMPT_DEPTH": 9, "TRAINER.CoPrompt.N_CTX": 4, "TRAINER.W": 2.0},
    "SUN397": {"TRAINER.CoPrompt.PROMPT_DEPTH": 12, "TRAINER.CoPrompt.N_CTX": 4, "TRAINER.W": 8.0},
    "DescribableTextures": {"TRAINER.CoPrompt.PROMPT_DEPTH": 12, "TRAINER.CoPrompt.N_CTX": 2, "TRAINER.W": 8.0},
    "EuroSAT": {"TRAINER.CoPrompt.PROMPT_DEPTH": 12, "TRAINER.CoPrompt.N_CTX": 2, "TRAINER.W": 0.1},
    "UCF101": {"TRAINER.CoPrompt.PROMPT_DEPTH": 12, "TRAINER.CoPrompt.N_CTX": 4, "TRAINER.W": 2.0},
}

OVERRIDABLE_KEYS = ("TRAINER.CoPrompt.PROMPT_DEPTH", "TRAINER.CoPrompt.N_CTX", "TRAINER.W", "OPTIM.MAX_EPOCH")

# ``DATASET.NAME`` -> stem of the description file ``<stem>_prompt.json`` in CoPrompt's ``gpt_file/``
DESCRIPTION_FILE_STEMS: Dict[str, str] = {
    "Caltech101": "caltech",
    "DescribableTextures": "dtd",
    "EuroSAT": "eurosat",
    "FGVCAircraft": "fgvc",
    "Food101": "food101",
    "ImageNet": "imagenet",
    "ImageNetA": "imagenet_a",
    "ImageNetR": "imagenet_r",
    "ImageNetSketch": "imagenet_sketch",
    "ImageNetV2": "imagenetv2",
    "OxfordFlowers": "oxford_flowers",
    "OxfordPets": "oxford_pets",
    "StanfordCars": "stanford_cars",
    "SUN397": "sun397",
    "UCF101": "ucf101",
}


def dataset_overrides(dataset_name: str, keys: Sequence[str]) -> Dict[str, object]:
    """The per-dataset values of ``keys`` for ``dataset_name`` (empty for a dataset without overrides)."""
    unknown = [key for key in keys if key not in OVERRIDABLE_KEYS]
    if unknown:
        raise ValueError(
            f"TRAINER.CoPrompt.DATASET_OVERRIDES: unknown key(s) {unknown}; allowed: {list(OVERRIDABLE_KEYS)}"
        )
    table = DATASET_OVERRIDES.get(dataset_name, {})
    return {key: value for key, value in table.items() if key in keys}


def apply_dataset_overrides(cfg: CfgNode) -> List[str]:
    """Merge the per-dataset settings named by ``TRAINER.CoPrompt.DATASET_OVERRIDES`` into ``cfg``.

    ``cfg`` must not be frozen. Returns the applied ``"KEY value"`` strings (for the log).
    """
    overrides = dataset_overrides(cfg.DATASET.NAME, cfg.TRAINER.CoPrompt.DATASET_OVERRIDES)
    options: List[object] = []
    for key, value in overrides.items():
        options += [key, value]
    cfg.merge_from_list(options)
    return [f"{key} {value}" for key, value in overrides.items()]


def description_file_name(dataset_name: str) -> str:
    """CoPrompt's file name for a dataset: ``<stem>_prompt.json``; other datasets use their own name."""
    return f"{DESCRIPTION_FILE_STEMS.get(dataset_name, dataset_name)}_prompt.json"
