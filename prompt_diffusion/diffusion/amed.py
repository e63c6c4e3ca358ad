"""AMED predictor and its distillation from a teacher solver (Zhou et al., 2024; paper Eq. 6).

The predictor is a small network that, for each sampling step, reads the denoiser's (detached)
hidden feature and the positions of the step's ends, and returns the intermediate point
``r ∈ (0, 1)`` (``s = σ_end^r σ^(1−r)``) and the direction scale ``c ∈ [1 − a, 1 + a]``. It is
trained, as upstream (zju-pi/diff-sampler, ``amed-solver-main``), step by step: a teacher solver
with ``M`` extra points inserted in every student interval gives the trajectory; from the
teacher's state at σ_n the student takes one AMED step and is pulled towards the teacher's state
at σ_{n+1} (the final state for the last step) with a squared error.

A fresh predictor outputs ``r = 0.5`` and ``c = 1`` exactly (zero-initialised last layers):
DPM-Solver-2's midpoint rule.
"""
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor, nn
from tqdm import tqdm

from prompt_diffusion.generators.networks import FrequencyEmbedding

from .samplers import (Denoise, SigmaDenoiser, amed, amed_layout, amed_step, ddim, dpm_solver_2, dpmpp_2m,
                       initial_state, sampler_sigmas)
from .schedule import GRID_KINDS, NoiseSchedule

# the teacher solvers of the distillation: the allowed TRAINER.PD.AMED.TEACHER values
TEACHERS = {"ddim": ddim, "dpm_solver_2": dpm_solver_2, "dpmpp_2m": dpmpp_2m}


class AMEDPredictor(nn.Module):
    """Predicts ``(r, c)`` per sample for one AMED step.

    Args:
        feature_dim: width of the denoiser feature it reads (``PromptDenoiser``: its ``width``).
        nfe: the evaluation budget it is distilled for (fixes the σ grid).
        grid: the σ grid kind (see ``NoiseSchedule.sigma_grid``).
        hidden_dim: width of its feature encoder; bottleneck_dim: encoded feature width.
        time_frequencies: NeRF frequencies of the step positions ``t / (T−1)``.
        scale_dir: ``a`` in ``c ∈ [1 − a, 1 + a]`` (upstream default 0.01).
    forward(feature [B, F], position [B], position_end [B]) -> (r [B], c [B]).
    """

    def __init__(
        self,
        feature_dim: int,
        nfe: int = 5,
        grid: str = "logsnr",
        hidden_dim: int = 128,
        bottleneck_dim: int = 4,
        time_frequencies: int = 4,
        scale_dir: float = 0.01,
    ) -> None:
        super().__init__()
        if int(nfe) != nfe or nfe < 1:
            raise ValueError(f"AMEDPredictor nfe must be an integer >= 1, got {nfe!r}")
        if grid not in GRID_KINDS:
            raise ValueError(f"unknown sigma grid kind {grid!r}; allowed: {', '.join(GRID_KINDS)}")
        self.config = {
            "feature_dim": int(feature_dim),
            "nfe": int(nfe),
            "grid": str(grid),
            "hidden_dim": int(hidden_dim),
            "bottleneck_dim": int(bottleneck_dim),
            "time_frequencies": int(time_frequencies),
            "scale_dir": float(scale_dir),
        }
        self.feature_dim, self.nfe, self.grid, self.scale_dir = int(feature_dim), int(nfe), str(grid), float(scale_dir)
        self.time_embedding = FrequencyEmbedding(time_frequencies)
        self.time_layer = nn.Linear(self.time_embedding.out_dim, self.time_embedding.out_dim)
        self.feature_encoder = nn.Sequential(
            nn.Linear(feature_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, bottleneck_dim)
        )
        joint = bottleneck_dim + 2 * self.time_embedding.out_dim
        self.head_r = nn.Linear(joint, 1)
        self.head_c = nn.Linear(joint, 1)
        for head in (self.head_r, self.head_c):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, feature: Tensor, position: Tensor, position_end: Tensor) -> Tuple[Tensor, Tensor]:
        feature = feature.to(self.head_r.weight.dtype)
        time = [torch.nn.functional.silu(self.time_layer(self.time_embedding(p.to(feature.dtype))))
                for p in (position, position_end)]
        joint = torch.cat([self.feature_encoder(feature)] + time, dim=1)
        r = torch.sigmoid(self.head_r(joint)).squeeze(1)
        c = 1.0 + self.scale_dir * (2.0 * torch.sigmoid(self.head_c(joint)).squeeze(1) - 1.0)
        return r, c


