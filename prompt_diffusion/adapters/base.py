"""The one interface between prompt diffusion and a prompt learner: ``PromptAdapter``.

An adapter wraps the model a host trainer built (``trainer.model``, upstream ``CustomCLIP``) and
answers four questions for the diffusion wrapper:

- which learnable prompt tokens form ``V`` (``groups`` and ``base_prompts``), and the host's own
  prompt for each sample (``host_prompts``: the centre prompt diffusion models residuals from),
- the frozen CLIP image feature the condition ``π`` is computed from (``image_features``; the
  Meta-Net that maps it to ``π`` is the host's own when it has one, ``meta_net``),
- the logits of a batch under *per-sample* prompts (``logits``),
- the host method's own loss on the batch as the host trainer parsed it (``host_loss``), kept in
  the objective with ``HOST_LOSS_WEIGHT``.

Adapters find their parts by the upstream attribute names (``prompt_learner.ctx``,
``prompt_learner.meta_net``, ``text_encoder``, ``image_encoder``, ``logit_scale`` ...), so one
adapter serves this repository's trainers and the trainers of the upstream repositories. A model
without those names fails with a ``PromptLayoutError`` that names what is missing.

The helpers a new adapter needs are here too: ``images_and_labels`` (of a parsed batch),
``loss_of`` (a host forward's loss), ``text_chunk`` (``MODEL.TEXT_CHUNK``), ``class_tokens``.

Subclass, declare ``required_attributes`` (what layout detection looks for) and register:

    @register_adapter
    class MaPLeAdapter(PromptAdapter):
        required_attributes = ("prompt_learner.ctx", "prompt_learner.proj", ...)
        ...
"""
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Dict, List, NamedTuple, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prompt_diffusion.clip_prompting import encode_image

__all__ = [
    "DEFAULT_TEXT_CHUNK",
    "PromptGroup",
    "PromptLayoutError",
    "PromptAdapter",
    "ParsedBatch",
    "find_attribute",
    "has_attribute",
    "images_and_labels",
    "loss_of",
    "text_chunk",
    "class_tokens",
    "register_adapter",
    "registered_adapters",
    "adapter_by_name",
    "choose_adapter",
    "detect_adapter",
]


#: ``MODEL.TEXT_CHUNK``: text sequences encoded at once (0: all); adapters given no config use it too
#: (``config.extend_cfg`` sets the key's default from it)
DEFAULT_TEXT_CHUNK = 1024

#: a training batch as the host trainer's ``parse_batch_train`` returns it: ``(images, labels, ...)``
ParsedBatch = Tuple[Tensor, ...]


class PromptGroup(NamedTuple):
    """One group of diffused prompt tokens: ``(name, n_tokens, width)``, e.g. ``("text", 4, 512)``.

    A plain tuple, so a list of groups is what ``PromptDenoiser(groups=...)`` takes.
    """

    name: str
    n_tokens: int
    width: int


class PromptLayoutError(AttributeError):
    """The host model lacks an attribute an adapter needs (the message names it and the model class)."""


def find_attribute(root: Any, path: str, adapter: str) -> Any:
    """Resolve a dotted ``path`` (``"prompt_learner.ctx"``; integer parts index lists) on ``root``.

    Raises ``PromptLayoutError`` naming the missing part, the full path, the model class and the
    adapter that looked for it.
    """
    obj = root
    walked: List[str] = []
    for part in path.split("."):
        walked.append(part)
        if part.isdigit() and isinstance(obj, (nn.ModuleList, nn.ParameterList, list, tuple)):
            index = int(part)
            if index >= len(obj):
                obj = None
            else:
                obj = obj[index]
                continue
        elif hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        raise PromptLayoutError(
            f"{adapter}: the model ({type(root).__name__}) has no '{'.'.join(walked)}' "
            f"(looked up '{path}'); this adapter expects the upstream layout with {path!r}"
        )
    return obj


def has_attribute(root: Any, path: str) -> bool:
    """Whether the dotted ``path`` resolves on ``root``."""
    try:
        find_attribute(root, path, "probe")
    except PromptLayoutError:
        return False
    return True


