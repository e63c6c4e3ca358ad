"""After training: the AMED predictor distilled and the residual gain calibrated, and how well the
generator fits the overfitted prompts.

``AfterTraining`` is the part of ``DiffusionPromptWrapper`` (a mixin of it; it reads the wrapper's
``cfg``, loaders, ``pd_generator``, ``pd_amed`` and ``pd_overfit``) that the wrapper's
``after_train`` runs: ``pd_distill_amed`` (one ``AMEDPredictor`` per NFE of ``TRAINER.PD.AMED.NFES``,
held by ``AMEDModule``, the registered ``pd_amed``) and ``pd_calibrate`` (the least-squares gain of
generated onto overfitted residuals on held-out images). ``pd_generator_fit`` measures the
generator's fit on any data set (diagnostics).
"""
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn
from tqdm import tqdm

from prompt_diffusion.diagnostics import residual_batches
from prompt_diffusion.diffusion.amed import AMEDPredictor, StudentCheck, distill_amed
from prompt_diffusion.generators.base import plain_values

__all__ = ["AfterTraining", "AMEDModule"]

# held-out images the residual gain is calibrated on after training (see pd_calibrate)
CALIBRATION_IMAGES = 512
# held-out images the AMED student is compared with its teacher on during distillation, and how
# often (in batches); the predictor keeps the weights that came closest (see distill_amed)
AMED_CHECK_IMAGES = 128
AMED_CHECK_EVERY = 5


class AMEDModule(nn.Module):
    """The registered ``pd_amed``: one ``AMEDPredictor`` per NFE of ``TRAINER.PD.AMED.NFES`` (its σ
    grid depends on the NFE, so each budget has its own) and whether they have been distilled
    (a buffer, so the flag travels with the checkpoint)."""

    def __init__(self, predictors: Dict[int, AMEDPredictor]):
        super().__init__()
        self.predictors = nn.ModuleDict({str(nfe): predictors[nfe] for nfe in sorted(predictors)})
        self.register_buffer("distilled_flag", torch.zeros((), dtype=torch.bool))

    @property
    def distilled(self) -> bool:
        return bool(self.distilled_flag)

    @property
    def nfes(self) -> List[int]:
        return [int(nfe) for nfe in self.predictors]

    def predictor(self, nfe: int) -> AMEDPredictor:
        """The predictor distilled for ``nfe`` evaluations."""
        return self.predictors[str(nfe)]

    def get_extra_state(self) -> dict:
        return {nfe: dict(predictor.config) for nfe, predictor in self.predictors.items()}

    def set_extra_state(self, state: dict) -> None:
        built = self.get_extra_state()
        if set(state) != set(built):
            raise ValueError(f"the checkpoint has AMED predictors for NFE {sorted(int(n) for n in state)}, "
                             f"TRAINER.PD.AMED.NFES builds {self.nfes}: evaluate with the NFES the model was "
                             "trained with (an NFE outside them needs a model trained with it listed)")
        for nfe, config in state.items():
            if plain_values(config) != plain_values(built[nfe]):
                raise ValueError(f"the checkpoint's AMED predictor {config} differs from the one TRAINER.PD "
                                 f"builds {built[nfe]} (denoiser width changed?)")


