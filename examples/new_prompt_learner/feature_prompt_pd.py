"""Prompt diffusion for the FeaturePrompt learner (feature_prompt.py): its PromptAdapter.

The adapter answers the wrapper's questions about this layout (``PromptAdapter`` in
``prompt_diffusion/adapters/base.py``):

- ``groups`` / ``base_prompts``: V is one group, "feature", of 1 token of width E (``ctx``);
- ``image_features``: the frozen CLIP image feature, which π (the denoiser's condition) is made from
  (inherited: the model's ``image_encoder`` without prompts, L2-normalised);
- ``logits``: the logits under a per-sample prompt ``[B, 1, E]`` (sample b's logits depend only on
  its own prompt, so per-sample gradients come from one summed loss);
- ``host_loss``: the host's own loss with its shared ``ctx`` (kept in training).

``host_prompts`` is inherited: the shared ``ctx`` for every image (a host without a Meta-Net).
``DiffusionPromptWrapper.register(FeaturePrompt, adapter=FeaturePromptAdapter)`` makes
``FeaturePromptPD`` use it (``@register_adapter`` also lets ``TRAINER.PD.ADAPTER FeaturePrompt`` and
layout detection find it).
"""
from typing import Dict, List, Optional

import torch.nn.functional as F
from torch import Tensor

from prompt_diffusion import DiffusionPromptWrapper
from prompt_diffusion.adapters import ParsedBatch, PromptAdapter, PromptGroup, images_and_labels, register_adapter

from feature_prompt import FeaturePrompt  # the sibling file: --import puts this folder on sys.path


@register_adapter
class FeaturePromptAdapter(PromptAdapter):
    """V = ``prompt_learner.ctx`` [1, E], added to the frozen image feature."""

    required_attributes = ("prompt_learner.ctx", "image_encoder", "text_features", "logit_scale")

    @property
    def groups(self) -> List[PromptGroup]:
        n_tokens, width = self.find("prompt_learner.ctx").shape
        return [PromptGroup("feature", int(n_tokens), int(width))]

    def base_prompts(self) -> Dict[str, Tensor]:
        return {"feature": self.find("prompt_learner.ctx")}

    @property
    def feature_dim(self) -> int:
        return int(self.find("text_features").shape[1])

    def logits(self, images: Tensor, prompts: Dict[str, Tensor], image_features: Optional[Tensor] = None) -> Tensor:
        self.check_prompts(prompts, images.shape[0])
        if image_features is None:
            image_features = self.image_features(images)
        return self.model.logits_with(image_features, prompts["feature"][:, 0])  # [B, 1, E] -> [B, E]

    def host_loss(self, batch: ParsedBatch) -> Optional[Tensor]:
        images, labels = images_and_labels(batch, type(self).__name__)
        return F.cross_entropy(self.model(images), labels)


FeaturePromptPD = DiffusionPromptWrapper.register(FeaturePrompt, adapter=FeaturePromptAdapter)  # "FeaturePromptPD"
