"""The prompted CLIP forward: shallow + deep prompts, shared or per sample, on CLIP's own modules.

One forward over the modules of an openai-CLIP-layout model, so it runs on models from the
``clip`` package and on the modified models of the upstream forks (same module names):

- text: ``transformer.resblocks[i]`` (``attn``, ``ln_1``, ``mlp``, ``ln_2``), ``positional_embedding``,
  ``ln_final``, ``text_projection``. ``text_encoder`` may be the ``CLIP`` model itself or an upstream
  ``TextEncoder`` (which holds the same attributes).
- vision: ``visual.conv1``, ``class_embedding``, ``positional_embedding``, ``ln_pre``,
  ``transformer``, ``ln_post``, ``proj`` (a ViT; a ``ModifiedResNet`` runs only without prompts).

Prompt placement follows the upstream forks (CoOp / CoCoOp / VPT / IVLP / MaPLe):

- text: shallow prompts occupy positions ``1..n`` (after SOS) of the input; the deep prompt of
  layer ``i`` (``i = 1 .. len(deep)``) replaces positions ``1..n`` of that layer's input.
- vision: shallow prompts are appended after CLS + patches (after the positional embedding,
  before ``ln_pre``); the deep prompt of layer ``i`` replaces the last ``n`` tokens of that layer's input.

Every prompt may be *shared* (``[n, D]``) or *per sample* (``[B, n, D]``). Per-sample text prompts
give ``B x K`` sequences for ``K`` classes; they are encoded in chunks of ``chunk_size`` sequences.

Exact EOT truncation: CLIP's text transformer is causal, so the EOT feature depends only on
positions ``<= EOT``. Every sequence is cut to ``max EOT index + 1`` positions (positional
embedding and causal mask sliced to match); the features equal the full-length ones.
For the same reason the class-independent head of a prompted sequence (SOS + prompt, and the deep
prompts that replace it) has the same hidden states in all K sequences of one prompt:
``encode_prompted_text`` computes it once per prompt and lets the K class parts attend to it.

Typical use (CoOp-style learner; ``token_embedding`` of the CLIP model, ``tokenized`` [K, L]):

    prefix, suffix = split_prompt_embeddings(clip_model.token_embedding, tokenized, n_ctx)
    text = encode_prompted_text(clip_model, prefix, suffix, tokenized, ctx)      # [K, E]
    text = encode_prompted_text(clip_model, prefix, suffix, tokenized, ctx_b)    # [B, K, E]
    image = encode_image(clip_model.visual, images, shallow=vpt, deep=vpt_deep)  # [B, E]
    logits = prompted_logits(image, text, clip_model.logit_scale)                # [B, K]
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "eot_positions",
    "truncated_length",
    "split_prompt_embeddings",
    "encode_token_embeddings",
    "encode_prompted_text",
    "encode_image",
    "prompted_logits",
    "deep_prompts_of",
]


def eot_positions(tokenized: Tensor) -> Tensor:
    """Index of the EOT token of each sequence, ``[N]`` (EOT has the largest id, as upstream)."""
    return tokenized.argmax(dim=-1)


def truncated_length(tokenized: Tensor) -> int:
    """``max EOT index + 1`` over ``tokenized`` ``[N, L]``: the positions the EOT features depend on."""
    return int(eot_positions(tokenized).max().item()) + 1


def split_prompt_embeddings(
    token_embedding: nn.Embedding, tokenized: Tensor, n_ctx: int, dtype: Optional[torch.dtype] = None
) -> Tuple[Tensor, Tensor]:
    """Embed ``tokenized`` ``[K, L]`` and cut out the ``n_ctx`` slots after SOS.

    Returns ``prefix`` ``[K, 1, D]`` (SOS) and ``suffix`` ``[K, L - 1 - n_ctx, D]`` (class name,
    ".", EOT, padding), without gradient: the ``token_prefix`` / ``token_suffix`` buffers of the
    CoOp family. ``tokenized`` must hold ``n_ctx`` placeholder tokens at positions ``1..n_ctx``.
    """
    with torch.no_grad():
        embedding = token_embedding(tokenized.long())  # [K, L, D]
        if dtype is not None:
            embedding = embedding.to(dtype)
    return embedding[:, :1, :], embedding[:, 1 + n_ctx:, :]


def _text_dtype(text_encoder: nn.Module) -> torch.dtype:
    # ``clip.model.convert_weights`` casts text_projection but not the LayerNorms / positional embedding
    return text_encoder.text_projection.dtype


def _causal_mask(length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Additive causal mask ``[length, length]`` (``-inf`` above the diagonal), as ``CLIP.build_attention_mask``."""
    return torch.full((length, length), float("-inf"), dtype=dtype, device=device).triu_(1)


