"""PromptDenoiser: layout, normalization, checkpoints, and fitting a small conditional dataset."""
import pytest
import torch

from prompt_diffusion.diffusion import SAMPLERS, AMEDPredictor, PromptDenoiser, StudentCheck, distill_amed
from prompt_diffusion.generators import PromptLayout
from prompt_diffusion.diffusion.noise import seeded_noise_sampler
from prompt_diffusion.generator_registry import build_generator

GROUPS = [("text", 2, 8), ("vision", 3, 12)]
COND_DIM = 6


def tiny_denoiser():
    return PromptDenoiser(GROUPS, COND_DIM, layers=2, heads=4, width=64)


def random_prompts(batch, generator=None):
    return {name: torch.randn(batch, n, w, generator=generator) for name, n, w in GROUPS}


def test_layout_flattens_and_rejects_wrong_shapes():
    layout = PromptLayout(GROUPS)
    prompts = random_prompts(3)
    flat = layout.flatten(prompts)
    assert flat.shape == (3, 2 * 8 + 3 * 12) and layout.numel == 52
    back = layout.unflatten(flat)
    assert all(torch.equal(back[name], prompts[name]) for name in prompts)
    with pytest.raises(ValueError, match="'vision' has shape"):
        layout.flatten({"text": prompts["text"], "vision": torch.zeros(3, 3, 11)})
    with pytest.raises(ValueError, match="do not match"):
        layout.flatten({"text": prompts["text"]})
    with pytest.raises(ValueError, match="unique"):
        PromptLayout([("text", 2, 8), ("text", 1, 4)])


def test_forward_shapes_zero_init_and_hidden():
    model = tiny_denoiser()
    prompts, cond = random_prompts(5), torch.randn(5, COND_DIM)
    out, hidden = model(prompts, cond, torch.full((5,), 12.5), return_hidden=True)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"text": (5, 2, 8), "vision": (5, 3, 12)}
    assert hidden.shape == (5, 1 + 1 + 2 + 3, 64)
    assert all(torch.count_nonzero(v) == 0 for v in out.values())  # zero-initialised output maps
    with pytest.raises(ValueError, match=r"cond must be \[B, 6\]"):
        model(prompts, torch.randn(5, 4), torch.zeros(5))


def centers_of(prompts, value=0.0):
    return {name: torch.full_like(v, value) for name, v in prompts.items()}


def test_normalization_is_the_scaled_residual_from_a_per_sample_center():
    model = tiny_denoiser()
    raw = {name: 3.0 + 0.5 * v for name, v in random_prompts(64).items()}
    center = {name: v + 0.1 * torch.randn_like(v) for name, v in raw.items()}  # a different centre per sample
    model.update_scale({name: raw[name] - center[name] for name in raw})
    normalized = model.normalize(raw, center)
    for name in raw:
        assert normalized[name].pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-4)
        assert torch.allclose(model.denormalize(normalized, center)[name], raw[name], atol=1e-5)
    zero = {name: torch.zeros_like(v) for name, v in raw.items()}
    assert all(torch.equal(model.denormalize(zero, center)[name], center[name]) for name in raw)  # zero: the centre
    before = model.text_scale.clone()
    model.update_scale({name: 3.0 * (raw[name] - center[name]) for name in raw}, momentum=0.5)
    assert model.text_scale.item() == pytest.approx(0.5 * before.item() + 0.5 * 3.0 * before.item(), rel=1e-4)


def test_state_round_trips_through_weights_only_load(tmp_path):
    """The state dict carries the config (as extra state): build_generator rebuilds the model from
    it, the path the wrapper's checkpoints take; another architecture is refused."""
    model = tiny_denoiser()
    model.update_scale({name: v + 1 for name, v in random_prompts(16).items()})
    torch.nn.init.normal_(model.net.proj_out["text"].weight)
    path = tmp_path / "denoiser.pt"
    torch.save(model.state_dict(), path)
    state = torch.load(path, weights_only=True)
    loaded = build_generator(state["_extra_state"])
    loaded.load_state_dict(state)
    prompts, cond, t = random_prompts(2), torch.randn(2, COND_DIM), torch.tensor([3.0, 77.25])
    assert torch.equal(loaded(prompts, cond, t)["text"], model(prompts, cond, t)["text"])
    assert torch.equal(loaded.vision_scale, model.vision_scale)
    other = PromptDenoiser(GROUPS, COND_DIM, layers=2, heads=4, width=64, schedule="cosine")
    with pytest.raises(ValueError, match=r"generator differs .*'schedule': \('scaled_linear', 'cosine'\)"):
        other.load_state_dict(state)


