"""Test helpers shared by the test files: tiny generated image folders."""
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image

# one clearly different mean colour per class, so a linear probe (or a tiny CLIP + prompt) can learn
_PALETTE = [
    (220, 40, 40), (40, 200, 40), (40, 60, 220), (230, 210, 40),
    (200, 40, 200), (40, 210, 210), (240, 140, 30), (120, 120, 120),
]


def make_image_folder(
    root: Path, classnames: Sequence[str], per_class: int, size: int = 32, seed: int = 0
) -> Dict[str, List[Path]]:
    """Write ``root/<classname>/<i>.png`` images whose colour depends on the class.

    Returns the written paths per class name. Pixels get small noise so images differ.
    """
    rng = np.random.default_rng(seed)
    written: Dict[str, List[Path]] = {}
    for label, name in enumerate(classnames):
        class_dir = Path(root) / name
        class_dir.mkdir(parents=True, exist_ok=True)
        base = np.array(_PALETTE[label % len(_PALETTE)], dtype=np.float32)
        written[name] = []
        for i in range(per_class):
            noise = rng.normal(0.0, 18.0, size=(size, size, 3))
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            path = class_dir / f"{i:04d}.png"
            Image.fromarray(pixels).save(path)
            written[name].append(path)
    return written