def _run_block(block: nn.Module, x: Tensor, attn_mask: Optional[Tensor]) -> Tensor:
    """One ``ResidualAttentionBlock`` on ``x`` ``[L, N, D]`` with an explicit mask (any length)."""
    h = block.ln_1(x)
    x = x + block.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
    return x + block.mlp(block.ln_2(x))


def _check_deep(deep: Sequence[Tensor], n_layers: int, n_prompt: int, what: str) -> None:
    if len(deep) > n_layers - 1:
        raise ValueError(
            f"{what}: {len(deep)} deep prompts given, but the transformer has {n_layers} layers "
            f"(at most {n_layers - 1} deep prompts, for layers 1..{n_layers - 1})"
        )
    for i, prompt in enumerate(deep):
        if prompt.shape[-2] != n_prompt:
            raise ValueError(
                f"{what}: deep prompt of layer {i + 1} has {prompt.shape[-2]} tokens, "
                f"the shallow prompt has {n_prompt}; they must be equal (deep prompts replace those slots)"
            )


def encode_token_embeddings(
    text_encoder: nn.Module,
    embeddings: Tensor,
    tokenized: Tensor,
    deep_prompts: Sequence[Tensor] = (),
    truncate: bool = True,
    chunk_size: int = 0,
) -> Tensor:
    """Text features of already-embedded sequences: the upstream ``TextEncoder.forward`` plus deep prompts.

    Args:
        text_encoder: ``CLIP`` model or upstream ``TextEncoder`` (``transformer``, ``positional_embedding``,
            ``ln_final``, ``text_projection``).
        embeddings: ``[N, L, D]`` token embeddings (SOS, prompt slots, class tokens, EOT, padding);
            ``L`` may be shorter than the context length if it still covers every EOT.
        tokenized: ``[N, L']`` token ids (``L' >= L``); EOT positions = argmax.
        deep_prompts: for layers ``1..len(deep_prompts)``, each ``[n, D]`` (shared) or ``[N, n, D]``
            (one per sequence); replaces positions ``1..n`` of that layer's input.
        truncate: run on ``max EOT index + 1`` positions only (exact for CLIP's causal transformer).
        chunk_size: encode at most this many sequences at once (0: all); same result.

    Returns:
        ``[N, E]`` text features (not normalised), in the model's dtype.
    """
    if 0 < chunk_size < embeddings.shape[0]:
        return torch.cat([
            encode_token_embeddings(
                text_encoder, embeddings[start:start + chunk_size], tokenized[start:start + chunk_size],
                [p[start:start + chunk_size] if p.dim() == 3 else p for p in deep_prompts], truncate,
            )
            for start in range(0, embeddings.shape[0], chunk_size)
        ])
    dtype = _text_dtype(text_encoder)
    resblocks = text_encoder.transformer.resblocks
    eot = eot_positions(tokenized)
    length = truncated_length(tokenized) if truncate else embeddings.shape[1]
    if length > embeddings.shape[1]:
        raise ValueError(f"embeddings have {embeddings.shape[1]} positions but an EOT sits at index {length - 1}")
    if deep_prompts:
        _check_deep(deep_prompts, len(resblocks), deep_prompts[0].shape[-2], "text")
    x = embeddings[:, :length].to(dtype) + text_encoder.positional_embedding[:length].to(dtype)
    x = x.permute(1, 0, 2)  # NLD -> LND: [length, N, D]
    mask = _causal_mask(length, x.dtype, x.device)
    n_seq = x.shape[1]
    for i, block in enumerate(resblocks):
        if 1 <= i <= len(deep_prompts):
            prompt = deep_prompts[i - 1].to(dtype)
            prompt = prompt.expand(n_seq, -1, -1) if prompt.dim() == 2 else prompt  # [N, n, D]
            n = prompt.shape[1]
            x = torch.cat([x[:1], prompt.permute(1, 0, 2), x[1 + n:]], dim=0)
        x = _run_block(block, x, mask)
    x = x.permute(1, 0, 2)  # LND -> NLD: [N, length, D]
    x = text_encoder.ln_final(x).to(dtype)
    return x[torch.arange(n_seq, device=x.device), eot.to(x.device)] @ text_encoder.text_projection


