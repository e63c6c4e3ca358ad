"""CoPrompt: consistency-guided prompt learning (Roy & Etemad, ICLR 2024; ShuvenduRoy/CoPrompt
``trainers/coprompt.py``).

MaPLe's prompts (``TRAINER.CoPrompt``: ``N_CTX``, ``CTX_INIT``, ``PROMPT_DEPTH``) plus two feature
MLPs mixed residually into the features (``FeatureMLP``, 512 -> 128 -> 512, no bias, ReLU; with
0.1 and 0.2 at training and inference). Upstream calls them "adapters": their attribute names
``adapter_image`` / ``adapter_text`` / ``image_adapter_m`` / ``text_adapter_m`` are upstream's, so
state dicts match upstream checkpoints (in this project an "adapter" is a ``PromptAdapter``). The loss adds to the cross-entropy, with weight
``TRAINER.W``, the consistency with frozen CLIP: of the class text features with the frozen
features of one randomly drawn LLM description per class (the same draw for all classes, each
step), and of the image features with the frozen image features of a second augmented view of the
batch (``DATALOADER.K_TRANSFORMS`` 2, RandAugment). ``TRAINER.DISTILL`` chooses cosine (default) or
MSE. Per-dataset settings of depth, tokens, ``W`` and epochs are merged at construction
(``coprompt_constants``), as upstream merges them last. Descriptions: ``TRAINER.CoPrompt.DESCRIPTIONS_DIR``.

Differences from upstream, none of them in the method: the frozen encoders are CLIP's own run
without prompts (upstream loads a second CLIP for them and saves it in every checkpoint); upstream's
single-template text features, computed but never used, are not; the two views are drawn with
Dassl's RandAugment under the Dassl engine and with torchvision's ``RandAugment(N, M)`` under the
built-in one (which has no RandAugment of its own).
"""
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import RandAugment, ToTensor

from prompt_diffusion.prompt_methods import coprompt_features
from prompt_diffusion.clip_prompting import encode_image
from prompt_diffusion.engine import ENGINE, TRAINER_REGISTRY, build_transform

from . import maple
from ._common import frozen_text_features
from ._multimodal import MultiModalTrainer
from .coprompt_constants import apply_dataset_overrides
from .coprompt_descriptions import description_file, load_class_descriptions

DISTILL_CHOICES = ("cosine", "mse")


def check_distill(cfg) -> None:
    if cfg.TRAINER.DISTILL not in DISTILL_CHOICES:
        raise ValueError(f"TRAINER.DISTILL={cfg.TRAINER.DISTILL!r}: must be one of {DISTILL_CHOICES}")


