"""What the CoOp-family trainers share: class-prompt tokenisation, context initialisation, the text
encoder over ``clip_prompting``, deep-prompt parameters with the upstream names, precision, and
the trainer skeleton (frozen CLIP, one registered model, checkpoint loading that drops class buffers).
"""
import contextlib
from typing import List, Optional, Sequence, Tuple

import clip
import torch
import torch.nn.functional as F
from clip.simple_tokenizer import SimpleTokenizer
from torch import Tensor, nn
from tqdm import tqdm

from prompt_diffusion.backbones import apply_precision, check_precision, load_clip_from_cfg
from prompt_diffusion.clip_prompting import encode_prompted_text, encode_token_embeddings, split_prompt_embeddings
from prompt_diffusion.engine import (
    TrainerX, backward_and_update, build_lr_scheduler, build_optimizer, compute_accuracy, load_pretrained_weights,
)

_tokenizer = SimpleTokenizer()

# buffers computed from the class names: never loaded from a checkpoint (base -> new, cross-dataset)
CLASS_BUFFERS = ("token_prefix", "token_suffix")


def context_length(clip_model: nn.Module) -> int:
    """Text positions of the CLIP model (77 for OpenAI's; smaller for tiny / toy models)."""
    return clip_model.positional_embedding.shape[0]


def tokenize_class_prompts(
    prompt_prefix: str, classnames: Sequence[str], length: int = 77
) -> Tuple[Tensor, List[int]]:
    """``"<prefix> <class name>."`` per class (``_`` -> space), as upstream.

    Returns ``tokenized`` ``[K, length]`` and the BPE length of each class name.
    """
    names = [name.replace("_", " ") for name in classnames]
    name_lens = [len(_tokenizer.encode(name)) for name in names]
    tokenized = clip.tokenize(class_prompt_texts(prompt_prefix, classnames), context_length=length)
    return tokenized, name_lens


def class_prompt_texts(prompt_prefix: str, classnames: Sequence[str]) -> List[str]:
    """``"<prefix> <class name>."`` per class, ``_`` in a class name read as a space (upstream's prompts)."""
    return [f"{prompt_prefix} {name.replace('_', ' ')}." for name in classnames]


def init_text_context(
    clip_model: nn.Module, ctx_init: str, n_ctx: int, shape_prefix: Tuple[int, ...] = (), words_set_n_ctx: bool = True
) -> Tuple[Tensor, str, int]:
    """Initial text context vectors, the prompt prefix text, and the number of context tokens.

    With ``ctx_init`` words ("a photo of a"): their token embeddings (CoOp / CoCoOp take as many
    tokens as words; IVLP, ``words_set_n_ctx=False``, keeps ``n_ctx`` and the remaining words stay in
    the prompt text). Otherwise N(0, 0.02) vectors of shape ``shape_prefix + (n_ctx, width)`` and the
    placeholder prefix ``"X X ... X"``.
    """
    dtype = clip_model.dtype
    width = clip_model.ln_final.weight.shape[0]
    if ctx_init:
        ctx_init = ctx_init.replace("_", " ")
        if words_set_n_ctx:
            n_ctx = len(ctx_init.split(" "))
        with torch.no_grad():
            tokens = clip.tokenize(ctx_init, context_length=context_length(clip_model))
            embedding = clip_model.token_embedding(tokens).to(dtype)  # [1, L, width]
        return embedding[0, 1:1 + n_ctx, :].clone(), ctx_init, n_ctx
    ctx_vectors = torch.empty(*shape_prefix, n_ctx, width, dtype=dtype)
    nn.init.normal_(ctx_vectors, std=0.02)
    return ctx_vectors, " ".join(["X"] * n_ctx), n_ctx


def frozen_text_features(clip_model: nn.Module, texts: Sequence[str], chunk_size: int = 1024,
                         device: Optional[torch.device] = None, desc: str = "frozen text features") -> Tensor:
    """CLIP's own text features ``[N, E]`` (not normalised) of ``texts``, without gradient: the
    frozen class features of ZeroshotCLIP and VPT, PromptSRC's template ensemble, CoPrompt's
    class descriptions.

    Encoded ``chunk_size`` texts at a time with exact EOT truncation (a progress bar over chunks),
    on ``device`` when given (the model goes there for the encoding and back afterwards; the result
    lies where the model was). A text longer than CLIP's context is an error (``clip.tokenize``).
    """
    home = clip_model.ln_final.weight.device
    work = torch.device(device) if device is not None else home
    clip_model.to(work)
    tokenized = clip.tokenize(list(texts), context_length=context_length(clip_model))  # [N, L]
    step = chunk_size if chunk_size > 0 else len(texts)
    no_prompt = torch.zeros(0, clip_model.ln_final.weight.shape[0], dtype=clip_model.dtype, device=work)
    features = []
    with torch.no_grad():
        for start in tqdm(range(0, len(texts), step), desc=desc, leave=False,
                          disable=True if len(texts) <= step else None):
            tokens = tokenized[start:start + step].to(work)
            prefix, suffix = split_prompt_embeddings(clip_model.token_embedding, tokens, 0, clip_model.dtype)
            features.append(encode_prompted_text(clip_model, prefix, suffix, tokens, no_prompt))
    clip_model.to(home)
    return torch.cat(features).to(home)


