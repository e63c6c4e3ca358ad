"""Per-image predictions of an evaluation, written beside its log for paired comparisons.

``test()`` writes ``<OUTPUT_DIR>/predictions_<split>.json``: the label, the top-1 prediction and
the domain label of every evaluated image, in loader order, and a SHA-1 of the image paths in that
order. Two runs
evaluated on the same images (same hash and labels) can then be compared image by image
(``prompt_diffusion.results``: paired differences with their standard errors), which separates a
method's effect from the sampling noise of the test set.
"""
import hashlib
import json
import os
import os.path as osp
import tempfile
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from torch import Tensor

__all__ = ["PredictionRecord", "Predictions", "predictions_file", "read_predictions"]


def predictions_file(run_dir: str, split: str = "test") -> str:
    return osp.join(run_dir, f"predictions_{split}.json")


@dataclass
class Predictions:
    """What a predictions file holds."""

    split: str
    images_sha1: str
    labels: List[int]
    predictions: List[int]
    domains: List[int] = field(default_factory=list)  # per image (empty: the loader gave none)

    @property
    def correct(self) -> List[bool]:
        return [p == y for p, y in zip(self.predictions, self.labels)]

    def of_domain(self, domain: Optional[int]) -> "Predictions":
        """The images of one domain (``None``: all of them), in the same order."""
        if domain is None:
            return self
        if not self.domains:
            raise ValueError(f"these {self.split} predictions record no domains, so no domain {domain} can be "
                             "taken from them (they were written before domains were recorded: evaluate again)")
        keep = [i for i, d in enumerate(self.domains) if d == domain]
        return Predictions(self.split, f"{self.images_sha1}:domain{domain}", [self.labels[i] for i in keep],
                           [self.predictions[i] for i in keep], [domain] * len(keep))


class PredictionRecord:
    """Collects ``(image path, label, top-1)`` batch by batch during ``test`` and writes the file."""

    def __init__(self, split: str):
        self.split = split
        self.digest = hashlib.sha1()
        self.labels: List[int] = []
        self.predictions: List[int] = []
        self.domains: List[int] = []

    def add(self, impaths: Optional[Sequence[str]], labels: Tensor, outputs: Tensor,
            domains: Optional[Tensor] = None) -> None:
        for path in impaths or []:
            self.digest.update(str(path).encode("utf-8") + b"\n")
        self.labels += labels.detach().cpu().tolist()
        self.predictions += outputs.detach().argmax(dim=1).cpu().tolist()
        if domains is not None:
            self.domains += [int(d) for d in domains]

    def write(self, output_dir: str) -> str:
        """Write (atomically) and return the path."""
        os.makedirs(output_dir, exist_ok=True)
        path = predictions_file(output_dir, self.split)
        record = {"split": self.split, "images_sha1": self.digest.hexdigest(), "labels": self.labels,
                  "predictions": self.predictions, "domains": self.domains}
        handle, tmp_path = tempfile.mkstemp(dir=output_dir, prefix=".predictions.", suffix=".tmp")
        with os.fdopen(handle, "w") as stream:
            json.dump(record, stream, separators=(",", ":"))
        os.replace(tmp_path, path)
        return path


def read_predictions(run_dir: str, split: str = "test") -> Optional[Predictions]:
    """The predictions a run wrote for ``split``, or ``None`` when it wrote none."""
    path = predictions_file(run_dir, split)
    if not osp.isfile(path):
        return None
    with open(path) as stream:
        data = json.load(stream)
    return Predictions(data["split"], data["images_sha1"], list(data["labels"]), list(data["predictions"]),
                       list(data.get("domains", [])))
