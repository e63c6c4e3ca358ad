"""Is prompt diffusion doing anything? Diagnostics of a trained PD trainer on one split.

For each image ``x`` of the split, with its host prompt ``V_h`` (``adapter.host_prompts``):

- ``V̂``: the generated prompt (the trainer's own sampler, NFE and inference noise);
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
(``DiffusionPromptWrapper.pd_generator_fit``: 1 = no better than the host's prompt, 0 = exact).

Used by ``prompt-diffusion diagnose`` and, on a held-out slice, once per training epoch.

``probe`` asks whether the residual is predictable at all: a ridge regression from the frozen
image feature to ``(V* − V_h) / scale``, fitted on the training images, scored on the diagnosed
ones (alignment of its prediction, and accuracy with ``V_h`` plus the predicted mean residual). If
this plain regressor cannot predict the residual, no generator conditioned on the feature can.
"""
import math
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from prompt_diffusion.results.paired import PairedDifference, paired_difference

__all__ = ["Diagnosis", "ProbeResult", "ResidualBatch", "group_share", "mean_pairwise_cosine", "residual_batches", "diagnose",
           "probe"]

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

    def summary(self) -> str:
        """One line for a training log."""
        gen = self.differences["generated"]
        return (f"fit {self.generator_fit:.3f}  align {self.alignment:+.3f}  |V̂-V_h|/|V*-V_h| "
                f"{self.norm_ratio:.2f}  acc generated {self.accuracy['generated']:.1f} vs host "
                f"{self.accuracy['host']:.1f} ({gen.mean:+.1f} ± {gen.se:.1f}; {self.images} images)")

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


def _flat_residual(generator, prompts: Dict[str, Tensor], center: Dict[str, Tensor]) -> Tensor:
    with torch.no_grad():
        return generator.layout.flatten(generator.normalize(prompts, center)).double()  # [B, N]


@dataclass
class ResidualBatch:
    """One batch of ``residual_batches``: the images and what PD makes of them."""

    batch: dict  # the loader's batch (cut to the images kept)
    images: Tensor
    labels: Tensor
    features: Tensor  # frozen image features [B, E]
    center: Dict[str, Tensor]  # V_h, fp32
    generated: Dict[str, Tensor]  # V̂ (the trainer's sampler, NFE, gain and inference noise)
    overfit: Dict[str, Tensor]  # V*, overfitted from V_h to OVERFIT.TARGET (true labels when it is label)


def residual_batches(trainer, data_loader: Iterable, max_images: Optional[int] = None, training: bool = False,
                     progress: bool = False) -> Iterator[ResidualBatch]:
    """For each batch of ``data_loader`` (at most ``max_images`` images): the host prompts, the
    generated and the overfitted prompts (``OVERFIT.TARGET``). ``training``: the loader is the training set
    (parsed as the trainer parses training batches). Inference noise follows the trainer's own
    sequence from position 0, as ``test`` does, and is reset after."""
    from tqdm import tqdm

    trainer.set_model_mode("eval")
    parse = trainer.parse_batch_train if training else trainer.parse_batch_test
    adapter = trainer.pd_adapter
    trainer.pd_reset_noise()
    seen = 0
    # disable=None: tqdm's "off when stderr is no terminal" (log files get no bar redraws)
    for batch in tqdm(data_loader, desc="prompt diffusion residuals", leave=False, disable=None if progress else True):
        if max_images is not None and seen >= max_images:
            break
        images, labels = parse(batch)[:2]
        if max_images is not None and seen + len(labels) > max_images:
            keep = max_images - seen
            images, labels = images[:keep], labels[:keep]
            batch = {key: value[:keep] for key, value in batch.items()}
        seen += len(labels)
        features = adapter.image_features(images)
        with torch.no_grad():
            center = {k: v.float() for k, v in trainer.pd_host_prompts(features).items()}
            generated = trainer.pd_generate(trainer.pd_condition(features), center, 0)
        trainer._pd_eval_position += len(labels)
        overfit = trainer.pd_overfit(images, labels, features, center)
        yield ResidualBatch(batch, images, labels, features, center, generated, overfit)
    trainer.pd_reset_noise()


