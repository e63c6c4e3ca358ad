"""What the generator learns from: each training sample's overfitted prompt ``V*`` (paper §4.1).

``PerSampleTargets`` is the part of ``DiffusionPromptWrapper`` (a mixin of it; it reads the
wrapper's ``cfg``, ``pd_adapter``, ``pd_generator``, epoch and autocast) that turns a training batch
into ``V*``: I steps of each sample's ``OVERFIT.TARGET`` from its host prompt ``V_h`` (online, or
a cached residual reused for ``OVERFIT.REFRESH`` epochs), optionally less its class's running mean
residual, and the moving scale of ``V* − V_h`` the generator models it in.

It also runs the host's own loss, first in the step, and shares that pass with the overfitting
where it can: when the host's loss is the cross-entropy of its logits at ``V_h``
(``PromptAdapter.host_loss_is_prompt_ce``, checked on the first batch), one forward-backward gives
the host loss and each sample's first overfitting gradient, one prompted pass of the encoders
fewer per step; I = 1 then costs no pass of its own.
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from prompt_diffusion.diffusion.overfit import overfit_prompts, remove_class_means, target_objective
from prompt_diffusion.engine.amp import backward

__all__ = ["PerSampleTargets"]

Prompts = Dict[str, Tensor]

# weight of the newest batch in the moving average of the prompt scale (see _pd_update_scale) and
# of a class's mean residual (OVERFIT.REMOVE_CLASS_MEAN)
NORM_MOMENTUM = 0.1


def _relative_difference(first: Tensor, second: Tensor) -> float:
    """``max |first − second|`` over the larger of their largest magnitudes (0 for two zeros)."""
    scale = max(float(first.abs().max()), float(second.abs().max()), 1e-12)
    return float((first - second).abs().max()) / scale


class PerSampleTargets:
    """``V*`` of a training batch and the host's pass (see the module docstring)."""

    def _pd_per_sample_loss(self, images: Tensor, labels: Optional[Tensor], features: Tensor, target: str):
        label_weight = self.cfg.TRAINER.PD.OVERFIT.LABEL_WEIGHT

        def per_sample_loss(prompts: Prompts) -> Tensor:
            logits = self.pd_adapter.logits(images, prompts, features)
            return target_objective(target, logits, labels, label_weight)

        return per_sample_loss

    def pd_overfit(self, images: Tensor, labels: Optional[Tensor], features: Tensor, center: Prompts,
                   target: Optional[str] = None, first_grad: Optional[Prompts] = None) -> Prompts:
        """Paper §4.1: I gradient steps of each sample's loss from its host prompt ``center``
        ``{group: [B, n, w]}``; ``V*`` detached (fp32). The loss is ``target``'s (default
        ``OVERFIT.TARGET``: the paper's true-label CE, or a label-free objective, for which
        ``labels`` may be None). ``first_grad``: the summed losses' gradient at ``center`` when the
        caller has it (the host's pass, ``_pd_host_pass``), so the first step costs no pass."""
        overfit = self.cfg.TRAINER.PD.OVERFIT
        target = overfit.TARGET if target is None else target
        init = {name: prompt.detach().float() for name, prompt in center.items()}  # {group: [B, n, w]}
        return overfit_prompts(init, self._pd_per_sample_loss(images, labels, features, target), overfit.ITERS,
                               overfit.LR, step_rule=overfit.STEP_RULE, first_grad=first_grad)

    def _pd_rows_to_overfit(self, batch: dict, size: int) -> List[int]:
        """The rows of a batch of ``size`` overfitted in this step: all of them online; cached, those
        whose residual is missing or ``OVERFIT.REFRESH`` epochs old."""
        overfit = self.cfg.TRAINER.PD.OVERFIT
        if overfit.MODE == "online":
            return list(range(size))
        if "index" not in batch:
            raise KeyError("TRAINER.PD.OVERFIT.MODE 'cached' needs the sample index in each batch (batch['index'], "
                           "as Dassl's DatasetWrapper gives); this data loader does not provide it")
        return [row for row, index in enumerate(int(i) for i in batch["index"])
                if index not in self._pd_overfit_cache
                or self.epoch - self._pd_overfit_cache[index][0] >= overfit.REFRESH]

    def _pd_targets(self, batch: dict, images: Tensor, labels: Tensor, features: Tensor, center: Prompts,
                    rows: List[int], first_grad: Optional[Prompts]) -> Prompts:
        """``V*`` for the batch: overfitted now from ``center`` (online), or ``center`` plus the
        sample's cached residual ``V* − V_h`` (cached: the residual is recomputed every
        ``OVERFIT.REFRESH`` epochs, the centre is always the current host prompt). ``rows``: those
        overfitted now (``_pd_rows_to_overfit``); ``first_grad``: each sample's first overfitting
        gradient from the host's pass, or None."""
        if self.cfg.TRAINER.PD.OVERFIT.MODE == "online":
            return self.pd_overfit(images, labels, features, center, first_grad=first_grad)
        indices = [int(i) for i in batch["index"]]
        if rows:
            stale = torch.tensor(rows, device=images.device)
            fresh = self.pd_overfit(images[stale], labels[stale], features[stale],
                                    {name: prompt[stale] for name, prompt in center.items()},
                                    first_grad=None if first_grad is None else
                                    {name: grad[stale] for name, grad in first_grad.items()})
            for position, row in enumerate(rows):
                residual = {k: (v[position] - center[k][row].detach().float()).cpu() for k, v in fresh.items()}
                self._pd_overfit_cache[indices[row]] = (self.epoch, residual)
        return {name: prompt.detach().float()
                + torch.stack([self._pd_overfit_cache[i][1][name] for i in indices]).to(images.device)
                for name, prompt in center.items()}

    def _pd_within_class(self, targets: Prompts, center: Prompts, labels: Tensor) -> Prompts:
        """``V_h + (V* − V_h − m_y)``: the targets less the running mean residual of each sample's
        class (``OVERFIT.REMOVE_CLASS_MEAN``; the means live for one training, ``{group: [K, n, w]}``)."""
        if not hasattr(self, "_pd_class_means"):
            self._pd_class_means = {name: torch.zeros(self.num_classes, *prompt.shape[1:], device=prompt.device)
                                    for name, prompt in center.items()}
            self._pd_class_counts = torch.zeros(self.num_classes, dtype=torch.long)
        residuals = {name: targets[name] - center[name] for name in center}
        within = remove_class_means(residuals, labels, self._pd_class_means, self._pd_class_counts, NORM_MOMENTUM)
        return {name: center[name] + within[name] for name in center}

    def _pd_update_scale(self, targets: Prompts, center: Prompts) -> None:
        """Move each group's scale towards the RMS of ``V* − V_h`` over the batch (exponential
        moving average, momentum ``NORM_MOMENTUM``; set outright on the first step of a fresh
        training)."""
        momentum = 1.0 if self.epoch == 0 and self.batch_idx == 0 else NORM_MOMENTUM
        residuals = {name: targets[name] - center[name].detach().float() for name in targets}
        self.pd_generator.update_scale(residuals, momentum)

    def _pd_overfit_text(self) -> str:
        overfit = self.cfg.TRAINER.PD.OVERFIT
        mix = f" + {overfit.LABEL_WEIGHT} x label CE" if overfit.LABEL_WEIGHT > 0 else ""
        return f"target {overfit.TARGET}{mix}, I={overfit.ITERS}, {overfit.STEP_RULE} steps of lr={overfit.LR}"

    def _pd_host_pass(self, parsed: tuple, images: Tensor, labels: Tensor, features: Tensor, center: Prompts,
                      scaler, overfitting: bool) -> Tuple[Optional[Tensor], Optional[Prompts]]:
        """Backpropagate ``HOST_LOSS_WEIGHT`` times the host's own loss now (its graph is freed before
        the overfitting). Returns the loss (detached; None when off or the host has none) and, when
        this pass is shared (``_pd_shares_host_pass``) and the step overfits (``overfitting``: I > 0
        and some row to overfit), each sample's first overfitting gradient at ``V_h``
        ``{group: [B, n, w]}`` (fp32), else None.

        Shared, the loss is ``CE(adapter.logits(images, V_h), y)``: for the paper's target (the
        true-label CE) its backward is the overfitting's first one too (the gradient of the batch
        mean at row ``b`` is sample ``b``'s own over B); for a label-free target one more backward
        from the same forward gives it. One forward-backward of the prompted encoders fewer per step."""
        pd = self.cfg.TRAINER.PD
        if pd.HOST_LOSS_WEIGHT == 0:
            return None, None
        if not self._pd_shares_host_pass(parsed, images, labels, features):
            with self._pd_autocast():
                loss = self.pd_adapter.host_loss(parsed)
            if loss is not None:
                backward(self, pd.HOST_LOSS_WEIGHT * loss, scaler)
                loss = loss.detach()
            return loss, None
        overfit = pd.OVERFIT
        with self._pd_autocast():
            logits = self.pd_adapter.logits(images, center, features)
            loss = F.cross_entropy(logits, labels)
        first_grad = None
        if overfitting and overfit.TARGET != "label":
            objective = target_objective(overfit.TARGET, logits, labels, overfit.LABEL_WEIGHT).sum()
            grads = torch.autograd.grad(objective, list(center.values()), retain_graph=True)
            first_grad = {name: grad.float() for name, grad in zip(center, grads)}
        elif overfitting:
            for prompt in center.values():
                prompt.retain_grad()
        backward(self, pd.HOST_LOSS_WEIGHT * loss, scaler)
        if overfitting and first_grad is None:  # undo the mean over B, the weight and the amp scale
            factor = pd.HOST_LOSS_WEIGHT * (scaler.get_scale() if scaler is not None else 1.0) / len(images)
            first_grad = {name: prompt.grad.float() / factor for name, prompt in center.items()}
        return loss.detach(), first_grad

    def _pd_shares_host_pass(self, parsed: tuple, images: Tensor, labels: Tensor, features: Tensor) -> bool:
        """Whether the host's loss goes through ``adapter.logits`` and shares its pass with the
        overfitting: the adapter says the host's loss is the cross-entropy of its logits at its own
        prompts (``host_loss_is_prompt_ce``) and, on the first training batch, the two agree in
        value and in the gradient of every trainable host parameter (a fork whose loss differs keeps
        its own pass). Decided once per training, said in the log."""
        if self._pd_host_pass_shared is None:
            self._pd_host_pass_shared, reason = self._pd_check_host_loss(parsed, images, labels, features)
            print(f"Prompt diffusion: {reason}")
        return self._pd_host_pass_shared

    def _pd_check_host_loss(self, parsed: tuple, images: Tensor, labels: Tensor, features: Tensor) -> Tuple[bool, str]:
        """(whether the host's own loss and ``CE(adapter.logits(images, V_h), y)`` agree on this batch,
        in value and in the gradient of every trainable host parameter; the log line saying so)."""
        adapter = self.pd_adapter
        if not adapter.host_loss_is_prompt_ce:
            return False, (f"the {adapter.name} adapter's host loss is not the cross-entropy at the host's prompts, "
                           "so it runs as its own pass before the overfitting")
        with self._pd_autocast():
            own = adapter.host_loss(parsed)
            through = F.cross_entropy(adapter.logits(images, self.pd_host_prompts(features), features), labels)
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
