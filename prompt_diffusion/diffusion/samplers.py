"""Samplers for the prompt diffusion model, one small function each, in σ space.

Every sampler integrates (or, for ``ddpm``, samples) the reverse process in the variables of
k-diffusion / EDM: ``x̃ = x_t / sqrt(ᾱ_t)`` and ``σ = sqrt((1 − ᾱ_t) / ᾱ_t)``, where the
probability-flow ODE is ``dx̃/dσ = (x̃ − D(x̃, σ)) / σ`` and ``D`` is the x0-predicting denoiser.
:class:`SigmaDenoiser` turns the network's VP interface ``denoise(x_t, t)`` into ``D(x̃, σ)``
(``x_t = x̃ / sqrt(1 + σ²)``, ``t = schedule.timestep(σ)``, a fractional timestep).

Entry point: :func:`sample`. Grids (``sampler_sigmas``) and the call budget:

- ``ddpm``, ``ddim``, ``dpmpp_2m``: ``nfe`` evaluations at ``nfe`` σ values from σ_max down to
  σ_min, then a last step to σ=0 that returns the x0 prediction made at σ_min.
- ``dpm_solver_2``: ``(nfe − 1) // 2`` second-order steps (2 evaluations each) down to σ_min and
  the final x0 prediction; an even ``nfe`` spends its spare evaluation on one first-order (DDIM)
  step at the start, as DPM-Solver's singlestep schedule does.
- ``amed``: ``K`` mean-direction steps on a grid of ``K + 1`` σ values ending at σ_min; the last
  step lands directly on σ=0 (its intermediate evaluation lies between its σ and σ_min, where the
  network is defined). Odd ``nfe``: analytical first step (no evaluation for the first step's
  start) and ``K = (nfe + 1) / 2``; even ``nfe``: no AFS and ``K = nfe / 2``.

The number of ``denoise`` calls always equals ``nfe``. Arithmetic is in float32 at least
(float64 inputs stay float64), whatever dtype the network returns. ``ddim``, ``dpm_solver_2``
and ``dpmpp_2m`` take an optional ``callback(i, x)``, called after step ``i`` with the state at
``sigmas[i + 1]`` (the AMED teacher records its trajectory this way).
"""
import math
from typing import Callable, List, Optional, Tuple, Union

import torch
from torch import Tensor

from .schedule import NoiseSchedule

SAMPLERS = ("ddpm", "ddim", "dpm_solver_2", "dpmpp_2m", "amed")

Denoise = Callable[..., Union[Tensor, Tuple[Tensor, Tensor]]]
StepCallback = Optional[Callable[[int, Tensor], None]]
#: ``noise(i) -> [B, N]``: the standard normal noise of an ancestral sampler's step ``i`` (k-diffusion's
#: noise_sampler; ``diffusion.noise.seeded_noise_sampler`` gives per-sample seeded noise)
NoiseSampler = Optional[Callable[[int], Tensor]]


def grid_is_zero(sigmas: Tensor) -> List[bool]:
    """Which points of a σ grid are 0, as Python booleans: read once per sampling, so the steps
    branch without a host-device synchronisation each."""
    return (sigmas == 0).tolist()


