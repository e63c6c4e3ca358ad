"""Hugging Face ``transformers`` CLIP folders (``MODEL.BACKBONE.NAME hf``, the folder as ``MODEL.BACKBONE.PATH``),
converted to the openai-CLIP layout.

A folder that ``CLIPModel.from_pretrained`` reads (``config.json`` and ``model.safetensors`` or
``pytorch_model.bin``, maybe sharded with an index; ``clip-vit-base-patch16`` and the like) is
built from its own ``config.json`` as OpenAI's ``clip.model.CLIP`` and its weights copied in, so
every trainer, adapter and the prompted forward (``clip_prompting``) run on it unchanged; with
empty prompts its image and text features are ``CLIPModel``'s own (tests/test_hf_backbone.py).
The weights are read without unpickling (safetensors, or ``torch.load(weights_only=True)``); the
extra ``prompt-diffusion[hf]`` brings ``transformers`` (the config's defaults, the tokenizer check).

What differs, and how it maps: the separate q/k/v projections are stacked into the fused
in-projection; the projections (``nn.Linear`` without bias) are transposed into openai's matrices;
``hidden_act`` ``gelu`` becomes torch's GELU on the blocks (``quick_gelu`` is openai's); the heads
of each tower are the config's (openai builds ``width // 64`` vision heads); the context length is
``max_position_embeddings``; ``logit_scale``, the class embedding and the pre-/post-layernorms are
copied as they are. The text feature is pooled at the EOT token, which the prompted forward finds
as the argmax of the ids: ``eos_token_id`` 2 (configs written before transformers pooled at the
EOS id) pools there too, and so does 49407, the largest id of CLIP's BPE. When the folder has its
tokenizer files, the CLIP BPE the trainers tokenize with must give the ids of the folder's tokenizer.

What cannot be represented is refused with one line naming the field and its value: another
``model_type`` (SigLIP, Chinese-CLIP ...), another activation, MLP ratio, LayerNorm eps or EOS id,
attention dropout, a vocabulary other than CLIP's BPE, a non-square or non-RGB image tower, or one
narrower than 64 (the openai ViT cannot be built). Images must be normalised as the checkpoint was
trained (``INPUT.PIXEL_MEAN`` / ``PIXEL_STD``: the folder's ``preprocessor_config.json``).
"""
import json
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Dict, Iterable, List

import torch
from torch import Tensor, nn

from prompt_diffusion.clip_conversion import load_weights_or_refuse, read_weights_file, set_attention_heads, use_gelu
from prompt_diffusion.clip_package import openai_clip_modules

if TYPE_CHECKING:  # the optional extra: imported when a folder is read
    from transformers import CLIPConfig

HF_NAME = "hf"
INSTALL_HINT = "pip install 'prompt-diffusion[hf]' (or pip install transformers safetensors)"
CONFIG_FILE = "config.json"
# the files transformers writes the weights to, in the order from_pretrained prefers them
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
INDEX_SUFFIX = ".index.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
# sentences on which the folder's tokenizer must give the trainers' ids (class prompts, digits, punctuation)
TOKENIZER_PROBES = ("a photo of a red square.", "X", "an image of 2 Bernese mountain dogs & a café's cat!")
# hidden_act -> the GELU approximation of torch's nn.GELU; None: openai's own QuickGELU
ACTIVATIONS = {"quick_gelu": None, "gelu": "none"}
CLIP_BPE_VOCAB = 49408  # clip.tokenize's ids; the EOT (49407) is the largest
LEGACY_EOS_ID = 2  # configs before transformers pooled at the EOS id: it pools at the argmax of the ids
OPENAI_LAYER_NORM_EPS = 1e-5
MIN_VISION_WIDTH = 64  # openai's VisionTransformer is built with width // 64 heads (set right afterwards)

# openai-layout weight -> the CLIPModel weight it is, outside the transformer blocks
HF_NAMES = {
    "logit_scale": "logit_scale",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "text_projection": "text_projection.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "visual.proj": "visual_projection.weight",
}
TRANSPOSED = ("text_projection", "visual.proj")  # nn.Linear weights [embed, width]; openai's [width, embed]
TOWERS = {"transformer.resblocks.": "text_model.encoder.layers.",
          "visual.transformer.resblocks.": "vision_model.encoder.layers."}
BLOCK_PARTS = {"attn.out_proj.": "self_attn.out_proj.", "ln_1.": "layer_norm1.", "ln_2.": "layer_norm2.",
               "mlp.c_fc.": "mlp.fc1.", "mlp.c_proj.": "mlp.fc2."}
FUSED_IN_PROJECTION = "attn.in_proj_"  # in_proj_weight [3W, W] / in_proj_bias [3W]: q, k, v stacked
IGNORED = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")  # buffers of older files


def is_hf_name(name: str) -> bool:
    return name == HF_NAME


def transformers_package() -> ModuleType:
    """The installed ``transformers`` module; without it an ImportError saying how to install it."""
    try:
        import transformers
    except ImportError as error:
        raise ImportError(f"MODEL.BACKBONE.NAME {HF_NAME} needs transformers, which is not installed: "
                          f"{INSTALL_HINT}") from error
    return transformers


