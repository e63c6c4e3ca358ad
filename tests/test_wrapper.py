"""DiffusionPromptWrapper on the reference trainers and on a third-party trainer (tiny CLIP, generated images)."""
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prompt_diffusion.trainers  # noqa: F401  (registers the trainers and their PD variants)
from helpers import make_image_folder, register_tiny_folder_dataset, small_prompt_learners
from prompt_diffusion import DiffusionPromptWrapper
from prompt_diffusion.adapters import CoCoOpAdapter
from prompt_diffusion.backbones import build_tiny_clip, load_clip_from_cfg, save_clip
from prompt_diffusion.clip_prompting import split_prompt_embeddings
from prompt_diffusion.commands import train as train_command
from prompt_diffusion.config import extend_cfg, validate_pd_cfg
from prompt_diffusion.engine import (
    TRAINER_REGISTRY, TrainerX, build_lr_scheduler, build_optimizer, build_trainer, get_cfg_default, set_random_seed,
)
from prompt_diffusion.trainers import cocoop, coop, ivlp, vpt
from prompt_diffusion.trainers._common import tokenize_class_prompts

CLASSNAMES = ["blue", "green", "red", "yellow"]  # folder names, sorted
HOSTS = {"CoOp": coop.CoOp, "CoCoOp": cocoop.CoCoOp, "VPT": vpt.VPT, "IVLP": ivlp.IVLP}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pd_wrapper")
    make_image_folder(root / "images", CLASSNAMES, per_class=6)
    save_clip(build_tiny_clip(), root / "tiny_clip.pt")
    return root


def make_cfg(world: Path, trainer: str, output: Path, opts=(), epochs: int = 2, batch: int = 2):
    """A frozen config for ``trainer`` on the tiny image folder with a tiny denoiser."""
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.DATASET.NAME = register_tiny_folder_dataset()
    cfg.DATASET.ROOT = str(world / "images")
    cfg.MODEL.BACKBONE.NAME = "tiny"
    cfg.MODEL.BACKBONE.PATH = str(world / "tiny_clip.pt")
    cfg.INPUT.SIZE = (32, 32)
    cfg.INPUT.TRANSFORMS = ()
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = batch
    cfg.DATALOADER.TEST.BATCH_SIZE = 8
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.OPTIM.NAME = "adam"
    cfg.OPTIM.LR = 0.003
    cfg.OPTIM.MAX_EPOCH = epochs
    cfg.TRAIN.CHECKPOINT_FREQ = 1
    cfg.TRAIN.PRINT_FREQ = 100
    cfg.TEST.NO_TEST = True
    cfg.TRAINER.NAME = trainer
    cfg.OUTPUT_DIR = str(output)
    cfg.SEED = 1
    small_prompt_learners(cfg)
    pd = cfg.TRAINER.PD
    pd.DENOISER.LAYERS, pd.DENOISER.HEADS, pd.DENOISER.WIDTH = 1, 2, 32
    pd.AMED.DISTILL_ITERS, pd.AMED.BATCH, pd.AMED.INSERTED = 2, 4, 2
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    return cfg


def cli_opts(cfg) -> list:
    """The ``KEY VALUE`` opts that rebuild ``cfg`` through ``prompt-diffusion train``."""
    keys = ["DATASET.NAME", "DATASET.ROOT", "MODEL.BACKBONE.NAME", "MODEL.BACKBONE.PATH", "INPUT.SIZE",
            "INPUT.TRANSFORMS", "DATALOADER.NUM_WORKERS", "TRAINER.COOP.N_CTX", "TRAINER.COCOOP.N_CTX",
            "TRAINER.VPT.PROMPT_DEPTH_VISION", "TRAINER.IVLP.PROMPT_DEPTH_TEXT", "TRAINER.IVLP.PROMPT_DEPTH_VISION",
            "TRAINER.PD.DENOISER.LAYERS", "TRAINER.PD.DENOISER.HEADS", "TRAINER.PD.DENOISER.WIDTH"]
    keys += [f"TRAINER.{node}.PREC" for node in ("COOP", "COCOOP", "VPT", "IVLP")]
    opts = []
    for key in keys:
        value = cfg
        for part in key.split("."):
            value = value[part]
        opts += [key, str(value)]
    return opts


def build(cfg):
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


def first_batch(trainer):
    batch = next(iter(trainer.train_loader_x))
    return trainer.parse_batch_train(batch)[:2]