class SigmaDenoiser:
    """``D(x̃, σ)`` over a VP x0-denoiser ``denoise(x_t [B, N], t [B], return_hidden=False)``.

    ``σ`` may be a scalar tensor or one value per sample ``[B]``. Outputs are cast to the dtype
    of ``x̃`` (the solver's dtype). ``position(σ)`` is ``t(σ) / (T − 1)`` in [0, 1], the time
    input of the AMED predictor. Every σ a sampler passes lies on or between the points of a grid
    inside the schedule's range, so ``t(σ)`` skips the range check: no host-device synchronisation
    per denoiser call on CUDA.
    """

    def __init__(self, denoise: Denoise, schedule: NoiseSchedule) -> None:
        self.denoise = denoise
        self.schedule = schedule

    def _timesteps(self, x: Tensor, sigma: Tensor) -> Tuple[Tensor, Tensor]:
        sigma = sigma.to(x.dtype).expand(x.shape[0])  # [B]
        return sigma, self.schedule.timestep(sigma, check=False)

    def position(self, sigma: Tensor) -> Tensor:
        return self.schedule.timestep(sigma, check=False) / (self.schedule.steps - 1)

    def __call__(self, x: Tensor, sigma: Tensor, return_hidden: bool = False):
        sigma, t = self._timesteps(x, sigma)
        x_t = x / torch.sqrt(1.0 + sigma * sigma)[:, None]
        if not return_hidden:
            return self.denoise(x_t, t).to(x.dtype)
        denoised, hidden = self.denoise(x_t, t, return_hidden=True)
        return denoised.to(x.dtype), hidden


