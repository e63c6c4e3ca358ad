"""Config keys the project adds to Dassl's defaults.

``extend_cfg(cfg)`` adds every key the project's trainers, datasets and the prompt-diffusion
wrapper read. Each family of keys has its own ``_add_*`` function below; ``extend_cfg`` calls them
all. Adding a key that already exists is a no-op, so a user's own ``extend_cfg`` can run first.

Dependencies point one way: config reads the defaults and choices that live with the code that
interprets them (the adapters' ``DEFAULT_TEXT_CHUNK``, ``DEFAULT_DEEP_TOKENS`` and ``DEEP_TOKENS``;
the samplers, schedules and generators), and nothing it imports imports config. Those imports sit
inside the functions, so ``import prompt_diffusion.config`` needs yacs only.
"""
from typing import Callable, Sequence

from yacs.config import CfgNode as CN


def _set_default(node: CN, key: str, value) -> None:
    """Set ``node.key = value`` unless the key exists (keeps a user's own extension)."""
    if key not in node:
        node[key] = value


def _set_defaults(node: CN, name: str, values: dict) -> None:
    """Give ``node`` a child node ``name`` (unless it exists) and set its ``values`` unless present."""
    _set_default(node, name, CN())
    for key, value in values.items():
        _set_default(node[name], key, value)


def _add_trainer_keys(cfg: CN) -> None:
    """Keys of the reference trainers (CoOp, CoCoOp, VPT, IVLP, CLIP-Adapter, ProGrad, ZeroshotCLIP) and the backbone.

    Defaults as upstream ``train.py`` ``extend_cfg`` (CoOp repo and multimodal-prompt-learning);
    ``MODEL.BACKBONE.PATH`` (local CLIP file; empty: ``~/.cache/clip/<file>``) and
    ``MODEL.TEXT_CHUNK`` (text sequences encoded at once; 0: all) are the project's.
    """
    from prompt_diffusion.adapters.base import DEFAULT_TEXT_CHUNK

    _set_default(cfg.MODEL.BACKBONE, "PATH", "")
    _set_default(cfg.MODEL, "TEXT_CHUNK", DEFAULT_TEXT_CHUNK)
    trainer_keys = {
        "COOP": {"N_CTX": 16, "CSC": False, "CTX_INIT": "", "PREC": "fp16", "CLASS_TOKEN_POSITION": "end"},
        "COCOOP": {"N_CTX": 16, "CTX_INIT": "", "PREC": "fp16"},
        # the project's TemplateCoOp: CoOp's context before each template of a bank (TEMPLATES as
        # TRAINER.ZEROSHOT.TEMPLATES: "" the dataset's, "imagenet", or a file), scored jointly per image
        "TEMPLATE_COOP": {"N_CTX": 4, "CTX_INIT": "", "TEMPLATES": "imagenet", "PREC": "fp16"},
        "IVLP": {"N_CTX_VISION": 2, "N_CTX_TEXT": 2, "CTX_INIT": "a photo of a", "PREC": "fp16",
                 "PROMPT_DEPTH_VISION": 9, "PROMPT_DEPTH_TEXT": 9},
        "VPT": {"N_CTX_VISION": 2, "CTX_INIT": "a photo of a", "PREC": "fp16", "PROMPT_DEPTH_VISION": 1},
        # CLIP-Adapter (gaopengcuhk/CLIP-Adapter hard-codes these: reduction 4, ratio 0.2, CLIP in fp32)
        "CLIP_ADAPTER": {"REDUCTION": 4, "RATIO": 0.2, "PREC": "fp32"},
        # ProGrad's own keys (upstream LOSS.LAMBDA, LOSS.T; its prompt learner reads TRAINER.COOP);
        # TEMPLATE_INIT: the context starts as the dataset's template words (upstream CTX_INIT True)
        "PROGRAD": {"LAMBDA": 1.0, "T": 1.0, "TEMPLATE_INIT": True},
        # ZeroshotCLIP's templates: "" the dataset's one | "imagenet" (CLIP's ImageNet templates) | a file, one
        # per line; COMBINE: ensemble (mean text feature) | weighted | select (per image, label-free)
        "ZEROSHOT": {"TEMPLATES": "", "COMBINE": "ensemble"},
    }
    for name, keys in trainer_keys.items():
        _set_defaults(cfg.TRAINER, name, keys)