# ---------------------------------------------------------------------- registration
@pytest.mark.parametrize("host", sorted(HOSTS))
def test_pd_variant_is_a_registered_subclass_of_its_host(host):
    host_cls = HOSTS[host]
    registered = TRAINER_REGISTRY.get(f"{host}PD")
    assert registered.__name__ == f"{host}PD"
    assert issubclass(registered, host_cls) and issubclass(registered, DiffusionPromptWrapper)
    assert DiffusionPromptWrapper.register(host_cls) is registered  # registering again is a no-op
    wrapped = DiffusionPromptWrapper.wrap(host_cls)  # a fresh, unregistered class
    assert wrapped is not registered and wrapped.__name__ == f"{host}PD" and issubclass(wrapped, host_cls)
    with pytest.raises(TypeError, match="already a prompt-diffusion trainer"):
        DiffusionPromptWrapper.wrap(registered)


# ---------------------------------------------------------------------- train, checkpoint, resume, eval-only
@pytest.mark.parametrize("host", sorted(HOSTS))
def test_train_checkpoint_resume_and_eval_only(host, world, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = make_cfg(world, f"{host}PD", out)
    trainer = build(cfg)
    trainer.train()
    log = capsys.readouterr().out
    assert "per-sample overfitting online" in log and "distilling the AMED predictor" in log
    names = trainer.get_model_names()
    assert {"pd_generator", "pd_amed"} <= set(names)
    assert ("pd_meta_net" in names) == (host != "CoCoOp")  # CoCoOp's own Meta-Net gives π
    for name in names:
        assert (out / name / "model.pth.tar-1").is_file() and (out / name / "model.pth.tar-2").is_file()
    amed = torch.load(out / "pd_amed" / "model.pth.tar-2", map_location="cpu", weights_only=True)
    assert bool(amed["state_dict"]["distilled_flag"])
    denoiser_state = torch.load(out / "pd_generator" / "model.pth.tar-2", map_location="cpu", weights_only=True)
    description = denoiser_state["state_dict"]["_extra_state"]  # the generator describes itself
    assert description["kind"] == "diffusion" and description["schedule"] == "scaled_linear"

    # the diffusion loss falls: 1.0 (the shared prompts; untrained zero-initialised output) -> epoch 1 -> epoch 2
    evaluator = build(cfg)
    assert evaluator.pd_generator_fit(draws=2) == pytest.approx(1.0)
    fits = []
    for epoch in (1, 2):
        evaluator.load_model(str(out), epoch=epoch)
        fits.append(evaluator.pd_generator_fit(draws=2))
    assert fits[0] < 1.0 and fits[1] < 1.0 and fits[1] < fits[0] + 0.02, fits

    # resume: every registered model (denoiser included) continues from epoch 2
    resumed = build(cfg)
    assert resumed.resume_model_if_exist(str(out)) == 2
    for key, value in resumed.pd_generator.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value.cpu(), denoiser_state["state_dict"][key]), key
    assert resumed.pd_amed.distilled

    # --eval-only from the saved directory, through the command line, with the distilled AMED sampler
    capsys.readouterr()
    argv = ["--trainer", f"{host}PD", "--output-dir", str(tmp_path / "eval"), "--eval-only",
            "--model-dir", str(out), "--load-epoch", "2", "--seed", "1"] + cli_opts(cfg)
    assert train_command.main(argv) == 0
    log = capsys.readouterr().out
    assert "* accuracy:" in log
    assert "sampling with dpmpp_2m instead" not in log


def test_one_training_distils_amed_for_every_listed_nfe_and_evaluates_at_each(world, tmp_path, capsys):
    """Figure 4: a model trained at NFE 3 is evaluated at NFE 1 with the predictor distilled for it."""
    out = tmp_path / "run"
    nfes = ["TRAINER.PD.AMED.NFES", [1, 3]]
    trainer = build(make_cfg(world, "CoCoOpPD", out, ["TRAINER.PD.NFE", 3] + nfes, epochs=1))
    trainer.train()
    assert "(NFE=1)" in capsys.readouterr().out
    evaluator = build(make_cfg(world, "CoCoOpPD", tmp_path / "eval", ["TRAINER.PD.NFE", 1] + nfes, epochs=1))
    evaluator.load_model(str(out), epoch=1)
    sampler, predictor = evaluator.pd_sampler()
    assert sampler == "amed" and predictor.nfe == 1
    assert torch.equal(predictor.head_r.weight, trainer.pd_amed.predictor(1).head_r.weight)
    assert predictor.head_r.weight.abs().sum() > 0  # distilled, not the fresh zero-initialised head
    calls = count_calls(evaluator.pd_generator)
    evaluator.set_model_mode("eval")
    with torch.no_grad():
        evaluator.model_inference(first_batch(evaluator)[0])
    assert len(calls) == 1
    with pytest.raises(ValueError, match=r"NFE = 2 has no AMED predictor"):
        build(make_cfg(world, "CoCoOpPD", tmp_path / "bad", ["TRAINER.PD.NFE", 2] + nfes))
    other = build(make_cfg(world, "CoCoOpPD", tmp_path / "other", ["TRAINER.PD.NFE", 2], epochs=1))
    with pytest.raises(ValueError, match=r"predictors for NFE \[1, 3\], TRAINER.PD.AMED.NFES builds \[2\]"):
        other.load_model(str(out), epoch=1)


