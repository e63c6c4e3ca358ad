"""Reference Dassl-style trainers, installed as ``prompt_diffusion.trainers``.

Importing this package registers every trainer (and its prompt-diffusion ``<Name>PD`` variant)
in ``prompt_diffusion.engine.TRAINER_REGISTRY``.
"""
from prompt_diffusion.trainers import cocoop, coop, ivlp, vpt, zsclip  # noqa: F401  (registers CoOp, CoCoOp, IVLP, VPT, ZeroshotCLIP)
from prompt_diffusion.trainers import pd_variants  # noqa: F401,E402  (registers CoOpPD, CoCoOpPD, VPTPD, IVLPPD)
from prompt_diffusion.trainers import coprompt, maple, promptsrc  # noqa: F401,E402  (registers MaPLe, PromptSRC, CoPrompt and their PD variants)
