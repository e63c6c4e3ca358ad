"""A new prompt learner, written as a user would (it knows nothing of prompt diffusion).

FeaturePrompt learns one prompt vector ``ctx`` [1, E] in CLIP's joint embedding space: it is added
to the frozen image feature before the cosine similarity with the frozen class-name features
("a photo of a {class}."). Only ``ctx`` trains. Registered as the trainer ``FeaturePrompt``.
"""
import clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prompt_diffusion.backbones import load_clip_from_cfg
from prompt_diffusion.engine import TRAINER_REGISTRY, TrainerX, build_lr_scheduler, build_optimizer, compute_accuracy


class FeaturePromptLearner(nn.Module):
    """The learned prompt: ``ctx`` [1, E], zero at the start (the start is zero-shot CLIP)."""

    def __init__(self, width: int):
        super().__init__()
        self.ctx = nn.Parameter(torch.zeros(1, width))


class FeaturePromptCLIP(nn.Module):
    """Frozen CLIP image encoder and class-name features; logits of ``image feature + ctx``."""

    def __init__(self, clip_model: nn.Module, classnames):
        super().__init__()
        self.image_encoder = clip_model.visual
        with torch.no_grad():
            tokens = clip.tokenize([f"a photo of a {name.replace('_', ' ')}." for name in classnames],
                                   context_length=clip_model.context_length)  # [K, L]
            text = clip_model.encode_text(tokens)  # [K, E]
        self.register_buffer("text_features", F.normalize(text, dim=-1))
        self.logit_scale = clip_model.logit_scale
        self.prompt_learner = FeaturePromptLearner(text.shape[1])

    def image_features(self, image: Tensor) -> Tensor:
        """The frozen, L2-normalised image feature [B, E]."""
        with torch.no_grad():
            return F.normalize(self.image_encoder(image), dim=-1)

    def logits_with(self, image_features: Tensor, ctx: Tensor) -> Tensor:
        """Logits [B, K] of features [B, E] shifted by ``ctx`` ([1, E] shared or [B, E] per image)."""
        shifted = F.normalize(image_features + ctx, dim=-1)
        return self.logit_scale.exp() * shifted @ self.text_features.t()

    def forward(self, image: Tensor) -> Tensor:
        return self.logits_with(self.image_features(image), self.prompt_learner.ctx)


@TRAINER_REGISTRY.register()
class FeaturePrompt(TrainerX):
    """Trains the feature-space prompt ``ctx`` with cross-entropy (Dassl's TrainerX loop)."""

    def build_model(self):
        clip_model = load_clip_from_cfg(self.cfg).float().eval()
        self.model = FeaturePromptCLIP(clip_model, self.dm.dataset.classnames).to(self.device)
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(name.startswith("prompt_learner."))
        learner = self.model.prompt_learner
        self.optim = build_optimizer(learner, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("prompt_learner", learner, self.optim, self.sched)

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)[:2]
        logits = self.model(image)
        loss = F.cross_entropy(logits, label)
        self.model_backward_and_update(loss)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return {"loss": loss.item(), "acc": compute_accuracy(logits, label)[0].item()}