# ---------------------------------------------------------------------- a third-party trainer
class ThirdPartyPromptLearner(nn.Module):
    """Someone else's CoCoOp: upstream attribute names, its own code."""

    def __init__(self, classnames, clip_model, n_ctx=4):
        super().__init__()
        width, vis_dim = clip_model.ln_final.weight.shape[0], clip_model.visual.output_dim
        self.ctx = nn.Parameter(torch.randn(n_ctx, width) * 0.02)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, vis_dim // 16)), ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(vis_dim // 16, width)),
        ]))
        tokenized, _ = tokenize_class_prompts(" ".join(["X"] * n_ctx), classnames)
        prefix, suffix = split_prompt_embeddings(clip_model.token_embedding, tokenized, n_ctx)
        self.register_buffer("token_prefix", prefix)
        self.register_buffer("token_suffix", suffix)
        self.tokenized_prompts = tokenized


class ThirdPartyCLIP(nn.Module):
    def __init__(self, classnames, clip_model):
        super().__init__()
        self.prompt_learner = ThirdPartyPromptLearner(classnames, clip_model)
        self.tokenized_prompts = self.prompt_learner.tokenized_prompts
        self.image_encoder = clip_model.visual
        self.text_encoder = clip_model  # the CLIP model itself holds transformer, ln_final, text_projection
        self.logit_scale = clip_model.logit_scale

    def encode_text(self, ctx):  # ctx [n_ctx, D] -> [K, E], full 77 tokens, upstream's TextEncoder
        learner = self.prompt_learner
        n_cls = learner.token_prefix.shape[0]
        x = torch.cat([learner.token_prefix, ctx.expand(n_cls, -1, -1), learner.token_suffix], dim=1)
        x = (x + self.text_encoder.positional_embedding).permute(1, 0, 2)
        x = self.text_encoder.transformer(x).permute(1, 0, 2)
        x = self.text_encoder.ln_final(x)
        return x[torch.arange(n_cls), self.tokenized_prompts.argmax(-1)] @ self.text_encoder.text_projection

    def forward(self, image, label=None):
        features = self.image_encoder(image)
        features = features / features.norm(dim=-1, keepdim=True)
        shifted = self.prompt_learner.ctx + self.prompt_learner.meta_net(features).unsqueeze(1)  # [B, n, D]
        logits = []
        for ctx_i, feature_i in zip(shifted, features):  # upstream's per-image loop
            text = self.encode_text(ctx_i)
            logits.append(self.logit_scale.exp() * feature_i @ (text / text.norm(dim=-1, keepdim=True)).t())
        logits = torch.stack(logits)
        return F.cross_entropy(logits, label) if self.prompt_learner.training else logits


class ThirdPartyCoCoOp(TrainerX):
    """A minimal Dassl trainer written against the Dassl API only."""

    def build_model(self):
        clip_model = load_clip_from_cfg(self.cfg).float()
        self.model = ThirdPartyCLIP(self.dm.dataset.classnames, clip_model).to(self.device)
        for name, param in self.model.named_parameters():
            param.requires_grad_("prompt_learner" in name)
        self.optim = build_optimizer(self.model.prompt_learner, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("prompt_learner", self.model.prompt_learner, self.optim, self.sched)

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        loss = self.model(image, label)
        self.model_backward_and_update(loss)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return {"loss": loss.item()}

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)


ThirdPartyCoCoOpPD = DiffusionPromptWrapper.register(ThirdPartyCoCoOp)