class AfterTraining:
    """AMED distillation, residual calibration and the generator's fit (see the module docstring)."""

    def pd_calibrate(self, max_images: int = CALIBRATION_IMAGES) -> Dict[str, float]:
        """Scale generated residuals by how much of them points the right way (``calibrate_gain``),
        measured on up to ``max_images`` held-out images (the val split; the training images when
        there is none) against the residuals overfitted with their true labels. A generator that
        learned nothing then leaves the host's prompt as it is. Returns the gain per group."""
        model = self.pd_generator
        for name in model.layout.names:
            getattr(model, f"{name}_gain").fill_(1.0)
        held_out = getattr(self, "val_loader", None) is not None
        loader = self.val_loader if held_out else self.train_loader_x
        generated, targets, seen = [], [], 0
        for item in residual_batches(self, loader, max_images, training=not held_out):
            generated.append(model.normalize(item.generated, item.center))
            targets.append(model.normalize(item.overfit, item.center))
            seen += len(item.labels)
        gains = model.calibrate_gain({k: torch.cat([g[k] for g in generated]) for k in model.layout.names},
                                     {k: torch.cat([t[k] for t in targets]) for k in model.layout.names})
        where = "held-out val" if held_out else "training"
        print(f"Prompt diffusion: residual gain calibrated on {seen} {where} images: "
              + ", ".join(f"{name} {gain:.3f}" for name, gain in gains.items()))
        return gains

    @torch.no_grad()
    def pd_generator_fit(self, data_loader=None, draws: int = 4, seed: int = 0) -> float:
        """How well the generator's training prediction reconstructs the overfitted prompts of a data
        set (default: the training set): ``Σ‖V* − V̂‖² / Σ‖V* − V_h‖²`` in normalised space over
        ``draws`` seeded draws of the loss's randomness per sample (diffusion: the denoiser's x0
        from a random timestep and noise; GAN and flow: a sample; VAE: the reconstruction).
        1: no better than the host's prompts; 0: exact. Batches of the training set are parsed as
        training batches, others as test batches."""
        self.set_model_mode("eval")
        model = self.pd_generator
        generator = torch.Generator().manual_seed(seed)
        parse = self.parse_batch_train if data_loader is None else self.parse_batch_test
        error = baseline = 0.0
        for batch in data_loader if data_loader is not None else self.train_loader_x:
            images, labels = parse(batch)[:2]
            features = self.pd_adapter.image_features(images)
            center = {k: v.float() for k, v in self.pd_host_prompts(features).items()}
            targets = self.pd_overfit(images, labels, features, center)
            pi = self.pd_condition(features)
            residual = model.layout.flatten(model.normalize(targets, center)).float()  # [B, N]
            for _ in range(draws):
                predicted = model.residual_loss(residual, pi, generator)[1]  # normalized, as ``residual``
                error += float((predicted.float() - residual).pow(2).mean()) * len(images)
                baseline += float(residual.pow(2).mean()) * len(images)
        return error / baseline

    @torch.no_grad()
    def _pd_conditions(self, loader, training: bool, max_images: Optional[int] = None) -> Tensor:
        """π of the images of ``loader`` (the first ``max_images``; all by default), ``[N, C]``."""
        self.set_model_mode("eval")
        conditions, seen = [], 0
        for batch in tqdm(loader, desc="π of the images", leave=False, disable=None):
            images = (self.parse_batch_train(batch) if training else self.parse_batch_test(batch))[0]
            conditions.append(self.pd_condition(self.pd_adapter.image_features(images)))
            seen += len(images)
            if max_images is not None and seen >= max_images:
                break
        return torch.cat(conditions)[:max_images]

    def pd_distill_amed(self) -> Dict[int, List[float]]:
        """Distil the AMED predictor of every NFE in ``TRAINER.PD.AMED.NFES`` from the teacher
        solver on the π of the training images and fresh noise; returns the loss per distillation
        batch, per NFE. Each predictor keeps the weights whose student came closest to the teacher
        on held-out (val) conditions (``distill_amed``'s check); the log gives that error before and
        after distillation, what distillation is for (the loss per batch moves with each batch's
        random conditions and noise)."""
        amed = self.cfg.TRAINER.PD.AMED
        conditions = self._pd_conditions(self.train_loader_x, training=True)
        denoiser = self.pd_generator
        held_out = getattr(self, "val_loader", None) is not None
        check_conditions = (self._pd_conditions(self.val_loader, training=False, max_images=AMED_CHECK_IMAGES)
                            if held_out else conditions[:AMED_CHECK_IMAGES])
        check_noise = torch.randn(len(check_conditions), denoiser.layout.numel,  # own generator: the run's
                                  generator=torch.Generator().manual_seed(self.cfg.SEED)).to(conditions.device)
        check = StudentCheck(denoiser.denoise_fn(check_conditions), check_noise, denoiser.schedule,
                             teacher=amed.TEACHER, inserted=amed.INSERTED)

        def batches():  # random training conditions and fresh noise (the run's seeded global RNG)
            for _ in range(amed.DISTILL_ITERS):
                rows = torch.randint(len(conditions), (min(amed.BATCH, len(conditions)),))
                noise = torch.randn(len(rows), denoiser.layout.numel).to(conditions.device)
                yield denoiser.denoise_fn(conditions[rows.to(conditions.device)]), noise

        self.pd_amed.train()
        histories = {}
        for nfe in self.pd_amed.nfes:
            print(f"Prompt diffusion: distilling the AMED predictor (NFE={nfe}) from {amed.TEACHER} with "
                  f"{amed.INSERTED} inserted points, {amed.DISTILL_ITERS} batches of {amed.BATCH}")
            predictor = self.pd_amed.predictor(nfe)
            check.errors.clear()
            history = distill_amed(predictor, batches(), denoiser.schedule, teacher=amed.TEACHER,
                                   inserted=amed.INSERTED, lr=amed.LR, check=check, check_every=AMED_CHECK_EVERY,
                                   log_every=max(1, amed.DISTILL_ITERS // 10))
            print(f"Prompt diffusion: AMED (NFE={nfe}) student-vs-teacher error on {len(check_conditions)} "
                  f"{'held-out val' if held_out else 'training'} images {check.errors[0]:.4g} -> "
                  f"{min(check.errors):.4g}, "
                  f"the best of every {AMED_CHECK_EVERY} batches (distillation loss per batch "
                  f"{history[0]:.4g} -> {history[-1]:.4g})")
            histories[nfe] = history
        self.pd_amed.eval()
        self.pd_amed.distilled_flag.fill_(True)
        return histories
