"""Prompt diffusion on the multi-modal trainers: the MaPLe, PromptSRC and CoPrompt adapters agree with
their hosts' forward, and MaPLePD, PromptSRCPD, CoPromptPD train, checkpoint and evaluate with
exactly NFE denoiser calls per test batch."""
import math

import pytest
import torch

from helpers import assert_one_step_moves_the_generator_and_inference_is_finite
from multimodal_setup import BASE_CLASSES, build_world, make_cfg, record_losses
from prompt_diffusion.adapters import (
    CoPromptAdapter, MaPLeAdapter, PromptSRCAdapter, detect_adapter,
)
from prompt_diffusion.backbones import build_tiny_clip
from prompt_diffusion.config import extend_cfg
from prompt_diffusion.engine import build_trainer, get_cfg_default
from prompt_diffusion.generator_registry import GENERATORS
from prompt_diffusion.trainers import coprompt, maple, pd_variants, promptsrc
from prompt_diffusion.wrapper import PD_MODEL_NAME


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("multimodal_pd"))


CLASSNAMES = ["red circle", "green square", "blue star"]
TEXT_WIDTH, VISION_WIDTH = 64, 128  # two widths, as ViT-B/16 (512 text, 768 vision)


def tiny_model(name):
    cfg = extend_cfg(get_cfg_default())
    cfg.INPUT.SIZE = (32, 32)
    cfg.MODEL.TEXT_CHUNK = 4  # several chunks for B x K = 6 sequences
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = 3
    cfg.TRAINER.CoPrompt.PROMPT_DEPTH = 3
    for key in ("PROMPT_DEPTH_TEXT", "PROMPT_DEPTH_VISION"):
        cfg.TRAINER.PROMPTSRC[key] = 3
    cfg.TRAINER.PROMPTSRC.N_CTX_VISION = 3
    clip_model = build_tiny_clip(vision_width=VISION_WIDTH, transformer_width=TEXT_WIDTH, vision_layers=3,
                                 transformer_layers=3)
    if name == "MaPLe":
        return maple.CustomCLIP(cfg, CLASSNAMES, clip_model), cfg
    if name == "PromptSRC":
        return promptsrc.CustomCLIP(cfg, CLASSNAMES, clip_model), cfg
    descriptions = torch.nn.functional.normalize(torch.randn(2, len(CLASSNAMES), 64), dim=-1)
    return coprompt.CustomCLIP(cfg, CLASSNAMES, clip_model, descriptions), cfg


ADAPTERS = {  # one denoiser token per prompted layer (DEEP_TOKENS layer): depth x (n x width)
    "MaPLe": (MaPLeAdapter, pd_variants.MaPLePD, [("text", 3, 2 * TEXT_WIDTH)]),
    "PromptSRC": (PromptSRCAdapter, pd_variants.PromptSRCPD,
                  [("text", 3, 4 * TEXT_WIDTH), ("vision", 3, 3 * VISION_WIDTH)]),
    "CoPrompt": (CoPromptAdapter, pd_variants.CoPromptPD, [("text", 3, 2 * TEXT_WIDTH)]),
}


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_adapter_reproduces_the_host_and_keeps_samples_apart(name):
    adapter_cls, pd_trainer, groups = ADAPTERS[name]
    model, cfg = tiny_model(name)
    model.eval()
    assert detect_adapter(model) is adapter_cls
    assert pd_trainer.pd_adapter_class is adapter_cls
    adapter = adapter_cls(model, cfg)
    assert [tuple(g) for g in adapter.groups] == groups
    base = adapter.base_prompts()
    assert all(p.requires_grad for p in base.values())
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        shared = {k: v.clone() for k, v in adapter.host_prompts(adapter.image_features(images)).items()}
        assert all(torch.equal(v[i], base[k]) for k, v in shared.items() for i in range(2))  # shared prompts
        host_logits = model(images)
        logits = adapter.logits(images, shared)  # a zero residual: the host's logits
        assert torch.allclose(logits, host_logits, atol=1e-5)
        moved = {k: v.clone() for k, v in shared.items()}
        for value in moved.values():  # only sample 1's prompts change (a random direction: LayerNorm
            value[1] += 0.5 * torch.randn(value[1].shape, generator=torch.Generator().manual_seed(2))  # hides shifts)
        changed = adapter.logits(images, moved)
    assert torch.allclose(changed[0], logits[0], atol=1e-5)
    assert not torch.allclose(changed[1], logits[1], atol=1e-3)