def count_calls(module: nn.Module) -> list:
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_third_party_trainer_is_wrapped_and_samples_with_exactly_nfe_calls(world, tmp_path, capsys):
    assert TRAINER_REGISTRY.get("ThirdPartyCoCoOpPD") is ThirdPartyCoCoOpPD
    assert issubclass(ThirdPartyCoCoOpPD, ThirdPartyCoCoOp)
    opts = ["TRAINER.PD.NFE", 3, "TRAINER.PD.TEST_SAMPLES", 2, "TRAINER.PD.AMED.DISTILL_ITERS", 0]
    cfg = make_cfg(world, "ThirdPartyCoCoOpPD", tmp_path / "run", opts, epochs=1, batch=4)
    trainer = build(cfg)
    assert isinstance(trainer.pd_adapter, CoCoOpAdapter)  # found by the model's layout
    assert trainer.pd_cond_net is trainer.model.prompt_learner.meta_net
    trainer.train()
    log = capsys.readouterr().out
    assert "Prompt diffusion: adapter CoCoOp" in log
    assert "sampling with dpmpp_2m instead" in log  # no AMED predictor: the fallback (first met by the
    assert "held-out: fit" in log                   # per-epoch diagnosis), said once

    images, _ = first_batch(trainer)
    calls = count_calls(trainer.pd_generator)
    trainer.set_model_mode("eval")
    with torch.no_grad():
        trainer.pd_reset_noise()
        logits = trainer.model_inference(images)
        assert len(calls) == 3 * 2  # NFE per Monte-Carlo sample
        assert "sampling with dpmpp_2m instead" not in capsys.readouterr().out  # said once
        trainer.pd_reset_noise()
        again = trainer.model_inference(images)
        trainer.pd_reset_noise()
        halves = torch.cat([trainer.model_inference(images[:2]), trainer.model_inference(images[2:])])
    assert logits.shape == (len(images), len(CLASSNAMES))
    assert torch.equal(logits, again)  # the same seeds give the same logits
    torch.testing.assert_close(halves, logits, rtol=1e-5, atol=1e-5)  # seeded per sample, not per batch
    assert trainer.test() == trainer.test()

    # the checkpoint describes its generator: another architecture is refused, naming what differs
    other = build(make_cfg(world, "ThirdPartyCoCoOpPD", tmp_path / "other", opts + ["TRAINER.PD.DENOISER.LAYERS", 2]))
    with pytest.raises(ValueError, match=r"generator differs .*'layers': \(1, 2\)"):
        other.load_model(str(tmp_path / "run"), epoch=1)


def test_evaluation_is_reproducible_and_depends_on_the_noise_seed(world, tmp_path):
    cfg = make_cfg(world, "CoCoOpPD", tmp_path / "run", ["TRAINER.PD.SAMPLER", "ddpm", "TRAINER.PD.NFE", 4])
    trainer = build(cfg)
    with torch.no_grad():  # a trained-looking denoiser: random output maps instead of the zero init
        for proj in trainer.pd_generator.net.proj_out.values():
            proj.weight.normal_(std=0.5)
    images, _ = first_batch(trainer)
    trainer.set_model_mode("eval")
    calls = count_calls(trainer.pd_generator)
    with torch.no_grad():
        trainer.pd_reset_noise()
        first = trainer.model_inference(images)
        trainer.pd_reset_noise()
        second = trainer.model_inference(images)
        third = trainer.model_inference(images)  # the next samples of the sequence draw other noise
    assert len(calls) == 3 * 4
    assert torch.equal(first, second) and not torch.equal(first, third)

    def sampled_prompts(noise_seed: int, noise_scale: float = 1.0, sampler: str = "ddpm"):
        trainer.cfg.defrost()
        trainer.cfg.TRAINER.PD.NOISE_SEED, trainer.cfg.TRAINER.PD.NOISE_SCALE = noise_seed, noise_scale
        trainer.cfg.TRAINER.PD.SAMPLER = sampler
        trainer.pd_reset_noise()
        with torch.no_grad():
            features = trainer.pd_adapter.image_features(images)
            return trainer.pd_generate(trainer.pd_condition(features), trainer.pd_host_prompts(features), 0)["text"]

    # equal NOISE_SEEDs give identical prompts, different ones different prompts ...
    assert torch.equal(sampled_prompts(7), sampled_prompts(7)) and not torch.allclose(sampled_prompts(7), sampled_prompts(0))
    # ... unless the start noise's scale NOISE_SCALE is 0 and the sampler an ODE solver (no ancestral noise)
    assert torch.equal(sampled_prompts(7, 0.0, "dpmpp_2m"), sampled_prompts(0, 0.0, "dpmpp_2m"))
    assert not torch.allclose(sampled_prompts(7, 1.0, "dpmpp_2m"), sampled_prompts(0, 1.0, "dpmpp_2m"))


