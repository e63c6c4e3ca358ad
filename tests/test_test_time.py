"""The label-free per-image rules of ``prompt_diffusion.test_time``, each on a case whose answer is known:
template weighting and selection, CLIP's prompt ensemble, TPT's views, confidence selection and
objective, Zero's vote and its tie rule."""
import math

import pytest
import torch
import torch.nn.functional as F

from prompt_diffusion.clip_prompting import prompted_logits
from prompt_diffusion.test_time import (
    augmented_views, average_entropy, confident_views, ensemble_text_features, random_resized_crop_box,
    selected_template_logits, template_weights, weighted_template_log_probs, zero_predictions,
)


def test_template_selection_and_weighting_pick_the_template_that_matches_the_image():
    """Text features "class + style" (4 classes x 3 styles); each image is one class in one style.
    The template of the image's style answers it most strongly, whatever its class."""
    torch.manual_seed(0)
    classes, styles = torch.randn(4, 64), 2.0 * torch.randn(3, 64)
    text = F.normalize(classes[None] + styles[:, None], dim=-1)  # [T=3, K=4, E]
    labels, image_styles = torch.tensor([0, 1, 2, 3, 1, 2]), torch.tensor([2, 0, 1, 2, 1, 0])
    images = classes[labels] + styles[image_styles] + 0.1 * torch.randn(6, 64)  # [B, E]
    logits = prompted_logits(images, text.flatten(0, 1), torch.tensor(math.log(20.0))).view(6, 3, 4)

    assert torch.equal(template_weights(logits).argmax(dim=1), image_styles)
    assert torch.equal(selected_template_logits(logits), logits[torch.arange(6), image_styles])
    assert torch.equal(weighted_template_log_probs(logits).argmax(dim=1), labels)
    assert torch.equal(selected_template_logits(logits).argmax(dim=1), labels)


def test_soft_weights_are_the_softmax_of_the_log_sum_exp_scores():
    """Template 0's logits (0, 0) score log 2, template 1's (log 2, log 4) score log 6: weights 1/4, 3/4.
    Prediction: 1/4 (1/2, 1/2) + 3/4 (1/3, 2/3) = (3/8, 5/8), the classes' share of one softmax over
    all (template, class) logits."""
    logits = torch.tensor([[[0.0, 0.0], [math.log(2.0), math.log(4.0)]]])  # [B=1, T=2, K=2]
    assert torch.allclose(template_weights(logits), torch.tensor([[0.25, 0.75]]))
    assert torch.allclose(weighted_template_log_probs(logits).exp(), torch.tensor([[3 / 8, 5 / 8]]))
    joint = logits.flatten(1).softmax(dim=1).view(1, 2, 2).sum(dim=1)
    assert torch.allclose(weighted_template_log_probs(logits).exp(), joint)


def test_ensemble_is_the_renormalised_mean_of_the_normalised_template_features():
    text = torch.tensor([[[2.0, 0.0], [0.0, -1.0]], [[0.0, 3.0], [0.0, -5.0]]])  # [T=2, K=2, E=2]
    expected = torch.tensor([[1.0, 1.0], [0.0, -2.0]]) / torch.tensor([[math.sqrt(2.0)], [2.0]])
    assert torch.allclose(ensemble_text_features(text), expected)


def sharp_views(argmaxes, sharpness, n_classes=3, extra=None):
    """Logits ``[1, N, K]``: view i is ``sharpness[i]`` on class ``argmaxes[i]`` (sharper: lower entropy)."""
    logits = torch.stack([s * F.one_hot(torch.tensor(c), n_classes).float() for c, s in zip(argmaxes, sharpness)])
    return (logits if extra is None else logits + extra)[None]


def test_confidence_selection_keeps_the_lowest_entropy_views_most_confident_first():
    logits = sharp_views([0, 1, 2, 0, 1], [1.0, 5.0, 0.5, 3.0, 2.0])
    assert torch.equal(confident_views(logits, fraction=0.4), torch.tensor([[1, 3]]))  # int(5 x 0.4) = 2 kept
    assert torch.equal(confident_views(logits, fraction=1.0), torch.tensor([[1, 3, 4, 0, 2]]))
    with pytest.raises(ValueError, match=r"keeps int\(5 views x 0.1\) = 0 views"):
        confident_views(logits)  # TPT's 0.1 of 5 views keeps none


