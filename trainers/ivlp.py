"""IVLP: independent vision-language deep prompting (muzairkhattak/multimodal-prompt-learning
``trainers/independentVL.py``).

Text: ``prompt_learner.ctx`` ``[N_CTX_TEXT, 512]`` after SOS and independent deep prompts
``text_encoder.transformer.resblocks.<i>.VPT_shallow`` for layers ``1..PROMPT_DEPTH_TEXT-1``.
Vision: ``image_encoder.VPT`` ``[N_CTX_VISION, 768]`` after CLS + patches and
``image_encoder.transformer.resblocks.<i>.VPT_shallow`` for layers ``1..PROMPT_DEPTH_VISION-1``.
"""
from typing import Optional, Sequence, Tuple

from torch import Tensor, nn

from prompt_diffusion.clip_prompting import deep_prompts_of, encode_image, prompted_logits
from prompt_diffusion.engine import TRAINER_REGISTRY

from ._common import (
    PromptedCLIPTrainer, TextPromptedCLIP, attach_deep_prompts, attach_visual_prompts, check_image_size,
    init_text_context, register_class_prompts,
)


class VLPromptLearner(nn.Module):
    """Text context ``ctx`` and the class buffers ``token_prefix`` / ``token_suffix``."""

    def __init__(self, cfg, classnames: Sequence[str], clip_model: nn.Module):
        super().__init__()
        node = cfg.TRAINER.IVLP
        if node.PROMPT_DEPTH_TEXT < 1:
            raise ValueError(f"TRAINER.IVLP.PROMPT_DEPTH_TEXT={node.PROMPT_DEPTH_TEXT}: must be >= 1 "
                             "(use the VPT trainer to learn only the vision branch)")
        check_image_size(cfg, clip_model)
        # upstream uses the init words only for N_CTX_TEXT <= 4, and keeps N_CTX_TEXT tokens of them
        ctx_init = node.CTX_INIT if node.N_CTX_TEXT <= 4 else ""
        ctx_vectors, prompt_prefix, n_ctx = init_text_context(clip_model, ctx_init, node.N_CTX_TEXT,
                                                              words_set_n_ctx=False)
        print("Independent V-L design")
        print(f'Initial text context: "{prompt_prefix}"')
        print(f"Number of context words (tokens) for Language prompting: {n_ctx}")
        print(f"Number of context words (tokens) for Vision prompting: {node.N_CTX_VISION}")
        self.ctx = nn.Parameter(ctx_vectors)  # [n_ctx, D]
        register_class_prompts(self, clip_model, prompt_prefix, classnames, n_ctx)


class CustomCLIP(TextPromptedCLIP):
    def __init__(self, cfg, classnames: Sequence[str], clip_model: nn.Module):
        super().__init__(VLPromptLearner(cfg, classnames, clip_model), clip_model, cfg.MODEL.TEXT_CHUNK)
        node = cfg.TRAINER.IVLP
        text_width = clip_model.ln_final.weight.shape[0]
        attach_deep_prompts(clip_model.transformer.resblocks, node.PROMPT_DEPTH_TEXT, node.N_CTX_TEXT, text_width)
        if node.PROMPT_DEPTH_VISION > 0:
            attach_visual_prompts(clip_model.visual, node.N_CTX_VISION, node.PROMPT_DEPTH_VISION)

    def features(self, image: Tensor) -> Tuple[Tensor, Tensor]:
        """Prompted image ``[B, E]`` and class text ``[K, E]`` features (not normalised)."""
        visual = self.image_encoder
        image_features = encode_image(visual, image, getattr(visual, "VPT", None),
                                      deep_prompts_of(visual.transformer.resblocks))
        text_features = self.prompted_text_features(
            self.prompt_learner.ctx, deep_prompts_of(self.text_encoder.transformer.resblocks))
        return image_features, text_features

    def forward(self, image: Tensor, label: Optional[Tensor] = None) -> Tensor:
        """Logits ``[B, K]``; the cross-entropy loss instead while the prompt learner trains."""
        logits = prompted_logits(*self.features(image), self.logit_scale)
        return self.loss_or_logits(logits, label)


@TRAINER_REGISTRY.register()
class IVLP(PromptedCLIPTrainer):
    """Independent vision-language prompting (IVLP)."""

    PREC_NODE = "IVLP"
    MODEL_NAME = "VLPromptLearner"
    OPTIMIZE_PROMPT_LEARNER_ONLY = False
    TRAINABLE = ("prompt_learner", "VPT")
    LOSS_FROM_MODEL = True

    def build_custom_clip(self, cfg, classnames, clip_model):
        return CustomCLIP(cfg, classnames, clip_model)
