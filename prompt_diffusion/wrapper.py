"""DiffusionPromptWrapper: prompt diffusion as a mixin over any Dassl-style prompt-learning trainer.

``DiffusionPromptWrapper.register(CoCoOp)`` registers ``CoCoOpPD``, a subclass of the user's
``CoCoOp`` whose training step and inference follow the paper (§4, Eq. 7-8, Fig. 3):

training step (batch of B images, labels y)
    π = Meta-Net(frozen CLIP image feature)                     [B, C]
    V_h = the host's own prompt for each image (adapter.host_prompts: CoCoOp ctx + Meta-Net(f),
          the others their shared prompts)                     {group: [B, n, w]}
    V* = I gradient steps of each sample's CE from V_h, detached
         (online: every step; cached: the residual V* − V_h reused for OVERFIT.REFRESH epochs)
    the generator (TRAINER.PD.GENERATOR: the diffusion denoiser, or a Table-4 alternative) models
    the residual (V* − V_h) / scale; its loss returns a prediction, V̂ = V_h + scale·prediction
    loss = HOST_LOSS_WEIGHT·L_host + CE_WEIGHT·CE(logits(V̂), y) + BETA·L_generator
           (diffusion: L_generator = ‖V* − V̂‖² of Eq. 8; the CE reaches the generator through the
           residual, and the host's prompts through V_h only when HOST_LOSS_WEIGHT is 0: the host
           is never trained by two cross-entropies)
inference
    π -> seeded noise -> generator (diffusion: sampler with NFE denoiser calls) -> residual ->
    V_h + residual -> logits (TEST_SAMPLES averaged); a zero residual gives the host's logits exactly

The generator (and its parts, e.g. the GAN's discriminator, a Meta-Net when the host has none,
and the AMED predictor) are registered models of the trainer: they share its optimizer/scheduler
settings (``OPTIM``), checkpoints, resume and ``--eval-only`` loading. ``TRAINER.PD.ENABLE False``
leaves the host untouched.
"""
import os.path as osp
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple, Type

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm
from yacs.config import CfgNode

from prompt_diffusion.adapters import PromptAdapter, adapter_by_name, adapter_for_trainer, detect_adapter
from prompt_diffusion.config import add_pd_keys, extend_cfg, validate_pd_cfg
from prompt_diffusion.diagnostics import diagnose, residual_batches
from prompt_diffusion.diffusion.amed import AMEDPredictor, StudentCheck, distill_amed
from prompt_diffusion.diffusion.overfit import overfit_prompts, remove_class_means, target_objective
from prompt_diffusion.engine import TRAINER_REGISTRY, build_lr_scheduler, build_optimizer, compute_accuracy
from prompt_diffusion.engine.amp import backward, update
from prompt_diffusion.engine.checkpoint import checkpoint_file, load_state_dict_checked
from prompt_diffusion.generators.base import PromptGenerator, plain_values
from prompt_diffusion.generator_registry import build_generator, generator_config
from prompt_diffusion.prompt_methods import MetaNet

__all__ = ["DiffusionPromptWrapper", "MetaNet", "AMEDModule"]

Prompts = Dict[str, Tensor]

# names under which the wrapper registers its models (checkpoint sub-directories of OUTPUT_DIR)
GENERATOR_NAME = "pd_generator"  # its parts (the GAN's discriminator): pd_<part>
META_NET_NAME = "pd_meta_net"
AMED_NAME = "pd_amed"
# weight of the newest batch in the moving average of the prompt scale (see _pd_update_scale)
NORM_MOMENTUM = 0.1
# held-out images the residual gain is calibrated on after training (see pd_calibrate)
CALIBRATION_IMAGES = 512
# held-out images the AMED student is compared with its teacher on during distillation, and how
# often (in batches); the predictor keeps the weights that came closest (see distill_amed)
AMED_CHECK_IMAGES = 128
AMED_CHECK_EVERY = 5


