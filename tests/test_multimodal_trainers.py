"""The multi-modal trainers MaPLe, PromptSRC and CoPrompt on a tiny CLIP and tiny generated image
folders: every loss term finite and the loss falling, checkpoints that load for other class names,
upstream parameter names and shapes, PromptSRC's Gaussian prompt aggregation, CoPrompt's
descriptions, views and per-dataset settings."""
import copy
import json
import math
from pathlib import Path

import pytest
import torch
from scipy.stats import norm

from helpers import assert_test_accuracy_is_its_predictions
from multimodal_setup import (
    BASE_CLASSES, NEW_CLASSES, TINY_SETTINGS, build_world, make_cfg, record_losses, trainable_state,
    write_descriptions,
)
from prompt_diffusion.backbones import build_random_clip
from prompt_diffusion.config import extend_cfg
from prompt_diffusion.engine import build_trainer, get_cfg_default
from prompt_diffusion.trainers import coprompt, maple, promptsrc
from prompt_diffusion.trainers.coprompt_constants import apply_dataset_overrides
from prompt_diffusion.trainers.coprompt_descriptions import load_class_descriptions

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "trainers"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("multimodal"))


EXPECTED_TERMS = {
    "MaPLe": {"loss_ce"},
    "PromptSRC": {"loss_ce", "loss_scl_text", "loss_scl_image", "loss_scl_logits"},
    "CoPrompt": {"loss_ce", "loss_text", "loss_image"},
}


@pytest.mark.parametrize("name", sorted(TINY_SETTINGS))
def test_trainer_learns_and_its_checkpoint_evaluates_on_new_classes(world, tmp_path, name):
    trainer = build_trainer(make_cfg(name, world, "base", tmp_path / "run"))
    summaries = record_losses(trainer)
    trainer.train()
    per_epoch = len(summaries) // 2
    for summary in summaries:
        assert EXPECTED_TERMS[name] <= set(summary), summary
        assert all(math.isfinite(value) for value in summary.values()), summary
        terms = sum(summary[term] for term in EXPECTED_TERMS[name])
        assert summary["loss"] == pytest.approx(terms, rel=1e-5)
    first = sum(s["loss"] for s in summaries[:per_epoch]) / per_epoch
    last = sum(s["loss"] for s in summaries[per_epoch:]) / per_epoch
    assert last < first, f"{name}: mean loss {first:.4f} -> {last:.4f}"
    learned = trainable_state(trainer)

    new_trainer = build_trainer(make_cfg(name, world, "new", tmp_path / "eval"))
    suffix_before = new_trainer.model.prompt_learner.token_suffix.clone()
    new_trainer.load_model(str(tmp_path / "run"), epoch=2)
    loaded = trainable_state(new_trainer)
    assert loaded.keys() == learned.keys()
    assert all(torch.equal(loaded[key], learned[key]) for key in learned)
    assert torch.equal(new_trainer.model.prompt_learner.token_suffix, suffix_before)  # new class names kept
    assert new_trainer.model.prompt_learner.token_suffix.shape[0] == len(NEW_CLASSES)
    assert_test_accuracy_is_its_predictions(new_trainer, new_trainer.test())


# upstream trainable parameters for ViT-B/16 with the upstream default config files
# (MaPLe vit_b16_c2_ep5_batch4_2ctx, PromptSRC vit_b16_c2_ep20_batch4_4+4ctx, CoPrompt coprompt.yaml)
K = 1
MAPLE_TRAINABLE = {
    "prompt_learner.ctx": (2, 512),
    "prompt_learner.proj.weight": (768, 512),
    "prompt_learner.proj.bias": (768,),
    **{f"prompt_learner.compound_prompts_text.{i}": (2, 512) for i in range(8)},
    **{f"prompt_learner.compound_prompt_projections.{i}.weight": (768, 512) for i in range(8)},
    **{f"prompt_learner.compound_prompt_projections.{i}.bias": (768,) for i in range(8)},
}
UPSTREAM_TRAINABLE = {
    "MaPLe": MAPLE_TRAINABLE,
    "PromptSRC": {
        "prompt_learner.ctx": (4, 512),
        **{f"text_encoder.transformer.resblocks.{i}.VPT_shallow": (4, 512) for i in range(1, 9)},
        "image_encoder.VPT": (4, 768),
        **{f"image_encoder.transformer.resblocks.{i}.VPT_shallow": (4, 768) for i in range(1, 9)},
    },
    "CoPrompt": {
        **MAPLE_TRAINABLE,
        "adapter_image.fc.0.weight": (128, 512), "adapter_image.fc.2.weight": (512, 128),
        "adapter_text.fc.0.weight": (128, 512), "adapter_text.fc.2.weight": (512, 128),
    },
}
TRAINERS = {"MaPLe": maple.MaPLe, "PromptSRC": promptsrc.PromptSRC, "CoPrompt": coprompt.CoPrompt}


