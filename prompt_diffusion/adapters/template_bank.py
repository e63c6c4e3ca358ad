"""TemplateCoOp adapter: ``V`` is each image's log-prior over the host's bank of templates.

The layout of ``trainers/template_coop.py``: CoOp's (``prompt_learner.ctx``, ``image_encoder``,
``logit_scale``) over T x K prompts, ``prompt_learner.n_templates``, and the model's
``bank_text_features()`` (the T x K class texts, computed once per context value at evaluation). The host scores the bank per image,
label-free (``template_bank_logits``); prompt diffusion adds a generated log-prior over the T
templates, one token of width T: the host's prompt is the uniform prior (zeros), so a zero residual
is the host exactly. What the generator learns is which templates serve an image beyond how strongly
the image answers them (the label target: those under which its true class wins); its cost at test
is the generator's, the T x K texts being shared by all images.
"""
from typing import Dict, List, Optional

import torch
from torch import Tensor

from prompt_diffusion.adapters.base import (
    ParsedBatch, PromptAdapter, PromptGroup, images_and_labels, loss_of, register_adapter,
)
from prompt_diffusion.prompt_methods import template_bank_logits

__all__ = ["TemplateBankAdapter"]


@register_adapter
class TemplateBankAdapter(PromptAdapter):
    required_attributes = ("prompt_learner.ctx", "prompt_learner.n_templates", "bank_text_features", "text_encoder",
                           "image_encoder", "logit_scale")

    @property
    def groups(self) -> List[PromptGroup]:
        return [PromptGroup("template", 1, int(self.find("prompt_learner.n_templates")))]

    def base_prompts(self) -> Dict[str, Tensor]:
        """The uniform log-prior ``[1, T]`` (a constant: the host learns its context, not its prior)."""
        ctx = self.find("prompt_learner.ctx")
        return {"template": torch.zeros(1, self.groups[0].width, dtype=torch.float32, device=ctx.device)}

    @property
    def feature_dim(self) -> int:
        return int(self.find("text_encoder.text_projection").shape[1])

    def logits(self, images: Tensor, prompts: Dict[str, Tensor], image_features: Optional[Tensor] = None) -> Tensor:
        self.check_prompts(prompts, images.shape[0])
        if image_features is None:
            image_features = self.image_features(images)
        text = self.find("bank_text_features")()  # [T, K, E]: the host's own (computed once at evaluation)
        return template_bank_logits(image_features, text, self.find("logit_scale"), prompts["template"][:, 0])

    def host_loss(self, batch: ParsedBatch) -> Optional[Tensor]:
        images, labels = images_and_labels(batch, type(self).__name__)
        return loss_of(self.model(images), labels)
