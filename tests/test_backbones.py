"""Loading CLIP from local files (TorchScript, state dict, save_clip), missing files, precision."""
import warnings

import clip
import pytest
import torch

from prompt_diffusion import backbones
from prompt_diffusion.backbones import (
    apply_precision, build_tiny_clip, clip_architecture, load_clip, load_clip_file, save_clip,
)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def one_head_clip():
    """A tiny CLIP with heads = width // 64, the rule ``clip.model.build_model`` infers from a state dict."""
    return build_tiny_clip(transformer_heads=1)


def test_torchscript_archive_and_state_dict_give_identical_weights(tmp_path, one_head_clip):
    archive, plain = tmp_path / "archive.pt", tmp_path / "plain.pt"
    images, text = torch.randn(1, 3, 32, 32), clip.tokenize(["a dog"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(one_head_clip, (images, text)).save(str(archive))
    torch.save(one_head_clip.state_dict(), plain)
    from_archive, from_plain = load_clip("ViT-B/16", str(archive)), load_clip("ViT-B/16", str(plain))
    assert _same_weights(from_archive, one_head_clip)
    assert _same_weights(from_plain, one_head_clip)
    assert from_plain.dtype == torch.float32  # the file's dtype is kept; precision is set separately


def test_save_clip_keeps_any_head_count(tmp_path):
    model = build_tiny_clip(transformer_heads=4)
    save_clip(model, tmp_path / "tiny.pt")
    content = torch.load(tmp_path / "tiny.pt", weights_only=True)
    assert content["architecture"]["transformer_heads"] == 4
    loaded = load_clip_file(tmp_path / "tiny.pt")
    assert clip_architecture(loaded) == clip_architecture(model)
    assert _same_weights(loaded, model)
    tokens = clip.tokenize(["a red circle"])
    assert torch.equal(loaded.encode_text(tokens), model.encode_text(tokens))


def test_missing_weights_say_where_to_put_and_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(backbones, "CACHE_DIR", tmp_path / "cache")
    with pytest.raises(FileNotFoundError) as error:
        load_clip("ViT-B/16")
    message = str(error.value)
    assert str(tmp_path / "cache" / "ViT-B-16.pt") in message
    assert "MODEL.BACKBONE.PATH" in message and "https://openaipublic" in message
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_clip("ViT-B/16", str(tmp_path / "nowhere.pt"))
    with pytest.raises(KeyError, match="ViT-B/16"):
        load_clip("ViT-B/17")


def test_precision_policies(one_head_clip):
    model = build_tiny_clip()
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        apply_precision(model, "fp16", "cpu", key="TRAINER.COOP.PREC")
    with pytest.raises(ValueError, match="one of"):
        apply_precision(model, "bf16", "cpu")
    clip.model.convert_weights(model)
    assert model.dtype == torch.float16
    assert apply_precision(model, "amp", "cpu").dtype == torch.float32


def test_toy_backbone_loads_through_load_clip():
    toy_clip = pytest.importorskip("prompt_diffusion.toy_clip")
    if not toy_clip.ASSET_PATH.is_file():
        pytest.skip(f"toy CLIP weights not built yet ({toy_clip.ASSET_PATH})")
    state_dict = toy_clip.load_toy_state_dict()
    loaded = load_clip("toy").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state_dict.items() if k in loaded)
    assert set(loaded) <= set(state_dict)
