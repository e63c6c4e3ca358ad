"""The prompted CLIP forward: equals CLIP without prompts, exact truncation and chunking, upstream placement."""
import clip
import pytest
import torch

from prompt_diffusion import clip_prompting as cp
from prompt_diffusion.backbones import build_tiny_clip

WIDTH = 64  # text and vision width of the tiny CLIP
N_CTX = 3
PROMPTS = ["a photo of a dog.", "a cat", "a big red fire truck parked on the road.", "x"]


@pytest.fixture(scope="module")
def model():
    return build_tiny_clip(transformer_layers=3, vision_layers=3)


def _template(model, n_ctx):
    """Tokenized class prompts with ``n_ctx`` placeholder slots after SOS, and their prefix/suffix."""
    tokenized = clip.tokenize([" ".join(["X"] * n_ctx + [p]) for p in PROMPTS])
    prefix, suffix = cp.split_prompt_embeddings(model.token_embedding, tokenized, n_ctx)
    return tokenized, prefix, suffix


def _reference_text(model, embeddings, tokenized, deep):
    """Upstream fork semantics at full length 77: each block's own forward (and own 77x77 mask)."""
    x = (embeddings + model.positional_embedding).permute(1, 0, 2)
    for i, block in enumerate(model.transformer.resblocks):
        if 1 <= i <= len(deep):
            prompt = deep[i - 1].expand(x.shape[1], -1, -1).permute(1, 0, 2)
            x = torch.cat([x[:1], prompt, x[1 + prompt.shape[0]:]], dim=0)
        x = block(x)
    x = model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), tokenized.argmax(-1)] @ model.text_projection


def _reference_image(model, images, shallow, deep):
    """Upstream VPT/IVLP VisionTransformer.forward: prompts after the positional embedding, before ln_pre."""
    visual = model.visual
    x = visual.conv1(images).flatten(2).permute(0, 2, 1)
    cls = visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding
    x = torch.cat([x, shallow.expand(x.shape[0], -1, -1)], dim=1)
    x = visual.ln_pre(x).permute(1, 0, 2)
    for i, block in enumerate(visual.transformer.resblocks):
        if 1 <= i <= len(deep):
            prompt = deep[i - 1].expand(x.shape[1], -1, -1).permute(1, 0, 2)
            x = torch.cat([x[: x.shape[0] - prompt.shape[0]], prompt], dim=0)
        x = block(x)
    return visual.ln_post(x[0]) @ visual.proj


@torch.no_grad()
def test_without_prompts_equals_clip(model):
    tokenized, prefix, suffix = _template(model, 0)
    images = torch.randn(2, 3, 32, 32)
    for truncate in (False, True):
        text = cp.encode_prompted_text(model, prefix, suffix, tokenized, torch.zeros(0, WIDTH), truncate=truncate)
        assert (text - model.encode_text(tokenized)).abs().max() <= 1e-5
    assert torch.equal(cp.encode_image(model.visual, images), model.encode_image(images))


@torch.no_grad()
def test_resnet_image_encoder_runs_without_prompts_only():
    from clip.model import CLIP

    torch.manual_seed(0)
    rn = CLIP(64, 64, (1, 1, 1, 1), 32, None, 77, 49408, 64, 1, 1).eval()
    images = torch.randn(2, 3, 64, 64)
    assert torch.equal(cp.encode_image(rn.visual, images), rn.encode_image(images))
    with pytest.raises(ValueError, match="ViT"):
        cp.encode_image(rn.visual, images, shallow=torch.zeros(2, 32))


@torch.no_grad()
def test_shallow_and_deep_text_prompts_follow_upstream_and_truncation_is_exact(model):
    tokenized, prefix, suffix = _template(model, N_CTX)
    ctx = torch.randn(N_CTX, WIDTH) * 0.02
    deep = [torch.randn(N_CTX, WIDTH) * 0.02 for _ in range(2)]
    embeddings = torch.cat([prefix, ctx.expand(len(PROMPTS), -1, -1), suffix], dim=1)
    reference = _reference_text(model, embeddings, tokenized, deep)
    full = cp.encode_prompted_text(model, prefix, suffix, tokenized, ctx, deep, truncate=False)
    truncated = cp.encode_prompted_text(model, prefix, suffix, tokenized, ctx, deep, truncate=True)
    assert cp.truncated_length(tokenized) < 20  # the test really truncates
    assert (full - reference).abs().max() <= 1e-5
    assert (truncated - reference).abs().max() <= 1e-5
    # the deep prompts matter
    assert (cp.encode_prompted_text(model, prefix, suffix, tokenized, ctx) - reference).abs().max() > 1e-3


