"""What the multi-modal trainers (MaPLe, PromptSRC, CoPrompt) share: a training step over named
loss terms.
"""
from typing import Dict

from torch import Tensor

from ._common import PromptedCLIPTrainer, autocast_context


class MultiModalTrainer(PromptedCLIPTrainer):
    """The CoOp-family skeleton with a training step over named loss terms.

    Subclasses implement ``loss_terms(batch)``: the weighted terms whose sum is the loss. Each term
    is logged on its own (``loss_ce``, ``loss_scl_text`` ...) next to the total ``loss``. As
    upstream, the whole ``CustomCLIP`` is the registered model and the optimizer sees it all (only
    the trainable prompts receive gradients).
    """

    OPTIMIZE_PROMPT_LEARNER_ONLY = False

    def loss_terms(self, batch: dict) -> Dict[str, Tensor]:
        raise NotImplementedError

    def forward_backward(self, batch: dict) -> Dict[str, float]:
        with autocast_context(self.prec, self.device):
            terms = self.loss_terms(batch)
            loss = sum(terms.values())
        self.step_on_loss(loss)
        summary = {name: value.item() for name, value in terms.items()}
        summary["loss"] = loss.item()
        return summary