def check_image_size(cfg, clip_model: nn.Module) -> None:
    clip_size, cfg_size = clip_model.visual.input_resolution, cfg.INPUT.SIZE[0]
    if cfg_size != clip_size:
        raise ValueError(f"INPUT.SIZE[0]={cfg_size} must equal the CLIP image size {clip_size} "
                         f"(backbone {cfg.MODEL.BACKBONE.NAME})")


class TextEncoder(nn.Module):
    """CLIP's text tower over prompt embeddings (upstream ``TextEncoder``), with deep prompts,
    exact EOT truncation and chunking (``clip_prompting.encode_token_embeddings``)."""

    def __init__(self, clip_model: nn.Module, chunk_size: int = 0):
        super().__init__()
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.dtype = clip_model.dtype
        self.chunk_size = chunk_size

    def forward(self, prompts: Tensor, tokenized_prompts: Tensor, deep_prompts: Sequence[Tensor] = ()) -> Tensor:
        """``prompts`` ``[N, L, D]`` embeddings, ``tokenized_prompts`` ``[N, L]`` -> ``[N, E]``."""
        return encode_token_embeddings(self, prompts, tokenized_prompts.to(prompts.device), deep_prompts,
                                       chunk_size=self.chunk_size)


def register_class_prompts(learner: nn.Module, clip_model: nn.Module, prompt_prefix: str,
                           classnames: Sequence[str], n_ctx: int) -> None:
    """Give a prompt learner upstream's class attributes for ``"<prompt_prefix> <class>."``.

    Buffers ``token_prefix`` ``[K, 1, D]`` (SOS) and ``token_suffix`` ``[K, L - 1 - n_ctx, D]``
    (the words after the ``n_ctx`` context slots, class name, ".", EOT): computed from the current
    class names, so ``load_model`` ignores saved ones. Plain attributes ``n_cls``, ``n_ctx``,
    ``tokenized_prompts`` ``[K, L]`` and ``name_lens``.
    """
    tokenized, name_lens = tokenize_class_prompts(prompt_prefix, classnames, context_length(clip_model))
    prefix, suffix = split_prompt_embeddings(clip_model.token_embedding, tokenized, n_ctx, clip_model.dtype)
    learner.register_buffer("token_prefix", prefix)
    learner.register_buffer("token_suffix", suffix)
    learner.n_cls, learner.n_ctx = len(classnames), n_ctx
    learner.tokenized_prompts, learner.name_lens = tokenized, name_lens


class TextPromptedCLIP(nn.Module):
    """Upstream ``CustomCLIP`` layout around a prompt learner: ``prompt_learner``, ``tokenized_prompts``,
    ``image_encoder`` (CLIP's visual tower), ``text_encoder``, ``logit_scale``, ``dtype``."""

    def __init__(self, prompt_learner: nn.Module, clip_model: nn.Module, chunk_size: int = 0):
        super().__init__()
        self.prompt_learner = prompt_learner
        self.tokenized_prompts = prompt_learner.tokenized_prompts
        self.image_encoder = clip_model.visual
        self.text_encoder = TextEncoder(clip_model, chunk_size=chunk_size)
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype

    def prompted_text_features(self, ctx: Tensor, deep_prompts: Sequence[Tensor] = ()) -> Tensor:
        """Class text features with ``ctx`` after SOS: ``[n, D]`` -> ``[K, E]``, ``[B, n, D]`` ->
        ``[B, K, E]`` (``clip_prompting.encode_prompted_text``: truncation, shared head, chunks)."""
        learner = self.prompt_learner
        return encode_prompted_text(self.text_encoder, learner.token_prefix, learner.token_suffix,
                                    self.tokenized_prompts, ctx, deep_prompts, chunk_size=self.text_encoder.chunk_size)

    def loss_or_logits(self, logits: Tensor, label: Optional[Tensor]) -> Tensor:
        """Upstream's return: the cross-entropy while the prompt learner trains, else the logits."""
        return F.cross_entropy(logits, label) if self.prompt_learner.training else logits


def attach_deep_prompts(resblocks: nn.Sequential, depth: int, n_ctx: int, width: int) -> None:
    """Give blocks ``1..depth-1`` a learnable ``VPT_shallow`` ``[n_ctx, width]`` ~ N(0, 0.02), fp32.

    The name and placement are upstream's (``ResidualAttentionBlock_IVLP.VPT_shallow``), so state
    dicts match the forks; the blocks' own forward ignores it, ``clip_prompting`` reads it.
    """
    if depth > len(resblocks):
        raise ValueError(f"prompt depth {depth} exceeds the {len(resblocks)} transformer layers")
    for block in list(resblocks)[1:depth]:
        block.VPT_shallow = nn.Parameter(torch.empty(n_ctx, width).normal_(std=0.02))


