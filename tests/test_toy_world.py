"""The toy world: deterministic pixels, every class drawable in every style, captions that fit."""
import colorsys
import itertools

import numpy as np
import pytest

from prompt_diffusion.data import toy_world
from prompt_diffusion.toy_clip import TRAIN_CONTEXT_LENGTH, tokenize

# hue (degrees) of each named colour, for telling which colour a rendered object has
COLOUR_HUES = {name: 360.0 * colorsys.rgb_to_hsv(*rgb)[0] for name, rgb in toy_world.COLOURS.items()}


def object_colour(pixels: np.ndarray, scene: toy_world.Scene) -> str:
    """The named colour nearest in hue to the mean colour of the object's pixels.

    Hue survives the styles' darker / pastel variants and the achromatic clutter; the object's
    pixels are where its fill (outline, for sketches) covers most of the pixel.
    """
    if scene.style == "sketch":
        coverage = toy_world._outline_mask(scene, 3)
    else:
        coverage = toy_world._fill_mask(scene)
    s = toy_world._SUPERSAMPLE
    coverage = coverage.reshape(toy_world.IMAGE_SIZE, s, toy_world.IMAGE_SIZE, s).mean(axis=(1, 3))
    inside = coverage > 0.75
    assert inside.sum() >= 6, "object barely visible"
    mean_rgb = pixels[inside].astype(np.float64).mean(axis=0) / 255.0
    hue = 360.0 * colorsys.rgb_to_hsv(*mean_rgb)[0]
    return min(COLOUR_HUES, key=lambda name: abs((hue - COLOUR_HUES[name] + 180.0) % 360.0 - 180.0))


def test_same_seed_same_pixels_and_captions():
    first, first_captions, first_labels = toy_world.sample_pairs(seed=7, count=12)
    second, second_captions, second_labels = toy_world.sample_pairs(seed=7, count=12)
    assert np.array_equal(first, second)
    assert first_captions == second_captions and np.array_equal(first_labels, second_labels)
    # pair i depends on (seed, start + i) only: a later chunk regenerates the same pairs
    tail, tail_captions, _ = toy_world.sample_pairs(seed=7, count=4, start=8)
    assert np.array_equal(tail, first[8:]) and tail_captions == first_captions[8:]
    other, _, _ = toy_world.sample_pairs(seed=8, count=12)
    assert not np.array_equal(first, other)


def test_render_example_is_a_pure_function():
    a, scene_a = toy_world.render_example(3, 5, "star", "blue", "rendition")
    b, scene_b = toy_world.render_example(3, 5, "star", "blue", "rendition")
    assert np.array_equal(a, b) and scene_a == scene_b
    c, _ = toy_world.render_example(3, 6, "star", "blue", "rendition")
    assert not np.array_equal(a, c)
    assert a.dtype == np.uint8 and a.shape == (toy_world.IMAGE_SIZE, toy_world.IMAGE_SIZE, 3)


@pytest.mark.parametrize("style", toy_world.STYLES)
def test_every_class_is_drawable_in_every_style(style):
    shapes_masks = {}
    for label, name in enumerate(toy_world.class_names()):
        shape, colour = toy_world.class_of(label)
        assert name == f"{colour} {shape}"
        pixels, scene = toy_world.render_example(11, label, shape, colour, style)
        assert object_colour(pixels, scene) == colour, f"{name} in {style}"
        mask = toy_world._fill_mask(scene)
        canvas = toy_world._CANVAS
        # the whole object lies inside the frame: no mask on the border rows/columns
        assert mask[[0, canvas - 1], :].max() == 0 and mask[:, [0, canvas - 1]].max() == 0
        assert mask.mean() > 0.03, f"{name}: object too small"
    # the same nuisance factors with different shapes give clearly different silhouettes
    _, scene = toy_world.render_example(11, 0, "circle", "red", style)
    for shape in toy_world.SHAPES:
        shapes_masks[shape] = toy_world._fill_mask(toy_world.Scene(
            shape, "red", style, 10.0, scene.center, 0.0, scene.background)) > 0.5
    for first, second in itertools.combinations(toy_world.SHAPES, 2):
        a, b = shapes_masks[first], shapes_masks[second]
        assert (a & b).sum() / (a | b).sum() < 0.85, f"{first} and {second} look alike"


def test_size_request_and_random_colour():
    for size, (low, high) in toy_world.SIZE_RADIUS_RANGE.items():
        for index in range(5):
            _, scene = toy_world.render_example(2, index, "heart", None, "photo", size)
            assert low <= scene.radius <= high and scene.size_word == size
    colours = {toy_world.render_example(2, index, "heart", None, "photo")[1].colour for index in range(40)}
    assert len(colours) >= 6


def test_bad_attribute_names_are_refused():
    with pytest.raises(ValueError, match="unknown toy world shape 'hexagon'"):
        toy_world.render_example(0, 0, "hexagon", "red", "photo")
    with pytest.raises(ValueError, match="allowed: photo, sketch, rendition, clutter"):
        toy_world.render_example(0, 0, "circle", "red", "oil")
    with pytest.raises(ValueError, match="out of range"):
        toy_world.class_of(64)


def test_every_caption_fits_the_training_context():
    longest = dict(c=max(toy_world.COLOUR_NAMES, key=len), o=max(toy_world.SHAPES, key=len),
                   z=max(toy_world.SIZES, key=len), b="on a light background",
                   p=max((w for row in toy_world._POSITION_WORDS for w in row), key=len))
    captions = [template.format(s=word, **longest)
                for template in toy_world.CAPTION_TEMPLATES
                for words in toy_world.STYLE_WORDS.values() for word in words]
    tokens = tokenize(captions, TRAIN_CONTEXT_LENGTH)  # raises if one does not fit
    assert tokens.shape == (len(captions), TRAIN_CONTEXT_LENGTH)
    _, sampled, _ = toy_world.sample_pairs(seed=0, count=200)
    assert all(caption.endswith(".") for caption in sampled)
    assert any("sketch" in c for c in sampled) and any("small" in c or "large" in c for c in sampled)
