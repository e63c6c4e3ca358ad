"""Hugging Face ``transformers`` CLIP folders (``MODEL.BACKBONE.NAME hf``): tiny random ``CLIPModel`` s built and
saved offline by transformers, no download.

With empty prompts our forward gives ``CLIPModel``'s own image and text features, for both activations, both
EOS conventions and the three ways transformers stores weights; the folder's tokenizer is checked against
the CLIP BPE; every prompted trainer and its PD variant trains a step on the converted model; bad folders,
weights and configs are one clear line."""
import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from helpers import (
    ONE_STEP_TRAINERS, assert_one_training_step, make_image_folder, one_step_options, tiny_trainer_cfg,
    write_clip_bpe_tokenizer,
)
from prompt_diffusion.backbones import check_backbone_weights, load_clip
from prompt_diffusion.clip_package import openai_clip_modules
from prompt_diffusion.clip_prompting import encode_image, encode_token_embeddings
from prompt_diffusion.engine import build_trainer

import prompt_diffusion.trainers  # noqa: F401  (registers the trainers)

CONTEXT = 40  # max_position_embeddings: not OpenAI's 77, so the context length comes from the config
# folder -> (hidden_act, eos_token_id, how the weights are stored): both activations, both EOS conventions
FOLDERS = {
    "quick_gelu": ("quick_gelu", 49407, "safetensors"),
    "gelu-legacy-eos": ("gelu", 2, "sharded"),
    "gelu-bin": ("gelu", 49407, "bin"),
}


def clip_config(hidden_act: str, eos_token_id: int):
    """A tiny ViT CLIPConfig: 2 heads in each tower (openai would make width // 64 = 1 vision head), 3 layers."""
    text = dict(hidden_size=48, intermediate_size=192, num_attention_heads=2, num_hidden_layers=3,
                max_position_embeddings=CONTEXT, hidden_act=hidden_act, eos_token_id=eos_token_id)
    vision = dict(hidden_size=64, intermediate_size=256, num_attention_heads=2, num_hidden_layers=3, image_size=32,
                  patch_size=8, hidden_act=hidden_act)
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)


