"""Label-free inference rules per test image, the reference rows a per-image prompt is measured against.

Two families, both on CLIP logits that a trainer computes (this module never sees CLIP):

- a **template bank** (T hand-written templates x K classes): CLIP's prompt ensemble (Radford et al.,
  ICML 2021, "Learning Transferable Visual Models From Natural Language Supervision", §3.1.4), and the
  per-image weighting and selection of the templates by how strongly the image answers each of them;
- **augmented views** of a test image: TPT (Shu et al., NeurIPS 2022, "Test-Time Prompt Tuning for
  Zero-Shot Generalization in Vision-Language Models"; code azshue/TPT) and Zero (Farina et al.,
  NeurIPS 2024, "Frustratingly Easy Test-Time Adaptation of Vision-Language Models"; code
  FarinaMatteo/zero): the image and N-1 random views of it, the views whose prediction is most
  confident, TPT's objective over them (the entropy of their averaged prediction) and Zero's
  prediction (the vote of their argmaxes).

Pure torch: imports torch, torchvision's tensor transforms and the label-free objectives of
``diffusion.overfit``; never CLIP, yacs, Dassl or a trainer.
"""
import math
from typing import Tuple

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from prompt_diffusion.diffusion.overfit import agreement_objective, entropy_objective


# ------------------------------------------------------------------ a bank of T templates
def ensemble_text_features(text_features: Tensor) -> Tensor:
    """CLIP's prompt ensemble: ``[T, K, E]`` -> ``[K, E]``, each class's mean over the T templates of
    its normalised text features, renormalised (CLIP's prompt-engineering notebook). One text
    feature per class for the whole dataset: the fixed-prompt reference the per-image rules below
    are measured against."""
    normalised = text_features / text_features.norm(dim=-1, keepdim=True)
    mean = normalised.mean(dim=0)  # [K, E]
    return mean / mean.norm(dim=-1, keepdim=True)


def template_scores(logits: Tensor) -> Tensor:
    """How strongly an image answers each template, label-free: ``[B, T, K]`` -> ``[B, T]``, the
    log-sum-exp over the K classes of the template's logits. It is minus the ``agreement`` objective
    of ``diffusion.overfit`` (the image's similarity to every class's text at once): a template that
    names the image's style (say "a sketch of a {}." for a sketch) raises every class's logit."""
    n_images, n_templates, n_classes = logits.shape
    return -agreement_objective(logits.reshape(n_images * n_templates, n_classes)).view(n_images, n_templates)


def template_weights(logits: Tensor) -> Tensor:
    """Each image's weights over the templates: ``[B, T, K]`` -> ``[B, T]``, the softmax over templates
    of ``template_scores``."""
    return template_scores(logits).softmax(dim=1)


def weighted_template_log_probs(logits: Tensor) -> Tensor:
    """Per-image template weighting, label-free: ``[B, T, K]`` -> ``[B, K]``, the log of the weighted
    mean over templates of the templates' class probabilities, weighted by ``template_weights``.

    The weighted mean equals the marginal over templates of one softmax over all T x K (template,
    class) logits: ``w_t p_tk = exp(l_tk) / sum_t'k' exp(l_t'k')``. So it costs a zero-shot row's pass
    (one image feature, T x K fixed text features) and no step of any kind."""
    weights = template_weights(logits)  # [B, T]
    probs = torch.einsum("bt,btk->bk", weights, logits.float().softmax(dim=2))
    return probs.log()


def selected_template_logits(logits: Tensor) -> Tensor:
    """Per-image template selection: ``[B, T, K]`` -> ``[B, K]``, the logits of the one template with
    the highest ``template_scores`` for that image (the first such on a tie, as ``argmax``)."""
    best = template_scores(logits).argmax(dim=1)  # [B]
    return logits[torch.arange(logits.shape[0], device=logits.device), best]


# ------------------------------------------------------------------ views of a test image (TPT, Zero)
#: RandomResizedCrop's ranges (torchvision's defaults, which TPT and Zero use): area share, aspect ratio
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def random_resized_crop_box(height: int, width: int, generator: torch.Generator) -> Tuple[int, int, int, int]:
    """A random crop ``(top, left, crop_height, crop_width)`` of a ``height x width`` image, drawn as
    torchvision's ``RandomResizedCrop`` draws it (an area share in ``CROP_SCALE`` and a log-uniform
    aspect ratio in ``CROP_RATIO``, up to 10 tries, else the central crop of the nearest allowed
    ratio) but from ``generator``, which torchvision's transform cannot take."""
    area = height * width
    log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        share, log_ratio = torch.rand(2, generator=generator).tolist()
        target_area = area * (CROP_SCALE[0] + share * (CROP_SCALE[1] - CROP_SCALE[0]))
        ratio = math.exp(log_low + log_ratio * (log_high - log_low))
        crop_width = round(math.sqrt(target_area * ratio))
        crop_height = round(math.sqrt(target_area / ratio))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(torch.randint(0, height - crop_height + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - crop_width + 1, (1,), generator=generator))
            return top, left, crop_height, crop_width
    ratio = min(max(width / height, CROP_RATIO[0]), CROP_RATIO[1])  # the image's own, clamped to the range
    if width / height <= ratio:
        crop_width, crop_height = width, round(width / ratio)
    else:
        crop_width, crop_height = round(height * ratio), height
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def augmented_views(images: Tensor, n_views: int, generator: torch.Generator) -> Tensor:
    """TPT's and Zero's views of each test image: ``[B, 3, H, W]`` -> ``[B, n_views, 3, H, W]``. View 0
    is the image itself; views 1 .. n_views - 1 are random resized crops (``random_resized_crop_box``,
    resized back to H x W, bilinear) each flipped horizontally with probability 1/2.

    This is the recipe TPT uses on ImageNet and its shifted variants (``AugMixAugmenter`` with
    ``augmix=False``) and Zero uses on every dataset. TPT's AugMix on top (its fine-grained datasets)
    is left out: its operations (posterize, solarize, shear, translate by a third of the side) are
    PIL operations on 224-pixel 8-bit images, not the same recipe on a loader's 32-pixel float tensors.
    Upstream crops the original picture before resizing; here a view is cropped from the loader's
    image, the only one a trainer has.

    The images may be normalised (a loader's output): cropping, bilinear resizing and flipping are
    linear maps whose weights sum to 1, so they commute with the per-channel ``(x - mean) / std``.
    Draws come from ``generator`` image by image, view by view: the same generator state gives the
    same views, so seeding a generator per image makes each image's views its own.
    """
    if n_views < 1:
        raise ValueError(f"n_views = {n_views}: a test image needs at least one view (itself)")
    height, width = images.shape[-2:]
    views = []
    for image in images:  # [3, H, W]
        views.append(image)
        for _ in range(n_views - 1):
            top, left, crop_height, crop_width = random_resized_crop_box(height, width, generator)
            view = TF.resized_crop(image, top, left, crop_height, crop_width, [height, width], antialias=True)
            flip = bool(torch.rand(1, generator=generator) < 0.5)
            views.append(TF.horizontal_flip(view) if flip else view)
    return torch.stack(views).view(images.shape[0], n_views, *images.shape[1:])  # [B, N, 3, H, W]


