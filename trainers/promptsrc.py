"""PromptSRC: prompting with self-regulating constraints (Khattak et al., ICCV 2023;
muzairkhattak/PromptSRC ``trainers/promptsrc.py``).

Prompts: IVLP's (``TRAINER.PROMPTSRC``: ``N_CTX_TEXT`` + ``N_CTX_VISION`` tokens, depths
``PROMPT_DEPTH_TEXT`` / ``PROMPT_DEPTH_VISION``), with upstream's parameter names. Self-regulation
(``prompt_diffusion.prompt_methods.promptsrc_loss_terms``): L1 to the frozen text features
averaged over the 60 ImageNet templates (``TEXT_LOSS_WEIGHT``), L1 to the frozen image features
(``IMAGE_LOSS_WEIGHT``), KL(zero-shot ‖ prompted) with weight 1. Gaussian prompt aggregation
(GPA): after epoch ``e`` (1-based) the trainable tensors are added with weight ``N(e; GPA_MEAN,
GPA_STD²)`` (normalised over the epochs); after the last epoch the aggregate replaces them, so the
aggregate is what is saved and tested, as upstream. Every model the trainer optimizes is aggregated
(``register_model``): in PromptSRCPD the prompt generator too, so that it matches the prompts.

Differences from upstream, none of them in the method: the frozen ("zero-shot") image features
come from CLIP's own image encoder run without prompts (upstream keeps a second copy of the
encoder, saved in every checkpoint, because its modified encoder always inserts the prompts); GPA
sums the trainable tensors only, in fp32 buffers checkpointed with the model (upstream deep-copies
the whole state dict, frozen CLIP included, twice per epoch, and loses the sum on resume); fp32 and
amp work (upstream's amp path and fp32 zero-shot encoder fail; only fp16 runs there).
"""
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prompt_diffusion.prompt_methods import promptsrc_loss_terms
from prompt_diffusion.clip_prompting import encode_image
from prompt_diffusion.engine import TRAINER_REGISTRY

from . import ivlp
from ._common import frozen_text_features
from ._multimodal import MultiModalTrainer
from .imagenet_templates import IMAGENET_TEMPLATES

# TRAINER.PROMPTSRC keys that configure the IVLP prompts
IVLP_KEYS = ("N_CTX_VISION", "N_CTX_TEXT", "CTX_INIT", "PREC", "PROMPT_DEPTH_VISION", "PROMPT_DEPTH_TEXT")


def gpa_weights(max_epoch: int, mean: float, std: float) -> np.ndarray:
    """GPA's weight of each epoch ``1..max_epoch``: the N(mean, std²) density there, normalised to sum 1."""
    if std <= 0:
        raise ValueError(f"TRAINER.PROMPTSRC.GPA_STD={std}: must be > 0")
    epochs = np.arange(1, max_epoch + 1, dtype=np.float64)
    density = np.exp(-0.5 * ((epochs - mean) / std) ** 2) / (std * np.sqrt(2 * np.pi))
    if not density.sum() > 0:
        raise ValueError(f"TRAINER.PROMPTSRC.GPA_MEAN={mean}, GPA_STD={std}: every epoch 1..{max_epoch} gets "
                         "weight 0 (the Gaussian lies outside the training); move GPA_MEAN or widen GPA_STD")
    return density / density.sum()


def ivlp_config(cfg):
    """A copy of ``cfg`` whose ``TRAINER.IVLP`` holds ``TRAINER.PROMPTSRC``'s prompt settings
    (PromptSRC's prompts are IVLP's)."""
    view = cfg.clone()
    view.defrost()
    for key in IVLP_KEYS:
        view.TRAINER.IVLP[key] = cfg.TRAINER.PROMPTSRC[key]
    view.freeze()
    return view


def template_ensemble(clip_model: nn.Module, classnames: Sequence[str], chunk_size: int,
                      device: Optional[torch.device] = None) -> Tensor:
    """Frozen class text features ``[K, E]``: the mean over the 60 ImageNet templates (not normalised),
    computed on ``device`` (see ``frozen_text_features``)."""
    names = [name.replace("_", " ") for name in classnames]
    texts = [template.format(name) for template in IMAGENET_TEMPLATES for name in names]  # template-major
    features = frozen_text_features(clip_model, texts, chunk_size, device, desc="PromptSRC template ensemble")
    return features.view(len(IMAGENET_TEMPLATES), len(names), -1).mean(dim=0)


