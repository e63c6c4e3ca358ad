"""The prompt-diffusion variants of the reference trainers: ``CoOpPD``, ``CoCoOpPD``, ``VPTPD``, ``IVLPPD``.

Each is ``DiffusionPromptWrapper.register(<Host>)``: a subclass of the host trainer, registered
under ``<Host>PD`` in the engine's ``TRAINER_REGISTRY``.
"""
from prompt_diffusion.wrapper import DiffusionPromptWrapper

from .cocoop import CoCoOp
from .coop import CoOp
from .ivlp import IVLP
from .vpt import VPT

CoOpPD = DiffusionPromptWrapper.register(CoOp)
CoCoOpPD = DiffusionPromptWrapper.register(CoCoOp)
VPTPD = DiffusionPromptWrapper.register(VPT)
IVLPPD = DiffusionPromptWrapper.register(IVLP)

__all__ = ["CoOpPD", "CoCoOpPD", "VPTPD", "IVLPPD"]
