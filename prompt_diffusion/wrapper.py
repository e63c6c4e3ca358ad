"""DiffusionPromptWrapper: prompt diffusion as a mixin over any Dassl-style prompt-learning trainer.

``DiffusionPromptWrapper.register(CoCoOp)`` registers ``CoCoOpPD``, a subclass of the user's
``CoCoOp`` whose training step and inference follow the paper (§4, Eq. 7-8, Fig. 3):

training step (batch of B images, labels y)
    π = Meta-Net(frozen CLIP image feature)                     [B, C]
    V_h = the host's own prompt for each image (adapter.host_prompts: CoCoOp ctx + Meta-Net(f),
          the others their shared prompts)                     {group: [B, n, w]}
    L_host = the host's own loss, backpropagated first; where it is the CE of its logits at V_h
         its pass also gives each sample's first overfitting gradient (per_sample_targets.py)
    V* = I gradient steps of each sample's OVERFIT.TARGET (the true-label CE) from V_h, detached
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

Two jobs live beside this module as mixins of the wrapper: ``per_sample_targets.PerSampleTargets``
(V* of a batch and the host's pass) and ``after_training.AfterTraining`` (AMED distillation,
residual calibration, the generator's fit).
"""
import os.path as osp
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple, Type

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from yacs.config import CfgNode

from prompt_diffusion.adapters import PromptAdapter, adapter_by_name, adapter_for_trainer, detect_adapter
from prompt_diffusion.after_training import AfterTraining, AMEDModule
from prompt_diffusion.config import add_pd_keys, extend_cfg, validate_pd_cfg
from prompt_diffusion.diagnostics import diagnose
from prompt_diffusion.diffusion.amed import AMEDPredictor
from prompt_diffusion.engine import TRAINER_REGISTRY, build_lr_scheduler, build_optimizer, compute_accuracy
from prompt_diffusion.engine.amp import backward, update
from prompt_diffusion.engine.checkpoint import checkpoint_file, load_state_dict_checked
from prompt_diffusion.generators.base import PromptGenerator
from prompt_diffusion.generator_registry import build_generator, generator_config
from prompt_diffusion.per_sample_targets import PerSampleTargets
from prompt_diffusion.prompt_methods import MetaNet

__all__ = ["DiffusionPromptWrapper", "MetaNet"]

Prompts = Dict[str, Tensor]

# names under which the wrapper registers its models (checkpoint sub-directories of OUTPUT_DIR)
GENERATOR_NAME = "pd_generator"  # its parts (the GAN's discriminator): pd_<part>
META_NET_NAME = "pd_meta_net"
AMED_NAME = "pd_amed"


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


class DiffusionPromptWrapper(PerSampleTargets, AfterTraining):
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

    def pd_host_prompts(self, features: Tensor) -> Prompts:
        """The host's own prompt for each image ``{group: [B, n, w]}`` (``adapter.host_prompts``),
        attached to the host's parameters: the centre of every residual the generator models."""
        return self.pd_adapter.host_prompts(features)

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
        rows = self._pd_rows_to_overfit(batch, len(images))  # all online; cached: the stale samples
        loss_host, first_grad = self._pd_host_pass(parsed, images, labels, features, center, scaler,
                                                   overfitting=pd.OVERFIT.ITERS > 0 and bool(rows))
        targets = self._pd_targets(batch, images, labels, features, center, rows, first_grad)  # V*: detached
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
        """Float16 autocast on the host's device type when the host trains with a ``GradScaler``
        (``PREC amp``, CUDA or CPU), else nothing."""
        return torch.autocast(torch.device(self.device).type, dtype=torch.float16,
                              enabled=getattr(self, "scaler", None) is not None)

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
