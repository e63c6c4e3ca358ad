"""PromptSRC adapter: ``V`` as IVLP's (text ``[depth_t x n_t, 512]`` + vision ``[depth_v x n_v, 768]``,
two widths); the host loss is PromptSRC's cross-entropy plus its self-regularisation.

Upstream layout (muzairkhattak/PromptSRC ``trainers/promptsrc.py``): IVLP's prompts, plus the frozen
text-feature ensemble ``prompt_learner.fixed_embeddings`` ``[K, 512]``. While the prompt learner
trains, ``CustomCLIP.forward(image, label)`` returns ``(ce, text_features, fixed_embeddings,
zero_shot_image_features, image_features, zero_shot_logits, logits)`` and the trainer combines
them (``prompt_methods.promptsrc_loss_terms``, which the PromptSRC trainer uses too).
"""
from typing import Optional

from torch import Tensor

from prompt_diffusion.adapters.base import ParsedBatch, images_and_labels, register_adapter
from prompt_diffusion.adapters.ivlp import IVLPAdapter
from prompt_diffusion.prompt_methods import promptsrc_loss_terms

__all__ = ["PromptSRCAdapter"]


@register_adapter
class PromptSRCAdapter(IVLPAdapter):
    """IVLP's prompt groups and per-sample forward; PromptSRC's regularised loss as the host loss
    (weights ``TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT`` / ``IMAGE_LOSS_WEIGHT``)."""

    required_attributes = IVLPAdapter.required_attributes + ("prompt_learner.fixed_embeddings",)
    host_loss_is_prompt_ce = False  # the CE plus the self-regularisation terms

    def __init__(self, model, cfg=None):
        super().__init__(model, cfg)
        if cfg is None or "PROMPTSRC" not in cfg.TRAINER:
            raise ValueError("PromptSRCAdapter needs the trainer's config with TRAINER.PROMPTSRC "
                             "(TEXT_LOSS_WEIGHT, IMAGE_LOSS_WEIGHT) for the host loss")
        self.text_weight = cfg.TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT
        self.image_weight = cfg.TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT

    def host_loss(self, batch: ParsedBatch) -> Optional[Tensor]:
        images, labels = images_and_labels(batch, type(self).__name__)
        terms = promptsrc_loss_terms(self.model(images, labels), self.text_weight, self.image_weight)
        return sum(terms.values())
