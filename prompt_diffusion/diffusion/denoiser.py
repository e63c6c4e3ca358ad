"""PromptDenoiser: a GPT-2-style transformer that predicts clean prompts from noisy ones.

Spaces (the one thing to get right when calling this module):
- *raw* prompts: what a prompt learner uses, a dict ``{group: Tensor[B, n_tokens, width]}``.
- *normalized* prompts: ``(raw − center) / scale``: the residual from a per-sample centre
  ``{group: [B, n, w]}`` the caller gives (the host's own prompt for each sample, so a zero
  residual is the host) over one scale per group, a buffer (:meth:`PromptDenoiser.update_scale`).
  :meth:`PromptDenoiser.forward`, the diffusion loss's MSE and all samplers work here.
- *flat* prompts: normalized prompts of all groups concatenated, ``Tensor[B, N]`` with
  ``N = Σ n·w``, the form the samplers integrate (:class:`PromptLayout` converts).

``diffusion_loss`` takes raw prompts and their centres and returns the prediction in raw space (the
wrapper's CE term needs it); :meth:`PromptDenoiser.generate` returns raw prompts.

Architecture (after G.pt's transformer over parameter tokens): the sequence is
``[time tokens | condition tokens | prompt tokens]``; each prompt group has its own linear map
in and out (groups may differ in width, e.g. text 512 and vision 768); every position has a
learned embedding; blocks are pre-LayerNorm with full (non-causal) attention; the output maps are
zero-initialised, so an untrained denoiser predicts a zero residual: the centre itself.
"""
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .samplers import sample, standard_normal
from .schedule import NoiseSchedule

Prompts = Dict[str, Tensor]
GroupSpec = Tuple[str, int, int]