def ddim(model: SigmaDenoiser, x: Tensor, sigmas: Tensor, callback: StepCallback = None) -> Tensor:
    """DDIM (η=0) = Euler's method on the probability-flow ODE in σ: first order."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        x = denoised + (sigmas[i + 1] / sigmas[i]) * (x - denoised)
        if callback is not None:
            callback(i, x)
    return x


def ddpm(model: SigmaDenoiser, x: Tensor, sigmas: Tensor, noise_sampler: NoiseSampler = None) -> Tensor:
    """Ancestral DDPM (paper Eq. 5): sample ``q(x_{t'} | x_t, x̂0)`` at each grid step.

    In σ space the posterior step is a deterministic move to ``σ_down`` plus fresh noise of size
    ``σ_up`` with ``σ_up² = σ'²(σ² − σ'²)/σ²`` and ``σ_down² = σ'² − σ_up²`` (DDIM with η=1; on
    consecutive integer timesteps this is exactly Eq. 5 with the posterior variance β̃_t).
    ``noise_sampler(i)`` gives step ``i``'s standard normal noise (default: the global random stream).
    """
    to_zero = grid_is_zero(sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        sigma_up = torch.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
        sigma_down = torch.sqrt(sigma_next**2 - sigma_up**2)
        x = denoised + (sigma_down / sigma) * (x - denoised)
        if not to_zero[i + 1]:
            noise = torch.randn_like(x) if noise_sampler is None else noise_sampler(i)
            x = x + sigma_up * noise.to(device=x.device, dtype=x.dtype)
    return x


def dpm_solver_2(model: SigmaDenoiser, x: Tensor, sigmas: Tensor, callback: StepCallback = None) -> Tensor:
    """Singlestep DPM-Solver-2: midpoint at ``s = sqrt(σ_n σ_{n+1})`` with ``c = 1`` (paper Eq. 6).

    Two evaluations per step; the last step (to σ=0) is the x0 prediction at the last σ.
    """
    to_zero = grid_is_zero(sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        if to_zero[i + 1]:
            x = denoised
        else:
            sigma_mid = torch.sqrt(sigma * sigma_next)
            x_mid = denoised + (sigma_mid / sigma) * (x - denoised)
            denoised_mid = model(x_mid, sigma_mid)
            x = x + (sigma_next - sigma) * (x_mid - denoised_mid) / sigma_mid
        if callback is not None:
            callback(i, x)
    return x


def dpmpp_2m(model: SigmaDenoiser, x: Tensor, sigmas: Tensor, callback: StepCallback = None) -> Tensor:
    """DPM-Solver++(2M): multistep second order in log σ, one evaluation per step.

    With ``λ = −log σ`` and ``h = λ' − λ``: ``x' = (σ'/σ) x − expm1(−h) D̂`` where ``D̂`` is the
    current x0 prediction, linearly extrapolated with the previous one after the first step.
    """
    previous = None
    to_zero = grid_is_zero(sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        if to_zero[i + 1]:
            x = denoised
        else:
            h = torch.log(sigma) - torch.log(sigma_next)
            estimate = denoised
            if previous is not None:
                ratio = (torch.log(sigmas[i - 1]) - torch.log(sigma)) / h  # h_last / h
                estimate = (1 + 1 / (2 * ratio)) * denoised - (1 / (2 * ratio)) * previous
            x = (sigma_next / sigma) * x - torch.expm1(-h) * estimate
        previous = denoised
        if callback is not None:
            callback(i, x)
    return x


def amed_step(
    model: SigmaDenoiser,
    x: Tensor,
    sigma: Tensor,
    sigma_end: Tensor,
    predictor: Callable[[Tensor, Tensor, Tensor], Tuple[Tensor, Tensor]],
    land_on_zero: bool = False,
    afs: bool = False,
) -> Tuple[Tensor, Tensor, Tensor]:
    """One AMED step (paper Eq. 6): ``x' = x + c (σ' − σ) d(x_s, s)`` with a learned ``s, c``.

    The predictor reads the denoiser's hidden feature at ``(x, σ)`` and the positions of ``σ``
    and ``σ_end`` and returns ``r ∈ (0, 1)`` and ``c`` per sample; ``s = σ_end^r σ^(1−r)``. The
    target ``σ'`` is ``σ_end``, or 0 when ``land_on_zero`` (the final step). With ``afs`` the
    start direction is the analytical ``x / sqrt(1 + σ²)`` (no evaluation, zero feature).
    Returns ``(x', r, c)``.
    """
    if afs:
        direction = x / torch.sqrt(1.0 + sigma * sigma)
        hidden = torch.zeros(x.shape[0], predictor.feature_dim, dtype=x.dtype, device=x.device)
    else:
        denoised, hidden = model(x, sigma, return_hidden=True)
        direction = (x - denoised) / sigma
    batch = x.shape[0]
    r, c = predictor(
        hidden.to(x.dtype),
        model.position(sigma.expand(batch)).to(x.dtype),
        model.position(sigma_end.expand(batch)).to(x.dtype),
    )
    r, c = r.to(x.dtype), c.to(x.dtype)
    sigma_mid = sigma_end**r * sigma ** (1 - r)  # [B]
    x_mid = x + (sigma_mid - sigma)[:, None] * direction
    direction_mid = (x_mid - model(x_mid, sigma_mid)) / sigma_mid[:, None]
    target = torch.zeros_like(sigma) if land_on_zero else sigma_end
    return x + (c * (target - sigma))[:, None] * direction_mid, r, c


def amed(
    model: SigmaDenoiser,
    x: Tensor,
    sigmas: Tensor,
    predictor: Callable[[Tensor, Tensor, Tensor], Tuple[Tensor, Tensor]],
    afs: bool = True,
) -> Tensor:
    """AMED-Solver: one :func:`amed_step` per grid interval, the last one landing on σ=0.

    ``sigmas`` is the grid ``σ_0 > … > σ_K = σ_min`` (no trailing 0); ``afs`` replaces the first
    step's starting evaluation by the analytical first step.
    """
    steps = len(sigmas) - 1
    for i in range(steps):
        x, _, _ = amed_step(
            model, x, sigmas[i], sigmas[i + 1], predictor, land_on_zero=i == steps - 1, afs=afs and i == 0
        )
    return x


def initial_state(x_T: Tensor, schedule: NoiseSchedule) -> Tensor:
    """VP noise ``x_T`` -> the σ-space state ``x̃_T = x_T / sqrt(ᾱ_{T−1})`` in the solver dtype."""
    dtype = torch.promote_types(x_T.dtype, torch.float32)
    return x_T.to(dtype) * math.sqrt(1.0 + schedule.sigma_max**2)


def amed_layout(nfe: int) -> Tuple[int, bool]:
    """``(K steps, afs)`` for an AMED budget of ``nfe`` evaluations (see module docstring)."""
    return ((nfe + 1) // 2, True) if nfe % 2 else (nfe // 2, False)


def sampler_sigmas(schedule: NoiseSchedule, sampler: str, nfe: int, grid: str = "logsnr") -> Tensor:
    """The σ grid (float64) a sampler walks for a budget of ``nfe`` evaluations.

    Ends with 0 for every sampler except ``amed``, whose last step lands on 0 by itself.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")
    if int(nfe) != nfe or nfe < 1:
        raise ValueError(f"nfe must be an integer >= 1, got {nfe!r}")
    zero = torch.zeros(1, dtype=torch.float64)
    if sampler == "amed":
        steps, _ = amed_layout(nfe)
        return schedule.sigma_grid(steps + 1, grid)
    if sampler == "dpm_solver_2":
        points = (nfe - 1) // 2 + (nfe - 1) % 2 + 1
        return torch.cat([schedule.sigma_grid(points, grid), zero])
    return torch.cat([schedule.sigma_grid(nfe, grid), zero])


@torch.no_grad()
def sample(
    denoise: Denoise,
    x_T: Tensor,
    schedule: NoiseSchedule,
    sampler: str = "dpmpp_2m",
    nfe: int = 5,
    noise_sampler: NoiseSampler = None,
    amed_predictor=None,
    grid: str = "logsnr",
) -> Tensor:
    """Turn noise ``x_T`` into an x0 sample with exactly ``nfe`` calls of ``denoise``.

    Args:
        denoise: ``denoise(x_t [B, N], t [B], return_hidden=False)`` -> x0 prediction ``[B, N]``
            for VP inputs ``x_t = sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·ε`` at fractional timesteps ``t``;
            with ``return_hidden=True`` it returns ``(x0, feature [B, F])`` (AMED needs it; see
            :meth:`PromptDenoiser.denoise_fn`).
        x_T: ``[B, N]`` standard normal noise (the VP state at t = T−1).
        sampler: one of ``SAMPLERS``.
        noise_sampler: ``noise(i)``, ``ddpm``'s ancestral noise at step ``i`` (default: the global stream).
        amed_predictor: an :class:`~.amed.AMEDPredictor` (required for ``amed``; its ``nfe`` and
            ``grid`` must match).
        grid: σ spacing, see :meth:`NoiseSchedule.sigma_grid`.
    Returns:
        ``[B, N]`` x0 samples in the solver dtype (float32, or float64 for float64 input).
    Runs without autograd.
    """
    if x_T.dim() != 2:
        raise ValueError(f"x_T must be [B, N], got shape {list(x_T.shape)}")
    x = initial_state(x_T, schedule)
    sigmas = sampler_sigmas(schedule, sampler, nfe, grid).to(device=x.device, dtype=x.dtype)
    model = SigmaDenoiser(denoise, schedule)
    if sampler == "ddim":
        return ddim(model, x, sigmas)
    if sampler == "ddpm":
        return ddpm(model, x, sigmas, noise_sampler)
    if sampler == "dpmpp_2m":
        return dpmpp_2m(model, x, sigmas)
    if sampler == "dpm_solver_2":
        if nfe % 2 == 0:  # spare evaluation: one first-order step at the start
            x = ddim(model, x, sigmas[:2])
            sigmas = sigmas[1:]
        return dpm_solver_2(model, x, sigmas)
    if amed_predictor is None:
        raise ValueError("sampler 'amed' needs amed_predictor (an AMEDPredictor distilled for this nfe)")
    if amed_predictor.nfe != nfe or amed_predictor.grid != grid:
        raise ValueError(
            f"the AMED predictor was distilled for nfe={amed_predictor.nfe}, grid={amed_predictor.grid!r}; "
            f"sampling asked for nfe={nfe}, grid={grid!r}"
        )
    return amed(model, x, sigmas, amed_predictor, afs=amed_layout(nfe)[1])
