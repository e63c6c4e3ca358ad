"""The ten fine-grained / scene / texture / action datasets of the CoOp benchmark.

Each class reads CoOp's directory layout (``DATASETS.md``) and, except FGVCAircraft, CoOp's fixed
split file ``split_zhou_<Name>.json``, whose class names already carry upstream's renaming rules.
``expected_classname`` restates those rules (CoOp ``datasets/*.py``) so a split file with other
names is flagged: the class names are the text the prompts are built from.
"""
import os
from typing import Dict, List, Optional

from prompt_diffusion.data.benchmark import SplitFileDataset, BenchmarkDataset, split_file_howto
from prompt_diffusion.data.splits import SplitEntry, SplitFileError
from prompt_diffusion.engine import DATASET_REGISTRY


def _folder(relpath: str) -> str:
    """First component of a split path (the class folder)."""
    return relpath.split("/", 1)[0]


@DATASET_REGISTRY.register()
class OxfordPets(SplitFileDataset):
    """Oxford-IIIT Pets, 37 breeds; class name = lower-cased breed prefix of the file name."""

    dataset_dir = "oxford_pets"
    image_subdir = "images"
    split_file = "split_zhou_OxfordPets.json"
    required = (
        ("images", "download https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz and "
                   "extract it in {dataset_dir}"),
        (split_file, split_file_howto(split_file, "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs")),
    )

    @classmethod
    def expected_classname(cls, relpath: str) -> Optional[str]:
        stem = os.path.splitext(os.path.basename(relpath))[0]  # "Abyssinian_100"
        return "_".join(stem.split("_")[:-1]).lower()


@DATASET_REGISTRY.register()
class OxfordFlowers(SplitFileDataset):
    """Oxford Flowers-102; class names come from ``cat_to_name.json`` via the split file."""

    dataset_dir = "oxford_flowers"
    image_subdir = "jpg"
    split_file = "split_zhou_OxfordFlowers.json"
    required = (
        ("jpg", "download https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz and "
                "extract it in {dataset_dir}"),
        (split_file, split_file_howto(split_file, "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT")),
    )


@DATASET_REGISTRY.register()
class StanfordCars(SplitFileDataset):
    """Stanford Cars, 196 models; split paths are relative to the dataset dir (``cars_train/...``)."""

    dataset_dir = "stanford_cars"
    image_subdir = ""
    split_file = "split_zhou_StanfordCars.json"
    required = (
        ("cars_train", "download http://ai.stanford.edu/~jkrause/car196/cars_train.tgz and extract "
                       "it in {dataset_dir}"),
        ("cars_test", "download http://ai.stanford.edu/~jkrause/car196/cars_test.tgz and extract "
                      "it in {dataset_dir}"),
        (split_file, split_file_howto(split_file, "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT")),
    )


@DATASET_REGISTRY.register()
class Food101(SplitFileDataset):
    """Food-101; class name = folder name."""

    dataset_dir = "food-101"
    image_subdir = "images"
    split_file = "split_zhou_Food101.json"
    required = (
        ("images", "download food-101.tar.gz from https://data.vision.ee.ethz.ch/cvl/datasets_extra/"
                   "food-101/ and extract it in the parent folder of {dataset_dir}"),
        (split_file, split_file_howto(split_file, "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl")),
    )

    @classmethod
    def expected_classname(cls, relpath: str) -> Optional[str]:
        return _folder(relpath)


@DATASET_REGISTRY.register()
class DescribableTextures(SplitFileDataset):
    """DTD, 47 textures; class name = folder name."""

    dataset_dir = "dtd"
    image_subdir = "images"
    split_file = "split_zhou_DescribableTextures.json"
    required = (
        ("images", "download https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz "
                   "and extract it in the parent folder of {dataset_dir}"),
        (split_file, split_file_howto(split_file, "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x")),
    )

    @classmethod
    def expected_classname(cls, relpath: str) -> Optional[str]:
        return _folder(relpath)


# upstream's EuroSAT folder -> class name (CoOp datasets/eurosat.py)
EUROSAT_CLASSNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@DATASET_REGISTRY.register()
class EuroSAT(SplitFileDataset):
    """EuroSAT RGB, 10 land-use classes with descriptive names (``AnnualCrop`` -> ``Annual Crop Land``)."""

    dataset_dir = "eurosat"
    image_subdir = "2750"
    split_file = "split_zhou_EuroSAT.json"
    required = (
        ("2750", "download http://madm.dfki.de/files/sentinel/EuroSAT.zip and extract it in "
                 "{dataset_dir}"),
        (split_file, split_file_howto(split_file, "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o")),
    )

    @classmethod
    def expected_classname(cls, relpath: str) -> Optional[str]:
        return EUROSAT_CLASSNAMES.get(_folder(relpath))


