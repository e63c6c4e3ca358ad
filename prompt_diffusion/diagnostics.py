"""Is prompt diffusion doing anything? Diagnostics of a trained ``PromptDiffusion`` module on one split.

For each image ``x`` of the split, with its host prompt ``V_h`` (``adapter.host_prompts``):

- ``V̂``: the generated prompt (the module's own sampler, NFE and each image's seeded noise);
- ``V*``: the prompt overfitted from ``V_h`` to ``TRAINER.PD.OVERFIT.TARGET`` (what the generator
  was trained to produce; with the paper's target ``label`` it is ``V*_y``);
- ``V*_y``: the prompt overfitted from ``V_h`` with the true label (the ceiling of the paper's target);
- ``V*_ŷ``: the prompt overfitted toward the host's own prediction (no label needed: what
  overfitting finds without supervision).

Reported: top-1 accuracy under each prompt and its paired difference to the host's prompt on the
same images (mean, standard error, predictions fixed and broken); the alignment
``cos(V̂ − V_h, V* − V_h)`` per image and the ratio of their norms (in the generator's normalised
space, so groups of different widths weigh alike); how much the residuals vary across images
(mean cosine between two images' residuals: 1 = the same residual for all); when the images come
from several domains (``batch["domain"]``, e.g. ToyWorldMixed's styles), the share of the
residuals' variance that the domain explains (what an image-conditioned generator can learn); the generator's fit
(``after_training.generator_fit``: 1 = no better than the host's prompt, 0 = exact).

A read-only leaf: it measures with what calibration measures (``after_training``: the residual
batches, their evaluation, the fit) and nothing in the library imports it; ``prompt-diffusion
diagnose`` does.

``probe`` asks whether the residual is predictable at all: a ridge regression from the frozen
image feature to ``(V* − V_h) / scale``, fitted on the training images, scored on the diagnosed
ones (alignment of its prediction, and accuracy with ``V_h`` plus the predicted mean residual). If
this plain regressor cannot predict the residual, no generator conditioned on the feature can.
"""
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from prompt_diffusion.after_training import (LabelledBatch, ResidualBatch, evaluate_residuals, flat_residual,
                                             residual_batches)
from prompt_diffusion.method import PromptDiffusion
from prompt_diffusion.stats import PairedDifference, paired_difference

__all__ = ["Diagnosis", "ProbeResult", "group_share", "mean_pairwise_cosine", "diagnose", "probe"]

#: the prompts a diagnosis compares, in table order, and what each is
PROMPTS = {
    "generated": "generated V̂ (the PD model)",
    "host": "host prompt V_h",
    "overfit_target": "V* overfitted to OVERFIT.TARGET (what the generator learns)",
    "overfit_true": "V* overfitted with the true label (ceiling)",
    "overfit_predicted": "V* overfitted toward the host's prediction",
}


def mean_pairwise_cosine(vectors: Tensor) -> float:
    """Mean cosine between the rows of ``vectors`` ``[n, N]`` over all pairs of different rows."""
    n = vectors.shape[0]
    if n < 2:
        return float("nan")
    unit = F.normalize(vectors.double(), dim=1)
    total = unit.sum(dim=0).pow(2).sum()  # Σ_ij cos(i, j), diagonal included
    return float((total - n) / (n * (n - 1)))


def group_share(vectors: Tensor, groups: Tensor) -> float:
    """The share of the variance of ``vectors`` ``[n, N]`` that their groups ``[n]`` explain:
    ``Σ_g n_g ‖mean_g − mean‖² / Σ_i ‖v_i − mean‖²`` (1: each group's vectors are all alike;
    0: a group tells nothing about its vectors)."""
    vectors = vectors.double()
    centred = vectors - vectors.mean(dim=0)
    total = float(centred.pow(2).sum())
    between = sum(float((groups == g).sum()) * float(centred[groups == g].mean(dim=0).pow(2).sum())
                  for g in groups.unique())
    return between / total if total > 0 else float("nan")


