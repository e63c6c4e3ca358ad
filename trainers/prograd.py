"""ProGrad: Prompt-aligned Gradient (Zhu et al., "Prompt-aligned Gradient for Prompt Tuning", ICCV 2023).

CoOp's prompt learner, trained on the cross-entropy with its gradient *projected* so that it never
opposes the gradient of the distillation loss towards zero-shot CLIP (the "general knowledge"):
per parameter, with ``g`` the cross-entropy's gradient and ``d`` the distillation's,

    g' = g - λ (g · d̂) d̂   when g · d < 0   (d̂ = d / ‖d‖),   else g' = g,

and the optimizer steps along ``g'`` only (the distillation loss sets the direction, it adds
nothing). The distillation loss is upstream's ``ProGradLoss``: the cross-entropy of the student's
tempered softmax against zero-shot CLIP's, times ``T²``. λ = ``TRAINER.PROGRAD.LAMBDA`` (1.0) and
T = ``TRAINER.PROGRAD.T`` (1.0) are upstream's defaults (its ``LOSS.LAMBDA``, ``LOSS.T``).

Upstream (BeierZhu/Prompt-align ``ProGrad.public/trainers/prograd.py`` and the Dassl fork's
``prograd_backward_and_update``) backpropagates twice and rewrites ``p.grad``. Here the model's
training forward returns ``projected_gradient_loss``: a scalar whose value is the cross-entropy and
whose gradient is ``g'``, so the trainer's ordinary backward and step apply the rule, and so does any
loss that sums it with other terms (ProGradPD: the wrapper's generator losses do not reach the
prompt learner, so its gradient stays ``HOST_LOSS_WEIGHT x g'``).

Prompt learner: CoOp's (``TRAINER.COOP``: N_CTX, CSC, CLASS_TOKEN_POSITION, PREC), started as
upstream from the dataset's ProGrad template (``TRAINER.PROGRAD.TEMPLATE_INIT``): ``n_ctx`` slots,
the last ones the template's words, the others zero. The zero-shot teacher uses the same templates
(``PROGRAD_TEMPLATES``, upstream's own dictionary, which words some prompts differs from zero-shot
CLIP's) on the student's frozen CLIP; upstream loads a second CLIP in fp32 for it (same weights:
the same logits in fp32, fp16 rounding apart under ``PREC fp16``).
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prompt_diffusion.clip_prompting import encode_image, prompted_logits
from prompt_diffusion.engine import TRAINER_REGISTRY

from ._common import TextPromptedCLIP, init_text_context
from .coop import CoOp, PromptLearner
from .zsclip import CUSTOM_TEMPLATES, class_text_features, zeroshot_template

# upstream's templates: zero-shot CLIP's, six of them reworded
PROGRAD_TEMPLATES = {
    **CUSTOM_TEMPLATES,
    "OxfordPets": "a type of pet, a photo of a {}.",
    "OxfordFlowers": "a type of flower, a photo of a {}.",
    "FGVCAircraft": "a type of aircraft, a photo of a {}.",
    "DescribableTextures": "a texture of {}.",
    "Food101": "a type of food, a photo of {}.",
}


def prograd_template(dataset_name: str, dataset=None) -> str:
    """ProGrad's template of the dataset, else zero-shot CLIP's (``zeroshot_template``)."""
    return PROGRAD_TEMPLATES.get(dataset_name) or zeroshot_template(dataset_name, dataset)


def template_context(clip_model: nn.Module, template: str, n_ctx: int) -> Tuple[Tensor, str, int]:
    """Upstream's initial context from ``template`` (``"a photo of a {}."``): ``[n_ctx, D]`` zeros with
    the template words' token embeddings in the last slots (as many tokens as words, as upstream),
    the prompt prefix ``"X ... X <words>"`` and ``n_ctx``."""
    words = template.replace(" {}.", "").replace("_", " ")
    if "{}" in words:
        raise ValueError(f"ProGrad's template initialisation needs a template that ends in ' {{}}.', got "
                         f"{template!r}; set TRAINER.PROGRAD.TEMPLATE_INIT False for CoOp's initialisation")
    word_vectors, words, n_words = init_text_context(clip_model, words, n_ctx)
    if n_words > n_ctx:
        raise ValueError(f"TRAINER.COOP.N_CTX={n_ctx} is fewer than the {n_words} words of the template "
                         f"{template!r} that ProGrad starts the context from")
    ctx = torch.zeros(n_ctx, word_vectors.shape[-1], dtype=word_vectors.dtype)
    ctx[n_ctx - n_words:] = word_vectors
    return ctx, " ".join(["X"] * (n_ctx - n_words) + [words]), n_ctx


def prograd_loss_terms(logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float
                       ) -> Tuple[Tensor, Tensor]:
    """``(cross-entropy, distillation)`` of logits ``[B, K]``: the distillation is the cross-entropy
    of ``softmax(logits / T)`` against ``softmax(teacher_logits / T)``, times ``T²`` (upstream's
    ``ProGradLoss``; it differs from the KL divergence by the teacher's entropy, a constant)."""
    teacher = F.softmax(teacher_logits / temperature, dim=-1)
    distill = -(teacher * F.log_softmax(logits / temperature, dim=-1)).sum(1).mean() * temperature ** 2
    return F.cross_entropy(logits, labels), distill


def project_gradient(grad: Tensor, reference: Tensor, lam: float) -> Tensor:
    """ProGrad's rule for one parameter: ``grad - lam (grad · r̂) r̂`` when ``grad`` opposes ``reference``
    (negative dot product), else ``grad`` unchanged; a zero gradient on either side changes nothing."""
    if torch.dot(grad.flatten(), reference.flatten()) >= 0:
        return grad
    unit = reference / torch.linalg.norm(reference)
    return grad - lam * torch.dot(grad.flatten(), unit.flatten()) * unit


def projected_gradient_loss(loss: Tensor, reference_loss: Tensor, params: Sequence[Tensor], lam: float) -> Tensor:
    """A scalar equal to ``loss`` whose gradient with respect to each of ``params`` is ``loss``'s
    gradient projected by ``project_gradient`` against ``reference_loss``'s (both taken here, by
    ``torch.autograd.grad``; the graph is released)."""
    references = torch.autograd.grad(reference_loss, params, retain_graph=True, allow_unused=True)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    surrogate = loss.detach()
    for param, grad, reference in zip(params, grads, references):
        if grad is None:
            continue
        step = grad if reference is None else project_gradient(grad, reference, lam)
        linear = (param * step).sum()  # gradient: step
        surrogate = surrogate + (linear - linear.detach())
    return surrogate


class CustomCLIP(TextPromptedCLIP):
    """CoOp's ``CustomCLIP`` (its prompt learner, layout and logits) plus the zero-shot teacher's
    class features ``zs_text_features`` ``[K, E]`` (a buffer that is not saved), ``lam`` and ``temperature``.

    ``forward(image)`` gives the logits; while the prompt learner trains, ``forward(image, label)``
    gives ``projected_gradient_loss`` of the cross-entropy against the distillation loss.
    """

    def __init__(self, cfg, classnames: Sequence[str], clip_model: nn.Module, template: str):
        node = cfg.TRAINER.PROGRAD
        context = template_context(clip_model, template, cfg.TRAINER.COOP.N_CTX) if node.TEMPLATE_INIT else None
        super().__init__(PromptLearner(cfg, classnames, clip_model, context=context), clip_model, cfg.MODEL.TEXT_CHUNK)
        print(f"Zero-shot teacher's template: {template!r}")
        self.register_buffer("zs_text_features", class_text_features(clip_model, template, classnames,
                                                                     cfg.MODEL.TEXT_CHUNK), persistent=False)
        self.lam, self.temperature = float(node.LAMBDA), float(node.T)

    def forward(self, image: Tensor, label: Optional[Tensor] = None) -> Tensor:
        image_features = encode_image(self.image_encoder, image)  # [B, E], frozen
        text_features = self.text_encoder(self.prompt_learner(), self.tokenized_prompts)  # [K, E]
        logits = prompted_logits(image_features, text_features, self.logit_scale)
        if label is None or not self.prompt_learner.training:
            return logits
        with torch.no_grad():
            teacher_logits = prompted_logits(image_features, self.zs_text_features, self.logit_scale)
        loss, distill = prograd_loss_terms(logits, teacher_logits, label, self.temperature)
        learned = [p for p in self.prompt_learner.parameters() if p.requires_grad]
        return projected_gradient_loss(loss, distill, learned, self.lam)


@TRAINER_REGISTRY.register()
class ProGrad(CoOp):
    """Prompt-aligned Gradient (ProGrad). https://arxiv.org/abs/2205.14865"""

    LOSS_FROM_MODEL = True

    def build_custom_clip(self, cfg, classnames, clip_model):
        return CustomCLIP(cfg, classnames, clip_model, prograd_template(cfg.DATASET.NAME, self.dm.dataset))
