"""What a trained run predicts for image files: top-k classes with probabilities per image.

The run folder describes itself (:mod:`prompt_diffusion.run_record`): its trainer is built from its
record with the dataset :class:`PredictionImages` (the image files, the class names to score them
against: the run's own, or new ones, base-to-new's point), so the images go through the run's own
test transform and ``model_inference`` in batches of ``DATALOADER.TEST.BATCH_SIZE``, as evaluation
does. For a prompt-diffusion trainer, the host's prediction (the host's own prompts,
``TRAINER.PD.ENABLE False``: ``adapter.logits`` of ``host_prompts``) can come beside the generated one.
"""
import csv
import io
import json
import os
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from prompt_diffusion.data.image_folder import unreadable_images
from prompt_diffusion.engine import DATASET_REGISTRY, DatasetBase, Datum

PREDICTION_DATASET = "PredictionImages"
IMAGE_EXTENSIONS = frozenset(extension.lower() for extension in Image.registered_extensions())


@DATASET_REGISTRY.register()
class PredictionImages(DatasetBase):
    """``cfg.DATASET.PREDICTION.IMAGES`` (test, in the order given; labels unknown, 0) scored against
    ``cfg.DATASET.PREDICTION.CLASSNAMES``. A Dassl dataset takes its class names from ``train_x``, so
    ``train_x`` holds one entry per class (never loaded: ``predict`` does not train)."""

    def __init__(self, cfg):
        images, names = list(cfg.DATASET.PREDICTION.IMAGES), list(cfg.DATASET.PREDICTION.CLASSNAMES)
        classes = [Datum(impath=images[0], label=label, classname=name) for label, name in enumerate(names)]
        super().__init__(train_x=classes, test=[Datum(impath=path, label=0, classname="") for path in images])


def image_paths(inputs: Sequence[str]) -> List[str]:
    """Image files from files and folders (a folder: its image files below it, sorted; hidden ones
    skipped). A path that does not exist, a folder without images, or a file PIL cannot read is
    one error naming it."""
    paths: List[str] = []
    for given in inputs:
        if os.path.isdir(given):
            found = []
            for top, folders, files in os.walk(given):
                folders[:] = sorted(name for name in folders if not name.startswith("."))
                found += [os.path.join(top, name) for name in files if not name.startswith(".")
                          and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS]
            if not found:
                raise FileNotFoundError(f"{given}: no image files in this folder")
            paths += sorted(found)
        elif os.path.isfile(given):
            paths.append(given)
        else:
            raise FileNotFoundError(f"{given}: no such image file or folder")
    bad = unreadable_images(paths)
    if bad:
        raise ValueError(f"not a readable image: {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    return paths


def prediction_config(cfg, paths: Sequence[str], classnames: Sequence[str], batch_size: Optional[int] = None):
    """A run's config (unfrozen) turned to predict ``paths`` against ``classnames``."""
    from yacs.config import CfgNode

    cfg.DATASET.NAME = PREDICTION_DATASET
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"
    cfg.DATASET.NUM_SHOTS = -1
    cfg.DATASET.PREDICTION = CfgNode({"IMAGES": list(paths), "CLASSNAMES": list(classnames)})
    if batch_size is not None:
        cfg.DATALOADER.TEST.BATCH_SIZE = batch_size
    return cfg


@dataclass
class Prediction:
    """One image's top-k: ``classes[i]`` with probability ``probabilities[i]``, most probable first;
    ``host_*``: the host's own prompts' (prompt-diffusion trainers, when asked)."""

    image: str
    classes: List[str]
    probabilities: List[float]
    host_classes: List[str] = field(default_factory=list)
    host_probabilities: List[float] = field(default_factory=list)


def _top(logits: Tensor, names: Sequence[str], k: int) -> List[Tuple[List[str], List[float]]]:
    probabilities, indices = logits.float().softmax(dim=1).topk(min(k, logits.shape[1]), dim=1)
    return [([names[i] for i in row], [round(float(p), 6) for p in probs])
            for row, probs in zip(indices.tolist(), probabilities)]


@torch.no_grad()
def predict(trainer, top_k: int = 5, with_host: bool = False, progress: bool = True) -> List[Prediction]:
    """Top-k predictions of every image of ``trainer.test_loader`` (a :class:`PredictionImages`
    trainer), in loader order; ``with_host`` needs a prompt-diffusion trainer (``trainer.pd``)."""
    if with_host and getattr(trainer, "pd", None) is None:
        raise ValueError(f"--host: trainer {trainer.cfg.TRAINER.NAME} is not a prompt-diffusion trainer with "
                         "TRAINER.PD.ENABLE True; its prediction is the host's")
    names = list(trainer.dm.dataset.classnames)
    trainer.set_model_mode("eval")
    found: List[Prediction] = []
    for batch in tqdm(trainer.test_loader, desc="predicting", unit="batch", disable=None if progress else True):
        images, _ = trainer.parse_batch_test(batch)
        tops = _top(trainer.model_inference(images), names, top_k)
        hosts = _top(trainer.pd.host_logits(images), names, top_k) if with_host else [([], [])] * len(tops)
        found += [Prediction(path, classes, probs, host_classes, host_probs)
                  for path, (classes, probs), (host_classes, host_probs) in zip(batch["impath"], tops, hosts)]
    return found


def format_table(predictions: Sequence[Prediction]) -> str:
    """One line per image: its path, then ``class (probability)`` by rank (and the host's below)."""
    width = max(len(p.image) for p in predictions)
    lines = []
    for p in predictions:
        lines.append(f"{p.image:<{width}}  " + "  ".join(f"{c} ({q:.1%})" for c, q in zip(p.classes, p.probabilities)))
        if p.host_classes:
            lines.append(f"{'  host:':<{width}}  " + "  ".join(
                f"{c} ({q:.1%})" for c, q in zip(p.host_classes, p.host_probabilities)))
    return "\n".join(lines)


def csv_text(predictions: Sequence[Prediction]) -> str:
    """``image, rank, class, probability[, host_class, host_probability]``: one row per image and rank."""
    with_host = any(p.host_classes for p in predictions)
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(["image", "rank", "class", "probability"] + (["host_class", "host_probability"] if with_host else []))
    for p in predictions:
        for rank, (name, probability) in enumerate(zip(p.classes, p.probabilities), start=1):
            host = [p.host_classes[rank - 1], p.host_probabilities[rank - 1]] if with_host else []
            writer.writerow([p.image, rank, name, probability] + host)
    return stream.getvalue()


def json_text(predictions: Sequence[Prediction]) -> str:
    return json.dumps([{key: value for key, value in asdict(p).items() if value != []} for p in predictions], indent=1)
