"""TemplateCoOp: a learned context before every template of a bank, the bank scored per image.

A host whose learned part leaves the template words in place, so that per-image word choice stays
available after training: the prompt of template t and class k is ``[SOS] ctx_1 .. ctx_n`` followed by
the template's own words with the class name (``"X X X X a sketch of a heart."``), the context
``prompt_learner.ctx`` ``[n, D]`` shared by all templates and classes (CoOp's, before the words).
The T x K class texts are encoded once per forward; the logits are the log-sum-exp over templates
of the templates' CLIP logits (``prompt_methods.template_bank_logits``): each image weighs the
templates by how strongly it answers them, label-free, at the cost of one image pass. With
``N_CTX 0`` it is zero-shot CLIP over the bank, weighted per image (ZeroshotCLIP's ``weighted``).
"""
from typing import List, Sequence

import clip
import torch
from torch import Tensor, nn

from prompt_diffusion.clip_prompting import encode_image, split_prompt_embeddings
from prompt_diffusion.engine import TRAINER_REGISTRY
from prompt_diffusion.prompt_methods import template_bank_logits

from ._common import PromptedCLIPTrainer, TextPromptedCLIP, check_image_size, context_length, init_text_context
from .zsclip import template_bank, zeroshot_template


class PromptLearner(nn.Module):
    """``ctx`` ``[n, D]`` (learned), ``token_prefix`` / ``token_suffix`` of the T x K prompts (template-major)."""

    def __init__(self, cfg, classnames: Sequence[str], clip_model: nn.Module, templates: List[str]):
        super().__init__()
        node = cfg.TRAINER.TEMPLATE_COOP
        check_image_size(cfg, clip_model)
        ctx_vectors, prompt_prefix, n_ctx = init_text_context(clip_model, node.CTX_INIT, node.N_CTX)
        print(f'Initial context: "{prompt_prefix}" ({n_ctx} tokens) before each of {len(templates)} templates')
        self.ctx = nn.Parameter(ctx_vectors)  # [n_ctx, D]
        names = [name.replace("_", " ") for name in classnames]
        texts = [f"{prompt_prefix} {template.format(name)}".strip() for template in templates for name in names]
        self.tokenized_prompts = clip.tokenize(texts, context_length=context_length(clip_model))  # [T*K, L]
        prefix, suffix = split_prompt_embeddings(clip_model.token_embedding, self.tokenized_prompts, n_ctx,
                                                 clip_model.dtype)
        self.register_buffer("token_prefix", prefix)  # [T*K, 1, D]
        self.register_buffer("token_suffix", suffix)  # [T*K, L - 1 - n_ctx, D]
        self.n_templates, self.n_cls, self.n_ctx = len(templates), len(classnames), n_ctx


class CustomCLIP(TextPromptedCLIP):
    def __init__(self, cfg, classnames: Sequence[str], clip_model: nn.Module, templates: List[str]):
        super().__init__(PromptLearner(cfg, classnames, clip_model, templates), clip_model, cfg.MODEL.TEXT_CHUNK)

    def bank_text_features(self) -> Tensor:
        """The class text features of every template ``[T, K, E]``. When nothing asks for their gradient
        (evaluation; or no context to learn, ``N_CTX 0``) they are computed once per value of the
        context (its version counter moves with every in-place change: an optimizer step, a loaded
        checkpoint), so a test image costs one image pass."""
        learner = self.prompt_learner
        differentiable = torch.is_grad_enabled() and learner.ctx.requires_grad and learner.ctx.numel() > 0
        key = (learner.ctx._version, learner.ctx.data_ptr(), learner.ctx.device)
        if differentiable or getattr(self, "_cached_key", None) != key:
            with torch.set_grad_enabled(differentiable):
                text = self.prompted_text_features(learner.ctx).view(learner.n_templates, learner.n_cls, -1)
            if differentiable:
                return text
            self._cached_key, self._cached_text = key, text
        return self._cached_text

    def forward(self, image: Tensor) -> Tensor:
        """Logits ``[B, K]``: the bank scored jointly (``template_bank_logits``)."""
        return template_bank_logits(encode_image(self.image_encoder, image), self.bank_text_features(), self.logit_scale)


@TRAINER_REGISTRY.register()
class TemplateCoOp(PromptedCLIPTrainer):
    """CoOp's context before each template of a bank (``TRAINER.TEMPLATE_COOP.TEMPLATES``: CLIP's
    ImageNet templates by default), the bank weighted per image (see the module docstring)."""

    PREC_NODE = "TEMPLATE_COOP"

    def build_custom_clip(self, cfg, classnames, clip_model):
        templates = template_bank(cfg.TRAINER.TEMPLATE_COOP.TEMPLATES, zeroshot_template(cfg.DATASET.NAME, self.dm.dataset))
        return CustomCLIP(cfg, classnames, clip_model, templates)


__all__ = ["TemplateCoOp", "CustomCLIP", "PromptLearner"]