@pytest.fixture(scope="module")
def vit_b16():
    return build_random_clip("ViT-B/16")


def build_upstream_size_model(name, clip_model):
    cfg = extend_cfg(get_cfg_default())  # defaults = upstream defaults (depth 9; 2 or 4+4 tokens)
    classnames = [f"class_{i}" for i in range(K)]
    if name == "MaPLe":
        return maple.CustomCLIP(cfg, classnames, clip_model)
    if name == "PromptSRC":  # IVLP's prompts are attached to the CLIP modules: use a copy
        return promptsrc.CustomCLIP(cfg, classnames, copy.deepcopy(clip_model))
    descriptions = torch.nn.functional.normalize(torch.randn(2, K, 512), dim=-1)
    return coprompt.CustomCLIP(cfg, classnames, clip_model, descriptions)


@pytest.mark.parametrize("name", sorted(UPSTREAM_TRAINABLE))
def test_parameter_names_and_shapes_match_upstream_vit_b16(vit_b16, name):
    model = build_upstream_size_model(name, vit_b16)
    trainable = {n: tuple(p.shape) for n, p in model.named_parameters()
                 if any(part in n for part in TRAINERS[name].TRAINABLE)}
    assert trainable == UPSTREAM_TRAINABLE[name]
    buffers = dict(model.named_buffers())
    n_ctx = model.prompt_learner.n_ctx
    assert tuple(buffers["prompt_learner.token_prefix"].shape) == (K, 1, 512)
    assert tuple(buffers["prompt_learner.token_suffix"].shape) == (K, 77 - 1 - n_ctx, 512)
    # frozen class-dependent targets are recomputed from the class names, never checkpointed
    assert not any(key.endswith(("fixed_embeddings", "ori_embedding")) for key in model.state_dict())
    if name != "PromptSRC":  # the coupling projections start equal (deep copies of one layer)
        projections = model.prompt_learner.compound_prompt_projections
        assert all(torch.equal(p.weight, projections[0].weight) for p in projections)


@pytest.mark.parametrize("config, epochs, mean, std", [
    ("vit_b16_c2_ep20_batch4_4+4ctx.yaml", 20, 15, 1),
    ("vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets.yaml", 20, 6, 10),
])
def test_gpa_weights_are_the_normalised_gaussian_of_the_config(config, epochs, mean, std):
    cfg = extend_cfg(get_cfg_default())
    cfg.merge_from_file(str(CONFIGS / "PromptSRC" / config))
    node = cfg.TRAINER.PROMPTSRC
    assert (cfg.OPTIM.MAX_EPOCH, node.GPA_MEAN, node.GPA_STD) == (epochs, mean, std)
    weights = promptsrc.gpa_weights(cfg.OPTIM.MAX_EPOCH, node.GPA_MEAN, node.GPA_STD)
    density = norm.pdf(range(1, epochs + 1), loc=mean, scale=std)
    assert weights == pytest.approx(density / density.sum(), rel=1e-12)
    with pytest.raises(ValueError, match="GPA_STD"):
        promptsrc.gpa_weights(20, 15, 0)


def test_promptsrc_saves_the_gaussian_aggregate_and_keeps_clip_frozen(world, tmp_path):
    trainer = build_trainer(make_cfg("PromptSRC", world, "base", tmp_path / "run"))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    snapshots = []
    add = trainer.model.gpa["VLPromptLearner"].add

    def recording_add(tensors, weight):
        snapshots.append(({k: v.detach().clone() for k, v in tensors.items()}, weight))
        add(tensors, weight)

    trainer.model.gpa["VLPromptLearner"].add = recording_add
    trainer.train()
    weights = promptsrc.gpa_weights(2, 2, 1)
    assert [w for _, w in snapshots] == pytest.approx(list(weights))
    assert not torch.equal(snapshots[0][0]["prompt_learner.ctx"], snapshots[1][0]["prompt_learner.ctx"])
    aggregate = {k: sum(w * s[k] for s, w in snapshots) for k in snapshots[0][0]}
    saved = torch.load(tmp_path / "run" / "VLPromptLearner" / "model.pth.tar-2", weights_only=True)["state_dict"]
    for key, value in aggregate.items():
        assert torch.allclose(saved[key], value, atol=1e-6), key
        assert torch.equal(trainer.model.state_dict()[key], saved[key])
    frozen = [k for k in before if k not in aggregate and not k.startswith("gpa.")]
    assert len(frozen) > 50
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in frozen)