def _add_dataset_keys(cfg: CN) -> None:
    """Keys of the benchmark datasets (``prompt_diffusion.data``), as CoOp's ``extend_cfg`` adds."""
    if "DATASET" not in cfg:
        cfg.DATASET = CN()
    # all | base | new: base = first ceil(K/2) sorted labels, new = the rest, relabelled from 0
    _set_default(cfg.DATASET, "SUBSAMPLE_CLASSES", "all")
    # where shot_<N>-seed_<S>.json few-shot caches go; "" = <dataset dir>/split_fewshot
    _set_default(cfg.DATASET, "FEWSHOT_CACHE_DIR", "")
    # a class with fewer images than NUM_SHOTS: False = error naming it, True = keep all (Dassl)
    _set_default(cfg.DATASET, "FEWSHOT_ALLOW_FEWER", False)


def _add_multimodal_trainer_keys(cfg: CN) -> None:
    """Keys of the multi-modal trainers MaPLe, PromptSRC and CoPrompt.

    Defaults as upstream (multimodal-prompt-learning, PromptSRC and CoPrompt ``train.py``; the
    types match their config files, so those merge unchanged). CoPrompt's own keys:
    ``DESCRIPTIONS_DIR`` (folder of its ``<dataset>_prompt.json`` description files) and
    ``DATASET_OVERRIDES`` (which per-dataset settings of upstream's table are applied).
    """
    trainer_keys = {
        "MAPLE": {"N_CTX": 2, "CTX_INIT": "a photo of a", "PREC": "fp16", "PROMPT_DEPTH": 9},
        "PROMPTSRC": {"N_CTX_VISION": 4, "N_CTX_TEXT": 4, "CTX_INIT": "a photo of a", "PREC": "fp16",
                      "PROMPT_DEPTH_VISION": 9, "PROMPT_DEPTH_TEXT": 9, "TEXT_LOSS_WEIGHT": 25,
                      "IMAGE_LOSS_WEIGHT": 10, "GPA_MEAN": 15, "GPA_STD": 1},
        "CoPrompt": {"N_CTX": 2, "CTX_INIT": "a photo of a", "PREC": "fp16", "PROMPT_DEPTH": 9,
                     "DESCRIPTIONS_DIR": "",
                     "DATASET_OVERRIDES": ["TRAINER.CoPrompt.PROMPT_DEPTH", "TRAINER.CoPrompt.N_CTX",
                                           "TRAINER.W", "OPTIM.MAX_EPOCH"]},
    }
    for name, keys in trainer_keys.items():
        _set_defaults(cfg.TRAINER, name, keys)
    _set_default(cfg.TRAINER, "W", 8.0)  # CoPrompt's consistency-loss weight (upstream key)
    _set_default(cfg.TRAINER, "DISTILL", "cosine")  # CoPrompt's consistency loss: cosine | mse


#: old ``TRAINER.PD`` keys: a config or command line that sets one stops with a line naming its new
#: key, or saying why it went (yacs checks the root node's renamed keys on every merge)
RENAMED_PD_KEYS = {  # (a node that went is named too: a config file merges it as a whole)
    "TRAINER.PD.DENOISER": "TRAINER.PD.GENERATOR_SIZE",
    "TRAINER.PD.DENOISER.LAYERS": "TRAINER.PD.GENERATOR_SIZE.LAYERS",
    "TRAINER.PD.DENOISER.HEADS": "TRAINER.PD.GENERATOR_SIZE.HEADS",
    "TRAINER.PD.DENOISER.WIDTH": "TRAINER.PD.GENERATOR_SIZE.WIDTH",
    "TRAINER.PD.DIFFUSION_DRAWS": "TRAINER.PD.LOSS_DRAWS",
    "TRAINER.PD.OVERFIT.REMOVE_CLASS_MEAN": "TRAINER.PD.RESEARCH.REMOVE_CLASS_MEAN",
    "TRAINER.PD.VAE": "TRAINER.PD.RESEARCH.VAE_KL_WEIGHT",
    "TRAINER.PD.VAE.KL_WEIGHT": "TRAINER.PD.RESEARCH.VAE_KL_WEIGHT",
}
_GONE = "no key: it was removed"
REMOVED_PD_KEYS = {
    "TRAINER.PD.NOISE_SCALE": "the inference noise is standard normal (another temperature was measured not to help)",
    "TRAINER.PD.OVERFIT.LABEL_WEIGHT": "a label-free target is not mixed with the label CE any more",
    "TRAINER.PD.AMED.TEACHER": "AMED's teacher is dpmpp_2m (diffusion.amed.distill_amed, as upstream AMED)",
    "TRAINER.PD.AMED.INSERTED": "AMED's teacher inserts 4 points per step (diffusion.amed.distill_amed)",
    "TRAINER.PD.AMED.BATCH": "AMED is distilled on batches of 32 conditions (after_training.AMED_BATCH)",
    "TRAINER.PD.AMED.LR": "AMED is distilled with Adam at 5e-3 (diffusion.amed.distill_amed, as upstream AMED)",
}


