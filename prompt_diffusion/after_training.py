"""After training: the AMED predictors distilled and the residual gain calibrated; and what both
measure with, the generated and overfitted residuals of held-out images and the generator's fit.

Every function takes the ``PromptDiffusion`` module and batches of labelled images
(``LabelledBatch``: images, labels, dataset indices), so any loop can call them; the Dassl shell
(``wrapper.py``) feeds them its loaders. Call them with the host and the module in eval mode.
Calibration and the AMED check use held-out (val) images only: a test image never reaches a fitted
number.
"""
import math
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from prompt_diffusion.diffusion.amed import StudentCheck, distill_amed
from prompt_diffusion.method import Prompts, PromptDiffusion
from prompt_diffusion.stats import PairedDifference, paired_difference

__all__ = ["LabelledBatch", "ResidualBatch", "ResidualEvaluation", "calibrate", "conditions", "distill",
           "evaluate_residuals", "generator_fit", "residual_batches"]

# held-out images the residual gain is calibrated on after training (see calibrate)
CALIBRATION_IMAGES = 512
# conditions (training images) per AMED distillation batch; held-out images the student is compared
# with its teacher on, and how often (in batches): the predictor keeps the weights that came closest
AMED_BATCH = 32
AMED_CHECK_IMAGES = 128
AMED_CHECK_EVERY = 5


@dataclass
class LabelledBatch:
    """Images ``[B, 3, H, W]``, their labels ``[B]`` and dataset indices ``[B]`` (the seeds of their
    inference noise); ``domains`` ``[B]`` when the data knows each image's domain (ToyWorldMixed's style)."""

    images: Tensor
    labels: Tensor
    indices: Tensor
    domains: Optional[Tensor] = None

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, count: int) -> "LabelledBatch":
        """The first ``count`` images."""
        return LabelledBatch(self.images[:count], self.labels[:count], self.indices[:count],
                             None if self.domains is None else self.domains[:count])


@dataclass
class ResidualBatch:
    """One batch of ``residual_batches``: the images and what prompt diffusion makes of them."""

    batch: LabelledBatch
    features: Tensor  # frozen image features [B, E]
    center: Prompts  # V_h, fp32
    generated: Prompts  # V̂ (the module's sampler, NFE, gain and seeded noise)
    overfit: Prompts  # V*, overfitted from V_h to OVERFIT.TARGET (with the true labels when it is label)


def residual_batches(pd: PromptDiffusion, batches: Iterable[LabelledBatch], max_images: Optional[int] = None,
                     progress: bool = False) -> Iterator[ResidualBatch]:
    """For each batch (at most ``max_images`` images in all): the host prompts, the generated prompts
    (the noise of each image's seed, as in an evaluation) and the overfitted ones (``OVERFIT.TARGET``)."""
    seen = 0
    # disable=None: tqdm's "off when stderr is no terminal" (log files get no bar redraws)
    for batch in tqdm(batches, desc="prompt diffusion residuals", leave=False, disable=None if progress else True):
        if max_images is not None and seen >= max_images:
            break
        if max_images is not None and seen + len(batch) > max_images:
            batch = batch.head(max_images - seen)
        seen += len(batch)
        features = pd.adapter.image_features(batch.images)
        with torch.no_grad():
            center = {k: v.float() for k, v in pd.host_prompts(features).items()}
            generated = pd.generate(pd.condition(features), center, batch.indices)
        overfit = pd.overfit(batch.images, batch.labels, features, center)
        yield ResidualBatch(batch, features, center, generated, overfit)


def flat_residual(pd: PromptDiffusion, prompts: Prompts, center: Prompts) -> Tensor:
    """``(prompts − center) / scale``, flattened ``[B, N]`` (float64): the space the generator models,
    where groups of different widths weigh alike."""
    generator = pd.generator
    with torch.no_grad():
        return generator.layout.flatten(generator.normalize(prompts, center)).double()


