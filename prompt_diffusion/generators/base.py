"""The interface every prompt generator implements, and the prompt space they share (pure torch).

Spaces (the one thing to get right when calling a generator):
- *raw* prompts: what a prompt learner uses, a dict ``{group: Tensor[B, n_tokens, width]}``.
- *normalized* prompts: ``(raw − center) / scale``: the residual from a per-sample centre
  ``{group: [B, n, w]}`` the caller gives (the host's own prompt for each sample, so a zero
  residual is the host) over one scale per group, a buffer (:meth:`PromptGenerator.update_scale`).
  Every generator's network, loss and sampling work here.
- *flat* prompts: normalized prompts of all groups concatenated, ``Tensor[B, N]`` with
  ``N = Σ n·w`` (:class:`PromptLayout` converts).

A :class:`PromptGenerator` models the conditional distribution of the normalized residual given
the condition π ``[B, cond_dim]``. Subclasses implement two things, both in flat normalized space:
``residual_loss(residual, cond, generator)`` (the training loss and the residual it predicts, for
the CE term of the paper's Eq. 8) and ``sample_residual(cond, noise, **options)``
(inference from ``noise [B, noise_dim]``). The base class turns them into :meth:`loss` and
:meth:`generate` on raw prompts, and owns what all generators share: the layout, the per-group
scale, and the per-group gain that calibration sets after training (:meth:`calibrate_gain`).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

Prompts = Dict[str, Tensor]
GroupSpec = Tuple[str, int, int]


def standard_normal(shape: Sequence[int], generator: Optional[torch.Generator], device) -> Tensor:
    """N(0, I) float32 noise drawn with ``generator`` (on its device), placed on ``device``."""
    source = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=source).to(device)


class PromptLayout:
    """Where each prompt group lives in the flat ``[B, N]`` vector generators work on.

    ``groups`` is a sequence of ``(name, n_tokens, token_width)``; flattening concatenates the
    groups in this order, each row-major ``[n_tokens, width]``.
    """

    def __init__(self, groups: Sequence[Sequence]) -> None:
        if len(groups) == 0:
            raise ValueError("a prompt layout needs at least one group (name, n_tokens, width)")
        parsed: List[GroupSpec] = []
        for group in groups:
            if len(group) != 3:
                raise ValueError(f"prompt group must be (name, n_tokens, width), got {group!r}")
            name, n_tokens, width = group
            if not str(name).isidentifier() or int(n_tokens) < 1 or int(width) < 1:
                raise ValueError(
                    f"prompt group {group!r}: name must be an identifier, n_tokens and width >= 1"
                )
            parsed.append((str(name), int(n_tokens), int(width)))
        names = [name for name, _, _ in parsed]
        if len(set(names)) != len(names):
            raise ValueError(f"prompt group names must be unique, got {names}")
        self.groups: Tuple[GroupSpec, ...] = tuple(parsed)
        self.sizes = [n * w for _, n, w in self.groups]
        self.numel = sum(self.sizes)

    @property
    def names(self) -> List[str]:
        return [name for name, _, _ in self.groups]

    def check(self, prompts: Prompts, batched: bool = True) -> None:
        """Raise a ValueError naming the group if ``prompts`` does not match the layout."""
        if set(prompts) != set(self.names):
            raise ValueError(f"prompt groups {sorted(prompts)} do not match the layout's {self.names}")
        for name, n, w in self.groups:
            shape = tuple(prompts[name].shape)
            expected = shape[:1] + (n, w) if batched else (n, w)
            if shape != expected:
                want = f"[B, {n}, {w}]" if batched else f"[{n}, {w}]"
                raise ValueError(f"prompt group {name!r} has shape {list(shape)}, expected {want}")

    def flatten(self, prompts: Prompts) -> Tensor:
        """``{name: [B, n, w]}`` -> ``[B, N]``."""
        self.check(prompts)
        return torch.cat([prompts[name].flatten(1) for name in self.names], dim=1)

    def unflatten(self, flat: Tensor) -> Prompts:
        """``[B, N]`` -> ``{name: [B, n, w]}`` (views into ``flat``)."""
        if flat.dim() != 2 or flat.shape[1] != self.numel:
            raise ValueError(f"flat prompts must be [B, {self.numel}], got {list(flat.shape)}")
        pieces = torch.split(flat, self.sizes, dim=1)
        return {name: piece.reshape(-1, n, w) for (name, n, w), piece in zip(self.groups, pieces)}


class PromptGenerator(nn.Module):
    """A conditional generator of prompt residuals: the interface of ``TRAINER.PD.GENERATOR``.

    Subclasses set ``kind`` (the name ``build_generator`` knows them by), call
    ``super().__init__(groups, cond_dim)``, record their constructor arguments in
    ``self.config`` (plain values: ``build_generator(config)`` rebuilds the same architecture; a
    checkpoint written for another one is refused, see :meth:`set_extra_state`), and implement
    :meth:`residual_loss` and :meth:`sample_residual`.
    """

    kind = ""

    def __init__(self, groups: Sequence[Sequence], cond_dim: int) -> None:
        super().__init__()
        self.layout = PromptLayout(groups)
        self.cond_dim = int(cond_dim)
        self.config: Dict[str, object] = {"kind": self.kind, "groups": [list(g) for g in self.layout.groups],
                                          "cond_dim": self.cond_dim}
        # one scale per group (the RMS of the residuals it models): identity until update_scale; and
        # one gain per group on generated residuals (set after training by calibration; 1: none)
        for name, _, _ in self.layout.groups:
            self.register_buffer(f"{name}_scale", torch.ones(()))
            self.register_buffer(f"{name}_gain", torch.ones(()))

    # ---- what a generator is -------------------------------------------------------------------
    @property
    def noise_dim(self) -> int:
        """Width of the noise ``[B, noise_dim]`` :meth:`generate` reads per sample (0: none)."""
        return self.layout.numel

    def parts(self) -> Dict[str, nn.Module]:
        """Modules trained alongside the generator with their own optimizer and checkpoint, kept
        out of this module's parameters and state dict (the GAN's discriminator); the caller
        moves, registers and optimises them."""
        return {}

    def residual_loss(self, residual: Tensor, cond: Tensor,
                      generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        """Training loss on normalized flat targets ``residual [B, N]`` given ``cond [B, cond_dim]``,
        and the residual ``[B, N]`` the generator predicts for them (attached to the graph)."""
        raise NotImplementedError

    def sample_residual(self, cond: Tensor, noise: Tensor, **options) -> Tensor:
        """One normalized flat residual ``[B, N]`` per condition row, from ``noise [B, noise_dim]``
        (``options``: the generator's own sampling settings, e.g. the diffusion sampler and the
        noise of its ancestral steps)."""
        raise NotImplementedError

    # ---- checkpoints ---------------------------------------------------------------------------
    def get_extra_state(self) -> dict:
        return dict(self.config)

    def set_extra_state(self, state: dict) -> None:
        saved, built = plain_values(state), plain_values(self.config)
        if saved != built:
            differing = {k: (saved.get(k), built.get(k)) for k in set(saved) | set(built) if saved.get(k) != built.get(k)}
            raise ValueError(f"the checkpoint's generator differs from the one being loaded into "
                             f"(key: (checkpoint, built)): {differing}")

    # ---- normalization -------------------------------------------------------------------------
    @torch.no_grad()
    def update_scale(self, residuals: Prompts, momentum: float = 1.0, eps: float = 1e-6) -> None:
        """Move each group's scale towards the RMS of ``residuals`` ``{name: [B, n, w]}`` (raw
        prompts minus their centres) over all its coordinates: ``scale ← (1 − m)·scale + m·RMS``,
        floored at ``eps``. ``momentum`` 1 sets it outright."""
        self.layout.check(residuals)
        for name in self.layout.names:
            rms = residuals[name].detach().float().pow(2).mean().sqrt().clamp_min(eps)
            scale = getattr(self, f"{name}_scale")
            scale.mul_(1.0 - momentum).add_(momentum * rms)

    def normalize(self, prompts: Prompts, center: Prompts) -> Prompts:
        """Raw -> normalized: ``(raw − center) / scale`` per group (differentiable)."""
        return {name: (prompts[name] - center[name]) / getattr(self, f"{name}_scale") for name in self.layout.names}

    def denormalize(self, prompts: Prompts, center: Prompts) -> Prompts:
        """Normalized -> raw: ``normalized · scale + center`` per group (differentiable)."""
        return {name: prompts[name] * getattr(self, f"{name}_scale") + center[name] for name in self.layout.names}

    # ---- training and inference on raw prompts ---------------------------------------------------
    def loss(self, targets: Prompts, center: Prompts, cond: Tensor,
             generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Prompts]:
        """The generator's training loss on raw targets ``{name: [B, n, w]}`` (the overfitted V*)
        around ``center`` (detach it: the loss should not move the centre), given π ``[B, cond_dim]``;
        and the predicted prompt in raw space (``center + scale·residual``), attached to the graph
        (for the CE term of Eq. 8). ``generator`` draws the loss's randomness."""
        if cond.dim() != 2 or cond.shape[1] != self.cond_dim:
            raise ValueError(f"cond must be [B, {self.cond_dim}], got {list(cond.shape)}")
        clean = self.layout.flatten(self.normalize(targets, center)).to(torch.float32)  # [B, N]
        loss, predicted = self.residual_loss(clean, cond, generator)
        return loss, self.denormalize(self.layout.unflatten(predicted), center)

    @torch.no_grad()
    def generate(self, cond: Tensor, center: Prompts, noise: Tensor, **options) -> Prompts:
        """Sample one raw prompt per condition: ``noise [B, noise_dim]`` -> residual (``options``:
        the generator's sampling settings), times each group's gain (``{name}_gain``, see
        :meth:`calibrate_gain`) -> ``center + scale·residual``.

        Returns ``{name: [B, n, w]}`` in raw prompt space (float32), detached.
        """
        if noise.dim() != 2 or noise.shape != (cond.shape[0], self.noise_dim):
            raise ValueError(f"noise must be [B, {self.noise_dim}] for {cond.shape[0]} conditions, "
                             f"got {list(noise.shape)}")
        flat = self.sample_residual(cond, noise, **options).float()
        residual = {name: r * getattr(self, f"{name}_gain") for name, r in self.layout.unflatten(flat).items()}
        return self.denormalize(residual, {k: v.float() for k, v in center.items()})

    @torch.no_grad()
    def calibrate_gain(self, generated: Prompts, targets: Prompts) -> Dict[str, float]:
        """Set each group's gain to the least-squares shrinkage of generated residuals onto target
        ones (both normalized, ``{name: [n, w']}`` stacked over images), clipped to [0, 1]:
        ``g = Σ <r̂, r*> / Σ ‖r̂‖²``. A generator whose residuals are unrelated to the targets gets
        ~0 (its output is dropped: the centre alone), a perfect one 1. Returns the gains."""
        gains = {}
        for name in self.layout.names:
            r_hat, r_star = generated[name].double(), targets[name].double()
            gain = float((r_hat * r_star).sum() / r_hat.pow(2).sum().clamp_min(1e-12))
            gains[name] = min(max(gain, 0.0), 1.0)
            getattr(self, f"{name}_gain").fill_(gains[name])
        return gains


def plain_values(value):
    """Lists for tuples, recursively, so configs compare equal after a save/load round trip."""
    if isinstance(value, dict):
        return {k: plain_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_values(v) for v in value]
    return value