class AMEDModule(nn.Module):
    """The registered ``pd_amed``: one ``AMEDPredictor`` per NFE of ``TRAINER.PD.AMED.NFES`` (its σ
    grid depends on the NFE, so each budget has its own) and whether they have been distilled
    (a buffer, so the flag travels with the checkpoint)."""

    def __init__(self, predictors: Dict[int, AMEDPredictor]):
        super().__init__()
        self.predictors = nn.ModuleDict({str(nfe): predictors[nfe] for nfe in sorted(predictors)})
        self.register_buffer("distilled_flag", torch.zeros((), dtype=torch.bool))

    @property
    def distilled(self) -> bool:
        return bool(self.distilled_flag)

    @property
    def nfes(self) -> List[int]:
        return [int(nfe) for nfe in self.predictors]

    def predictor(self, nfe: int) -> AMEDPredictor:
        """The predictor distilled for ``nfe`` evaluations."""
        return self.predictors[str(nfe)]

    def get_extra_state(self) -> dict:
        return {nfe: dict(predictor.config) for nfe, predictor in self.predictors.items()}

    def set_extra_state(self, state: dict) -> None:
        built = self.get_extra_state()
        if set(state) != set(built):
            raise ValueError(f"the checkpoint has AMED predictors for NFE {sorted(int(n) for n in state)}, "
                             f"TRAINER.PD.AMED.NFES builds {self.nfes}: evaluate with the NFES the model was "
                             "trained with (an NFE outside them needs a model trained with it listed)")
        for nfe, config in state.items():
            if plain_values(config) != plain_values(built[nfe]):
                raise ValueError(f"the checkpoint's AMED predictor {config} differs from the one TRAINER.PD "
                                 f"builds {built[nfe]} (denoiser width changed?)")


def with_pd_keys(cfg: CfgNode) -> CfgNode:
    """``cfg`` itself when it has ``TRAINER.PD``, else a copy with the defaults added (same frozenness)."""
    return cfg if "PD" in cfg.TRAINER else extend_cfg(cfg.clone(), [add_pd_keys])


def _repeat(prompts: Prompts, times: int) -> Prompts:
    """``{group: [B, n, w]}`` -> ``{group: [times * B, n, w]}`` (the batch ``times`` over)."""
    return {name: prompt.repeat(times, 1, 1) for name, prompt in prompts.items()}