class CustomCLIP(ivlp.CustomCLIP):
    """IVLP's prompted CLIP plus the frozen targets of PromptSRC's self-regulation.

    ``forward(image, label)`` returns upstream's training tuple while the prompt learner trains
    (see ``promptsrc_loss_terms``), the logits ``[B, K]`` otherwise. ``device``: where the template
    ensemble is computed (the model stays where it is).
    """

    def __init__(self, cfg, classnames: Sequence[str], clip_model: nn.Module, device: Optional[torch.device] = None):
        fixed = template_ensemble(clip_model, classnames, cfg.MODEL.TEXT_CHUNK, device)
        super().__init__(ivlp_config(cfg), classnames, clip_model)
        # class-dependent and recomputed from the class names: moves with the model, never saved
        self.prompt_learner.register_buffer("fixed_embeddings", fixed, persistent=False)  # [K, E]
        self.total_epochs = cfg.OPTIM.MAX_EPOCH
        self.n_cls = len(classnames)

    def prompted_features(self, image: Tensor) -> Tuple[Tensor, Tensor]:
        """L2-normalised prompted image ``[B, E]`` and class text ``[K, E]`` features (IVLP's)."""
        image_features, text_features = self.features(image)
        return (image_features / image_features.norm(dim=-1, keepdim=True),
                text_features / text_features.norm(dim=-1, keepdim=True))

    def forward(self, image: Tensor, label: Optional[Tensor] = None):
        logit_scale = self.logit_scale.exp()
        image_features, text_features = self.prompted_features(image)
        logits = logit_scale * image_features @ text_features.t()
        if not self.prompt_learner.training:
            return logits
        fixed = self.prompt_learner.fixed_embeddings
        fixed = fixed / fixed.norm(dim=-1, keepdim=True)
        with torch.no_grad():  # the frozen encoder: CLIP's image encoder without prompts
            zs_image = encode_image(self.image_encoder, image)
            zs_image = zs_image / zs_image.norm(dim=-1, keepdim=True)
            zs_logits = logit_scale * zs_image @ fixed.to(zs_image.dtype).t()
        loss_ce = F.cross_entropy(logits, label)
        return loss_ce, text_features, fixed, zs_image, image_features, zs_logits, logits


def trainable_tensors(model: nn.Module) -> Dict[str, Tensor]:
    """The parameters of ``model`` that receive gradients, by name."""
    return {name: param for name, param in model.named_parameters() if param.requires_grad}


class PromptAggregate(nn.Module):
    """The running GPA sum ``Σ_e w_e θ_e`` of named tensors, as fp32 buffers (saved with the model,
    so a resumed run continues the sum)."""

    def __init__(self, tensors: Dict[str, Tensor]):
        super().__init__()
        self.names = list(tensors)
        for name, tensor in tensors.items():
            self.register_buffer(self._key(name), torch.zeros_like(tensor, dtype=torch.float32))

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def add(self, tensors: Dict[str, Tensor], weight: float) -> None:
        with torch.no_grad():
            for name in self.names:
                getattr(self, self._key(name)).add_(tensors[name].detach().float(), alpha=float(weight))

    def copy_to(self, tensors: Dict[str, Tensor]) -> None:
        """Overwrite ``tensors`` (in place) with the aggregate."""
        with torch.no_grad():
            for name in self.names:
                tensors[name].copy_(getattr(self, self._key(name)).to(tensors[name].dtype))


@TRAINER_REGISTRY.register()
class PromptSRC(MultiModalTrainer):
    """Prompting with self-regulating constraints (PromptSRC). https://arxiv.org/abs/2307.06948"""

    PREC_NODE = "PROMPTSRC"
    MODEL_NAME = "VLPromptLearner"
    TRAINABLE = ("prompt_learner", "VPT")

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        node = cfg.TRAINER.PROMPTSRC
        if node.PROMPT_DEPTH_TEXT < 1:
            raise ValueError(f"TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT={node.PROMPT_DEPTH_TEXT}: must be >= 1")
        gpa_weights(cfg.OPTIM.MAX_EPOCH, node.GPA_MEAN, node.GPA_STD)  # raises on a degenerate setting

    def build_custom_clip(self, cfg, classnames, clip_model):
        return CustomCLIP(cfg, classnames, clip_model, device=self.device)

    def build_model(self):
        super().build_model()
        node = self.cfg.TRAINER.PROMPTSRC
        self.gpa_weights = gpa_weights(self.cfg.OPTIM.MAX_EPOCH, node.GPA_MEAN, node.GPA_STD)

    def register_model(self, name: str = "model", model: Optional[nn.Module] = None, optim=None, sched=None) -> None:
        """Every model trained by an optimizer gets a GPA aggregate of its trainable tensors,
        ``self.model.gpa[name]`` (buffers of the prompt learner, so they are checkpointed with it).
        In a wrapped PromptSRC (PromptSRCPD) that includes the prompt generator (denoiser, Meta-Net):
        it learned residuals around each epoch's prompts, so it is aggregated over the same epochs
        with the same weights as the prompts it is tested with."""
        super().register_model(name, model, optim, sched)
        if optim is None:
            return
        if "gpa" not in self.model._modules:
            self.model.gpa = nn.ModuleDict()
        self.model.gpa[name] = PromptAggregate(trainable_tensors(model))

    def loss_terms(self, batch: dict) -> Dict[str, Tensor]:
        image, label = self.parse_batch_train(batch)
        node = self.cfg.TRAINER.PROMPTSRC
        return promptsrc_loss_terms(self.model(image, label), node.TEXT_LOSS_WEIGHT, node.IMAGE_LOSS_WEIGHT)

    def after_epoch(self):
        """GPA: add this epoch's trainable tensors of every trained model with their weight; after
        the last epoch load the aggregates (before the engine saves and tests the models, and
        before a wrapper's post-training steps: AMED distillation, gain calibration)."""
        for name, aggregate in self.model.gpa.items():
            aggregate.add(trainable_tensors(self._models[name]), self.gpa_weights[self.epoch])
        if self.epoch + 1 == self.max_epoch:
            print(f"Using GPA model for final inference... (aggregated: {', '.join(self.model.gpa)})")
            for name, aggregate in self.model.gpa.items():
                aggregate.copy_to(trainable_tensors(self._models[name]))
        super().after_epoch()