def encode_prompted_text(
    text_encoder: nn.Module,
    prefix: Tensor,
    suffix: Tensor,
    tokenized: Tensor,
    ctx: Tensor,
    deep_prompts: Sequence[Tensor] = (),
    chunk_size: int = 0,
    truncate: bool = True,
) -> Tensor:
    """Class text features with the prompt ``ctx`` at positions ``1..n``: shared or per sample.

    Args:
        text_encoder: ``CLIP`` model or upstream ``TextEncoder``.
        prefix: ``[K, 1, D]`` SOS embeddings; suffix: ``[K, L - 1 - n, D]`` (see ``split_prompt_embeddings``).
        tokenized: ``[K, L]`` token ids of the K class prompts.
        ctx: ``[n, D]`` shared prompt, or ``[B, n, D]`` one prompt per sample (``n`` may be 0).
        deep_prompts: for text layers ``1..len(deep_prompts)``: ``[n, D]`` shared or ``[B, n, D]``
            per sample (per-sample deep prompts need a per-sample ``ctx``).
        chunk_size: encode at most this many sequences at once (``MODEL.TEXT_CHUNK``; 0: all);
            the result equals the unchunked one.
        truncate: exact EOT truncation (see module docstring).

    Returns:
        ``[K, E]`` for a shared ``ctx``; ``[B, K, E]`` for a per-sample ``ctx`` (sequence ``(b, k)``
        holds prompt ``b`` and class ``k``). Not normalised.
    """
    n_cls, n_ctx = prefix.shape[0], ctx.shape[-2]
    if suffix.shape[0] != n_cls or tokenized.shape[0] != n_cls:
        raise ValueError(f"prefix, suffix and tokenized must have one row per class: "
                         f"got {n_cls}, {suffix.shape[0]}, {tokenized.shape[0]}")
    if 1 + n_ctx + suffix.shape[1] != tokenized.shape[1]:
        raise ValueError(f"1 + n_ctx ({n_ctx}) + suffix length ({suffix.shape[1]}) must equal the tokenized "
                         f"length ({tokenized.shape[1]}): build prefix/suffix with the same n_ctx")
    if not torch.equal(prefix, prefix[:1].expand_as(prefix)):
        raise ValueError("prefix must hold the same (SOS) embedding for every class: [K, 1, D]")
    tokenized = tokenized.to(prefix.device)
    per_sample = ctx.dim() == 3
    if ctx.dim() not in (2, 3):
        raise ValueError(f"ctx must be [n, D] (shared) or [B, n, D] (per sample), got shape {tuple(ctx.shape)}")
    _check_deep(deep_prompts, len(text_encoder.transformer.resblocks), n_ctx, "text")
    if not per_sample and any(p.dim() == 3 for p in deep_prompts):
        raise ValueError("per-sample deep text prompts [B, n, D] need a per-sample ctx [B, n, D]")
    length = truncated_length(tokenized) if truncate else tokenized.shape[1]
    suffix = suffix[:, : length - 1 - n_ctx]  # drop padding beyond the last EOT: [K, S, D]
    n_batch = ctx.shape[0] if per_sample else 1
    ctx = ctx if per_sample else ctx.unsqueeze(0)  # [B, n, D] (B = 1 when shared)
    deep_prompts = [p if p.dim() == 3 else p.unsqueeze(0).expand(n_batch, -1, -1) for p in deep_prompts]
    heads = torch.cat([prefix[:1].expand(n_batch, -1, -1), ctx.to(prefix.dtype)], dim=1)  # [B, 1 + n, D]
    eot = eot_positions(tokenized) - heads.shape[1]  # EOT index inside the class part
    n_seq = n_batch * n_cls
    step = chunk_size if chunk_size > 0 else n_seq
    features = []
    for start in range(0, n_seq, step):
        index = torch.arange(start, min(start + step, n_seq), device=prefix.device)
        sample, cls = index // n_cls, index % n_cls  # sequence (b, k) = flat index b * K + k
        features.append(_encode_shared_head(text_encoder, heads, suffix[cls], sample, eot[cls], deep_prompts))
    features = torch.cat(features)  # [B * K, E]
    return features.view(n_batch, n_cls, -1) if per_sample else features


