"""Benchmark datasets: the 15 CoOp datasets (registered in ``DATASET_REGISTRY`` on import).

``import prompt_diffusion.data`` registers OxfordPets, OxfordFlowers, FGVCAircraft,
DescribableTextures, EuroSAT, StanfordCars, Food101, SUN397, Caltech101, UCF101, ImageNet,
ImageNetV2, ImageNetSketch, ImageNetA and ImageNetR under those upstream names, so a Dassl-style
``build_dataset(cfg)`` finds them by ``cfg.DATASET.NAME``. The shared pieces (few-shot sampling
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