PREC_KEYS = {"MaPLe": "TRAINER.MAPLE.PREC", "PromptSRC": "TRAINER.PROMPTSRC.PREC", "CoPrompt": "TRAINER.CoPrompt.PREC"}


@pytest.mark.parametrize("name", sorted(PREC_KEYS))
def test_trains_under_amp(world, tmp_path, name):
    """amp: float16 autocast around the forward and a GradScaler (on the CPU as on a GPU); every loss
    term stays finite."""
    cfg = make_cfg(name, world, "base", tmp_path / "run", max_epoch=1,
                   **{PREC_KEYS[name]: "amp", "TRAINER.PROMPTSRC.GPA_MEAN": 1})
    trainer = build_trainer(cfg)
    summaries = record_losses(trainer)
    trainer.train()
    assert summaries and all(math.isfinite(v) for s in summaries for v in s.values())


def test_coprompt_description_loader_names_the_missing_class(tmp_path):
    path = write_descriptions(tmp_path, BASE_CLASSES[:3])
    with pytest.raises(KeyError, match="yellow square"):
        load_class_descriptions(path, BASE_CLASSES)
    table = json.loads(path.read_text())
    table["green square"] = table["green square"][:1]
    path.write_text(json.dumps(table))
    with pytest.raises(ValueError, match="green_square"):
        load_class_descriptions(path, BASE_CLASSES[:3])


def test_coprompt_missing_description_file_says_where(world, tmp_path):
    cfg = make_cfg("CoPrompt", world, "base", tmp_path / "run")
    cfg.defrost()
    cfg.TRAINER.CoPrompt.DESCRIPTIONS_DIR = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="TinyImageFolder_prompt.json"):
        build_trainer(cfg)


def test_coprompt_trains_on_two_different_views(world, tmp_path):
    trainer = build_trainer(make_cfg("CoPrompt", world, "base", tmp_path / "run"))
    batch = next(iter(trainer.train_loader_x))
    image1, label, image2 = trainer.parse_batch_train(batch)
    assert image1.shape == image2.shape == (4, 3, 32, 32)
    assert not torch.allclose(image1, image2)
    assert not hasattr(trainer.model, "second_view")  # view 2 travels in the parsed batch only
    trainer.set_model_mode("eval")  # the views are a training thing: evaluation takes one image
    assert trainer.model(image1).shape == (4, len(BASE_CLASSES))


def test_coprompt_per_dataset_overrides(world, tmp_path):
    cfg = extend_cfg(get_cfg_default())
    cfg.merge_from_file(str(CONFIGS / "CoPrompt" / "coprompt.yaml"))
    cfg.DATASET.NAME = "Food101"
    assert apply_dataset_overrides(cfg)
    assert (cfg.TRAINER.CoPrompt.PROMPT_DEPTH, cfg.TRAINER.CoPrompt.N_CTX, cfg.TRAINER.W, cfg.OPTIM.MAX_EPOCH) == \
        (9, 4, 0.5, 5)
    cfg = extend_cfg(get_cfg_default())
    cfg.merge_from_file(str(CONFIGS / "CoPrompt" / "coprompt_ep50_batch32_pd_paper.yaml"))
    cfg.DATASET.NAME = "EuroSAT"
    apply_dataset_overrides(cfg)  # the paper's file keeps only the per-dataset W
    assert (cfg.TRAINER.CoPrompt.PROMPT_DEPTH, cfg.TRAINER.CoPrompt.N_CTX, cfg.TRAINER.W, cfg.OPTIM.MAX_EPOCH) == \
        (9, 2, 0.1, 50)
    cfg.TRAINER.CoPrompt.DATASET_OVERRIDES = ["TRAINER.CoPrompt.NOPE"]
    with pytest.raises(ValueError, match="NOPE"):
        apply_dataset_overrides(cfg)
    # what the trainer's constructor does: a frozen copy with the settings, the given config untouched
    cfg = extend_cfg(get_cfg_default())
    cfg.DATASET.NAME = "OxfordPets"
    cfg.freeze()
    merged = coprompt.with_dataset_overrides(cfg)
    assert merged.is_frozen() and (merged.TRAINER.CoPrompt.PROMPT_DEPTH, merged.TRAINER.W) == (12, 0.1)
    assert (cfg.TRAINER.CoPrompt.PROMPT_DEPTH, cfg.TRAINER.W) == (9, 8.0)
    # the trainer merges them at construction (the tiny dataset has none: nothing changes)
    trainer = build_trainer(make_cfg("CoPrompt", world, "base", tmp_path / "run"))
    assert trainer.cfg.TRAINER.CoPrompt.N_CTX == 2 and trainer.model.lambd == 1.0