# ---------------------------------------------------------------------- the training step
def test_overfitting_lowers_every_sample_ce_and_vstar_is_detached(world, tmp_path):
    cfg = make_cfg(world, "CoCoOpPD", tmp_path / "run", ["TRAINER.PD.HOST_LOSS_WEIGHT", 0.0], batch=4)
    trainer = build(cfg)
    trainer.set_model_mode("train")
    images, labels = first_batch(trainer)
    adapter = trainer.pd_adapter
    features = adapter.image_features(images)
    with torch.no_grad():
        center = trainer.pd_host_prompts(features)  # CoCoOp: ctx + Meta-Net(f), per image
    targets = trainer.pd_overfit(images, labels, features, center)
    with torch.no_grad():
        before = F.cross_entropy(adapter.logits(images, center, features), labels, reduction="none")
        after = F.cross_entropy(adapter.logits(images, targets, features), labels, reduction="none")
    assert (after < before).all(), (before, after)
    assert not any(t.requires_grad for t in targets.values())

    # one training step with the diffusion loss alone: the shared context gets no gradient through V*
    trainer.cfg.defrost()
    trainer.cfg.TRAINER.PD.CE_WEIGHT = 0.0
    ctx_before = trainer.model.prompt_learner.ctx.detach().clone()
    denoiser_before = [p.detach().clone() for p in trainer.pd_generator.parameters()]
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, 2
    summary = trainer.forward_backward(next(iter(trainer.train_loader_x)))
    assert set(summary) == {"loss", "loss_ce", "loss_gen", "acc"}
    ctx_grad = trainer.model.prompt_learner.ctx.grad
    assert ctx_grad is None or not ctx_grad.any()
    assert any(not torch.equal(p, q) for p, q in zip(trainer.pd_generator.parameters(), denoiser_before))
    assert trainer.model.prompt_learner.meta_net.linear2.weight.grad is not None  # π is trained through the denoiser

    # the CE term reaches the host's prompts through V_h (V̂ = V_h + residual, V_h attached)
    trainer.cfg.TRAINER.PD.CE_WEIGHT = 1.0
    trainer.forward_backward(next(iter(trainer.train_loader_x)))
    assert trainer.model.prompt_learner.ctx.grad is not None and trainer.model.prompt_learner.ctx.grad.abs().sum() > 0
    assert not torch.equal(trainer.model.prompt_learner.ctx, ctx_before)


def test_with_the_host_loss_on_the_host_is_trained_by_it_alone(world, tmp_path):
    """HOST_LOSS_WEIGHT 1: the CE of Eq. 8 trains the denoiser only, so the host's parameters get
    exactly the gradient of the host's own loss (not two cross-entropies)."""
    cfg = make_cfg(world, "CoCoOpPD", tmp_path / "run", ["TRAINER.PD.BETA", 0.0], batch=4)
    trainer = build(cfg)
    trainer.set_model_mode("train")
    batch = next(iter(trainer.train_loader_x))
    learner = trainer.model.prompt_learner
    trainer.model_zero_grad()
    trainer.pd_adapter.host_loss(trainer.parse_batch_train(batch)).backward()
    expected = [learner.ctx.grad.clone(), learner.meta_net.linear2.weight.grad.clone()]
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, 2
    summary = trainer.forward_backward(batch)
    assert summary["loss_ce"] > 0 and "loss_host" in summary
    torch.testing.assert_close(learner.ctx.grad, expected[0])
    torch.testing.assert_close(learner.meta_net.linear2.weight.grad, expected[1])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.pd_generator.parameters())


