"""VPT: deep visual prompt tuning on CLIP (as muzairkhattak/multimodal-prompt-learning ``trainers/vpt.py``).

Learned visual tokens appended after CLS + patches (``image_encoder.VPT`` ``[n, W]``) and, for
``PROMPT_DEPTH_VISION > 1``, replaced at layers ``1..depth-1``
(``image_encoder.transformer.resblocks.<i>.VPT_shallow``). The text side is frozen: hand-crafted
"a photo of a <class>." features computed once per class set.
"""
from typing import Sequence

from torch import Tensor, nn

from prompt_diffusion.clip_prompting import deep_prompts_of, encode_image, prompted_logits
from prompt_diffusion.engine import TRAINER_REGISTRY

from ._common import (
    PromptedCLIPTrainer, TextEncoder, attach_visual_prompts, check_image_size, class_prompt_texts,
    frozen_text_features,
)

HAND_CRAFTED_PREFIX = "a photo of a"


class FixedEmbeddings(nn.Module):
    """Frozen text features of "a photo of a <class>." (a non-persistent buffer: never checkpointed)."""

    def __init__(self, classnames: Sequence[str], clip_model: nn.Module, chunk_size: int = 0):
        super().__init__()
        features = frozen_text_features(clip_model, class_prompt_texts(HAND_CRAFTED_PREFIX, classnames), chunk_size,
                                        desc="VPT class features")  # [K, E]
        self.register_buffer("fixed_embeddings", features, persistent=False)

    def return_fixed_embeddings(self) -> Tensor:
        return self.fixed_embeddings


class CustomCLIP(nn.Module):
    def __init__(self, cfg, classnames: Sequence[str], clip_model: nn.Module):
        super().__init__()
        node = cfg.TRAINER.VPT
        if node.PROMPT_DEPTH_VISION < 1:
            raise ValueError(f"TRAINER.VPT.PROMPT_DEPTH_VISION={node.PROMPT_DEPTH_VISION}: must be >= 1")
        check_image_size(cfg, clip_model)
        print(f"Number of context words (tokens) for Vision prompting: {node.N_CTX_VISION}")
        self.embeddings = FixedEmbeddings(classnames, clip_model, cfg.MODEL.TEXT_CHUNK)
        attach_visual_prompts(clip_model.visual, node.N_CTX_VISION, node.PROMPT_DEPTH_VISION)
        self.image_encoder = clip_model.visual
        self.text_encoder = TextEncoder(clip_model, chunk_size=cfg.MODEL.TEXT_CHUNK)
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype

    def forward(self, image: Tensor, label=None, training: bool = False) -> Tensor:
        """Logits ``[B, K]``; the cross-entropy loss with ``training=True`` (upstream signature)."""
        visual = self.image_encoder
        image_features = encode_image(visual, image, visual.VPT, deep_prompts_of(visual.transformer.resblocks))
        logits = prompted_logits(image_features, self.embeddings.return_fixed_embeddings(), self.logit_scale)
        if training:
            return nn.functional.cross_entropy(logits, label)
        return logits


@TRAINER_REGISTRY.register()
class VPT(PromptedCLIPTrainer):
    """Visual Prompt Tuning (Jia et al., ECCV 2022) on CLIP, deep variant."""

    PREC_NODE = "VPT"
    OPTIMIZE_PROMPT_LEARNER_ONLY = False
    TRAINABLE = ("prompt_learner", "VPT")

    def build_custom_clip(self, cfg, classnames, clip_model):
        return CustomCLIP(cfg, classnames, clip_model)
