"""Network pieces the generators share: a GPT-2-style transformer over prompt tokens (pure torch).

:class:`TokenTransformer` (after G.pt's transformer over parameter tokens) reads the sequence
``[prefix tokens | condition tokens | prompt tokens]``: the prefix is whatever the caller adds
(the denoiser's time tokens), π becomes ``cond_tokens`` tokens, and each prompt group has its own
linear map in (when the network reads prompts) and out (groups may differ in width, e.g. text 512
and vision 768); every position has a learned embedding; blocks are pre-LayerNorm with full
(non-causal) attention. The output maps are zero-initialised, so an untrained network outputs a
zero residual: the centre itself.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Prompts, PromptLayout


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


class TokenTransformer(nn.Module):
    """Transformer over ``[prefix | condition | prompt]`` tokens (see the module docstring).

    Args:
        layout: the prompt groups.
        cond_dim: width of π ``[B, cond_dim]``.
        layers, heads, width, mlp_ratio, dropout: the blocks.
        cond_tokens: how many tokens π becomes.
        prefix_tokens: tokens the caller puts before π's (``forward(prefix=...)``).
        reads_prompts: the prompt tokens carry an input ``{group: [B, n, w]}`` (mapped in per
            group); False: they are the position embeddings alone (a regressor's queries).
        out_factor: each prompt token is mapped out to ``out_factor · w`` values (0: no output
            maps; ``forward`` then returns the hidden states only).
    """

    def __init__(self, layout: PromptLayout, cond_dim: int, layers: int, heads: int, width: int,
                 cond_tokens: int = 1, prefix_tokens: int = 0, reads_prompts: bool = True, out_factor: int = 1,
                 mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.layout = layout
        self.width = width
        self.cond_tokens = cond_tokens
        self.prefix_tokens = prefix_tokens + cond_tokens
        self.prompt_tokens = prompt_tokens = sum(n for _, n, _ in layout.groups)
        self.cond_norm = nn.LayerNorm(cond_dim)
        self.cond_proj = nn.Linear(cond_dim, cond_tokens * width)
        self.proj_in = nn.ModuleDict({name: nn.Linear(w, width) for name, _, w in layout.groups}) if reads_prompts \
            else None
        self.proj_out = nn.ModuleDict({name: nn.Linear(width, out_factor * w) for name, _, w in layout.groups}) \
            if out_factor else None
        self.position = nn.Parameter(torch.randn(self.prefix_tokens + prompt_tokens, width) * 0.02)
        self.blocks = nn.ModuleList([Block(width, heads, mlp_ratio, dropout) for _ in range(layers)])
        self.ln_final = nn.LayerNorm(width)
        for proj in (self.proj_out or {}).values():
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def hidden(self, prompts: Optional[Prompts], cond: Tensor, prefix: Optional[Tensor] = None) -> Tensor:
        """Final hidden states ``[B, L, width]`` (after the final LayerNorm, all L tokens)."""
        batch = cond.shape[0]
        dtype = self.position.dtype
        tokens = [] if prefix is None else [prefix]
        tokens.append(self.cond_proj(self.cond_norm(cond.to(dtype))).view(batch, self.cond_tokens, self.width))
        if self.proj_in is not None:
            self.layout.check(prompts)
            tokens += [self.proj_in[name](prompts[name].to(dtype)) for name in self.layout.names]
        else:  # queries: the prompt positions' embeddings alone
            tokens.append(self.position.new_zeros(batch, self.prompt_tokens, self.width))
        h = torch.cat(tokens, dim=1) + self.position  # [B, L, width]
        for block in self.blocks:
            h = block(h)
        return self.ln_final(h)

    def outputs(self, h: Tensor) -> Prompts:
        """The prompt tokens' outputs ``{name: [B, n, out_factor·w]}`` from hidden states ``h``."""
        out: Prompts = {}
        start = self.prefix_tokens
        for name, n, _ in self.layout.groups:
            out[name] = self.proj_out[name](h[:, start: start + n])
            start += n
        return out


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int, zero_out: bool = True) -> nn.Sequential:
    """``in_dim -> hidden (GELU) × layers -> out_dim``; the last map zero-initialised when ``zero_out``."""
    dims = [in_dim] + [hidden] * layers
    modules = []
    for a, b in zip(dims[:-1], dims[1:]):
        modules += [nn.Linear(a, b), nn.GELU()]
    last = nn.Linear(dims[-1], out_dim)
    if zero_out:
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    return nn.Sequential(*modules, last)