def test_calibration_drops_a_residual_unrelated_to_the_overfitted_ones(world, tmp_path):
    """A generator whose residuals have nothing to do with the overfitted ones (random output maps)
    gets a gain near 0, so its prompts come back to the host's; the gain travels with the checkpoint."""
    cfg = make_cfg(world, "CoCoOpPD", tmp_path / "run", ["TRAINER.PD.SAMPLER", "dpmpp_2m"])
    trainer = build(cfg)
    with torch.no_grad():
        for proj in trainer.pd_generator.net.proj_out.values():
            proj.weight.normal_(std=0.5)
    images, _ = first_batch(trainer)
    trainer.set_model_mode("eval")
    with torch.no_grad():
        host = trainer.pd_adapter.logits(images, trainer.pd_host_prompts(trainer.pd_adapter.image_features(images)))
        trainer.pd_reset_noise()
        raw = trainer.model_inference(images)
    gains = trainer.pd_calibrate()
    assert 0.0 <= gains["text"] < 0.2, gains
    assert float(trainer.pd_generator.text_gain) == pytest.approx(gains["text"])
    with torch.no_grad():
        trainer.pd_reset_noise()
        calibrated = trainer.model_inference(images)
    assert (calibrated - host).abs().max() < 0.5 * (raw - host).abs().max()