def calibrate(pd: PromptDiffusion, batches: Iterable[LabelledBatch], max_images: int = CALIBRATION_IMAGES) -> Dict[str, float]:
    """Scale generated residuals by how much of them points the right way (``calibrate_gain``: the
    least-squares gain of generated onto overfitted residuals, clipped to [0, 1]), measured on up to
    ``max_images`` held-out images against the residuals overfitted to ``OVERFIT.TARGET`` (the true
    labels for the paper's target). A generator that learned nothing then leaves the host's prompt
    as it is. Marks the module calibrated; returns the gain per group."""
    generator = pd.generator
    for name in generator.layout.names:
        getattr(generator, f"{name}_gain").fill_(1.0)
    generated, targets, seen = [], [], 0
    for item in residual_batches(pd, batches, max_images):
        generated.append(generator.normalize(item.generated, item.center))
        targets.append(generator.normalize(item.overfit, item.center))
        seen += len(item.batch)
    gains = generator.calibrate_gain({k: torch.cat([g[k] for g in generated]) for k in generator.layout.names},
                                     {k: torch.cat([t[k] for t in targets]) for k in generator.layout.names})
    pd.calibrated.fill_(True)
    print(f"Prompt diffusion: residual gain calibrated on {seen} held-out (val) images, overfitted to "
          f"{pd.config.OVERFIT.TARGET}: " + ", ".join(f"{name} {gain:.3f}" for name, gain in gains.items()))
    return gains


@torch.no_grad()
def generator_fit(pd: PromptDiffusion, batches: Iterable[LabelledBatch], draws: int = 4, seed: int = 0) -> float:
    """How well the generator's training prediction reconstructs the overfitted prompts of ``batches``:
    ``Σ‖V* − V̂‖² / Σ‖V* − V_h‖²`` in normalised space over ``draws`` seeded draws of the loss's randomness
    per sample (diffusion: the denoiser's x0 from a random timestep and noise; GAN and flow: a sample;
    VAE: the reconstruction). 1: no better than the host's prompts; 0: exact; NaN when there is no
    residual to fit (``OVERFIT.ITERS 0``, or an image the overfitting leaves where it is)."""
    generator = torch.Generator().manual_seed(seed)
    error = baseline = 0.0
    for batch in batches:
        features = pd.adapter.image_features(batch.images)
        center = {k: v.float() for k, v in pd.host_prompts(features).items()}
        targets = pd.overfit(batch.images, batch.labels, features, center)
        pi = pd.condition(features)
        residual = flat_residual(pd, targets, center).float()  # [B, N]
        for _ in range(draws):
            predicted = pd.generator.residual_loss(residual, pi, generator)[1]  # normalized, as ``residual``
            error += float((predicted.float() - residual).pow(2).mean()) * len(batch)
            baseline += float(residual.pow(2).mean()) * len(batch)
    return error / baseline if baseline > 0 else float("nan")


@torch.no_grad()
def conditions(pd: PromptDiffusion, images: Iterable[Tensor], max_images: Optional[int] = None) -> Tensor:
    """π of the images (the first ``max_images``; all by default), ``[N, C]``."""
    found, seen = [], 0
    for batch in tqdm(images, desc="π of the images", leave=False, disable=None):
        found.append(pd.condition(pd.adapter.image_features(batch)))
        seen += len(batch)
        if max_images is not None and seen >= max_images:
            break
    return torch.cat(found)[:max_images]