def add_pd_keys(cfg: CN) -> None:
    """``TRAINER.PD``: the prompt-diffusion method (paper §4-5 defaults, but for the overfitting: one
    step of 5 x 0.005 for the paper's I = 5, see ``OVERFIT``); checked by ``validate_pd_cfg``.
    ``configs/profiles/pd_paper.yaml`` states the paper's settings, ``toy_pd.yaml`` the toy tables';
    ``RESEARCH`` holds the knobs no shipped config sets (each measured in docs/)."""
    from prompt_diffusion.adapters.deep import DEFAULT_DEEP_TOKENS

    for old, new in [*RENAMED_PD_KEYS.items(), *((key, (_GONE, why)) for key, why in REMOVED_PD_KEYS.items())]:
        if not cfg.key_is_renamed(old):
            cfg.register_renamed_key(old, *((new,) if isinstance(new, str) else new))
    _set_defaults(cfg.TRAINER, "PD", {
        "ENABLE": True,  # False: the wrapped trainer behaves exactly as its host
        # what generates the residual from π: diffusion (the method) | mlp | transformer (regressors)
        # | gan | vae | flow (the paper's Table 4); sized by GENERATOR_SIZE (prompt_diffusion.generators)
        "GENERATOR": "diffusion",
        # the command line's way to name the PromptAdapter of a trainer registered without one
        # (DiffusionPromptWrapper.register(Host, adapter=...)); auto: that adapter, else the model's layout
        "ADAPTER": "auto",
        "STEPS": 100,  # T, discrete diffusion steps (paper §5.1)
        "SCHEDULE": "scaled_linear",  # scaled_linear | cosine | linear
        "SAMPLER": "amed",  # amed (falls back to dpmpp_2m until distilled) | dpmpp_2m | dpm_solver_2 | ddim | ddpm
        "NFE": 5,  # denoiser calls per sampled prompt (paper Fig. 4)
        "BETA": 1.0,  # weight of the generator's loss (paper Eq. 8)
        "CE_WEIGHT": 1.0,  # weight of the CE with the generated prompt (Eq. 8)
        # weight of the host method's own loss; 0: the CE of Eq. 8 trains the host's prompts instead
        # (through V_h; with a host loss on, that CE trains the generator only)
        "HOST_LOSS_WEIGHT": 1.0,
        # draws of the generator loss's randomness per sample in a step (diffusion: (t, noise); the CE uses the first)
        "LOSS_DRAWS": 1,
        "COND": "meta_net",  # meta_net: a Meta-Net of the frozen CLIP image feature | image_feature: the feature itself
        # deep prompts (VPT, IVLP, PromptSRC, MaPLe, CoPrompt): a generator token per prompted layer | per
        # prompt vector (the paper is silent: chosen by measurement, DEFAULT_DEEP_TOKENS)
        "DEEP_TOKENS": DEFAULT_DEEP_TOKENS,
        "TEST_SAMPLES": 1,  # Monte-Carlo prompts per test image; logits averaged
        "NOISE_SEED": 0,  # an image's inference noise is seeded by (NOISE_SEED, its dataset index, the draw)
        "DIAGNOSE_IMAGES": 128,  # held-out (val) images checked after every epoch, in the log; 0: off
        # after training, scale generated residuals by their least-squares fit to overfitted ones on
        # held-out (val) images (0: the generator learned nothing useful -> the host's prompt); False: raw
        "CALIBRATE": True,
        # what a test image's prompt is: generate (the generator's sample, the method) | the per-image
        # references, each from the host's prompt V_h, reset per image, the generator unused: tune
        # (OVERFIT.ITERS steps of the label-free OVERFIT.TARGET) | tpt (TPT: VIEWS views, the confident
        # tenth, one AdamW step of 5e-3 on their averaged entropy) | zero (Zero: the vote of the views)
        "INFERENCE": "generate",
        "VIEWS": 64,  # tpt / zero: views per test image, the image itself included (TPT's 64)
    })
    pd = cfg.TRAINER.PD
    _set_defaults(pd, "OVERFIT", {
        # I and the step size of the per-sample gradient steps (the paper: I = 5, Fig. 5; no step size).
        # One sign step of 5 x 0.005 by default: the host's pass gives its gradient, so the overfitting
        # costs no pass of its own, and its V* is the paper's I = 5 steps of 0.005 where no sign flips
        # between steps (cosine 0.94 on the toy world; docs/cost.md). ITERS 5 LR 0.005: the paper's I
        "ITERS": 1,
        "LR": 0.025,
        "STEP_RULE": "sign",  # sign: V - lr * sign(grad) | sgd: V - lr * grad
        "MODE": "online",  # online: every step | cached: per-sample V* reused between refreshes
        "REFRESH": 5,  # cached mode: epochs between recomputations of a sample's V*
        # what each sample's prompt is overfitted to (diffusion.overfit.target_objective): label (the
        # paper: CE with the true label) | entropy (the prediction's entropy, TPT's) | agreement (minus the
        # log-sum-exp of the logits over all classes: class-agnostic). Label-free targets need no label
        "TARGET": "label",
    })
    # GPT-2 style (paper §5.1): the generator network's size, for every GENERATOR (generator_config)
    _set_defaults(pd, "GENERATOR_SIZE", {"LAYERS": 12, "HEADS": 16, "WIDTH": 512})
    _set_defaults(pd, "AMED", {
        "DISTILL_ITERS": 200,  # predictor training batches after the main training (0: no AMED)
        # the NFEs a predictor is distilled for after training (each fixes its σ grid); [] = [NFE].
        # An evaluation at another NFE (Figure 4) needs it listed here when the model is trained
        "NFES": [],
    })
    # knobs of measured studies that no shipped config sets (docs/toy_mixed.md, docs/generators.md)
    _set_defaults(pd, "RESEARCH", {
        # True: the generator learns V* − V_h minus the running mean of its class's residuals (what varies
        # within a class; diffusion.overfit.remove_class_means). Training only: inference is unchanged
        "REMOVE_CLASS_MEAN": False,
        "VAE_KL_WEIGHT": 1.0,  # GENERATOR vae: weight of the KL term of its ELBO (per coordinate)
    })


