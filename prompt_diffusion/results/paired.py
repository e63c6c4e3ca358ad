"""Paired differences of runs: accuracy of one run minus another's on the same images.

A row with a host row (``CoCoOpPD`` beside ``CoCoOp``) gets its *paired* difference to the host:
both runs of a seed evaluated the same images (``predictions_<split>.json``, written by ``test``),
so the difference is taken image by image (``prompt_diffusion.stats``), pooled over seeds there.
"""
from pathlib import Path
from typing import Optional, Tuple

from prompt_diffusion.stats import PairedDifference, combine_seeds, mean_of_independent, paired_difference

__all__ = ["PairedDifference", "combine_seeds", "mean_of_independent", "paired_difference", "paired_runs"]


def paired_runs(run_a: Path, run_b: Path, split: str = "test",
                domain: Optional[int] = None) -> Tuple[Optional[PairedDifference], str]:
    """The paired difference of two runs' predictions on ``split`` (the images of ``domain`` only,
    when given), or ``(None, why not)``."""
    from prompt_diffusion.engine.predictions import read_predictions

    a, b = read_predictions(str(run_a), split), read_predictions(str(run_b), split)
    for run, found in ((run_a, a), (run_b, b)):
        if found is None:
            return None, f"{run} has no predictions_{split}.json"
    try:
        a, b = a.of_domain(domain), b.of_domain(domain)
    except ValueError as error:
        return None, str(error)
    if not a.labels:
        return None, f"{run_a} has no test image of domain {domain}"
    if a.images_sha1 != b.images_sha1 or a.labels != b.labels:
        return None, f"{run_a} and {run_b} did not evaluate the same images"
    return paired_difference(a.correct, b.correct), ""
