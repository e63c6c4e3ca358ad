"""NoiseSchedule: reaches noise, t <-> σ round trips, fractional timesteps interpolate monotonically."""
import math

import pytest
import torch

from prompt_diffusion.diffusion import GRID_KINDS, NoiseSchedule


def test_default_schedule_reaches_noise():
    schedule = NoiseSchedule()
    assert schedule.steps == 100 and schedule.kind == "scaled_linear"
    assert schedule.alpha_bar.dtype == torch.float64 and schedule.alpha_bar.shape == (100,)
    assert schedule.alpha_bar[-1] <= 1e-3
    assert torch.all(schedule.alpha_bar[1:] < schedule.alpha_bar[:-1])
    # the scaled-linear rule: β from 1e-4·1000/T to 0.02·1000/T
    assert schedule.alpha_bar[0].item() == pytest.approx(1 - 1e-3)


def test_cosine_reaches_noise_and_linear_warns():
    assert NoiseSchedule(kind="cosine").alpha_bar[-1] <= 1e-3
    with pytest.warns(UserWarning, match="never reaches noise"):
        linear = NoiseSchedule(kind="linear")
    assert linear.alpha_bar[-1] > 0.3  # DESIGN §6: ≈ 0.36 at T=100
    with pytest.raises(ValueError, match="scaled_linear"):
        NoiseSchedule(kind="quadratic")


@pytest.mark.parametrize("kind", ["scaled_linear", "cosine"])
def test_timestep_sigma_round_trip(kind):
    schedule = NoiseSchedule(steps=100, kind=kind)
    t = torch.linspace(0, 99, 2001, dtype=torch.float64)
    assert torch.allclose(schedule.timestep(schedule.sigma(t)), t, atol=1e-8)
    log_range = (math.log(schedule.sigma_min), math.log(schedule.sigma_max))
    sigma = torch.exp(torch.linspace(*log_range, 500, dtype=torch.float64))
    assert torch.allclose(schedule.sigma(schedule.timestep(sigma)), sigma, rtol=1e-9)
    # float32 in -> float32 out, still close
    t32 = t.float()
    assert schedule.sigma(t32).dtype == torch.float32
    assert torch.allclose(schedule.timestep(schedule.sigma(t32)), t32, atol=1e-3)


def test_fractional_timesteps_interpolate_monotonically():
    schedule = NoiseSchedule()
    integer = torch.arange(100, dtype=torch.float64)
    table = torch.sqrt((1 - schedule.alpha_bar) / schedule.alpha_bar)
    assert torch.allclose(schedule.sigma(integer), table, rtol=1e-12)
    t = torch.linspace(0, 99, 9901, dtype=torch.float64)
    sigma = schedule.sigma(t)
    assert torch.all(sigma[1:] > sigma[:-1])
    # between two grid points σ stays between their table values, and log α is linear in t
    mid = schedule.sigma(torch.tensor([10.5], dtype=torch.float64))
    assert table[10] < mid < table[11]
    log_alpha = schedule.log_alpha_at(torch.tensor([10.25], dtype=torch.float64))
    expected = 0.75 * schedule.log_alpha[10] + 0.25 * schedule.log_alpha[11]
    assert log_alpha.item() == pytest.approx(expected.item())


def test_out_of_range_inputs_are_rejected():
    schedule = NoiseSchedule()
    with pytest.raises(ValueError, match=r"\[0, 99\]"):
        schedule.sigma(torch.tensor([100.0]))
    with pytest.raises(ValueError, match="sigma must lie"):
        schedule.timestep(torch.tensor([schedule.sigma_max * 2]))


@pytest.mark.parametrize("kind", GRID_KINDS)
def test_sigma_grids_run_from_max_to_min(kind):
    schedule = NoiseSchedule()
    grid = schedule.sigma_grid(6, kind)
    assert grid.shape == (6,) and grid.dtype == torch.float64
    assert grid[0] == schedule.sigma_max and grid[-1] == schedule.sigma_min
    assert torch.all(grid[1:] < grid[:-1])
    assert schedule.sigma_grid(1, kind).tolist() == [schedule.sigma_max]
