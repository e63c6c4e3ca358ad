"""CoOp adapter: ``V`` is the shared text context ``prompt_learner.ctx`` ``[n_ctx, 512]``.

Upstream layout (KaiyangZhou/CoOp ``trainers/coop.py``): ``CustomCLIP`` with ``prompt_learner``
(``ctx``, ``token_prefix`` SOS, ``token_suffix`` class tokens + EOT), ``tokenized_prompts``,
``text_encoder``, ``image_encoder`` and ``logit_scale``. The image side carries no prompt, so the
frozen image feature computed once per batch serves both ``π`` and the logits.
"""
from typing import Dict, List, Optional

from torch import Tensor, nn

from prompt_diffusion.adapters.base import (
    ParsedBatch, PromptAdapter, PromptGroup, PromptLayoutError, class_tokens, images_and_labels, loss_of,
    register_adapter, text_chunk,
)
from prompt_diffusion.clip_prompting import encode_prompted_text, prompted_logits

__all__ = ["CoOpAdapter", "TextContextAdapter"]


class TextContextAdapter(PromptAdapter):
    """Shared base of the adapters whose ``V`` is the text context after SOS (CoOp, CoCoOp)."""

    required_attributes = (
        "prompt_learner.ctx",
        "prompt_learner.token_prefix",
        "prompt_learner.token_suffix",
        "text_encoder",
        "image_encoder",
        "logit_scale",
    )

    def __init__(self, model: nn.Module, cfg=None):
        super().__init__(model, cfg)
        ctx = self.find("prompt_learner.ctx")
        if ctx.dim() != 2:
            raise PromptLayoutError(
                f"{type(self).__name__}: prompt_learner.ctx has shape {tuple(ctx.shape)}; only a shared "
                "context [n_ctx, width] is supported (class-specific contexts, CSC=True, would make a "
                "per-sample prompt of K x n_ctx tokens)"
            )
        position = getattr(self.find("prompt_learner"), "class_token_position", "end")
        if position != "end":
            raise PromptLayoutError(
                f"{type(self).__name__}: class_token_position = {position!r}; per-sample prompts need the "
                "context right after SOS (class_token_position 'end')"
            )
        self.chunk_size = text_chunk(cfg)

    @property
    def groups(self) -> List[PromptGroup]:
        n_ctx, width = self.find("prompt_learner.ctx").shape
        return [PromptGroup("text", int(n_ctx), int(width))]

    def base_prompts(self) -> Dict[str, Tensor]:
        return {"text": self.find("prompt_learner.ctx")}

    @property
    def feature_dim(self) -> int:
        return int(self.find("text_encoder.text_projection").shape[1])

    def logits(self, images: Tensor, prompts: Dict[str, Tensor], image_features: Optional[Tensor] = None) -> Tensor:
        self.check_prompts(prompts, images.shape[0])
        if image_features is None:
            image_features = self.image_features(images)
        learner = self.find("prompt_learner")
        text = encode_prompted_text(
            self.find("text_encoder"), learner.token_prefix, learner.token_suffix, class_tokens(self),
            prompts["text"], chunk_size=self.chunk_size,
        )  # [B, K, E]
        return prompted_logits(image_features.to(text.dtype), text, self.find("logit_scale"))


@register_adapter
class CoOpAdapter(TextContextAdapter):
    """CoOp: the host's forward returns logits; its loss is their cross-entropy."""

    host_loss_is_prompt_ce = True

    def host_loss(self, batch: ParsedBatch) -> Optional[Tensor]:
        images, labels = images_and_labels(batch, type(self).__name__)
        return loss_of(self.model(images), labels)
