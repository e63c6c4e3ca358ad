"""Per-sample overfitting: every sample's loss falls, and batched equals one-sample-at-a-time."""
import pytest
import torch
import torch.nn.functional as F

from prompt_diffusion.diffusion import overfit_prompts
from prompt_diffusion.diffusion.overfit import target_objective

BATCH, CLASSES = 6, 3


class ToyPromptClassifier(torch.nn.Module):
    """logits = (image feature ⊙ mean prompt token) @ W: a linear classifier steered by prompts."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(8, CLASSES)

    def forward(self, features, prompts):
        steer = prompts["text"].mean(dim=1) + prompts["extra"].sum(dim=(1, 2))[:, None]  # [B, 8]
        return self.head(features * steer)


@pytest.fixture()
def problem():
    torch.manual_seed(0)
    model = ToyPromptClassifier()
    features, labels = torch.randn(BATCH, 8), torch.randint(0, CLASSES, (BATCH,))
    init = {"text": torch.randn(4, 8).expand(BATCH, 4, 8), "extra": torch.zeros(BATCH, 1, 2)}
    return model, features, labels, init


def per_sample_loss_for(model, features, labels):
    return lambda prompts: F.cross_entropy(model(features, prompts), labels, reduction="none")


@pytest.mark.parametrize("step_rule", ["sgd", "sign"])
def test_overfitting_lowers_every_sample_loss(problem, step_rule):
    model, features, labels, init = problem
    loss_fn = per_sample_loss_for(model, features, labels)
    result = overfit_prompts(init, loss_fn, iters=5, lr=0.5 if step_rule == "sgd" else 0.05, step_rule=step_rule)
    with torch.no_grad():
        before, after = loss_fn(init), loss_fn(result)
    assert torch.all(after < before), (before, after)
    assert not result["text"].requires_grad
    assert all(p.grad is None for p in model.parameters())  # only the prompts were differentiated


def test_batched_overfitting_equals_each_sample_alone(problem):
    model, features, labels, init = problem
    batched = overfit_prompts(init, per_sample_loss_for(model, features, labels), iters=4, lr=0.5)
    for b in range(BATCH):
        alone = overfit_prompts(
            {name: v[b : b + 1] for name, v in init.items()},
            per_sample_loss_for(model, features[b : b + 1], labels[b : b + 1]),
            iters=4,
            lr=0.5,
        )
        for name in init:
            assert torch.allclose(batched[name][b : b + 1], alone[name], atol=1e-6)


def test_overfitting_runs_under_no_grad_and_checks_its_inputs(problem):
    model, features, labels, init = problem
    loss_fn = per_sample_loss_for(model, features, labels)
    with torch.no_grad():
        result = overfit_prompts(init, loss_fn, iters=2, lr=0.5)
    assert not torch.equal(result["text"], init["text"])
    copy = overfit_prompts(init, loss_fn, iters=0, lr=0.5)
    assert torch.equal(copy["text"], init["text"]) and copy["text"] is not init["text"]
    with pytest.raises(ValueError, match="one loss per sample"):
        overfit_prompts(init, lambda p: loss_fn(p).mean(), iters=1, lr=0.5)
    with pytest.raises(ValueError, match="sgd, sign"):
        overfit_prompts(init, loss_fn, iters=1, lr=0.5, step_rule="adam")


# ---------------------------------------------------------------------- overfitting targets
def class_prompt_logits(prompt, images, class_texts):
    """``logits[b, k] = (class_texts[k] + prompt[b]) · images[b]``: one shared prompt vector added to
    every class's text, as a context token shifts every class prompt ``[B, d]``, ``[K, d]`` -> ``[B, K]``."""
    return torch.einsum("bkd,bd->bk", class_texts[None] + prompt[:, None], images)


def overfit_to(target, prompt, images, class_texts, labels=None):
    """One SGD step of lr 0.1 of ``target`` from ``prompt`` ``[B, d]``."""
    def loss(prompts):
        return target_objective(target, class_prompt_logits(prompts["v"], images, class_texts), labels)

    return overfit_prompts({"v": prompt}, loss, iters=1, lr=0.1, step_rule="sgd")["v"]