def diagnose(trainer, data_loader: Iterable, max_images: Optional[int] = None, fit_draws: int = 2,
             progress: bool = False) -> Diagnosis:
    """Diagnose the PD trainer ``trainer`` (a ``DiffusionPromptWrapper`` subclass, built and
    loaded) on the batches of ``data_loader`` (``img`` and ``label``), at most ``max_images``.

    Inference noise follows the trainer's own sequence from position 0 (as ``test`` does), so the
    generated prompts' accuracy is the one ``test`` reports on the same images.
    """
    if not getattr(trainer, "pd_enabled", False):
        raise ValueError("diagnose needs a prompt-diffusion trainer with TRAINER.PD.ENABLE True")
    adapter, generator = trainer.pd_adapter, trainer.pd_generator
    target = trainer.cfg.TRAINER.PD.OVERFIT.TARGET
    correct: Dict[str, List[Tensor]] = {key: [] for key in PROMPTS}
    cosines: List[Tensor] = []
    ratios: List[Tensor] = []
    generated_residuals: List[Tensor] = []
    overfit_residuals: List[Tensor] = []
    batches: List[dict] = []
    for item in residual_batches(trainer, data_loader, max_images, progress=progress):
        batches.append(item.batch)
        with torch.no_grad():
            host_prediction = adapter.logits(item.images, item.center, item.features).argmax(dim=1)
        true_label = item.overfit if target == "label" else trainer.pd_overfit(
            item.images, item.labels, item.features, item.center, target="label")
        prompts = {"host": item.center, "generated": item.generated, "overfit_target": item.overfit,
                   "overfit_true": true_label,
                   "overfit_predicted": trainer.pd_overfit(item.images, host_prediction, item.features, item.center,
                                                           target="label")}
        with torch.no_grad():
            for key, prompt in prompts.items():
                logits = adapter.logits(item.images, prompt, item.features)
                correct[key].append((logits.argmax(dim=1) == item.labels).cpu())
        generated = _flat_residual(generator, item.generated, item.center)
        overfit = _flat_residual(generator, item.overfit, item.center)
        cosines.append(F.cosine_similarity(generated, overfit, dim=1).cpu())
        ratios.append((generated.norm(dim=1) / overfit.norm(dim=1).clamp_min(1e-12)).cpu())
        generated_residuals.append(generated.cpu())
        overfit_residuals.append(overfit.cpu())
    if not batches:
        raise ValueError("diagnose got no images")
    per_image = {key: torch.cat(values) for key, values in correct.items()}
    cosine = torch.cat(cosines)
    domains = torch.cat([torch.as_tensor(batch["domain"]).view(-1).cpu() for batch in batches]) \
        if all("domain" in batch for batch in batches) else None
    several_domains = domains is not None and len(domains.unique()) > 1
    return Diagnosis(
        images=len(cosine),
        accuracy={key: 100.0 * float(values.double().mean()) for key, values in per_image.items()},
        differences={key: paired_difference(per_image[key].tolist(), per_image["host"].tolist())
                     for key in PROMPTS if key != "host"},
        alignment=float(cosine.mean()),
        alignment_se=float(cosine.std()) / math.sqrt(len(cosine)) if len(cosine) > 1 else float("nan"),
        norm_ratio=float(torch.cat(ratios).mean()),
        across_images_generated=mean_pairwise_cosine(torch.cat(generated_residuals)),
        across_images_overfit=mean_pairwise_cosine(torch.cat(overfit_residuals)),
        generator_fit=trainer.pd_generator_fit(batches, draws=fit_draws),
        target=target,
        domain_share_generated=group_share(torch.cat(generated_residuals), domains) if several_domains else None,
        domain_share_overfit=group_share(torch.cat(overfit_residuals), domains) if several_domains else None,
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


def probe(trainer, train_loader: Iterable, data_loader: Iterable, max_images: Optional[int] = None,
          ridge: float = 1e-3) -> ProbeResult:
    """Fit the ridge probe on ``train_loader``'s images and score it on ``data_loader``'s."""
    adapter, generator = trainer.pd_adapter, trainer.pd_generator

    def features_and_residuals(items: List[ResidualBatch]):  # [n, E], [n, N]
        return (torch.cat([item.features.double().cpu() for item in items]),
                torch.cat([_flat_residual(generator, item.overfit, item.center).cpu() for item in items]))

    x_train, y_train = features_and_residuals(list(residual_batches(trainer, train_loader, training=True)))
    batches = list(residual_batches(trainer, data_loader, max_images))
    x_test, y_test = features_and_residuals(batches)

    def with_bias(x: Tensor) -> Tensor:
        return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)  # [n, E + 1]

    a = with_bias(x_train)
    weights = torch.linalg.solve(a.T @ a + ridge * len(a) * torch.eye(a.shape[1], dtype=a.dtype),
                                 a.T @ y_train)  # [E + 1, N]
    predicted = with_bias(x_test) @ weights  # [n, N]
    host = probe_correct = 0
    row = 0
    with torch.no_grad():
        for item in batches:
            rows = predicted[row: row + len(item.labels)].float().to(item.features.device)
            row += len(item.labels)
            prompts = generator.denormalize(generator.layout.unflatten(rows), item.center)
            host += int((adapter.logits(item.images, item.center, item.features).argmax(1) == item.labels).sum())
            probe_correct += int((adapter.logits(item.images, prompts, item.features).argmax(1) == item.labels).sum())
    return ProbeResult(
        train_images=len(x_train), images=len(x_test),
        alignment_train=float(F.cosine_similarity(with_bias(x_train) @ weights, y_train, dim=1).mean()),
        alignment=float(F.cosine_similarity(predicted, y_test, dim=1).mean()),
        accuracy_host=100.0 * host / len(x_test), accuracy_probe=100.0 * probe_correct / len(x_test),
    )
