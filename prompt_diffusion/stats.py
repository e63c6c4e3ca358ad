"""Paired differences of two methods on the same images, with their standard errors (numpy only).

Method A and method B classified the same images; the difference of their accuracies is taken
image by image, and its standard error is that of the mean per-image difference. Several seeds
(each its own trained models, the same images) combine by ``combine_seeds``; independent parts
(the disjoint images of several test sets) by ``mean_of_independent``. Used by the results tables
(``results.paired``), the diagnosis of a PD model and the held-out check logged while it trains.
"""
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np


@dataclass
class PairedDifference:
    """Accuracy of A minus that of B on the same images, in points, with its standard error."""

    mean: float
    se: float  # standard error of the mean per-image difference (pooled over seeds)
    fixed: int = 0  # images B gets wrong and A right
    broken: int = 0  # images B gets right and A wrong
    images: int = 0
    seeds: int = 1
    per_seed: Tuple[float, ...] = ()  # the difference of each seed (its trained models), when pooled

    @property
    def seed_se(self) -> Optional[float]:
        """Standard error from the spread of the per-seed differences (``std / √S``, S ≥ 2): it also
        holds the training noise that the per-image SE leaves out."""
        if len(self.per_seed) < 2:
            return None
        return float(np.std(self.per_seed, ddof=1) / math.sqrt(len(self.per_seed)))

    def within_noise(self, k: float = 1.0) -> bool:
        """Whether ``|mean| <= k`` standard errors (the per-image one)."""
        return abs(self.mean) <= k * self.se

    def text(self) -> str:
        seeds = "" if self.seed_se is None else f" [seeds ± {self.seed_se:.2f}]"
        return f"{self.mean:+.2f} ± {self.se:.2f}{seeds}" + (" (within noise)" if self.within_noise() else "")


def paired_difference(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> PairedDifference:
    """The paired difference of two per-image correctness vectors of the same images, in points."""
    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired correctness must be two equal non-empty vectors, got {a.shape} and {b.shape}")
    diff = a - b  # [n] in {-1, 0, 1}
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    return PairedDifference(100.0 * float(diff.mean()), 100.0 * se, int((diff > 0).sum()), int((diff < 0).sum()),
                            len(diff))


def mean_of_independent(parts: Sequence[PairedDifference], seeds: int,
                         per_seed: Tuple[float, ...]) -> PairedDifference:
    """The mean of independent paired differences: SE ``sqrt(Σ SE_i²) / n``, counts summed."""
    n = len(parts)
    return PairedDifference(float(np.mean([d.mean for d in parts])), math.sqrt(sum(d.se ** 2 for d in parts)) / n,
                            sum(d.fixed for d in parts), sum(d.broken for d in parts), sum(d.images for d in parts),
                            seeds, per_seed)


def combine_seeds(per_seed: Sequence[PairedDifference]) -> PairedDifference:
    """The mean over seeds of their paired differences; SE ``sqrt(Σ SE_s²) / S`` (the test images'
    noise, each seed's trained models held fixed)."""
    if not per_seed:
        raise ValueError("combine_seeds needs at least one seed")
    return mean_of_independent(per_seed, sum(d.seeds for d in per_seed), tuple(d.mean for d in per_seed))