def attach_visual_prompts(visual: nn.Module, n_ctx: int, depth: int) -> None:
    """Upstream's visual prompts on a CLIP ViT: ``VPT`` ``[n_ctx, W]`` (appended after CLS + patches)
    and ``VPT_shallow`` on blocks ``1..depth-1``; all N(0, 0.02), fp32."""
    width = visual.conv1.weight.shape[0]
    visual.VPT = nn.Parameter(torch.empty(n_ctx, width).normal_(std=0.02))
    attach_deep_prompts(visual.transformer.resblocks, depth, n_ctx, width)


def autocast_context(prec: str, device: torch.device):
    """``amp``: float16 autocast on the device's type (CUDA or CPU alike); otherwise a no-op context."""
    if prec != "amp":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.float16)


class PromptedCLIPTrainer(TrainerX):
    """Dassl trainer skeleton of the CoOp family; subclasses set the class attributes and
    ``build_custom_clip``.

    - ``PREC_NODE``: the ``cfg.TRAINER`` node holding ``PREC`` ("COOP", "COCOOP", "VPT", "IVLP").
    - ``MODEL_NAME``: the registered model name (upstream: "prompt_learner" or "VLPromptLearner").
    - ``OPTIMIZE_PROMPT_LEARNER_ONLY``: register / optimise ``model.prompt_learner`` (CoOp, CoCoOp)
      instead of the whole model (VPT, IVLP).
    - ``TRAINABLE``: name fragments of the parameters left trainable (all others frozen).
    - ``LOSS_FROM_MODEL``: ``model(image, label)`` returns the loss in training mode (CoCoOp, IVLP);
      otherwise ``model(image)`` returns logits and the loss is their cross-entropy (CoOp, VPT).
    """

    PREC_NODE = ""
    MODEL_NAME = "prompt_learner"
    OPTIMIZE_PROMPT_LEARNER_ONLY = True
    TRAINABLE: Tuple[str, ...] = ("prompt_learner",)
    LOSS_FROM_MODEL = False

    @property
    def prec(self) -> str:
        return self.cfg.TRAINER[self.PREC_NODE].PREC

    def check_cfg(self, cfg):
        check_precision(cfg.TRAINER[self.PREC_NODE].PREC, key=f"TRAINER.{self.PREC_NODE}.PREC")

    def build_custom_clip(self, cfg, classnames: Sequence[str], clip_model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def build_model(self):
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        clip_model = apply_precision(load_clip_from_cfg(cfg), self.prec, self.device,
                                     key=f"TRAINER.{self.PREC_NODE}.PREC")
        print("Building custom CLIP")
        self.model = self.build_custom_clip(cfg, classnames, clip_model)
        print("Turning off gradients in both the image and the text encoder")
        for name, param in self.model.named_parameters():
            param.requires_grad_(any(part in name for part in self.TRAINABLE))
        enabled = sorted(name for name, param in self.model.named_parameters() if param.requires_grad)
        print(f"Parameters to be updated: {enabled}")
        learned = self.learned_module()
        if cfg.MODEL.INIT_WEIGHTS:
            load_pretrained_weights(learned, cfg.MODEL.INIT_WEIGHTS)
        self.model.to(self.device)
        self.optim = build_optimizer(learned, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model(self.MODEL_NAME, learned, self.optim, self.sched)
        self.scaler = torch.amp.GradScaler(torch.device(self.device).type) if self.prec == "amp" else None

    def learned_module(self) -> nn.Module:
        """The module that is registered, optimised and saved (``MODEL_NAME``): ``model.prompt_learner``
        or, without ``OPTIMIZE_PROMPT_LEARNER_ONLY``, the whole model."""
        return self.model.prompt_learner if self.OPTIMIZE_PROMPT_LEARNER_ONLY else self.model

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        with autocast_context(self.prec, self.device):
            if self.LOSS_FROM_MODEL:
                output, loss = None, self.model(image, label)
            else:
                output = self.model(image)
                loss = F.cross_entropy(output, label)
        self.step_on_loss(loss)
        loss_summary = {"loss": loss.item()}
        if output is not None:
            loss_summary["acc"] = compute_accuracy(output, label)[0].item()
        return loss_summary

    def step_on_loss(self, loss: Tensor) -> None:
        """Backward and optimizer step (through the GradScaler under ``amp``); the learning
        rate steps after the last batch of an epoch, as upstream."""
        backward_and_update(self, loss, self.scaler)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def _load_state_dict(self, name: str, state_dict: dict, path: str) -> None:
        """``load_model`` per model, as upstream: the class-dependent buffers (``token_prefix``,
        ``token_suffix``) are dropped so that a model trained on some classes evaluates on others
        (base -> new, cross-dataset); ``strict=False``."""
        kept = {key: value for key, value in state_dict.items() if key.split(".")[-1] not in CLASS_BUFFERS}
        self._models[name].load_state_dict(kept, strict=False)