def view_entropies(logits: Tensor) -> Tensor:
    """The entropy of each view's prediction: ``[B, N, K]`` -> ``[B, N]`` (``entropy_objective``)."""
    n_images, n_views, n_classes = logits.shape
    return entropy_objective(logits.reshape(n_images * n_views, n_classes)).view(n_images, n_views)


def kept_view_count(n_views: int, fraction: float) -> int:
    """How many of ``n_views`` views the confidence selection keeps: ``int(n_views * fraction)``, as TPT
    and Zero count them. TPT keeps 0.1 of its 64 views (6); Zero's code keeps 0.3 (``ttas/zero.py``:
    ``gamma``). A selection that keeps no view is an error (upstream would average nothing)."""
    n_kept = int(n_views * fraction)
    if n_kept < 1:
        raise ValueError(f"the confidence selection keeps int({n_views} views x {fraction}) = {n_kept} views: "
                         "give more views or a larger fraction")
    return n_kept


def views_by_confidence(logits: Tensor) -> Tensor:
    """``[B, N, K]`` -> ``[B, N]``: each image's view indices by increasing prediction entropy (most
    confident first; equal entropies keep their view order)."""
    return view_entropies(logits).argsort(dim=1, stable=True)


def confident_views(logits: Tensor, fraction: float = 0.1) -> Tensor:
    """TPT's confidence selection: ``[B, N, K]`` -> ``[B, n]``, the indices of each image's
    ``kept_view_count(N, fraction)`` views of lowest prediction entropy, most confident first."""
    return views_by_confidence(logits)[:, :kept_view_count(logits.shape[1], fraction)]


def average_entropy(logits: Tensor) -> Tensor:
    """TPT's objective: ``[B, n, K]`` -> ``[B]``, the entropy of each image's mean prediction over its
    n (kept) views, the mean taken over probabilities (in log space, as TPT's ``avg_entropy``).
    TPT lowers it by one AdamW step of 5e-3 on the prompt, reset per image, then predicts from
    view 0 with the tuned prompt."""
    log_probs = logits.float().log_softmax(dim=2)  # [B, n, K]
    log_mean = torch.logsumexp(log_probs, dim=1) - math.log(logits.shape[1])  # [B, K]
    return entropy_objective(log_mean)


def zero_predictions(logits: Tensor, fraction: float = 0.3) -> Tensor:
    """Zero's prediction: ``[B, N, K]`` -> ``[B]``, for each image the class that most of its
    ``confident_views`` vote for (each kept view votes its argmax: the softmax at temperature zero).
    No backward, no prompt change.

    Ties as upstream (``ttas/zero.py``, ``greedy_break``): the discarded views decide, most confident
    first: the first whose argmax is a tied class gives it; if none does, the tied class with the
    highest logit in the most confident discarded view (upstream masks that logit with ``~ties`` on
    indices, which is not the tied classes; the intent is kept); with no view discarded, the tied
    class with the highest logit in the most confident view."""
    n_images, n_views, n_classes = logits.shape
    n_kept = kept_view_count(n_views, fraction)
    order = views_by_confidence(logits)  # [B, N]
    ranked = torch.gather(logits, 1, order.unsqueeze(2).expand_as(logits))  # [B, N, K]: views by confidence
    argmaxes = ranked.argmax(dim=2)  # [B, N]
    votes = torch.zeros(n_images, n_classes, dtype=torch.long, device=logits.device)  # [B, K]
    votes.scatter_add_(1, argmaxes[:, :n_kept], torch.ones_like(argmaxes[:, :n_kept]))
    predictions = votes.argmax(dim=1)  # [B]
    for b in range(n_images):
        tied = torch.nonzero(votes[b] == votes[b].max()).flatten().tolist()
        if len(tied) > 1:
            discarded = argmaxes[b, n_kept:].tolist()
            deciding = next((c for c in discarded if c in tied), None)
            if deciding is None:
                view = ranked[b, n_kept if discarded else 0]  # [K]
                deciding = tied[int(view[tied].argmax())]
            predictions[b] = deciding
    return predictions
