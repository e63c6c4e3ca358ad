"""The diffusion core: schedule, denoiser, samplers, AMED, per-sample overfitting (pure torch).

Spaces: raw prompts (what the prompt learner uses) -> ``PromptGenerator.normalize`` -> normalized
prompts (where the denoiser, the loss and the samplers work) -> ``PromptLayout.flatten`` -> the
flat ``[B, N]`` tensors the samplers integrate (``prompt_diffusion.generators.base``). The
denoiser is the ``diffusion`` implementation of the generator interface. See ``denoiser.py`` and
``samplers.py``.
"""
from .amed import AMEDPredictor, StudentCheck, distill_amed
from .denoiser import PromptDenoiser
from .overfit import STEP_RULES, overfit_prompts
from .samplers import SAMPLERS, SigmaDenoiser, sample, sampler_sigmas
from .schedule import GRID_KINDS, SCHEDULE_KINDS, NoiseSchedule

__all__ = [
    "AMEDPredictor",
    "GRID_KINDS",
    "NoiseSchedule",
    "PromptDenoiser",
    "SAMPLERS",
    "SCHEDULE_KINDS",
    "STEP_RULES",
    "SigmaDenoiser",
    "StudentCheck",
    "distill_amed",
    "overfit_prompts",
    "sample",
    "sampler_sigmas",
]
