"""Discrete variance-preserving noise schedule with a continuous-time extension.

The diffusion chain has ``T`` discrete timesteps ``0 .. T-1`` with cumulative signal rates
``alpha_bar[i] = prod_{j<=i} (1 - beta_j)`` (paper §3). Samplers need the model at *fractional*
timesteps, so ``log alpha(t) = 0.5 * log alpha_bar(t)`` is extended piecewise-linearly between
the integer grid points, as DPM-Solver's discrete-time wrapper does. The solvers themselves run in
σ space (k-diffusion, EDM): ``σ(t) = sqrt((1 - alpha_bar(t)) / alpha_bar(t))`` and
``x̃ = x_t / sqrt(alpha_bar(t))``. All tables are float64.
"""
import math
import warnings
from typing import Dict

import torch
from torch import Tensor

SCHEDULE_KINDS = ("scaled_linear", "cosine", "linear")
GRID_KINDS = ("logsnr", "time_uniform", "polynomial")

# tolerance for timesteps / sigmas a hair outside the table because of float rounding
_RANGE_TOLERANCE = 1e-6


def _betas(steps: int, kind: str) -> Tensor:
    """β_1..β_T (float64) for a schedule kind."""
    if kind == "scaled_linear":
        # DDPM's 1e-4..0.02 for T=1000, rescaled so the chain reaches noise for any T
        scale = 1000.0 / steps
        return torch.linspace(1e-4 * scale, 0.02 * scale, steps, dtype=torch.float64).clamp(max=0.999)
    if kind == "linear":
        betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
        final_alpha_bar = torch.prod(1.0 - betas).item()
        if final_alpha_bar > 1e-2:
            warnings.warn(
                f"linear schedule with T={steps} leaves alpha_bar_T={final_alpha_bar:.3f}: the chain "
                "never reaches noise; use kind='scaled_linear' or 'cosine'",
                stacklevel=3,
            )
        return betas
    if kind == "cosine":
        # Nichol & Dhariwal (2021): alpha_bar(s) = cos²((s/T + 0.008)/1.008 · π/2), β clipped at 0.999
        s = torch.arange(steps + 1, dtype=torch.float64) / steps
        f = torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return (1.0 - f[1:] / f[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown noise schedule kind {kind!r}; allowed: {', '.join(SCHEDULE_KINDS)}")


class NoiseSchedule:
    """A discrete VP schedule with ``steps`` timesteps and its continuous-time extension.

    Attributes:
        steps: ``T``, the number of discrete timesteps; valid (fractional) timesteps are
            ``t ∈ [0, T-1]``.
        kind: ``"scaled_linear"`` (default; β from 1e-4·1000/T to 0.02·1000/T), ``"cosine"``, or
            ``"linear"`` (β 1e-4..0.02, which at small T never reaches noise: warns).
        alpha_bar: float64 ``[T]``, ``alpha_bar[i]`` for integer timestep ``i``.
        log_alpha: float64 ``[T]``, ``0.5 * log(alpha_bar)``: the table that is interpolated.
        sigma_min / sigma_max: σ at t=0 and t=T-1 (Python floats): the σ range a sampler covers.
    """

    def __init__(self, steps: int = 100, kind: str = "scaled_linear") -> None:
        if int(steps) != steps or steps < 2:
            raise ValueError(f"NoiseSchedule steps must be an integer >= 2, got {steps!r}")
        self.steps = int(steps)
        self.kind = kind
        betas = _betas(self.steps, kind)
        self.alpha_bar = torch.cumprod(1.0 - betas, dim=0)  # [T] float64
        self.log_alpha = 0.5 * torch.log(self.alpha_bar)  # [T] float64, strictly decreasing
        self._device_tables: Dict[torch.device, Tensor] = {}  # log_alpha per device (no copy per call)
        self.sigma_min = float(self.sigma(torch.tensor(0.0, dtype=torch.float64)))
        self.sigma_max = float(self.sigma(torch.tensor(float(self.steps - 1), dtype=torch.float64)))

    @property
    def config(self) -> Dict[str, object]:
        """Plain-value description, enough to rebuild the schedule: ``NoiseSchedule(**config)``."""
        return {"steps": self.steps, "kind": self.kind}

    def __repr__(self) -> str:
        return f"NoiseSchedule(steps={self.steps}, kind={self.kind!r})"

    # ---- continuous time ---------------------------------------------------------------------
    def _check_timesteps(self, t: Tensor) -> None:
        low, high = t.min().item(), t.max().item()
        if low < -_RANGE_TOLERANCE or high > self.steps - 1 + _RANGE_TOLERANCE:
            raise ValueError(
                f"timesteps must lie in [0, {self.steps - 1}] (T={self.steps}), got values in "
                f"[{low:.6g}, {high:.6g}]"
            )

    def _table(self, device: torch.device) -> Tensor:
        """``log_alpha`` on ``device``, copied there once."""
        if device not in self._device_tables:
            self._device_tables[device] = self.log_alpha.to(device)
        return self._device_tables[device]

    def log_alpha_at(self, t: Tensor, check: bool = True) -> Tensor:
        """``0.5·log ᾱ(t)`` for fractional timesteps ``t`` (any shape), piecewise linear in t.

        Computed in float64 and returned in float64; differentiable with respect to ``t``.
        ``check=False`` skips the range check (reading the range back is a host-device
        synchronisation on CUDA): for timesteps in range by construction; outside values clamp.
        """
        t64 = torch.as_tensor(t).to(torch.float64)
        if check:
            self._check_timesteps(t64)
        t64 = t64.clamp(0.0, self.steps - 1)
        table = self._table(t64.device)
        left = t64.detach().floor().long().clamp(max=self.steps - 2)
        weight = t64 - left.to(torch.float64)
        return torch.lerp(table[left], table[left + 1], weight)

    def alpha_bar_at(self, t: Tensor, check: bool = True) -> Tensor:
        """ᾱ(t) for fractional timesteps (float64); ``check`` as in :meth:`log_alpha_at`."""
        return torch.exp(2.0 * self.log_alpha_at(t, check))

    def sigma(self, t: Tensor) -> Tensor:
        """σ(t) = sqrt((1 − ᾱ(t)) / ᾱ(t)) for fractional timesteps ``t`` in [0, T−1].

        Returns the dtype of ``t`` when it is floating point (float64 otherwise).
        """
        t = torch.as_tensor(t)
        log_alpha = self.log_alpha_at(t)
        sigma = torch.sqrt(torch.expm1(-2.0 * log_alpha))
        return sigma.to(t.dtype) if t.is_floating_point() else sigma

    def timestep(self, sigma: Tensor, check: bool = True) -> Tensor:
        """The fractional timestep t with σ(t) = ``sigma``: the inverse of :meth:`sigma`.

        ``sigma`` must lie in [sigma_min, sigma_max]. Differentiable with respect to ``sigma``
        (the AMED distillation back-propagates through it). Returns the dtype of ``sigma``.
        ``check=False`` skips the range check (a host-device synchronisation on CUDA): the
        samplers' σ lie on or between the points of a grid inside the range by construction.
        """
        sigma = torch.as_tensor(sigma)
        s64 = sigma.to(torch.float64)
        if check:
            low, high = s64.min().item(), s64.max().item()
            if low < self.sigma_min * (1 - _RANGE_TOLERANCE) or high > self.sigma_max * (1 + _RANGE_TOLERANCE):
                raise ValueError(
                    f"sigma must lie in [{self.sigma_min:.6g}, {self.sigma_max:.6g}] (σ range of "
                    f"{self!r}), got values in [{low:.6g}, {high:.6g}]"
                )
        # log α = -0.5·log(1 + σ²); the table is decreasing, so search the negated table
        log_alpha = -0.5 * torch.log1p(s64 * s64)
        table = self._table(s64.device)
        neg_table = -table
        right = torch.searchsorted(neg_table, (-log_alpha).detach().contiguous()).clamp(1, self.steps - 1)
        left = right - 1
        weight = (log_alpha - table[left]) / (table[right] - table[left])
        t = left.to(torch.float64) + weight.clamp(0.0, 1.0)
        return t.to(sigma.dtype) if sigma.is_floating_point() else t

    # ---- sampling grids ------------------------------------------------------------------------
    def sigma_grid(self, n: int, kind: str = "logsnr", rho: float = 7.0) -> Tensor:
        """``n`` decreasing σ values from ``sigma_max`` to ``sigma_min`` (float64 [n]).

        kinds: ``"logsnr"`` uniform in log σ (= uniform in log-SNR, DPM-Solver's choice for small
        data), ``"time_uniform"`` uniform in the discrete timestep (DDPM/DDIM's strided
        timesteps), ``"polynomial"`` EDM's ``(σ_max^{1/ρ} … σ_min^{1/ρ})^ρ``. ``n=1`` gives
        ``[sigma_max]``.
        """
        if int(n) != n or n < 1:
            raise ValueError(f"sigma grid needs n >= 1 points, got {n!r}")
        if n == 1:
            return torch.tensor([self.sigma_max], dtype=torch.float64)
        frac = torch.linspace(0.0, 1.0, int(n), dtype=torch.float64)
        if kind == "logsnr":
            grid = torch.exp(math.log(self.sigma_max) + frac * (math.log(self.sigma_min) - math.log(self.sigma_max)))
        elif kind == "time_uniform":
            grid = self.sigma((self.steps - 1) * (1.0 - frac))
        elif kind == "polynomial":
            high, low = self.sigma_max ** (1.0 / rho), self.sigma_min ** (1.0 / rho)
            grid = (high + frac * (low - high)) ** rho
        else:
            raise ValueError(f"unknown sigma grid kind {kind!r}; allowed: {', '.join(GRID_KINDS)}")
        grid[0], grid[-1] = self.sigma_max, self.sigma_min  # exact ends despite rounding
        return grid