@DATASET_REGISTRY.register()
class SUN397(SplitFileDataset):
    """SUN397; ``a/apartment_building/outdoor`` -> ``outdoor apartment_building`` (letter dropped)."""

    dataset_dir = "sun397"
    image_subdir = "SUN397"
    split_file = "split_zhou_SUN397.json"
    required = (
        ("SUN397", "download http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz and "
                   "extract it in {dataset_dir}"),
        (split_file, split_file_howto(split_file, "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq")),
    )

    @classmethod
    def expected_classname(cls, relpath: str) -> Optional[str]:
        scene = relpath.split("/")[1:-1]  # drop the first letter folder and the file name
        return " ".join(reversed(scene))


# Caltech101 folders renamed upstream (CoOp datasets/caltech101.py); BACKGROUND_Google and
# Faces_easy are not classes of the benchmark
CALTECH_RENAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard",
                   "Motorbikes": "motorbike"}


@DATASET_REGISTRY.register()
class Caltech101(SplitFileDataset):
    """Caltech-101 without the background class: 100 classes, four folders renamed."""

    dataset_dir = "caltech-101"
    image_subdir = "101_ObjectCategories"
    split_file = "split_zhou_Caltech101.json"
    required = (
        ("101_ObjectCategories", "download http://www.vision.caltech.edu/Image_Datasets/Caltech101/"
                                 "101_ObjectCategories.tar.gz and extract it in {dataset_dir}"),
        (split_file, split_file_howto(split_file, "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN")),
    )

    @classmethod
    def expected_classname(cls, relpath: str) -> Optional[str]:
        folder = _folder(relpath)
        return CALTECH_RENAMES.get(folder, folder)


@DATASET_REGISTRY.register()
class UCF101(SplitFileDataset):
    """UCF101 middle frames; class ``ApplyEyeMakeup`` is named ``Apply_Eye_Makeup`` (its folder)."""

    dataset_dir = "ucf101"
    image_subdir = "UCF-101-midframes"
    split_file = "split_zhou_UCF101.json"
    required = (
        ("UCF-101-midframes", "download UCF-101-midframes.zip from https://drive.google.com/file/d/"
                              "10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O/view and extract it in {dataset_dir}"),
        (split_file, split_file_howto(split_file, "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y")),
    )

    @classmethod
    def expected_classname(cls, relpath: str) -> Optional[str]:
        return _folder(relpath)


FGVC_ARCHIVE = ("download https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/"
                "fgvc-aircraft-2013b.tar.gz, extract it and rename its data/ folder to {dataset_dir}")


@DATASET_REGISTRY.register()
class FGVCAircraft(BenchmarkDataset):
    """FGVC-Aircraft, 100 variants, with the dataset's own train/val/test lists (no split file)."""

    dataset_dir = "fgvc_aircraft"
    image_subdir = "images"
    required = (
        ("images", FGVC_ARCHIVE),
        ("variants.txt", FGVC_ARCHIVE),
        ("images_variant_train.txt", FGVC_ARCHIVE),
        ("images_variant_val.txt", FGVC_ARCHIVE),
        ("images_variant_test.txt", FGVC_ARCHIVE),
    )

    @classmethod
    def read_entries(cls, dataset_dir: str) -> Dict[str, List[SplitEntry]]:
        with open(os.path.join(dataset_dir, "variants.txt"), "r", encoding="utf-8") as f:
            variants = [line.strip() for line in f if line.strip()]
        label_of = {name: label for label, name in enumerate(variants)}
        return {split: cls._read_list(os.path.join(dataset_dir, f"images_variant_{split}.txt"), label_of)
                for split in ("train", "val", "test")}

    @staticmethod
    def _read_list(path: str, label_of: Dict[str, int]) -> List[SplitEntry]:
        """``<image id> <variant name>`` lines -> entries (``<id>.jpg``, label, variant)."""
        entries = []
        with open(path, "r", encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                fields = line.strip().split(" ")
                if fields == [""]:
                    continue
                variant = " ".join(fields[1:])
                if variant not in label_of:
                    raise SplitFileError(f"{path}:{line_no}: variant {variant!r} is not in "
                                         f"variants.txt (line: {line.strip()!r})")
                entries.append((fields[0] + ".jpg", label_of[variant], variant))
        return entries