def save_clip_folder(folder, hidden_act: str, eos_token_id: int, storage: str, seed: int):
    """A random CLIPModel saved by transformers in ``folder`` (``storage``: one safetensors file, shards with
    an index, or a ``pytorch_model.bin`` state dict as transformers 4 wrote it, position ids included)."""
    torch.manual_seed(seed)
    model = transformers.CLIPModel(clip_config(hidden_act, eos_token_id)).eval()
    with torch.no_grad():  # LayerNorms and biases away from 1 / 0, so a weight copied to the wrong place shows
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        model.logit_scale.fill_(2.5)
    if storage == "bin":
        model.config.save_pretrained(folder)
        positions = {f"{tower}.embeddings.position_ids": torch.arange(length)[None]
                     for tower, length in (("text_model", CONTEXT), ("vision_model", 17))}
        torch.save({**model.state_dict(), **positions}, folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder, max_shard_size="200KB" if storage == "sharded" else "50GB")
    return model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One saved CLIPModel folder per ``FOLDERS`` entry (the first with its tokenizer files), and the models."""
    root = tmp_path_factory.mktemp("hf")
    saved = {}
    for seed, (name, (hidden_act, eos_token_id, storage)) in enumerate(FOLDERS.items()):
        saved[name] = (root / name, save_clip_folder(root / name, hidden_act, eos_token_id, storage, seed))
    write_clip_bpe_tokenizer(root / "quick_gelu")
    return saved


def test_folders_are_stored_as_named(folders):
    assert (folders["quick_gelu"][0] / "model.safetensors").is_file()
    assert len(list(folders["gelu-legacy-eos"][0].glob("model-*.safetensors"))) > 1
    assert (folders["gelu-bin"][0] / "pytorch_model.bin").is_file()


def projected(output) -> torch.Tensor:
    """``get_*_features``' projected features: a tensor (transformers 4) or the output's pooler_output (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@pytest.mark.parametrize("name", FOLDERS)
def test_empty_prompts_give_clipmodels_own_features(folders, name):
    folder, theirs = folders[name]
    ours = load_clip("hf", str(folder))
    assert ours.context_length == CONTEXT and float(ours.logit_scale.detach()) == 2.5
    assert ours.visual.transformer.resblocks[0].attn.num_heads == 2
    texts = ["a photo of a red square.", "a blue circle", "X", "an image of 2 Bernese mountain dogs & a cat!"]
    tokens = openai_clip_modules()[0].tokenize(texts, context_length=CONTEXT)  # [4, 40]
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected_image = projected(theirs.get_image_features(pixel_values=images))
        expected_text = projected(theirs.get_text_features(input_ids=tokens))
        image = encode_image(ours.visual, images)
        text = encode_token_embeddings(ours, ours.token_embedding(tokens), tokens)
    assert (image - expected_image).abs().max() <= 1e-5 and expected_image.std() > 0.1
    assert (text - expected_text).abs().max() <= 1e-5 and expected_text.std() > 0.1


def test_a_tokenizer_that_differs_from_the_clip_bpe_is_refused(folders, tmp_path):
    folder = tmp_path / "other_tokenizer"
    shutil.copytree(folders["quick_gelu"][0], folder)
    write_clip_bpe_tokenizer(folder, swap=("photo</w>", "square</w>"))
    with pytest.raises(ValueError, match=r"other_tokenizer: its tokenizer gives \[49406, 320, 3999, .* for 'a photo "
                                         r"of a red square.', the CLIP BPE the trainers use \[49406, 320, 1125,"):
        load_clip("hf", str(folder))


@pytest.mark.parametrize("trainer", ONE_STEP_TRAINERS)
def test_prompted_trainers_train_a_step_on_a_transformers_clip(folders, tmp_path, trainer):
    make_image_folder(tmp_path / "data", ["red_square", "green_circle", "blue_star"], per_class=2)
    options = ["MODEL.BACKBONE.NAME", "hf", "MODEL.TEXT_CHUNK", 16, *one_step_options(trainer)]
    cfg = tiny_trainer_cfg(trainer, tmp_path / "data", folders["quick_gelu"][0], tmp_path / "out", 0.01, 1, options)
    assert_one_training_step(build_trainer(cfg))


def edited_copy(source, target, **edits):
    """``source`` copied to ``target`` with ``config.json`` entries changed (``text_config__hidden_act=...``)."""
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    for key, value in edits.items():
        *parents, field = key.split("__")
        node = config
        for parent in parents:
            node = node[parent]
        node[field] = value
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_bad_folders_weights_and_configs_are_one_clear_line(folders, tmp_path):
    good = folders["gelu-bin"][0]
    with pytest.raises(FileNotFoundError, match=r"MODEL.BACKBONE.NAME hf: set MODEL.BACKBONE.PATH"):
        load_clip("hf", "")
    with pytest.raises(FileNotFoundError, match=r"absent: no such folder"):
        load_clip("hf", str(tmp_path / "absent"))
    corrupt = edited_copy(good, tmp_path / "corrupt")
    (corrupt / "pytorch_model.bin").write_bytes(b"not torch")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: not a transformers weights file \(\w+\)$"):
        load_clip("hf", str(corrupt))
    (corrupt / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"corrupt: no weights file \(model\.safetensors, "):
        load_clip("hf", str(corrupt))
    siglip = tmp_path / "siglip"
    transformers.SiglipConfig().save_pretrained(siglip)
    with pytest.raises(ValueError, match=r"siglip: config\.json model_type 'siglip': only 'clip'"):
        load_clip("hf", str(siglip))
    refused = edited_copy(good, tmp_path / "refused", text_config__hidden_act="gelu_new",
                          text_config__eos_token_id=1, vision_config__intermediate_size=128)
    with pytest.raises(ValueError, match=r"refused: config\.json cannot be used here: text_config\.hidden_act "
                                         r"'gelu_new' .*; vision_config\.intermediate_size 128 .*; "
                                         r"text_config\.eos_token_id 1 \(only 2 or 49407"):
        load_clip("hf", str(refused))
    deeper = edited_copy(good, tmp_path / "deeper", text_config__num_hidden_layers=4)
    with pytest.raises(ValueError, match=r"not the weights of the CLIPModel its config\.json describes \(missing "
                                         r"\['text_model\.encoder\.layers\.3\.layer_norm1\.bias'"):
        load_clip("hf", str(deeper))
    narrower = edited_copy(good, tmp_path / "narrower", projection_dim=16)
    with pytest.raises(ValueError, match=r"describes \(size mismatch for text_projection"):
        load_clip("hf", str(narrower))
    cfg = tiny_trainer_cfg("CoOp", tmp_path, siglip, tmp_path / "out", 0.01, 1, ["MODEL.BACKBONE.NAME", "hf"])
    with pytest.raises(ValueError, match=r"model_type 'siglip'"):  # before a trainer or dataset is built
        check_backbone_weights(cfg)