@pytest.mark.parametrize("name", ["MaPLe", "CoPrompt"])
@pytest.mark.parametrize("tokens", ["layer", "vector"])
def test_text_prompt_tokens_follow_the_upstream_layers(name, tokens):
    """``DEEP_TOKENS layer`` (default): one denoiser token per prompted layer, ``[depth, n x 512]``;
    ``vector``: one per prompt vector, ``[depth x n, 512]``. Either way the shared prompts give the
    host's logits."""
    model, cfg = tiny_model(name)
    model.eval()
    cfg.TRAINER.PD.DEEP_TOKENS = tokens
    adapter = ADAPTERS[name][0](model, cfg)
    learner = model.prompt_learner
    layers = [learner.ctx.float(), *(p.float() for p in learner.compound_prompts_text)]  # 3 x [2, 64]
    expected = torch.stack([p.flatten() for p in layers]) if tokens == "layer" else torch.cat(layers)
    text = adapter.base_prompts()["text"]
    assert [tuple(g) for g in adapter.groups] == [("text", *expected.shape)]
    assert torch.equal(text, expected)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        shared = {k: v.expand(2, -1, -1) for k, v in adapter.base_prompts().items()}
        torch.testing.assert_close(adapter.logits(images, shared), model(images), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_adapter_host_loss_is_the_method_loss(name):
    adapter_cls = ADAPTERS[name][0]
    model, cfg = tiny_model(name)
    model.train()
    adapter = adapter_cls(model, cfg)
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    batch = (images, labels)
    if name == "CoPrompt":
        with pytest.raises(ValueError, match="second augmented view .* got 2 entries"):
            adapter.host_loss(batch)
        with pytest.raises(ValueError, match=r"2 images like view 1; got \(1, 3, 32, 32\)"):
            adapter.host_loss(batch + (images[:1],))
        batch = batch + (images.flip(-1),)
    loss = adapter.host_loss(batch)
    assert loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()
    assert model.prompt_learner.ctx.grad is not None


def count_denoiser_calls(trainer):
    calls = []
    trainer.pd.generator.register_forward_hook(lambda *_: calls.append(1))
    return calls


PD_KEYS = {
    "TRAINER.PD.GENERATOR_SIZE.LAYERS": 1, "TRAINER.PD.GENERATOR_SIZE.HEADS": 2, "TRAINER.PD.GENERATOR_SIZE.WIDTH": 32,
    "TRAINER.PD.OVERFIT.ITERS": 1, "TRAINER.PD.SAMPLER": "dpmpp_2m", "TRAINER.PD.NFE": 5,
    "DATALOADER.TEST.BATCH_SIZE": 8,
}


@pytest.mark.parametrize("name", ["MaPLePD", "PromptSRCPD", "CoPromptPD"])
def test_pd_variant_trains_checkpoints_and_samples_with_nfe_calls(world, tmp_path, name):
    cfg = make_cfg(name, world, "base", tmp_path / "run", lr=0.5, max_epoch=1, **PD_KEYS)
    trainer = build_trainer(cfg)
    summaries = record_losses(trainer)
    trainer.train()
    assert all(math.isfinite(v) for s in summaries for v in s.values())
    assert {"loss_ce", "loss_gen", "loss_host"} <= set(summaries[0])
    # the learned weights (the normalisation mean is re-centred on the shared prompts at each use)
    trained = {k: v.detach().clone() for k, v in trainer.pd.named_parameters()}

    evaluator = build_trainer(make_cfg(name, world, "base", tmp_path / "eval", lr=0.5, max_epoch=1, **PD_KEYS))
    evaluator.load_model(str(tmp_path / "run"), epoch=1)
    loaded = dict(evaluator.pd.named_parameters())
    assert loaded.keys() == trained.keys() and all(torch.equal(loaded[k], v) for k, v in trained.items())
    calls = count_denoiser_calls(evaluator)
    accuracy = evaluator.test()
    n_batches = math.ceil(len(BASE_CLASSES) * 6 / PD_KEYS["DATALOADER.TEST.BATCH_SIZE"])
    assert len(calls) == PD_KEYS["TRAINER.PD.NFE"] * n_batches
    assert evaluator.test() == accuracy  # seeded inference noise: reproducible


def test_promptsrc_pd_aggregates_the_generator_with_the_prompts(world, tmp_path):
    """GPA replaces the prompts by their Gaussian aggregate after the last epoch; the prompt-diffusion
    module (generator, Meta-Net) learned residuals around each epoch's prompts, so it is aggregated
    over the same epochs with the same weights, before AMED distillation and the gain calibration."""
    cfg = make_cfg("PromptSRCPD", world, "base", tmp_path / "run", lr=0.5, max_epoch=2, **PD_KEYS)
    trainer = build_trainer(cfg)
    snapshots = {name: [] for name in ("VLPromptLearner", PD_MODEL_NAME)}
    for name, records in snapshots.items():
        aggregate = trainer.model.gpa[name]
        add = aggregate.add

        def recording_add(tensors, weight, add=add, records=records):
            records.append(({k: v.detach().clone() for k, v in tensors.items()}, weight))
            add(tensors, weight)

        aggregate.add = recording_add
    assert set(trainer.model.gpa) == set(snapshots)  # every optimized model
    trainer.train()
    weights = list(promptsrc.gpa_weights(2, 2, 1))
    for name, records in snapshots.items():
        assert [w for _, w in records] == pytest.approx(weights), name
        final = dict(trainer._models[name].named_parameters())
        saved = torch.load(tmp_path / "run" / name / "model.pth.tar-2", weights_only=True)["state_dict"]
        for key in records[0][0]:
            expected = sum(w * snapshot[key] for snapshot, w in records)
            assert not torch.equal(records[0][0][key], records[1][0][key]) or name == "VLPromptLearner", key
            assert torch.allclose(final[key], expected, atol=1e-6), (name, key)
            assert torch.equal(saved[key], final[key].detach()), (name, key)


@pytest.mark.parametrize("kind", sorted(set(GENERATORS) - {"diffusion"}))
@pytest.mark.parametrize("name", ["MaPLePD", "PromptSRCPD", "CoPromptPD"])
def test_every_generator_trains_a_step_and_samples_on_the_multimodal_hosts(world, tmp_path, name, kind):
    """The generators other than diffusion (tested above) on the multi-modal layouts: one training step
    moves the generator, and inference gives finite logits."""
    cfg = make_cfg(name, world, "base", tmp_path / "run", lr=0.5, max_epoch=1,
                   **{**PD_KEYS, "TRAINER.PD.GENERATOR": kind})
    trainer = build_trainer(cfg)
    assert trainer.pd.generator.__class__ is GENERATORS[kind]
    assert_one_step_moves_the_generator_and_inference_is_finite(trainer)