class PromptLayout:
    """Where each prompt group lives in the flat ``[B, N]`` vector the samplers work on.

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


class FrequencyEmbedding(nn.Module):
    """NeRF-style encoding of a scalar in [0, 1]: ``[p, sin(2^k π p), cos(2^k π p)]_{k<L}``."""

    def __init__(self, num_frequencies: int) -> None:
        super().__init__()
        self.register_buffer(
            "frequencies", math.pi * 2.0 ** torch.arange(num_frequencies, dtype=torch.float32), persistent=False
        )
        self.out_dim = 1 + 2 * num_frequencies

    def forward(self, p: Tensor) -> Tensor:
        angles = p[:, None] * self.frequencies  # [B, L]
        return torch.cat([p[:, None], angles.sin(), angles.cos()], dim=1)  # [B, 1 + 2L]


class SelfAttention(nn.Module):
    """Multi-head self-attention without a mask (every prompt token sees every other)."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        # [B, L, 3W] -> 3 × [B, heads, L, W/heads]
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    """GPT-2 block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, dropout)
        self.ln_mlp = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_attn(x))
        return x + self.mlp(self.ln_mlp(x))


class PromptDenoiser(nn.Module):
    """Predicts clean normalized prompts ``x0`` from noisy ones, conditioned on π and t (Eq. 7).

    Args:
        groups: ``(name, n_tokens, token_width)`` per prompt group, e.g.
            ``[("text", 4, 512), ("vision", 36, 768)]``.
        cond_dim: width of the condition π (the image feature), ``[B, cond_dim]``.
        layers, heads, width: transformer depth, attention heads, model width.
        timesteps: T of the noise schedule; the continuous timestep t ∈ [0, T−1] is encoded as
            ``t / (T−1)`` with ``time_frequencies`` NeRF frequencies.
        cond_tokens, time_tokens: how many tokens π and t each become.
        mlp_ratio, dropout: block MLP width factor and dropout.
    """

    def __init__(
        self,
        groups: Sequence[Sequence],
        cond_dim: int,
        layers: int = 12,
        heads: int = 16,
        width: int = 512,
        timesteps: int = 100,
        time_frequencies: int = 8,
        cond_tokens: int = 1,
        time_tokens: int = 1,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.layout = PromptLayout(groups)
        self.config = {
            "groups": [list(group) for group in self.layout.groups],
            "cond_dim": int(cond_dim),
            "layers": int(layers),
            "heads": int(heads),
            "width": int(width),
            "timesteps": int(timesteps),
            "time_frequencies": int(time_frequencies),
            "cond_tokens": int(cond_tokens),
            "time_tokens": int(time_tokens),
            "mlp_ratio": float(mlp_ratio),
            "dropout": float(dropout),
        }
        self.width = width
        self.timesteps = timesteps
        self.cond_tokens = cond_tokens
        self.time_tokens = time_tokens
        prompt_tokens = sum(n for _, n, _ in self.layout.groups)
        self.prefix_tokens = cond_tokens + time_tokens

        self.time_embedding = FrequencyEmbedding(time_frequencies)
        self.time_mlp = nn.Sequential(
            nn.Linear(self.time_embedding.out_dim, width), nn.GELU(), nn.Linear(width, time_tokens * width)
        )
        self.cond_norm = nn.LayerNorm(cond_dim)
        self.cond_proj = nn.Linear(cond_dim, cond_tokens * width)
        self.proj_in = nn.ModuleDict({name: nn.Linear(w, width) for name, _, w in self.layout.groups})
        self.proj_out = nn.ModuleDict({name: nn.Linear(width, w) for name, _, w in self.layout.groups})
        self.position = nn.Parameter(torch.randn(self.prefix_tokens + prompt_tokens, width) * 0.02)
        self.blocks = nn.ModuleList([Block(width, heads, mlp_ratio, dropout) for _ in range(layers)])
        self.ln_final = nn.LayerNorm(width)
        for proj in self.proj_out.values():
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)
        # one scale per group (the RMS of the residuals it models): identity until update_scale; and
        # one gain per group on generated residuals (set after training by calibration; 1: none)
        for name, _, _ in self.layout.groups:
            self.register_buffer(f"{name}_scale", torch.ones(()))
            self.register_buffer(f"{name}_gain", torch.ones(()))

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

    # ---- network -------------------------------------------------------------------------------
    def forward(
        self, x_t: Prompts, cond: Tensor, t: Tensor, return_hidden: bool = False
    ) -> Union[Prompts, Tuple[Prompts, Tensor]]:
        """Predict clean normalized prompts.

        Args:
            x_t: noisy *normalized* prompts ``{name: [B, n, w]}`` in VP form
                ``sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·ε``.
            cond: the condition π, ``[B, cond_dim]``.
            t: fractional timesteps ``[B]`` in [0, T−1].
            return_hidden: also return the final hidden states ``[B, L, width]`` (after the final
                LayerNorm, all L = time + condition + prompt tokens).
        Returns:
            ``{name: [B, n, w]}`` x0 predictions (normalized space)[, hidden].
        """
        self.layout.check(x_t)
        batch = cond.shape[0]
        if cond.dim() != 2 or cond.shape[1] != self.config["cond_dim"]:
            raise ValueError(f"cond must be [B, {self.config['cond_dim']}], got {list(cond.shape)}")
        t = torch.as_tensor(t, device=cond.device)
        if t.dim() == 0:
            t = t.expand(batch)
        dtype = self.position.dtype
        time = self.time_mlp(self.time_embedding(t.to(dtype) / (self.timesteps - 1)))
        tokens = [
            time.view(batch, self.time_tokens, self.width),
            self.cond_proj(self.cond_norm(cond.to(dtype))).view(batch, self.cond_tokens, self.width),
        ]
        tokens += [self.proj_in[name](x_t[name].to(dtype)) for name in self.layout.names]
        h = torch.cat(tokens, dim=1) + self.position  # [B, L, width]
        for block in self.blocks:
            h = block(h)
        h = self.ln_final(h)
        out: Prompts = {}
        start = self.prefix_tokens
        for name, n, _ in self.layout.groups:
            out[name] = self.proj_out[name](h[:, start : start + n])
            start += n
        return (out, h) if return_hidden else out

    def denoise_fn(self, cond: Tensor) -> Callable[..., Union[Tensor, Tuple[Tensor, Tensor]]]:
        """The flat denoiser the samplers call, for a fixed condition ``cond [B, cond_dim]``.

        Returns ``denoise(x_t [B, N], t [B], return_hidden=False)`` -> x0 prediction ``[B, N]``
        (normalized, flat); with ``return_hidden=True`` also the token-averaged final hidden state
        ``[B, width]`` (detached), the feature an :class:`~.amed.AMEDPredictor` reads.
        """

        def denoise(x_t: Tensor, t: Tensor, return_hidden: bool = False):
            result = self(self.layout.unflatten(x_t), cond, t, return_hidden=return_hidden)
            if not return_hidden:
                return self.layout.flatten(result)
            x0, hidden = result
            return self.layout.flatten(x0), hidden.mean(dim=1).detach()

        return denoise

    @torch.no_grad()
    def generate(
        self,
        cond: Tensor,
        center: Prompts,
        schedule: NoiseSchedule,
        noise: Tensor,
        sampler: str = "dpmpp_2m",
        nfe: int = 5,
        generator: Optional[torch.Generator] = None,
        amed_predictor: Optional[nn.Module] = None,
    ) -> Prompts:
        """Sample one raw prompt per condition: ``noise [B, N]`` -> sampler (``nfe`` denoiser
        calls; ``generator`` draws ddpm's ancestral noise) -> residual, times each group's gain
        (``{name}_gain``, see ``calibrate_gain``) -> ``center + residual``.

        Returns ``{name: [B, n, w]}`` in raw prompt space (float32), detached.
        """
        flat = sample(self.denoise_fn(cond), noise, schedule, sampler, nfe, generator, amed_predictor)
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

    # ---- checkpoints ---------------------------------------------------------------------------
    def to_state(self) -> Dict[str, object]:
        """``{"config": plain values, "weights": state_dict}``; loads with weights_only=True.

        The weights include the scale buffers.
        """
        return {"config": dict(self.config), "weights": self.state_dict()}

    @classmethod
    def from_state(cls, state: Dict[str, object]) -> "PromptDenoiser":
        """Rebuild a denoiser written by :meth:`to_state` (in the dtype its weights were saved in)."""
        return module_from_state(cls, state)


def module_from_state(cls, state: Dict[str, object]) -> nn.Module:
    """``cls(**state["config"])`` with ``state["weights"]`` loaded, in the weights' dtype."""
    if not isinstance(state, dict) or set(state) != {"config", "weights"}:
        raise ValueError(f"{cls.__name__} state must be a dict with keys 'config' and 'weights'")
    model = cls(**state["config"])
    floating = [w for w in state["weights"].values() if torch.is_floating_point(w)]
    if floating:
        model = model.to(floating[0].dtype)
    model.load_state_dict(state["weights"])
    return model


def diffusion_loss(
    denoiser: PromptDenoiser,
    x0: Prompts,
    center: Prompts,
    cond: Tensor,
    schedule: NoiseSchedule,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Prompts]:
    """Paper Eq. 7 with a continuous timestep: ``‖V* − V̂_θ(√ᾱ_t V* + √(1−ᾱ_t) ε, π, t)‖²``, in the
    space of residuals ``(V* − center) / scale``.

    Args:
        x0: raw target prompts ``{name: [B, n, w]}`` (the overfitted V*).
        center: the raw prompts the residuals are taken from, ``{name: [B, n, w]}`` (detach them:
            the MSE should not move the centre).
        cond: π, ``[B, cond_dim]``.
        generator: draws ``t ~ U[0, T−1]`` and ε (on the generator's device).
    Returns:
        (loss, x0_hat): the loss is the mean squared error in *normalized* space, averaged over
        every coordinate of every group; ``x0_hat`` is the prediction in *raw* space
        (``center + scale·prediction``), still attached to the graph (for the CE term of Eq. 8).
    """
    layout = denoiser.layout
    clean = layout.flatten(denoiser.normalize(x0, center)).to(torch.float32)  # [B, N]
    batch = clean.shape[0]
    device = generator.device if generator is not None else clean.device
    uniform = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    t = (uniform * (schedule.steps - 1)).to(clean.device)  # continuous t ~ U[0, T-1]
    noise = standard_normal(clean.shape, generator, clean.device)
    alpha_bar = schedule.alpha_bar_at(t, check=False).to(clean.dtype)[:, None]  # [B, 1]; t in range by construction
    noisy = alpha_bar.sqrt() * clean + (1.0 - alpha_bar).sqrt() * noise
    predicted = denoiser(layout.unflatten(noisy), cond, t.to(clean.dtype))
    loss = (layout.flatten(predicted).float() - clean).pow(2).mean()
    return loss, denoiser.denormalize(predicted, center)
