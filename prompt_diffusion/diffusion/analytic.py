"""An exactly solvable diffusion: Gaussian data, for checking samplers against the truth.

For ``x0 ~ N(μ, diag(s²))`` and ``x̃ = x0 + σ ε`` the exact x0-denoiser is
``D(x̃, σ) = μ + s² / (s² + σ²) · (x̃ − μ)``, and the probability-flow ODE moves every point as
``x̃(σ) = μ + sqrt((s² + σ²) / (s² + σ'²)) · (x̃(σ') − μ)``. Every sampler here integrates from
σ_max to σ_min and returns the x0 prediction there, so the exact answer for noise ``x_T`` is
``D(x̃(σ_min), σ_min)`` with ``x̃(σ_max) = x_T · sqrt(1 + σ_max²)``.
"""
from typing import Tuple, Union

import torch
from torch import Tensor

from .schedule import NoiseSchedule


class GaussianDenoiser:
    """The exact x0-denoiser of ``N(mean, diag(std²))`` data, in the samplers' VP interface.

    ``denoiser(x_t [B, N], t [B], return_hidden=False)``; the hidden feature is ``[B, 1]`` zeros
    (an AMED predictor then learns one ``(r, c)`` per step). ``calls`` counts evaluations.
    """

    def __init__(self, mean: Tensor, std: Tensor, schedule: NoiseSchedule) -> None:
        if mean.shape != std.shape or mean.dim() != 1:
            raise ValueError(
                f"mean and std must be [N] tensors of one shape, got {list(mean.shape)} and {list(std.shape)}"
            )
        self.mean, self.std, self.schedule = mean, std, schedule
        self.calls = 0

    def __call__(self, x_t: Tensor, t: Tensor, return_hidden: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        self.calls += 1
        alpha_bar = self.schedule.alpha_bar_at(t).to(x_t.dtype)[:, None]  # [B, 1]
        x_tilde, sigma2 = x_t / alpha_bar.sqrt(), (1 - alpha_bar) / alpha_bar
        mean, var = self.mean.to(x_t), self.std.to(x_t) ** 2
        x0 = mean + var / (var + sigma2) * (x_tilde - mean)
        return (x0, x_t.new_zeros(x_t.shape[0], 1)) if return_hidden else x0

    def exact_sample(self, x_T: Tensor) -> Tensor:
        """``D(x̃(σ_min), σ_min)`` for the probability-flow trajectory starting at ``x_T``."""
        low, high = self.schedule.sigma_min**2, self.schedule.sigma_max**2
        mean, var = self.mean.to(x_T), self.std.to(x_T) ** 2
        x_tilde = x_T * (1 + high) ** 0.5
        at_min = mean + ((var + low) / (var + high)).sqrt() * (x_tilde - mean)
        return mean + var / (var + low) * (at_min - mean)
