"""Per-sample overfitting: every sample's loss falls, and batched equals one-sample-at-a-time."""
import pytest
import torch
import torch.nn.functional as F

from prompt_diffusion.diffusion import overfit_prompts

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
