"""TRAINER.PD.GENERATOR: the prompt generators of the paper's Table 4 behind one interface.

Synthetic (no CLIP): a target whose conditional distribution given π has two modes, ``r = A·π ±
2·u + small noise``. The regressors (mlp, transformer) converge to the conditional mean A·π (half
way between the modes); the generative models (diffusion, gan, vae, flow) put most samples near a
mode. The measured statistic: ``s = (sample − A·π)·u / 2`` (modes at ±1, the mean at 0), and the
fraction of samples with ``| |s| − 1 | < 0.5``.

Through the wrapper (tiny CLIP, generated images): every generator trains, checkpoints, reloads
in a fresh trainer and evaluates with exactly reproducible inference (CoCoOp); every generator
trains a step and samples on the layouts of CoOp, VPT and IVLP (text and vision prompts of two
widths).
"""
import pytest
import torch

from helpers import assert_one_step_moves_the_generator_and_inference_is_finite, inference
from prompt_diffusion.generator_registry import GENERATORS, build_generator, generator_config
from prompt_diffusion.wrapper import PD_MODEL_NAME
from test_wrapper import CLASSNAMES, build, make_cfg, world  # noqa: F401,F811  (world: a fixture)

GROUPS = [("text", 2, 4)]
COND_DIM = 4
REGRESSORS = ("mlp", "transformer")
GENERATIVE = ("diffusion", "gan", "vae", "flow")
TRAINING = {"mlp": (2, 300, 2e-3), "transformer": (1, 300, 2e-3), "diffusion": (1, 300, 2e-3),
            "gan": (2, 800, 1e-3), "vae": (2, 300, 2e-3), "flow": (2, 800, 2e-3)}  # (layers, steps, Adam lr)


def test_every_kind_is_registered():
    assert set(GENERATORS) == set(REGRESSORS + GENERATIVE)


def two_modes(n: int, generator: torch.Generator):
    """π ``[n, 4]`` and raw targets ``{"text": [n, 2, 4]}``: A·π ± 2·u (a fair coin) + 0.05·noise."""
    g0 = torch.Generator().manual_seed(0)
    weights = 0.5 * torch.randn(8, COND_DIM, generator=g0)
    direction = torch.nn.functional.normalize(torch.randn(8, generator=g0), dim=0)
    cond = torch.randn(n, COND_DIM, generator=generator)
    sign = torch.randint(0, 2, (n, 1), generator=generator).float() * 2 - 1
    target = cond @ weights.T + 2 * sign * direction + 0.05 * torch.randn(n, 8, generator=generator)
    return cond, {"text": target.view(n, 2, 4)}, weights, direction


@pytest.fixture(scope="module", params=REGRESSORS + GENERATIVE)
def mode_statistic(request):
    """(kind, fraction of samples near a mode, mean |s|) of a generator trained on ``two_modes``."""
    kind = request.param
    torch.manual_seed(0)
    layers, steps, lr = TRAINING[kind]
    model = build_generator(generator_config(kind, GROUPS, COND_DIM, layers=layers, heads=2, width=32,
                                             timesteps=100, schedule="scaled_linear", kl_weight=1.0))
    parameters = list(model.parameters()) + [p for part in model.parts().values() for p in part.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=lr)
    generator = torch.Generator().manual_seed(1)
    cond, targets, weights, direction = two_modes(4096, generator)
    center = {"text": torch.zeros_like(targets["text"])}
    model.update_scale(targets)
    for _ in range(steps):
        rows = torch.randint(0, len(cond), (128,), generator=generator)
        loss, _ = model.loss({"text": targets["text"][rows]}, {"text": center["text"][rows]}, cond[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    cond, _, _, _ = two_modes(512, torch.Generator().manual_seed(2))
    noise = torch.randn(512, model.noise_dim, generator=torch.Generator().manual_seed(3))
    options = {"sampler": "dpmpp_2m", "nfe": 10} if kind == "diffusion" else {}
    samples = model.generate(cond, {"text": torch.zeros(512, 2, 4)}, noise, **options)["text"].reshape(512, 8)
    s = (samples - cond @ weights.T) @ direction / 2
    return kind, float(((s.abs() - 1).abs() < 0.5).float().mean()), float(s.abs().mean())


def test_regressors_give_the_conditional_mean_and_generative_models_the_modes(mode_statistic):
    kind, near_mode, mean_abs = mode_statistic
    if kind in REGRESSORS:
        assert near_mode < 0.1 and mean_abs < 0.3, (kind, near_mode, mean_abs)
    else:
        assert near_mode > 0.6, (kind, near_mode, mean_abs)


# ---------------------------------------------------------------------- through the wrapper
@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_each_generator_trains_checkpoints_reloads_and_evaluates_reproducibly(kind, world, tmp_path, capsys):
    out = tmp_path / "run"
    opts = ["TRAINER.PD.GENERATOR", kind, "TRAINER.PD.SAMPLER", "dpmpp_2m"]
    trainer = build(make_cfg(world, "CoCoOpPD", out, opts, epochs=1))
    trainer.train()
    log = capsys.readouterr().out
    assert f"generator {kind} (" in log and "residual gain calibrated" in log
    assert trainer.get_model_names()[-1] == PD_MODEL_NAME
    assert set(trainer.pd.parts) == ({"discriminator"} if kind == "gan" else set())
    assert trainer.pd.amed is None  # dpmpp_2m: no predictor
    saved = torch.load(out / PD_MODEL_NAME / "model.pth.tar-1", map_location="cpu", weights_only=True)
    assert saved["state_dict"]["generator._extra_state"]["kind"] == kind
    trained = {k: v.clone() for k, v in trainer.pd.state_dict().items() if isinstance(v, torch.Tensor)}
    assert any(v.abs().sum() > 0 for k, v in trained.items() if k.startswith("generator.") and k.endswith("weight"))

    evaluator = build(make_cfg(world, "CoCoOpPD", tmp_path / "eval", opts, epochs=1))
    evaluator.load_model(str(out), epoch=1)
    for key, value in evaluator.pd.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, trained[key]), key  # weights, scale, calibrated gain (the GAN's discriminator too)
    batch = next(iter(trainer.test_loader))
    logits = []
    for model in (trainer, evaluator, evaluator):
        model.set_model_mode("eval")
        logits.append(inference(model, batch))
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[1], logits[2])
    assert logits[0].shape == (len(batch["label"]), len(CLASSNAMES))


# the layouts the other single-model hosts give a generator: CoOp one text group (π from the wrapper's
# Meta-Net), VPT deep visual prompts, IVLP text and vision prompts of two widths
HOST_GROUPS = {"CoOpPD": ["text"], "VPTPD": ["vision"], "IVLPPD": ["text", "vision"]}


@pytest.mark.parametrize("kind", sorted(GENERATORS))
@pytest.mark.parametrize("host", sorted(HOST_GROUPS))
def test_each_generator_trains_a_step_and_samples_on_every_host_layout(host, kind, world, tmp_path):
    trainer = build(make_cfg(world, host, tmp_path / "run", ["TRAINER.PD.GENERATOR", kind,
                                                              "TRAINER.PD.SAMPLER", "dpmpp_2m"]))
    assert [g[0] for g in trainer.pd.generator.layout.groups] == HOST_GROUPS[host]
    assert_one_step_moves_the_generator_and_inference_is_finite(trainer)
