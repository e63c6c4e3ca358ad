"""Zero-shot CLIP with one hand-crafted template per dataset (KaiyangZhou/CoOp ``trainers/zsclip.py``):
the baseline row of the tables; with ``TRAINER.ZEROSHOT`` also over a bank of templates (CLIP's prompt
ensemble, or the templates weighted or selected per image: ``prompt_diffusion.test_time``).
Nothing is trained; class text features are computed once.
"""
import os
from typing import Callable, Dict, List, Sequence

import torch
from torch import Tensor, nn

from prompt_diffusion.backbones import apply_precision, load_clip_from_cfg
from prompt_diffusion.clip_prompting import encode_image, prompted_logits
from prompt_diffusion.engine import TRAINER_REGISTRY, TrainerX
from prompt_diffusion.test_time import ensemble_text_features, selected_template_logits, weighted_template_log_probs

from ._common import frozen_text_features
from .imagenet_templates import IMAGENET_TEMPLATES

CUSTOM_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}


def zeroshot_template(dataset_name: str, dataset=None) -> str:
    """The dataset's hand-crafted template: ``CUSTOM_TEMPLATES``, else the dataset's own
    ``zeroshot_template`` attribute (for datasets outside the CoOp benchmark)."""
    if dataset_name in CUSTOM_TEMPLATES:
        return CUSTOM_TEMPLATES[dataset_name]
    template = getattr(dataset, "zeroshot_template", None)
    if template is None:
        raise KeyError(f"no zero-shot template for DATASET.NAME={dataset_name!r}: known datasets are "
                       f"{sorted(CUSTOM_TEMPLATES)}, or give the dataset class a 'zeroshot_template' attribute")
    return template


def class_text_features(clip_model: nn.Module, template: str, classnames: Sequence[str], chunk_size: int = 0) -> Tensor:
    """Normalised text features ``[K, E]`` of ``template.format(<class name>)`` (``_`` -> space)."""
    texts = [template.format(name.replace("_", " ")) for name in classnames]
    features = frozen_text_features(clip_model, texts, chunk_size, desc="zero-shot class features")
    return features / features.norm(dim=-1, keepdim=True)


def template_text_features(clip_model: nn.Module, templates: Sequence[str], classnames: Sequence[str],
                           chunk_size: int = 0) -> Tensor:
    """``class_text_features`` of every template: ``[T, K, E]``, normalised."""
    return torch.stack([class_text_features(clip_model, template, classnames, chunk_size) for template in templates])


#: ``TRAINER.ZEROSHOT.TEMPLATES`` values that name a bank shipped here (any other non-empty value is a file)
TEMPLATE_BANKS = {"imagenet": IMAGENET_TEMPLATES}

#: ``TRAINER.ZEROSHOT.COMBINE``: per-image rules over the bank's logits ``[B, T, K]`` -> ``[B, K]``;
#: ``ensemble`` (CLIP's mean text feature) is computed once, before any image
PER_IMAGE_COMBINE: Dict[str, Callable[[Tensor], Tensor]] = {"weighted": weighted_template_log_probs,
                                                             "select": selected_template_logits}
COMBINE_CHOICES = ("ensemble", *PER_IMAGE_COMBINE)


