"""Every prompt generator by name, and building one from its config (pure torch).

It sits above ``generators/`` and ``diffusion/`` (the diffusion model is one of the generators), so
that neither package imports the other's way back: ``diffusion/`` implements ``generators.base``.

``GENERATORS`` maps ``TRAINER.PD.GENERATOR`` values to classes. ``generator_config`` turns the
shared size settings (one set of keys for all generators, so Table 4's rows have comparable
sizes) into the config of one kind; ``build_generator(config)`` builds it, the one path for the
wrapper and for anyone rebuilding a saved generator (``generator.config`` is in its state dict).
"""
import inspect
from typing import Dict, Sequence, Type

from prompt_diffusion.diffusion.denoiser import PromptDenoiser

from prompt_diffusion.generators import (FlowGenerator, GANGenerator, MLPRegressor, PromptGenerator,
                                         TransformerRegressor, VAEGenerator)

GENERATORS: Dict[str, Type[PromptGenerator]] = {
    cls.kind: cls for cls in (PromptDenoiser, MLPRegressor, TransformerRegressor, GANGenerator, VAEGenerator,
                              FlowGenerator)
}


def generator_config(kind: str, groups: Sequence[Sequence], cond_dim: int, layers: int, heads: int, width: int,
                     **settings) -> dict:
    """The config of generator ``kind`` from the shared sizes: ``layers`` transformer blocks
    (the flow: ``2·layers`` couplings; the MLP: ``layers`` hidden layers of ``4·width``), ``heads``,
    ``width``; ``settings`` holds kind-specific values (``timesteps``, ``schedule``,
    ``kl_weight``), each passed only to the kinds whose constructor takes it."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown prompt generator {kind!r}; choose one of {list(GENERATORS)}")
    values = {"groups": [list(g) for g in groups], "cond_dim": int(cond_dim), "layers": layers, "heads": heads,
              "width": width, "couplings": 2 * layers, **settings}
    accepted = inspect.signature(GENERATORS[kind].__init__).parameters
    return {"kind": kind, **{key: value for key, value in values.items() if key in accepted}}


def build_generator(config: dict) -> PromptGenerator:
    """``GENERATORS[config["kind"]](**rest)``: the generator a config (``generator.config``) describes."""
    kind = config.get("kind")
    if kind not in GENERATORS:
        raise ValueError(f"unknown prompt generator {kind!r}; choose one of {list(GENERATORS)}")
    return GENERATORS[kind](**{key: value for key, value in config.items() if key != "kind"})
