"""Zero-shot CLIP with one hand-crafted template per dataset (KaiyangZhou/CoOp ``trainers/zsclip.py``):
the baseline row of the tables. Nothing is trained; class text features are computed once.
"""
from typing import Sequence

import torch
from torch import Tensor, nn

from prompt_diffusion.backbones import apply_precision, load_clip_from_cfg
from prompt_diffusion.clip_prompting import encode_image, prompted_logits
from prompt_diffusion.engine import TRAINER_REGISTRY, TrainerX

from ._common import frozen_text_features

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


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(TrainerX):
    """CLIP with the dataset's hand-crafted prompt; fp16 on CUDA, fp32 on the CPU (as ``clip.load``)."""

    def build_model(self):
        cfg = self.cfg
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        device = torch.device(self.device)
        clip_model = apply_precision(load_clip_from_cfg(cfg), "fp16" if device.type == "cuda" else "fp32", device)
        clip_model.to(device)
        template = zeroshot_template(cfg.DATASET.NAME, self.dm.dataset)
        print(f"Prompt template: {template!r}")
        self.text_features = class_text_features(clip_model, template, self.dm.dataset.classnames,
                                                 cfg.MODEL.TEXT_CHUNK)
        self.clip_model = clip_model

    def model_inference(self, image: Tensor) -> Tensor:
        with torch.no_grad():
            image_features = encode_image(self.clip_model.visual, image)
        return prompted_logits(image_features, self.text_features, self.clip_model.logit_scale)


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
        self.text_features = torch.stack([  # [D, K, E]
            class_text_features(clip_model, template, self.dm.dataset.classnames, cfg.MODEL.TEXT_CHUNK)
            for template in templates])
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
