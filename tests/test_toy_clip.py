"""The shipped small CLIP: storage round trip, the 77-token padding, and its zero-shot accuracy."""
import numpy as np
import pytest
import torch

from prompt_diffusion import toy_clip
from prompt_diffusion.backbones import load_clip
from prompt_diffusion.data import toy_world

HELDOUT_SEED = 2  # neither the pretraining pool (0), the training log's held-out set (1), nor a dataset
# the shipped weights score 0.623 top-1 on this set (128 images per style, 64 classes; chance 0.016);
# the threshold leaves room for platform differences in fp32 arithmetic and nothing more
MIN_ZERO_SHOT = 0.45


def test_export_and_load_round_trip(tmp_path):
    vocab_ids = [0, 320, 1125, 539, 2866, 269, 49406, 49407]  # compact row i <-> CLIP token id
    model = toy_clip.build_toy_clip(vocab_size=len(vocab_ids), seed=3).eval()
    path = tmp_path / "toy.pt.gz"
    toy_clip.save_state_dict(toy_clip.export_state_dict(model, vocab_ids), path)
    state = toy_clip.load_toy_state_dict(path)
    assert state["token_embedding.weight"].shape == (49408, 128) and state["positional_embedding"].shape[0] == 77
    assert state["token_embedding.weight"][1:269].abs().max() == 0  # rows training never used are zero
    loaded = toy_clip.model_from_state_dict(state)
    assert loaded.context_length == 77 and loaded.visual.input_resolution == 32

    compact = torch.tensor([[6, 1, 2, 3, 4, 5, 7] + [0] * 13])  # [1, 20] in the compact vocabulary
    clip_ids = torch.tensor(vocab_ids)[compact]
    padded = torch.cat([clip_ids, torch.zeros(1, 57, dtype=torch.long)], dim=1)  # [1, 77]
    model_half = toy_clip.model_from_state_dict(toy_clip.densify_state_dict(
        toy_clip.export_state_dict(model, vocab_ids)))  # fp16-rounded weights, 77 positions
    with torch.no_grad():
        reference = model.encode_text(compact)
        assert torch.allclose(loaded.encode_text(padded), reference, atol=2e-2)
        # the causal text encoder: 77 positions give exactly the 20-position features
        short = toy_clip.build_toy_clip(vocab_size=49408)
        short.load_state_dict({**model_half.state_dict(),
                               "positional_embedding": model_half.positional_embedding[:20]})
        assert torch.allclose(short.eval().encode_text(clip_ids), model_half.encode_text(padded), atol=1e-5)
    pixels = np.zeros((2, 32, 32, 3), np.uint8)
    assert toy_clip.zero_shot_logits(loaded, pixels, ["red circle", "blue star"]).shape == (2, 2)


def test_export_refuses_a_wrong_vocabulary():
    model = toy_clip.build_toy_clip(vocab_size=4)
    with pytest.raises(ValueError, match="4 distinct token ids"):
        toy_clip.export_state_dict(model, [0, 1, 1, 2])


def test_missing_weights_file_names_the_script(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_toy_clip.py"):
        toy_clip.load_toy_state_dict(tmp_path / "absent.pt.gz")


def test_shipped_toy_clip_zero_shot():
    assert toy_clip.ASSET_PATH.stat().st_size <= 10 * 2**20
    model = load_clip("toy").float().eval()
    assert model.context_length == 77 and model.visual.input_resolution == 32
    names = toy_world.class_names()
    hits, colour_hits, total = 0, 0, 0
    for style in toy_world.STYLES:
        images, labels = toy_world.class_balanced_images(HELDOUT_SEED, style, per_class=2)
        predictions = toy_clip.zero_shot_logits(model, images, names).argmax(dim=1).numpy()
        hits += int((predictions == labels).sum())
        colour_hits += int((predictions % 8 == labels % 8).sum())
        total += len(labels)
    assert hits / total > MIN_ZERO_SHOT, f"zero-shot top-1 {hits / total:.3f} over {total} images"
    assert colour_hits / total > 0.9