def distill(pd: PromptDiffusion, train_conditions: Tensor, check_conditions: Tensor, check_seed: int,
            iters: int) -> Dict[int, List[float]]:
    """Distil the AMED predictor of every NFE ``pd.amed`` holds from the teacher solver (dpmpp_2m with 4
    inserted points, ``distill_amed``'s defaults, as upstream AMED), ``iters`` batches of ``AMED_BATCH``
    random training conditions and fresh noise (the global random stream); each predictor keeps the
    weights whose student came closest to the teacher on ``check_conditions`` (held-out images, their
    noise seeded by ``check_seed``). Returns the loss per distillation batch, per NFE; the log gives the
    check's error before and after, what distillation is for."""
    denoiser = pd.generator
    check_noise = torch.randn(len(check_conditions), denoiser.layout.numel,  # own generator: the run's
                              generator=torch.Generator().manual_seed(check_seed)).to(train_conditions.device)
    check = StudentCheck(denoiser.denoise_fn(check_conditions), check_noise, denoiser.schedule)

    def batches():
        for _ in range(iters):
            rows = torch.randint(len(train_conditions), (min(AMED_BATCH, len(train_conditions)),))
            noise = torch.randn(len(rows), denoiser.layout.numel).to(train_conditions.device)
            yield denoiser.denoise_fn(train_conditions[rows.to(train_conditions.device)]), noise

    pd.amed.train()
    histories = {}
    for nfe in pd.amed.nfes:
        print(f"Prompt diffusion: distilling the AMED predictor (NFE={nfe}), {iters} batches of {AMED_BATCH}")
        check.errors.clear()
        history = distill_amed(pd.amed.predictor(nfe), batches(), denoiser.schedule, check=check,
                               check_every=AMED_CHECK_EVERY, log_every=max(1, iters // 10))
        print(f"Prompt diffusion: AMED (NFE={nfe}) student-vs-teacher error on {len(check_conditions)} held-out "
              f"images {check.errors[0]:.4g} -> {min(check.errors):.4g}, the best of every {AMED_CHECK_EVERY} "
              f"batches (distillation loss per batch {history[0]:.4g} -> {history[-1]:.4g})")
        histories[nfe] = history
    pd.amed.eval()
    pd.amed.distilled_flag.fill_(True)
    return histories


@dataclass
class ResidualEvaluation:
    """Per image of some residual batches: whether the host's and the generated prompts classify it
    right, and how the generated residual ``V̂ − V_h`` relates to the overfitted one ``V* − V_h``
    (normalised space); with the generator's fit on the same images."""

    correct_host: Tensor  # [n] bool
    correct_generated: Tensor  # [n] bool
    alignment: Tensor  # [n] cos(V̂ − V_h, V* − V_h)
    norm_ratio: Tensor  # [n] ‖V̂ − V_h‖ / ‖V* − V_h‖
    generated: Tensor  # [n, N] V̂ − V_h, flat, normalised (float64)
    overfit: Tensor  # [n, N] V* − V_h
    fit: float  # generator_fit on the same images

    @property
    def images(self) -> int:
        return len(self.alignment)

    @property
    def difference(self) -> PairedDifference:
        """The generated prompts' accuracy minus the host's, paired per image."""
        return paired_difference(self.correct_generated.tolist(), self.correct_host.tolist())

    def summary(self) -> str:
        """One line for a training log."""
        gen = self.difference
        return (f"fit {self.fit:.3f}  align {float(self.alignment.mean()):+.3f}  |V̂-V_h|/|V*-V_h| "
                f"{float(self.norm_ratio.mean()):.2f}  acc generated {100.0 * float(self.correct_generated.double().mean()):.1f}"
                f" vs host {100.0 * float(self.correct_host.double().mean()):.1f} ({gen.mean:+.1f} ± {gen.se:.1f}; "
                f"{self.images} images)")

    @property
    def alignment_se(self) -> float:
        n = self.images
        return float(self.alignment.std()) / math.sqrt(n) if n > 1 else float("nan")


def evaluate_residuals(pd: PromptDiffusion, items: Sequence[ResidualBatch], fit_draws: int = 2) -> ResidualEvaluation:
    """The ``ResidualEvaluation`` of ``items`` (from ``residual_batches``)."""
    if not items:
        raise ValueError("no images to evaluate the residuals on")
    correct_host, correct_generated, generated, overfit = [], [], [], []
    with torch.no_grad():
        for item in items:
            images, labels = item.batch.images, item.batch.labels
            for prompts, correct in ((item.center, correct_host), (item.generated, correct_generated)):
                logits = pd.adapter.logits(images, prompts, item.features)
                correct.append((logits.argmax(dim=1) == labels).cpu())
            generated.append(flat_residual(pd, item.generated, item.center).cpu())
            overfit.append(flat_residual(pd, item.overfit, item.center).cpu())
    generated, overfit = torch.cat(generated), torch.cat(overfit)
    return ResidualEvaluation(
        correct_host=torch.cat(correct_host), correct_generated=torch.cat(correct_generated),
        alignment=F.cosine_similarity(generated, overfit, dim=1),
        norm_ratio=generated.norm(dim=1) / overfit.norm(dim=1).clamp_min(1e-12),
        generated=generated, overfit=overfit,
        fit=generator_fit(pd, [item.batch for item in items], draws=fit_draws))
