"""Prompt adapters: how prompt diffusion reaches the prompts and forward of each prompt learner.

``base`` holds the interface (``PromptAdapter``, ``PromptGroup``) and the lookup from a host trainer
class (or a model's layout) to its adapter. Importing this package registers the adapters below.
"""
from prompt_diffusion.adapters.base import (
    ParsedBatch,
    PromptAdapter,
    PromptGroup,
    PromptLayoutError,
    adapter_by_name,
    choose_adapter,
    class_tokens,
    detect_adapter,
    find_attribute,
    has_attribute,
    images_and_labels,
    loss_of,
    register_adapter,
    registered_adapters,
    text_chunk,
)
from prompt_diffusion.adapters.cocoop import CoCoOpAdapter
from prompt_diffusion.adapters.coop import CoOpAdapter
from prompt_diffusion.adapters.coprompt import CoPromptAdapter
from prompt_diffusion.adapters.ivlp import IVLPAdapter
from prompt_diffusion.adapters.maple import MaPLeAdapter
from prompt_diffusion.adapters.prograd import ProGradAdapter
from prompt_diffusion.adapters.promptsrc import PromptSRCAdapter
from prompt_diffusion.adapters.vpt import VPTAdapter

__all__ = [
    "CoCoOpAdapter",
    "CoOpAdapter",
    "CoPromptAdapter",
    "IVLPAdapter",
    "MaPLeAdapter",
    "ProGradAdapter",
    "PromptSRCAdapter",
    "VPTAdapter",
    "ParsedBatch",
    "PromptAdapter",
    "PromptGroup",
    "PromptLayoutError",
    "adapter_by_name",
    "choose_adapter",
    "class_tokens",
    "detect_adapter",
    "find_attribute",
    "has_attribute",
    "images_and_labels",
    "loss_of",
    "register_adapter",
    "registered_adapters",
    "text_chunk",
]
