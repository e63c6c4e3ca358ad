"""``PromptDiffusion``: the method over one prompt learner, as one module any training loop can hold.

It holds what prompt diffusion adds to a host prompt learner (paper §4): the generator of
per-sample prompt residuals (``TRAINER.PD.GENERATOR``: the diffusion denoiser or a Table-4
alternative), the network that maps the frozen image feature to its condition π, and the AMED
predictor of its sampler. It reaches the host only through a ``PromptAdapter`` (the host's prompts,
its forward under per-sample prompts, its own loss), so the host's model and loop stay untouched:
a plain PyTorch loop (``examples/plain_loop``) and the Dassl shell (``wrapper.py``) drive it alike.

A training step, top to bottom (``training_step``; batch of B images, labels y):

    f    = the frozen CLIP image feature                               [B, E]
    V_h  = the host's own prompt for each image, attached to the host   {group: [B, n, w]}
    L_host, backpropagated first; where it is the CE of the host's logits at V_h, its pass also
         gives each sample's first overfitting gradient (the host's pass is shared)
    V*   = I gradient steps of each sample's OVERFIT.TARGET from V_h, detached (online: every
           step; cached: the residual V* − V_h reused for OVERFIT.REFRESH epochs)
    π    = the condition of f                                           [B, C]
    the generator models the residual (V* − V_h) / scale; its loss returns a prediction,
    V̂ = V_h + scale·prediction
    loss = CE_WEIGHT·CE(logits(V̂), y) + BETA·L_generator, backpropagated second
           (the host's parameters get one CE, never two: with the host's loss on, V_h is detached
           in V̂ and π never reaches the host)

Inference (``logits``): π → seeded noise (per image: ``NOISE_SEED``, its dataset index, the draw) →
the generator (diffusion: the sampler, NFE denoiser calls) → residual → ``V_h`` + residual → the
host's logits (``TEST_SAMPLES`` averaged). A zero residual gives the host's logits exactly.
``INFERENCE`` names the per-image references it is measured against, each from the host's prompt
``V_h``, reset per image, the generator unused: ``tune`` (test-time tuning with the label-free
``OVERFIT.TARGET``), ``tpt`` (TPT: ``VIEWS`` views, the confident tenth, one AdamW step on the averaged
entropy) and ``zero`` (Zero: the same views, no backward, the vote of the confident ones).
"""
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prompt_diffusion.adapters import PromptAdapter
from prompt_diffusion.adapters.base import ParsedBatch
from prompt_diffusion.diffusion.amed import AMEDPredictor
from prompt_diffusion.diffusion.noise import sample_seeds, seeded_noise_sampler, seeded_normal
from prompt_diffusion.diffusion.overfit import overfit_prompts, remove_class_means, target_objective
from prompt_diffusion.generator_registry import build_generator, generator_config
from prompt_diffusion.prompt_methods import MetaNet
from prompt_diffusion.test_time import (TPT_KEEP, TPT_LR, ZERO_KEEP, augmented_views, average_entropy, confident_views,
                                        zero_predictions)

__all__ = ["AMEDModule", "PromptDiffusion", "StepResult"]

Prompts = Dict[str, Tensor]

# the draw of the per-sample seeds the views of TPT and Zero come from (the generator's draws count from 0)
VIEWS_DRAW = 2 ** 31 - 1
# weight of the newest batch in the moving average of the residual scale and of a class's mean
# residual (RESEARCH.REMOVE_CLASS_MEAN)
NORM_MOMENTUM = 0.1


class AMEDModule(nn.Module):
    """One ``AMEDPredictor`` per NFE of ``TRAINER.PD.AMED.NFES`` (its σ grid depends on the NFE, so each
    budget has its own) and whether they have been distilled (a buffer, so the flag travels with the
    checkpoint)."""

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
        from prompt_diffusion.generators.base import plain_values

        built = self.get_extra_state()
        if set(state) != set(built):
            raise ValueError(f"the checkpoint has AMED predictors for NFE {sorted(int(n) for n in state)}, "
                             f"TRAINER.PD.AMED.NFES builds {self.nfes}: evaluate with the NFES the model was "
                             "trained with (an NFE outside them needs a model trained with it listed)")
        for nfe, config in state.items():
            if plain_values(config) != plain_values(built[nfe]):
                raise ValueError(f"the checkpoint's AMED predictor {config} differs from the one TRAINER.PD "
                                 f"builds {built[nfe]} (generator width changed?)")