@torch.no_grad()
def test_per_sample_prompts_chunked_equal_unchunked_and_equal_prompts_give_shared(model):
    tokenized, prefix, suffix = _template(model, N_CTX)
    n_batch = 3
    ctx = torch.randn(n_batch, N_CTX, WIDTH) * 0.02
    deep = [torch.randn(n_batch, N_CTX, WIDTH) * 0.02]
    whole = cp.encode_prompted_text(model, prefix, suffix, tokenized, ctx, deep)
    assert whole.shape == (n_batch, len(PROMPTS), WIDTH)
    for chunk in (1, 5):
        chunked = cp.encode_prompted_text(model, prefix, suffix, tokenized, ctx, deep, chunk_size=chunk)
        assert (chunked - whole).abs().max() <= 1e-5
    for b in range(n_batch):  # row b is the shared-prompt result for prompt b
        shared = cp.encode_prompted_text(model, prefix, suffix, tokenized, ctx[b], [deep[0][b]])
        assert (whole[b] - shared).abs().max() <= 1e-5
    same = cp.encode_prompted_text(model, prefix, suffix, tokenized, ctx[:1].expand(n_batch, -1, -1),
                                   [deep[0][:1].expand(n_batch, -1, -1)], chunk_size=2)
    assert (same - whole[0]).abs().max() <= 1e-5


def test_per_sample_gradient_reaches_only_its_own_prompt(model):
    tokenized, prefix, suffix = _template(model, N_CTX)
    ctx = (torch.randn(2, N_CTX, WIDTH) * 0.02).requires_grad_()
    text = cp.encode_prompted_text(model, prefix, suffix, tokenized, ctx, chunk_size=3)
    text[1].sum().backward()
    assert ctx.grad[0].abs().max() == 0 and ctx.grad[1].abs().max() > 0


@torch.no_grad()
def test_visual_prompts_follow_upstream_shared_and_per_sample(model):
    images = torch.randn(3, 3, 32, 32)
    shallow = torch.randn(N_CTX, WIDTH) * 0.02
    deep = [torch.randn(N_CTX, WIDTH) * 0.02 for _ in range(2)]
    reference = _reference_image(model, images, shallow, deep)
    assert (cp.encode_image(model.visual, images, shallow, deep) - reference).abs().max() <= 1e-5
    per_sample = cp.encode_image(model.visual, images, shallow.expand(3, -1, -1), [d.expand(3, -1, -1) for d in deep])
    assert (per_sample - reference).abs().max() <= 1e-5
    assert (cp.encode_image(model.visual, images) - reference).abs().max() > 1e-3


def test_bad_prompts_are_refused(model):
    tokenized, prefix, suffix = _template(model, N_CTX)
    ctx = torch.zeros(N_CTX, WIDTH)
    with pytest.raises(ValueError, match="at most 2 deep prompts"):
        cp.encode_prompted_text(model, prefix, suffix, tokenized, ctx, [ctx] * 3)
    with pytest.raises(ValueError, match="must be equal"):
        cp.encode_prompted_text(model, prefix, suffix, tokenized, ctx, [torch.zeros(2, WIDTH)])
    with pytest.raises(ValueError, match="need a per-sample ctx"):
        cp.encode_prompted_text(model, prefix, suffix, tokenized, ctx, [torch.zeros(2, N_CTX, WIDTH)])
    with pytest.raises(ValueError, match="same n_ctx"):
        cp.encode_prompted_text(model, prefix, suffix, tokenized, torch.zeros(2, WIDTH))
    with pytest.raises(ValueError, match="need shallow"):
        cp.encode_image(model.visual, torch.zeros(1, 3, 32, 32), None, [ctx])


def test_prompted_logits_shapes(model):
    image = torch.randn(2, WIDTH)
    shared = cp.prompted_logits(image, torch.randn(5, WIDTH), model.logit_scale)
    per_sample = cp.prompted_logits(image, torch.randn(2, 5, WIDTH), model.logit_scale)
    assert shared.shape == per_sample.shape == (2, 5)
    assert shared.abs().max() <= model.logit_scale.exp() + 1e-4
