"""Which registered trainers are prompt-diffusion variants, and of which host.

``DiffusionPromptWrapper.register(Host)`` registers ``HostPD``, a subclass of the wrapper and of
``Host`` (its last base). A PD variant loads its host's trained weights (its generator then starts
fresh: test-time tuning over the plain host, the ``weights:`` rows of a spec), and a host loads the
host-only part of its PD variant's run; ``same_weights`` says which trainer pairs share weights so.
"""
from typing import Optional


def _registered(name: str) -> Optional[type]:
    from prompt_diffusion.engine import TRAINER_REGISTRY

    return TRAINER_REGISTRY.get(name) if name in TRAINER_REGISTRY.registered_names() else None


def is_pd_trainer(name: str) -> bool:
    """Whether the registered trainer ``name`` is a prompt-diffusion trainer (reads ``TRAINER.PD``);
    a name not registered counts as one (nothing can be ruled out)."""
    from prompt_diffusion.wrapper import DiffusionPromptWrapper

    trainer = _registered(name)
    return trainer is None or issubclass(trainer, DiffusionPromptWrapper)


def pd_host(name: str) -> Optional[str]:
    """The registered name of the host the PD variant ``name`` wraps; None for any other trainer."""
    from prompt_diffusion.wrapper import DiffusionPromptWrapper

    trainer = _registered(name)
    if trainer is None or not issubclass(trainer, DiffusionPromptWrapper):
        return None
    host = trainer.__bases__[-1]
    return host.__name__ if _registered(host.__name__) is host else None


def same_weights(trained: str, loading: str) -> bool:
    """Whether trainer ``loading`` loads the weights trainer ``trained`` saved: the same trainer, a PD
    variant over its host's run, or a host over the host-only part of its PD variant's run."""
    return trained == loading or pd_host(loading) == trained or pd_host(trained) == loading