def hf_folder(path: str) -> Path:
    """``MODEL.BACKBONE.PATH`` as the folder it must be (the extra installed); else one line saying what to give."""
    transformers_package()
    what = "a transformers CLIPModel folder: config.json and model.safetensors or pytorch_model.bin"
    if not path:
        raise FileNotFoundError(f"MODEL.BACKBONE.NAME {HF_NAME}: set MODEL.BACKBONE.PATH to {what} "
                                "(prompt-diffusion never downloads)")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"MODEL.BACKBONE.PATH {folder}: no such folder (MODEL.BACKBONE.NAME {HF_NAME} "
                                f"reads {what}; prompt-diffusion never downloads)")
    return folder


def read_clip_config(folder: Path) -> "CLIPConfig":
    """The folder's ``config.json`` as transformers' ``CLIPConfig`` (its defaults filled in); another model
    type, or a field the openai layout cannot represent, is one ValueError naming the field and value."""
    path = folder / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"MODEL.BACKBONE.PATH {folder}: no {CONFIG_FILE} (not a transformers model "
                                "folder)") from None
    except (ValueError, OSError) as error:
        raise ValueError(f"MODEL.BACKBONE.PATH {folder}: {CONFIG_FILE} is not JSON ({type(error).__name__})") from None
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if model_type != "clip":
        raise ValueError(f"MODEL.BACKBONE.PATH {folder}: {CONFIG_FILE} model_type {model_type!r}: only 'clip' "
                         "(a transformers CLIPModel)")
    try:
        config = transformers_package().CLIPConfig.from_dict(data)
    except Exception as error:  # transformers' own validation (heads that do not divide the width ...)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"MODEL.BACKBONE.PATH {folder}: {CONFIG_FILE} is not a valid CLIPConfig ({reason})") from None
    problems = unrepresentable(config)
    if problems:
        raise ValueError(f"MODEL.BACKBONE.PATH {folder}: {CONFIG_FILE} cannot be used here: {'; '.join(problems)}")
    return config


def unrepresentable(config: "CLIPConfig") -> List[str]:
    """The fields of a ``CLIPConfig`` (with their values) that the openai layout cannot represent (empty: none)."""
    problems = []
    for tower in ("text_config", "vision_config"):
        part = getattr(config, tower)
        if part.hidden_act not in ACTIVATIONS:
            problems.append(f"{tower}.hidden_act {part.hidden_act!r} (only {' or '.join(ACTIVATIONS)})")
        if part.intermediate_size != 4 * part.hidden_size:
            problems.append(f"{tower}.intermediate_size {part.intermediate_size} (only 4 x hidden_size, "
                            f"{4 * part.hidden_size})")
        if part.layer_norm_eps != OPENAI_LAYER_NORM_EPS:
            problems.append(f"{tower}.layer_norm_eps {part.layer_norm_eps} (only {OPENAI_LAYER_NORM_EPS})")
        if part.attention_dropout:
            problems.append(f"{tower}.attention_dropout {part.attention_dropout} (only 0: openai's has none)")
    text, vision = config.text_config, config.vision_config
    if text.vocab_size != CLIP_BPE_VOCAB:
        problems.append(f"text_config.vocab_size {text.vocab_size} (only {CLIP_BPE_VOCAB}: the trainers tokenize "
                        "with CLIP's BPE)")
    if text.eos_token_id not in (LEGACY_EOS_ID, CLIP_BPE_VOCAB - 1):
        problems.append(f"text_config.eos_token_id {text.eos_token_id!r} (only {LEGACY_EOS_ID} or "
                        f"{CLIP_BPE_VOCAB - 1}: the text is pooled at the EOT, the argmax of the ids)")
    for field in ("image_size", "patch_size"):
        if not isinstance(getattr(vision, field), int):
            problems.append(f"vision_config.{field} {getattr(vision, field)!r} (only one int: square)")
    if vision.num_channels != 3:
        problems.append(f"vision_config.num_channels {vision.num_channels} (only 3)")
    if vision.hidden_size < MIN_VISION_WIDTH:
        problems.append(f"vision_config.hidden_size {vision.hidden_size} (at least {MIN_VISION_WIDTH})")
    return problems


def openai_architecture(config: "CLIPConfig") -> dict:
    """The ``clip.model.CLIP`` constructor arguments with the dimensions of a ``CLIPConfig``."""
    text, vision = config.text_config, config.vision_config
    return dict(embed_dim=config.projection_dim, image_resolution=vision.image_size,
                vision_layers=vision.num_hidden_layers, vision_width=vision.hidden_size,
                vision_patch_size=vision.patch_size, context_length=text.max_position_embeddings,
                vocab_size=text.vocab_size, transformer_width=text.hidden_size,
                transformer_heads=text.num_attention_heads, transformer_layers=text.num_hidden_layers)