@dataclass
class Diagnosis:
    """What ``diagnose`` measured on ``images`` images of a split."""

    images: int
    accuracy: Dict[str, float]  # top-1 (%) per prompt of PROMPTS
    differences: Dict[str, PairedDifference]  # each prompt but the host's, minus the host's
    alignment: float  # mean over images of cos(V̂ − V_h, V* − V_h)
    alignment_se: float
    norm_ratio: float  # mean ‖V̂ − V_h‖ / ‖V* − V_h‖
    across_images_generated: float  # mean cosine between two images' V̂ − V_h
    across_images_overfit: float  # the same for V* − V_h
    generator_fit: float
    target: str = "label"  # TRAINER.PD.OVERFIT.TARGET
    domain_share_generated: Optional[float] = None  # variance share of V̂ − V_h the image's domain explains
    domain_share_overfit: Optional[float] = None  # the same for V* − V_h (None: one domain only)

    def report(self) -> str:
        """The full report (Markdown tables)."""
        lines = [f"Prompt diffusion diagnosis on {self.images} images", "",
                 "| prompt | accuracy % | − host (± SE) | fixed | broken |", "|---|---|---|---|---|"]
        for key, label in PROMPTS.items():
            if key == "host":
                lines.append(f"| {label} | {self.accuracy[key]:.2f} | | | |")
                continue
            d = self.differences[key]
            lines.append(f"| {label} | {self.accuracy[key]:.2f} | {d.text()} | {d.fixed} | {d.broken} |")
        lines += [
            "",
            f"| residual from the host prompt (V*: target {self.target}) | value |", "|---|---|",
            f"| alignment cos(V̂ − V_h, V* − V_h), mean ± SE | {self.alignment:+.3f} ± {self.alignment_se:.3f} |",
            f"| norm ratio ‖V̂ − V_h‖ / ‖V* − V_h‖ | {self.norm_ratio:.3f} |",
            f"| cosine between images, generated residuals | {self.across_images_generated:+.3f} |",
            f"| cosine between images, overfitted residuals | {self.across_images_overfit:+.3f} |",
        ]
        if self.domain_share_overfit is not None:
            lines += [f"| share of variance the domain explains, generated residuals | "
                      f"{self.domain_share_generated:.3f} |",
                      f"| share of variance the domain explains, overfitted residuals | "
                      f"{self.domain_share_overfit:.3f} |"]
        lines += [
            f"| generator fit (1: no better than V_h, 0: exact) | {self.generator_fit:.3f} |",
            "",
            _reading(self),
        ]
        return "\n".join(lines) + "\n"


def _reading(d: Diagnosis) -> str:
    """A plain-language reading of the numbers."""
    gen, ceiling = d.differences["generated"], d.differences["overfit_target"]
    if ceiling.mean <= ceiling.se:
        return (f"Reading: overfitting to the target {d.target!r} does not beat the host prompt here, so there is "
                "nothing for the generator to learn (raise TRAINER.PD.OVERFIT.ITERS or .LR, or choose another "
                "TRAINER.PD.OVERFIT.TARGET).")
    if d.alignment < 0.1:
        verdict = "the generated residuals are not aligned with the overfitted ones: the generator has not "
        verdict += "learned what overfitting finds"
    else:
        verdict = f"the generated residuals have cosine {d.alignment:.2f} with the overfitted ones"
    effect = "within noise of the host" if gen.within_noise() else (
        "better than the host" if gen.mean > 0 else "worse than the host")
    return f"Reading: {verdict}; generated prompts are {effect} ({gen.mean:+.2f} ± {gen.se:.2f} points)."


