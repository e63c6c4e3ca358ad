"""Deep prompts as one diffused token group: shallow prompt + one prompt per deeper layer.

Upstream layout (muzairkhattak/multimodal-prompt-learning, modified ``clip/model.py``): the shallow
prompt is a parameter (``image_encoder.VPT`` for vision, ``prompt_learner.ctx`` for text) and the
prompt of layer ``i >= 1`` is ``<encoder>.transformer.resblocks[i].VPT_shallow`` for the first
``depth - 1`` deeper layers.

``TRAINER.PD.DEEP_TOKENS`` sets how the group is tokenised for the denoiser:

- ``layer`` (default): one token per prompted layer (as G.pt gives each layer of a network one
  token), its ``n`` vectors concatenated -> ``[depth, n * width]``. The denoiser attends over
  ``depth`` tokens instead of ``depth * n`` (VPT at depth 12 with 4 vectors: 12 instead of 48),
  which is what its cost grows with;
- ``vector``: one token per prompt vector, ``[shallow; deep_1; ...]`` -> ``[depth * n, width]``.

The paper does not say; ``layer`` was chosen by measurement (docs/cost.md): VPTPD inference 2.14x
VPT's instead of 2.58x (ViT-B/16, CPU), and on the toy benchmark VPTPD's accuracy +0.76 ± 0.11
points over ``vector`` (paired per image; ± 0.44 from the spread of 3 seeds), not a loss.
"""
from typing import List, Sequence, Tuple

import torch
from torch import Tensor, nn

from prompt_diffusion.adapters.base import PromptGroup, find_attribute
from prompt_diffusion.clip_prompting import deep_prompts_of

__all__ = ["DEEP_TOKENS", "DEFAULT_DEEP_TOKENS", "DeepPrompts", "deep_tokens"]


DEEP_TOKENS = ("vector", "layer")
#: ``TRAINER.PD.DEEP_TOKENS``'s default (``config.add_pd_keys`` sets it from here). The paper is silent;
#: measured (docs/cost.md): VPTPD 2.14x VPT's inference instead of 2.58x with ``vector``, and on the toy
#: benchmark VPTPD +0.76 ± 0.11 points over ``vector`` (paired; ± 0.44 over 3 seeds)
DEFAULT_DEEP_TOKENS = "layer"


def deep_tokens(cfg) -> str:
    """``TRAINER.PD.DEEP_TOKENS``; its default (``layer``) when the config has none."""
    if cfg is not None and "TRAINER" in cfg and "PD" in cfg.TRAINER and "DEEP_TOKENS" in cfg.TRAINER.PD:
        return cfg.TRAINER.PD.DEEP_TOKENS
    return DEFAULT_DEEP_TOKENS


class DeepPrompts:
    """A shallow prompt ``[n, width]`` and one prompt per deeper layer (each ``[n, width]``) as one
    group tokenised per ``tokens`` (``vector`` or ``layer``, see the module docstring).

    ``from_blocks`` finds them in the upstream VPT / IVLP layout; MaPLe passes its
    ``prompt_learner.ctx`` and ``compound_prompts_text`` directly.
    """

    def __init__(self, name: str, shallow: Tensor, deep: Sequence[Tensor], adapter: str, tokens: str,
                 where: str = "deep prompt"):
        if tokens not in DEEP_TOKENS:
            raise ValueError(f"{adapter}: deep prompt tokens {tokens!r} unknown; allowed: {list(DEEP_TOKENS)}")
        self.per_layer = tokens == "layer"
        self.name = name
        self.shallow = shallow
        self.deep: List[Tensor] = list(deep)
        self.n_tokens, self.width = (int(s) for s in self.shallow.shape)
        for i, prompt in enumerate(self.deep, start=1):
            if tuple(prompt.shape) != (self.n_tokens, self.width):
                raise ValueError(
                    f"{adapter}: {where} of layer {i} has shape {tuple(prompt.shape)}, "
                    f"expected {(self.n_tokens, self.width)} like the shallow prompt"
                )

    @classmethod
    def from_blocks(cls, model: nn.Module, name: str, shallow_path: str, blocks_path: str, adapter: str,
                    tokens: str) -> "DeepPrompts":
        """The shallow prompt at ``shallow_path`` and the ``VPT_shallow`` prompts of ``blocks_path[1:]``."""
        return cls(name, find_attribute(model, shallow_path, adapter),
                   deep_prompts_of(find_attribute(model, blocks_path, adapter)), adapter, tokens,
                   where=f"{blocks_path}[i].VPT_shallow")

    @property
    def depth(self) -> int:
        return 1 + len(self.deep)

    @property
    def group(self) -> PromptGroup:
        if self.per_layer:
            return PromptGroup(self.name, self.depth, self.n_tokens * self.width)
        return PromptGroup(self.name, self.depth * self.n_tokens, self.width)

    def stacked(self) -> Tensor:
        """The shared prompts as one group (attached to the parameters): ``[depth * n, width]``
        (vector tokens) or ``[depth, n * width]`` (layer tokens)."""
        # fp32 whatever the parameters' dtypes (MaPLe keeps ctx in CLIP's dtype, its deep prompts in fp32)
        layers = torch.stack([prompt.float() for prompt in (self.shallow, *self.deep)])  # [depth, n, width]
        return layers.flatten(1) if self.per_layer else layers.flatten(0, 1)

    def split(self, prompts: Tensor) -> Tuple[Tensor, Sequence[Tensor]]:
        """Per-sample group (``[B, depth * n, width]`` or ``[B, depth, n * width]``) -> shallow
        ``[B, n, width]`` and ``depth - 1`` deep prompts ``[B, n, width]``."""
        layers = prompts.reshape(prompts.shape[0], self.depth, self.n_tokens, self.width)  # [B, depth, n, width]
        return layers[:, 0], [layers[:, i] for i in range(1, self.depth)]
