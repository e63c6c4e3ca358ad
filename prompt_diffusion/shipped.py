"""The configs installed with the package, and how a ``configs/...`` path finds them.

The repository's ``configs/`` folder is installed as ``prompt_diffusion.configs``, so an installed
package (wheel, not editable) has every dataset, trainer, profile and experiment config without the
checkout. Commands and the README write paths as ``configs/<kind>/<file>.yaml``; run from a folder
that has no such file, the path names the shipped copy (:func:`resolve_config_path`).
"""
import os
from pathlib import Path
from typing import List, Optional, Tuple

import prompt_diffusion.configs

CONFIGS_DIR = Path(prompt_diffusion.configs.__file__).resolve().parent
CONFIGS_PREFIX = "configs"


def shipped_config(path: str) -> Optional[Path]:
    """The shipped file a relative ``[./]configs/<rest>`` path names, when it exists; else None."""
    parts = Path(path).parts  # pathlib drops "." parts: ./configs/x -> ("configs", "x")
    if Path(path).is_absolute() or len(parts) < 2 or parts[0] != CONFIGS_PREFIX:
        return None
    candidate = CONFIGS_DIR.joinpath(*parts[1:])
    return candidate if candidate.is_file() else None


def resolve_config_path(path: str) -> Tuple[str, bool]:
    """``(path, False)`` when ``path`` exists (relative to the working folder, or absolute); else
    ``(shipped file, True)`` for the shipped config it names (``configs/datasets/dtd.yaml`` ->
    ``<package>/configs/datasets/dtd.yaml``); else ``(path, False)``: the caller reports it missing."""
    expanded = os.path.expanduser(path)
    shipped = None if os.path.isfile(expanded) else shipped_config(expanded)
    return (expanded, False) if shipped is None else (str(shipped), True)


def shipped_note(paths: List[str]) -> str:
    """The one line a run says when configs came from the package: which, and from where."""
    return (f"Configs not found in {os.getcwd()}, used from the installed package ({CONFIGS_DIR}): "
            + ", ".join(paths))