def test_average_entropy_is_the_entropy_of_the_mean_prediction():
    """Views predicting (0.8, 0.2) and (0.4, 0.6): mean (0.6, 0.4), entropy -(0.6 ln 0.6 + 0.4 ln 0.4),
    not the mean of the two views' entropies."""
    logits = torch.tensor([[[0.8, 0.2], [0.4, 0.6]]]).log() + 3.0  # a shift changes no probability
    expected = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4))
    assert average_entropy(logits).item() == pytest.approx(expected, rel=1e-6)
    mean_of_entropies = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2) + 0.4 * math.log(0.4) + 0.6 * math.log(0.6)) / 2
    assert abs(expected - mean_of_entropies) > 0.05


def test_zero_votes_the_majority_of_the_confident_argmaxes():
    # 10 views, 0.5 kept: the five sharpest vote 2, 2, 0, 1, 2; the five others (all 0) never vote
    logits = sharp_views([2, 2, 0, 1, 2, 0, 0, 0, 0, 0], [10, 9, 8, 7, 6, 1, 1, 1, 1, 1])
    assert zero_predictions(logits, fraction=0.5).tolist() == [2]
    assert zero_predictions(logits, fraction=1.0).tolist() == [0]  # all ten vote: six for class 0


def test_zero_breaks_a_tie_by_the_discarded_views_most_confident_first():
    # kept (0.4 of 10): 0, 1, 0, 1, a tie; the discarded views, most confident first, say 2, 1, 0, ...
    tie = [0, 1, 0, 1]
    sharpness = [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
    assert zero_predictions(sharp_views(tie + [2, 1, 0, 0, 0, 0], sharpness), fraction=0.4).tolist() == [1]
    assert zero_predictions(sharp_views(tie + [2, 0, 1, 1, 1, 1], sharpness), fraction=0.4).tolist() == [0]
    # no discarded view votes a tied class: the tied class with the highest logit in the most confident
    # discarded view (view 4: class 1 above class 0)
    extra = torch.zeros(10, 3)
    extra[4, 1] = 0.5
    logits = sharp_views(tie + [2] * 6, sharpness, extra=extra)
    assert zero_predictions(logits, fraction=0.4).tolist() == [1]
    extra[4] = torch.tensor([0.5, 0.0, 0.0])
    assert zero_predictions(sharp_views(tie + [2] * 6, sharpness, extra=extra), fraction=0.4).tolist() == [0]


def test_views_are_reproducible_per_generator_and_the_first_is_the_image():
    images = torch.rand(2, 3, 32, 32)
    views = augmented_views(images, 8, torch.Generator().manual_seed(1))  # [B, N, 3, H, W]
    assert views.shape == (2, 8, 3, 32, 32)
    assert torch.equal(views[:, 0], images)
    assert torch.equal(views, augmented_views(images, 8, torch.Generator().manual_seed(1)))
    other = augmented_views(images, 8, torch.Generator().manual_seed(2))
    assert torch.equal(other[:, 0], images) and not torch.equal(other[:, 1:], views[:, 1:])
    assert all(not torch.equal(views[0, i], views[0, j]) for i in range(8) for j in range(i))
    # the same image with the same generator state has the same views, whatever the batch around it
    alone = augmented_views(images[:1], 8, torch.Generator().manual_seed(1))
    assert torch.equal(alone[0], views[0])
    assert torch.equal(augmented_views(images, 1, torch.Generator()), images[:, None])
    with pytest.raises(ValueError, match="at least one view"):
        augmented_views(images, 0, torch.Generator())


def test_views_of_a_normalised_image_are_the_normalised_views():
    """Crop, bilinear resize and flip commute with the loader's per-channel normalisation."""
    mean, std = torch.tensor([0.48, 0.46, 0.41]).view(3, 1, 1), torch.tensor([0.27, 0.26, 0.28]).view(3, 1, 1)
    pixels = torch.rand(1, 3, 32, 32)
    views = augmented_views(pixels, 16, torch.Generator().manual_seed(3))
    normalised = augmented_views((pixels - mean) / std, 16, torch.Generator().manual_seed(3))
    assert torch.allclose(normalised, (views - mean) / std, atol=1e-5)


def test_crop_boxes_lie_in_the_image_with_the_allowed_area_and_ratio():
    generator = torch.Generator().manual_seed(0)
    for height, width in ((32, 32), (24, 40)):
        for _ in range(200):
            top, left, crop_height, crop_width = random_resized_crop_box(height, width, generator)
            assert 0 <= top and top + crop_height <= height and 0 <= left and left + crop_width <= width
            assert crop_height * crop_width >= 0.08 * height * width * 0.8  # rounding of small crops
            assert 3 / 4 * 0.8 <= crop_width / crop_height <= 4 / 3 * 1.25