class StepResult(NamedTuple):
    """What ``training_step`` did: its loss terms (floats: ``loss``, ``loss_ce``, ``loss_gen`` and, when
    the host has one, ``loss_host``) and the logits of the generated prompts ``[B, K]`` (detached)."""

    losses: Dict[str, float]
    logits: Tensor


def _relative_difference(first: Tensor, second: Tensor) -> float:
    """``max |first − second|`` over the larger of their largest magnitudes (0 for two zeros)."""
    scale = max(float(first.abs().max()), float(second.abs().max()), 1e-12)
    return float((first - second).abs().max()) / scale


def _repeat(prompts: Prompts, times: int) -> Prompts:
    """``{group: [B, n, w]}`` -> ``{group: [times * B, n, w]}`` (the batch ``times`` over)."""
    return {name: prompt.repeat(times, 1, 1) for name, prompt in prompts.items()}


def _detached(prompts: Prompts) -> Prompts:
    return {name: prompt.detach().float() for name, prompt in prompts.items()}


class PromptDiffusion(nn.Module):
    """Prompt diffusion over the prompt learner ``adapter`` reaches (see the module docstring).

    Args:
        adapter: the host's ``PromptAdapter``; kept as a plain reference (the host's model is the
            host's: not part of this module's parameters or state).
        config: the ``TRAINER.PD`` settings (a yacs node: ``config.pd_config()`` makes one outside a
            trainer), checked by ``config.validate_pd_cfg``.
        num_classes: K, the classes the host is trained on.
        autocast_dtype: the half-precision dtype the host's forward runs under autocast (``PREC amp``),
            or None.

    Its state (``state_dict``): the generator and its parts (the GAN's discriminator), the condition
    network when it owns one, the AMED predictors, whether calibration ran, and the running class
    means of ``RESEARCH.REMOVE_CLASS_MEAN``. Cached residuals (``OVERFIT.MODE cached``) live for one
    training.
    """

    def __init__(self, adapter: PromptAdapter, config, num_classes: int, autocast_dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.adapter = adapter
        self.config = config
        self.num_classes = int(num_classes)
        self.autocast_dtype = autocast_dtype
        print(f"Prompt diffusion: adapter {adapter.name}, prompt groups {[tuple(g) for g in adapter.groups]}")
        self.condition_net, cond_dim = self._build_condition()
        self.generator = self._build_generator(cond_dim)
        self.parts = nn.ModuleDict({name: part.to(self.device) for name, part in self.generator.parts().items()})
        self.amed = self._build_amed()
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool, device=self.device))
        self.register_buffer("scale_set", torch.zeros((), dtype=torch.bool, device=self.device))
        if config.RESEARCH.REMOVE_CLASS_MEAN:  # {group: [K, n, w]} and [K]: what the true label adds
            for name, n_tokens, width in adapter.groups:
                self.register_buffer(f"class_mean_{name}", torch.zeros(self.num_classes, n_tokens, width,
                                                                       device=self.device))
            self.register_buffer("class_count", torch.zeros(self.num_classes, dtype=torch.long, device=self.device))
        self.host_pass_shared: Optional[bool] = None  # decided on the first training batch
        self._residual_cache: Dict[int, Tuple[int, Prompts]] = {}  # OVERFIT.MODE cached: index -> (epoch, V* − V_h)
        self._said_fallback = False

    @property
    def device(self) -> torch.device:
        """The host's device (where this module's parts are built)."""
        return next(self.adapter.model.parameters()).device

    # ------------------------------------------------------------------ construction
    def _build_condition(self) -> Tuple[Optional[nn.Module], int]:
        """The network that maps the frozen image feature to π (None: π is the feature), and π's width.
        A Meta-Net of its own for every host: CoCoOp's Meta-Net stays the host's, trained by the host's
        loss alone (its output as π, detached, was measured 0.30 ± 0.10 points worse on new classes of
        the toy benchmark than a Meta-Net of PD's own; docs/toy_benchmark.md)."""
        feature_dim = self.adapter.feature_dim
        if self.config.COND == "image_feature":
            print("Prompt diffusion: π = the frozen CLIP image feature")
            return None, feature_dim
        net = MetaNet(feature_dim, feature_dim).to(self.device)
        print(f"Prompt diffusion: π = a Meta-Net of its own ({feature_dim} -> {net.linear1.out_features} -> "
              f"{feature_dim}) on the frozen CLIP image feature")
        return net, feature_dim

    def _build_generator(self, cond_dim: int) -> nn.Module:
        """The generator ``TRAINER.PD.GENERATOR`` names, sized by ``GENERATOR_SIZE``."""
        pd = self.config
        size = pd.GENERATOR_SIZE
        config = generator_config(pd.GENERATOR, self.adapter.groups, cond_dim, size.LAYERS, size.HEADS, size.WIDTH,
                                  timesteps=pd.STEPS, schedule=pd.SCHEDULE, kl_weight=pd.RESEARCH.VAE_KL_WEIGHT)
        generator = build_generator(config).to(self.device)
        sizes = ", ".join([f"{sum(p.numel() for p in generator.parameters()):,} parameters"]
                          + [f"{name} {sum(p.numel() for p in part.parameters()):,}"
                             for name, part in generator.parts().items()])
        print(f"Prompt diffusion: generator {pd.GENERATOR} ({sizes})")
        if pd.GENERATOR != "diffusion":
            print(f"Prompt diffusion: TRAINER.PD.SAMPLER, NFE, STEPS, SCHEDULE and AMED apply to the diffusion "
                  f"generator only; the {pd.GENERATOR} generator does not use them")
        return generator

    def _build_amed(self) -> Optional[AMEDModule]:
        """The AMED predictors (distilled after training) when ``SAMPLER`` is ``amed`` and
        ``AMED.DISTILL_ITERS`` > 0."""
        pd = self.config
        if pd.SAMPLER != "amed" or pd.GENERATOR != "diffusion":
            return None
        if pd.AMED.DISTILL_ITERS == 0:
            print("Prompt diffusion: TRAINER.PD.AMED.DISTILL_ITERS is 0, so no AMED predictor: "
                  "sampling falls back to dpmpp_2m")
            return None
        nfes = list(pd.AMED.NFES) or [pd.NFE]
        return AMEDModule({nfe: AMEDPredictor(feature_dim=pd.GENERATOR_SIZE.WIDTH, nfe=nfe) for nfe in nfes}).to(
            self.device)

    # ------------------------------------------------------------------ shared pieces
    def autocast(self):
        """Autocast to ``autocast_dtype`` on the host's device (the host's ``PREC amp``), else nothing."""
        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype or torch.float16, enabled=dtype is not None)

    def condition(self, image_features: Tensor) -> Tensor:
        """π ``[B, C]`` (float32) from the frozen image features ``[B, feature_dim]``."""
        if self.condition_net is None:
            return image_features.float()
        dtype = next(self.condition_net.parameters()).dtype
        return self.condition_net(image_features.to(dtype)).float()

    def host_prompts(self, image_features: Tensor) -> Prompts:
        """The host's own prompt for each image ``{group: [B, n, w]}`` (``adapter.host_prompts``),
        attached to the host's parameters: the centre of every residual the generator models."""
        return self.adapter.host_prompts(image_features)

    @torch.no_grad()
    def host_logits(self, images: Tensor) -> Tensor:
        """The host's logits ``[B, K]``: its adapter's logits at the host's own prompts (what
        ``TRAINER.PD.ENABLE False`` gives)."""
        features = self.adapter.image_features(images)
        return self.adapter.logits(images, self.host_prompts(features), features)

    def overfit(self, images: Tensor, labels: Optional[Tensor], features: Tensor, center: Prompts,
                target: Optional[str] = None, first_grad: Optional[Prompts] = None) -> Prompts:
        """Paper §4.1: I gradient steps of each sample's loss from its host prompt ``center``
        ``{group: [B, n, w]}``; ``V*`` detached (fp32). The loss is ``target``'s (default
        ``OVERFIT.TARGET``: the paper's true-label CE, or a label-free objective, for which ``labels``
        may be None). ``first_grad``: the summed losses' gradient at ``center`` when the caller has
        it (the host's pass), so the first step costs no pass."""
        overfit = self.config.OVERFIT
        target = overfit.TARGET if target is None else target

        def per_sample_loss(prompts: Prompts) -> Tensor:
            return target_objective(target, self.adapter.logits(images, prompts, features), labels)

        return overfit_prompts(_detached(center), per_sample_loss, overfit.ITERS, overfit.LR,
                               step_rule=overfit.STEP_RULE, first_grad=first_grad)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: ParsedBatch, backward: Callable[[Tensor], None] = Tensor.backward, *,
                      grad_scale: float = 1.0, epoch: int = 0, indices: Optional[Sequence[int]] = None) -> StepResult:
        """One training step's gradients, accumulated by two calls of ``backward``: the host's own loss
        first, then CE + generator loss. The caller zeroes the gradients before and steps its
        optimizers (the host's and this module's) after.

        Args:
            batch: what the host's loss takes, ``(images, labels, ...)`` (the host trainer's
                ``parse_batch_train``).
            backward: how the caller backpropagates a loss (its amp scaler, its checks).
            grad_scale: the factor ``backward`` scales gradients by (the amp scaler's scale; 1 without).
            epoch: the training epoch (``OVERFIT.MODE cached`` refreshes by it).
            indices: the samples' dataset indices (``OVERFIT.MODE cached`` keys its residuals by them).
        """
        pd = self.config
        images, labels = batch[:2]
        features = self.adapter.image_features(images)  # [B, E], frozen
        with self.autocast():
            center = self.host_prompts(features)  # V_h: {group: [B, n, w]}, attached to the host
        fixed_center = _detached(center)
        rows = self._rows_to_overfit(indices, len(images), epoch)  # all online; cached: the stale samples
        loss_host, first_grad = self._host_pass(batch, images, labels, features, center, backward, grad_scale,
                                                overfitting=pd.OVERFIT.ITERS > 0 and bool(rows))
        targets = self._targets(images, labels, features, center, rows, first_grad, epoch, indices)  # V*, detached
        if pd.RESEARCH.REMOVE_CLASS_MEAN:
            targets = self._within_class(targets, fixed_center, labels)
        self._update_scale(targets, fixed_center)
        with self.autocast():
            pi = self.condition(features)  # [B, C]
            draws = pd.LOSS_DRAWS  # the batch repeated: [draws * B, ...], draw-major
            loss_gen, predicted = self.generator.loss(_repeat(targets, draws), _repeat(fixed_center, draws),
                                                      pi.repeat(draws, 1))
            predicted = {name: prompt[: len(images)] for name, prompt in predicted.items()}  # the first draw
            # V̂ = V_h + residual. The host's parameters get one CE, never two: the host's own loss when
            # it is on (V_h detached here), else the CE of Eq. 8 through V_h (attached)
            origin = center if pd.HOST_LOSS_WEIGHT == 0 else fixed_center
            generated = {name: origin[name] + (predicted[name] - fixed_center[name]) for name in center}
            logits = self.adapter.logits(images, generated, features)
            loss_ce = F.cross_entropy(logits, labels)
            loss = pd.CE_WEIGHT * loss_ce + pd.BETA * loss_gen
        backward(loss)
        losses = {"loss_ce": loss_ce.item(), "loss_gen": loss_gen.item()}
        if loss_host is not None:
            losses["loss_host"] = loss_host.item()
            loss = loss + pd.HOST_LOSS_WEIGHT * loss_host
        losses["loss"] = loss.item()
        return StepResult(losses, logits.detach())

    def _host_pass(self, batch: ParsedBatch, images: Tensor, labels: Tensor, features: Tensor, center: Prompts,
                   backward: Callable[[Tensor], None], grad_scale: float,
                   overfitting: bool) -> Tuple[Optional[Tensor], Optional[Prompts]]:
        """Backpropagate ``HOST_LOSS_WEIGHT`` times the host's own loss now (its graph is freed before
        the overfitting). Returns the loss (detached; None when off or the host has none) and, when
        this pass is shared (``_shares_host_pass``) and the step overfits, each sample's first
        overfitting gradient at ``V_h`` ``{group: [B, n, w]}`` (fp32), else None.

        Shared, the loss is ``CE(adapter.logits(images, V_h), y)``: for the paper's target (the
        true-label CE) its backward is the overfitting's first one too (the gradient of the batch
        mean at row ``b`` is sample ``b``'s own over B); for a label-free target one more backward
        from the same forward gives it. One forward-backward of the prompted encoders fewer per step."""
        pd = self.config
        if pd.HOST_LOSS_WEIGHT == 0:
            return None, None
        if not self._shares_host_pass(batch, images, labels, features):
            with self.autocast():
                loss = self.adapter.host_loss(batch)
            if loss is not None and loss.requires_grad:  # (a host with nothing to learn has no gradient to pass)
                backward(pd.HOST_LOSS_WEIGHT * loss)
            return None if loss is None else loss.detach(), None
        with self.autocast():
            logits = self.adapter.logits(images, center, features)
            loss = F.cross_entropy(logits, labels)
        first_grad = None
        if overfitting and pd.OVERFIT.TARGET != "label":
            objective = target_objective(pd.OVERFIT.TARGET, logits, labels).sum()
            grads = torch.autograd.grad(objective, list(center.values()), retain_graph=True)
            first_grad = {name: grad.float() for name, grad in zip(center, grads)}
        elif overfitting:
            for prompt in center.values():
                prompt.retain_grad()
        backward(pd.HOST_LOSS_WEIGHT * loss)
        if overfitting and first_grad is None:  # undo the mean over B, the weight and the amp scale
            factor = pd.HOST_LOSS_WEIGHT * grad_scale / len(images)
            first_grad = {name: prompt.grad.float() / factor for name, prompt in center.items()}
        return loss.detach(), first_grad

    def _shares_host_pass(self, batch: ParsedBatch, images: Tensor, labels: Tensor, features: Tensor) -> bool:
        """Whether the host's loss goes through ``adapter.logits`` and shares its pass with the
        overfitting: the adapter says the host's loss is the cross-entropy of its logits at its own
        prompts (``host_loss_is_prompt_ce``) and, on the first training batch, the two agree in
        value and in the gradient of every trainable host parameter (a fork whose loss differs keeps
        its own pass). Decided once, said in the log."""
        if self.host_pass_shared is None:
            self.host_pass_shared, reason = self._check_host_loss(batch, images, labels, features)
            print(f"Prompt diffusion: {reason}")
        return self.host_pass_shared

    def _check_host_loss(self, batch: ParsedBatch, images: Tensor, labels: Tensor,
                         features: Tensor) -> Tuple[bool, str]:
        """(whether the host's own loss and ``CE(adapter.logits(images, V_h), y)`` agree on this batch,
        in value and in the gradient of every trainable host parameter; the log line saying so)."""
        adapter = self.adapter
        if not adapter.host_loss_is_prompt_ce:
            return False, (f"the {adapter.name} adapter's host loss is not the cross-entropy at the host's prompts, "
                           "so it runs as its own pass before the overfitting")
        with self.autocast():
            own = adapter.host_loss(batch)
            through = F.cross_entropy(adapter.logits(images, self.host_prompts(features), features), labels)
        if own is None:
            return False, f"the {adapter.name} adapter gives no host loss"
        params = [p for p in adapter.model.parameters() if p.requires_grad]
        pairs = [(own.detach(), through.detach())] + [
            (torch.zeros_like(b) if a is None else a, torch.zeros_like(a) if b is None else b)
            for a, b in zip(torch.autograd.grad(own, params, allow_unused=True),
                            torch.autograd.grad(through, params, allow_unused=True)) if a is not None or b is not None]
        worst = max(_relative_difference(a, b) for a, b in pairs)
        tolerance = 1e-4 if own.dtype == through.dtype == torch.float32 else 1e-2
        values = (f"first batch: {pairs[0][0].item():.6g} and {pairs[0][1].item():.6g}, gradients within {worst:.1e} "
                  "relative")
        if worst <= tolerance:
            return True, (f"the host's loss is the cross-entropy of its logits at its own prompts ({values}): one "
                          "pass gives the host loss and each sample's first overfitting step")
        return False, (f"the host's own loss differs from the cross-entropy at its prompts ({values}, tolerance "
                       f"{tolerance:g}), so it runs as its own pass before the overfitting")

    def _rows_to_overfit(self, indices: Optional[Sequence[int]], size: int, epoch: int) -> List[int]:
        """The rows of a batch of ``size`` overfitted in this step: all of them online; cached, those
        whose residual is missing or ``OVERFIT.REFRESH`` epochs old."""
        overfit = self.config.OVERFIT
        if overfit.MODE == "online":
            return list(range(size))
        if indices is None:
            raise ValueError("TRAINER.PD.OVERFIT.MODE 'cached' needs the samples' dataset indices (batch['index'], "
                             "as Dassl's DatasetWrapper gives); this data loader does not provide them")
        return [row for row, index in enumerate(int(i) for i in indices)
                if index not in self._residual_cache or epoch - self._residual_cache[index][0] >= overfit.REFRESH]

    def _targets(self, images: Tensor, labels: Tensor, features: Tensor, center: Prompts, rows: List[int],
                 first_grad: Optional[Prompts], epoch: int, indices: Optional[Sequence[int]]) -> Prompts:
        """``V*`` for the batch: overfitted now from ``center`` (online), or ``center`` plus the
        sample's cached residual ``V* − V_h`` (cached: recomputed every ``OVERFIT.REFRESH`` epochs, the
        centre always the current host prompt). ``rows``: those overfitted now; ``first_grad``: each
        sample's first overfitting gradient from the host's pass, or None."""
        if self.config.OVERFIT.MODE == "online":
            return self.overfit(images, labels, features, center, first_grad=first_grad)
        indices = [int(i) for i in indices]
        if rows:
            stale = torch.tensor(rows, device=images.device)
            fresh = self.overfit(images[stale], labels[stale], features[stale],
                                 {name: prompt[stale] for name, prompt in center.items()},
                                 first_grad=None if first_grad is None else
                                 {name: grad[stale] for name, grad in first_grad.items()})
            for position, row in enumerate(rows):
                residual = {k: (v[position] - center[k][row].detach().float()).cpu() for k, v in fresh.items()}
                self._residual_cache[indices[row]] = (epoch, residual)
        return {name: prompt.detach().float()
                + torch.stack([self._residual_cache[i][1][name] for i in indices]).to(images.device)
                for name, prompt in center.items()}

    def _within_class(self, targets: Prompts, center: Prompts, labels: Tensor) -> Prompts:
        """``V_h + (V* − V_h − m_y)``: the targets less the running mean residual of each sample's class
        (``RESEARCH.REMOVE_CLASS_MEAN``; the means are buffers, so a resumed training continues them)."""
        means = {name: getattr(self, f"class_mean_{name}") for name in center}
        residuals = {name: targets[name] - center[name] for name in center}
        within = remove_class_means(residuals, labels, means, self.class_count, NORM_MOMENTUM)
        return {name: center[name] + within[name] for name in center}

    def _update_scale(self, targets: Prompts, center: Prompts) -> None:
        """Move each group's scale towards the RMS of ``V* − V_h`` over the batch (exponential moving
        average, momentum ``NORM_MOMENTUM``; set outright on the first step of a fresh training)."""
        momentum = NORM_MOMENTUM if bool(self.scale_set) else 1.0
        self.generator.update_scale({name: targets[name] - center[name] for name in targets}, momentum)
        self.scale_set.fill_(True)

    def overfit_text(self) -> str:
        """The overfitting settings, for the log."""
        overfit = self.config.OVERFIT
        return f"target {overfit.TARGET}, I={overfit.ITERS}, {overfit.STEP_RULE} steps of lr={overfit.LR}"

    # ------------------------------------------------------------------ inference
    def sampler(self) -> Tuple[str, Optional[nn.Module]]:
        """The sampler to use and its AMED predictor: ``amed`` needs a distilled predictor, else
        ``dpmpp_2m`` (said once in the log)."""
        sampler = self.config.SAMPLER
        if sampler != "amed":
            return sampler, None
        if self.amed is not None and self.amed.distilled:
            return "amed", self.amed.predictor(self.config.NFE)
        if not self._said_fallback:
            print("Prompt diffusion: no distilled AMED predictor, sampling with dpmpp_2m instead")
            self._said_fallback = True
        return "dpmpp_2m", None

    @torch.no_grad()
    def generate(self, pi: Tensor, center: Prompts, indices: Tensor, draw: int = 0) -> Prompts:
        """One sampled raw prompt per condition row ``pi [B, C]``: ``center`` (the host's prompts) plus a
        generated residual, from the noise of each sample's seed (``NOISE_SEED``, its dataset index in
        ``indices [B]``, ``draw``): the same prompt for an image in any batch."""
        seeds = sample_seeds(self.config.NOISE_SEED, torch.as_tensor(indices).cpu(), draw).to(pi.device)
        noise = seeded_normal(seeds, self.generator.noise_dim)  # [B, noise_dim]
        options = {}
        if self.config.GENERATOR == "diffusion":
            sampler, predictor = self.sampler()
            options = {"sampler": sampler, "nfe": self.config.NFE, "amed_predictor": predictor,
                       "noise_sampler": seeded_noise_sampler(seeds, self.generator.layout.numel)}
        return self.generator.generate(pi, center, noise, **options)

    @torch.no_grad()
    def logits(self, images: Tensor, indices: Tensor) -> Tensor:
        """Prompt diffusion's logits ``[B, K]`` for ``images`` whose dataset indices are ``indices [B]``
        (they seed each image's noise and views): the generated prompts' (``TEST_SAMPLES`` averaged), or
        a per-image reference of ``INFERENCE`` from the host's prompts (see the module docstring)."""
        features = self.adapter.image_features(images)
        center = self.host_prompts(features)
        inference = self.config.INFERENCE
        if inference == "tune":  # test-time tuning: each image's own label-free V*
            return self.adapter.logits(images, self.overfit(images, None, features, center), features)
        if inference == "tpt":
            return self.adapter.logits(images, self._tpt_prompts(self._views(images, indices), center), features)
        if inference == "zero":  # temperature zero: all the probability on the voted class
            predictions = zero_predictions(self.adapter.view_logits(self._views(images, indices), center), ZERO_KEEP)
            return (F.one_hot(predictions, self.num_classes).float() - 1.0) * 1e4
        pi = self.condition(features)
        draws = self.config.TEST_SAMPLES
        return sum(self.adapter.logits(images, self.generate(pi, center, indices, draw), features)
                   for draw in range(draws)) / draws

    def _views(self, images: Tensor, indices: Tensor) -> Tensor:
        """``VIEWS`` views of each image ``[B, VIEWS, 3, H, W]`` (view 0 the image), drawn from the image's
        own seed (``NOISE_SEED``, its dataset index; a draw no sampler uses), so the same in any batch."""
        seeds = sample_seeds(self.config.NOISE_SEED, torch.as_tensor(indices).cpu(), draw=VIEWS_DRAW).tolist()
        return torch.cat([augmented_views(image[None], self.config.VIEWS, torch.Generator().manual_seed(seed))
                          for image, seed in zip(images, seeds)])

    def _tpt_prompts(self, views: Tensor, center: Prompts) -> Prompts:
        """TPT (Shu et al., NeurIPS 2022) from each image's host prompt: the views' predictions, the
        ``TPT_KEEP`` most confident, one AdamW step of ``TPT_LR`` on the entropy of their averaged
        prediction; one optimizer over the batch's prompts ``{group: [B, n, w]}`` is one per image, as
        AdamW's first step is elementwise. Only the prompts are differentiated (the host's ``.grad`` stay)."""
        prompts = {name: prompt.detach().float().clone().requires_grad_(True) for name, prompt in center.items()}
        optimizer = torch.optim.AdamW(list(prompts.values()), lr=TPT_LR)
        with torch.enable_grad():
            logits = self.adapter.view_logits(views, prompts)  # [B, N, K]
            kept = confident_views(logits.detach(), TPT_KEEP)  # [B, n]
            chosen = torch.gather(logits, 1, kept.unsqueeze(2).expand(-1, -1, logits.shape[2]))  # [B, n, K]
            grads = torch.autograd.grad(average_entropy(chosen).sum(), list(prompts.values()))
        for prompt, grad in zip(prompts.values(), grads):
            prompt.grad = grad
        optimizer.step()
        return {name: prompt.detach() for name, prompt in prompts.items()}
