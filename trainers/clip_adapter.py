"""CLIP-Adapter (Gao et al., "CLIP-Adapter: Better Vision-Language Models with Feature Adapters", IJCV 2024).

A two-layer bottleneck MLP ``adapter`` (``Linear(E, E/4) -> ReLU -> Linear(E/4, E) -> ReLU``, no
biases) on CLIP's image feature, mixed in residually: ``f' = ratio * adapter(f) + (1 - ratio) * f``
(ratio 0.2); the class text features are CLIP's own for the dataset's hand-written template
(``CUSTOM_TEMPLATES``, the same dictionary as zero-shot CLIP's). CLIP frozen, in fp32; only the
adapter trains (SGD in the shipped configs) and is saved, as ``clip_adapter``.

Names, shapes and checkpoint layout as gaopengcuhk/CLIP-Adapter ``clip_adapter.py``, which
hard-codes the adapter width 1024 (RN50's feature) and ratio 0.2: here the width is the backbone's
embedding width and ``TRAINER.CLIP_ADAPTER.RATIO`` / ``REDUCTION`` default to upstream's values.
The text features are computed once, not at every forward as upstream (the text encoder is frozen,
so the values are the same). With ratio 0 the logits are zero-shot CLIP's exactly.
"""
from typing import Sequence

from torch import Tensor, nn

from prompt_diffusion.clip_prompting import encode_image, prompted_logits
from prompt_diffusion.engine import TRAINER_REGISTRY

from ._common import PromptedCLIPTrainer, check_image_size
from .coprompt import FeatureMLP  # upstream's ``Adapter``, which CoPrompt took over unchanged
from .zsclip import class_text_features, zeroshot_template


class CustomCLIP(nn.Module):
    """``image_encoder`` (CLIP's visual tower), ``adapter`` (``Linear(E, E / reduction) -> ReLU ->
    Linear(E / reduction, E) -> ReLU``, no biases: upstream's ``Adapter``), the frozen ``text_features`` ``[K, E]``
    (normalised; a buffer that is not saved), ``logit_scale``, ``dtype``, ``ratio``."""

    def __init__(self, cfg, classnames: Sequence[str], clip_model: nn.Module, template: str):
        super().__init__()
        node = cfg.TRAINER.CLIP_ADAPTER
        if not 0.0 <= node.RATIO <= 1.0:
            raise ValueError(f"TRAINER.CLIP_ADAPTER.RATIO={node.RATIO}: must be in [0, 1]")
        check_image_size(cfg, clip_model)
        self.image_encoder = clip_model.visual
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype
        embed_dim = clip_model.text_projection.shape[1]
        if not 1 <= node.REDUCTION <= embed_dim:
            raise ValueError(f"TRAINER.CLIP_ADAPTER.REDUCTION={node.REDUCTION}: must be in [1, {embed_dim}] "
                             f"(the feature width)")
        self.adapter = FeatureMLP(embed_dim, node.REDUCTION).to(clip_model.dtype)
        self.ratio = float(node.RATIO)
        print(f"Prompt template: {template!r}")
        self.register_buffer("text_features", class_text_features(clip_model, template, classnames,
                                                                  cfg.MODEL.TEXT_CHUNK), persistent=False)

    def forward(self, image: Tensor) -> Tensor:
        """Logits ``[B, K]``."""
        image_features = encode_image(self.image_encoder, image)  # [B, E]
        adapted = self.adapter(image_features)
        image_features = self.ratio * adapted + (1 - self.ratio) * image_features
        return prompted_logits(image_features, self.text_features, self.logit_scale)


@TRAINER_REGISTRY.register()
class CLIPAdapter(PromptedCLIPTrainer):
    """CLIP-Adapter. https://arxiv.org/abs/2110.04544 (upstream's trainer name: ``CLIP_Adapter``)."""

    PREC_NODE = "CLIP_ADAPTER"
    MODEL_NAME = "clip_adapter"
    TRAINABLE = ("adapter",)

    def build_custom_clip(self, cfg, classnames, clip_model):
        return CustomCLIP(cfg, classnames, clip_model, zeroshot_template(cfg.DATASET.NAME, self.dm.dataset))

    def learned_module(self) -> nn.Module:
        return self.model.adapter