def sample_seed(base_seed: int, position: int, draw: int) -> int:
    """A well-mixed 63-bit seed for the ``draw``-th noise of the sample at evaluation ``position``."""
    state = np.random.SeedSequence([int(base_seed) & 0xFFFFFFFF, int(position), int(draw)]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


class DiffusionPromptWrapper:
    """Mixin that turns a Dassl-style prompt-learning trainer into its prompt-diffusion variant.

    Use ``DiffusionPromptWrapper.register(Host)`` (registers ``HostPD``) or ``.wrap(Host)``.
    The adapter comes from ``TRAINER.PD.ADAPTER``; ``auto`` looks the host class up by name
    (``prompt_diffusion.adapters``), then by the model's attribute layout.
    """

    # an adapter class fixed by ``wrap(host, adapter=...)``; None: TRAINER.PD.ADAPTER decides
    pd_adapter_class: Optional[Type[PromptAdapter]] = None

    # ------------------------------------------------------------------ making the class
    @classmethod
    def wrap(cls, host: type, adapter: Optional[Type[PromptAdapter]] = None) -> type:
        """``<Host>PD``: a subclass of ``host`` with prompt diffusion (not registered)."""
        if not isinstance(host, type):
            raise TypeError(f"wrap() takes a trainer class, got {host!r}")
        if issubclass(host, DiffusionPromptWrapper):
            raise TypeError(f"{host.__name__} is already a prompt-diffusion trainer")
        namespace = {
            "__module__": host.__module__,
            "__qualname__": f"{host.__qualname__}PD",
            "__doc__": f"{host.__name__} with prompt diffusion (prompt_diffusion.DiffusionPromptWrapper).",
            "pd_adapter_class": adapter,
        }
        return type(f"{host.__name__}PD", (cls, host), namespace)

    @classmethod
    def register(cls, host: type, adapter: Optional[Type[PromptAdapter]] = None, registry=None) -> type:
        """Wrap ``host`` and register the result as ``<Host>PD`` in ``registry`` (default: the
        engine's ``TRAINER_REGISTRY``, Dassl's own when Dassl is installed). Registering the same
        host again returns the class registered before."""
        registry = TRAINER_REGISTRY if registry is None else registry
        name = f"{host.__name__}PD"
        if name in registry.registered_names():
            existing = registry.get(name)
            if issubclass(existing, DiffusionPromptWrapper) and existing.__bases__[-1] is host:
                return existing
            raise KeyError(f"a trainer named {name!r} is already registered "
                           f"({existing.__module__}.{existing.__qualname__})")
        wrapped = cls.wrap(host, adapter)
        registry.register(wrapped)
        return wrapped

    # ------------------------------------------------------------------ construction
    def __init__(self, cfg: CfgNode):
        super().__init__(with_pd_keys(cfg))

    @property
    def pd_enabled(self) -> bool:
        return bool(self.cfg.TRAINER.PD.ENABLE)

    def check_cfg(self, cfg: CfgNode) -> None:
        super().check_cfg(cfg)
        validate_pd_cfg(cfg)

    def build_model(self) -> None:
        super().build_model()
        self._pd_model_names: List[str] = []  # the wrapper's registered models (none when PD is off)
        if not self.pd_enabled:
            print("Prompt diffusion is off (TRAINER.PD.ENABLE False): the host trainer runs unchanged")
            return
        host_model = self.model.module if isinstance(self.model, nn.DataParallel) else self.model
        adapter_cls = self._pd_adapter_class(host_model)
        self.pd_adapter = adapter_cls(host_model, self.cfg)
        groups = self.pd_adapter.groups
        print(f"Prompt diffusion: adapter {adapter_cls.name}, prompt groups {[tuple(g) for g in groups]}")

        self.pd_cond_net, cond_dim = self._pd_build_condition()
        self.pd_generator = self._pd_build_generator(cond_dim)
        self.pd_amed = self._pd_build_amed()
        self._pd_overfit_cache: Dict[int, Tuple[int, Prompts]] = {}
        self._pd_host_pass_shared: Optional[bool] = None  # decided on the first training batch
        self._pd_eval_position = 0

    def _pd_adapter_class(self, model: nn.Module) -> Type[PromptAdapter]:
        choice = self.cfg.TRAINER.PD.ADAPTER
        if choice != "auto":
            return adapter_by_name(choice)
        if self.pd_adapter_class is not None:
            return self.pd_adapter_class
        found = adapter_for_trainer(type(self))
        return found if found is not None else detect_adapter(model)

    def _pd_register(self, name: str, module: nn.Module, trainable: bool = True) -> None:
        optim = sched = None
        if trainable:
            optim = build_optimizer(module, self.cfg.OPTIM)
            sched = build_lr_scheduler(optim, self.cfg.OPTIM)
        self.register_model(name, module, optim, sched)
        self._pd_model_names.append(name)

    def _pd_build_generator(self, cond_dim: int) -> PromptGenerator:
        """The generator ``TRAINER.PD.GENERATOR`` names (sizes from ``TRAINER.PD.DENOISER``),
        registered as ``pd_generator``; each of its parts (the GAN's discriminator) as ``pd_<part>``
        with its own optimizer."""
        pd = self.cfg.TRAINER.PD
        config = generator_config(pd.GENERATOR, self.pd_adapter.groups, cond_dim, pd.DENOISER.LAYERS,
                                  pd.DENOISER.HEADS, pd.DENOISER.WIDTH, timesteps=pd.STEPS, schedule=pd.SCHEDULE,
                                  kl_weight=pd.VAE.KL_WEIGHT)
        generator = build_generator(config).to(self.device)
        self._pd_register(GENERATOR_NAME, generator)
        for name, part in generator.parts().items():
            self._pd_register(f"pd_{name}", part.to(self.device))
        sizes = ", ".join([f"{sum(p.numel() for p in generator.parameters()):,} parameters"]
                          + [f"{name} {sum(p.numel() for p in part.parameters()):,}"
                             for name, part in generator.parts().items()])
        print(f"Prompt diffusion: generator {pd.GENERATOR} ({sizes})")
        if pd.GENERATOR != "diffusion":
            print(f"Prompt diffusion: TRAINER.PD.SAMPLER, NFE, STEPS, SCHEDULE and AMED apply to the diffusion "
                  f"generator only; the {pd.GENERATOR} generator does not use them")
        return generator

    def _pd_build_condition(self) -> Tuple[Optional[nn.Module], int]:
        """The network that maps the frozen image feature to π, and π's width."""
        feature_dim = self.pd_adapter.feature_dim
        if self.cfg.TRAINER.PD.COND == "image_feature":
            print("Prompt diffusion: π = the frozen CLIP image feature")
            return None, feature_dim
        host_net = self.pd_adapter.meta_net()
        if host_net is not None:
            print("Prompt diffusion: π = the host's Meta-Net on the frozen CLIP image feature")
            probe = next(host_net.parameters())
            with torch.no_grad():
                out = host_net(torch.zeros(1, feature_dim, dtype=probe.dtype, device=probe.device))
            return host_net, int(out.shape[-1])
        net = MetaNet(feature_dim, feature_dim).to(self.device)
        print(f"Prompt diffusion: π = a new Meta-Net ({feature_dim} -> {net.linear1.out_features} -> "
              f"{feature_dim}) on the frozen CLIP image feature, registered as {META_NET_NAME!r}")
        self._pd_register(META_NET_NAME, net)
        return net, feature_dim

    def _pd_build_amed(self) -> Optional["AMEDModule"]:
        """The AMED predictor (registered, no optimizer: it is distilled after training), when
        ``SAMPLER`` is ``amed`` and ``AMED.DISTILL_ITERS`` > 0."""
        pd = self.cfg.TRAINER.PD
        if pd.SAMPLER != "amed" or pd.GENERATOR != "diffusion":
            return None
        if pd.AMED.DISTILL_ITERS == 0:
            print("Prompt diffusion: TRAINER.PD.AMED.DISTILL_ITERS is 0, so no AMED predictor: "
                  "sampling falls back to dpmpp_2m")
            return None
        nfes = list(pd.AMED.NFES) or [pd.NFE]
        module = AMEDModule({nfe: AMEDPredictor(feature_dim=pd.DENOISER.WIDTH, nfe=nfe) for nfe in nfes})
        module = module.to(self.device)
        self._pd_register(AMED_NAME, module, trainable=False)
        return module

    # ------------------------------------------------------------------ shared pieces
    def pd_condition(self, image_features: Tensor) -> Tensor:
        """π ``[B, C]`` (float32) from the frozen image features ``[B, feature_dim]``."""
        if self.pd_cond_net is None:
            return image_features.float()
        dtype = next(self.pd_cond_net.parameters()).dtype
        return self.pd_cond_net(image_features.to(dtype)).float()

    def _pd_per_sample_loss(self, images: Tensor, labels: Optional[Tensor], features: Tensor, target: str):
        label_weight = self.cfg.TRAINER.PD.OVERFIT.LABEL_WEIGHT

        def per_sample_loss(prompts: Prompts) -> Tensor:
            logits = self.pd_adapter.logits(images, prompts, features)
            return target_objective(target, logits, labels, label_weight)

        return per_sample_loss

    def pd_host_prompts(self, features: Tensor) -> Prompts:
        """The host's own prompt for each image ``{group: [B, n, w]}`` (``adapter.host_prompts``),
        attached to the host's parameters: the centre of every residual the generator models."""
        return self.pd_adapter.host_prompts(features)

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

    def _pd_targets(self, batch: dict, images: Tensor, labels: Tensor, features: Tensor, center: Prompts,
                    first_grad: Optional[Prompts]) -> Prompts:
        """``V*`` for the batch: overfitted now from ``center`` (online), or ``center`` plus the
        sample's cached residual ``V* − V_h`` (cached: the residual is recomputed every
        ``OVERFIT.REFRESH`` epochs, the centre is always the current host prompt). ``first_grad``:
        each sample's first overfitting gradient from the host's pass, or None."""
        overfit = self.cfg.TRAINER.PD.OVERFIT
        if overfit.MODE == "online":
            return self.pd_overfit(images, labels, features, center, first_grad=first_grad)
        if "index" not in batch:
            raise KeyError("TRAINER.PD.OVERFIT.MODE 'cached' needs the sample index in each batch (batch['index'], "
                           "as Dassl's DatasetWrapper gives); this data loader does not provide it")
        indices = [int(i) for i in batch["index"]]
        stale = [row for row, index in enumerate(indices)
                 if index not in self._pd_overfit_cache
                 or self.epoch - self._pd_overfit_cache[index][0] >= overfit.REFRESH]
        if stale:
            rows = torch.tensor(stale, device=images.device)
            fresh = self.pd_overfit(images[rows], labels[rows], features[rows],
                                    {name: prompt[rows] for name, prompt in center.items()},
                                    first_grad=None if first_grad is None else
                                    {name: grad[rows] for name, grad in first_grad.items()})
            for position, row in enumerate(stale):
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

    @torch.no_grad()
    def pd_generator_fit(self, data_loader=None, draws: int = 4, seed: int = 0) -> float:
        """How well the generator's training prediction reconstructs the overfitted prompts of a data
        set (default: the training set): ``Σ‖V* − V̂‖² / Σ‖V* − V_h‖²`` in normalised space over
        ``draws`` seeded draws of the loss's randomness per sample (diffusion: the denoiser's x0
        from a random timestep and noise; GAN and flow: a sample; VAE: the reconstruction).
        1: no better than the host's prompts; 0: exact. Batches of the training set are parsed as
        training batches, others as test batches."""
        self.set_model_mode("eval")
        model = self.pd_generator
        generator = torch.Generator().manual_seed(seed)
        parse = self.parse_batch_train if data_loader is None else self.parse_batch_test
        error = baseline = 0.0
        for batch in data_loader if data_loader is not None else self.train_loader_x:
            images, labels = parse(batch)[:2]
            features = self.pd_adapter.image_features(images)
            center = {k: v.float() for k, v in self.pd_host_prompts(features).items()}
            targets = self.pd_overfit(images, labels, features, center)
            pi = self.pd_condition(features)
            residual = model.layout.flatten(model.normalize(targets, center)).float()  # [B, N]
            for _ in range(draws):
                predicted = model.residual_loss(residual, pi, generator)[1]  # normalized, as ``residual``
                error += float((predicted.float() - residual).pow(2).mean()) * len(images)
                baseline += float(residual.pow(2).mean()) * len(images)
        return error / baseline

    # ------------------------------------------------------------------ training
    def before_train(self) -> None:
        super().before_train()
        if self.pd_enabled:
            overfit = self.cfg.TRAINER.PD.OVERFIT
            if overfit.MODE == "online":
                print(f"Prompt diffusion: per-sample overfitting online ({self._pd_overfit_text()}, every step)")
            else:
                print(f"Prompt diffusion: per-sample overfitting cached ({self._pd_overfit_text()}; "
                      f"each sample's V* recomputed every {overfit.REFRESH} epoch(s))")

    def _pd_overfit_text(self) -> str:
        overfit = self.cfg.TRAINER.PD.OVERFIT
        mix = f" + {overfit.LABEL_WEIGHT} x label CE" if overfit.LABEL_WEIGHT > 0 else ""
        return f"target {overfit.TARGET}{mix}, I={overfit.ITERS}, {overfit.STEP_RULE} steps of lr={overfit.LR}"

    def forward_backward(self, batch: dict) -> dict:
        if not self.pd_enabled:
            return super().forward_backward(batch)
        pd = self.cfg.TRAINER.PD
        scaler = getattr(self, "scaler", None)  # the host's GradScaler (PREC amp), if any
        parsed = self.parse_batch_train(batch)  # (images, labels, ...): what the host's loss takes
        images, labels = parsed[:2]
        features = self.pd_adapter.image_features(images)  # [B, E], frozen
        with self._pd_autocast():
            center = self.pd_host_prompts(features)  # V_h: {group: [B, n, w]}, attached to the host
        fixed_center = {name: prompt.detach().float() for name, prompt in center.items()}
        # every registered optimizer (host's and wrapper's) steps once, on the gradients of two backward
        # passes: the host's loss first (its pass may give the first overfitting step), then CE + generator
        self.model_zero_grad()
        loss_host, first_grad = self._pd_host_pass(parsed, images, labels, features, center, scaler)
        targets = self._pd_targets(batch, images, labels, features, center, first_grad)  # V*: detached
        if pd.OVERFIT.REMOVE_CLASS_MEAN:
            targets = self._pd_within_class(targets, fixed_center, labels)
        self._pd_update_scale(targets, center)
        with self._pd_autocast():
            pi = self.pd_condition(features)  # [B, C]
            draws = pd.DIFFUSION_DRAWS  # the batch repeated: [draws * B, ...], draw-major
            loss_gen, predicted = self.pd_generator.loss(_repeat(targets, draws), _repeat(fixed_center, draws),
                                                         pi.repeat(draws, 1))
            predicted = {name: prompt[: len(images)] for name, prompt in predicted.items()}  # the first draw
            # V̂ = V_h + residual. The host's parameters get one CE, never two: the host's own loss when
            # it is on (V_h detached here), else the CE of Eq. 8 through V_h (attached)
            origin = center if pd.HOST_LOSS_WEIGHT == 0 else fixed_center
            generated = {name: origin[name] + (predicted[name] - fixed_center[name]) for name in center}
            logits = self.pd_adapter.logits(images, generated, features)
            loss_ce = F.cross_entropy(logits, labels)
            loss = pd.CE_WEIGHT * loss_ce + pd.BETA * loss_gen
        backward(self, loss, scaler)
        update(self, scaler)  # through the host's GradScaler when it has one
        summary = {"loss_ce": loss_ce.item(), "loss_gen": loss_gen.item()}
        if loss_host is not None:
            summary["loss_host"] = loss_host.item()
            loss = loss + pd.HOST_LOSS_WEIGHT * loss_host
        summary["loss"] = loss.item()
        summary["acc"] = compute_accuracy(logits, labels)[0].item()
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    def _pd_host_pass(self, parsed: tuple, images: Tensor, labels: Tensor, features: Tensor, center: Prompts,
                      scaler) -> Tuple[Optional[Tensor], Optional[Prompts]]:
        """Backpropagate ``HOST_LOSS_WEIGHT`` times the host's own loss now (its graph is freed before
        the overfitting). Returns the loss (detached; None when off or the host has none) and, when
        this pass is shared (``_pd_shares_host_pass``), each sample's first overfitting gradient at
        ``V_h`` ``{group: [B, n, w]}`` (fp32), else None.

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
        if overfit.ITERS > 0 and overfit.TARGET != "label":
            objective = target_objective(overfit.TARGET, logits, labels, overfit.LABEL_WEIGHT).sum()
            grads = torch.autograd.grad(objective, list(center.values()), retain_graph=True)
            first_grad = {name: grad.float() for name, grad in zip(center, grads)}
        elif overfit.ITERS > 0:
            for prompt in center.values():
                prompt.retain_grad()
        backward(self, pd.HOST_LOSS_WEIGHT * loss, scaler)
        if overfit.ITERS > 0 and first_grad is None:  # undo the mean over B, the weight and the amp scale
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
        pairs = [(own.detach(), through.detach())]
        for first, second in zip(torch.autograd.grad(own, params, allow_unused=True),
                                 torch.autograd.grad(through, params, allow_unused=True)):
            if first is not None or second is not None:
                pairs.append((torch.zeros_like(second) if first is None else first,
                              torch.zeros_like(first) if second is None else second))
        tolerance = 1e-4 if through.dtype == torch.float32 and own.dtype == torch.float32 else 1e-2
        worst = max(float((a - b).abs().max()) / max(float(a.abs().max()), float(b.abs().max()), 1e-12)
                    for a, b in pairs)
        values = f"first batch: {pairs[0][0].item():.6g} and {pairs[0][1].item():.6g}, gradients within {worst:.1e} relative"
        if worst <= tolerance:
            return True, (f"the host's loss is the cross-entropy of its logits at its own prompts ({values}): one "
                          "pass gives the host loss and each sample's first overfitting step")
        return False, (f"the host's own loss differs from the cross-entropy at its prompts ({values}, tolerance "
                       f"{tolerance:g}), so it runs as its own pass before the overfitting")

    def after_epoch(self) -> None:
        """The host's ``after_epoch`` (checkpoints, validation), then one log line on how the
        generator does on ``TRAINER.PD.DIAGNOSE_IMAGES`` held-out (val) images: the generator's fit,
        alignment of generated with overfitted residuals, accuracy against the host's prompts."""
        super().after_epoch()
        images = self.cfg.TRAINER.PD.DIAGNOSE_IMAGES if self.pd_enabled else 0
        if images <= 0:
            return
        if getattr(self, "val_loader", None) is None:
            if not getattr(self, "_pd_said_no_val", False):
                print("Prompt diffusion: no val split, so no held-out diagnosis in the log")
                self._pd_said_no_val = True
            return
        state = torch.random.get_rng_state()  # the diagnosis must not change the training's random stream
        result = diagnose(self, self.val_loader, max_images=images)
        torch.random.set_rng_state(state)
        print(f"Prompt diffusion, epoch {self.epoch + 1}, held-out: {result.summary()}")

    def after_train(self) -> None:
        if self.pd_enabled and self.pd_amed is not None:
            self.pd_distill_amed()
            self._pd_resave(AMED_NAME)
        if self.pd_enabled and self.cfg.TRAINER.PD.CALIBRATE:  # with the sampler the tests will use
            self.pd_calibrate()
            self._pd_resave(GENERATOR_NAME)
        super().after_train()

    def pd_calibrate(self, max_images: int = CALIBRATION_IMAGES) -> Dict[str, float]:
        """Scale generated residuals by how much of them points the right way (``calibrate_gain``),
        measured on up to ``max_images`` held-out images (the val split; the training images when
        there is none) against the residuals overfitted with their true labels. A generator that
        learned nothing then leaves the host's prompt as it is. Returns the gain per group."""
        model = self.pd_generator
        for name in model.layout.names:
            getattr(model, f"{name}_gain").fill_(1.0)
        held_out = getattr(self, "val_loader", None) is not None
        loader = self.val_loader if held_out else self.train_loader_x
        generated, targets, seen = [], [], 0
        for item in residual_batches(self, loader, max_images, training=not held_out):
            generated.append(model.normalize(item.generated, item.center))
            targets.append(model.normalize(item.overfit, item.center))
            seen += len(item.labels)
        gains = model.calibrate_gain({k: torch.cat([g[k] for g in generated]) for k in model.layout.names},
                                     {k: torch.cat([t[k] for t in targets]) for k in model.layout.names})
        where = "held-out val" if held_out else "training"
        print(f"Prompt diffusion: residual gain calibrated on {seen} {where} images: "
              + ", ".join(f"{name} {gain:.3f}" for name, gain in gains.items()))
        return gains

    @torch.no_grad()
    def _pd_conditions(self, loader, training: bool, max_images: Optional[int] = None) -> Tensor:
        """π of the images of ``loader`` (the first ``max_images``; all by default), ``[N, C]``."""
        self.set_model_mode("eval")
        conditions, seen = [], 0
        for batch in tqdm(loader, desc="π of the images", leave=False, disable=None):
            images = (self.parse_batch_train(batch) if training else self.parse_batch_test(batch))[0]
            conditions.append(self.pd_condition(self.pd_adapter.image_features(images)))
            seen += len(images)
            if max_images is not None and seen >= max_images:
                break
        return torch.cat(conditions)[:max_images]

    def pd_distill_amed(self) -> Dict[int, List[float]]:
        """Distil the AMED predictor of every NFE in ``TRAINER.PD.AMED.NFES`` from the teacher
        solver on the π of the training images and fresh noise; returns the loss per distillation
        batch, per NFE. Each predictor keeps the weights whose student came closest to the teacher
        on held-out (val) conditions (``distill_amed``'s check); the log gives that error before and
        after distillation, what distillation is for (the loss per batch moves with each batch's
        random conditions and noise)."""
        amed = self.cfg.TRAINER.PD.AMED
        conditions = self._pd_conditions(self.train_loader_x, training=True)
        denoiser = self.pd_generator
        held_out = getattr(self, "val_loader", None) is not None
        check_conditions = (self._pd_conditions(self.val_loader, training=False, max_images=AMED_CHECK_IMAGES)
                            if held_out else conditions[:AMED_CHECK_IMAGES])
        check_noise = torch.randn(len(check_conditions), denoiser.layout.numel,  # own generator: the run's
                                  generator=torch.Generator().manual_seed(self.cfg.SEED)).to(conditions.device)
        check = StudentCheck(denoiser.denoise_fn(check_conditions), check_noise, denoiser.schedule,
                             teacher=amed.TEACHER, inserted=amed.INSERTED)

        def batches():  # random training conditions and fresh noise (the run's seeded global RNG)
            for _ in range(amed.DISTILL_ITERS):
                rows = torch.randint(len(conditions), (min(amed.BATCH, len(conditions)),))
                noise = torch.randn(len(rows), denoiser.layout.numel).to(conditions.device)
                yield denoiser.denoise_fn(conditions[rows.to(conditions.device)]), noise

        self.pd_amed.train()
        histories = {}
        for nfe in self.pd_amed.nfes:
            print(f"Prompt diffusion: distilling the AMED predictor (NFE={nfe}) from {amed.TEACHER} with "
                  f"{amed.INSERTED} inserted points, {amed.DISTILL_ITERS} batches of {amed.BATCH}")
            predictor = self.pd_amed.predictor(nfe)
            check.errors.clear()
            history = distill_amed(predictor, batches(), denoiser.schedule, teacher=amed.TEACHER,
                                   inserted=amed.INSERTED, lr=amed.LR, check=check, check_every=AMED_CHECK_EVERY,
                                   log_every=max(1, amed.DISTILL_ITERS // 10))
            print(f"Prompt diffusion: AMED (NFE={nfe}) student-vs-teacher error on {len(check_conditions)} "
                  f"{'held-out val' if held_out else 'training'} images {check.errors[0]:.4g} -> "
                  f"{min(check.errors):.4g}, "
                  f"the best of every {AMED_CHECK_EVERY} batches (distillation loss per batch "
                  f"{history[0]:.4g} -> {history[-1]:.4g})")
            histories[nfe] = history
        self.pd_amed.eval()
        self.pd_amed.distilled_flag.fill_(True)
        return histories

    def _pd_resave(self, name: str) -> None:
        """Write the registered model ``name`` (the distilled AMED predictor, the calibrated
        denoiser) over the last epoch's checkpoint (and the best one, when there is one), so
        ``--eval-only`` and the final test use it."""
        files = [f"model.pth.tar-{self.epoch + 1}"]
        if osp.exists(osp.join(self.output_dir, name, "model-best.pth.tar")):
            files.append("model-best.pth.tar")
        for model_name in files:
            self.save_model(self.epoch, self.output_dir, model_name=model_name, names=[name])

    def _pd_autocast(self):
        """CUDA float16 autocast when the host trains with a ``GradScaler`` (``PREC amp``), else nothing."""
        return torch.autocast("cuda", dtype=torch.float16, enabled=getattr(self, "scaler", None) is not None)

    # ------------------------------------------------------------------ inference
    def test(self, split: Optional[str] = None):
        """The host's test, with the inference noise re-seeded: sample ``i`` of every evaluation
        draws the same noise (``TRAINER.PD.NOISE_SEED``), so evaluation is reproducible."""
        self._pd_eval_position = 0
        if self.pd_enabled and self.cfg.TRAINER.PD.INFERENCE == "tune":
            print(f"Prompt diffusion: test-time tuning of every test image from its host prompt "
                  f"({self._pd_overfit_text()}); the generator is not used")
        return super().test(split)

    def pd_reset_noise(self) -> None:
        """Restart the per-sample noise sequence (``test`` does this itself)."""
        self._pd_eval_position = 0

    def pd_noise(self, batch: int, draw: int, device: torch.device) -> Tensor:
        """``[B, noise_dim]`` normal noise of standard deviation ``NOISE_SCALE`` (the sampling temperature),
        sample ``b`` seeded by (NOISE_SEED, position of b, draw)."""
        numel = self.pd_generator.noise_dim
        rows = []
        for b in range(batch):
            generator = torch.Generator().manual_seed(
                sample_seed(self.cfg.TRAINER.PD.NOISE_SEED, self._pd_eval_position + b, draw))
            rows.append(torch.randn(numel, generator=generator))
        return (self.cfg.TRAINER.PD.NOISE_SCALE * torch.stack(rows)).to(device)

    def pd_sampler(self) -> Tuple[str, Optional[nn.Module]]:
        """The sampler to use and its AMED predictor: ``amed`` needs a distilled predictor, else
        ``dpmpp_2m`` (said once in the log)."""
        sampler = self.cfg.TRAINER.PD.SAMPLER
        if sampler != "amed":
            return sampler, None
        if self.pd_amed is not None and self.pd_amed.distilled:
            return "amed", self.pd_amed.predictor(self.cfg.TRAINER.PD.NFE)
        if not getattr(self, "_pd_said_fallback", False):
            print("Prompt diffusion: no distilled AMED predictor, sampling with dpmpp_2m instead")
            self._pd_said_fallback = True
        return "dpmpp_2m", None

    @torch.no_grad()
    def pd_generate(self, pi: Tensor, center: Prompts, draw: int) -> Prompts:
        """One sampled raw prompt per condition row: ``center`` (the host's prompts) plus a
        generated residual (diffusion: NFE denoiser calls with the sampler of ``pd_sampler``)."""
        options = {}
        if self.cfg.TRAINER.PD.GENERATOR == "diffusion":
            sampler, predictor = self.pd_sampler()
            options = {"sampler": sampler, "nfe": self.cfg.TRAINER.PD.NFE, "amed_predictor": predictor}
        noise = self.pd_noise(pi.shape[0], draw, pi.device)
        generator = torch.Generator().manual_seed(  # ddpm's ancestral noise
            sample_seed(self.cfg.TRAINER.PD.NOISE_SEED, self._pd_eval_position, draw))
        return self.pd_generator.generate(pi, center, noise, generator, **options)

    def model_inference(self, input: Tensor) -> Tensor:
        if not self.pd_enabled:
            return super().model_inference(input)
        features = self.pd_adapter.image_features(input)
        with torch.no_grad():
            center = self.pd_host_prompts(features)
        if self.cfg.TRAINER.PD.INFERENCE == "tune":  # test-time tuning: each image's own label-free V*
            with torch.no_grad():
                return self.pd_adapter.logits(input, self.pd_overfit(input, None, features, center), features)
        pi = self.pd_condition(features)
        draws = self.cfg.TRAINER.PD.TEST_SAMPLES
        logits = sum(self.pd_adapter.logits(input, self.pd_generate(pi, center, draw), features)
                     for draw in range(draws))
        self._pd_eval_position += input.shape[0]
        return logits / draws

    # ------------------------------------------------------------------ checkpoints
    def _pd_names(self) -> List[str]:
        return list(self._pd_model_names)

    @contextmanager
    def _pd_hidden(self) -> Iterator[None]:
        """Hide the wrapper's models from the host's ``load_model`` (it loads them itself)."""
        hidden = [(name, self._models.pop(name)) for name in self._pd_names()]
        try:
            yield
        finally:
            for name, module in hidden:
                self._models[name] = module

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """The host's ``load_model`` for its own models; the generator (its parts, Meta-Net, AMED predictor)
        load from their sub-directories, or stay freshly initialised when the checkpoint is an
        unwrapped host's (said in the log)."""
        if not self.pd_enabled:
            return super().load_model(directory, epoch)
        with self._pd_hidden():
            super().load_model(directory, epoch)
        if not directory:
            return
        for name in self._pd_names():
            self._load_registered_model(name, checkpoint_file(directory, name, epoch), missing_ok=True)

    def _load_state_dict(self, name: str, state_dict: dict, path: str) -> None:
        """The wrapper's models load strictly (a checkpoint of another architecture names what
        differs); the host's as the host loads them."""
        if name in self._pd_names():
            load_state_dict_checked(self._models[name], state_dict, path)
        else:
            super()._load_state_dict(name, state_dict, path)