def template_bank(setting: str, dataset_template: str) -> List[str]:
    """The templates ``TRAINER.ZEROSHOT.TEMPLATES`` names: ``""`` the dataset's own one
    (``dataset_template``), a name of ``TEMPLATE_BANKS``, or a text file with one template per line
    (blank lines skipped). Each template must hold one ``{}`` for the class name; a file that is
    missing or holds no template, or a template without its ``{}``, is a ``ValueError`` naming it."""
    if not setting:
        templates, source = [dataset_template], "the dataset's template"
    elif setting in TEMPLATE_BANKS:
        templates, source = list(TEMPLATE_BANKS[setting]), f"template bank {setting!r}"
    elif os.path.isfile(setting):
        with open(setting, encoding="utf-8") as stream:
            templates = [line.strip() for line in stream if line.strip()]
        source = f"template file {setting}"
        if not templates:
            raise ValueError(f"{source} (TRAINER.ZEROSHOT.TEMPLATES) holds no template: one per line, each with "
                             "'{}' for the class name")
    else:
        raise ValueError(f"TRAINER.ZEROSHOT.TEMPLATES = {setting!r} is neither '' (the dataset's template), "
                         f"a template bank ({', '.join(TEMPLATE_BANKS)}) nor a file")
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"{source}: template {template!r} needs one '{{}}' where the class name goes")
    return templates


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(TrainerX):
    """CLIP with the dataset's hand-crafted prompt; fp16 on CUDA, fp32 on the CPU (as ``clip.load``).

    ``TRAINER.ZEROSHOT.TEMPLATES`` replaces the prompt by a bank of T templates (``template_bank``)
    whose T x K class text features are computed once; ``COMBINE`` says how the bank classifies:
    ``ensemble`` (one mean text feature per class), ``weighted`` or ``select`` (per image, label-free,
    from the image's logits under every template)."""

    def check_cfg(self, cfg):
        if cfg.TRAINER.ZEROSHOT.COMBINE not in COMBINE_CHOICES:
            raise ValueError(f"TRAINER.ZEROSHOT.COMBINE = {cfg.TRAINER.ZEROSHOT.COMBINE!r} is not allowed; "
                             f"choose one of {list(COMBINE_CHOICES)}")

    def build_model(self):
        cfg = self.cfg
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        device = torch.device(self.device)
        clip_model = apply_precision(load_clip_from_cfg(cfg), "fp16" if device.type == "cuda" else "fp32", device)
        clip_model.to(device)
        templates = template_bank(cfg.TRAINER.ZEROSHOT.TEMPLATES, zeroshot_template(cfg.DATASET.NAME, self.dm.dataset))
        self.combine = cfg.TRAINER.ZEROSHOT.COMBINE
        if len(templates) == 1:
            print(f"Prompt template: {templates[0]!r}")
        else:
            print(f"Prompt templates: {len(templates)} ({cfg.TRAINER.ZEROSHOT.TEMPLATES}), combined by {self.combine}")
        text_features = template_text_features(clip_model, templates, self.dm.dataset.classnames,
                                               cfg.MODEL.TEXT_CHUNK)  # [T, K, E]
        # [K, E] for the ensemble (one template: its own features, as before the bank existed); else [T, K, E]
        if self.combine in PER_IMAGE_COMBINE:
            self.text_features = text_features
        else:
            self.text_features = text_features[0] if len(templates) == 1 else ensemble_text_features(text_features)
        self.clip_model = clip_model

    def model_inference(self, image: Tensor) -> Tensor:
        with torch.no_grad():
            image_features = encode_image(self.clip_model.visual, image)  # [B, E]
        if self.combine not in PER_IMAGE_COMBINE:  # text features [K, E]
            return prompted_logits(image_features, self.text_features, self.clip_model.logit_scale)
        n_templates, n_classes = self.text_features.shape[:2]
        logits = prompted_logits(image_features, self.text_features.flatten(0, 1),  # [B, T * K] -> [B, T, K]
                                 self.clip_model.logit_scale).view(-1, n_templates, n_classes)
        return PER_IMAGE_COMBINE[self.combine](logits)


@TRAINER_REGISTRY.register()
class DomainOracleCLIP(ZeroshotCLIP):
    """A diagnostic ceiling, not a method: zero-shot CLIP whose prompt names each test image's own
    domain, which the dataset knows and no method is given (``ToyWorldMixed``: "a sketch of a {}."
    for a sketch). It says how much a prompt per image can gain where a fixed prompt cannot.

    Needs a dataset with ``domain_templates`` (one template per domain index) and the domain of
    every image in its batches (``batch["domain"]``)."""

    def build_model(self):
        cfg = self.cfg
        templates = getattr(self.dm.dataset, "domain_templates", None)
        if not templates:
            raise ValueError(f"DomainOracleCLIP needs a dataset that names its domains' prompts (domain_templates); "
                             f"DATASET.NAME={cfg.DATASET.NAME!r} has none (ToyWorldMixed has)")
        device = torch.device(self.device)
        clip_model = apply_precision(load_clip_from_cfg(cfg), "fp16" if device.type == "cuda" else "fp32", device)
        clip_model.to(device)
        print(f"Prompt templates by domain: {list(templates)}")
        self.text_features = template_text_features(clip_model, templates, self.dm.dataset.classnames,
                                                    cfg.MODEL.TEXT_CHUNK)  # [D, K, E]
        self.clip_model = clip_model
        self._domains = None

    def parse_batch_test(self, batch):
        self._domains = batch["domain"].to(self.device)  # read by model_inference, for the same batch
        return super().parse_batch_test(batch)

    def model_inference(self, image: Tensor) -> Tensor:
        with torch.no_grad():
            image_features = encode_image(self.clip_model.visual, image)  # [B, E]
        text = self.text_features[self._domains]  # [B, K, E]: each image's own domain's prompts
        return prompted_logits(image_features, text, self.clip_model.logit_scale)
