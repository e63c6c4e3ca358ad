"""Prompt adapters on the reference trainers' models (tiny CLIP): groups, logits, layout lookup."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import small_prompt_learners
from prompt_diffusion.adapters import (
    CoCoOpAdapter,
    CoOpAdapter,
    IVLPAdapter,
    PromptLayoutError,
    VPTAdapter,
    choose_adapter,
    detect_adapter,
)
from prompt_diffusion.backbones import build_tiny_clip
from prompt_diffusion.config import extend_cfg
from prompt_diffusion.engine import get_cfg_default
from prompt_diffusion.trainers import cocoop, coop, ivlp, vpt

CLASSNAMES = ["red circle", "green square", "blue star"]
TEXT_WIDTH, VISION_WIDTH = 64, 128  # two widths, as ViT-B/16 (512 text, 768 vision)
EMBED_DIM = 64  # build_tiny_clip's joint embedding width


def tiny_cfg(**trainer_keys):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.INPUT.SIZE = (32, 32)
    cfg.MODEL.TEXT_CHUNK = 5  # several chunks for B x K = 6 sequences
    small_prompt_learners(cfg)
    cfg.TRAINER.VPT.N_CTX_VISION = 2
    cfg.TRAINER.IVLP.N_CTX_TEXT = 2
    cfg.TRAINER.IVLP.N_CTX_VISION = 3
    for dotted, value in trainer_keys.items():
        node, key = dotted.split("__")
        cfg.TRAINER[node][key] = value
    return cfg


def build(module, cfg=None):
    cfg = cfg or tiny_cfg()
    clip_model = build_tiny_clip(vision_width=VISION_WIDTH, transformer_width=TEXT_WIDTH)
    model = module.CustomCLIP(cfg, CLASSNAMES, clip_model).eval()
    return model, cfg


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


HOSTS = {
    "CoOp": (coop, CoOpAdapter, [("text", 4, TEXT_WIDTH)]),
    "CoCoOp": (cocoop, CoCoOpAdapter, [("text", 4, TEXT_WIDTH)]),
    "VPT": (vpt, VPTAdapter, [("vision", 2, 2 * VISION_WIDTH)]),  # one token per layer: depth x (n x width)
    "IVLP": (ivlp, IVLPAdapter, [("text", 2, 2 * TEXT_WIDTH), ("vision", 2, 3 * VISION_WIDTH)]),
}


def batched(prompts, batch):
    return {name: p.detach().unsqueeze(0).expand(batch, -1, -1).clone() for name, p in prompts.items()}


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_groups_follow_the_upstream_parameters(host):
    module, adapter_cls, groups = HOSTS[host]
    model, cfg = build(module)
    adapter = adapter_cls(model, cfg)
    assert [tuple(g) for g in adapter.groups] == groups
    base = adapter.base_prompts()
    assert {name: tuple(p.shape) for name, p in base.items()} == {n: (t, w) for n, t, w in groups}
    assert all(p.requires_grad for p in base.values())  # still the learnable parameters
    assert adapter.feature_dim == EMBED_DIM
    assert adapter.image_features(torch.zeros(1, 3, 32, 32)).shape == (1, EMBED_DIM)
    assert detect_adapter(model) is adapter_cls  # the most specific layout wins (CoCoOp over CoOp)


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_host_prompts_give_the_host_logits(host, images):
    """A zero residual is the host: the logits under ``host_prompts`` are the host model's own."""
    module, adapter_cls, groups = HOSTS[host]
    model, cfg = build(module)
    adapter = adapter_cls(model, cfg)
    with torch.no_grad():
        expected = model(images)
        features = adapter.image_features(images)
        center = adapter.host_prompts(features)
        assert {k: tuple(v.shape) for k, v in center.items()} == {n: (len(images), t, w) for n, t, w in groups}
        got = adapter.logits(images, center, features)
    assert got.shape == (len(images), len(CLASSNAMES))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if host == "CoCoOp":  # the upstream per-image prompt: ctx + Meta-Net(feature), different per image
        with torch.no_grad():
            shift = adapter.meta_net()(features)
        torch.testing.assert_close(center["text"], model.prompt_learner.ctx + shift.unsqueeze(1))
        assert not torch.allclose(center["text"][0], center["text"][1])
    else:  # the shared prompts, for every image
        assert all(torch.equal(v[0], v[1]) for v in center.values())


def test_layer_tokens_hold_one_prompted_layer_each():
    model, cfg = build(ivlp)  # the default, DEEP_TOKENS layer
    vision = IVLPAdapter(model, cfg).base_prompts()["vision"]
    assert torch.equal(vision[0], model.image_encoder.VPT.flatten())
    assert torch.equal(vision[1], model.image_encoder.transformer.resblocks[1].VPT_shallow.flatten())


