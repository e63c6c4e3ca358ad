"""MaPLe adapter: ``V`` is the text side, ``[depth x n, 512]`` (or ``[depth, n x 512]`` with
``TRAINER.PD.DEEP_TOKENS layer``, see ``adapters/deep.py``); the vision prompts follow from it.

Upstream layout (muzairkhattak/multimodal-prompt-learning ``trainers/maple.py``): the text prompt
``prompt_learner.ctx`` ``[n, 512]`` after SOS and the deep text prompts
``prompt_learner.compound_prompts_text[i]`` ``[n, 512]`` of layers ``1..depth-1``; the vision
prompts are *coupled* to them by learned projections, ``prompt_learner.proj(ctx)`` for the input
and ``prompt_learner.compound_prompt_projections[i](compound_prompts_text[i])`` for layer ``i+1``.
The diffused group stacks the text tokens ``[ctx; deep_1; ...; deep_{depth-1}]``; a per-sample
text prompt gives per-sample vision prompts through the same projections.

``maple_features`` is MaPLe's prompted forward; the MaPLe and CoPrompt trainers use it too.
"""
from typing import Dict, List, Optional, Sequence, Tuple

from torch import Tensor, nn

from prompt_diffusion.adapters.base import ParsedBatch, PromptAdapter, PromptGroup, images_and_labels, register_adapter
from prompt_diffusion.adapters.coop import loss_of, text_chunk
from prompt_diffusion.adapters.deep import DeepPrompts, deep_tokens
from prompt_diffusion.adapters.vpt import VisualPromptsMixin
from prompt_diffusion.clip_prompting import encode_image, encode_prompted_text, prompted_logits

__all__ = ["MaPLeAdapter", "coupled_visual_prompts", "maple_features"]


def _project(layer: nn.Linear, prompt: Tensor) -> Tensor:
    """``layer(prompt)`` in the layer's dtype (the text prompts may be fp32 while the layer is fp16)."""
    return layer(prompt.to(layer.weight.dtype))


def coupled_visual_prompts(learner: nn.Module, ctx: Tensor, deep_text: Sequence[Tensor]) -> Tuple[Tensor, List[Tensor]]:
    """MaPLe's vision prompts from its text prompts: ``proj(ctx)`` and ``compound_prompt_projections[i](deep_i)``.

    ``ctx`` and each deep prompt are ``[n, 512]`` (shared) or ``[B, n, 512]`` (per sample); the
    results have the same leading shape with the vision width (768).
    """
    shallow = _project(learner.proj, ctx)
    deep = [_project(layer, prompt) for layer, prompt in zip(learner.compound_prompt_projections, deep_text)]
    return shallow, deep


def maple_features(
    model: nn.Module, images: Tensor, ctx: Tensor, deep_text: Sequence[Tensor], chunk_size: int = 0
) -> Tuple[Tensor, Tensor]:
    """MaPLe's prompted image and class text features (not normalised).

    Args:
        model: a MaPLe-layout ``CustomCLIP`` (``prompt_learner``, ``image_encoder``, ``text_encoder``,
            ``tokenized_prompts``).
        images: ``[B, 3, H, W]``.
        ctx: text prompt ``[n, D]`` shared or ``[B, n, D]`` per sample.
        deep_text: deep text prompts of layers ``1..depth-1``, each shaped like ``ctx``.
        chunk_size: text sequences encoded at once (``MODEL.TEXT_CHUNK``; 0: all).

    Returns:
        image features ``[B, E]``; text features ``[K, E]`` (shared) or ``[B, K, E]`` (per sample).
    """
    learner = model.prompt_learner
    shallow_visual, deep_visual = coupled_visual_prompts(learner, ctx, deep_text)
    image_features = encode_image(model.image_encoder, images, shallow_visual, deep_visual)
    text_features = encode_prompted_text(
        model.text_encoder, learner.token_prefix, learner.token_suffix, model.tokenized_prompts, ctx, deep_text,
        chunk_size=chunk_size,
    )
    return image_features, text_features


@register_adapter("MaPLe")
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
