"""The toy world as benchmark datasets, registered like the 15 CoOp datasets.

``import prompt_diffusion.data`` registers:

- ``ToyWorld``: 64 classes ``"<colour> <shape>"`` in the photo style, with train / val / test.
  Base-to-new follows the upstream rule (``DATASET.SUBSAMPLE_CLASSES``: base = the lower half of
  the labels). Labels are ``shape position in DATASET_SHAPES * 8 + colour``, so the new half holds
  four shapes that prompt learning on base never sees (in every colour).
- ``ToyWorldSketch``, ``ToyWorldRendition``, ``ToyWorldClutter``: the same 64 classes in the other
  styles, test-only, as ImageNet-Sketch / -R / -A are for ImageNet (domain generalization).
- ``ToySizes``: a cross-dataset target with another attribute family, 16 classes
  ``"<size> <shape>"`` (``"small circle"``, ``"large circle"`` ...) in random colours.
- ``ToyWorldMixed``: ToyWorld's 64 classes with every image's style drawn at random from the four,
  in every split: what the text encoder knows about an image (its style word) varies *within* a
  class, so a prompt per image can do what no fixed prompt does. Each image's style is its
  ``Datum.domain`` (its index in ``toy_world.STYLES``), and ``domain_templates`` gives the prompt
  that names it (the style oracle, ``DomainOracleCLIP``); evaluations record it per image, so a
  table gives the accuracy per style (a spec's ``by_domain``).

No download: on first use each split is rendered to PNG files under
``<DATASET.ROOT>/toy_world_v<WORLD_VERSION>/<name>/<split>/<class folder>/<index>.png`` (seconds;
a folder is written under a temporary name and renamed when complete), and read back through
``Datum.impath`` like any image folder. Few-shot train/val and base/new subsampling are the shared
functions of :mod:`prompt_diffusion.data.fewshot`, so the toy world behaves as the benchmarks do.
"""
import os
import shutil
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from PIL import Image
from tqdm import tqdm

from prompt_diffusion.data import toy_world
from prompt_diffusion.data.fewshot import load_or_generate_fewshot, subsample_classes
from prompt_diffusion.engine import DATASET_REGISTRY, DatasetBase, Datum


WORLD_DIR = f"toy_world_v{toy_world.WORLD_VERSION}"
# shape order of the dataset labels: the first four are the base shapes. Mixed so that base and
# new are about equally hard for the shipped CLIP: 32-way zero-shot on photo test images, base
# 88.8 % vs new 86.5 % (the world's own order, circle/square/triangle/star first, gives 84.4 vs 95.8).
DATASET_SHAPES: Tuple[str, ...] = ("circle", "cross", "square", "ring", "triangle", "diamond", "star", "heart")
# fixed pool sizes (images per class): the few-shot cache fingerprints the train/val lists, so
# they must not change under it; 64 per class leaves room for 16 shots (and more)
TRAIN_PER_CLASS = 64
VAL_PER_CLASS = 8
SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class ToyClass:
    """A dataset class: its name (the prompt text) and what the renderer must draw."""

    name: str
    shape: str
    colour: Optional[str] = None  # None: random per image
    size: Optional[str] = None  # None: any size

    @property
    def folder(self) -> str:
        return self.name.replace(" ", "_")


def shape_colour_classes() -> List[ToyClass]:
    """The 64 ``"<colour> <shape>"`` classes in label order (shape-major, ``DATASET_SHAPES`` order)."""
    return [ToyClass(f"{colour} {shape}", shape, colour=colour)
            for shape in DATASET_SHAPES for colour in toy_world.COLOUR_NAMES]


def size_shape_classes() -> List[ToyClass]:
    """The 16 ``"<size> <shape>"`` classes of ``ToySizes`` in label order (shape-major)."""
    return [ToyClass(f"{size} {shape}", shape, size=size) for shape in DATASET_SHAPES for size in toy_world.SIZES]


MIXED = "mixed"  # a dataset style: each image's style drawn at random (toy_world.image_style)


def render_split(
    folder: str, classes: Sequence[ToyClass], style: str, per_class: int, seed: int, desc: str = "render"
) -> List[Datum]:
    """``per_class`` images per class, rendered once into ``folder``; their ``Datum`` list.

    Image ``k`` shows ``classes[k % K]`` and is ``toy_world.render_example(seed, k, ...)``; it is
    stored as ``<folder>/<class folder>/<k:05d>.png``. ``style`` ``MIXED`` draws each image's style
    (``toy_world.image_style(seed, k)``); the ``Datum``'s domain is the index of the image's style
    in ``toy_world.STYLES``. An existing folder is reused (it was renamed into place only once
    complete); otherwise it is rendered into ``<folder>.tmp<pid>`` first.
    """
    if per_class < 1:
        raise ValueError(f"{desc}: images per class must be >= 1, got {per_class}")
    count = per_class * len(classes)
    styles = [toy_world.image_style(seed, k) if style == MIXED else style for k in range(count)]
    if not os.path.isdir(folder):
        temporary = f"{folder}.tmp{os.getpid()}"
        shutil.rmtree(temporary, ignore_errors=True)
        for toy_class in classes:
            os.makedirs(os.path.join(temporary, toy_class.folder))
        for k in tqdm(range(count), desc=desc, unit="img", leave=False, disable=None):
            toy_class = classes[k % len(classes)]
            pixels, _ = toy_world.render_example(seed, k, toy_class.shape, toy_class.colour, styles[k], toy_class.size)
            Image.fromarray(pixels).save(os.path.join(temporary, toy_class.folder, f"{k:05d}.png"))
        try:
            os.replace(temporary, folder)
        except OSError:  # another process finished the same folder first: use theirs
            if not os.path.isdir(folder):
                raise
            shutil.rmtree(temporary, ignore_errors=True)
    return [
        Datum(impath=os.path.join(folder, classes[k % len(classes)].folder, f"{k:05d}.png"),
              label=k % len(classes), domain=toy_world.STYLES.index(styles[k]), classname=classes[k % len(classes)].name)
        for k in range(count)
    ]


