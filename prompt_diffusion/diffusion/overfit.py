"""Per-sample prompt overfitting (paper §4.1): a few gradient steps on each sample's own loss.

All samples are optimised together: each sample's loss depends only on its own prompt row, so the
gradient of the *summed* loss with respect to the batched prompts ``[B, ...]`` is exactly each
sample's own gradient. One batched forward/backward per iteration gives the B separate results.
(This needs a loss without cross-sample coupling: e.g. no BatchNorm in training mode.)
"""
from typing import Callable, Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

Prompts = Dict[str, Tensor]
StepRule = Callable[[Tensor, Tensor, float], Tensor]


def sgd_step(prompt: Tensor, grad: Tensor, lr: float) -> Tensor:
    """Plain gradient descent: ``V − η ∇V``."""
    return prompt - lr * grad


def sign_step(prompt: Tensor, grad: Tensor, lr: float) -> Tensor:
    """Signed gradient descent: ``V − η sign(∇V)`` (a step size independent of the loss scale)."""
    return prompt - lr * grad.sign()


STEP_RULES: Dict[str, StepRule] = {"sgd": sgd_step, "sign": sign_step}


# ------------------------------------------------------------------ what a sample's prompt is overfitted to
def label_objective(logits: Tensor, labels: Tensor) -> Tensor:
    """The paper's target (§4.1): each sample's cross-entropy with its true label ``[B]``. It moves
    the prompt toward the sample's class, which a generator that sees only the image cannot know."""
    return F.cross_entropy(logits, labels, reduction="none")


def entropy_objective(logits: Tensor) -> Tensor:
    """The entropy of each sample's prediction ``[B]`` (TPT's objective, Shu et al., NeurIPS 2022,
    on one view): label-free; it sharpens whichever class already leads."""
    log_p = logits.float().log_softmax(dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def agreement_objective(logits: Tensor) -> Tensor:
    """Minus the log-sum-exp of each sample's logits over all classes ``[B]``: label-free and
    class-agnostic. Lowering it raises the image's similarity to every class's text at once, so
    the prompt moves along what the image shares with all of them (its style, its domain), not
    toward one class."""
    return -torch.logsumexp(logits.float(), dim=1)


#: ``TRAINER.PD.OVERFIT.TARGET``: name -> (per-sample objective, whether it needs the labels)
LABEL_FREE_OBJECTIVES: Dict[str, Callable[[Tensor], Tensor]] = {"entropy": entropy_objective,
                                                                "agreement": agreement_objective}
OVERFIT_TARGETS = ("label", *LABEL_FREE_OBJECTIVES)


def target_objective(target: str, logits: Tensor, labels: Optional[Tensor]) -> Tensor:
    """The per-sample loss ``[B]`` that overfitting lowers for ``target`` (``OVERFIT_TARGETS``):
    ``label`` is the true-label CE; a label-free target is its objective (``labels`` may be None)."""
    if target == "label":
        if labels is None:
            raise ValueError("the overfitting target 'label' needs the labels (a label-free target does not)")
        return label_objective(logits, labels)
    if target not in LABEL_FREE_OBJECTIVES:
        raise ValueError(f"unknown overfitting target {target!r}; allowed: {', '.join(OVERFIT_TARGETS)}")
    return LABEL_FREE_OBJECTIVES[target](logits)


def overfit_prompts(
    init: Prompts,
    per_sample_loss: Callable[[Prompts], Tensor],
    iters: int,
    lr: float,
    step_rule: Union[str, StepRule] = "sgd",
    first_grad: Optional[Prompts] = None,
) -> Prompts:
    """Overfit one prompt per sample and return the results, detached.

    Args:
        init: initial prompts ``{name: [B, ...]}`` (one row per sample; e.g. the shared prompt
            expanded to the batch). Not modified.
        per_sample_loss: maps prompts ``{name: [B, ...]}`` to the per-sample losses ``[B]``;
            sample b's loss must depend only on row b.
        iters: number of gradient steps I (0 returns a detached copy of ``init``).
        lr: the step size η.
        step_rule: ``"sgd"`` (default), ``"sign"``, or a callable ``(prompt, grad, lr) -> prompt``.
        first_grad: each sample's gradient at ``init`` (``{name: [B, ...]}``, the gradient of the
            summed losses), when the caller already has it (the wrapper takes it from the pass of
            the host's own loss): the first iteration steps with it instead of a forward/backward.
    Only the prompts are differentiated (``torch.autograd.grad``): no ``.grad`` of any model
    parameter is touched. Gradients are enabled inside even if the caller runs under no_grad.
    """
    if isinstance(step_rule, str):
        if step_rule not in STEP_RULES:
            raise ValueError(f"unknown overfitting step rule {step_rule!r}; allowed: {', '.join(STEP_RULES)}")
        step_rule = STEP_RULES[step_rule]
    if int(iters) != iters or iters < 0:
        raise ValueError(f"overfitting iters must be an integer >= 0, got {iters!r}")
    names = list(init)
    sizes = {name: init[name].shape[0] for name in names}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"all prompt groups need the same batch size, got {sizes}")
    batch = sizes[names[0]]
    shapes = {name: tuple(init[name].shape) for name in names}
    if first_grad is not None and {name: tuple(grad.shape) for name, grad in first_grad.items()} != shapes:
        raise ValueError(f"first_grad must hold a gradient shaped as init for every prompt group {shapes}, "
                         f"got {({name: tuple(grad.shape) for name, grad in first_grad.items()})}")
    prompts = {name: init[name].detach().clone() for name in names}
    with torch.enable_grad():
        for iteration in range(int(iters)):
            if iteration == 0 and first_grad is not None:
                grads = [first_grad[name] for name in names]
            else:
                leaves = {name: prompts[name].requires_grad_(True) for name in names}
                losses = per_sample_loss(leaves)
                if losses.shape != (batch,):
                    raise ValueError(f"per_sample_loss must return one loss per sample, shape [{batch}], "
                                     f"got {list(losses.shape)}")
                grads = torch.autograd.grad(losses.sum(), [leaves[name] for name in names], allow_unused=True)
            prompts = {
                name: step_rule(prompts[name].detach(), torch.zeros_like(prompts[name]) if grad is None else grad, lr)
                for name, grad in zip(names, grads)
            }
    return {name: prompts[name].detach() for name in names}


def remove_class_means(residuals: Prompts, labels: Tensor, means: Prompts, counts: Tensor,
                       momentum: float) -> Prompts:
    """What of each sample's residual varies within its class: ``r_b − m_{y_b}``, per group.

    ``means`` ``{group: [K, ...]}`` holds a running mean of each class's residuals, updated in place
    with this batch first (each sample moves its class's mean by ``max(1 / count, momentum)`` of the
    gap, so early means average and later ones follow residuals that drift as training goes);
    ``counts`` ``[K]`` the samples seen per class, also updated. ``residuals`` ``{group: [B, ...]}``,
    ``labels`` ``[B]``. The class mean is what the true label adds, which a generator that sees only
    the image cannot predict; the rest is what the image itself decides.
    """
    for row, label in enumerate(labels.tolist()):
        counts[label] += 1
        rate = max(1.0 / float(counts[label]), momentum)
        for name, residual in residuals.items():
            means[name][label] += rate * (residual[row] - means[name][label])
    return {name: residual - means[name][labels] for name, residual in residuals.items()}
