"""Benchmark datasets: the 15 CoOp datasets (registered in ``DATASET_REGISTRY`` on import).

``import prompt_diffusion.data`` registers OxfordPets, OxfordFlowers, FGVCAircraft,
DescribableTextures, EuroSAT, StanfordCars, Food101, SUN397, Caltech101, UCF101, ImageNet,
ImageNetV2, ImageNetSketch, ImageNetA and ImageNetR under those upstream names, so a Dassl-style
``build_dataset(cfg)`` finds them by ``cfg.DATASET.NAME``; so are the toy world's datasets and
``ImageFolder`` (a user's own images, :mod:`prompt_diffusion.data.image_folder`). The shared pieces (few-shot sampling
and its cache, base/new classes, split files) live in :mod:`prompt_diffusion.data.fewshot` and
:mod:`prompt_diffusion.data.splits`.
"""
from prompt_diffusion.data import coop_datasets, imagenet  # noqa: F401  (registers datasets)
from prompt_diffusion.data.fewshot import (  # noqa: F401
    generate_fewshot_splits, load_or_generate_fewshot, sample_fewshot, subsample_classes,
)

# the 15 benchmark datasets by registry name, in the order of CoOp's DATASETS.md
BENCHMARK_DATASETS = {
    cls.__name__: cls
    for cls in (
        imagenet.ImageNet, coop_datasets.Caltech101, coop_datasets.OxfordPets,
        coop_datasets.StanfordCars, coop_datasets.OxfordFlowers, coop_datasets.Food101,
        coop_datasets.FGVCAircraft, coop_datasets.SUN397, coop_datasets.DescribableTextures,
        coop_datasets.EuroSAT, coop_datasets.UCF101, imagenet.ImageNetV2, imagenet.ImageNetSketch,
        imagenet.ImageNetA, imagenet.ImageNetR,
    )
}

# the toy world (another module) registers itself here:
from prompt_diffusion.data import toy_datasets  # noqa: F401,E402  (registers ToyWorld, ToySizes ...)
# a user's own images, one folder per class:
from prompt_diffusion.data.image_folder import ImageFolder  # noqa: E402  (registers ImageFolder)

# what `prompt-diffusion data check --dataset NAME` checks: the benchmarks, and ImageFolder on request
CHECKABLE_DATASETS = {**BENCHMARK_DATASETS, "ImageFolder": ImageFolder}


def check_dataset_before_run(cfg) -> None:
    """The checks a dataset's class offers (``check_before_run(cfg)``: the benchmarks' layout, an
    image folder's whole read), run before a run folder is written; other datasets have none here."""
    from prompt_diffusion.engine import DATASET_REGISTRY

    if cfg.DATASET.NAME in DATASET_REGISTRY.registered_names():
        check = getattr(DATASET_REGISTRY.get(cfg.DATASET.NAME), "check_before_run", None)
        if check is not None:
            check(cfg)
