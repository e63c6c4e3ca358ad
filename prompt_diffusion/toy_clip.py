"""The shipped small CLIP ("toy"): its fixed architecture, weight export and loading, zero-shot.

A ``clip.model.CLIP`` (ViT-style, real BPE tokenizer and vocabulary) pretrained contrastively on
captions of the toy world (``prompt_diffusion.data.toy_world``) by ``scripts/train_toy_clip.py``.
Its weights ship in ``prompt_diffusion/assets/toy_clip.pt.gz``: fp16, gzip-compressed, with only
the token-embedding rows that training touched (every other row is zero).

Training uses a text context of 20 tokens (every caption fits). The shipped state dict pads the
text positional embedding with zero rows to CLIP's usual 77, so code that tokenizes with
``clip.tokenize`` defaults runs unchanged. CLIP's text transformer is causal and reads the feature
at the end token, so for any text whose end token sits before position 20 the padded model gives
exactly the trained model's features; positions 20-76 were never trained.
"""
import gzip
import io
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from clip.model import CLIP

ASSET_PATH = Path(__file__).resolve().parent / "assets" / "toy_clip.pt.gz"
METADATA_PATH = ASSET_PATH.with_name("toy_clip.json")

# the fixed architecture (vision heads = vision_width // 64, text heads given explicitly)
TOY_CLIP_ARCH = dict(
    embed_dim=128,
    image_resolution=32,
    vision_layers=4,
    vision_width=128,
    vision_patch_size=8,
    vocab_size=49408,
    transformer_width=128,
    transformer_heads=2,
    transformer_layers=4,
)
TRAIN_CONTEXT_LENGTH = 20  # every toy-world caption fits (the longest has 16 tokens)
SHIPPED_CONTEXT_LENGTH = 77  # clip.tokenize's default
# OpenAI CLIP's normalisation, the one the engine's default transforms apply
PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)

_ROWS_KEY = "token_embedding.rows"  # sparse storage of token_embedding.weight: kept row ids ...
_VALUES_KEY = "token_embedding.values"  # ... and their values


def build_toy_clip(
    context_length: int = TRAIN_CONTEXT_LENGTH, vocab_size: int = TOY_CLIP_ARCH["vocab_size"], seed: int = 0
) -> CLIP:
    """A freshly initialised toy CLIP in fp32 (train mode), seeded.

    Training uses a compact ``vocab_size`` (only the token ids its captions use, remapped to
    ``0..vocab_size-1``), which spares the optimizer the 49k never-used embedding rows.
    """
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = CLIP(context_length=context_length, **{**TOY_CLIP_ARCH, "vocab_size": vocab_size})
    torch.random.set_rng_state(generator_state)
    return model.float()


def export_state_dict(model: CLIP, vocab_ids: Sequence[int]) -> Dict[str, torch.Tensor]:
    """The storable form of a trained toy CLIP: fp16, text positions padded to 77 with zeros, the
    token embedding stored sparsely (row ids + values).

    Row ``i`` of ``model``'s (compact) token embedding holds the CLIP token id ``vocab_ids[i]``.
    """
    if len(vocab_ids) != model.vocab_size or len(set(vocab_ids)) != len(vocab_ids):
        raise ValueError(f"vocab_ids must list {model.vocab_size} distinct token ids, one per embedding row; "
                         f"got {len(vocab_ids)} ids ({len(set(vocab_ids))} distinct)")
    state = {key: value.detach().to(torch.float16).clone() for key, value in model.state_dict().items()}
    positions = state["positional_embedding"]  # [context, width]
    padded = positions.new_zeros(SHIPPED_CONTEXT_LENGTH, positions.shape[1])
    padded[: positions.shape[0]] = positions
    state["positional_embedding"] = padded
    state[_VALUES_KEY] = state.pop("token_embedding.weight")
    state[_ROWS_KEY] = torch.tensor([int(i) for i in vocab_ids], dtype=torch.int32)
    return state


def save_state_dict(state: Dict[str, torch.Tensor], path: Path) -> None:
    """Write an exported state dict gzip-compressed (atomically: temporary file, then rename)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    with gzip.GzipFile(temporary, "wb", compresslevel=9, mtime=0) as handle:
        handle.write(buffer.getvalue())
    temporary.replace(path)


def load_toy_state_dict(path: Optional[Path] = None) -> Dict[str, torch.Tensor]:
    """The shipped toy CLIP weights as a dense fp16 state dict ready for ``clip.model.build_model``.

    ``path`` defaults to the weights inside the package. ``build_model`` returns an fp16 model;
    call ``.float()`` on it to run on CPU.
    """
    path = Path(path) if path is not None else ASSET_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"toy CLIP weights not found at {path}; they ship with the package, or can be rebuilt "
            "with `python scripts/train_toy_clip.py`"
        )
    with gzip.open(path, "rb") as handle:
        state = torch.load(io.BytesIO(handle.read()), map_location="cpu", weights_only=True)
    return densify_state_dict(state)


def densify_state_dict(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """An exported state dict with its token embedding made dense again (zero rows elsewhere)."""
    state = dict(state)
    rows, values = state.pop(_ROWS_KEY).long(), state.pop(_VALUES_KEY)
    embedding = values.new_zeros(TOY_CLIP_ARCH["vocab_size"], values.shape[1])
    embedding[rows] = values
    state["token_embedding.weight"] = embedding
    return state


def model_from_state_dict(state: Dict[str, torch.Tensor]) -> CLIP:
    """An fp32 eval-mode CLIP from a dense toy state dict (``clip.model.build_model`` + ``.float()``)."""
    from clip.model import build_model

    return build_model(dict(state)).float().eval()


def preprocess(images: np.ndarray) -> torch.Tensor:
    """uint8 images [N, H, W, 3] -> normalised float tensor [N, 3, H, W] (CLIP mean/std)."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def tokenize(texts: Sequence[str], context_length: int) -> torch.Tensor:
    """``clip.tokenize`` as int64 (it returns int32 on recent torch), raising on overlong text."""
    from clip import clip as clip_module

    return clip_module.tokenize(list(texts), context_length=context_length).long()


@torch.no_grad()
def zero_shot_logits(
    model: CLIP, images: np.ndarray, classnames: Sequence[str], template: str = "a photo of a {}.",
    batch_size: int = 500,
) -> torch.Tensor:
    """Cosine-similarity logits [N, K] of uint8 ``images`` against ``template`` per class name."""
    was_training = model.training
    model.eval()
    tokens = tokenize([template.format(name) for name in classnames], model.context_length)
    text = F.normalize(model.encode_text(tokens).float(), dim=-1)  # [K, E]
    logits = []
    for start in range(0, len(images), batch_size):
        batch = preprocess(images[start : start + batch_size]).to(model.dtype)
        image = F.normalize(model.encode_image(batch).float(), dim=-1)  # [B, E]
        logits.append(image @ text.t())
    model.train(was_training)
    return torch.cat(logits)


def zero_shot_accuracy(
    model: CLIP, images: np.ndarray, labels: np.ndarray, classnames: Sequence[str],
    template: str = "a photo of a {}.",
) -> float:
    """Top-1 zero-shot accuracy (fraction) of ``model`` on uint8 ``images`` with ``labels``."""
    predictions = zero_shot_logits(model, images, classnames, template).argmax(dim=1).numpy()
    return float((predictions == np.asarray(labels)).mean())
