"""A conditional normalizing flow over prompt residuals (pure torch): the flow row of Table 4.

RealNVP-style affine couplings (Dinh et al., 2017), each conditioned on π: coupling ``k`` keeps
the coordinates of one parity (``index % 2 == k % 2`` over the flat residual) and maps the others
``y = x·exp(s) + t`` with ``(s, t) = MLP([kept coordinates, embed(π)])``, ``s`` bounded by tanh.
Trained by exact likelihood: ``−log p(r* | π) = ½‖z‖² + ½N log 2π − Σ s`` with ``z = f(r*; π)``,
reported per coordinate. Sampling inverts the couplings from ``z`` (the caller's seeded noise,
``noise_dim`` = N). The last map of every coupling is zero-initialised, so an untrained flow is
the identity: it samples N(0, I) residuals (calibration then gives them a gain of about 0).
The prediction for the CE term is a fresh sample (differentiable through the inverse).
"""
import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .base import PromptGenerator, standard_normal
from .networks import mlp


class ConditionalCoupling(nn.Module):
    """One affine coupling over ``[B, N]``: the coordinates where ``mask`` is 1 pass unchanged
    and condition the affine map of the others (together with the embedded π)."""

    def __init__(self, numel: int, embed_dim: int, width: int, parity: int) -> None:
        super().__init__()
        self.register_buffer("mask", (torch.arange(numel) % 2 == parity).float(), persistent=False)
        self.net = mlp(numel + embed_dim, width, 2 * numel, layers=2)

    def _shift_and_log_scale(self, x: Tensor, embedding: Tensor) -> Tuple[Tensor, Tensor]:
        log_scale, shift = self.net(torch.cat([x * self.mask, embedding], dim=1)).chunk(2, dim=1)
        free = 1.0 - self.mask
        return shift * free, torch.tanh(log_scale) * free

    def forward(self, x: Tensor, embedding: Tensor) -> Tuple[Tensor, Tensor]:
        """Data -> latent direction: ``(y [B, N], log|det| [B])``."""
        shift, log_scale = self._shift_and_log_scale(x, embedding)
        return x * log_scale.exp() + shift, log_scale.sum(dim=1)

    def inverse(self, y: Tensor, embedding: Tensor) -> Tensor:
        shift, log_scale = self._shift_and_log_scale(y, embedding)  # the kept half is the same in y and x
        return (y - shift) * (-log_scale).exp()


class FlowGenerator(PromptGenerator):
    """Conditional RealNVP: ``couplings`` affine couplings of alternating parity (hidden ``width``)."""

    kind = "flow"

    def __init__(self, groups: Sequence[Sequence], cond_dim: int, couplings: int = 12, width: int = 512) -> None:
        super().__init__(groups, cond_dim)
        if couplings < 2:
            raise ValueError(f"a flow needs at least 2 couplings (each coordinate transformed once), got {couplings}")
        self.config.update({"couplings": int(couplings), "width": int(width)})
        self.embed = nn.Sequential(nn.LayerNorm(cond_dim), nn.Linear(cond_dim, width))
        self.couplings = nn.ModuleList([ConditionalCoupling(self.layout.numel, width, width, k % 2)
                                        for k in range(couplings)])

    def _embedding(self, cond: Tensor) -> Tensor:
        return self.embed(cond.to(self.embed[1].weight.dtype))

    def log_prob(self, residual: Tensor, cond: Tensor) -> Tensor:
        """Exact ``log p(r | π)`` ``[B]`` for residuals ``[B, N]``."""
        embedding = self._embedding(cond)
        z, log_det = residual, torch.zeros(len(residual), device=residual.device)
        for coupling in self.couplings:
            z, step = coupling(z, embedding)
            log_det = log_det + step
        return -0.5 * z.pow(2).sum(dim=1) - 0.5 * z.shape[1] * math.log(2 * math.pi) + log_det

    def invert(self, z: Tensor, cond: Tensor) -> Tensor:
        """Latents ``[B, N]`` -> residuals ``[B, N]``."""
        embedding = self._embedding(cond)
        x = z
        for coupling in reversed(self.couplings):
            x = coupling.inverse(x, embedding)
        return x

    def residual_loss(self, residual: Tensor, cond: Tensor,
                      generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        nll = -self.log_prob(residual, cond).mean() / residual.shape[1]
        sample = self.invert(standard_normal(residual.shape, generator, residual.device), cond)
        return nll, sample

    def sample_residual(self, cond: Tensor, noise: Tensor, **options) -> Tensor:
        return self.invert(noise, cond)
