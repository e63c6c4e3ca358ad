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


def test_precision_policies(one_head_clip, capsys):
    model = build_tiny_clip()
    assert apply_precision(model, "fp16", "cpu", key="TRAINER.COOP.PREC").dtype == torch.float16  # runs on a CPU
    assert capsys.readouterr().out == ("Note: TRAINER.COOP.PREC fp16 on the CPU runs in half precision, which is "
                                       "slower there than fp32\n")
    with pytest.raises(ValueError, match="one of"):
        apply_precision(model, "bf16", "cpu")
    assert model.dtype == torch.float16
    assert apply_precision(model, "amp", "cpu").dtype == torch.float32  # float16 autocast over fp32 weights
    assert "PREC amp on the CPU" in capsys.readouterr().out
    assert apply_precision(model, "fp32", "cpu").dtype == torch.float32 and capsys.readouterr().out == ""


def test_toy_backbone_loads_through_load_clip():
    toy_clip = pytest.importorskip("prompt_diffusion.toy_clip")
    if not toy_clip.ASSET_PATH.is_file():
        pytest.skip(f"toy CLIP weights not built yet ({toy_clip.ASSET_PATH})")
    state_dict = toy_clip.load_toy_state_dict()
    loaded = load_clip("toy").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state_dict.items() if k in loaded)
    assert set(loaded) <= set(state_dict)


FORK_CLIP_MODEL = '''
import torch.nn as nn


class ModifiedResNet(nn.Module):
    pass


class CLIP(nn.Module):
    def __init__(self, embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
                 context_length, vocab_size, transformer_width, transformer_heads, transformer_layers,
                 design_details):
        super().__init__()


def convert_weights(model):
    pass


def build_model(state_dict: dict, design_details):
    return CLIP(design_details=design_details, **{})
'''

LOAD_UNDER_FORK = '''
import json, sys, warnings
import torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from prompt_diffusion import backbones
import clip.model
loaded = [backbones.load_clip_file(path) for path in sys.argv[1:3]]
reference = torch.load(sys.argv[1], weights_only=True)
print(json.dumps({
    "importable_clip": clip.model.__file__,
    "loaded_class": type(loaded[0]).__module__ + "." + type(loaded[0]).__name__,
    "same": [all(torch.equal(m.state_dict()[k], v) for k, v in reference.items()) for m in loaded],
    "warnings": [str(w.message) for w in caught],
}))
'''


def test_loads_clip_when_a_fork_clip_package_shadows_openai_clip(tmp_path, one_head_clip):
    """Run from a multimodal-prompt-learning checkout, ``import clip`` finds the fork's package
    (``build_model(state_dict, design_details)``); loading CLIP files must still work."""
    import json
    import os
    import subprocess
    import sys

    fork = tmp_path / "fork"
    (fork / "clip").mkdir(parents=True)
    (fork / "clip" / "__init__.py").write_text("from .clip import *\n")
    (fork / "clip" / "clip.py").write_text("from .model import build_model\n_MODELS = {}\n__all__ = ['build_model']\n")
    (fork / "clip" / "model.py").write_text(FORK_CLIP_MODEL)
    plain, saved = tmp_path / "plain.pt", tmp_path / "saved.pt"
    torch.save(one_head_clip.state_dict(), plain)
    save_clip(one_head_clip, saved)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fork), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", LOAD_UNDER_FORK, str(plain), str(saved)], cwd=str(fork), env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["importable_clip"] == str(fork / "clip" / "model.py")  # the fork's package does shadow
    assert result["loaded_class"] == "prompt_diffusion._openai_clip.model.CLIP"
    assert result["same"] == [True, True]
    assert any(str(fork / "clip") in message and "shadows openai-clip" in message for message in result["warnings"])
