"""The method-specific pieces that a reference trainer and its prompt adapter both run.

A reference trainer (``prompt_diffusion.trainers``) must be readable and usable without the plug-in,
and an adapter must compute exactly the host's forward under per-sample prompts. Both therefore
call the functions here; they read the model by the upstream attribute names only
(``prompt_learner.proj``, ``adapter_image`` ...), so they serve upstream models as well.

- CoCoOp: ``MetaNet`` (image feature -> context shift; the wrapper's π network too);
- TemplateCoOp: ``template_bank_logits`` (a bank of templates scored jointly, with a per-image prior);
- MaPLe: ``coupled_visual_prompts`` (vision prompts from text prompts), ``maple_features``;
- CoPrompt: ``residual_mlp`` (its feature MLPs, mixed in residually), ``coprompt_features``;
- PromptSRC: ``promptsrc_loss_terms`` (cross-entropy plus self-regulation).

Like ``clip_prompting``, this module imports neither the trainers nor the plug-in.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prompt_diffusion.clip_prompting import encode_image, encode_prompted_text

__all__ = [
    "MetaNet", "template_bank_logits", "coupled_visual_prompts", "maple_features", "residual_mlp", "coprompt_features", "promptsrc_loss_terms",
]


class MetaNet(nn.Sequential):
    """CoCoOp's Meta-Net (``linear1`` -> ReLU -> ``linear2``, hidden width ``in_dim // 16``, upstream's
    names and initialisation): CoCoOp's ``prompt_learner.meta_net``, and the prompt-diffusion
    wrapper's π network for hosts that have none (CoOp, VPT, IVLP)."""

    def __init__(self, in_dim: int, out_dim: int):
        hidden = max(in_dim // 16, 1)
        super().__init__()
        self.add_module("linear1", nn.Linear(in_dim, hidden))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("linear2", nn.Linear(hidden, out_dim))


def template_bank_logits(image_features: Tensor, text_features: Tensor, logit_scale: Tensor,
                         log_prior: Optional[Tensor] = None) -> Tensor:
    """Class logits ``[B, K]`` of a bank of T templates: the log-sum-exp over templates of each
    template's CLIP logits ``[B, T, K]`` (``text_features`` ``[T, K, E]``), plus a per-image log-prior
    over the templates ``[B, T]`` (None: uniform). Its softmax is the marginal over templates of one
    softmax over all T x K (template, class) pairs: each template weighted per image by how strongly
    the image answers it (the log-sum-exp of its logits over the classes) times the prior, label-free."""
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    logits = logit_scale.exp() * torch.einsum("be,tke->btk", image_features.to(text_features.dtype), text_features)
    if log_prior is None:
        return torch.logsumexp(logits, dim=1) - math.log(text_features.shape[0])  # the uniform prior
    return torch.logsumexp(logits + log_prior.log_softmax(dim=1).unsqueeze(2).to(logits.dtype), dim=1)  # [B, T, 1]


def _project(layer: nn.Linear, prompt: Tensor) -> Tensor:
    """``layer(prompt)`` in the layer's dtype (the text prompts may be fp32 while the layer is fp16)."""
    return layer(prompt.to(layer.weight.dtype))


def coupled_visual_prompts(learner: nn.Module, ctx: Tensor, deep_text: Sequence[Tensor]) -> Tuple[Tensor, List[Tensor]]:
    """MaPLe's vision prompts from its text prompts: ``proj(ctx)`` and ``compound_prompt_projections[i](deep_i)``.

    ``ctx`` and each deep prompt are ``[n, 512]`` (shared) or ``[B, n, 512]`` (per sample); the
    results have the same leading shape with the vision width (768).
    """
    shallow = _project(learner.proj, ctx)
    deep = [_project(layer, prompt) for layer, prompt in zip(learner.compound_prompt_projections, deep_text)]
    return shallow, deep


def maple_features(
    model: nn.Module, images: Tensor, ctx: Tensor, deep_text: Sequence[Tensor], chunk_size: int = 0
) -> Tuple[Tensor, Tensor]:
    """MaPLe's prompted image and class text features (not normalised).

    Args:
        model: a MaPLe-layout ``CustomCLIP`` (``prompt_learner``, ``image_encoder``, ``text_encoder``,
            ``tokenized_prompts``).
        images: ``[B, 3, H, W]``.
        ctx: text prompt ``[n, D]`` shared or ``[B, n, D]`` per sample.
        deep_text: deep text prompts of layers ``1..depth-1``, each shaped like ``ctx``.
        chunk_size: text sequences encoded at once (``MODEL.TEXT_CHUNK``; 0: all).

    Returns:
        image features ``[B, E]``; text features ``[K, E]`` (shared) or ``[B, K, E]`` (per sample).
    """
    learner = model.prompt_learner
    shallow_visual, deep_visual = coupled_visual_prompts(learner, ctx, deep_text)
    image_features = encode_image(model.image_encoder, images, shallow_visual, deep_visual)
    text_features = encode_prompted_text(
        model.text_encoder, learner.token_prefix, learner.token_suffix, model.tokenized_prompts, ctx, deep_text,
        chunk_size=chunk_size,
    )
    return image_features, text_features


def residual_mlp(features: Tensor, mlp: nn.Module, ratio: float) -> Tensor:
    """``ratio * mlp(features) + (1 - ratio) * features``: CoPrompt's feature MLP mixed in residually
    (upstream names the MLPs "adapters": ``adapter_image``, ``adapter_text``)."""
    mapped = mlp(features.to(next(mlp.parameters()).dtype)).to(features.dtype)
    return ratio * mapped + (1 - ratio) * features


def coprompt_features(
    model: nn.Module, images: Tensor, ctx: Tensor, deep_text: Sequence[Tensor], chunk_size: int = 0
) -> Tuple[Tensor, Tensor]:
    """CoPrompt's image ``[B, E]`` and text ``[K, E]`` / ``[B, K, E]`` features: MaPLe's prompted
    features through the residual adapters (not normalised)."""
    image, text = maple_features(model, images, ctx, deep_text, chunk_size)
    return (residual_mlp(image, model.adapter_image, model.image_adapter_m),
            residual_mlp(text, model.adapter_text, model.text_adapter_m))


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
