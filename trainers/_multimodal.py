"""What the multi-modal trainers (MaPLe, PromptSRC, CoPrompt) share: a training step over named
loss terms, and frozen CLIP text features of many texts (PromptSRC's template ensemble, CoPrompt's
class descriptions).
"""
from typing import Dict, Optional, Sequence

import clip
import torch
from torch import Tensor, nn
from tqdm import tqdm

from prompt_diffusion.clip_prompting import encode_prompted_text, split_prompt_embeddings

from ._common import PromptedCLIPTrainer, autocast_context


def frozen_text_features(clip_model: nn.Module, texts: Sequence[str], chunk_size: int = 1024,
                         device: Optional[torch.device] = None, desc: str = "frozen text features") -> Tensor:
    """CLIP's own text features ``[N, E]`` (not normalised) of ``texts``, without gradient.

    Encoded ``chunk_size`` texts at a time with exact EOT truncation (a progress bar over chunks),
    on ``device`` when given (the model goes there for the encoding and back afterwards; the result
    lies where the model was). A text longer than CLIP's context is an error (``clip.tokenize``).
    """
    home = clip_model.ln_final.weight.device
    work = torch.device(device) if device is not None else home
    clip_model.to(work)
    tokenized = clip.tokenize(list(texts), context_length=clip_model.context_length)  # [N, L]
    step = chunk_size if chunk_size > 0 else len(texts)
    no_prompt = torch.zeros(0, clip_model.ln_final.weight.shape[0], dtype=clip_model.dtype, device=work)
    features = []
    with torch.no_grad():
        for start in tqdm(range(0, len(texts), step), desc=desc, leave=False, disable=True if len(texts) <= step else None):
            tokens = tokenized[start:start + step].to(work)
            prefix, suffix = split_prompt_embeddings(clip_model.token_embedding, tokens, 0, clip_model.dtype)
            features.append(encode_prompted_text(clip_model, prefix, suffix, tokens, no_prompt))
    clip_model.to(home)
    return torch.cat(features).to(home)


class MultiModalTrainer(PromptedCLIPTrainer):
    """The CoOp-family skeleton with a training step over named loss terms.

    Subclasses implement ``loss_terms(batch)``: the weighted terms whose sum is the loss. Each term
    is logged on its own (``loss_ce``, ``loss_scl_text`` ...) next to the total ``loss``. As
    upstream, the whole ``CustomCLIP`` is the registered model and the optimizer sees it all (only
    the trainable prompts receive gradients).
    """

    OPTIMIZE_PROMPT_LEARNER_ONLY = False

    def loss_terms(self, batch: dict) -> Dict[str, Tensor]:
        raise NotImplementedError

    def forward_backward(self, batch: dict) -> Dict[str, float]:
        with autocast_context(self.prec, self.device):
            terms = self.loss_terms(batch)
            loss = sum(terms.values())
        self.step_on_loss(loss)
        summary = {name: value.item() for name, value in terms.items()}
        summary["loss"] = loss.item()
        return summary
