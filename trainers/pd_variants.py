"""The prompt-diffusion variants of the reference trainers, all registered here: ``CoOpPD``,
``CoCoOpPD``, ``VPTPD``, ``IVLPPD``, ``MaPLePD``, ``PromptSRCPD``, ``CoPromptPD``, ``ProGradPD``.

Each is ``DiffusionPromptWrapper.register(<Host>)``: a subclass of the host trainer, registered
under ``<Host>PD`` in the engine's ``TRAINER_REGISTRY``. The host modules themselves never import
the plug-in (``tests/test_layering.py``).
"""
from prompt_diffusion.wrapper import DiffusionPromptWrapper

from .cocoop import CoCoOp
from .coop import CoOp
from .coprompt import CoPrompt
from .ivlp import IVLP
from .maple import MaPLe
from .prograd import ProGrad
from .promptsrc import PromptSRC
from .vpt import VPT

CoOpPD = DiffusionPromptWrapper.register(CoOp)
CoCoOpPD = DiffusionPromptWrapper.register(CoCoOp)
VPTPD = DiffusionPromptWrapper.register(VPT)
IVLPPD = DiffusionPromptWrapper.register(IVLP)
MaPLePD = DiffusionPromptWrapper.register(MaPLe)
PromptSRCPD = DiffusionPromptWrapper.register(PromptSRC)
CoPromptPD = DiffusionPromptWrapper.register(CoPrompt)
ProGradPD = DiffusionPromptWrapper.register(ProGrad)

__all__ = ["CoOpPD", "CoCoOpPD", "VPTPD", "IVLPPD", "MaPLePD", "PromptSRCPD", "CoPromptPD", "ProGradPD"]
