"""The prompt-diffusion variants of the reference trainers, all registered here: ``CoOpPD``,
``CoCoOpPD``, ``VPTPD``, ``IVLPPD``, ``MaPLePD``, ``PromptSRCPD``, ``CoPromptPD``, ``ProGradPD``.

Each is ``DiffusionPromptWrapper.register(<Host>, adapter=<its PromptAdapter>)``: a subclass of the
host trainer, registered under ``<Host>PD`` in the engine's ``TRAINER_REGISTRY``. The host modules
themselves never import the plug-in (``tests/test_layering.py``).
"""
from prompt_diffusion.adapters import (CoCoOpAdapter, CoOpAdapter, CoPromptAdapter, IVLPAdapter, MaPLeAdapter,
                                       ProGradAdapter, PromptSRCAdapter, VPTAdapter)
from prompt_diffusion.wrapper import DiffusionPromptWrapper

from .cocoop import CoCoOp
from .coop import CoOp
from .coprompt import CoPrompt
from .ivlp import IVLP
from .maple import MaPLe
from .prograd import ProGrad
from .promptsrc import PromptSRC
from .vpt import VPT

CoOpPD = DiffusionPromptWrapper.register(CoOp, adapter=CoOpAdapter)
CoCoOpPD = DiffusionPromptWrapper.register(CoCoOp, adapter=CoCoOpAdapter)
VPTPD = DiffusionPromptWrapper.register(VPT, adapter=VPTAdapter)
IVLPPD = DiffusionPromptWrapper.register(IVLP, adapter=IVLPAdapter)
MaPLePD = DiffusionPromptWrapper.register(MaPLe, adapter=MaPLeAdapter)
PromptSRCPD = DiffusionPromptWrapper.register(PromptSRC, adapter=PromptSRCAdapter)
CoPromptPD = DiffusionPromptWrapper.register(CoPrompt, adapter=CoPromptAdapter)
ProGradPD = DiffusionPromptWrapper.register(ProGrad, adapter=ProGradAdapter)

__all__ = ["CoOpPD", "CoCoOpPD", "VPTPD", "IVLPPD", "MaPLePD", "PromptSRCPD", "CoPromptPD", "ProGradPD"]
