"""Samplers against an analytic target: Gaussian data, whose x0-denoiser is closed-form
(``prompt_diffusion.diffusion.analytic``): convergence orders, NFE counts, AMED distillation."""
import numpy as np
import pytest
import torch

from prompt_diffusion.diffusion import SAMPLERS, AMEDPredictor, NoiseSchedule, distill_amed, sample
from prompt_diffusion.diffusion.analytic import GaussianDenoiser
from prompt_diffusion.diffusion.noise import sample_seeds, seeded_noise_sampler

DIM = 16
SCHEDULE = NoiseSchedule()
MEAN = 0.3 * torch.randn(DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
STD = torch.linspace(0.2, 1.5, DIM, dtype=torch.float64)


def gaussian():
    return GaussianDenoiser(MEAN, STD, SCHEDULE)


def relative_error(out, reference):
    return ((out - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt()).item()


@pytest.fixture(scope="module")
def noise():
    return torch.randn(256, DIM, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.fixture(scope="module")
def distilled_predictor():
    """AMED predictor distilled (NFE=5) from DPM-Solver++(2M) on the Gaussian denoiser."""
    torch.manual_seed(0)
    predictor = AMEDPredictor(feature_dim=1, nfe=5).double()
    generator = torch.Generator().manual_seed(2)
    batches = ((gaussian(), torch.randn(64, DIM, generator=generator, dtype=torch.float64)) for _ in range(60))
    history = distill_amed(predictor, batches, SCHEDULE, teacher="dpmpp_2m", inserted=4, progress=False)
    assert history[-1] < 0.1 * history[0]
    return predictor


@pytest.mark.parametrize("sampler, order", [("ddim", 1.0), ("dpm_solver_2", 2.0), ("dpmpp_2m", 2.0)])
def test_ode_samplers_converge_at_their_order(sampler, order, noise):
    denoiser = gaussian()
    reference = denoiser.exact_sample(noise)
    nfes = [17, 33, 65, 129]
    errors = [relative_error(sample(denoiser, noise, SCHEDULE, sampler, nfe), reference) for nfe in nfes]
    assert errors[-1] < errors[0] / 2**order  # shrinking
    slope = np.polyfit(np.log(nfes), np.log(errors), 1)[0]
    assert -slope == pytest.approx(order, abs=0.25), f"{sampler}: errors {errors}, measured order {-slope:.2f}"


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("nfe", [1, 2, 3, 4, 5, 8])
def test_denoise_calls_equal_nfe(sampler, nfe, noise):
    denoiser = gaussian()
    predictor = AMEDPredictor(feature_dim=1, nfe=nfe).double() if sampler == "amed" else None
    out = sample(denoiser, noise[:4], SCHEDULE, sampler, nfe, seeded(4, 0), predictor)
    assert denoiser.calls == nfe
    assert out.shape == (4, DIM) and torch.isfinite(out).all()


def test_at_nfe5_dpmpp_and_distilled_amed_beat_ddim(noise, distilled_predictor):
    denoiser = gaussian()
    reference = denoiser.exact_sample(noise)

    def error_of(name, predictor=None):
        return relative_error(sample(denoiser, noise, SCHEDULE, name, 5, amed_predictor=predictor), reference)

    fresh = AMEDPredictor(feature_dim=1, nfe=5).double()  # r=0.5, c=1: DPM-Solver-2 steps with AFS
    error = {"ddim": error_of("ddim"), "dpmpp_2m": error_of("dpmpp_2m"), "amed": error_of("amed", distilled_predictor),
             "amed_untrained": error_of("amed", fresh)}
    assert error["dpmpp_2m"] < error["ddim"], error
    assert error["amed"] < error["ddim"], error
    assert error["amed"] < error["amed_untrained"] / 5, error


def test_amed_predictor_state_round_trips(tmp_path, noise, distilled_predictor):
    path = tmp_path / "amed.pt"
    torch.save(distilled_predictor.state_dict(), path)  # as the engine's checkpoints hold it
    loaded = AMEDPredictor(**distilled_predictor.config).to(next(distilled_predictor.parameters()).dtype)
    loaded.load_state_dict(torch.load(path, weights_only=True))
    denoiser = gaussian()
    first = sample(denoiser, noise, SCHEDULE, "amed", 5, amed_predictor=distilled_predictor)
    again = sample(denoiser, noise, SCHEDULE, "amed", 5, amed_predictor=loaded)
    assert torch.equal(first, again)


def test_solver_arithmetic_is_float32_for_low_precision_networks(noise):
    exact = gaussian()

    def bfloat16_network(x_t, t):
        assert x_t.dtype == torch.float32 and t.dtype == torch.float32
        return exact(x_t.double(), t.double()).to(torch.bfloat16)

    out = sample(bfloat16_network, noise.float(), SCHEDULE, "dpmpp_2m", 5)
    assert out.dtype == torch.float32
    reference = sample(exact, noise, SCHEDULE, "dpmpp_2m", 5)
    assert relative_error(out.double(), reference) < 2e-2


def seeded(n: int, seed: int):
    """ddpm's ancestral noise for ``n`` samples, seeded per sample (``diffusion.noise``)."""
    return seeded_noise_sampler(sample_seeds(seed, torch.arange(n)), DIM)


def test_ddpm_samples_the_data_distribution():
    """Ancestral sampling with the exact denoiser reproduces the data's mean and spread.

    (With x̂0 plugged into the posterior, each step's variance β̃ misses x0's posterior spread,
    a deficit that vanishes as the steps get finer: ≈9% at 100 steps, ≈3% at 400.)
    """
    denoiser = gaussian()
    x_T = torch.randn(4096, DIM, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = sample(denoiser, x_T, SCHEDULE, "ddpm", 400, seeded(4096, 4))
    s2, low = STD**2, SCHEDULE.sigma_min**2
    expected_std = s2 / (s2 + low).sqrt()  # spread of D(x̃(σ_min), σ_min)
    assert torch.allclose(out.mean(0), MEAN, atol=0.08)
    assert torch.allclose(out.std(0), expected_std, rtol=0.05)
    again = sample(denoiser, x_T[:8], SCHEDULE, "ddpm", 5, seeded(8, 5))
    assert torch.equal(again, sample(denoiser, x_T[:8], SCHEDULE, "ddpm", 5, seeded(8, 5)))
    assert not torch.equal(again, sample(denoiser, x_T[:8], SCHEDULE, "ddpm", 5, seeded(8, 6)))


def test_bad_requests_name_what_is_allowed(noise):
    denoiser = gaussian()
    with pytest.raises(ValueError, match="dpmpp_2m"):
        sample(denoiser, noise, SCHEDULE, "euler", 5)
    with pytest.raises(ValueError, match="needs amed_predictor"):
        sample(denoiser, noise, SCHEDULE, "amed", 5)
    with pytest.raises(ValueError, match="distilled for nfe=5"):
        sample(denoiser, noise, SCHEDULE, "amed", 7, amed_predictor=AMEDPredictor(1, nfe=5))
    with pytest.raises(ValueError, match="nfe must be"):
        sample(denoiser, noise, SCHEDULE, "ddim", 0)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampling_steps_read_no_scalar_back(sampler):
    """Inside the sampling loop no value is read back from a tensor (``.item()``, ``bool(t)``: on
    CUDA each is a host-device synchronisation): the profiler records no ``_local_scalar_dense``
    at NFE 5 or 10 (the grid's zeros are read once, as a list)."""
    from torch.profiler import ProfilerActivity, profile

    from prompt_diffusion.diffusion import PromptDenoiser

    denoiser = PromptDenoiser([("text", 2, 8)], cond_dim=4, layers=1, heads=2, width=8).eval()
    cond = torch.randn(3, 4)
    for nfe in (5, 10):
        predictor = AMEDPredictor(feature_dim=8, nfe=nfe) if sampler == "amed" else None
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = sample(denoiser.denoise_fn(cond), torch.randn(3, 16), SCHEDULE, sampler, nfe,
                         seeded_noise_sampler(torch.arange(3), 16), predictor)
        reads = [e.key for e in prof.events() if e.name in ("aten::_local_scalar_dense", "aten::item")]
        assert out.shape == (3, 16) and reads == [], f"{sampler} NFE {nfe}: {len(reads)} scalar reads"
