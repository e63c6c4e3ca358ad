"""Config keys the project adds to Dassl's defaults.

``extend_cfg(cfg)`` adds every key the project's trainers, datasets and the prompt-diffusion
wrapper read. Each family of keys has its own ``_add_*`` function below; ``extend_cfg`` calls them
all. Adding a key that already exists is a no-op, so a user's own ``extend_cfg`` can run first.
"""
from yacs.config import CfgNode as CN


def _set_default(node: CN, key: str, value) -> None:
    """Set ``node.key = value`` unless the key exists (keeps a user's own extension)."""
    if key not in node:
        node[key] = value


EXTENDERS = []


def extend_cfg(cfg: CN) -> CN:
    """Add every project key (trainers, datasets, ``TRAINER.PD``) to ``cfg`` in place; returns it."""
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    for add_keys in EXTENDERS:
        add_keys(cfg)
    if was_frozen:
        cfg.freeze()
    return cfg