def teacher_sigmas(student_sigmas: Tensor, inserted: int) -> Tensor:
    """The student grid with ``inserted`` log-uniform points added inside every interval."""
    fractions = torch.linspace(0.0, 1.0, inserted + 2, dtype=student_sigmas.dtype)[:-1]
    logs = torch.log(student_sigmas)
    pieces = [torch.exp(logs[i] + fractions * (logs[i + 1] - logs[i])) for i in range(len(student_sigmas) - 1)]
    return torch.cat(pieces + [student_sigmas[-1:]])


@torch.no_grad()
def teacher_trajectory(
    model: SigmaDenoiser, x: Tensor, student_sigmas: Tensor, teacher: str, inserted: int
) -> List[Tensor]:
    """Teacher states at the student grid points ``σ_1 … σ_{K−1}`` and its final x0 (length K)."""
    sigmas = torch.cat([teacher_sigmas(student_sigmas, inserted), student_sigmas.new_zeros(1)])
    states: List[Tensor] = []
    stride = inserted + 1

    def keep(i: int, state: Tensor) -> None:
        if (i + 1) % stride == 0 and (i + 1) // stride < len(student_sigmas) - 1:
            states.append(state)

    final = TEACHERS[teacher](model, x, sigmas, callback=keep)
    return states + [final]


def _student_start(predictor: AMEDPredictor, x_T: Tensor, schedule: NoiseSchedule) -> Tuple[Tensor, Tensor]:
    """The σ-space start state of ``x_T`` and the student's σ grid (``predictor.nfe``, ``.grid``)."""
    x = initial_state(x_T, schedule)
    return x, sampler_sigmas(schedule, "amed", predictor.nfe, predictor.grid).to(device=x.device, dtype=x.dtype)


class StudentCheck:
    """The AMED student's error against its teacher on fixed conditions and noise ``x_T [B, N]``:
    the mean over samples of ``‖x0_student − x0_teacher‖²``, the quantity distillation is meant to
    lower (measure it on conditions the predictor is not distilled on). The teacher's samples are
    computed once, for the student grid of the first predictor checked."""

    def __init__(self, denoise: Denoise, x_T: Tensor, schedule: NoiseSchedule, teacher: str = "dpmpp_2m",
                 inserted: int = 4) -> None:
        self.model, self.x_T, self.schedule = SigmaDenoiser(denoise, schedule), x_T, schedule
        self.teacher, self.inserted = teacher, inserted
        self._target: Optional[Tuple[Tuple[int, str], Tensor]] = None  # ((nfe, grid), teacher's x0)
        self.errors: List[float] = []  # every measurement in order (distill_amed's first: the fresh predictor)

    @torch.no_grad()
    def __call__(self, predictor: AMEDPredictor) -> float:
        x, sigmas = _student_start(predictor, self.x_T, self.schedule)
        grid = (predictor.nfe, predictor.grid)
        if self._target is None or self._target[0] != grid:
            self._target = (grid, teacher_trajectory(self.model, x, sigmas, self.teacher, self.inserted)[-1])
        _, afs = amed_layout(predictor.nfe)
        self.errors.append(float((amed(self.model, x, sigmas, predictor, afs) - self._target[1]).pow(2).sum(dim=1).mean()))
        return self.errors[-1]


