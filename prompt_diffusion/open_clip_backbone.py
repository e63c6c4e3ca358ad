"""OpenCLIP backbones (``MODEL.BACKBONE.NAME open_clip:<arch>``), converted to the openai-CLIP layout.

OpenCLIP's ``CLIP`` with its own text transformer and a ViT or ModifiedResNet image tower (ViT-B-32,
ViT-B-16, ViT-L-14, RN50 ... and their LAION / DataComp checkpoints) has the parameters of OpenAI's
``clip.model.CLIP`` under the same names; what differs is the MLP activation (GELU where OpenAI
uses QuickGELU, except the ``-quickgelu`` architectures) and, for some widths, the number of
attention heads. :func:`load_open_clip` builds the architecture with open_clip_torch (the optional
extra ``prompt-diffusion[open_clip]``), loads the weights from ``MODEL.BACKBONE.PATH`` (a local
file: never a download), and copies them into a ``clip.model.CLIP`` with those two set as OpenCLIP
has them, so every trainer, adapter and the prompted forward (``clip_prompting``) run on it
unchanged; with empty prompts its logits are open_clip's own (tests/test_open_clip.py).

What does not convert is refused with the reason (one line): SigLIP (sigmoid logits with a bias,
last-token text pooling), CoCa and Hugging Face text towers (``CustomTextCLIP``), timm image towers
(ConvNeXt, ...), attentional pooling, layer scale and the custom attention blocks. Images must be
normalised as the checkpoint was trained (``INPUT.PIXEL_MEAN`` / ``PIXEL_STD``: OpenAI's for most).
"""
import logging
import os
from pathlib import Path
from typing import List, Union

from torch import nn

from prompt_diffusion.clip_conversion import load_weights_or_refuse, read_weights_file, set_attention_heads, use_gelu
from prompt_diffusion.clip_package import openai_clip_modules

OPEN_CLIP_PREFIX = "open_clip:"
INSTALL_HINT = "pip install 'prompt-diffusion[open_clip]' (or pip install open_clip_torch)"


def is_open_clip_name(name: str) -> bool:
    return name.startswith(OPEN_CLIP_PREFIX)


def open_clip_package():
    """The installed ``open_clip`` module; without it an ImportError saying how to install it."""
    try:
        import open_clip
    except ImportError as error:
        raise ImportError(f"OpenCLIP backbones need open_clip_torch, which is not installed: {INSTALL_HINT}") from error
    return open_clip


def architecture_name(name: str) -> str:
    """``open_clip:ViT-B-32`` -> ``ViT-B-32``; an architecture open_clip does not know is an error listing some."""
    arch = name[len(OPEN_CLIP_PREFIX):]
    open_clip = open_clip_package()
    if arch not in open_clip.list_models():
        known = [m for m in open_clip.list_models() if m.startswith(("ViT-B", "ViT-L", "RN"))][:12]
        raise ValueError(f"MODEL.BACKBONE.NAME {name}: {arch!r} is not an OpenCLIP architecture (e.g. "
                         f"{', '.join(known)}; open_clip.list_models() lists all)")
    return arch


def create_open_clip(arch: str) -> nn.Module:
    """OpenCLIP's model of architecture ``arch``, randomly initialised (fp32, CPU, eval mode). open_clip
    warns on the root logger that no pretrained weights were loaded: they are loaded next, so the
    warning is held back while the model is built."""
    package = open_clip_package()
    logging.disable(logging.WARNING)
    try:
        return package.create_model(arch, pretrained=None).float().eval()
    finally:
        logging.disable(logging.NOTSET)


def read_open_clip_weights(path: Union[str, Path]) -> dict:
    """A state dict from an OpenCLIP checkpoint file: ``.safetensors``, a plain state dict, or a training
    checkpoint (``{"state_dict": ...}``, keys maybe prefixed ``module.``); loaded ``weights_only``."""
    path = Path(path).expanduser()
    state = read_weights_file(path, "an OpenCLIP checkpoint")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "text_projection" not in {k.removeprefix("module.") for k in state}:
        raise ValueError(f"MODEL.BACKBONE.PATH {path}: not an OpenCLIP checkpoint (no 'text_projection' weight)")
    return {key.removeprefix("module."): value for key, value in state.items()}


