"""OpenCLIP backbones (`open_clip:<arch>`): small randomly initialised OpenCLIP architectures, no download.

With empty prompts our forward gives open_clip's own logits; every prompted trainer and its PD
variant trains a step on the converted model; bad names, files and models are one clear error."""
import json

import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

from helpers import ONE_STEP_TRAINERS, assert_one_training_step, make_image_folder, one_step_options, tiny_trainer_cfg
from prompt_diffusion.backbones import load_clip
from prompt_diffusion.clip_prompting import encode_image, encode_token_embeddings
from prompt_diffusion.clip_package import openai_clip_modules
from prompt_diffusion.engine import build_trainer
from prompt_diffusion.open_clip_backbone import create_open_clip

import prompt_diffusion.trainers  # noqa: F401  (registers the trainers)

TEXT = {"context_length": 77, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 3}
ARCHITECTURES = {  # a ViT (GELU, 2 heads of 32: not OpenAI's width // 64) and a ModifiedResNet (QuickGELU)
    "pd-test-ViT": ({"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "patch_size": 8,
                                                     "head_width": 32}, "text_cfg": TEXT}, 32),
    "pd-test-RN": ({"embed_dim": 32, "quick_gelu": True, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1],
                                                                        "width": 16, "patch_size": None},
                    "text_cfg": TEXT}, 64),
    "pd-test-SigLIP": ({"embed_dim": 32, "init_logit_bias": -10, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64,
                                                                                "patch_size": 8}, "text_cfg": TEXT}, 32),
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The test architectures registered with open_clip, and a random checkpoint file of each."""
    folder = tmp_path_factory.mktemp("open_clip")
    files = {}
    for name, (config, _) in ARCHITECTURES.items():
        (folder / f"{name}.json").write_text(json.dumps(config))
        open_clip.add_model_config(folder / f"{name}.json")
        torch.manual_seed(len(name))
        model = create_open_clip(name)
        with torch.no_grad():
            model.logit_scale.fill_(2.5)
        files[name] = folder / f"{name}.pt"
        torch.save(model.state_dict(), files[name])
    return files


@pytest.mark.parametrize("arch", ["pd-test-ViT", "pd-test-RN"])
def test_empty_prompts_give_open_clips_own_logits(weights, arch):
    theirs = create_open_clip(arch)
    theirs.load_state_dict(torch.load(weights[arch], weights_only=True))
    ours = load_clip(f"open_clip:{arch}", str(weights[arch]))
    texts = ["a photo of a red square.", "a blue circle", "X"]
    tokens = openai_clip_modules()[0].tokenize(texts)
    assert torch.equal(tokens, open_clip.tokenize(texts))  # the trainers' tokenizer is open_clip's
    images = torch.randn(4, 3, ARCHITECTURES[arch][1], ARCHITECTURES[arch][1])
    with torch.no_grad():
        expected = theirs.logit_scale.exp() * F.normalize(theirs.encode_image(images), dim=-1) @ F.normalize(
            theirs.encode_text(tokens), dim=-1).t()
        image = encode_image(ours.visual, images)
        text = encode_token_embeddings(ours, ours.token_embedding(tokens), tokens)
        got = ours.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
    assert (got - expected).abs().max() <= 1e-5 and expected.std() > 0.1


@pytest.mark.parametrize("trainer", ONE_STEP_TRAINERS)
def test_prompted_trainers_train_a_step_on_an_open_clip_vit(weights, tmp_path, trainer):
    make_image_folder(tmp_path / "data", ["red_square", "green_circle", "blue_star"], per_class=2)
    options = ["MODEL.BACKBONE.NAME", "open_clip:pd-test-ViT", "MODEL.TEXT_CHUNK", 16, *one_step_options(trainer)]
    cfg = tiny_trainer_cfg(trainer, tmp_path / "data", weights["pd-test-ViT"], tmp_path / "out", 0.01, 1, options)
    assert_one_training_step(build_trainer(cfg))


def test_bad_names_files_and_models_are_one_clear_error(weights, tmp_path):
    with pytest.raises(ValueError, match=r"open_clip:ViT-Q-99: 'ViT-Q-99' is not an OpenCLIP architecture"):
        load_clip("open_clip:ViT-Q-99", str(weights["pd-test-ViT"]))
    with pytest.raises(FileNotFoundError, match=r"open_clip:pd-test-ViT: set MODEL.BACKBONE.PATH"):
        load_clip("open_clip:pd-test-ViT", "")
    with pytest.raises(FileNotFoundError, match=r"MODEL.BACKBONE.PATH .*absent\.pt: no such file"):
        load_clip("open_clip:pd-test-ViT", str(tmp_path / "absent.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    with pytest.raises(ValueError, match=r"junk\.pt: not an OpenCLIP checkpoint"):
        load_clip("open_clip:pd-test-ViT", str(tmp_path / "junk.pt"))
    with pytest.raises(ValueError, match=r"pd-test-RN\.pt: not the weights of open_clip:pd-test-ViT"):
        load_clip("open_clip:pd-test-ViT", str(weights["pd-test-RN"]))
    with pytest.raises(ValueError, match=r"open_clip:pd-test-SigLIP: cannot be used here: sigmoid logits"):
        load_clip("open_clip:pd-test-SigLIP", str(weights["pd-test-SigLIP"]))
