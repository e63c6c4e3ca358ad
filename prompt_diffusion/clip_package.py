"""Which ``clip`` package the project builds CLIP models with: OpenAI's, even when a fork's shadows it.

Forks ship their own ``clip`` package (multimodal-prompt-learning's ``build_model`` needs
``design_details`` and builds other blocks); run from such a repository, ``import clip`` finds it
first and loading OpenAI weights with it fails. ``openai_clip_modules()`` then loads the installed
openai-clip under a private name (with a warning), or raises naming the shadowing package.
"""
import functools
import importlib.metadata
import importlib.util
import inspect
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Optional, Tuple

import clip.clip
import clip.model

OPENAI_CLIP_DISTRIBUTIONS = ("openai-clip", "clip")  # PyPI's name; the name of a git install
_PRIVATE_CLIP_NAME = "prompt_diffusion._openai_clip"


def _is_openai_clip(model_module: ModuleType) -> bool:
    """Whether ``model_module`` builds CLIP as OpenAI's ``clip.model`` does: ``build_model(state_dict)``."""
    build = getattr(model_module, "build_model", None)
    if build is None or not hasattr(model_module, "CLIP"):
        return False
    try:
        inspect.signature(build).bind({})
    except TypeError:  # e.g. multimodal-prompt-learning's build_model(state_dict, design_details)
        return False
    return True


def _installed_openai_clip_init() -> Optional[Path]:
    """``clip/__init__.py`` of the installed OpenAI CLIP distribution, or None."""
    for name in OPENAI_CLIP_DISTRIBUTIONS:
        try:
            init = Path(importlib.metadata.distribution(name).locate_file("clip/__init__.py"))
        except importlib.metadata.PackageNotFoundError:
            continue
        if init.is_file():
            return init
    return None


def _load_private_clip(init: Path) -> Tuple[ModuleType, ModuleType]:
    """Import the ``clip`` package at ``init`` under a private name; returns its (clip, model) modules."""
    if _PRIVATE_CLIP_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(_PRIVATE_CLIP_NAME, init,
                                                      submodule_search_locations=[str(init.parent)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[_PRIVATE_CLIP_NAME] = package
        spec.loader.exec_module(package)  # runs ``from .clip import *``: imports .clip and .model
    return sys.modules[_PRIVATE_CLIP_NAME + ".clip"], sys.modules[_PRIVATE_CLIP_NAME + ".model"]


@functools.lru_cache(maxsize=None)
def openai_clip_modules() -> Tuple[ModuleType, ModuleType]:
    """OpenAI CLIP's ``clip.clip`` and ``clip.model``: the importable ``clip`` if it is OpenAI's,
    else the installed openai-clip loaded under a private name (warning once, naming both: the
    answer is kept, so ``backbones`` and ``open_clip_backbone`` asking both get it without a second warning)."""
    if _is_openai_clip(clip.model):
        return clip.clip, clip.model
    shadowing = Path(clip.__file__).parent
    init = _installed_openai_clip_init()
    if init is None or init.parent.resolve() == shadowing.resolve():
        raise ImportError(
            f"the `clip` package imported from {shadowing} is not OpenAI's CLIP (its build_model takes "
            f"{inspect.signature(clip.model.build_model)}), and OpenAI's is not installed: "
            "`pip install openai-clip` (prompt-diffusion then loads it beside the fork's), or run "
            "from a directory whose `clip` package is OpenAI's"
        )
    openai_clip, openai_model = _load_private_clip(init)
    if not _is_openai_clip(openai_model):
        raise ImportError(f"{init.parent} (installed as openai-clip) does not build CLIP as OpenAI's clip.model does")
    warnings.warn(f"the `clip` package at {shadowing} (not OpenAI's) shadows openai-clip; prompt-diffusion "
                  f"loads CLIP models with openai-clip from {init.parent}", stacklevel=2)
    return openai_clip, openai_model