def images_and_labels(batch: ParsedBatch, adapter: str) -> Tuple[Tensor, Tensor]:
    """The images ``[B, 3, H, W]`` and labels ``[B]`` of a parsed training batch: the first two
    entries of the tuple a host trainer's ``parse_batch_train`` returns.

    Raises ``TypeError`` naming ``adapter`` when ``batch`` is not a tuple or list of at least two
    entries (a bare image tensor would otherwise be sliced along the batch).
    """
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        got = f"a {type(batch).__name__}" if not isinstance(batch, (tuple, list)) else f"{len(batch)} entries"
        raise TypeError(
            f"{adapter}.host_loss takes the batch as the host trainer's parse_batch_train returned it, "
            f"a tuple (images, labels, ...); got {got}"
        )
    return batch[0], batch[1]


class PromptAdapter(ABC):
    """Gives the diffusion wrapper access to a host prompt learner's prompts and forward.

    Args:
        model: the host's model (``trainer.model``).
        cfg: the trainer's config (adapters read e.g. ``MODEL.TEXT_CHUNK`` from it); may be ``None``.

    Shapes: ``B`` images, ``K`` classes; prompts are dicts ``{group name: tensor}``. Prompts given
    to ``logits`` are per sample (``[B, n_tokens, width]``), in fp32 or the model's dtype; adapters
    cast them to the model's dtype.
    """

    #: name used in messages and in ``TRAINER.PD.ADAPTER``; set by ``register_adapter``
    name: ClassVar[str] = ""
    #: dotted attribute paths that identify the layout (used by ``detect_adapter``)
    required_attributes: ClassVar[Tuple[str, ...]] = ()
    #: whether ``host_loss`` is the cross-entropy of ``logits(images, host_prompts(features))`` with
    #: the labels, in value and in gradient (CoOp, CoCoOp, VPT, IVLP, MaPLe; not a method whose loss
    #: adds terms, PromptSRC, CoPrompt, or reshapes its gradient, ProGrad). The wrapper then computes
    #: the host's loss through ``logits`` and takes each sample's first overfitting step from that
    #: pass, after checking the two agree on the first batch. A subclass that changes the loss says False
    host_loss_is_prompt_ce: ClassVar[bool] = False

    def __init__(self, model: nn.Module, cfg: Any = None):
        self.model = model
        self.cfg = cfg
        missing = [p for p in self.required_attributes if not has_attribute(model, p)]
        if missing:
            raise PromptLayoutError(
                f"{type(self).__name__}: the model ({type(model).__name__}) lacks {missing}; "
                f"this adapter needs {list(self.required_attributes)} (the upstream attribute names)"
            )

    def find(self, path: str) -> Any:
        """``find_attribute(self.model, path)`` with this adapter's name in the error."""
        return find_attribute(self.model, path, type(self).__name__)

    # ------------------------------------------------------------------ what V is
    @property
    @abstractmethod
    def groups(self) -> List[PromptGroup]:
        """The diffused token groups, in a fixed order (the denoiser's layout)."""

    @abstractmethod
    def base_prompts(self) -> Dict[str, Tensor]:
        """The host's shared learned prompts, ``{group: [n_tokens, width]}``, still attached to
        their parameters (the wrapper detaches them before overfitting)."""

    def host_prompts(self, image_features: Tensor) -> Dict[str, Tensor]:
        """The prompts the host itself uses for each image, ``{group: [B, n_tokens, width]}``,
        attached to the host's parameters: the shared prompts for every image (default), or the
        host's per-image prompt (CoCoOp: ``ctx + meta_net(feature)``).

        ``logits(images, host_prompts(features))`` are the host's own logits: prompt diffusion
        starts its per-sample overfitting here and models the residual from here, so a zero
        residual is the host exactly.
        """
        batch = image_features.shape[0]
        return {name: prompt.unsqueeze(0).expand(batch, -1, -1) for name, prompt in self.base_prompts().items()}

    # ------------------------------------------------------------------ what π is made from
    @property
    @abstractmethod
    def feature_dim(self) -> int:
        """Width of ``image_features`` (CLIP's embedding width)."""

    def image_features(self, images: Tensor) -> Tensor:
        """The frozen CLIP image feature, L2-normalised, without any prompt: ``[B, feature_dim]``:
        the host's ``image_encoder`` run without prompts (every upstream layout has one).

        Computed once per batch under ``torch.no_grad``; ``logits`` reuses it when the image side
        carries no prompts (CoOp, CoCoOp)."""
        with torch.no_grad():
            features = encode_image(self.find("image_encoder"), images)  # [B, E], no prompts
        return features / features.norm(dim=-1, keepdim=True)

    # ------------------------------------------------------------------ the forward
    @abstractmethod
    def logits(self, images: Tensor, prompts: Dict[str, Tensor], image_features: Optional[Tensor] = None) -> Tensor:
        """Logits ``[B, K]`` of ``images`` under per-sample ``prompts`` (``[B, n_tokens, width]`` each).

        Sample ``b``'s logits depend only on ``prompts[g][b]`` and image ``b`` (so a summed loss
        gives per-sample gradients). ``image_features`` is the output of ``image_features(images)``
        when the caller has it.
        """

    def view_logits(self, views: Tensor, prompts: Dict[str, Tensor]) -> Tensor:
        """Logits ``[B, N, K]`` of N views of each of B images ``[B, N, 3, H, W]``, every view under its
        image's prompt (``[B, n_tokens, width]`` per group): test-time adaptation's views (TPT, Zero).
        Default: each view a sample of its own, its image's prompt repeated; an adapter whose image
        side carries no prompt encodes each prompt's class texts once instead (``TextContextAdapter``)."""
        batch, n_views = views.shape[:2]
        repeated = {name: prompt.repeat_interleave(n_views, dim=0) for name, prompt in prompts.items()}  # [B*N, n, w]
        return self.logits(views.flatten(0, 1), repeated).view(batch, n_views, -1)

    def host_loss(self, batch: ParsedBatch) -> Optional[Tensor]:
        """The host method's own training loss on the batch (its shared prompts), or ``None``.

        ``batch`` is exactly what the host trainer's ``parse_batch_train(batch)`` returned: a tuple
        whose first two entries are the images and labels (``images_and_labels``); a method that
        trains on more (CoPrompt's second augmented view, third entry) finds it there.

        This keeps the shared prompts (the overfitting start) and any regulariser of the method
        (PromptSRC, CoPrompt) in training.
        """
        return None

    # ------------------------------------------------------------------ helpers for subclasses
    def check_prompts(self, prompts: Dict[str, Tensor], batch_size: int) -> None:
        """Raise ``ValueError`` unless ``prompts`` holds every group as ``[batch_size, n_tokens, width]``."""
        for group in self.groups:
            if group.name not in prompts:
                raise ValueError(f"{type(self).__name__}: prompts lack group {group.name!r} (have {sorted(prompts)})")
            shape = tuple(prompts[group.name].shape)
            if shape != (batch_size, group.n_tokens, group.width):
                raise ValueError(
                    f"{type(self).__name__}: prompts[{group.name!r}] has shape {shape}, "
                    f"expected {(batch_size, group.n_tokens, group.width)}"
                )