def weights_files(folder: Path) -> List[Path]:
    """The files holding the folder's weights: the first of ``WEIGHTS_FILES`` there (an index: its shards)."""
    for name in WEIGHTS_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(INDEX_SUFFIX):
            return [path]
        try:
            shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, OSError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"MODEL.BACKBONE.PATH {path}: not a weights index ({type(error).__name__})") from None
        return [folder / shard for shard in shards]
    raise FileNotFoundError(f"MODEL.BACKBONE.PATH {folder}: no weights file ({', '.join(WEIGHTS_FILES)})")


def read_hf_weights(folder: Path) -> Dict[str, Tensor]:
    """The folder's ``CLIPModel`` state dict (every shard), read without unpickling."""
    state = {}
    for path in weights_files(folder):
        content = read_weights_file(path, "a transformers weights file")
        if not isinstance(content, dict):
            raise ValueError(f"MODEL.BACKBONE.PATH {path}: not a transformers weights file (a "
                             f"{type(content).__name__}, not a state dict)")
        state.update(content)
    return state


def hf_names(name: str) -> List[str]:
    """The ``CLIPModel`` weights that make the openai-layout weight ``name`` (q, k, v for a fused in-projection)."""
    if name in HF_NAMES:
        return [HF_NAMES[name]]
    for ours, theirs in TOWERS.items():
        if name.startswith(ours):
            block, part = name[len(ours):].split(".", 1)
            if part.startswith(FUSED_IN_PROJECTION):
                kind = part[len(FUSED_IN_PROJECTION):]  # weight / bias
                return [f"{theirs}{block}.self_attn.{p}_proj.{kind}" for p in "qkv"]
            prefix = next(p for p in BLOCK_PARTS if part.startswith(p))
            return [f"{theirs}{block}.{BLOCK_PARTS[prefix]}{part[len(prefix):]}"]
    raise KeyError(f"no CLIPModel weight for the openai-layout weight {name!r}")


def openai_state_dict(hf_state: Dict[str, Tensor], names: Iterable[str], refusal: str) -> Dict[str, Tensor]:
    """The openai-layout weights ``names`` made of a ``CLIPModel`` state dict; weights missing from it, or
    in it and not used, are one ValueError ``<refusal> (...)`` naming the first in ``CLIPModel``'s names."""
    sources = {name: hf_names(name) for name in names}
    used = {source for group in sources.values() for source in group}
    missing, unexpected = sorted(used - set(hf_state)), sorted(set(hf_state) - used - set(IGNORED))
    if missing or unexpected:
        raise ValueError(f"{refusal} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    state = {}
    for name, group in sources.items():
        if len(group) > 1:  # q, k, v [W, W] / [W] each -> in-projection [3W, W] / [3W]
            state[name] = torch.cat([hf_state[source] for source in group])
        elif name in TRANSPOSED:
            state[name] = hf_state[group[0]].t()
        else:
            state[name] = hf_state[group[0]]
    return state


def check_tokenizer(folder: Path) -> None:
    """When the folder has its tokenizer files: ``clip.tokenize`` (what the trainers use) must give its ids
    on ``TOKENIZER_PROBES``; a tokenizer that does not load or differs is one ValueError."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return
    try:
        tokenizer = transformers_package().AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as error:  # a corrupt or foreign tokenizer file
        raise ValueError(f"MODEL.BACKBONE.PATH {folder}: its tokenizer does not load "
                         f"({type(error).__name__})") from None
    tokenized = openai_clip_modules()[0].tokenize(list(TOKENIZER_PROBES))  # [P, 77], zero-padded after the EOT
    for text, row in zip(TOKENIZER_PROBES, tokenized):
        ours = row[: int(row.argmax()) + 1].tolist()  # SOT ... EOT
        theirs = list(tokenizer(text)["input_ids"])
        if theirs != ours:
            raise ValueError(f"MODEL.BACKBONE.PATH {folder}: its tokenizer gives {theirs} for {text!r}, the CLIP BPE "
                             f"the trainers use {ours}")


def load_hf_clip(path: str) -> nn.Module:
    """The ``CLIPModel`` folder at ``path`` as an openai ``clip.model.CLIP`` (fp32, CPU, eval), with the
    config's head counts and activations."""
    folder = hf_folder(path)
    config = read_clip_config(folder)
    check_tokenizer(folder)
    model = openai_clip_modules()[1].CLIP(**openai_architecture(config)).float()
    refusal = f"MODEL.BACKBONE.PATH {folder}: not the weights of the CLIPModel its {CONFIG_FILE} describes"
    state = openai_state_dict(read_hf_weights(folder), model.state_dict().keys(), refusal)
    load_weights_or_refuse(model, state, refusal)  # fp16 / bf16 files are cast to the model's fp32
    for block in model.visual.transformer.resblocks:
        set_attention_heads(block.attn, config.vision_config.num_attention_heads)
    for part, blocks in ((config.text_config, model.transformer.resblocks),
                         (config.vision_config, model.visual.transformer.resblocks)):
        if ACTIVATIONS[part.hidden_act] is not None:
            use_gelu(blocks, ACTIVATIONS[part.hidden_act])
    return model.eval()


def check_hf_folder(path: str) -> None:
    """Before anything slow: the extra installed, the folder there, its config usable, a weights file in it."""
    folder = hf_folder(path)
    read_clip_config(folder)
    weights_files(folder)
