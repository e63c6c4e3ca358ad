"""PromptSRC adapter: ``V`` as IVLP's (text ``[depth_t x n_t, 512]`` + vision ``[depth_v x n_v, 768]``,
two widths); the host loss is PromptSRC's cross-entropy plus its self-regularisation.

Upstream layout (muzairkhattak/PromptSRC ``trainers/promptsrc.py``): IVLP's prompts, plus the frozen
text-feature ensemble ``prompt_learner.fixed_embeddings`` ``[K, 512]``. While the prompt learner
trains, ``CustomCLIP.forward(image, label)`` returns ``(ce, text_features, fixed_embeddings,
zero_shot_image_features, image_features, zero_shot_logits, logits)`` and the trainer combines
them (``promptsrc_loss_terms``, which the PromptSRC trainer uses too).
"""
from typing import Dict, Optional, Sequence

import torch.nn.functional as F
from torch import Tensor

from prompt_diffusion.adapters.base import ParsedBatch, images_and_labels, register_adapter
from prompt_diffusion.adapters.ivlp import IVLPAdapter

__all__ = ["PromptSRCAdapter", "promptsrc_loss_terms"]


def promptsrc_loss_terms(outputs: Sequence[Tensor], text_weight: float, image_weight: float) -> Dict[str, Tensor]:
    """PromptSRC's loss terms from its training forward's outputs (computed in fp32).

    - ``loss_ce``: cross-entropy of the prompted logits;
    - ``loss_scl_text``: ``text_weight`` x L1 between the prompted text features and the frozen
      template ensemble (both L2-normalised);
    - ``loss_scl_image``: ``image_weight`` x L1 between the prompted and the frozen image features;
    - ``loss_scl_logits``: KL(zero-shot ‖ prompted) over the classes, summed and divided by the number
      of logits ``B x K`` (upstream's normalisation), weight 1.
    """
    loss_ce, text, fixed_text, zs_image, image, zs_logits, logits = outputs
    return {
        "loss_ce": loss_ce,
        "loss_scl_text": F.l1_loss(text.float(), fixed_text.float()) * text_weight,
        "loss_scl_image": F.l1_loss(image.float(), zs_image.float()) * image_weight,
        "loss_scl_logits": F.kl_div(F.log_softmax(logits.float(), dim=1), F.log_softmax(zs_logits.float(), dim=1),
                                    reduction="sum", log_target=True) / logits.numel(),
    }


@register_adapter("PromptSRC")
class PromptSRCAdapter(IVLPAdapter):
    """IVLP's prompt groups and per-sample forward; PromptSRC's regularised loss as the host loss
    (weights ``TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT`` / ``IMAGE_LOSS_WEIGHT``)."""

    required_attributes = IVLPAdapter.required_attributes + ("prompt_learner.fixed_embeddings",)

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
