"""The non-generative rows of the paper's Table 4: π -> V* regressors (pure torch).

Both map the condition alone to one residual (no noise: ``noise_dim`` 0) and are trained by the
mean squared error to the overfitted residual, so for a target with several modes given π they
converge to the conditional mean. Their last maps are zero-initialised: untrained, they predict
the centre itself.
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .base import PromptGenerator
from .networks import TokenTransformer, mlp


class _Regressor(PromptGenerator):
    """A generator whose residual is a function of π alone, fitted by the MSE."""

    @property
    def noise_dim(self) -> int:
        return 0

    def predict(self, cond: Tensor) -> Tensor:
        """The residual ``[B, N]`` for ``cond [B, cond_dim]``."""
        raise NotImplementedError

    def residual_loss(self, residual: Tensor, cond: Tensor,
                      generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        predicted = self.predict(cond)
        return (predicted.float() - residual).pow(2).mean(), predicted

    def sample_residual(self, cond: Tensor, noise: Tensor, **options) -> Tensor:
        return self.predict(cond)


class MLPRegressor(_Regressor):
    """``LayerNorm(π) -> [Linear, GELU] × layers (hidden 4·width) -> Linear -> residual [B, N]``."""

    kind = "mlp"

    def __init__(self, groups: Sequence[Sequence], cond_dim: int, layers: int = 12, width: int = 512) -> None:
        super().__init__(groups, cond_dim)
        self.config.update({"layers": int(layers), "width": int(width)})
        self.net = nn.Sequential(nn.LayerNorm(cond_dim), mlp(cond_dim, 4 * width, self.layout.numel, layers))

    def predict(self, cond: Tensor) -> Tensor:
        return self.net(cond.to(self.net[0].weight.dtype))


class TransformerRegressor(_Regressor):
    """The denoiser's transformer over the same prompt tokens without noise or time: the prompt
    tokens are learned queries (their position embeddings), π is the condition token."""

    kind = "transformer"

    def __init__(self, groups: Sequence[Sequence], cond_dim: int, layers: int = 12, heads: int = 16,
                 width: int = 512) -> None:
        super().__init__(groups, cond_dim)
        self.config.update({"layers": int(layers), "heads": int(heads), "width": int(width)})
        self.net = TokenTransformer(self.layout, cond_dim, layers, heads, width, reads_prompts=False)

    def predict(self, cond: Tensor) -> Tensor:
        return self.layout.flatten(self.net.outputs(self.net.hidden(None, cond)))
