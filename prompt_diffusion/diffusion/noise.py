"""Per-sample seeded noise, vectorised: sample ``b``'s noise depends on its own seed only.

Inference must give an image the same prompt whatever batch it sits in and wherever it sits in
the evaluation, so its noise is a function of a per-sample seed (the dataset index of the image and
``TRAINER.PD.NOISE_SEED``, mixed by ``sample_seeds``), never of a running random stream. One
``torch.Generator`` per sample in a Python loop would do it slowly; here the noise is a
counter-based generator (as JAX's threefry and Philox are): every coordinate is a hash of
``(seed, stream, coordinate)``, computed for the whole batch at once in integer tensor arithmetic,
and turned into normal variates by the Box-Muller transform. ``stream`` separates the noises one
sample needs: the start of the reverse process (stream 0) and ``ddpm``'s ancestral noise at step
``i`` (stream ``i + 1``).

The hash is Chris Wellons' ``lowbias32`` (a bijection of 32-bit integers with a strong avalanche),
evaluated in int64 tensors: a constant above 2³¹ is split off its top bit, so no product leaves
int64's range.
"""
from typing import Callable

import torch
from torch import Tensor

__all__ = ["hash32", "sample_seeds", "seeded_normal", "seeded_noise_sampler"]

_MASK32 = 0xFFFFFFFF


def _mul32(x: Tensor, constant: int) -> Tensor:
    """``(x · constant) mod 2³²`` for int64 ``x`` in ``[0, 2³²)`` and a 32-bit ``constant``: below 2³¹
    the product fits int64; above, ``x · 2³¹ mod 2³²`` is the lowest bit of ``x`` moved to bit 31."""
    if constant < 1 << 31:
        return (x * constant) & _MASK32
    return (x * (constant - (1 << 31)) + ((x & 1) << 31)) & _MASK32


def hash32(x: Tensor) -> Tensor:
    """``lowbias32``: a well-mixing bijection of 32-bit values (int64 tensors in ``[0, 2³²)``)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mix(state: Tensor, value) -> Tensor:
    """Fold ``value`` (an int or an int64 tensor in ``[0, 2³²)``) into the hash ``state``."""
    return hash32(state ^ hash32(torch.as_tensor(value, dtype=torch.int64, device=state.device) + 0x9E3779B9))


def sample_seeds(base_seed: int, indices: Tensor, draw: int = 0) -> Tensor:
    """One 32-bit seed per sample ``[B]`` (int64) from ``base_seed`` (``TRAINER.PD.NOISE_SEED``), the
    samples' ``indices`` ``[B]`` (their dataset indices) and ``draw`` (the Monte-Carlo draw)."""
    indices = torch.as_tensor(indices, dtype=torch.int64)
    if indices.dim() != 1 or (indices < 0).any():
        raise ValueError(f"sample indices must be a 1-D tensor of integers >= 0, got {indices.tolist()}")
    state = hash32(torch.full_like(indices, int(base_seed) & _MASK32))
    state = _mix(state, (int(base_seed) >> 32) & _MASK32)
    return _mix(_mix(_mix(state, indices & _MASK32), indices >> 32), int(draw) & _MASK32)


def seeded_normal(seeds: Tensor, numel: int, stream: int = 0) -> Tensor:
    """Standard normal noise ``[B, numel]`` (float32, on ``seeds``' device): row ``b`` is a function of
    ``seeds[b]`` and ``stream`` only, the same in any batch."""
    seeds = torch.as_tensor(seeds, dtype=torch.int64)
    if seeds.dim() != 1:
        raise ValueError(f"seeds must be [B], got shape {list(seeds.shape)}")
    pairs = (int(numel) + 1) // 2
    key = _mix(seeds & _MASK32, int(stream) & _MASK32)[:, None]  # [B, 1]
    counters = hash32(torch.arange(2 * pairs, dtype=torch.int64, device=seeds.device) + 0x632BE5AB)  # [2P]
    bits = hash32(key ^ counters[None, :])  # [B, 2P] uniform 32-bit words
    uniform = ((bits >> 8).float() + 0.5) * 2.0 ** -24  # 24 bits, in (0, 1)
    radius = torch.sqrt(-2.0 * torch.log(uniform[:, :pairs]))  # [B, P]
    angle = 2.0 * torch.pi * uniform[:, pairs:]  # [B, P]
    normal = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)  # [B, 2P]
    return normal[:, :numel]


def seeded_noise_sampler(seeds: Tensor, numel: int) -> Callable[[int], Tensor]:
    """``noise(step) -> [B, numel]``: the ancestral noise of sampler step ``step`` (stream ``step + 1``;
    stream 0 is the start noise), for ``samplers.sample``'s ``noise_sampler``."""
    return lambda step: seeded_normal(seeds, numel, stream=step + 1)
