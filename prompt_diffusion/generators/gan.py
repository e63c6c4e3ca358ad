"""A conditional GAN over prompt residuals (pure torch): the GAN row of the paper's Table 4.

Generator ``G(π, ε)``: an MLP on ``[ε, LayerNorm(π)]`` with ``ε ~ N(0, I)`` of the residual's size
(``layers`` hidden layers of ``4·width``, zero-initialised output: an untrained generator gives the
centre). Discriminator ``D(r, π)``: the same MLP shape on ``[r, LayerNorm(π)]``, one score. (MLPs:
the denoiser's transformer as generator and discriminator oscillated without settling on the
synthetic two-mode test of ``tests/test_generators.py``; the MLP pair finds the modes.)

Loss (non-saturating, Goodfellow et al.): ``L_D = E[softplus(−D(r*, π))] + E[softplus(D(G(π, ε), π))]``
and ``L_G = E[softplus(−D(G(π, ε), π))]``. Both are returned summed in one loss, so the caller takes
one backward pass and one step of every optimizer: ``L_D`` reaches D alone (the fake residual is
detached in it) and ``L_G`` reaches G alone (D is called with detached parameters there). D is a
:meth:`~.base.PromptGenerator.parts` module: its own optimizer and checkpoint. The CE term of the
wrapper (Eq. 8) is the supervised term alongside.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .base import PromptGenerator, standard_normal
from .networks import mlp


class Discriminator(nn.Module):
    """``D(r, π)``: a score ``[B]`` for normalized flat residuals ``r [B, N]`` given π."""

    def __init__(self, numel: int, cond_dim: int, layers: int, width: int) -> None:
        super().__init__()
        self.cond_norm = nn.LayerNorm(cond_dim)
        self.net = mlp(numel + cond_dim, 4 * width, 1, layers, zero_out=False)

    def forward(self, residual: Tensor, cond: Tensor) -> Tensor:
        return self.net(torch.cat([residual, self.cond_norm(cond.to(residual.dtype))], dim=1)).squeeze(1)


class GANGenerator(PromptGenerator):
    """Conditional GAN: ``G(π, ε)`` with ``ε ~ N(0, I)`` of the residual's size, non-saturating loss."""

    kind = "gan"

    def __init__(self, groups: Sequence[Sequence], cond_dim: int, layers: int = 12, width: int = 512) -> None:
        super().__init__(groups, cond_dim)
        self.config.update({"layers": int(layers), "width": int(width)})
        self.cond_norm = nn.LayerNorm(cond_dim)
        self.net = mlp(self.layout.numel + cond_dim, 4 * width, self.layout.numel, layers)
        # not a submodule: trained by its own optimizer, saved in its own checkpoint (parts())
        self._parts = {"discriminator": Discriminator(self.layout.numel, cond_dim, layers, width)}

    @property
    def discriminator(self) -> Discriminator:
        return self._parts["discriminator"]

    def parts(self) -> Dict[str, nn.Module]:
        return dict(self._parts)

    def forward(self, cond: Tensor, noise: Tensor) -> Tensor:
        """``G(π, ε)``: residuals ``[B, N]`` from ``cond [B, cond_dim]`` and ``noise [B, N]``."""
        return self.net(torch.cat([noise, self.cond_norm(cond.to(noise.dtype))], dim=1))

    def residual_loss(self, residual: Tensor, cond: Tensor,
                      generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        fake = self(cond, standard_normal(residual.shape, generator, residual.device))  # [B, N]
        d = self.discriminator
        loss_d = F.softplus(-d(residual, cond)).mean() + F.softplus(d(fake.detach(), cond)).mean()
        frozen = {name: p.detach() for name, p in d.named_parameters()}
        loss_g = F.softplus(-functional_call(d, frozen, (fake, cond))).mean()
        return loss_g + loss_d, fake

    def sample_residual(self, cond: Tensor, noise: Tensor, **options) -> Tensor:
        return self(cond, noise)
