"""A conditional VAE over prompt residuals (pure torch): the VAE row of the paper's Table 4.

Encoder ``q(z | r*, π)``: the denoiser's transformer reading the overfitted residual r*, mapping
each prompt token out to a mean and a log-variance: the latent z has the residual's layout
(``noise_dim`` = N). Decoder ``(z, π) -> r``: the same transformer reading z (zero-initialised
output: an untrained decoder gives the centre). Loss, per coordinate:
``‖r* − dec(z, π)‖²/N + kl_weight · KL(q(z | r*, π) ‖ N(0, I))/N`` with ``z = μ + σ ε``
(reparameterised), which at ``kl_weight`` 1 is the negative ELBO of a Gaussian decoder with
variance 1/2 per coordinate, up to a constant. The prediction for the CE term is the
reconstruction ``dec(z, π)``; at test time ``z ~ N(0, I)`` (the caller's seeded noise).
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .base import PromptGenerator, standard_normal
from .networks import TokenTransformer


class VAEGenerator(PromptGenerator):
    """Conditional VAE with a latent of the residual's size; ``kl_weight`` weighs the KL term."""

    kind = "vae"

    def __init__(self, groups: Sequence[Sequence], cond_dim: int, layers: int = 12, heads: int = 16,
                 width: int = 512, kl_weight: float = 1.0) -> None:
        super().__init__(groups, cond_dim)
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        self.config.update({"layers": int(layers), "heads": int(heads), "width": int(width),
                            "kl_weight": float(kl_weight)})
        self.kl_weight = float(kl_weight)
        self.encoder = TokenTransformer(self.layout, cond_dim, layers, heads, width, out_factor=2)
        self.decoder = TokenTransformer(self.layout, cond_dim, layers, heads, width)

    def encode(self, residual: Tensor, cond: Tensor) -> Tuple[Tensor, Tensor]:
        """Posterior mean and log-variance ``[B, N]`` each, for residuals ``[B, N]``."""
        out = self.encoder.outputs(self.encoder.hidden(self.layout.unflatten(residual), cond))  # {g: [B, n, 2w]}
        mean = {name: value.chunk(2, dim=-1)[0] for name, value in out.items()}
        log_var = {name: value.chunk(2, dim=-1)[1] for name, value in out.items()}
        return self.layout.flatten(mean), self.layout.flatten(log_var)

    def decode(self, z: Tensor, cond: Tensor) -> Tensor:
        """Residuals ``[B, N]`` from latents ``z [B, N]``."""
        return self.layout.flatten(self.decoder.outputs(self.decoder.hidden(self.layout.unflatten(z), cond)))

    def residual_loss(self, residual: Tensor, cond: Tensor,
                      generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        mean, log_var = self.encode(residual, cond)
        mean, log_var = mean.float(), log_var.float()
        z = mean + (0.5 * log_var).exp() * standard_normal(mean.shape, generator, mean.device)
        reconstruction = self.decode(z, cond)
        kl = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var)  # [B, N]
        loss = (reconstruction.float() - residual).pow(2).mean() + self.kl_weight * kl.mean()
        return loss, reconstruction

    def sample_residual(self, cond: Tensor, noise: Tensor, **options) -> Tensor:
        return self.decode(noise, cond)
