"""Prompt generators: what produces a per-image prompt residual from π (``TRAINER.PD.GENERATOR``).

``base.PromptGenerator`` is the interface; ``diffusion.denoiser.PromptDenoiser`` (the method) and
the alternatives of the paper's Table 4 (``regressors``: mlp, transformer; ``gan``; ``vae``;
``flow``) implement it. ``registry.build_generator`` builds any of them from its config (kept
apart from this package's import so ``diffusion/`` can import the interface). Pure torch.
"""
from .base import PromptGenerator, PromptLayout, standard_normal
from .flow import FlowGenerator
from .gan import Discriminator, GANGenerator
from .regressors import MLPRegressor, TransformerRegressor
from .vae import VAEGenerator

__all__ = ["Discriminator", "FlowGenerator", "GANGenerator", "MLPRegressor", "PromptGenerator", "PromptLayout",
           "TransformerRegressor", "VAEGenerator", "standard_normal"]