def diagnose(pd: PromptDiffusion, batches: Iterable[LabelledBatch], max_images: Optional[int] = None,
             fit_draws: int = 2, progress: bool = False) -> Diagnosis:
    """Diagnose the trained prompt-diffusion module ``pd`` on ``batches`` (at most ``max_images`` images).

    Each image's inference noise is seeded by its dataset index, as in an evaluation, so the generated
    prompts' accuracy is the one ``test`` reports on the same images.
    """
    target = pd.config.OVERFIT.TARGET
    items = list(residual_batches(pd, batches, max_images, progress=progress))
    if not items:
        raise ValueError("diagnose got no images")
    evaluation = evaluate_residuals(pd, items, fit_draws)
    correct: Dict[str, List[Tensor]] = {"overfit_target": [], "overfit_true": [], "overfit_predicted": []}
    for item in items:
        images, labels, features, center = item.batch.images, item.batch.labels, item.features, item.center
        with torch.no_grad():
            host_prediction = pd.adapter.logits(images, center, features).argmax(dim=1)
        prompts = {"overfit_target": item.overfit,
                   "overfit_true": item.overfit if target == "label" else pd.overfit(images, labels, features, center,
                                                                                   target="label"),
                   "overfit_predicted": pd.overfit(images, host_prediction, features, center, target="label")}
        with torch.no_grad():
            for key, prompt in prompts.items():
                correct[key].append((pd.adapter.logits(images, prompt, features).argmax(dim=1) == labels).cpu())
    per_image = {"generated": evaluation.correct_generated, "host": evaluation.correct_host,
                 **{key: torch.cat(values) for key, values in correct.items()}}
    domains = (torch.cat([torch.as_tensor(item.batch.domains).view(-1).cpu() for item in items])
               if all(item.batch.domains is not None for item in items) else None)
    several_domains = domains is not None and len(domains.unique()) > 1
    return Diagnosis(
        images=evaluation.images,
        accuracy={key: 100.0 * float(per_image[key].double().mean()) for key in PROMPTS},
        differences={key: paired_difference(per_image[key].tolist(), per_image["host"].tolist())
                     for key in PROMPTS if key != "host"},
        alignment=float(evaluation.alignment.mean()),
        alignment_se=evaluation.alignment_se,
        norm_ratio=float(evaluation.norm_ratio.mean()),
        across_images_generated=mean_pairwise_cosine(evaluation.generated),
        across_images_overfit=mean_pairwise_cosine(evaluation.overfit),
        generator_fit=evaluation.fit,
        target=target,
        domain_share_generated=group_share(evaluation.generated, domains) if several_domains else None,
        domain_share_overfit=group_share(evaluation.overfit, domains) if several_domains else None,
    )


@dataclass
class ProbeResult:
    """A ridge regressor's view of the residual (``probe``)."""

    train_images: int
    images: int
    alignment_train: float  # mean cos(prediction, V* − V_h) on the images it was fitted on
    alignment: float  # the same on the diagnosed images (held out)
    accuracy_host: float
    accuracy_probe: float  # with V_h + the predicted (mean) residual

    def report(self) -> str:
        return (f"Probe (ridge regression from the frozen image feature to V* − V_h, fitted on "
                f"{self.train_images} training images): alignment {self.alignment_train:+.3f} on them, "
                f"{self.alignment:+.3f} on the {self.images} diagnosed images; accuracy with V_h + its "
                f"predicted residual {self.accuracy_probe:.2f} vs host {self.accuracy_host:.2f}\n")


def probe(pd: PromptDiffusion, train_batches: Iterable[LabelledBatch], batches: Iterable[LabelledBatch],
          max_images: Optional[int] = None, ridge: float = 1e-3) -> ProbeResult:
    """Fit the ridge probe on ``train_batches``' images and score it on ``batches``' (at most ``max_images``)."""
    generator = pd.generator

    def features_and_residuals(items: List[ResidualBatch]):  # [n, E], [n, N]
        return (torch.cat([item.features.double().cpu() for item in items]),
                torch.cat([flat_residual(pd, item.overfit, item.center).cpu() for item in items]))

    x_train, y_train = features_and_residuals(list(residual_batches(pd, train_batches)))
    items = list(residual_batches(pd, batches, max_images))
    x_test, y_test = features_and_residuals(items)

    def with_bias(x: Tensor) -> Tensor:
        return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)  # [n, E + 1]

    a = with_bias(x_train)
    weights = torch.linalg.solve(a.T @ a + ridge * len(a) * torch.eye(a.shape[1], dtype=a.dtype),
                                 a.T @ y_train)  # [E + 1, N]
    predicted = with_bias(x_test) @ weights  # [n, N]
    host = probe_correct = 0
    row = 0
    with torch.no_grad():
        for item in items:
            images, labels = item.batch.images, item.batch.labels
            rows = predicted[row: row + len(labels)].float().to(item.features.device)
            row += len(labels)
            prompts = generator.denormalize(generator.layout.unflatten(rows), item.center)
            host += int((pd.adapter.logits(images, item.center, item.features).argmax(1) == labels).sum())
            probe_correct += int((pd.adapter.logits(images, prompts, item.features).argmax(1) == labels).sum())
    return ProbeResult(
        train_images=len(x_train), images=len(x_test),
        alignment_train=float(F.cosine_similarity(with_bias(x_train) @ weights, y_train, dim=1).mean()),
        alignment=float(F.cosine_similarity(predicted, y_test, dim=1).mean()),
        accuracy_host=100.0 * host / len(x_test), accuracy_probe=100.0 * probe_correct / len(x_test),
    )