# ---------------------------------------------------------------------- helpers for adapters
def loss_of(output: Tensor, labels: Tensor) -> Tensor:
    """A host forward's training loss: the output itself when it is a scalar (CoCoOp, IVLP return
    their loss in training mode), else the cross-entropy of the logits ``[B, K]``."""
    return output if output.dim() == 0 else F.cross_entropy(output, labels)


def text_chunk(cfg) -> int:
    """``MODEL.TEXT_CHUNK`` (0: encode all sequences at once); its default when the config has none."""
    if cfg is not None and "MODEL" in cfg and "TEXT_CHUNK" in cfg.MODEL:
        return int(cfg.MODEL.TEXT_CHUNK)
    return DEFAULT_TEXT_CHUNK


def class_tokens(adapter: PromptAdapter) -> Tensor:
    """The class prompts' token ids ``[K, L]``: ``tokenized_prompts`` of the model (upstream
    ``CustomCLIP``) or of its ``prompt_learner``."""
    if hasattr(adapter.model, "tokenized_prompts"):
        return adapter.model.tokenized_prompts
    return adapter.find("prompt_learner.tokenized_prompts")


# ---------------------------------------------------------------------- lookup
_ADAPTERS: Dict[str, Type[PromptAdapter]] = {}


def register_adapter(cls: Type[PromptAdapter]) -> Type[PromptAdapter]:
    """Class decorator: register an adapter under its class name minus ``Adapter`` (the name
    ``TRAINER.PD.ADAPTER`` takes), among the candidates of layout detection."""
    name = cls.__name__[: -len("Adapter")] if cls.__name__.endswith("Adapter") else cls.__name__
    if name in _ADAPTERS and _ADAPTERS[name] is not cls:
        raise KeyError(f"an adapter named {name!r} is already registered ({_ADAPTERS[name].__qualname__})")
    cls.name = name
    _ADAPTERS[name] = cls
    return cls


