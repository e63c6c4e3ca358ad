"""A deterministic procedural image–caption world: coloured shapes drawn in four styles.

It is the project's miniature benchmark (what the shipped small CLIP is pretrained on and what
``prompt-diffusion demo`` learns prompts on), so it needs no download. Every image is a pure
function of ``(seed, index)`` and its class, style and size request: the same call gives the same
pixels on every machine.

- Classes: 8 shapes x 8 colours = 64, named ``"<colour> <shape>"`` (``"red circle"``); class index
  ``= shape_index * 8 + colour_index``.
- Nuisance factors: size, position, rotation, background grey level, gradient and tint, colour
  jitter (hue within +-5 degrees), shading, pixel noise.
- Styles (they act as domains): ``photo`` (filled, shaded object), ``sketch`` (coloured double-stroke
  outline on paper), ``rendition`` (textured fill with a black outline on a textured background),
  ``clutter`` (a photo with achromatic occluding lines and discs and strong noise; achromatic so
  that the colour label stays unambiguous).
- Captions: several templates and several wordings per style; some mention size, position or
  background. Every caption fits in 20 BPE tokens (start and end tokens included).

Drawing happens at twice the output resolution with PIL masks, then box-downsampling, which
antialiases edges.
"""
import colorsys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

# bump when the pixels or captions that a (seed, index) gives change: cached renders carry it
WORLD_VERSION = 1
IMAGE_SIZE = 32  # output side in pixels
_SUPERSAMPLE = 2  # drawing canvas is IMAGE_SIZE * _SUPERSAMPLE on a side
_CANVAS = IMAGE_SIZE * _SUPERSAMPLE

SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "heart")
COLOURS: Dict[str, Tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12),
    "orange": (0.96, 0.55, 0.08),
    "yellow": (0.94, 0.86, 0.12),
    "green": (0.16, 0.67, 0.20),
    "cyan": (0.12, 0.82, 0.86),
    "blue": (0.12, 0.24, 0.86),
    "purple": (0.51, 0.16, 0.75),
    "pink": (0.96, 0.47, 0.75),
}
COLOUR_NAMES: Tuple[str, ...] = tuple(COLOURS)
STYLES: Tuple[str, ...] = ("photo", "sketch", "rendition", "clutter")
SIZES: Tuple[str, ...] = ("small", "large")

# object radius in output pixels; the size words apply only at the ends of the range
RADIUS_RANGE = (7.0, 12.5)
SIZE_RADIUS_RANGE: Dict[str, Tuple[float, float]] = {"small": (7.0, 8.5), "large": (11.0, 12.5)}
MAX_ROTATION_DEG = 25.0

STYLE_WORDS: Dict[str, Tuple[str, ...]] = {
    "photo": ("photo", "picture", "photograph", "photo"),
    "sketch": ("sketch", "drawing", "line drawing", "sketch"),
    "rendition": ("rendition", "painting", "textured rendering", "rendition"),
    "clutter": ("cluttered photo", "noisy photo", "busy picture", "cluttered photo"),
}
# {s}: style word, {c}: colour, {o}: shape, {z}: size word, {p}: position phrase, {b}: background
CAPTION_TEMPLATES: Tuple[str, ...] = (
    "a {s} of a {c} {o}.",
    "a {s} of a {c} {o}.",
    "a {s} of a {z} {c} {o}.",
    "a {s} of the {o}, which is {c}.",
    "a {s} of a {c} {o} {p}.",
    "a {s} of a {c} {o} {b}.",
    "a {s} of a {o}.",
    "a {s} of a {z} {o}.",
    "{c} {o}.",
)
_POSITION_WORDS = (
    ("in the top left", "at the top", "in the top right"),
    ("on the left", "in the center", "on the right"),
    ("in the bottom left", "at the bottom", "in the bottom right"),
)


def class_names() -> List[str]:
    """The 64 class names in label order: ``"<colour> <shape>"``, label = shape * 8 + colour."""
    return [f"{colour} {shape}" for shape in SHAPES for colour in COLOUR_NAMES]


