"""CoCoOp adapter: ``V`` is the text context ``prompt_learner.ctx``, shifted per image by CoCoOp's Meta-Net.

Upstream layout (KaiyangZhou/CoOp ``trainers/cocoop.py``): CoOp's plus ``prompt_learner.meta_net``
(vis_dim -> vis_dim/16 -> ctx_dim). In the host the Meta-Net shifts the context per image, and so
it does under prompt diffusion: the host's prompt ``ctx + meta_net(f(x))`` is the centre of each
sample's residual. The generator's condition ``π`` is prompt diffusion's own (``TRAINER.PD.COND``):
the host's Meta-Net stays the host's, trained by its own loss alone.
"""
from typing import Dict, Optional

from torch import Tensor, nn

from prompt_diffusion.adapters.base import ParsedBatch, images_and_labels, loss_of, register_adapter
from prompt_diffusion.adapters.coop import TextContextAdapter

__all__ = ["CoCoOpAdapter"]


@register_adapter
class CoCoOpAdapter(TextContextAdapter):
    required_attributes = TextContextAdapter.required_attributes + ("prompt_learner.meta_net",)
    host_loss_is_prompt_ce = True

    def meta_net(self) -> nn.Module:
        """CoCoOp's Meta-Net (``prompt_learner.meta_net``): the host's per-image shift of its context."""
        return self.find("prompt_learner.meta_net")

    def host_prompts(self, image_features: Tensor) -> Dict[str, Tensor]:
        meta_net = self.meta_net()
        bias = meta_net(image_features.to(next(meta_net.parameters()).dtype))  # [B, D]
        return {"text": self.find("prompt_learner.ctx").unsqueeze(0) + bias.unsqueeze(1)}  # [B, n_ctx, D]

    def host_loss(self, batch: ParsedBatch) -> Optional[Tensor]:
        images, labels = images_and_labels(batch, type(self).__name__)
        # upstream CustomCLIP.forward(image, label) returns the loss while the prompt learner trains
        return loss_of(self.model(images, labels), labels)
