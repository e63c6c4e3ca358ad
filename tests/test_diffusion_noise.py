"""Per-sample seeded noise (``diffusion.noise``): a function of each sample's seed alone, normal, vectorised."""
import math
import random

import pytest
import torch

from prompt_diffusion.diffusion.noise import _mul32, hash32, sample_seeds, seeded_normal


def test_the_32_bit_arithmetic_is_exact_and_the_hash_a_bijection():
    values = torch.tensor([random.Random(0).getrandbits(32) for _ in range(2000)] + [0, 2 ** 32 - 1])
    for constant in (0x7FEB352D, 0x846CA68B):  # below and above 2^31
        assert _mul32(values, constant).tolist() == [(int(v) * constant) % 2 ** 32 for v in values]
    hashed = hash32(torch.arange(1 << 16))
    assert len(set(hashed.tolist())) == 1 << 16 and int(hashed.max()) < 2 ** 32


def test_a_sample_draws_the_same_noise_in_any_batch_and_another_seed_other_noise():
    seeds = sample_seeds(7, torch.tensor([3, 11, 12]))
    batch = seeded_normal(seeds, 37)
    alone = seeded_normal(sample_seeds(7, torch.tensor([11])), 37)
    assert batch.shape == (3, 37) and batch.dtype == torch.float32
    assert torch.equal(batch[1], alone[0])
    assert not torch.allclose(batch[1], batch[2])  # neighbouring indices
    assert not torch.allclose(batch[0], seeded_normal(sample_seeds(8, torch.tensor([3])), 37)[0])  # another NOISE_SEED
    assert not torch.allclose(batch[0], seeded_normal(sample_seeds(7, torch.tensor([3]), draw=1), 37)[0])  # another draw
    assert not torch.allclose(batch, seeded_normal(seeds, 37, stream=1))  # another stream (ddpm's steps)


def test_the_noise_is_standard_normal_and_uncorrelated_across_samples_and_coordinates():
    noise = seeded_normal(sample_seeds(0, torch.arange(400)), 2000).double()  # [400, 2000]
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.std()) - 1.0) < 0.01
    assert abs(float((noise ** 4).mean()) - 3.0) < 0.05  # the normal's fourth moment
    for rows in (noise, noise.T[:400]):  # samples; coordinates
        correlation = torch.corrcoef(rows)
        off_diagonal = correlation[~torch.eye(len(rows), dtype=torch.bool)]
        expected = 1.0 / math.sqrt(rows.shape[1])  # the spread of a correlation of independent variables
        assert float(off_diagonal.std()) == pytest.approx(expected, rel=0.05)


def test_bad_seeds_are_refused():
    with pytest.raises(ValueError, match="1-D tensor of integers >= 0"):
        sample_seeds(0, torch.tensor([-1]))
    with pytest.raises(ValueError, match=r"seeds must be \[B\]"):
        seeded_normal(torch.zeros(2, 2, dtype=torch.long), 4)
