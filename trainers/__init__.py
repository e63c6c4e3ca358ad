"""Reference Dassl-style trainers, installed as ``prompt_diffusion.trainers``.

Importing this package registers every trainer in ``prompt_diffusion.engine.TRAINER_REGISTRY``,
and (``pd_variants``, the one module here that imports the plug-in) its prompt-diffusion
``<Name>PD`` variant.
"""
from prompt_diffusion.trainers import (  # noqa: F401  (registers the hosts)
    clip_adapter, cocoop, coop, coprompt, ivlp, maple, prograd, promptsrc, template_coop, vpt, zsclip,
)
from prompt_diffusion.trainers import pd_variants  # noqa: F401,E402  (registers CoOpPD ... ProGradPD)
