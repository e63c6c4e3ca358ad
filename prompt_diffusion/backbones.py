"""CLIP backbones: load OpenAI CLIP from a local file or cache; build tiny CLIPs for tests.

The library never downloads weights. ``MODEL.BACKBONE.NAME`` (``RN50``, ``ViT-B/16`` ...) resolves
to ``MODEL.BACKBONE.PATH`` if set, else to ``~/.cache/clip/<file>`` (the file names the ``clip``
package uses). Official TorchScript archives, plain state dicts and the files ``save_clip`` writes
all load. The name ``toy`` loads the small CLIP the project ships (``prompt_diffusion.toy_clip``);
``open_clip:<arch>`` an OpenCLIP checkpoint at ``MODEL.BACKBONE.PATH`` (``prompt_diffusion.open_clip_backbone``);
``hf`` the Hugging Face ``transformers`` CLIPModel folder at ``MODEL.BACKBONE.PATH`` (``prompt_diffusion.hf_backbone``).

Precision follows the CoOp family (``TRAINER.<NAME>.PREC``): ``fp16`` keeps CLIP's half-precision
weights, ``fp32`` and ``amp`` run a float32 model (``amp`` under float16 autocast with a gradient
scaler). All three run on the CPU as on a GPU (half precision is slower there: ``precision_note``).
"""
import os
import warnings
import zipfile
from pathlib import Path
from typing import Dict, Union

import torch

from prompt_diffusion.clip_package import openai_clip_modules
from prompt_diffusion.hf_backbone import check_hf_folder, is_hf_name, load_hf_clip
from prompt_diffusion.open_clip_backbone import check_open_clip_weights, is_open_clip_name, load_open_clip

_clip_clip, _clip_model = openai_clip_modules()
_MODELS = _clip_clip._MODELS
CLIP, ModifiedResNet = _clip_model.CLIP, _clip_model.ModifiedResNet
build_model, convert_weights = _clip_model.build_model, _clip_model.convert_weights

PRECISIONS = ("fp16", "fp32", "amp")
CACHE_DIR = Path("~/.cache/clip")
TOY_NAME = "toy"

# constructor arguments of ``clip.model.CLIP`` for the released architectures (random-weight copies)
CLIP_ARCHITECTURES: Dict[str, dict] = {
    "RN50": dict(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64,
                 vision_patch_size=None, transformer_width=512, transformer_heads=8, transformer_layers=12),
    "RN101": dict(embed_dim=512, image_resolution=224, vision_layers=(3, 4, 23, 3), vision_width=64,
                  vision_patch_size=None, transformer_width=512, transformer_heads=8, transformer_layers=12),
    "ViT-B/32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                     vision_patch_size=32, transformer_width=512, transformer_heads=8, transformer_layers=12),
    "ViT-B/16": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                     vision_patch_size=16, transformer_width=512, transformer_heads=8, transformer_layers=12),
    "ViT-L/14": dict(embed_dim=768, image_resolution=224, vision_layers=24, vision_width=1024,
                     vision_patch_size=14, transformer_width=768, transformer_heads=12, transformer_layers=12),
}


