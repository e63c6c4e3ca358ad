"""Reference Dassl-style trainers, installed as ``prompt_diffusion.trainers``.

Importing this package registers every trainer (and its prompt-diffusion ``<Name>PD`` variant)
in ``prompt_diffusion.engine.TRAINER_REGISTRY``.
"""