def registered_adapters() -> List[str]:
    """Names of the registered adapters (the allowed values of ``TRAINER.PD.ADAPTER`` besides ``auto``)."""
    return sorted(_ADAPTERS)


def adapter_by_name(name: str) -> Type[PromptAdapter]:
    """The adapter registered as ``name``; ``KeyError`` listing the registered ones otherwise."""
    if name not in _ADAPTERS:
        raise KeyError(f"unknown prompt adapter {name!r}; registered: {registered_adapters()}")
    return _ADAPTERS[name]


def choose_adapter(given: Optional[Type[PromptAdapter]], configured: str, model: nn.Module) -> Type[PromptAdapter]:
    """The one rule for a host's adapter: the one ``given`` in code (``DiffusionPromptWrapper.register(Host,
    adapter=...)``), else the one ``configured`` by name (``TRAINER.PD.ADAPTER``, the command line's way),
    else the one whose layout fits ``model`` (``detect_adapter``). Code and config naming two different
    adapters is an error, not an override."""
    if given is not None and configured not in ("auto", given.name):
        raise ValueError(f"TRAINER.PD.ADAPTER = {configured!r}, but the trainer was registered with the "
                         f"{given.name} adapter (DiffusionPromptWrapper.register(..., adapter={given.__name__})): "
                         "set one of them")
    if given is not None:
        return given
    return adapter_by_name(configured) if configured != "auto" else detect_adapter(model)


def detect_adapter(model: nn.Module) -> Type[PromptAdapter]:
    """The adapter whose ``required_attributes`` all resolve on ``model``. When several fit, the
    most specific wins: the one whose attributes include every other fitting one's (CoCoOp's
    include CoOp's). ``PromptLayoutError`` lists what each adapter missed when none fits, or the
    candidates when no single one is the most specific."""
    fitting = [cls for cls in _ADAPTERS.values() if all(has_attribute(model, p) for p in cls.required_attributes)]
    most_specific = [cls for cls in fitting
                     if all(set(other.required_attributes) <= set(cls.required_attributes) for other in fitting)]
    if len(most_specific) == 1:
        return most_specific[0]
    if fitting:
        raise PromptLayoutError(
            f"several prompt adapters fit the model ({type(model).__name__}) and none is the most specific: "
            f"{sorted(cls.name for cls in fitting)}; set TRAINER.PD.ADAPTER to one of them"
        )
    report = "; ".join(
        f"{name}: missing {[p for p in cls.required_attributes if not has_attribute(model, p)]}"
        for name, cls in sorted(_ADAPTERS.items())
    )
    raise PromptLayoutError(
        f"no prompt adapter fits the model ({type(model).__name__}): {report}. "
        "Set TRAINER.PD.ADAPTER or write a PromptAdapter for this layout"
    )