class ToyDataset(DatasetBase):
    """A toy-world dataset: rendered on first use under ``DATASET.ROOT``, then read from PNG files.

    Subclasses set ``name`` (its folder), ``family`` (which classes), ``style`` (one of
    ``toy_world.STYLES``, or ``MIXED``) and ``test_only``.
    """

    name = ""
    family = "shape_colour"  # or "size_shape"
    style = "photo"
    test_only = False
    zeroshot_template = "a photo of a {}."  # ZeroshotCLIP's prompt (the one CLIP's CoOp datasets use)

    def __init__(self, cfg):
        root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
        self.dataset_dir = os.path.join(root, WORLD_DIR, self.name)
        classes = self.classes()
        test = self.split("test", classes, cfg.DATASET.TOY.TEST_PER_CLASS)
        if self.test_only:  # base / new halves as ToyWorld's, so each domain reports base and new
            test = subsample_classes(test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)[0]
            super().__init__(train_x=test, test=test)
            return
        train = self.split("train", classes, TRAIN_PER_CLASS)
        val = self.split("val", classes, VAL_PER_CLASS)
        train, val = load_or_generate_fewshot(
            train, val, num_shots=cfg.DATASET.NUM_SHOTS, seed=cfg.SEED, dataset_dir=self.dataset_dir,
            cache_dir=cfg.DATASET.FEWSHOT_CACHE_DIR, allow_fewer=cfg.DATASET.FEWSHOT_ALLOW_FEWER,
        )
        train, val, test = subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=train, val=val, test=test)

    @classmethod
    def classes(cls) -> List[ToyClass]:
        return shape_colour_classes() if cls.family == "shape_colour" else size_shape_classes()

    @classmethod
    def stream_seed(cls, split: str) -> int:
        """The world seed of a split: distinct per family, style and split, and from the seeds the
        small CLIP was trained (0) and measured (1) on."""
        family_index = ("shape_colour", "size_shape").index(cls.family)
        style_index = (*toy_world.STYLES, MIXED).index(cls.style)
        return 1000 + 100 * family_index + 10 * style_index + SPLIT_INDEX[split]

    def split(self, split: str, classes: Sequence[ToyClass], per_class: int) -> List[Datum]:
        folder = os.path.join(self.dataset_dir, f"{split}-{per_class}")
        return render_split(folder, classes, self.style, per_class, self.stream_seed(split),
                            desc=f"{type(self).__name__} {split}")


@DATASET_REGISTRY.register()
class ToyWorld(ToyDataset):
    """64 ``"<colour> <shape>"`` classes, photo style: base-to-new and the source of DG / cross-dataset."""

    name = "shapes_photo"


@DATASET_REGISTRY.register()
class ToyWorldSketch(ToyDataset):
    """``ToyWorld``'s classes as coloured outline sketches (test-only, domain generalization)."""

    name = "shapes_sketch"
    style = "sketch"
    test_only = True


@DATASET_REGISTRY.register()
class ToyWorldRendition(ToyDataset):
    """``ToyWorld``'s classes as textured renditions (test-only, domain generalization)."""

    name = "shapes_rendition"
    style = "rendition"
    test_only = True


@DATASET_REGISTRY.register()
class ToyWorldClutter(ToyDataset):
    """``ToyWorld``'s classes among occluders and strong noise (test-only, domain generalization)."""

    name = "shapes_clutter"
    style = "clutter"
    test_only = True


@DATASET_REGISTRY.register()
class ToySizes(ToyDataset):
    """16 ``"<size> <shape>"`` classes in random colours, photo style (cross-dataset target)."""

    name = "sizes_photo"
    family = "size_shape"


#: the prompt that names each style, by domain index (the style oracle's; the toy CLIP's captions say so)
STYLE_TEMPLATES: Tuple[str, ...] = tuple(f"a {toy_world.STYLE_WORDS[style][0]} of a {{}}." for style in toy_world.STYLES)


@DATASET_REGISTRY.register()
class ToyWorldMixed(ToyDataset):
    """``ToyWorld``'s classes, each image in a style drawn at random (all splits): per-image headroom.

    The zero-shot prompt names no style; ``domain_templates`` names each image's own (its domain)."""

    name = "shapes_mixed"
    style = MIXED
    domain_templates = STYLE_TEMPLATES


TOY_DATASETS = {cls.__name__: cls for cls in (ToyWorld, ToyWorldSketch, ToyWorldRendition, ToyWorldClutter, ToySizes,
                                              ToyWorldMixed)}