def distill_amed(
    predictor: AMEDPredictor,
    batches: Iterable[Tuple[Denoise, Tensor]],
    schedule: NoiseSchedule,
    teacher: str = "dpmpp_2m",
    inserted: int = 4,
    lr: float = 5e-3,
    progress: bool = True,
    check: Optional[StudentCheck] = None,
    check_every: int = 5,
    log_every: int = 0,
) -> List[float]:
    """Distil ``predictor`` from a teacher solver, upstream's step-by-step way.

    Args:
        predictor: the predictor to train (its ``nfe`` and ``grid`` fix the student grid).
        batches: ``(denoise, x_T)`` pairs: a denoiser closure for one batch of conditions (e.g.
            ``PromptDenoiser.denoise_fn(cond)``) and its noise ``x_T [B, N]``; one pass over them.
        teacher: ``"dpmpp_2m"``, ``"dpm_solver_2"`` or ``"ddim"``, run on the student grid with
            ``inserted`` extra points per interval.
        lr: Adam learning rate (upstream: 5e-3).
        check: held-out conditions (:class:`StudentCheck`, same teacher): measured before the first
            batch, every ``check_every`` batches and after the last; the predictor ends with the
            weights that measured lowest (the fresh one, DPM-Solver-2's rule, included). Per-step
            Adam updates at upstream's learning rate can leave the student farther from the teacher
            than where it started (measured on the toy world at NFE 8 and 10), so the last weights are
            not trusted blindly.
        log_every: print a line every ``log_every`` batches (0: none), so logs, where progress bars
            do not draw, show that a long distillation moves.
    Returns:
        The mean (over the K steps) squared error per batch, for logging.
    Only the predictor's parameters receive gradients (the denoiser's ``.grad`` stay untouched).
    """
    if teacher not in TEACHERS:
        raise ValueError(f"unknown AMED teacher {teacher!r}; allowed: {', '.join(TEACHERS)}")
    steps, afs = amed_layout(predictor.nfe)
    parameters = [p for p in predictor.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=lr)
    history: List[float] = []
    best = None if check is None else _keep_best(predictor, check, (float("inf"), {}))  # the fresh weights
    for denoise, x_T in tqdm(batches, desc="distil AMED", disable=None if progress else True):
        model = SigmaDenoiser(denoise, schedule)
        x, sigmas = _student_start(predictor, x_T, schedule)
        targets = teacher_trajectory(model, x, sigmas, teacher, inserted)
        losses = []
        for i in range(steps):
            out, _, _ = amed_step(
                model, x, sigmas[i], sigmas[i + 1], predictor, land_on_zero=i == steps - 1, afs=afs and i == 0
            )
            loss = (out - targets[i]).pow(2).sum(dim=1).mean()
            grads = torch.autograd.grad(loss, parameters, allow_unused=True)
            for parameter, grad in zip(parameters, grads):
                parameter.grad = grad
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            x = targets[i]  # upstream: the next step starts from the teacher's state
        history.append(sum(losses) / len(losses))
        if log_every and len(history) % log_every == 0:
            print(f"distil AMED (NFE={predictor.nfe}): batch {len(history)}, loss {history[-1]:.4g}")
        if best is not None and len(history) % check_every == 0:
            best = _keep_best(predictor, check, best)
    if best is not None:
        best = _keep_best(predictor, check, best)
        predictor.load_state_dict(best[1])
    return history


def _keep_best(predictor: AMEDPredictor, check: StudentCheck,
               best: Tuple[float, Dict[str, Tensor]]) -> Tuple[float, Dict[str, Tensor]]:
    """``(error, weights)`` of the lower of ``best`` and the predictor's current held-out error."""
    error = check(predictor)
    if error < best[0]:
        return error, {k: v.detach().clone() for k, v in predictor.state_dict().items()}
    return best