def _attention(block: nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Tensor) -> Tensor:
    """``block.attn`` (``nn.MultiheadAttention``) on already layer-normed inputs, written out so that
    queries and keys may come from different sequences: ``query`` ``[Lq, N, D]``, ``key``/``value``
    ``[Lk, N, D]``, additive ``mask`` ``[Lq, Lk]`` -> ``[Lq, N, D]``."""
    attn = block.attn
    width, n_heads = query.shape[-1], attn.num_heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)

    def split_heads(x: Tensor) -> Tensor:  # [L, N, D] -> [N, heads, L, D / heads]
        return x.reshape(x.shape[0], x.shape[1], n_heads, width // n_heads).permute(1, 2, 0, 3)

    q = split_heads(F.linear(query, w_q, b_q))
    k = split_heads(F.linear(key, w_k, b_k))
    v = split_heads(F.linear(value, w_v, b_v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [N, heads, Lq, D / heads]
    out = out.permute(2, 0, 1, 3).reshape(query.shape[0], query.shape[1], width)  # [Lq, N, D]
    return attn.out_proj(out)


def _encode_shared_head(
    text_encoder: nn.Module, heads: Tensor, tails: Tensor, sample: Tensor, eot: Tensor, deep_prompts: Sequence[Tensor]
) -> Tensor:
    """Text features of sequences ``[heads[sample[i]], tails[i]]`` computing each head only once.

    The first ``P = 1 + n`` positions (SOS and the prompt) do not depend on the class, and CLIP's
    text transformer is causal, so their hidden states are the same in all K sequences of a prompt:
    they are computed once per prompt (``[P, B, D]``), and the class part of every sequence
    (``[S, N, D]``) attends to them. Exact (equal to running the full sequences).

    heads ``[B, P, D]``; tails ``[N, S, D]``; sample ``[N]`` (head of each tail); eot ``[N]`` (EOT
    index inside the tail); deep_prompts for layers ``1..``: ``[B, P - 1, D]`` -> features ``[N, E]``.
    """
    dtype = _text_dtype(text_encoder)
    n_head, n_tail = heads.shape[1], tails.shape[1]
    positions = text_encoder.positional_embedding.to(dtype)
    head = (heads.to(dtype) + positions[:n_head]).permute(1, 0, 2)  # [P, B, D]
    tail = (tails.to(dtype) + positions[n_head:n_head + n_tail]).permute(1, 0, 2)  # [S, N, D]
    head_mask = _causal_mask(n_head, dtype, heads.device)  # [P, P]
    tail_mask = torch.cat([torch.zeros(n_tail, n_head, dtype=dtype, device=heads.device),
                           _causal_mask(n_tail, dtype, heads.device)], dim=1)  # [S, P + S]: all of the head
    for i, block in enumerate(text_encoder.transformer.resblocks):
        if 1 <= i <= len(deep_prompts):
            head = torch.cat([head[:1], deep_prompts[i - 1].to(dtype).permute(1, 0, 2)], dim=0)
        head_in, tail_in = block.ln_1(head), block.ln_1(tail)
        context = torch.cat([head_in[:, sample], tail_in], dim=0)  # [P + S, N, D]
        head = head + _attention(block, head_in, head_in, head_in, head_mask)
        tail = tail + _attention(block, tail_in, context, context, tail_mask)
        head = head + block.mlp(block.ln_2(head))
        tail = tail + block.mlp(block.ln_2(tail))
    tail = text_encoder.ln_final(tail.permute(1, 0, 2)).to(dtype)  # [N, S, D]
    return tail[torch.arange(tail.shape[0], device=tail.device), eot.to(tail.device)] @ text_encoder.text_projection


def _expand_batch(prompt: Tensor, n_batch: int) -> Tensor:
    """``[n, D]`` -> ``[B, n, D]`` (view); ``[B, n, D]`` unchanged."""
    return prompt.expand(n_batch, -1, -1) if prompt.dim() == 2 else prompt


def encode_image(
    visual: nn.Module,
    images: Tensor,
    shallow: Optional[Tensor] = None,
    deep: Sequence[Tensor] = (),
) -> Tensor:
    """Image features with visual prompts (VPT / IVLP / MaPLe placement).

    Args:
        visual: ``clip_model.visual`` (a ViT; a ``ModifiedResNet`` only without prompts).
        images: ``[B, 3, H, W]``.
        shallow: ``[n, W]`` shared or ``[B, n, W]`` per sample, appended after CLS + patches
            (after the positional embedding, before ``ln_pre``); ``None``: no prompts.
        deep: for layers ``1..len(deep)``: ``[n, W]`` or ``[B, n, W]``; replaces the last ``n`` tokens.

    Returns:
        ``[B, E]`` image features (not normalised), in the model's dtype. Without prompts this
        equals ``clip_model.encode_image(images)``.
    """
    if not hasattr(visual, "class_embedding"):  # ModifiedResNet
        if shallow is not None or deep:
            raise ValueError(f"visual prompts need a ViT image encoder, got {type(visual).__name__}")
        return visual(images.to(visual.conv1.weight.dtype))
    if deep and shallow is None:
        raise ValueError("deep visual prompts need shallow visual prompts (they replace those tokens)")
    dtype = visual.conv1.weight.dtype
    x = visual.conv1(images.to(dtype))  # [B, W, grid, grid]
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [B, grid**2, W]
    n_batch, width = x.shape[0], x.shape[2]
    cls = visual.class_embedding.to(dtype).expand(n_batch, 1, width)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(dtype)  # [B, 1 + grid**2, W]
    resblocks = visual.transformer.resblocks
    if shallow is not None:
        _check_deep(deep, len(resblocks), shallow.shape[-2], "vision")
        x = torch.cat([x, _expand_batch(shallow.to(dtype), n_batch)], dim=1)  # [B, 1 + grid**2 + n, W]
    x = visual.ln_pre(x).permute(1, 0, 2)  # NLD -> LND
    for i, block in enumerate(resblocks):
        if 1 <= i <= len(deep):
            prompt = _expand_batch(deep[i - 1].to(dtype), n_batch).permute(1, 0, 2)  # [n, B, W]
            x = torch.cat([x[: x.shape[0] - prompt.shape[0]], prompt], dim=0)
        x = _run_block(block, x, None)
    x = visual.ln_post(x[0])  # CLS token: [B, W]
    return x @ visual.proj if visual.proj is not None else x


def prompted_logits(image_features: Tensor, text_features: Tensor, logit_scale: Tensor) -> Tensor:
    """``logit_scale.exp() * cos(image, text)``: ``[B, E]`` x (``[K, E]`` or ``[B, K, E]``) -> ``[B, K]``;
    ``[B, N, E]`` (N views of each image) x ``[B, K, E]`` (each image's own classes) -> ``[B, N, K]``."""
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    scale = logit_scale.exp()
    if image_features.dim() == 3:
        return scale * torch.einsum("bne,bke->bnk", image_features, text_features)
    if text_features.dim() == 3:
        return scale * torch.einsum("be,bke->bk", image_features, text_features)
    return scale * image_features @ text_features.t()


def deep_prompts_of(resblocks: Sequence[nn.Module]) -> List[Tensor]:
    """The deep prompts stored on a transformer's blocks with the upstream forks' name: the
    ``VPT_shallow`` tensors of blocks 1, 2, ... up to the first block without one (block 0 takes
    the shallow prompt; the forks set ``VPT_shallow`` only on prompted layers)."""
    prompts = []
    for block in list(resblocks)[1:]:
        prompt = getattr(block, "VPT_shallow", None)
        if not isinstance(prompt, Tensor):
            break
        prompts.append(prompt)
    return prompts