def unconvertible(model: nn.Module) -> List[str]:
    """Why an OpenCLIP model cannot become an openai-layout CLIP (empty: it can)."""
    if type(model).__name__ != "CLIP":
        return [f"a {type(model).__name__} model (Hugging Face / CoCa text tower); only CLIP with its own text transformer"]
    problems = []
    if getattr(model, "logit_bias", None) is not None:
        problems.append("sigmoid logits with a bias (SigLIP)")
    if model.text_pool_type != "argmax":
        problems.append(f"text pooling {model.text_pool_type!r} (only the EOT token, 'argmax')")
    if not isinstance(model.text_projection, nn.Parameter):
        problems.append("a linear text projection layer")
    visual = model.visual
    kind = type(visual).__name__
    if kind == "VisionTransformer":
        if visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool:
            problems.append("image pooling other than the class token")
        if isinstance(visual.ln_pre, nn.Identity) or visual.proj is None:
            problems.append("a ViT without ln_pre or projection")
        blocks = list(visual.transformer.resblocks) + list(model.transformer.resblocks)
    elif kind == "ModifiedResNet":
        blocks = list(model.transformer.resblocks)
    else:
        return problems + [f"a {kind} image tower (timm); only ViT and ModifiedResNet"]
    if any(type(b).__name__ != "ResidualAttentionBlock" for b in blocks):
        problems.append("custom attention blocks (scaled cosine / qk norm)")
    elif any(not isinstance(b.ls_1, nn.Identity) or not isinstance(b.ls_2, nn.Identity) for b in blocks):
        problems.append("layer scale")
    elif any(b.mlp.c_fc.out_features != 4 * b.mlp.c_fc.in_features for b in blocks):
        problems.append("an MLP ratio other than 4")
    return problems


def openai_architecture(model: nn.Module) -> dict:
    """The ``clip.model.CLIP`` constructor arguments with the dimensions of an OpenCLIP CLIP."""
    visual = model.visual
    if type(visual).__name__ == "ModifiedResNet":
        vision = dict(vision_layers=tuple(len(getattr(visual, f"layer{i}")) for i in range(1, 5)),
                      vision_width=visual.conv1.out_channels * 2, vision_patch_size=None,
                      image_resolution=int(visual.image_size))
    else:
        size = visual.image_size
        vision = dict(vision_layers=len(visual.transformer.resblocks), vision_width=visual.conv1.out_channels,
                      vision_patch_size=visual.conv1.kernel_size[0],
                      image_resolution=int(size[0] if isinstance(size, (tuple, list)) else size))
    return dict(embed_dim=model.text_projection.shape[1], **vision, context_length=model.context_length,
                vocab_size=model.vocab_size, transformer_width=model.transformer.width,
                transformer_heads=model.transformer.resblocks[0].attn.num_heads,
                transformer_layers=len(model.transformer.resblocks))


def to_openai_clip(model: nn.Module, name: str):
    """An openai ``clip.model.CLIP`` holding the weights of OpenCLIP's ``model`` (fp32, eval), with
    OpenCLIP's activation and head counts; a model that does not convert is an error saying why."""
    problems = unconvertible(model)
    if problems:
        raise ValueError(f"MODEL.BACKBONE.NAME {name}: cannot be used here: {'; '.join(problems)}")
    converted = openai_clip_modules()[1].CLIP(**openai_architecture(model)).float()
    converted.load_state_dict({k: v for k, v in model.state_dict().items() if k != "attn_mask"})
    if type(model.visual).__name__ == "VisionTransformer":
        towers = [(converted.visual.transformer.resblocks, model.visual.transformer.resblocks)]
    else:
        set_attention_heads(converted.visual.attnpool, model.visual.attnpool.num_heads)
        towers = []
    towers.append((converted.transformer.resblocks, model.transformer.resblocks))
    for ours, theirs in towers:
        for block, source in zip(ours, theirs):
            set_attention_heads(block.attn, source.attn.num_heads)
            if isinstance(source.mlp.gelu, nn.GELU):  # OpenCLIP's default; OpenAI's CLIP has QuickGELU
                use_gelu([block], source.mlp.gelu.approximate)
    return converted.eval()


def load_open_clip(name: str, path: str):
    """``MODEL.BACKBONE.NAME open_clip:<arch>`` with the weights at ``path`` as an openai-layout CLIP."""
    check_open_clip_weights(name, path)
    model = create_open_clip(architecture_name(name))
    refusal = f"MODEL.BACKBONE.PATH {path}: not the weights of {name}"
    load_weights_or_refuse(model, read_open_clip_weights(path), refusal)
    return to_openai_clip(model, name)


def check_open_clip_weights(name: str, path: str) -> None:
    """Before anything slow: the extra installed, the architecture known, the weights file there."""
    architecture_name(name)
    if not path:
        raise FileNotFoundError(f"MODEL.BACKBONE.NAME {name}: set MODEL.BACKBONE.PATH to the checkpoint file "
                                "(prompt-diffusion never downloads)")
    if not os.path.isfile(os.path.expanduser(path)):
        raise FileNotFoundError(f"MODEL.BACKBONE.PATH {path}: no such file (the weights of MODEL.BACKBONE.NAME "
                                f"{name}; prompt-diffusion never downloads: give a local checkpoint file)")
