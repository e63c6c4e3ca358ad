"""Prompt generators: what produces a per-image prompt residual from π (``TRAINER.PD.GENERATOR``).

``base.PromptGenerator`` is the interface; ``diffusion.denoiser.PromptDenoiser`` (the method) and
the alternatives of the paper's Table 4 (``regressors``: mlp, transformer; ``gan``; ``vae``;
``flow``) implement it. ``prompt_diffusion.generator_registry.build_generator`` builds any of them
from its config; it lives above this package and ``diffusion/``, which imports the interface from
here (never the reverse). Pure torch.
"""
from .base import PromptGenerator, PromptLayout, standard_normal
from .flow import FlowGenerator
from .gan import Discriminator, GANGenerator
from .regressors import MLPRegressor, TransformerRegressor
from .vae import VAEGenerator

__all__ = ["Discriminator", "FlowGenerator", "GANGenerator", "MLPRegressor", "PromptGenerator", "PromptLayout",
           "TransformerRegressor", "VAEGenerator", "standard_normal"]