class FeatureMLP(nn.Module):
    """CoPrompt's feature MLP (upstream ``Adapter``): ``c -> c / reduction -> c``, no bias, ReLU after
    each layer; its state-dict keys (``fc.0.weight``, ``fc.2.weight``) are upstream's."""

    def __init__(self, c_in: int, reduction: int = 4):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(c_in, c_in // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(c_in // reduction, c_in, bias=False),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


def description_features(clip_model: nn.Module, descriptions: List[List[str]], chunk_size: int,
                         device=None) -> Tensor:
    """Frozen, L2-normalised features ``[n_descriptions, K, E]`` of each class's descriptions
    (``descriptions[k]`` lists class ``k``'s, all of one length)."""
    n_classes, n_descriptions = len(descriptions), len(descriptions[0])
    texts = [text for per_class in descriptions for text in per_class]  # class-major
    features = frozen_text_features(clip_model, texts, chunk_size, device, desc="CoPrompt descriptions")
    features = features / features.norm(dim=-1, keepdim=True)
    return features.view(n_classes, n_descriptions, -1).transpose(0, 1).contiguous()


class CustomCLIP(maple.CustomCLIP):
    """MaPLe's prompted CLIP with CoPrompt's feature MLPs and consistency losses.

    ``forward(image1, image2, label)`` returns the loss while the prompt learner trains;
    ``forward(image)`` the logits ``[B, K]`` otherwise. ``descriptions``: the frozen description
    features ``[n, K, E]`` (``description_features``).
    """

    def __init__(self, cfg, classnames: Sequence[str], clip_model: nn.Module, descriptions: Tensor):
        super().__init__(cfg, classnames, clip_model, node="CoPrompt")
        check_distill(cfg)
        if descriptions.shape[1] != len(classnames):
            raise ValueError(f"description features cover {descriptions.shape[1]} classes, "
                             f"the model {len(classnames)}")
        # class-dependent and recomputed from the class names: moves with the model, never saved
        self.register_buffer("ori_embedding", descriptions, persistent=False)  # [n, K, E]
        self.distill_criteria = cfg.TRAINER.DISTILL
        self.lambd = cfg.TRAINER.W
        embed_dim = clip_model.text_projection.shape[1]
        self.adapter_image = FeatureMLP(embed_dim, 4).to(clip_model.dtype)
        self.adapter_text = FeatureMLP(embed_dim, 4).to(clip_model.dtype)
        self.image_adapter_m = 0.1
        self.text_adapter_m = 0.2

    def features(self, image: Tensor) -> Tuple[Tensor, Tensor]:
        ctx, deep_text = self.prompt_learner.text_prompts()
        return coprompt_features(self, image, ctx, deep_text, self.text_encoder.chunk_size)

    def consistency(self, student: Tensor, teacher: Tensor) -> Tensor:
        """1 - mean cosine similarity (``cosine``) or the mean squared error (``mse``) of two feature sets."""
        if self.distill_criteria == "cosine":
            return 1.0 - F.cosine_similarity(student, teacher, dim=1, eps=1e-7).mean()
        return F.mse_loss(student, teacher)

    def loss_terms(self, image1: Tensor, image2: Tensor, label: Tensor) -> Dict[str, Tensor]:
        """Cross-entropy on ``image1``, and ``W`` x the text and image consistency with frozen CLIP."""
        if image2 is None or label is None:
            raise ValueError("CoPrompt trains on two augmented views and the labels: forward(image1, image2, label)")
        image_features, text_features = self.features(image1)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        logits = self.logit_scale.exp() * image_features @ text_features.t()
        draw = int(torch.randint(self.ori_embedding.shape[0], ()))
        frozen_text = self.ori_embedding[draw].to(text_features.dtype)  # [K, E], one description per class
        with torch.no_grad():  # the frozen image encoder: CLIP's own, without prompts
            frozen_image = encode_image(self.image_encoder, image2)
            frozen_image = frozen_image / frozen_image.norm(dim=-1, keepdim=True)
        return {
            "loss_ce": F.cross_entropy(logits, label),
            "loss_text": self.lambd * self.consistency(text_features.float(), frozen_text.float()),
            "loss_image": self.lambd * self.consistency(image_features.float(), frozen_image.float()),
        }

    def forward(self, image1: Tensor, image2: Tensor = None, label: Tensor = None) -> Tensor:
        if self.prompt_learner.training:
            return sum(self.loss_terms(image1, image2, label).values())
        return self.logits(image1)


def randaugment_transforms(cfg):
    """Train and test transforms for ``INPUT.TRANSFORMS`` with ``randaugment`` (built-in engine):
    the other choices as the engine builds them, torchvision's ``RandAugment(RANDAUGMENT_N,
    RANDAUGMENT_M)`` on the PIL image right before ``ToTensor`` (where Dassl applies its own)."""
    choices = [choice for choice in cfg.INPUT.TRANSFORMS if choice != "randaugment"]
    train = build_transform(cfg, is_train=True, choices=choices)
    position = next(i for i, step in enumerate(train.transforms) if isinstance(step, ToTensor))
    train.transforms.insert(position, RandAugment(num_ops=cfg.INPUT.RANDAUGMENT_N, magnitude=cfg.INPUT.RANDAUGMENT_M))
    return train, build_transform(cfg, is_train=False, choices=choices)


def with_dataset_overrides(cfg):
    """A copy of ``cfg`` with CoPrompt's per-dataset settings merged (``TRAINER.CoPrompt.DATASET_OVERRIDES``)."""
    cfg = cfg.clone()
    cfg.defrost()
    applied = apply_dataset_overrides(cfg)
    if applied:
        print(f"CoPrompt settings for {cfg.DATASET.NAME}: {', '.join(applied)}")
    cfg.freeze()
    return cfg


@TRAINER_REGISTRY.register()
class CoPrompt(MultiModalTrainer):
    """Consistency-guided prompt learning (CoPrompt). https://arxiv.org/abs/2306.01195"""

    PREC_NODE = "CoPrompt"
    MODEL_NAME = "MultiModalPromptLearner"
    TRAINABLE = ("prompt_learner", "adapter")  # the feature MLPs' upstream names: adapter_image, adapter_text

    def __init__(self, cfg):
        super().__init__(with_dataset_overrides(cfg))

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        if cfg.DATALOADER.K_TRANSFORMS < 2:
            raise ValueError(f"DATALOADER.K_TRANSFORMS={cfg.DATALOADER.K_TRANSFORMS}: CoPrompt needs 2 "
                             "augmented views of each training image")
        check_distill(cfg)

    def build_data_loader(self):
        if "randaugment" not in self.cfg.INPUT.TRANSFORMS or ENGINE == "dassl":
            return super().build_data_loader()
        print("RandAugment: torchvision's (the built-in engine has none of its own)")
        train_transform, test_transform = randaugment_transforms(self.cfg)
        super().build_data_loader(custom_tfm_train=train_transform, custom_tfm_test=test_transform)

    def build_custom_clip(self, cfg, classnames, clip_model):
        path = description_file(cfg.TRAINER.CoPrompt.DESCRIPTIONS_DIR, cfg.DATASET.NAME)
        descriptions = load_class_descriptions(path, classnames)
        print(f"CoPrompt descriptions: {path} ({len(descriptions[0])} per class)")
        features = description_features(clip_model, descriptions, cfg.MODEL.TEXT_CHUNK, self.device)
        return CustomCLIP(cfg, classnames, clip_model, features)

    def parse_batch_train(self, batch):
        """``(view 1, label, view 2)``: the first two as every CoOp-family trainer returns them; the
        prompt-diffusion wrapper hands the whole tuple to ``CoPromptAdapter.host_loss``."""
        views = batch["img"]
        if not isinstance(views, (list, tuple)) or len(views) < 2:
            raise ValueError("CoPrompt needs two augmented views per training image (DATALOADER.K_TRANSFORMS 2)")
        image1, image2 = views[0].to(self.device), views[1].to(self.device)
        return image1, batch["label"].to(self.device), image2

    def loss_terms(self, batch: dict) -> Dict[str, Tensor]:
        image1, label, image2 = self.parse_batch_train(batch)
        return self.model.loss_terms(image1, image2, label)