# choices the wrapper itself interprets; the others are read from where they are implemented
_PD_CHOICES = {
    "OVERFIT.MODE": ("online", "cached"),
    "INFERENCE": ("generate", "tune", "tpt", "zero"),
    "COND": ("meta_net", "image_feature"),
}


def _pd_value(pd: CN, key: str):
    node = pd
    for part in key.split("."):
        node = node[part]
    return node


def validate_pd_cfg(cfg: CN) -> None:
    """Reject unknown or out-of-range ``TRAINER.PD`` values: ``ValueError`` naming the key and what is allowed."""
    from prompt_diffusion.adapters import registered_adapters
    from prompt_diffusion.adapters.deep import DEEP_TOKENS
    from prompt_diffusion.diffusion.overfit import OVERFIT_TARGETS, STEP_RULES
    from prompt_diffusion.diffusion.samplers import SAMPLERS
    from prompt_diffusion.diffusion.schedule import SCHEDULE_KINDS
    from prompt_diffusion.generator_registry import GENERATORS

    pd = cfg.TRAINER.PD
    choices = dict(_PD_CHOICES)
    choices["DEEP_TOKENS"] = DEEP_TOKENS
    choices["SAMPLER"] = tuple(SAMPLERS)
    choices["SCHEDULE"] = tuple(SCHEDULE_KINDS)
    choices["ADAPTER"] = ("auto", *registered_adapters())
    choices["OVERFIT.STEP_RULE"] = tuple(STEP_RULES)
    choices["OVERFIT.TARGET"] = OVERFIT_TARGETS
    choices["GENERATOR"] = tuple(GENERATORS)
    for key, allowed in choices.items():
        value = _pd_value(pd, key)
        if value not in allowed:
            raise ValueError(f"TRAINER.PD.{key} = {value!r} is not allowed; choose one of {list(allowed)}")
    minimum = {  # key: smallest allowed value (integers unless the default is a float)
        "STEPS": 2, "NFE": 1, "TEST_SAMPLES": 1, "LOSS_DRAWS": 1, "OVERFIT.ITERS": 0, "OVERFIT.REFRESH": 1,
        "GENERATOR_SIZE.LAYERS": 1, "GENERATOR_SIZE.HEADS": 1, "GENERATOR_SIZE.WIDTH": 1,
        "AMED.DISTILL_ITERS": 0, "DIAGNOSE_IMAGES": 0, "VIEWS": 1,
        "BETA": 0.0, "CE_WEIGHT": 0.0, "HOST_LOSS_WEIGHT": 0.0, "RESEARCH.VAE_KL_WEIGHT": 0.0,
    }
    for key, low in minimum.items():
        value = _pd_value(pd, key)
        kind = "an integer" if isinstance(low, int) else "a number"
        wrong_type = not isinstance(value, (int, float)) or (isinstance(low, int) and not isinstance(value, int))
        if isinstance(value, bool) or wrong_type:
            raise ValueError(f"TRAINER.PD.{key} = {value!r} must be {kind} >= {low}")
        if value < low:
            raise ValueError(f"TRAINER.PD.{key} = {value!r} is out of range; allowed: {kind} >= {low}")
    value = pd.OVERFIT.LR
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"TRAINER.PD.OVERFIT.LR = {value!r} is out of range; allowed: a number > 0")
    if pd.NFE > pd.STEPS:
        raise ValueError(f"TRAINER.PD.NFE = {pd.NFE} is out of range; "
                         f"allowed: 1 <= NFE <= TRAINER.PD.STEPS ({pd.STEPS})")
    nfes = pd.AMED.NFES
    if any(isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= pd.STEPS for n in nfes) \
            or len(set(nfes)) != len(nfes):
        raise ValueError(f"TRAINER.PD.AMED.NFES = {list(nfes)!r}: allowed: distinct integers in "
                         f"1..TRAINER.PD.STEPS ({pd.STEPS})")
    if pd.SAMPLER == "amed" and nfes and pd.NFE not in nfes:
        raise ValueError(f"TRAINER.PD.NFE = {pd.NFE} has no AMED predictor: TRAINER.PD.AMED.NFES = {list(nfes)} "
                         "lists the NFEs predictors are distilled for (add it there, before training)")
    size = pd.GENERATOR_SIZE
    if size.WIDTH % size.HEADS:
        raise ValueError(f"TRAINER.PD.GENERATOR_SIZE.WIDTH = {size.WIDTH} must be divisible by "
                         f"TRAINER.PD.GENERATOR_SIZE.HEADS = {size.HEADS}")
    if pd.INFERENCE == "tune" and pd.OVERFIT.TARGET == "label":
        raise ValueError("TRAINER.PD.INFERENCE 'tune' tunes each test image without its label: it needs a label-free "
                         "TRAINER.PD.OVERFIT.TARGET (entropy or agreement), got 'label'")
    if pd.INFERENCE in ("tpt", "zero"):
        from prompt_diffusion.test_time import TPT_KEEP, ZERO_KEEP, kept_view_count

        try:
            kept_view_count(pd.VIEWS, TPT_KEEP if pd.INFERENCE == "tpt" else ZERO_KEEP)
        except ValueError as error:
            raise ValueError(f"TRAINER.PD.VIEWS = {pd.VIEWS} is too few for INFERENCE {pd.INFERENCE}: {error}") from None
    for key, value in (("ENABLE", pd.ENABLE), ("CALIBRATE", pd.CALIBRATE),
                       ("RESEARCH.REMOVE_CLASS_MEAN", pd.RESEARCH.REMOVE_CLASS_MEAN)):
        if not isinstance(value, bool):
            raise ValueError(f"TRAINER.PD.{key} = {value!r} must be True or False")