def test_loss_returns_the_raw_prediction_with_its_graph():
    model = tiny_denoiser()
    raw = {name: 5.0 + v for name, v in random_prompts(8).items()}
    center = centers_of(raw, 5.0)
    model.update_scale({name: raw[name] - center[name] for name in raw})
    loss, predicted = model.loss(raw, center, torch.randn(8, COND_DIM), torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(1.0, rel=0.05)  # zero-initialised output: predicts a zero residual
    assert torch.allclose(predicted["text"], center["text"])  # ... the centre, in raw space
    predicted["vision"].sum().backward()
    assert model.net.proj_out["vision"].weight.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def conditional_fit():
    """A denoiser trained on 4 conditions, each with its own target prompt (plus small noise)."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    conds = torch.randn(4, COND_DIM, generator=generator)
    targets = {
        "text": 1.0 + 0.5 * torch.randn(4, 2, 8, generator=generator),
        "vision": 2.0 * torch.randn(4, 3, 12, generator=generator),
    }
    labels = torch.arange(4).repeat(16)

    def batch():
        cond = conds[labels] + 0.05 * torch.randn(len(labels), COND_DIM)
        return cond, {name: v[labels] + 0.02 * torch.randn_like(v[labels]) for name, v in targets.items()}

    model = tiny_denoiser()
    cond, prompts = batch()
    center = {name: v.mean(0, keepdim=True).expand_as(v) for name, v in prompts.items()}
    model.update_scale({name: prompts[name] - center[name] for name in prompts})

    def held_out_loss():
        with torch.no_grad():
            return model.loss(prompts, center, cond, torch.Generator().manual_seed(1))[0].item()

    before = held_out_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(150):
        train_cond, train_prompts = batch()
        loss, _ = model.loss(train_prompts, center, train_cond)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    return model, conds, targets, before, held_out_loss(), {name: v[:4] for name, v in center.items()}


def test_denoiser_fits_a_conditional_dataset(conditional_fit):
    _, _, _, before, after, _ = conditional_fit
    assert after < before / 10, (before, after)


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s != "amed"])
def test_sampled_prompts_depend_on_the_condition(conditional_fit, sampler):
    model, conds, targets, _, _, center = conditional_fit
    noise = torch.randn(4, model.layout.numel, generator=torch.Generator().manual_seed(0))
    out = model.generate(conds, center, noise, sampler=sampler, nfe=5,
                         noise_sampler=seeded_noise_sampler(torch.arange(4), model.layout.numel))
    assert out["text"].dtype == torch.float32 and out["vision"].shape == (4, 3, 12)
    # each condition's sample is far closer to its own target than to any other condition's
    distance = sum(torch.cdist(out[name].flatten(1), targets[name].flatten(1)) for name in targets)  # [4, 4]
    assert torch.equal(distance.argmin(dim=1), torch.arange(4))
    off_diagonal = distance[~torch.eye(4, dtype=torch.bool)]
    assert distance.diagonal().max() < 0.2 * off_diagonal.min()


def test_amed_distils_on_the_denoiser_without_touching_its_gradients(conditional_fit):
    model, conds, _, _, _, center = conditional_fit
    predictor = AMEDPredictor(feature_dim=64, nfe=5)
    generator = torch.Generator().manual_seed(3)
    batches = [(model.denoise_fn(conds), torch.randn(4, model.layout.numel, generator=generator)) for _ in range(3)]
    history = distill_amed(predictor, batches, model.schedule, progress=False)
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(history)))
    assert all(p.grad is None for p in model.parameters())
    out = model.generate(conds, center, torch.randn(4, model.layout.numel), sampler="amed", nfe=5,
                         amed_predictor=predictor)
    assert torch.isfinite(out["text"]).all()


def test_amed_distillation_brings_the_student_closer_to_its_teacher_on_held_out_conditions(conditional_fit, capsys):
    """The point of distillation: from the same noise, the student's sample moves towards the
    teacher's (dpmpp_2m with inserted points) on conditions and noise it was not distilled on."""
    model, conds, _, _, _, _ = conditional_fit
    generator = torch.Generator().manual_seed(5)

    def conditions(count):  # near the 4 trained conditions, as images of the same classes would be
        return conds[torch.randint(4, (count,), generator=generator)] + 0.05 * torch.randn(count, COND_DIM,
                                                                                         generator=generator)

    held_out, noise = conditions(32), torch.randn(32, model.layout.numel, generator=generator)
    check = StudentCheck(model.denoise_fn(held_out), noise, model.schedule)
    predictor = AMEDPredictor(feature_dim=64, nfe=4)
    before = check(predictor)
    batches = [(model.denoise_fn(conditions(16)), torch.randn(16, model.layout.numel, generator=generator))
               for _ in range(30)]
    distill_amed(predictor, batches, model.schedule, progress=False, log_every=10)
    after = check(predictor)
    assert after < 0.5 * before, (before, after)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("distil AMED (NFE=4): batch ")]
    assert [line.split(",")[0] for line in lines] == [f"distil AMED (NFE=4): batch {n}" for n in (10, 20, 30)]
    # with the check, the predictor keeps the weights closest to the teacher, the fresh ones included
    checked = AMEDPredictor(feature_dim=64, nfe=4)
    distill_amed(checked, batches[:7], model.schedule, lr=0.5, progress=False, check=check, check_every=3)
    unchecked = AMEDPredictor(feature_dim=64, nfe=4)
    distill_amed(unchecked, batches[:7], model.schedule, lr=0.5, progress=False)
    assert check(checked) <= min(before, check(unchecked))
