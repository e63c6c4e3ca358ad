"""IVLP adapter: ``V`` is the text group ``[depth_t x n_t, 512]`` and the vision group
``[depth_v x n_v, 768]`` (two widths; the denoiser maps each group in and out on its own); with
``TRAINER.PD.DEEP_TOKENS layer`` one token per prompted layer instead (``[depth, n x width]``).

Upstream layout (muzairkhattak/multimodal-prompt-learning ``trainers/independentVL.py``): text
``prompt_learner.ctx`` after SOS plus ``text_encoder.transformer.resblocks[i].VPT_shallow``; vision as
VPT (``image_encoder.VPT`` + deep ``VPT_shallow``; absent when ``PROMPT_DEPTH_VISION`` is 0).
"""
from typing import Dict, List, Optional

from torch import Tensor

from prompt_diffusion.adapters.base import (
    ParsedBatch, PromptAdapter, PromptGroup, class_tokens, images_and_labels, loss_of, register_adapter, text_chunk,
)
from prompt_diffusion.adapters.coop import CoOpAdapter
from prompt_diffusion.adapters.deep import DeepPrompts, deep_tokens
from prompt_diffusion.adapters.vpt import VisualPromptsMixin
from prompt_diffusion.clip_prompting import encode_image, encode_prompted_text, prompted_logits

__all__ = ["IVLPAdapter"]


@register_adapter
class IVLPAdapter(VisualPromptsMixin, PromptAdapter):
    required_attributes = CoOpAdapter.required_attributes + ("text_encoder.transformer.resblocks.1.VPT_shallow",)
    host_loss_is_prompt_ce = True

    def __init__(self, model, cfg=None):
        super().__init__(model, cfg)
        self.text = DeepPrompts.from_blocks(model, "text", "prompt_learner.ctx", "text_encoder.transformer.resblocks",
                                            type(self).__name__, deep_tokens(cfg))
        self.chunk_size = text_chunk(cfg)

    @property
    def groups(self) -> List[PromptGroup]:
        return [self.text.group] + ([self.visual.group] if self.visual is not None else [])

    def base_prompts(self) -> Dict[str, Tensor]:
        prompts = {"text": self.text.stacked()}
        if self.visual is not None:
            prompts["vision"] = self.visual.stacked()
        return prompts

    def logits(self, images: Tensor, prompts: Dict[str, Tensor], image_features: Optional[Tensor] = None) -> Tensor:
        self.check_prompts(prompts, images.shape[0])
        if self.visual is not None:
            image = self.prompted_image_features(images, prompts["vision"])
        else:
            image = encode_image(self.find("image_encoder"), images)
        ctx, deep = self.text.split(prompts["text"])
        learner = self.find("prompt_learner")
        text = encode_prompted_text(self.find("text_encoder"), learner.token_prefix, learner.token_suffix,
                                    class_tokens(self), ctx, deep, chunk_size=self.chunk_size)  # [B, K, E]
        return prompted_logits(image, text, self.find("logit_scale"))

    def host_loss(self, batch: ParsedBatch) -> Optional[Tensor]:
        images, labels = images_and_labels(batch, type(self).__name__)
        return loss_of(self.model(images, labels), labels)  # IVLP returns its loss while training
