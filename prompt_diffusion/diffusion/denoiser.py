"""PromptDenoiser: the diffusion generator, a transformer that predicts clean prompts from noisy ones.

One implementation of :class:`~prompt_diffusion.generators.base.PromptGenerator` (raw, normalized
and flat prompt spaces are explained there): the loss is the paper's Eq. 7 with a continuous
timestep, and sampling runs one of the ODE/SDE samplers of ``samplers.py`` for ``nfe`` denoiser calls.

Architecture (after G.pt's transformer over parameter tokens): a
:class:`~prompt_diffusion.generators.networks.TokenTransformer` over
``[time tokens | condition tokens | prompt tokens]``; the zero-initialised output maps make an
untrained denoiser predict a zero residual: the centre itself.
"""
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from prompt_diffusion.generators.base import Prompts, PromptGenerator, standard_normal
from prompt_diffusion.generators.networks import FrequencyEmbedding, TokenTransformer

from .samplers import NoiseSampler, sample
from .schedule import NoiseSchedule


class PromptDenoiser(PromptGenerator):
    """The diffusion generator: predicts clean normalized prompts ``x0`` from noisy ones,
    conditioned on π and t (Eq. 7), and samples residuals with a fast solver.

    Args:
        groups: ``(name, n_tokens, token_width)`` per prompt group, e.g.
            ``[("text", 4, 512), ("vision", 36, 768)]``.
        cond_dim: width of the condition π (the image feature), ``[B, cond_dim]``.
        layers, heads, width: transformer depth, attention heads, model width.
        timesteps: T of the noise schedule; the continuous timestep t ∈ [0, T−1] is encoded as
            ``t / (T−1)`` with ``time_frequencies`` NeRF frequencies.
        schedule: the noise schedule's kind (``NoiseSchedule``; ``self.schedule``).
        cond_tokens, time_tokens: how many tokens π and t each become.
        mlp_ratio, dropout: block MLP width factor and dropout.
    """

    kind = "diffusion"

    def __init__(
        self,
        groups: Sequence[Sequence],
        cond_dim: int,
        layers: int = 12,
        heads: int = 16,
        width: int = 512,
        timesteps: int = 100,
        schedule: str = "scaled_linear",
        time_frequencies: int = 8,
        cond_tokens: int = 1,
        time_tokens: int = 1,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(groups, cond_dim)
        self.config.update({
            "layers": int(layers),
            "heads": int(heads),
            "width": int(width),
            "timesteps": int(timesteps),
            "schedule": str(schedule),
            "time_frequencies": int(time_frequencies),
            "cond_tokens": int(cond_tokens),
            "time_tokens": int(time_tokens),
            "mlp_ratio": float(mlp_ratio),
            "dropout": float(dropout),
        })
        self.width = width
        self.timesteps = timesteps
        self.time_tokens = time_tokens
        self.schedule = NoiseSchedule(steps=timesteps, kind=schedule)
        self.time_embedding = FrequencyEmbedding(time_frequencies)
        self.time_mlp = nn.Sequential(
            nn.Linear(self.time_embedding.out_dim, width), nn.GELU(), nn.Linear(width, time_tokens * width)
        )
        self.net = TokenTransformer(self.layout, cond_dim, layers, heads, width, cond_tokens=cond_tokens,
                                    prefix_tokens=time_tokens, mlp_ratio=mlp_ratio, dropout=dropout)

    # ---- network -------------------------------------------------------------------------------
    def forward(
        self, x_t: Prompts, cond: Tensor, t: Tensor, return_hidden: bool = False
    ) -> Union[Prompts, Tuple[Prompts, Tensor]]:
        """Predict clean normalized prompts.

        Args:
            x_t: noisy *normalized* prompts ``{name: [B, n, w]}`` in VP form
                ``sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·ε``.
            cond: the condition π, ``[B, cond_dim]``.
            t: fractional timesteps ``[B]`` in [0, T−1].
            return_hidden: also return the final hidden states ``[B, L, width]`` (after the final
                LayerNorm, all L = time + condition + prompt tokens).
        Returns:
            ``{name: [B, n, w]}`` x0 predictions (normalized space)[, hidden].
        """
        batch = cond.shape[0]
        if cond.dim() != 2 or cond.shape[1] != self.cond_dim:
            raise ValueError(f"cond must be [B, {self.cond_dim}], got {list(cond.shape)}")
        t = torch.as_tensor(t, device=cond.device)
        if t.dim() == 0:
            t = t.expand(batch)
        dtype = self.net.position.dtype
        time = self.time_mlp(self.time_embedding(t.to(dtype) / (self.timesteps - 1)))
        h = self.net.hidden(x_t, cond, prefix=time.view(batch, self.time_tokens, self.width))
        out = self.net.outputs(h)
        return (out, h) if return_hidden else out

    def denoise_fn(self, cond: Tensor) -> Callable[..., Union[Tensor, Tuple[Tensor, Tensor]]]:
        """The flat denoiser the samplers call, for a fixed condition ``cond [B, cond_dim]``.

        Returns ``denoise(x_t [B, N], t [B], return_hidden=False)`` -> x0 prediction ``[B, N]``
        (normalized, flat); with ``return_hidden=True`` also the token-averaged final hidden state
        ``[B, width]`` (detached), the feature an :class:`~.amed.AMEDPredictor` reads.
        """

        def denoise(x_t: Tensor, t: Tensor, return_hidden: bool = False):
            result = self(self.layout.unflatten(x_t), cond, t, return_hidden=return_hidden)
            if not return_hidden:
                return self.layout.flatten(result)
            x0, hidden = result
            return self.layout.flatten(x0), hidden.mean(dim=1).detach()

        return denoise

    # ---- the generator interface ---------------------------------------------------------------
    def residual_loss(self, residual: Tensor, cond: Tensor,
                      generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        """Paper Eq. 7 with a continuous timestep: ``‖r − r̂_θ(√ᾱ_t r + √(1−ᾱ_t) ε, π, t)‖²`` over
        the normalized residual ``r [B, N]``, averaged over every coordinate; ``t ~ U[0, T−1]`` and ε
        drawn with ``generator`` (on its device). Returns the loss and ``r̂ [B, N]``."""
        batch = residual.shape[0]
        device = generator.device if generator is not None else residual.device
        uniform = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
        t = (uniform * (self.schedule.steps - 1)).to(residual.device)  # continuous t ~ U[0, T-1]
        noise = standard_normal(residual.shape, generator, residual.device)
        alpha_bar = self.schedule.alpha_bar_at(t, check=False).to(residual.dtype)[:, None]  # [B, 1]; t in range by construction
        noisy = alpha_bar.sqrt() * residual + (1.0 - alpha_bar).sqrt() * noise
        predicted = self.layout.flatten(self(self.layout.unflatten(noisy), cond, t.to(residual.dtype)))
        return (predicted.float() - residual).pow(2).mean(), predicted

    def sample_residual(self, cond: Tensor, noise: Tensor, noise_sampler: NoiseSampler = None,
                        sampler: str = "dpmpp_2m", nfe: int = 5, amed_predictor: Optional[nn.Module] = None) -> Tensor:
        """``noise [B, N]`` (the start of the reverse process) -> ``sampler`` with ``nfe`` denoiser
        calls (``noise_sampler`` gives ddpm's ancestral noise; ``amed_predictor``: a distilled
        :class:`~.amed.AMEDPredictor` for ``amed``) -> the x0 residual ``[B, N]``."""
        return sample(self.denoise_fn(cond), noise, self.schedule, sampler, nfe, noise_sampler, amed_predictor)