def pd_config(*opts) -> CN:
    """The ``TRAINER.PD`` settings outside a trainer (a plain PyTorch loop): the defaults, then
    ``opts`` as ``KEY VALUE`` pairs relative to ``TRAINER.PD`` (``"OVERFIT.TARGET", "agreement"``),
    checked by ``validate_pd_cfg``; frozen."""
    if len(opts) % 2:
        raise ValueError(f"pd_config takes KEY VALUE pairs, got an odd number of arguments: {list(opts)}")
    cfg = CN({"TRAINER": CN()})
    add_pd_keys(cfg)
    cfg.merge_from_list([f"TRAINER.PD.{item}" if i % 2 == 0 else item for i, item in enumerate(opts)])
    validate_pd_cfg(cfg)
    cfg.freeze()
    return cfg.TRAINER.PD


def _add_toy_dataset_keys(cfg: CN) -> None:
    """Keys of the toy-world datasets (``prompt_diffusion.data.toy_datasets``)."""
    if "DATASET" not in cfg:
        cfg.DATASET = CN()
    # test images per class of every toy dataset (rendered once under DATASET.ROOT)
    _set_defaults(cfg.DATASET, "TOY", {"TEST_PER_CLASS": 50})


EXTENDERS = (_add_trainer_keys, _add_dataset_keys, _add_multimodal_trainer_keys, add_pd_keys, _add_toy_dataset_keys)


def extend_cfg(cfg: CN, extenders: Sequence[Callable[[CN], None]] = EXTENDERS) -> CN:
    """Add every project key (trainers, datasets, ``TRAINER.PD``), or those of ``extenders``
    only, to ``cfg`` in place (frozen or not); returns it."""
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    for add_keys in extenders:
        add_keys(cfg)
    if was_frozen:
        cfg.freeze()
    return cfg
