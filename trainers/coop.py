"""CoOp: Context Optimization (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022).

Learned text context ``prompt_learner.ctx`` (``[n_ctx, D]``, or ``[K, n_ctx, D]`` class-specific
with ``CSC``) placed before, around or after the class name (``CLASS_TOKEN_POSITION``); CLIP frozen.
Names, shapes, initialisation and checkpoint layout as KaiyangZhou/CoOp ``trainers/coop.py``.
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from prompt_diffusion.clip_prompting import encode_image, prompted_logits
from prompt_diffusion.engine import TRAINER_REGISTRY

from ._common import (
    PromptedCLIPTrainer, TextPromptedCLIP, check_image_size, init_text_context, register_class_prompts,
)

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


class PromptLearner(nn.Module):
    """``ctx`` (learned) and the class-dependent ``token_prefix`` (SOS) / ``token_suffix`` buffers."""

    def __init__(self, cfg, classnames: Sequence[str], clip_model: nn.Module,
                 context: Optional[Tuple[Tensor, str, int]] = None):
        """``context``: the initial ``(ctx, prompt prefix, n_ctx)`` when not CoOp's own
        (``init_text_context`` of ``TRAINER.COOP``; ProGrad starts from its template words)."""
        super().__init__()
        node = cfg.TRAINER.COOP
        if node.CLASS_TOKEN_POSITION not in CLASS_TOKEN_POSITIONS:
            raise ValueError(f"TRAINER.COOP.CLASS_TOKEN_POSITION={node.CLASS_TOKEN_POSITION!r}: "
                             f"must be one of {CLASS_TOKEN_POSITIONS}")
        check_image_size(cfg, clip_model)
        if context is None:
            class_specific = node.CSC and not node.CTX_INIT  # upstream: CTX_INIT gives a generic context
            context = init_text_context(clip_model, node.CTX_INIT, node.N_CTX,
                                        shape_prefix=(len(classnames),) if class_specific else ())
        ctx_vectors, prompt_prefix, n_ctx = context
        print(f'Initial context: "{prompt_prefix}"')
        print(f"Number of context words (tokens): {n_ctx}")
        self.ctx = nn.Parameter(ctx_vectors)  # [n_ctx, D] or [K, n_ctx, D]
        register_class_prompts(self, clip_model, prompt_prefix, classnames, n_ctx)
        self.class_token_position = node.CLASS_TOKEN_POSITION

    def forward(self) -> Tensor:
        """The class prompts' token embeddings ``[K, 77, D]``."""
        ctx = self.ctx
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.n_cls, -1, -1)  # [K, n_ctx, D]
        prefix, suffix = self.token_prefix, self.token_suffix
        if self.class_token_position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        half = self.n_ctx // 2
        prompts = []
        for i, name_len in enumerate(self.name_lens):
            name, rest = suffix[i:i + 1, :name_len], suffix[i:i + 1, name_len:]
            if self.class_token_position == "middle":
                parts = [prefix[i:i + 1], ctx[i:i + 1, :half], name, ctx[i:i + 1, half:], rest]
            else:  # front
                parts = [prefix[i:i + 1], name, ctx[i:i + 1], rest]
            prompts.append(torch.cat(parts, dim=1))
        return torch.cat(prompts, dim=0)


class CustomCLIP(TextPromptedCLIP):
    def __init__(self, cfg, classnames: Sequence[str], clip_model: nn.Module):
        super().__init__(PromptLearner(cfg, classnames, clip_model), clip_model, cfg.MODEL.TEXT_CHUNK)

    def forward(self, image: Tensor) -> Tensor:
        """Logits ``[B, K]``."""
        image_features = encode_image(self.image_encoder, image)
        text_features = self.text_encoder(self.prompt_learner(), self.tokenized_prompts)
        return prompted_logits(image_features, text_features, self.logit_scale)


@TRAINER_REGISTRY.register()
class CoOp(PromptedCLIPTrainer):
    """Context Optimization (CoOp). https://arxiv.org/abs/2109.01134"""

    PREC_NODE = "COOP"

    def build_custom_clip(self, cfg, classnames, clip_model):
        return CustomCLIP(cfg, classnames, clip_model)