def _random_clip(architecture: dict, seed: int) -> CLIP:
    """``CLIP(**architecture)`` initialised from ``seed`` (global RNG left untouched), fp32, eval mode."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = CLIP(**architecture)
    torch.random.set_rng_state(generator_state)
    return model.float().eval()


def build_tiny_clip(
    embed_dim: int = 64,
    image_resolution: int = 32,
    vision_layers: int = 2,
    vision_width: int = 64,
    vision_patch_size: int = 8,
    context_length: int = 77,
    transformer_width: int = 64,
    transformer_heads: int = 2,
    transformer_layers: int = 2,
    seed: int = 0,
) -> CLIP:
    """A randomly initialised ViT ``clip.model.CLIP`` of small dimensions (fp32, eval mode).

    It keeps the real vocabulary (49408 tokens) so ``clip.tokenize`` works unchanged.
    ``vision_width // 64`` gives the number of vision heads, as in ``clip.model``.
    """
    return _random_clip(dict(
        embed_dim=embed_dim,
        image_resolution=image_resolution,
        vision_layers=vision_layers,
        vision_width=vision_width,
        vision_patch_size=vision_patch_size,
        context_length=context_length,
        vocab_size=49408,
        transformer_width=transformer_width,
        transformer_heads=transformer_heads,
        transformer_layers=transformer_layers,
    ), seed)


def build_random_clip(name: str, seed: int = 0) -> CLIP:
    """A randomly initialised CLIP with the architecture of the released model ``name`` (fp32, eval)."""
    if name not in CLIP_ARCHITECTURES:
        raise KeyError(f"no architecture for backbone {name!r}; known: {sorted(CLIP_ARCHITECTURES)}")
    return _random_clip(dict(CLIP_ARCHITECTURES[name], context_length=77, vocab_size=49408), seed)


def clip_architecture(model: CLIP) -> dict:
    """The ``clip.model.CLIP`` constructor arguments that rebuild ``model`` (heads included)."""
    visual = model.visual
    if isinstance(visual, ModifiedResNet):
        vision = dict(vision_layers=tuple(len(getattr(visual, f"layer{i}")) for i in range(1, 5)),
                      vision_width=visual.conv1.weight.shape[0] * 2, vision_patch_size=None)
    else:
        vision = dict(vision_layers=len(visual.transformer.resblocks), vision_width=visual.conv1.weight.shape[0],
                      vision_patch_size=visual.conv1.weight.shape[-1])
    return dict(
        embed_dim=model.text_projection.shape[1],
        image_resolution=visual.input_resolution,
        **vision,
        context_length=model.context_length,
        vocab_size=model.token_embedding.weight.shape[0],
        transformer_width=model.transformer.width,
        transformer_heads=model.transformer.resblocks[0].attn.num_heads,
        transformer_layers=model.transformer.layers,
    )


def save_clip(model: CLIP, path: Union[str, Path]) -> None:
    """Write ``{"architecture": ..., "state_dict": ...}``: loads with ``torch.load(weights_only=True)``.

    Unlike a plain state dict, the file keeps the head counts, so any width (tiny test models) rebuilds.
    The write is atomic (temporary file, then rename).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    architecture = clip_architecture(model)
    architecture["vision_layers"] = (list(architecture["vision_layers"])
                                     if isinstance(architecture["vision_layers"], tuple) else architecture["vision_layers"])
    torch.save({"architecture": architecture, "state_dict": model.state_dict()}, tmp)
    os.replace(tmp, path)


