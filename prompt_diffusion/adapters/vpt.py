"""VPT adapter: ``V`` is every visual prompt (shallow + deep, one group): ``[depth x n, width]``, or
``[depth, n x width]`` with ``TRAINER.PD.DEEP_TOKENS layer``.

Upstream layout (muzairkhattak/multimodal-prompt-learning ``trainers/vpt.py`` + its ``clip``):
``image_encoder.VPT`` ``[n, W]`` after CLS + patches, ``image_encoder.transformer.resblocks[i].VPT_shallow``
for layers ``1..depth-1``, and frozen hand-crafted class features ``embeddings.return_fixed_embeddings()``.
The visual prompts change the image pass, so ``π`` needs one extra frozen, prompt-free image pass.
"""
from typing import Dict, List, Optional

from torch import Tensor

from prompt_diffusion.adapters.base import ParsedBatch, PromptAdapter, PromptGroup, images_and_labels, loss_of, register_adapter
from prompt_diffusion.adapters.deep import DeepPrompts, deep_tokens
from prompt_diffusion.clip_prompting import encode_image, prompted_logits

__all__ = ["VPTAdapter", "VisualPromptsMixin"]


class VisualPromptsMixin:
    """Adapters of hosts whose image side is CLIP's ViT, possibly with visual prompts (VPT, IVLP,
    MaPLe): ``feature_dim`` from ``image_encoder.proj``, and ``visual``, the visual prompt group
    (``image_encoder.VPT`` + deep ``VPT_shallow``, see ``DeepPrompts``), or ``None`` when the image
    encoder carries no ``VPT`` (MaPLe's vision prompts follow from its text prompts; IVLP with
    ``PROMPT_DEPTH_VISION`` 0)."""

    def __init__(self, model, cfg=None):
        super().__init__(model, cfg)
        self.visual: Optional[DeepPrompts] = None
        if hasattr(self.find("image_encoder"), "VPT"):
            self.visual = DeepPrompts.from_blocks(self.model, "vision", "image_encoder.VPT",
                                                  "image_encoder.transformer.resblocks", type(self).__name__,
                                                  deep_tokens(self.cfg))

    @property
    def feature_dim(self) -> int:
        return int(self.find("image_encoder.proj").shape[1])

    def prompted_image_features(self, images: Tensor, vision: Tensor) -> Tensor:
        """Image features ``[B, E]`` under the per-sample visual prompt group (see ``DeepPrompts``)."""
        shallow, deep = self.visual.split(vision)
        return encode_image(self.find("image_encoder"), images, shallow, deep)


@register_adapter
class VPTAdapter(VisualPromptsMixin, PromptAdapter):
    required_attributes = ("image_encoder.VPT", "embeddings.return_fixed_embeddings", "logit_scale")
    host_loss_is_prompt_ce = True

    @property
    def groups(self) -> List[PromptGroup]:
        return [self.visual.group]

    def base_prompts(self) -> Dict[str, Tensor]:
        return {"vision": self.visual.stacked()}

    def logits(self, images: Tensor, prompts: Dict[str, Tensor], image_features: Optional[Tensor] = None) -> Tensor:
        self.check_prompts(prompts, images.shape[0])
        image = self.prompted_image_features(images, prompts["vision"])
        text = self.find("embeddings").return_fixed_embeddings().to(image.device)  # [K, E]
        return prompted_logits(image, text.to(image.dtype), self.find("logit_scale"))

    def host_loss(self, batch: ParsedBatch) -> Optional[Tensor]:
        images, labels = images_and_labels(batch, type(self).__name__)
        return loss_of(self.model(images), labels)  # VPT's forward returns logits unless training=True
