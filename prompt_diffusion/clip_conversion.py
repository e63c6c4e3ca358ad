"""What copying another library's CLIP into OpenAI's ``clip.model.CLIP`` layout needs, whatever the source.

The OpenCLIP (``open_clip_backbone``) and Hugging Face (``hf_backbone``) backbones both read a
weights file without unpickling anything, load tensors into a model with one clear error when they
do not fit, and set on the openai modules what ``clip.model.CLIP``'s constructor cannot express:
the attention's head count (it makes ``width // 64`` vision heads) and torch's GELU where the
source has it (OpenAI's blocks use QuickGELU).
"""
from pathlib import Path
from typing import Iterable, Union

import torch
from torch import nn

SAFETENSORS_SUFFIX = ".safetensors"


def read_weights_file(path: Union[str, Path], what: str) -> object:
    """The content of a ``.safetensors`` file (a state dict) or of a torch file (``weights_only``: never
    unpickled). A truncated, corrupt or foreign file is one ValueError: ``MODEL.BACKBONE.PATH <path>:
    not <what> (<error type>)``."""
    path = Path(path).expanduser()
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import load_file  # outside the try: a missing package is not a corrupt file
    try:
        if path.suffix == SAFETENSORS_SUFFIX:
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, not a torch file, pickled objects: one line, never unpickled
        raise ValueError(f"MODEL.BACKBONE.PATH {path}: not {what} ({type(error).__name__})") from None


def load_weights_or_refuse(model: nn.Module, state: dict, refusal: str) -> None:
    """``model.load_state_dict(state)``; names or shapes that differ are one ValueError ``<refusal> (...)``
    with the first difference (torch lists them all)."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shapes that differ
        detail = str(error).split("\n\t")[1] if "\n\t" in str(error) else str(error)
        raise ValueError(f"{refusal} ({detail})") from None
    if missing or unexpected:
        raise ValueError(f"{refusal} (missing {missing[:3]}, unexpected {unexpected[:3]})")


def set_attention_heads(attention: nn.Module, heads: int) -> None:
    """Make an ``nn.MultiheadAttention`` (or openai's ``AttentionPool2d``) split its width into ``heads``."""
    attention.num_heads = heads
    if hasattr(attention, "head_dim"):
        attention.head_dim = attention.embed_dim // heads


def use_gelu(blocks: Iterable[nn.Module], approximate: str = "none") -> None:
    """Replace the QuickGELU of openai ``ResidualAttentionBlock`` s by torch's GELU (``approximate``)."""
    for block in blocks:
        block.mlp.gelu = nn.GELU(approximate=approximate)
