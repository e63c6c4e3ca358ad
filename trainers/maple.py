"""MaPLe: multi-modal prompt learning (Khattak et al., CVPR 2023; muzairkhattak/multimodal-prompt-learning
``trainers/maple.py``).

Text: ``prompt_learner.ctx`` ``[N_CTX, 512]`` after SOS (from ``CTX_INIT`` when ``N_CTX <= 4``) and
deep text prompts ``prompt_learner.compound_prompts_text[i]`` ``[N_CTX, 512]`` ~ N(0, 0.02) for
layers ``1..PROMPT_DEPTH-1``. Vision: coupled to the text prompts by learned 512 -> 768 projections,
``prompt_learner.proj`` for the input prompt and ``prompt_learner.compound_prompt_projections[i]``
for the deep ones (deep copies of one initialised layer, so they all start equal, as upstream).
CLIP is frozen; the loss is the cross-entropy. The registered model is ``MultiModalPromptLearner``.
"""
import copy
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prompt_diffusion.prompt_methods import maple_features
from prompt_diffusion.clip_prompting import prompted_logits
from prompt_diffusion.engine import TRAINER_REGISTRY

from ._common import TextEncoder, check_image_size, init_text_context, register_class_prompts
from ._multimodal import MultiModalTrainer


class MultiModalPromptLearner(nn.Module):
    """MaPLe's prompts (``cfg.TRAINER.<node>``: ``N_CTX``, ``CTX_INIT``, ``PROMPT_DEPTH``) and the
    class buffers ``token_prefix`` / ``token_suffix``. CoPrompt uses it with its own config node."""

    def __init__(self, cfg, classnames: Sequence[str], clip_model: nn.Module, node: str = "MAPLE"):
        super().__init__()
        settings = cfg.TRAINER[node]
        depth = settings.PROMPT_DEPTH
        n_layers = min(len(clip_model.transformer.resblocks), len(clip_model.visual.transformer.resblocks))
        if not 1 <= depth <= n_layers:
            raise ValueError(f"TRAINER.{node}.PROMPT_DEPTH={depth}: must be in 1..{n_layers} "
                             f"(1 = shallow prompts only; the encoders have {n_layers} layers)")
        check_image_size(cfg, clip_model)
        text_width = clip_model.ln_final.weight.shape[0]
        visual_width = clip_model.visual.conv1.weight.shape[0]
        # upstream uses the init words only for N_CTX <= 4, and keeps N_CTX tokens of them
        ctx_init = settings.CTX_INIT if settings.N_CTX <= 4 else ""
        ctx_vectors, prompt_prefix, n_ctx = init_text_context(clip_model, ctx_init, settings.N_CTX,
                                                              words_set_n_ctx=False)
        print(f"{node} design: Multi-modal Prompt Learning")
        print(f'Initial context: "{prompt_prefix}"')
        print(f"Number of {node} context words (tokens): {n_ctx}")
        # text -> vision projection of the input prompt (upstream keeps it in CLIP's dtype)
        self.proj = nn.Linear(text_width, visual_width).to(clip_model.dtype)
        self.ctx = nn.Parameter(ctx_vectors)  # [n_ctx, 512]
        self.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(torch.empty(n_ctx, text_width).normal_(std=0.02)) for _ in range(depth - 1)]
        )  # depth - 1 x [n_ctx, 512], fp32
        single_layer = nn.Linear(text_width, visual_width)
        self.compound_prompt_projections = nn.ModuleList([copy.deepcopy(single_layer) for _ in range(depth - 1)])

        # token_prefix [K, 1, 512] (SOS), token_suffix [K, 77 - 1 - n_ctx, 512], tokenized_prompts [K, 77]
        register_class_prompts(self, clip_model, prompt_prefix, classnames, n_ctx)
        self.compound_prompts_depth = depth

    def text_prompts(self) -> Tuple[Tensor, List[Tensor]]:
        """The shared text prompt ``[n, 512]`` and the deep text prompts of layers ``1..depth-1``."""
        return self.ctx, list(self.compound_prompts_text)


class CustomCLIP(nn.Module):
    """CLIP with MaPLe's prompts: ``forward(image, label)`` gives the loss while the prompt learner
    trains, the logits ``[B, K]`` otherwise."""

    def __init__(self, cfg, classnames: Sequence[str], clip_model: nn.Module, node: str = "MAPLE"):
        super().__init__()
        self.prompt_learner = MultiModalPromptLearner(cfg, classnames, clip_model, node)
        self.tokenized_prompts = self.prompt_learner.tokenized_prompts
        self.image_encoder = clip_model.visual
        self.text_encoder = TextEncoder(clip_model, chunk_size=cfg.MODEL.TEXT_CHUNK)
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype

    def features(self, image: Tensor) -> Tuple[Tensor, Tensor]:
        """Prompted image ``[B, E]`` and class text ``[K, E]`` features (not normalised)."""
        ctx, deep_text = self.prompt_learner.text_prompts()
        return maple_features(self, image, ctx, deep_text, self.text_encoder.chunk_size)

    def logits(self, image: Tensor) -> Tensor:
        return prompted_logits(*self.features(image), self.logit_scale)

    def loss_terms(self, image: Tensor, label: Tensor) -> Dict[str, Tensor]:
        return {"loss_ce": F.cross_entropy(self.logits(image), label)}

    def forward(self, image: Tensor, label: Tensor = None) -> Tensor:
        if self.prompt_learner.training:
            return sum(self.loss_terms(image, label).values())
        return self.logits(image)


@TRAINER_REGISTRY.register()
class MaPLe(MultiModalTrainer):
    """Multi-modal prompt learning (MaPLe). https://arxiv.org/abs/2210.03117"""

    PREC_NODE = "MAPLE"
    MODEL_NAME = "MultiModalPromptLearner"
    TRAINABLE = ("prompt_learner",)

    def build_custom_clip(self, cfg, classnames, clip_model):
        return CustomCLIP(cfg, classnames, clip_model)

    def loss_terms(self, batch: dict) -> Dict[str, Tensor]:
        image, label = self.parse_batch_train(batch)
        return self.model.loss_terms(image, label)