def test_training_ends_with_a_calibrated_gain_that_eval_only_loads(world, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = make_cfg(world, "CoCoOpPD", out, ["TRAINER.PD.SAMPLER", "dpmpp_2m", "TRAINER.PD.AMED.DISTILL_ITERS", 0])
    trainer = build(cfg)
    trainer.train()
    assert "residual gain calibrated on 24 held-out val images" in capsys.readouterr().out
    gain = float(trainer.pd_generator.text_gain)
    assert 0.0 <= gain <= 1.0
    saved = torch.load(out / "pd_generator" / "model.pth.tar-2", map_location="cpu", weights_only=True)
    assert float(saved["state_dict"]["text_gain"]) == pytest.approx(gain)
    evaluator = build(cfg)
    evaluator.load_model(str(out), epoch=2)
    assert float(evaluator.pd_generator.text_gain) == pytest.approx(gain)
    uncalibrated = build(make_cfg(world, "CoCoOpPD", tmp_path / "raw", ["TRAINER.PD.CALIBRATE", False,
                                                                        "TRAINER.PD.AMED.DISTILL_ITERS", 0]))
    uncalibrated.train()
    assert "residual gain calibrated" not in capsys.readouterr().out
    assert float(uncalibrated.pd_generator.text_gain) == 1.0


def test_cached_mode_overfits_each_sample_once_per_refresh(world, tmp_path, capsys):
    opts = ["TRAINER.PD.OVERFIT.MODE", "cached", "TRAINER.PD.OVERFIT.REFRESH", 2, "TRAINER.PD.AMED.DISTILL_ITERS", 0,
            "TRAINER.PD.COND", "image_feature", "TRAINER.PD.DIAGNOSE_IMAGES", 0, "TRAINER.PD.CALIBRATE", False]
    trainer = build(make_cfg(world, "CoOpPD", tmp_path / "run", opts))
    assert trainer.pd_cond_net is None and "pd_meta_net" not in trainer.get_model_names()  # π = the CLIP feature
    overfitted = []
    overfit = trainer.pd_overfit

    def counting_overfit(images, labels, features, center, first_grad=None):
        overfitted.append(len(images))
        return overfit(images, labels, features, center, first_grad=first_grad)

    trainer.pd_overfit = counting_overfit
    trainer.train()  # 2 epochs, refresh every 2: one overfitting per sample
    assert "overfitting cached" in capsys.readouterr().out
    assert sum(overfitted) == len(trainer.train_loader_x.dataset)


# ---------------------------------------------------------------------- switched off, host checkpoints, config
def test_disabled_wrapper_gives_the_host_logits_to_the_bit(world, tmp_path):
    host = build(make_cfg(world, "CoCoOp", tmp_path / "host"))
    wrapped = build(make_cfg(world, "CoCoOpPD", tmp_path / "pd", ["TRAINER.PD.ENABLE", False]))
    assert wrapped.get_model_names() == host.get_model_names()
    images, _ = first_batch(host)
    host.set_model_mode("eval")
    wrapped.set_model_mode("eval")
    with torch.no_grad():
        assert torch.equal(wrapped.model_inference(images), host.model_inference(images))


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_a_generator_that_learned_nothing_gives_the_host_logits(host, world, tmp_path):
    """The untrained denoiser predicts a zero residual at every step, so the sampled prompt is the
    host's own (CoCoOp: ctx + Meta-Net(f) per image) and PD's logits are the host's."""
    host_trainer = build(make_cfg(world, host, tmp_path / "host"))
    wrapped = build(make_cfg(world, f"{host}PD", tmp_path / "pd", ["TRAINER.PD.SAMPLER", "dpmpp_2m"]))
    images, _ = first_batch(host_trainer)
    host_trainer.set_model_mode("eval")
    wrapped.set_model_mode("eval")
    with torch.no_grad():
        torch.testing.assert_close(wrapped.model_inference(images), host_trainer.model_inference(images),
                                   rtol=1e-5, atol=1e-5)


def test_a_pd_trained_model_evaluates_with_pd_switched_off(world, tmp_path):
    """``TRAINER.PD.ENABLE False`` on a run trained with PD on: the host prompt alone (the
    ``[generated=False]`` rows), from the same checkpoint, with the host's trained weights."""
    out = tmp_path / "pd"
    opts = ["TRAINER.PD.AMED.DISTILL_ITERS", 0, "TRAINER.PD.SAMPLER", "dpmpp_2m", "TRAINER.PD.CALIBRATE", False,
            "TRAINER.PD.DIAGNOSE_IMAGES", 0]
    trained = build(make_cfg(world, "CoCoOpPD", out, opts, epochs=1))
    trained.train()
    host_only = build(make_cfg(world, "CoCoOpPD", tmp_path / "eval", opts + ["TRAINER.PD.ENABLE", False]))
    host_only.load_model(str(out), epoch=1)
    torch.testing.assert_close(host_only.model.prompt_learner.ctx, trained.model.prompt_learner.ctx, rtol=0, atol=0)
    images, _ = first_batch(trained)
    trained.set_model_mode("eval")
    host_only.set_model_mode("eval")
    with torch.no_grad():  # the trained model's own host prompt V_h gives the same logits
        center = trained.pd_host_prompts(trained.pd_adapter.image_features(images))
        expected = trained.pd_adapter.logits(images, center)
        torch.testing.assert_close(host_only.model_inference(images), expected, rtol=1e-5, atol=1e-5)
    assert 0.0 <= host_only.test() <= 100.0


def test_a_label_free_target_trains_and_test_time_tuning_evaluates_the_trained_model(world, tmp_path, capsys):
    """``OVERFIT.TARGET agreement``: V* needs no label; ``INFERENCE tune`` on the PD-trained model
    tunes every test image from its host prompt with that target (the generator unused), and equals
    the logits at the prompt ``pd_overfit`` finds without labels."""
    out = tmp_path / "pd"
    opts = ["TRAINER.PD.AMED.DISTILL_ITERS", 0, "TRAINER.PD.SAMPLER", "dpmpp_2m", "TRAINER.PD.DIAGNOSE_IMAGES", 0,
            "TRAINER.PD.OVERFIT.TARGET", "agreement", "TRAINER.PD.OVERFIT.ITERS", 2, "TRAINER.PD.OVERFIT.LR", 0.01]
    trained = build(make_cfg(world, "CoCoOpPD", out, opts, epochs=1))
    trained.train()
    assert "target agreement, I=2, sign steps of lr=0.01" in capsys.readouterr().out
    tuned = build(make_cfg(world, "CoCoOpPD", tmp_path / "eval", opts + ["TRAINER.PD.INFERENCE", "tune"]))
    tuned.load_model(str(out), epoch=1)
    tuned.set_model_mode("eval")
    images, labels = first_batch(trained)
    with torch.no_grad():
        features = tuned.pd_adapter.image_features(images)
        center = tuned.pd_host_prompts(features)
        host_logits = tuned.pd_adapter.logits(images, center, features)
        expected = tuned.pd_adapter.logits(images, tuned.pd_overfit(images, None, features, center), features)
        logits = tuned.model_inference(images)
    torch.testing.assert_close(logits, expected)
    assert not torch.allclose(logits, host_logits)  # tuning moved the prompts
    # the agreement target raised every image's log-sum-exp over the classes
    assert (torch.logsumexp(logits, 1) > torch.logsumexp(host_logits, 1)).all()
    assert 0.0 <= tuned.test() <= 100.0
    assert "test-time tuning of every test image" in capsys.readouterr().out


def test_removing_the_class_mean_trains_on_what_varies_within_each_class(world, tmp_path):
    """``OVERFIT.REMOVE_CLASS_MEAN``: every training sample updates its class's running mean residual
    once per step, and the generator's targets are the residuals less that mean."""
    opts = ["TRAINER.PD.AMED.DISTILL_ITERS", 0, "TRAINER.PD.SAMPLER", "dpmpp_2m", "TRAINER.PD.DIAGNOSE_IMAGES", 0,
            "TRAINER.PD.CALIBRATE", False, "TRAINER.PD.OVERFIT.REMOVE_CLASS_MEAN", True]
    trainer = build(make_cfg(world, "CoCoOpPD", tmp_path / "run", opts, epochs=1))
    trainer.train()
    seen = len(trainer.train_loader_x) * trainer.cfg.DATALOADER.TRAIN_X.BATCH_SIZE
    assert int(trainer._pd_class_counts.sum()) == seen and (trainer._pd_class_counts > 0).all()
    means = trainer._pd_class_means["text"]  # [K, n, w]: the classes' residuals differ
    assert means.shape[0] == len(CLASSNAMES) and not torch.allclose(means[0], means[1])


def test_unwrapped_host_checkpoint_loads_into_the_wrapped_trainer(world, tmp_path, capsys):
    out = tmp_path / "host"
    host = build(make_cfg(world, "CoCoOp", out, epochs=1))
    host.train()
    wrapped = build(make_cfg(world, "CoCoOpPD", tmp_path / "pd", ["TRAINER.PD.SAMPLER", "dpmpp_2m"]))
    capsys.readouterr()
    wrapped.load_model(str(out), epoch=1)
    log = capsys.readouterr().out
    assert "no pd_generator checkpoint" in log and "freshly initialised" in log
    torch.testing.assert_close(wrapped.model.prompt_learner.ctx, host.model.prompt_learner.ctx, rtol=0, atol=0)
    assert 0.0 <= wrapped.test() <= 100.0


def test_missing_pd_keys_are_added_by_the_wrapped_trainer(world, tmp_path):
    cfg = make_cfg(world, "CoOpPD", tmp_path / "run").clone()
    cfg.defrost()
    del cfg.TRAINER["PD"]  # a user's own extend_cfg that knows nothing of prompt diffusion
    cfg.freeze()
    trainer = build_trainer(cfg)
    assert trainer.cfg.TRAINER.PD.NFE == 5 and trainer.cfg.TRAINER.PD.DENOISER.LAYERS == 12


@pytest.mark.parametrize("key, value, message", [
    ("NFE", 0, r"TRAINER.PD.NFE = 0 is out of range; allowed: an integer >= 1"),
    ("NFE", 101, r"TRAINER.PD.NFE = 101 is out of range; allowed: 1 <= NFE <= TRAINER.PD.STEPS \(100\)"),
    ("SAMPLER", "euler", r"TRAINER.PD.SAMPLER = 'euler' is not allowed; choose one of \['ddpm', 'ddim'"),
    ("OVERFIT.MODE", "lazy", r"TRAINER.PD.OVERFIT.MODE = 'lazy' is not allowed; choose one of \['online', 'cached'\]"),
    ("ADAPTER", "Maple", r"TRAINER.PD.ADAPTER = 'Maple' is not allowed; choose one of \['auto', 'CoCoOp'"),
    ("OVERFIT.LR", 0.0, r"TRAINER.PD.OVERFIT.LR = 0.0 is out of range; allowed: a number > 0"),
    ("GENERATOR", "diffusers", r"TRAINER.PD.GENERATOR = 'diffusers' is not allowed; choose one of \['diffusion', 'mlp'"),
    ("VAE.KL_WEIGHT", -1.0, r"TRAINER.PD.VAE.KL_WEIGHT = -1.0 is out of range; allowed: a number >= 0.0"),
    ("OVERFIT.TARGET", "margin", r"TRAINER.PD.OVERFIT.TARGET = 'margin' is not allowed; choose one of \['label', "),
    ("OVERFIT.LABEL_WEIGHT", 0.5, r"with TARGET 'label' it must be 0"),
    ("INFERENCE", "tune", r"INFERENCE 'tune' tunes each test image without its label: it needs a label-free"),
    ("OVERFIT.REMOVE_CLASS_MEAN", 1, r"TRAINER.PD.OVERFIT.REMOVE_CLASS_MEAN = 1 must be True or False"),
])
def test_bad_pd_values_are_rejected_with_the_key_and_allowed_values(key, value, message):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    node = cfg.TRAINER.PD
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    with pytest.raises(ValueError, match=message):
        validate_pd_cfg(cfg)


def test_bad_pd_value_stops_the_trainer_at_start(world, tmp_path):
    with pytest.raises(ValueError, match="TRAINER.PD.NFE = 0"):
        build_trainer(make_cfg(world, "CoOpPD", tmp_path / "run", ["TRAINER.PD.NFE", 0]))
