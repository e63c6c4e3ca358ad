"""CoCoOp: Conditional Context Optimization (Zhou et al., CVPR 2022).

CoOp's context shifted per image by a Meta-Net (``vis_dim -> vis_dim // 16 -> ctx_dim``,
512 -> 32 -> 512 for ViT-B/16): every image gets its own prompt, so the text encoder runs B x K
sequences. Here they go through ``clip_prompting.encode_prompted_text`` (exact EOT truncation,
``MODEL.TEXT_CHUNK`` chunking) instead of upstream's per-image loop over full 77-token prompts.
Names, shapes, initialisation and checkpoint layout as KaiyangZhou/CoOp ``trainers/cocoop.py``.
"""
from typing import Optional, Sequence

from torch import Tensor, nn

from prompt_diffusion.clip_prompting import encode_image, prompted_logits
from prompt_diffusion.engine import TRAINER_REGISTRY
from prompt_diffusion.prompt_methods import MetaNet

from ._common import (
    PromptedCLIPTrainer, TextPromptedCLIP, check_image_size, init_text_context, register_class_prompts,
)


class PromptLearner(nn.Module):
    """``ctx`` ``[n_ctx, D]``, ``meta_net`` and the class buffers ``token_prefix`` / ``token_suffix``."""

    def __init__(self, cfg, classnames: Sequence[str], clip_model: nn.Module):
        super().__init__()
        node = cfg.TRAINER.COCOOP
        check_image_size(cfg, clip_model)
        ctx_vectors, prompt_prefix, n_ctx = init_text_context(clip_model, node.CTX_INIT, node.N_CTX)
        print(f'Initial context: "{prompt_prefix}"')
        print(f"Number of context words (tokens): {n_ctx}")
        self.ctx = nn.Parameter(ctx_vectors)  # [n_ctx, D]
        vis_dim, ctx_dim = clip_model.visual.output_dim, clip_model.ln_final.weight.shape[0]
        self.meta_net = MetaNet(vis_dim, ctx_dim)  # vis_dim -> vis_dim // 16 -> ctx_dim
        if node.PREC == "fp16":
            self.meta_net.half()
        register_class_prompts(self, clip_model, prompt_prefix, classnames, n_ctx)

    def forward(self, im_features: Tensor) -> Tensor:
        """Per-image context ``ctx + meta_net(image feature)``: ``[B, n_ctx, D]``.

        (Upstream returns the full prompts ``[B, K, 77, D]``; the text encoder here assembles them
        per chunk from ``token_prefix`` / ``token_suffix`` instead.)
        """
        bias = self.meta_net(im_features).unsqueeze(1)  # [B, 1, D]
        return self.ctx.unsqueeze(0) + bias  # [B, n_ctx, D]


class CustomCLIP(TextPromptedCLIP):
    def __init__(self, cfg, classnames: Sequence[str], clip_model: nn.Module):
        super().__init__(PromptLearner(cfg, classnames, clip_model), clip_model, cfg.MODEL.TEXT_CHUNK)

    def forward(self, image: Tensor, label: Optional[Tensor] = None) -> Tensor:
        """Logits ``[B, K]``; the cross-entropy loss instead while the prompt learner trains."""
        image_features = encode_image(self.image_encoder, image)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = self.prompted_text_features(self.prompt_learner(image_features))  # [B, K, E]
        logits = prompted_logits(image_features, text_features, self.logit_scale)
        return self.loss_or_logits(logits, label)


@TRAINER_REGISTRY.register()
class CoCoOp(PromptedCLIPTrainer):
    """Conditional Context Optimization (CoCoOp). https://arxiv.org/abs/2203.05557"""

    PREC_NODE = "COCOOP"
    LOSS_FROM_MODEL = True

    def build_custom_clip(self, cfg, classnames, clip_model):
        return CustomCLIP(cfg, classnames, clip_model)