def test_agreement_moves_every_prompt_along_its_own_image_whatever_the_class():
    """With a prompt shared by all class texts, ∂(−logsumexp)/∂v = −images[b] exactly: the
    class-agnostic target moves each sample's prompt along its own image (what the image shares with
    every class), and one SGD step of lr moves it by lr · image. The true-label CE cannot move such
    a shared shift at all (it raises every class's logit alike)."""
    torch.manual_seed(0)
    images, class_texts = torch.randn(BATCH, 5), torch.randn(CLASSES, 5)
    labels = torch.randint(0, CLASSES, (BATCH,))
    prompt = torch.randn(BATCH, 5)
    moved = overfit_to("agreement", prompt, images, class_texts)
    torch.testing.assert_close(moved - prompt, 0.1 * images)
    torch.testing.assert_close(overfit_to("label", prompt, images, class_texts, labels), prompt)


def test_label_moves_toward_the_true_class_and_entropy_toward_the_leading_one():
    """Prompt = a per-class logit offset (``logits = v``, one-hot class texts of a zero image
    plus the prompt): at a uniform start the true-label CE moves the true class up by lr(1 − 1/K)
    and every other down by lr/K; the entropy has no gradient there (its maximum) and, from a
    start where one class leads, raises the leader and lowers the rest (TPT's sharpening)."""
    def step(target, start, labels=None):
        def loss(prompts):
            return target_objective(target, prompts["v"], labels)

        return overfit_prompts({"v": start}, loss, iters=1, lr=0.3, step_rule="sgd")["v"] - start

    labels = torch.tensor([0, 2])
    uniform = torch.zeros(2, CLASSES)
    expected = torch.full((2, CLASSES), -0.3 / CLASSES)
    expected[torch.arange(2), labels] = 0.3 * (1 - 1 / CLASSES)
    torch.testing.assert_close(step("label", uniform, labels), expected)
    torch.testing.assert_close(step("entropy", uniform), torch.zeros(2, CLASSES))
    leading = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.5]])
    moved = step("entropy", leading)
    assert (moved[0, 0] > 0) and (moved[0, 1:] < 0).all() and (moved[1, 2] > 0) and (moved[1, :2] < 0).all()


def test_label_free_targets_need_no_labels_and_the_label_target_does():
    torch.manual_seed(1)
    logits, labels = torch.randn(BATCH, CLASSES), torch.randint(0, CLASSES, (BATCH,))
    torch.testing.assert_close(target_objective("agreement", logits, None), -torch.logsumexp(logits, 1))
    torch.testing.assert_close(target_objective("label", logits, labels), F.cross_entropy(logits, labels, reduction="none"))
    assert target_objective("entropy", logits, None).shape == (BATCH,)
    with pytest.raises(ValueError, match="'label' needs the labels"):
        target_objective("label", logits, None)
    with pytest.raises(ValueError, match="unknown overfitting target 'margin'"):
        target_objective("margin", logits, labels)


def test_removing_class_means_leaves_what_each_image_adds_to_its_class():
    """Residual = class offset + the image's own part (zero mean within each class): after a pass
    over the data the running class means are the offsets, and what is left is each image's part."""
    from prompt_diffusion.diffusion.overfit import remove_class_means

    torch.manual_seed(2)
    offsets, own = torch.randn(CLASSES, 4, 3), torch.randn(CLASSES, 6, 4, 3)
    own = own - own.mean(dim=1, keepdim=True)  # [K, 6 images, ...]: zero mean per class
    means, counts = {"text": torch.zeros(CLASSES, 4, 3)}, torch.zeros(CLASSES, dtype=torch.long)
    labels = torch.arange(CLASSES).repeat_interleave(6)  # [18]
    residual = {"text": (offsets[:, None] + own).reshape(-1, 4, 3)}
    remove_class_means(residual, labels, means, counts, momentum=0.0)  # one pass: plain averages
    torch.testing.assert_close(means["text"], offsets)
    assert counts.tolist() == [6] * CLASSES
    within = remove_class_means(residual, labels, means, counts, momentum=0.0)  # the means move no more
    torch.testing.assert_close(within["text"], own.reshape(-1, 4, 3), atol=1e-5, rtol=1e-5)