def _build_from_state_dict(state_dict: dict, architecture: Union[dict, None] = None) -> CLIP:
    """Build a CLIP whose weights keep the dtype they have in ``state_dict`` (eval mode)."""
    state_dict = {k: v for k, v in state_dict.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    if architecture is None:
        model = build_model(dict(state_dict))  # infers the architecture; heads = width // 64 as clip does
    else:
        architecture = dict(architecture)
        if isinstance(architecture["vision_layers"], list):
            architecture["vision_layers"] = tuple(architecture["vision_layers"])
        model = CLIP(**architecture)
    if state_dict["text_projection"].dtype == torch.float16:
        convert_weights(model)
    else:
        model.float()
    model.load_state_dict(state_dict)
    return model.eval()


def load_clip_file(path: Union[str, Path]) -> CLIP:
    """Load a CLIP from a TorchScript archive, a plain state dict or a ``save_clip`` file (CPU, eval)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch >= 2.9 flags torch.jit as deprecated; the archives still load
            warnings.simplefilter("ignore", FutureWarning)
            state_dict = torch.jit.load(str(path), map_location="cpu").state_dict()
        architecture = None
    except RuntimeError:  # not a TorchScript archive
        content = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(content, dict):
            raise ValueError(f"{path}: expected a CLIP state dict, got {type(content).__name__}")
        architecture = content.get("architecture")
        state_dict = content["state_dict"] if architecture is not None else content
    if "text_projection" not in state_dict:
        raise ValueError(f"{path}: not a CLIP checkpoint (no 'text_projection' weight)")
    return _build_from_state_dict(state_dict, architecture)


def clip_weights_path(name: str, path: str = "") -> Path:
    """Where the weights of backbone ``name`` are: ``path`` if given, else ``~/.cache/clip/<file>``.

    Raises ``FileNotFoundError`` saying where to put the file and where to get it.
    """
    if path:
        resolved = Path(path).expanduser()
    elif name in _MODELS:
        resolved = CACHE_DIR.expanduser() / os.path.basename(_MODELS[name])
    else:
        raise KeyError(f"unknown CLIP backbone MODEL.BACKBONE.NAME={name!r}: use one of "
                       f"{sorted(_MODELS) + [TOY_NAME]}, or set MODEL.BACKBONE.PATH to a CLIP file")
    if not resolved.is_file():
        source = f"download it from {_MODELS[name]}" if name in _MODELS else "it is a CLIP checkpoint file you provide"
        raise FileNotFoundError(
            f"CLIP weights for backbone {name!r} not found at {resolved}. prompt-diffusion never downloads: "
            f"put the file at {CACHE_DIR / os.path.basename(_MODELS[name]) if name in _MODELS else resolved} "
            f"or set MODEL.BACKBONE.PATH to it ({source})."
        )
    return resolved


def load_clip(name: str, path: str = "") -> CLIP:
    """The CLIP model for ``MODEL.BACKBONE.NAME`` / ``MODEL.BACKBONE.PATH`` on the CPU, eval mode.

    Weights keep the file's dtype (the released models are fp16); set the run's precision with
    ``apply_precision``. ``name == "toy"`` (and no path) loads the project's small CLIP.
    """
    if name == TOY_NAME and not path:
        from prompt_diffusion.toy_clip import load_toy_state_dict

        return _build_from_state_dict(load_toy_state_dict())
    if is_open_clip_name(name):
        return load_open_clip(name, path)
    if is_hf_name(name):
        return load_hf_clip(path)
    return load_clip_file(checked_weights_path(name, path))


def load_clip_from_cfg(cfg) -> CLIP:
    """``load_clip(cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.PATH)``."""
    return load_clip(cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.PATH)


def check_precision(prec: str, key: str = "PREC") -> None:
    """Refuse an unknown policy, naming the key and the allowed ones."""
    if prec not in PRECISIONS:
        raise ValueError(f"{key}={prec!r}: must be one of {PRECISIONS}")


def precision_note(prec: str, device: Union[str, torch.device], key: str = "PREC") -> str:
    """The log's line for half precision on a CPU (it runs, more slowly than fp32); else empty."""
    if prec in ("fp16", "amp") and torch.device(device).type == "cpu":
        return f"Note: {key} {prec} on the CPU runs in half precision, which is slower there than fp32"
    return ""


def apply_precision(model: CLIP, prec: str, device: Union[str, torch.device], key: str = "PREC") -> CLIP:
    """Set CLIP's weights for the policy: ``fp16`` half (as released), ``fp32`` / ``amp`` float32. In
    place; half precision on a CPU is said in the log (``precision_note``)."""
    check_precision(prec, key)
    note = precision_note(prec, device, key)
    if note:
        print(note)
    if prec == "fp16":
        convert_weights(model)
    else:
        model.float()
    return model


def check_clip_file(path: Path, key: str) -> None:
    """Refuse a weights file that is not a torch archive (garbage, truncated, an HTML error page)
    with an error naming the file and the config key; cheap: the zip directory is read, not the weights."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith("data.pkl") for name in archive.namelist()):
                return
        raise ValueError(f"{key} {path}: a zip archive but not a torch/TorchScript file (no data.pkl); "
                         "expected a CLIP checkpoint (e.g. ViT-B-16.pt from the OpenAI CLIP repository)")
    try:  # the pre-1.6 torch format is not a zip
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch's message would advise weights_only=False: never
        raise ValueError(f"{key} {path}: not a CLIP checkpoint: the file is truncated, corrupt or not a torch "
                         f"file ({type(error).__name__}); download it again or point {key} at a good copy"
                         ) from None


def check_backbone_weights(cfg) -> None:
    """Check the CLIP weights of ``cfg`` before anything slow runs: the file exists and is a torch
    archive (``open_clip:<arch>`` / ``hf``: their own checks). Only for CLIP backbones (a name of the
    ``clip`` package, or ``MODEL.BACKBONE.PATH``); the shipped ``toy`` CLIP needs no file."""
    name, path = cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.PATH
    if is_open_clip_name(name):
        check_open_clip_weights(name, path)
    elif is_hf_name(name):
        check_hf_folder(path)
    elif path or name in _MODELS:
        checked_weights_path(name, path)


def checked_weights_path(name: str, path: str = "") -> Path:
    """``clip_weights_path`` of a file that ``check_clip_file`` accepts."""
    resolved = clip_weights_path(name, path)
    check_clip_file(resolved, "MODEL.BACKBONE.PATH" if path else f"MODEL.BACKBONE.NAME {name}:")
    return resolved
