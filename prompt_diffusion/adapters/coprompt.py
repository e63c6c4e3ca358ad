"""CoPrompt adapter: ``V`` as MaPLe's (text ``[depth x n, 512]``, vision prompts through the learned
projections), with CoPrompt's feature MLPs (mixed in residually) on the logits path; the host loss is
CoPrompt's cross-entropy plus its consistency losses.

Upstream layout (ShuvenduRoy/CoPrompt ``trainers/coprompt.py``): MaPLe's ``prompt_learner`` plus
``adapter_image`` / ``adapter_text`` (512 -> 128 -> 512 feature MLPs; upstream's names, not
prompt adapters) mixed into the features with the
ratios ``image_adapter_m`` (0.1) and ``text_adapter_m`` (0.2), at training and at inference.
While training, ``CustomCLIP.forward(image1, image2, label)`` returns the loss; ``image2`` is a
second augmentation of the batch, the third entry of the parsed batch ``(image1, label, image2)``
that the CoPrompt trainer's ``parse_batch_train`` returns and the host loss receives.
"""
from typing import Optional, Sequence, Tuple

from torch import Tensor

from prompt_diffusion.adapters.base import ParsedBatch, images_and_labels, register_adapter
from prompt_diffusion.adapters.maple import MaPLeAdapter
from prompt_diffusion.prompt_methods import coprompt_features

__all__ = ["CoPromptAdapter"]


@register_adapter
class CoPromptAdapter(MaPLeAdapter):
    required_attributes = MaPLeAdapter.required_attributes + (
        "adapter_image", "adapter_text", "image_adapter_m", "text_adapter_m",
    )
    host_loss_is_prompt_ce = False  # the CE plus the consistency losses, on two views

    def features(self, images: Tensor, ctx: Tensor, deep_text: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
        return coprompt_features(self.model, images, ctx, deep_text, self.chunk_size)

    def host_loss(self, batch: ParsedBatch) -> Optional[Tensor]:
        """CoPrompt's loss on ``batch = (view 1, labels, view 2)``, as its trainer parses a batch."""
        images, labels = images_and_labels(batch, type(self).__name__)
        expected = ("CoPrompt's loss needs the second augmented view of the batch as the third entry of the "
                    "parsed batch (view 1, labels, view 2), as the CoPrompt trainer's parse_batch_train returns "
                    "it (DATALOADER.K_TRANSFORMS 2)")
        if len(batch) < 3:
            raise ValueError(f"CoPromptAdapter: {expected}; got {len(batch)} entries")
        second_view = batch[2]
        if not isinstance(second_view, Tensor) or second_view.shape[0] != images.shape[0]:
            got = tuple(second_view.shape) if isinstance(second_view, Tensor) else type(second_view).__name__
            raise ValueError(f"CoPromptAdapter: {expected}, {images.shape[0]} images like view 1; got {got}")
        return self.model(images, second_view, labels)
