"""ProGrad adapter: CoOp's prompts and forward (``V`` = ``prompt_learner.ctx``); the host loss is
ProGrad's own, so that the prompt learner's gradient under prompt diffusion is still projected.

Layout (``prompt_diffusion.trainers.prograd``): CoOp's ``CustomCLIP`` plus the zero-shot teacher's
``zs_text_features``. While the prompt learner trains, ``model(images, labels)`` returns the
cross-entropy as a scalar whose gradient is ProGrad's projected one. In the wrapper's step the
prompt learner gets gradient from the host loss alone (with ``HOST_LOSS_WEIGHT`` > 0 the CE of
Eq. 8 and the generator loss reach only the generator), so its update is ``HOST_LOSS_WEIGHT`` times
the projected gradient, as in ProGrad. The CoOp adapter would train it with the plain cross-entropy.
"""
from typing import Optional

from torch import Tensor

from prompt_diffusion.adapters.base import ParsedBatch, images_and_labels, loss_of, register_adapter
from prompt_diffusion.adapters.coop import CoOpAdapter

__all__ = ["ProGradAdapter"]


@register_adapter
class ProGradAdapter(CoOpAdapter):
    required_attributes = CoOpAdapter.required_attributes + ("zs_text_features",)
    host_loss_is_prompt_ce = False  # its value is the CE, its gradient the projected one

    def host_loss(self, batch: ParsedBatch) -> Optional[Tensor]:
        images, labels = images_and_labels(batch, type(self).__name__)
        return loss_of(self.model(images, labels), labels)