def class_of(label: int) -> Tuple[str, str]:
    """``(shape, colour)`` of a class label in ``[0, 64)``."""
    if not 0 <= label < len(SHAPES) * len(COLOUR_NAMES):
        raise ValueError(f"toy world label {label} is out of range [0, {len(SHAPES) * len(COLOUR_NAMES)})")
    return SHAPES[label // len(COLOUR_NAMES)], COLOUR_NAMES[label % len(COLOUR_NAMES)]


@dataclass(frozen=True)
class Scene:
    """Everything that decides an image apart from its pixel-level noise and textures."""

    shape: str
    colour: str
    style: str
    radius: float  # output pixels
    center: Tuple[float, float]  # (x, y) in output pixels
    angle_deg: float
    background: float  # grey level in [0, 1]

    @property
    def size_word(self) -> Optional[str]:
        """``"small"`` / ``"large"`` at the ends of the radius range, else ``None``."""
        for word, (low, high) in SIZE_RADIUS_RANGE.items():
            if low <= self.radius <= high:
                return word
        return None

    @property
    def position_phrase(self) -> str:
        """Where the object sits, by thirds of the frame (``"in the top left"`` ...)."""
        column = min(2, int(self.center[0] / (IMAGE_SIZE / 3)))
        row = min(2, int(self.center[1] / (IMAGE_SIZE / 3)))
        return _POSITION_WORDS[row][column]

    @property
    def background_phrase(self) -> Optional[str]:
        """``"on a dark background"`` / ``"on a light background"`` for photo-like styles, else None."""
        if self.style not in ("photo", "clutter"):
            return None
        if self.background < 0.35:
            return "on a dark background"
        if self.background > 0.65:
            return "on a light background"
        return None


def _check_choice(kind: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown toy world {kind} {value!r}; allowed: {', '.join(allowed)}")


def sample_scene(
    rng: np.random.Generator, shape: str, colour: str, style: str, size: Optional[str] = None
) -> Scene:
    """Draw the nuisance factors of one scene; ``size`` (``"small"``/``"large"``) narrows the radius."""
    _check_choice("shape", shape, SHAPES)
    _check_choice("colour", colour, COLOUR_NAMES)
    _check_choice("style", style, STYLES)
    if size is None:
        low, high = RADIUS_RANGE
    else:
        _check_choice("size", size, SIZES)
        low, high = SIZE_RADIUS_RANGE[size]
    radius = float(rng.uniform(low, high))
    margin = _SHAPE_EXTENT[shape] * radius + 0.5  # the whole object stays inside the frame
    center = (float(rng.uniform(margin, IMAGE_SIZE - margin)), float(rng.uniform(margin, IMAGE_SIZE - margin)))
    angle = float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    background = float(rng.uniform(0.12, 0.88))
    return Scene(shape, colour, style, radius, center, angle, background)


# ---------------------------------------------------------------- geometry (unit radius, y down)
def _regular(n: int, radius: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _star() -> np.ndarray:
    outer = _regular(5, 1.1)
    inner = _regular(5, 0.45, phase=-np.pi / 2 + np.pi / 5)
    return np.stack([outer, inner], axis=1).reshape(10, 2)  # alternate outer/inner vertices


def _cross(half_width: float = 0.32, length: float = 1.0) -> np.ndarray:
    w, l = half_width, length
    return np.array([(-w, -l), (w, -l), (w, -w), (l, -w), (l, w), (w, w),
                     (w, l), (-w, l), (-w, w), (-l, w), (-l, -w), (-w, -w)])


def _heart(points: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    outline = np.stack([x, y], axis=1) / 16.0
    return (outline - outline.mean(axis=0)) * 1.05


# each shape: a list of (polygon, filled) parts; a part with filled=False cuts a hole
_SHAPE_PARTS: Dict[str, List[Tuple[np.ndarray, bool]]] = {
    "circle": [(_regular(48), True)],
    "square": [(np.array([(-0.82, -0.82), (0.82, -0.82), (0.82, 0.82), (-0.82, 0.82)]), True)],
    "triangle": [(_regular(3, 1.15), True)],
    "star": [(_star(), True)],
    "cross": [(_cross(), True)],
    "ring": [(_regular(48), True), (_regular(48, 0.55), False)],
    "diamond": [(np.array([(0.0, -1.1), (0.64, 0.0), (0.0, 1.1), (-0.64, 0.0)]), True)],
    "heart": [(_heart(), True)],
}

# the farthest any part reaches from the centre, in radii (any rotation stays within it)
_SHAPE_EXTENT = {shape: max(float(np.linalg.norm(polygon, axis=1).max()) for polygon, _ in parts)
                 for shape, parts in _SHAPE_PARTS.items()}


def _placed_parts(scene: Scene) -> List[Tuple[List[Tuple[float, float]], bool]]:
    """The scene's shape parts in canvas coordinates (scaled, rotated, translated)."""
    theta = np.deg2rad(scene.angle_deg)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    center = np.array(scene.center) * _SUPERSAMPLE
    placed = []
    for polygon, filled in _SHAPE_PARTS[scene.shape]:
        points = polygon @ rotation.T * (scene.radius * _SUPERSAMPLE) + center
        placed.append(([tuple(p) for p in points], filled))
    return placed


def _mask(draw_fn) -> np.ndarray:
    """Run ``draw_fn(ImageDraw)`` on a black canvas; returns the mask as float in [0, 1]."""
    image = Image.new("L", (_CANVAS, _CANVAS), 0)
    draw_fn(ImageDraw.Draw(image))
    return np.asarray(image, dtype=np.float32) / 255.0


def _fill_mask(scene: Scene) -> np.ndarray:
    def draw(d: ImageDraw.ImageDraw) -> None:
        for points, filled in _placed_parts(scene):
            d.polygon(points, fill=255 if filled else 0)

    return _mask(draw)


def _outline_mask(scene: Scene, width: int, jitter: Tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    def draw(d: ImageDraw.ImageDraw) -> None:
        for points, _ in _placed_parts(scene):
            shifted = [(x + jitter[0], y + jitter[1]) for x, y in points]
            d.line(shifted + [shifted[0]], fill=255, width=width, joint="curve")

    return _mask(draw)


# ---------------------------------------------------------------- colour fields on the canvas
_YY, _XX = np.mgrid[0:_CANVAS, 0:_CANVAS].astype(np.float32) / _CANVAS  # [C, C] each, in [0, 1)


def _linear_gradient(rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A random-direction linear ramp in ``[-amplitude, amplitude]``, [C, C]."""
    direction = rng.uniform(0, 2 * np.pi)
    ramp = (_XX - 0.5) * np.cos(direction) + (_YY - 0.5) * np.sin(direction)
    return (ramp * 2 * amplitude).astype(np.float32)


def _plain_background(rng: np.random.Generator, grey: float) -> np.ndarray:
    tint = rng.normal(0.0, 0.03, size=3).astype(np.float32)
    field = grey + _linear_gradient(rng, 0.08)
    return field[..., None] + tint  # [C, C, 3]


def _jittered_colour(rng: np.random.Generator, colour: str) -> np.ndarray:
    """The named colour with small hue (+-5 degrees), saturation and brightness jitter: the hue
    stays nearer to its own name than to any neighbour's (the closest two are 22 degrees apart)."""
    hue, saturation, value = colorsys.rgb_to_hsv(*COLOURS[colour])
    hue = (hue + rng.uniform(-5.0, 5.0) / 360.0) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, saturation * rng.uniform(0.85, 1.0), min(1.0, value * rng.uniform(0.82, 1.06)))
    return np.array(rgb, dtype=np.float32)


def _shaded_object(rng: np.random.Generator, colour: np.ndarray) -> np.ndarray:
    shading = 1.0 + _linear_gradient(rng, 0.15)
    return shading[..., None] * colour  # [C, C, 3]


def _pattern(rng: np.random.Generator) -> np.ndarray:
    """A binary texture (stripes, checks or dots) on the canvas, [C, C] in {0, 1}."""
    kind = rng.integers(3)
    period = rng.uniform(0.09, 0.16)  # as a fraction of the canvas side
    if kind == 0:  # stripes
        direction = rng.uniform(0, np.pi)
        phase = (_XX * np.cos(direction) + _YY * np.sin(direction)) / period
        return (np.mod(phase, 1.0) < 0.5).astype(np.float32)
    offset_x, offset_y = rng.uniform(0, period, size=2)
    cell_x, cell_y = (_XX + offset_x) / period, (_YY + offset_y) / period
    if kind == 1:  # checks
        return (np.mod(np.floor(cell_x) + np.floor(cell_y), 2) == 0).astype(np.float32)
    distance = np.hypot(np.mod(cell_x, 1.0) - 0.5, np.mod(cell_y, 1.0) - 0.5)  # dots
    return (distance < 0.3).astype(np.float32)


def _blend(canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Paint ``colour`` ([3] or [C, C, 3]) over ``canvas`` where ``mask`` ([C, C]) is on."""
    alpha = mask[..., None]
    return canvas * (1.0 - alpha) + colour * alpha


def _downsample(canvas: np.ndarray) -> np.ndarray:
    """Box-filter the [C, C, 3] canvas to [IMAGE_SIZE, IMAGE_SIZE, 3]."""
    s = _SUPERSAMPLE
    return canvas.reshape(IMAGE_SIZE, s, IMAGE_SIZE, s, 3).mean(axis=(1, 3))


# ---------------------------------------------------------------- the four styles
def _draw_photo(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    canvas = _plain_background(rng, scene.background)
    obj = _shaded_object(rng, _jittered_colour(rng, scene.colour))
    return _blend(canvas, _fill_mask(scene), obj)


def _draw_sketch(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    paper = rng.uniform(0.85, 0.97)
    canvas = np.broadcast_to(np.array([paper, paper, paper * 0.96], np.float32), (_CANVAS, _CANVAS, 3)).copy()
    ink = _jittered_colour(rng, scene.colour) * 0.92
    width = int(rng.integers(2, 5))  # canvas pixels: 1-2 output pixels
    canvas = _blend(canvas, _outline_mask(scene, width), ink)
    second_stroke = tuple(rng.uniform(-1.5, 1.5, size=2))
    return _blend(canvas, 0.7 * _outline_mask(scene, max(2, width - 1), second_stroke), ink)


def _draw_rendition(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    background_texture = 0.08 * (_pattern(rng) - 0.5)
    canvas = _plain_background(rng, scene.background) + background_texture[..., None]
    colour = _jittered_colour(rng, scene.colour)
    variant = colour * 0.55 if rng.random() < 0.5 else colour * 0.5 + 0.5  # darker or pastel
    texture = _pattern(rng)[..., None]
    fill = texture * colour + (1.0 - texture) * variant  # [C, C, 3]
    canvas = _blend(canvas, _fill_mask(scene), fill)
    return _blend(canvas, _outline_mask(scene, 2), np.zeros(3, np.float32))


def _occluders(rng: np.random.Generator, count: int) -> List[Tuple[np.ndarray, float]]:
    """``count`` achromatic lines or discs as (mask, grey level) pairs."""
    shapes = []
    for _ in range(count):
        grey = float(rng.uniform(0.0, 1.0))
        if rng.random() < 0.5:
            x0, y0, x1, y1 = rng.uniform(0, _CANVAS, size=4)
            width = int(rng.integers(2, 5))
            mask = _mask(lambda d: d.line([(x0, y0), (x1, y1)], fill=255, width=width))
        else:
            cx, cy = rng.uniform(0, _CANVAS, size=2)
            r = rng.uniform(3.0, 7.0)
            mask = _mask(lambda d: d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255))
        shapes.append((mask, grey))
    return shapes


def _draw_clutter(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    canvas = _plain_background(rng, scene.background)
    clutter = _occluders(rng, int(rng.integers(4, 9)))
    in_front = rng.random(len(clutter)) < 0.35
    for (mask, grey), front in zip(clutter, in_front):
        if not front:
            canvas = _blend(canvas, mask, np.full(3, grey, np.float32))
    obj = _shaded_object(rng, _jittered_colour(rng, scene.colour))
    canvas = _blend(canvas, _fill_mask(scene), obj)
    for (mask, grey), front in zip(clutter, in_front):
        if front:
            canvas = _blend(canvas, mask, np.full(3, grey, np.float32))
    return canvas


_STYLE_DRAWERS = {"photo": _draw_photo, "sketch": _draw_sketch, "rendition": _draw_rendition,
                  "clutter": _draw_clutter}
_PIXEL_NOISE = {"photo": (0.01, 0.03), "sketch": (0.01, 0.02), "rendition": (0.01, 0.03), "clutter": (0.06, 0.12)}


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Pixels of ``scene``: uint8 array [IMAGE_SIZE, IMAGE_SIZE, 3]; ``rng`` draws textures and noise."""
    image = _downsample(_STYLE_DRAWERS[scene.style](scene, rng))
    low, high = _PIXEL_NOISE[scene.style]
    image = image + rng.normal(0.0, rng.uniform(low, high), size=image.shape)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption of ``scene`` from a random template; templates whose attribute is undefined for the
    scene (no size word, no background word) fall back to the plain ``"a <style> of a <c> <o>."``."""
    template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    style_word = STYLE_WORDS[scene.style][rng.integers(len(STYLE_WORDS[scene.style]))]
    size_word, background = scene.size_word, scene.background_phrase
    if ("{z}" in template and size_word is None) or ("{b}" in template and background is None):
        template = CAPTION_TEMPLATES[0]
    return template.format(s=style_word, c=scene.colour, o=scene.shape, z=size_word,
                           p=scene.position_phrase, b=background)


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that decides image ``index`` of the stream ``seed`` (independent per image)."""
    return np.random.default_rng([int(seed), int(index)])


def image_style(seed: int, index: int) -> str:
    """The style of image ``index`` of a mixed-style stream ``seed`` (``ToyWorldMixed``): one of
    ``STYLES`` at random, decided apart from the image's own generator so it can be read without
    rendering."""
    return STYLES[int(np.random.default_rng([int(seed), int(index), len(STYLES)]).integers(len(STYLES)))]


def render_example(
    seed: int, index: int, shape: str, colour: Optional[str], style: str, size: Optional[str] = None
) -> Tuple[np.ndarray, Scene]:
    """Image ``index`` of stream ``seed`` showing ``colour shape`` in ``style``: (uint8 pixels, scene).

    ``colour=None`` draws the colour at random. A pure function of its arguments, so any image can
    be regenerated on its own.
    """
    rng = image_rng(seed, index)
    if colour is None:
        colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
    scene = sample_scene(rng, shape, colour, style, size)
    return render(scene, rng), scene


def class_balanced_images(
    seed: int,
    style: str,
    per_class: int,
    labels: Optional[Sequence[int]] = None,
    size: Optional[str] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """``per_class`` images of each class in ``labels`` (default: all 64) in one style.

    Image ``k`` shows class ``labels[k % len(labels)]`` and is ``render_example(seed, k, ...)``, so
    a larger ``per_class`` extends a smaller one. Returns uint8 images [N, H, W, 3] and labels [N].
    """
    labels = list(range(len(SHAPES) * len(COLOUR_NAMES))) if labels is None else list(labels)
    count = per_class * len(labels)
    images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    image_labels = np.empty(count, np.int64)
    for k in range(count):
        label = labels[k % len(labels)]
        shape, colour = class_of(label)
        images[k], _ = render_example(seed, k, shape, colour, style, size)
        image_labels[k] = label
    return images, image_labels


def sample_pairs(
    seed: int, count: int, styles: Sequence[str] = STYLES, start: int = 0
) -> Tuple[np.ndarray, List[str], np.ndarray]:
    """``count`` random (image, caption) pairs over all classes and the given styles.

    Returns uint8 images [count, IMAGE_SIZE, IMAGE_SIZE, 3], captions, and the class labels [count].
    Pair ``i`` is decided by ``image_rng(seed, start + i)`` alone, so chunks can be made separately.
    """
    images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    captions: List[str] = []
    labels = np.empty(count, np.int64)
    num_classes = len(SHAPES) * len(COLOUR_NAMES)
    for i in range(count):
        rng = image_rng(seed, start + i)
        label = int(rng.integers(num_classes))
        style = styles[int(rng.integers(len(styles)))]
        shape, colour = class_of(label)
        scene = sample_scene(rng, shape, colour, style)
        images[i] = render(scene, rng)
        captions.append(caption(scene, rng))
        labels[i] = label
    return images, captions, labels