def test_vector_tokens_hold_one_prompt_vector_each(images):
    cfg = tiny_cfg()
    cfg.TRAINER.PD.DEEP_TOKENS = "vector"
    model, cfg = build(ivlp, cfg)
    adapter = IVLPAdapter(model, cfg)
    assert [tuple(g) for g in adapter.groups] == [("text", 2 * 2, TEXT_WIDTH), ("vision", 2 * 3, VISION_WIDTH)]
    vision = adapter.base_prompts()["vision"]
    assert torch.equal(vision[:3], model.image_encoder.VPT)
    assert torch.equal(vision[3:], model.image_encoder.transformer.resblocks[1].VPT_shallow)
    with torch.no_grad():
        got = adapter.logits(images, batched(adapter.base_prompts(), len(images)))
        torch.testing.assert_close(got, model(images), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_each_sample_sees_only_its_own_prompt(host, images):
    module, adapter_cls, _ = HOSTS[host]
    model, cfg = build(module)
    adapter = adapter_cls(model, cfg)
    prompts = batched(adapter.base_prompts(), len(images))
    with torch.no_grad():
        before = adapter.logits(images, prompts)
        for p in prompts.values():
            p[1] += 0.5 * torch.randn_like(p[1])
        after = adapter.logits(images, prompts)
    assert torch.equal(before[0], after[0])
    assert not torch.allclose(before[1], after[1])


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_host_loss_is_the_host_training_loss(host, images):
    module, adapter_cls, _ = HOSTS[host]
    model, cfg = build(module)
    adapter = adapter_cls(model, cfg)
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        expected = F.cross_entropy(model(images), labels)
    model.train()
    loss = adapter.host_loss((images, labels))
    assert loss.dim() == 0 and loss.requires_grad
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_host_loss_refuses_anything_but_a_parsed_batch(images):
    model, cfg = build(coop)
    adapter = CoOpAdapter(model, cfg)
    with pytest.raises(TypeError, match=r"CoOpAdapter\.host_loss .* parse_batch_train .* got a Tensor"):
        adapter.host_loss(images)  # a bare image tensor would otherwise be sliced into (image 0, image 1)
    with pytest.raises(TypeError, match="got 1 entries"):
        adapter.host_loss((images,))


def test_wrong_prompt_shapes_are_refused(images):
    model, cfg = build(coop)
    adapter = CoOpAdapter(model, cfg)
    with pytest.raises(ValueError, match=r"prompts\['text'\] has shape \(2, 3, 64\), expected \(2, 4, 64\)"):
        adapter.logits(images, {"text": torch.zeros(2, 3, TEXT_WIDTH)})
    with pytest.raises(ValueError, match="lack group 'text'"):
        adapter.logits(images, {"vision": torch.zeros(2, 4, TEXT_WIDTH)})


def test_class_specific_context_is_refused_with_a_reason():
    model, cfg = build(coop, tiny_cfg(COOP__CSC=True))
    with pytest.raises(PromptLayoutError, match="CSC=True"):
        CoOpAdapter(model, cfg)


class UnknownLayout(nn.Module):
    """A prompt learner whose context lives under another name."""

    def __init__(self):
        super().__init__()
        self.prompt_learner = nn.Module()
        self.prompt_learner.context = nn.Parameter(torch.zeros(4, 8))
        self.logit_scale = nn.Parameter(torch.zeros(()))


def test_unknown_layout_names_what_is_missing():
    with pytest.raises(PromptLayoutError, match=r"no 'prompt_learner\.ctx'|lacks \['prompt_learner\.ctx'"):
        CoCoOpAdapter(UnknownLayout())
    with pytest.raises(PromptLayoutError) as error:
        detect_adapter(UnknownLayout())
    message = str(error.value)
    for name in ("CoOp", "CoCoOp", "VPT", "IVLP"):
        assert f"{name}: missing" in message
    assert "prompt_learner.ctx" in message and "image_encoder.VPT" in message


def test_one_rule_chooses_the_adapter_and_a_conflict_is_an_error():
    """The adapter given in code wins over layout detection, the configured name is the command
    line's way, and code and config naming two different adapters is an error, not an override."""
    cfg = tiny_cfg()
    model = cocoop.CustomCLIP(cfg, CLASSNAMES, build_tiny_clip())
    assert choose_adapter(None, "auto", model) is CoCoOpAdapter  # the layout (CoCoOp's includes CoOp's)
    assert choose_adapter(CoOpAdapter, "auto", model) is CoOpAdapter  # code: CoOp's view of the same model
    assert choose_adapter(None, "CoOp", model) is CoOpAdapter  # config, by name
    assert choose_adapter(CoOpAdapter, "CoOp", model) is CoOpAdapter  # both, agreeing
    with pytest.raises(ValueError, match=r"TRAINER.PD.ADAPTER = 'CoCoOp', but the trainer was registered with the CoOp"):
        choose_adapter(CoOpAdapter, "CoCoOp", model)
