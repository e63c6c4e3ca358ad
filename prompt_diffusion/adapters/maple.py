"""MaPLe adapter: ``V`` is the text side, ``[depth x n, 512]`` (or ``[depth, n x 512]`` with
``TRAINER.PD.DEEP_TOKENS layer``, see ``adapters/deep.py``); the vision prompts follow from it.

Upstream layout (muzairkhattak/multimodal-prompt-learning ``trainers/maple.py``): the text prompt
``prompt_learner.ctx`` ``[n, 512]`` after SOS and the deep text prompts
``prompt_learner.compound_prompts_text[i]`` ``[n, 512]`` of layers ``1..depth-1``; the vision
prompts are *coupled* to them by learned projections, ``prompt_learner.proj(ctx)`` for the input
and ``prompt_learner.compound_prompt_projections[i](compound_prompts_text[i])`` for layer ``i+1``.
The diffused group stacks the text tokens ``[ctx; deep_1; ...; deep_{depth-1}]``; a per-sample
text prompt gives per-sample vision prompts through the same projections.

MaPLe's prompted forward is ``prompt_methods.maple_features``, which the MaPLe and CoPrompt trainers use too.
"""
from typing import Dict, List, Optional, Sequence, Tuple

from torch import Tensor, nn

from prompt_diffusion.adapters.base import (
    ParsedBatch, PromptAdapter, PromptGroup, images_and_labels, loss_of, register_adapter, text_chunk,
)
from prompt_diffusion.adapters.deep import DeepPrompts, deep_tokens
from prompt_diffusion.adapters.vpt import VisualPromptsMixin
from prompt_diffusion.clip_prompting import prompted_logits
from prompt_diffusion.prompt_methods import maple_features

__all__ = ["MaPLeAdapter"]


@register_adapter
class MaPLeAdapter(VisualPromptsMixin, PromptAdapter):
    """``V`` = ``[ctx; compound_prompts_text]`` (text width); π from the prompt-free CLIP image feature."""

    required_attributes = (
        "prompt_learner.ctx",
        "prompt_learner.proj",
        "prompt_learner.compound_prompts_text",
        "prompt_learner.compound_prompt_projections",
        "prompt_learner.token_prefix",
        "prompt_learner.token_suffix",
        "tokenized_prompts",
        "text_encoder",
        "image_encoder",
        "logit_scale",
    )
    host_loss_is_prompt_ce = True

    def __init__(self, model: nn.Module, cfg=None):
        super().__init__(model, cfg)
        learner = self.find("prompt_learner")
        self.text = DeepPrompts("text", learner.ctx, learner.compound_prompts_text, type(self).__name__,
                                deep_tokens(cfg), where="prompt_learner.compound_prompts_text[i - 1]")
        self.chunk_size = text_chunk(cfg)

    @property
    def groups(self) -> List[PromptGroup]:
        return [self.text.group]

    def base_prompts(self) -> Dict[str, Tensor]:
        return {"text": self.text.stacked()}

    def features(self, images: Tensor, ctx: Tensor, deep_text: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
        """Prompted image ``[B, E]`` and text ``[B, K, E]`` features under per-sample prompts."""
        return maple_features(self.model, images, ctx, deep_text, self.chunk_size)

    def logits(self, images: Tensor, prompts: Dict[str, Tensor], image_features: Optional[Tensor] = None) -> Tensor:
        self.check_prompts(prompts, images.shape[0])
        ctx, deep_text = self.text.split(prompts["text"])
        image, text = self.features(images, ctx, deep_text)
        return prompted_logits(image, text, self.find("logit_scale"))

    def host_loss(self, batch: ParsedBatch) -> Optional[Tensor]:
        images, labels = images_and_labels(batch, type(self).__name__)
        return loss_of(self.model(images, labels), labels)  # MaPLe returns its loss while training
