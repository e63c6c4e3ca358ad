"""The Dassl shell of prompt diffusion (``DiffusionPromptWrapper``) over the reference trainers and a
third-party trainer, and the ``PromptDiffusion`` module it holds (tiny CLIP, generated images)."""
import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prompt_diffusion.trainers  # noqa: F401  (registers the trainers and their PD variants)
from helpers import inference, make_image_folder, register_tiny_folder_dataset, small_prompt_learners
from prompt_diffusion import DiffusionPromptWrapper
from prompt_diffusion.adapters import CoCoOpAdapter, CoOpAdapter
from prompt_diffusion.after_training import calibrate, generator_fit
from prompt_diffusion.backbones import build_tiny_clip, load_clip_from_cfg, save_clip
from prompt_diffusion.clip_prompting import split_prompt_embeddings
from prompt_diffusion.commands import train as train_command
from prompt_diffusion.config import extend_cfg, validate_pd_cfg
from prompt_diffusion.engine import (
    TRAINER_REGISTRY, TrainerX, build_lr_scheduler, build_optimizer, build_trainer, get_cfg_default, set_random_seed,
)
from prompt_diffusion.trainers import cocoop, coop, ivlp, vpt
from prompt_diffusion.trainers._common import tokenize_class_prompts
from prompt_diffusion.wrapper import PD_MODEL_NAME, labelled_batches

CLASSNAMES = ["blue", "green", "red", "yellow"]  # folder names, sorted
HOSTS = {"CoOp": coop.CoOp, "CoCoOp": cocoop.CoCoOp, "VPT": vpt.VPT, "IVLP": ivlp.IVLP}
QUICK = ["TRAINER.PD.AMED.DISTILL_ITERS", 0, "TRAINER.PD.SAMPLER", "dpmpp_2m", "TRAINER.PD.DIAGNOSE_IMAGES", 0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pd_wrapper")
    make_image_folder(root / "images", CLASSNAMES, per_class=6)
    save_clip(build_tiny_clip(), root / "tiny_clip.pt")
    return root


def make_cfg(world: Path, trainer: str, output: Path, opts=(), epochs: int = 2, batch: int = 2):
    """A frozen config for ``trainer`` on the tiny image folder with a tiny generator."""
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
    pd.GENERATOR_SIZE.LAYERS, pd.GENERATOR_SIZE.HEADS, pd.GENERATOR_SIZE.WIDTH = 1, 2, 32
    pd.AMED.DISTILL_ITERS = 2
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    return cfg


def cli_opts(cfg) -> list:
    """The ``KEY VALUE`` opts that rebuild ``cfg`` through ``prompt-diffusion train``."""
    keys = ["DATASET.NAME", "DATASET.ROOT", "MODEL.BACKBONE.NAME", "MODEL.BACKBONE.PATH", "INPUT.SIZE",
            "INPUT.TRANSFORMS", "DATALOADER.NUM_WORKERS", "TRAINER.COOP.N_CTX", "TRAINER.COCOOP.N_CTX",
            "TRAINER.VPT.PROMPT_DEPTH_VISION", "TRAINER.IVLP.PROMPT_DEPTH_TEXT", "TRAINER.IVLP.PROMPT_DEPTH_VISION",
            "TRAINER.PD.GENERATOR_SIZE.LAYERS", "TRAINER.PD.GENERATOR_SIZE.HEADS", "TRAINER.PD.GENERATOR_SIZE.WIDTH"]
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


def eval_batch(trainer) -> dict:
    """The first batch of the test loader."""
    return next(iter(trainer.test_loader))


def pd_state(trainer) -> dict:
    return {key: value.detach().clone() for key, value in trainer.pd.state_dict().items() if torch.is_tensor(value)}


def count_calls(module: nn.Module) -> list:
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def random_output_maps(trainer) -> None:
    """A trained-looking denoiser: random output maps instead of the zero initialisation."""
    with torch.no_grad():
        for proj in trainer.pd.generator.net.proj_out.values():
            proj.weight.normal_(std=0.5)


# ---------------------------------------------------------------------- registration
@pytest.mark.parametrize("host", sorted(HOSTS))
def test_pd_variant_is_a_registered_subclass_of_its_host_holding_one_module(host, world, tmp_path):
    host_cls = HOSTS[host]
    registered = TRAINER_REGISTRY.get(f"{host}PD")
    assert registered.__name__ == f"{host}PD"
    assert issubclass(registered, host_cls) and issubclass(registered, DiffusionPromptWrapper)
    assert DiffusionPromptWrapper.register(host_cls, adapter=registered.pd_adapter_class) is registered  # again: no-op
    with pytest.raises(KeyError, match=f"{host}PD' is already registered .*another adapter"):
        DiffusionPromptWrapper.register(host_cls)
    with pytest.raises(TypeError, match="already a prompt-diffusion trainer"):
        DiffusionPromptWrapper.register(registered)
    # the host trainer gains one attribute, the PD module, registered as one model beside the host's
    pd_trainer = build(make_cfg(world, f"{host}PD", tmp_path / "pd", QUICK))
    host_trainer = build(make_cfg(world, host, tmp_path / "host", QUICK))
    assert set(vars(pd_trainer)) - set(vars(host_trainer)) == {"pd"}
    assert pd_trainer.get_model_names() == host_trainer.get_model_names() + [PD_MODEL_NAME]
    host_parameters = {id(p) for p in pd_trainer.model.parameters()}
    assert not any(id(p) in host_parameters for p in pd_trainer.pd.parameters())  # the host's model is not PD's


# ---------------------------------------------------------------------- train, checkpoint, resume, eval-only
@pytest.mark.parametrize("host", sorted(HOSTS))
def test_train_checkpoint_resume_and_eval_only(host, world, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = make_cfg(world, f"{host}PD", out)
    trainer = build(cfg)
    trainer.train()
    assert trainer.pd.amed.distilled and bool(trainer.pd.calibrated)
    for name in trainer.get_model_names():
        assert (out / name / "model.pth.tar-1").is_file() and (out / name / "model.pth.tar-2").is_file()
    saved = torch.load(out / PD_MODEL_NAME / "model.pth.tar-2", map_location="cpu", weights_only=True)["state_dict"]
    assert bool(saved["amed.distilled_flag"]) and bool(saved["calibrated"])  # distilled and calibrated: in the last epoch
    description = saved["generator._extra_state"]  # the generator describes itself
    assert description["kind"] == "diffusion" and description["schedule"] == "scaled_linear"
    assert "condition_net.linear1.weight" in saved  # π: a Meta-Net of PD's own (COND meta_net), for every host

    # the diffusion loss falls: 1.0 (the shared prompts; untrained zero-initialised output) -> epoch 1 -> epoch 2
    evaluator = build(cfg)
    evaluator.set_model_mode("eval")

    def fit() -> float:
        return generator_fit(evaluator.pd, labelled_batches(evaluator, evaluator.train_loader_x, training=True), draws=2)

    assert fit() == pytest.approx(1.0)
    fits = []
    for epoch in (1, 2):
        evaluator.load_model(str(out), epoch=epoch)
        fits.append(fit())
    assert fits[0] < 1.0 and fits[1] < 1.0 and fits[1] < fits[0] + 0.02, fits

    # resume: every registered model (the PD module included) continues from epoch 2
    resumed = build(cfg)
    assert resumed.resume_model_if_exist(str(out)) == 2
    for key, value in pd_state(resumed).items():
        assert torch.equal(value.cpu(), saved[key]), key
    assert resumed.pd.amed.distilled

    # --eval-only from the saved directory, through the command line, with the distilled AMED sampler
    capsys.readouterr()
    argv = ["--trainer", f"{host}PD", "--output-dir", str(tmp_path / "eval"), "--eval-only",
            "--model-dir", str(out), "--load-epoch", "2", "--seed", "1"] + cli_opts(cfg)
    assert train_command.main(argv) == 0
    assert (tmp_path / "eval" / "predictions_test.json").is_file()


def test_one_training_distils_amed_for_every_listed_nfe_and_evaluates_at_each(world, tmp_path):
    """Figure 4: a model trained at NFE 3 is evaluated at NFE 1 with the predictor distilled for it."""
    out = tmp_path / "run"
    nfes = ["TRAINER.PD.AMED.NFES", [1, 3]]
    trainer = build(make_cfg(world, "CoCoOpPD", out, ["TRAINER.PD.NFE", 3] + nfes, epochs=1))
    trainer.train()
    evaluator = build(make_cfg(world, "CoCoOpPD", tmp_path / "eval", ["TRAINER.PD.NFE", 1] + nfes, epochs=1))
    evaluator.load_model(str(out), epoch=1)
    sampler, predictor = evaluator.pd.sampler()
    assert sampler == "amed" and predictor.nfe == 1
    assert torch.equal(predictor.head_r.weight, trainer.pd.amed.predictor(1).head_r.weight)
    assert predictor.head_r.weight.abs().sum() > 0  # distilled, not the fresh zero-initialised head
    calls = count_calls(evaluator.pd.generator)
    evaluator.set_model_mode("eval")
    inference(evaluator, eval_batch(evaluator))
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


ThirdPartyCoCoOpPD = DiffusionPromptWrapper.register(ThirdPartyCoCoOp)  # no adapter: found by the model's layout


def test_third_party_trainer_is_wrapped_and_each_image_gets_its_own_seeded_prompt(world, tmp_path):
    assert TRAINER_REGISTRY.get("ThirdPartyCoCoOpPD") is ThirdPartyCoCoOpPD
    assert issubclass(ThirdPartyCoCoOpPD, ThirdPartyCoCoOp)
    opts = ["TRAINER.PD.NFE", 3, "TRAINER.PD.TEST_SAMPLES", 2, "TRAINER.PD.AMED.DISTILL_ITERS", 0]
    trainer = build(make_cfg(world, "ThirdPartyCoCoOpPD", tmp_path / "run", opts, epochs=1, batch=4))
    assert isinstance(trainer.pd.adapter, CoCoOpAdapter)  # found by the model's layout
    trainer.train()
    assert trainer.pd.sampler()[0] == "dpmpp_2m"  # no AMED predictor: the fallback

    batch = eval_batch(trainer)
    calls = count_calls(trainer.pd.generator)
    trainer.set_model_mode("eval")
    logits = inference(trainer, batch)
    assert len(calls) == 3 * 2  # NFE per Monte-Carlo sample
    assert logits.shape == (len(batch["label"]), len(CLASSNAMES))
    assert torch.equal(logits, inference(trainer, batch))  # the same seeds give the same logits
    # an image's prompt depends on its dataset index, not on its batch or its place in the evaluation
    order = torch.arange(len(batch["label"])).flip(0)
    shuffled = inference(trainer, {key: value[order] for key, value in batch.items() if torch.is_tensor(value)})
    torch.testing.assert_close(shuffled, logits[order], rtol=1e-5, atol=1e-5)
    halves = torch.cat([inference(trainer, {k: v[:2] for k, v in batch.items() if torch.is_tensor(v)}),
                        inference(trainer, {k: v[2:] for k, v in batch.items() if torch.is_tensor(v)})])
    torch.testing.assert_close(halves, logits, rtol=1e-5, atol=1e-5)
    assert trainer.test() == trainer.test()

    # the checkpoint describes its generator: another architecture is refused, naming what differs
    other = build(make_cfg(world, "ThirdPartyCoCoOpPD", tmp_path / "other", opts + ["TRAINER.PD.GENERATOR_SIZE.LAYERS", 2]))
    with pytest.raises(ValueError, match=r"generator differs .*'layers': \(1, 2\)"):
        other.load_model(str(tmp_path / "run"), epoch=1)


def test_model_inference_without_the_batch_indices_is_an_error(world, tmp_path):
    trainer = build(make_cfg(world, "CoOpPD", tmp_path / "run", QUICK))
    images, _ = first_batch(trainer)
    with pytest.raises(ValueError, match=r"needs the batch's dataset indices"):
        trainer.model_inference(images)


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp_2m"])
def test_evaluation_noise_is_seeded_per_image_and_by_the_noise_seed(sampler, world, tmp_path):
    trainer = build(make_cfg(world, "CoCoOpPD", tmp_path / "run", ["TRAINER.PD.SAMPLER", sampler, "TRAINER.PD.NFE", 4]))
    random_output_maps(trainer)
    batch = eval_batch(trainer)
    trainer.set_model_mode("eval")
    first = inference(trainer, batch)
    moved = {key: value.roll(1, 0) for key, value in batch.items() if torch.is_tensor(value)}
    moved_index = dict(batch, index=batch["index"] + 1)  # the same images under other dataset indices
    assert torch.equal(first, inference(trainer, batch))
    torch.testing.assert_close(inference(trainer, moved), first.roll(1, 0), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(inference(trainer, moved_index), first)  # other indices, other noise

    def sampled_prompts(noise_seed: int):
        trainer.cfg.defrost()
        trainer.cfg.TRAINER.PD.NOISE_SEED = noise_seed
        trainer.cfg.freeze()
        images = trainer.parse_batch_test(batch)[0]
        features = trainer.pd.adapter.image_features(images)
        return trainer.pd.generate(trainer.pd.condition(features), trainer.pd.host_prompts(features), batch["index"])["text"]

    assert torch.equal(sampled_prompts(7), sampled_prompts(7)) and not torch.allclose(sampled_prompts(7), sampled_prompts(0))


# ---------------------------------------------------------------------- the training step
def test_overfitting_lowers_every_sample_ce_and_vstar_is_detached(world, tmp_path):
    cfg = make_cfg(world, "CoCoOpPD", tmp_path / "run", ["TRAINER.PD.HOST_LOSS_WEIGHT", 0.0], batch=4)
    trainer = build(cfg)
    trainer.set_model_mode("train")
    images, labels = first_batch(trainer)
    pd = trainer.pd
    features = pd.adapter.image_features(images)
    with torch.no_grad():
        center = pd.host_prompts(features)  # CoCoOp: ctx + Meta-Net(f), per image
    targets = pd.overfit(images, labels, features, center)
    with torch.no_grad():
        before = F.cross_entropy(pd.adapter.logits(images, center, features), labels, reduction="none")
        after = F.cross_entropy(pd.adapter.logits(images, targets, features), labels, reduction="none")
    assert (after < before).all(), (before, after)
    assert not any(t.requires_grad for t in targets.values())

    # one training step with the generator's loss alone: the shared context gets no gradient through V*
    trainer.cfg.defrost()
    trainer.cfg.TRAINER.PD.CE_WEIGHT = 0.0
    ctx_before = trainer.model.prompt_learner.ctx.detach().clone()
    generator_before = [p.detach().clone() for p in pd.generator.parameters()]
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, 2
    summary = trainer.forward_backward(next(iter(trainer.train_loader_x)))
    assert set(summary) == {"loss", "loss_ce", "loss_gen", "acc"}
    ctx_grad = trainer.model.prompt_learner.ctx.grad
    assert ctx_grad is None or not ctx_grad.any()
    assert any(not torch.equal(p, q) for p, q in zip(pd.generator.parameters(), generator_before))
    assert pd.condition_net.linear2.weight.grad is not None  # π is PD's own, trained through the generator

    # the CE term reaches the host's prompts through V_h (V̂ = V_h + residual, V_h attached)
    trainer.cfg.TRAINER.PD.CE_WEIGHT = 1.0
    trainer.forward_backward(next(iter(trainer.train_loader_x)))
    assert trainer.model.prompt_learner.ctx.grad is not None and trainer.model.prompt_learner.ctx.grad.abs().sum() > 0
    assert not torch.equal(trainer.model.prompt_learner.ctx, ctx_before)


@pytest.mark.parametrize("cond", ["meta_net", "image_feature"])
def test_with_the_host_loss_on_the_host_is_trained_by_it_alone_at_every_step(cond, world, tmp_path):
    """HOST_LOSS_WEIGHT 1: the CE of Eq. 8 and the generator's loss train the PD module only, so at every
    step, once the generator's zero-initialised output maps have moved and pass gradients back to π,
    the host's parameters (CoCoOp's context and Meta-Net) get exactly the gradient of the host's own loss."""
    trainer = build(make_cfg(world, "CoCoOpPD", tmp_path / "run", QUICK + ["TRAINER.PD.COND", cond], batch=4))
    trainer.set_model_mode("train")
    learner = trainer.model.prompt_learner
    trainer.epoch, trainer.num_batches = 0, 100
    for step, batch in zip(range(4), trainer.train_loader_x):
        trainer.model_zero_grad()
        trainer.pd.adapter.host_loss(trainer.parse_batch_train(batch)).backward()
        expected = {name: p.grad.clone() for name, p in learner.named_parameters()}
        trainer.batch_idx = step
        summary = trainer.forward_backward(batch)
        assert summary["loss_gen"] > 0 and "loss_host" in summary
        for name, parameter in learner.named_parameters():
            torch.testing.assert_close(parameter.grad, expected[name], msg=f"step {step}: {name}")
    output_maps = [p for p in trainer.pd.generator.net.proj_out.parameters()]
    assert any(p.abs().sum() > 0 for p in output_maps)  # the generator's output moved: π had a gradient to pass


def test_calibration_drops_a_residual_unrelated_to_the_overfitted_ones(world, tmp_path):
    """A generator whose residuals have nothing to do with the overfitted ones (random output maps)
    gets a gain near 0, so its prompts come back to the host's; the gain travels with the checkpoint."""
    trainer = build(make_cfg(world, "CoCoOpPD", tmp_path / "run", ["TRAINER.PD.SAMPLER", "dpmpp_2m"]))
    random_output_maps(trainer)
    batch = eval_batch(trainer)
    trainer.set_model_mode("eval")
    host = trainer.pd.host_logits(trainer.parse_batch_test(batch)[0])
    raw = inference(trainer, batch)
    gains = calibrate(trainer.pd, labelled_batches(trainer, trainer.val_loader))
    assert 0.0 <= gains["text"] < 0.2, gains
    assert float(trainer.pd.generator.text_gain) == pytest.approx(gains["text"]) and bool(trainer.pd.calibrated)
    calibrated = inference(trainer, batch)
    assert (calibrated - host).abs().max() < 0.5 * (raw - host).abs().max()


def test_training_ends_with_a_calibrated_gain_that_eval_only_loads(world, tmp_path):
    out = tmp_path / "run"
    cfg = make_cfg(world, "CoCoOpPD", out, ["TRAINER.PD.SAMPLER", "dpmpp_2m", "TRAINER.PD.AMED.DISTILL_ITERS", 0])
    trainer = build(cfg)
    trainer.train()
    gain = float(trainer.pd.generator.text_gain)
    assert 0.0 <= gain <= 1.0 and bool(trainer.pd.calibrated)
    saved = torch.load(out / PD_MODEL_NAME / "model.pth.tar-2", map_location="cpu", weights_only=True)
    assert float(saved["state_dict"]["generator.text_gain"]) == pytest.approx(gain)
    evaluator = build(cfg)
    evaluator.load_model(str(out), epoch=2)
    assert float(evaluator.pd.generator.text_gain) == pytest.approx(gain)
    uncalibrated = build(make_cfg(world, "CoCoOpPD", tmp_path / "raw", ["TRAINER.PD.CALIBRATE", False,
                                                                        "TRAINER.PD.AMED.DISTILL_ITERS", 0]))
    uncalibrated.train()
    assert float(uncalibrated.pd.generator.text_gain) == 1.0 and not bool(uncalibrated.pd.calibrated)


def test_a_run_interrupted_before_its_last_steps_finishes_them_on_its_rerun(world, tmp_path, monkeypatch):
    """Interrupted after the last epoch's checkpoint and before AMED and calibration, the same run again
    finishes them and saves them under the last epoch: the result equals an uninterrupted run's, eval
    loads it, and no other checkpoint appears. A rerun of the finished run writes nothing."""
    import prompt_diffusion.wrapper as wrapper_module

    whole = build(make_cfg(world, "CoCoOpPD", tmp_path / "whole", epochs=2))
    whole.train()
    out = tmp_path / "run"
    cfg = make_cfg(world, "CoCoOpPD", out, epochs=2)
    interrupted = build(cfg)
    with monkeypatch.context() as patch:
        patch.setattr(wrapper_module, "_finish", lambda trainer: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            interrupted.train()
    files = sorted(str(p.relative_to(out)) for p in out.rglob("model.pth.tar-*"))
    rerun = build(cfg)
    rerun.train()
    assert sorted(str(p.relative_to(out)) for p in out.rglob("model.pth.tar-*")) == files  # tar-1, tar-2 only
    assert rerun.pd.amed.distilled and bool(rerun.pd.calibrated)
    for key, value in pd_state(whole).items():
        assert torch.equal(value, pd_state(rerun)[key]), key
    evaluator = build(cfg)
    evaluator.load_model(str(out), epoch=2)
    for key, value in pd_state(whole).items():
        assert torch.equal(value, pd_state(evaluator)[key]), key
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("model.pth.tar-*")}
    build(cfg).train()  # the finished run again: nothing to train, distil or calibrate
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model.pth.tar-*")} == stamps


def test_cached_mode_overfits_each_sample_once_per_refresh(world, tmp_path):
    opts = ["TRAINER.PD.OVERFIT.MODE", "cached", "TRAINER.PD.OVERFIT.REFRESH", 2, "TRAINER.PD.COND", "image_feature",
            "TRAINER.PD.CALIBRATE", False] + QUICK
    trainer = build(make_cfg(world, "CoOpPD", tmp_path / "run", opts))
    assert trainer.pd.condition_net is None  # π = the CLIP feature
    overfitted = []
    overfit = trainer.pd.overfit

    def counting_overfit(images, labels, features, center, target=None, first_grad=None):
        overfitted.append(len(images))
        return overfit(images, labels, features, center, target, first_grad)

    trainer.pd.overfit = counting_overfit
    trainer.train()  # 2 epochs, refresh every 2: one overfitting per sample
    assert sum(overfitted) == len(trainer.train_loader_x.dataset)
    assert sorted(trainer.pd._residual_cache) == list(range(len(trainer.train_loader_x.dataset)))


# ---------------------------------------------------------------------- switched off, host checkpoints, config
def test_disabled_wrapper_gives_the_host_logits_to_the_bit(world, tmp_path):
    host = build(make_cfg(world, "CoCoOp", tmp_path / "host"))
    wrapped = build(make_cfg(world, "CoCoOpPD", tmp_path / "pd", ["TRAINER.PD.ENABLE", False]))
    assert wrapped.get_model_names() == host.get_model_names() and wrapped.pd is None
    batch = eval_batch(host)
    host.set_model_mode("eval")
    wrapped.set_model_mode("eval")
    assert torch.equal(inference(wrapped, batch), inference(host, batch))


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_a_generator_that_learned_nothing_gives_the_host_logits(host, world, tmp_path):
    """The untrained denoiser predicts a zero residual at every step, so the sampled prompt is the
    host's own (CoCoOp: ctx + Meta-Net(f) per image) and PD's logits are the host's."""
    host_trainer = build(make_cfg(world, host, tmp_path / "host"))
    wrapped = build(make_cfg(world, f"{host}PD", tmp_path / "pd", ["TRAINER.PD.SAMPLER", "dpmpp_2m"]))
    batch = eval_batch(host_trainer)
    host_trainer.set_model_mode("eval")
    wrapped.set_model_mode("eval")
    torch.testing.assert_close(inference(wrapped, batch), inference(host_trainer, batch), rtol=1e-5, atol=1e-5)


def test_a_pd_trained_model_evaluates_with_pd_switched_off(world, tmp_path):
    """``TRAINER.PD.ENABLE False`` on a run trained with PD on: the host prompt alone (the
    ``[generated=False]`` rows), from the same checkpoint, with the host's trained weights."""
    out = tmp_path / "pd"
    opts = QUICK + ["TRAINER.PD.CALIBRATE", False]
    trained = build(make_cfg(world, "CoCoOpPD", out, opts, epochs=1))
    trained.train()
    host_only = build(make_cfg(world, "CoCoOpPD", tmp_path / "eval", opts + ["TRAINER.PD.ENABLE", False]))
    host_only.load_model(str(out), epoch=1)
    torch.testing.assert_close(host_only.model.prompt_learner.ctx, trained.model.prompt_learner.ctx, rtol=0, atol=0)
    batch = eval_batch(trained)
    trained.set_model_mode("eval")
    host_only.set_model_mode("eval")
    expected = trained.pd.host_logits(trained.parse_batch_test(batch)[0])  # the trained model's own V_h
    torch.testing.assert_close(inference(host_only, batch), expected, rtol=1e-5, atol=1e-5)


def test_a_label_free_target_trains_and_test_time_tuning_evaluates_the_trained_model(world, tmp_path):
    """``OVERFIT.TARGET agreement``: V* needs no label; ``INFERENCE tune`` on the PD-trained model
    tunes every test image from its host prompt with that target (the generator unused), and equals
    the logits at the prompt ``overfit`` finds without labels."""
    out = tmp_path / "pd"
    opts = QUICK + ["TRAINER.PD.OVERFIT.TARGET", "agreement", "TRAINER.PD.OVERFIT.ITERS", 2, "TRAINER.PD.OVERFIT.LR", 0.01]
    trained = build(make_cfg(world, "CoCoOpPD", out, opts, epochs=1))
    trained.train()
    tuned = build(make_cfg(world, "CoCoOpPD", tmp_path / "eval", opts + ["TRAINER.PD.INFERENCE", "tune"]))
    tuned.load_model(str(out), epoch=1)
    tuned.set_model_mode("eval")
    batch = eval_batch(tuned)
    images = tuned.parse_batch_test(batch)[0]
    calls = count_calls(tuned.pd.generator)
    with torch.no_grad():
        features = tuned.pd.adapter.image_features(images)
        center = tuned.pd.host_prompts(features)
        host_logits = tuned.pd.adapter.logits(images, center, features)
        expected = tuned.pd.adapter.logits(images, tuned.pd.overfit(images, None, features, center), features)
    logits = inference(tuned, batch)
    torch.testing.assert_close(logits, expected)
    assert not torch.allclose(logits, host_logits) and calls == []  # tuning moved the prompts; no generator
    # the agreement target raised every image's log-sum-exp over the classes
    assert (torch.logsumexp(logits, 1) > torch.logsumexp(host_logits, 1)).all()


def test_removing_the_class_mean_trains_on_what_varies_within_each_class(world, tmp_path):
    """``RESEARCH.REMOVE_CLASS_MEAN``: every training sample updates its class's running mean residual
    once per step, and the generator's targets are the residuals less that mean; the means are state."""
    opts = QUICK + ["TRAINER.PD.CALIBRATE", False, "TRAINER.PD.RESEARCH.REMOVE_CLASS_MEAN", True]
    trainer = build(make_cfg(world, "CoCoOpPD", tmp_path / "run", opts, epochs=1))
    trainer.train()
    seen = len(trainer.train_loader_x) * trainer.cfg.DATALOADER.TRAIN_X.BATCH_SIZE
    counts, means = trainer.pd.class_count, trainer.pd.class_mean_text  # [K], [K, n, w]
    assert int(counts.sum()) == seen and (counts > 0).all()
    assert means.shape[0] == len(CLASSNAMES) and not torch.allclose(means[0], means[1])
    saved = torch.load(tmp_path / "run" / PD_MODEL_NAME / "model.pth.tar-1", weights_only=True)["state_dict"]
    assert torch.equal(saved["class_mean_text"], means)


def test_unwrapped_host_checkpoint_loads_into_the_wrapped_trainer(world, tmp_path):
    out = tmp_path / "host"
    host = build(make_cfg(world, "CoCoOp", out, epochs=1))
    host.train()
    wrapped = build(make_cfg(world, "CoCoOpPD", tmp_path / "pd", ["TRAINER.PD.SAMPLER", "dpmpp_2m"]))
    fresh = pd_state(wrapped)
    wrapped.load_model(str(out), epoch=1)
    torch.testing.assert_close(wrapped.model.prompt_learner.ctx, host.model.prompt_learner.ctx, rtol=0, atol=0)
    assert all(torch.equal(value, pd_state(wrapped)[key]) for key, value in fresh.items())  # PD stays as built
    (out / "pd_generator").mkdir()  # what an earlier version of prompt diffusion saved
    with pytest.raises(ValueError, match=r"trained by an earlier prompt-diffusion.*retrain it"):
        wrapped.load_model(str(out), epoch=1)


def test_missing_pd_keys_are_added_by_the_wrapped_trainer(world, tmp_path):
    cfg = make_cfg(world, "CoOpPD", tmp_path / "run").clone()
    cfg.defrost()
    del cfg.TRAINER["PD"]  # a user's own extend_cfg that knows nothing of prompt diffusion
    cfg.freeze()
    trainer = build_trainer(cfg)
    assert trainer.cfg.TRAINER.PD.NFE == 5 and trainer.cfg.TRAINER.PD.GENERATOR_SIZE.LAYERS == 12


def test_an_adapter_given_in_code_and_another_in_the_config_is_an_error(world, tmp_path):
    with pytest.raises(ValueError, match=r"TRAINER.PD.ADAPTER = 'CoOp', but the trainer was registered with the CoCoOp"):
        build(make_cfg(world, "CoCoOpPD", tmp_path / "run", ["TRAINER.PD.ADAPTER", "CoOp"]))
    third_party = build(make_cfg(world, "ThirdPartyCoCoOpPD", tmp_path / "other", ["TRAINER.PD.ADAPTER", "CoOp"] + QUICK))
    assert type(third_party.pd.adapter) is CoOpAdapter  # registered without one: the config names it


@pytest.mark.parametrize("key, value, message", [
    ("NFE", 0, r"TRAINER.PD.NFE = 0 is out of range; allowed: an integer >= 1"),
    ("NFE", 101, r"TRAINER.PD.NFE = 101 is out of range; allowed: 1 <= NFE <= TRAINER.PD.STEPS \(100\)"),
    ("SAMPLER", "euler", r"TRAINER.PD.SAMPLER = 'euler' is not allowed; choose one of \['ddpm', 'ddim'"),
    ("OVERFIT.MODE", "lazy", r"TRAINER.PD.OVERFIT.MODE = 'lazy' is not allowed; choose one of \['online', 'cached'\]"),
    ("OVERFIT.STEP_RULE", "normalized", r"TRAINER.PD.OVERFIT.STEP_RULE = 'normalized' is not allowed"),
    ("ADAPTER", "Maple", r"TRAINER.PD.ADAPTER = 'Maple' is not allowed; choose one of \['auto', 'CoCoOp'"),
    ("OVERFIT.LR", 0.0, r"TRAINER.PD.OVERFIT.LR = 0.0 is out of range; allowed: a number > 0"),
    ("GENERATOR", "diffusers", r"TRAINER.PD.GENERATOR = 'diffusers' is not allowed; choose one of \['diffusion', 'mlp'"),
    ("RESEARCH.VAE_KL_WEIGHT", -1.0, r"TRAINER.PD.RESEARCH.VAE_KL_WEIGHT = -1.0 is out of range; allowed: a number >= 0.0"),
    ("OVERFIT.TARGET", "margin", r"TRAINER.PD.OVERFIT.TARGET = 'margin' is not allowed; choose one of \['label', "),
    ("INFERENCE", "tune", r"INFERENCE 'tune' tunes each test image without its label: it needs a label-free"),
    ("RESEARCH.REMOVE_CLASS_MEAN", 1, r"TRAINER.PD.RESEARCH.REMOVE_CLASS_MEAN = 1 must be True or False"),
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


@pytest.mark.parametrize("old, new", [
    ("TRAINER.PD.DENOISER.WIDTH", "TRAINER.PD.GENERATOR_SIZE.WIDTH"),
    ("TRAINER.PD.DIFFUSION_DRAWS", "TRAINER.PD.LOSS_DRAWS"),
    ("TRAINER.PD.OVERFIT.REMOVE_CLASS_MEAN", "TRAINER.PD.RESEARCH.REMOVE_CLASS_MEAN"),
    ("TRAINER.PD.VAE.KL_WEIGHT", "TRAINER.PD.RESEARCH.VAE_KL_WEIGHT"),
    ("TRAINER.PD.NOISE_SCALE", "no key: it was removed"),
    ("TRAINER.PD.AMED.TEACHER", "no key: it was removed"),
])
def test_an_old_key_is_an_error_naming_its_new_key(old, new, tmp_path):
    """On the command line the key itself is named; in a config file, the first part of it that went
    (a node that is gone, as DENOISER, with its new name)."""
    cfg = extend_cfg(get_cfg_default())
    with pytest.raises(KeyError, match=re.escape(f"Key {old} was renamed to {new}")):
        cfg.merge_from_list([old, "1"])
    config_file = tmp_path / "old.yaml"
    parts = old.split(".")
    config_file.write_text("".join(f"{'  ' * depth}{part}:\n" for depth, part in enumerate(parts[:-1]))
                           + f"{'  ' * (len(parts) - 1)}{parts[-1]}: 1\n")
    with pytest.raises(KeyError, match=r"Key TRAINER\.PD\.\S+ was renamed to (TRAINER\.PD\.\S+|no key: it was removed);"):
        cfg.merge_from_file(str(config_file))


def test_bad_pd_value_stops_the_trainer_at_start(world, tmp_path):
    with pytest.raises(ValueError, match="TRAINER.PD.NFE = 0"):
        build_trainer(make_cfg(world, "CoOpPD", tmp_path / "run", ["TRAINER.PD.NFE", 0]))
    with pytest.raises(ValueError, match="TEST.FINAL_MODEL 'best_val' with prompt diffusion"):
        build_trainer(make_cfg(world, "CoOpPD", tmp_path / "run", ["TEST.FINAL_MODEL", "best_val"]))


# ---------------------------------------------------------------------- per-image references: TPT and Zero
def test_an_adapter_without_image_prompts_encodes_each_prompt_once_for_its_views(world, tmp_path):
    """``view_logits`` of CoOp / CoCoOp (text prompts only) equals the default path, each view a sample
    of its own with its image's prompt repeated."""
    trainer = build(make_cfg(world, "CoCoOpPD", tmp_path / "run", QUICK))
    adapter = trainer.pd.adapter
    images = trainer.parse_batch_test(eval_batch(trainer))[0][:3]
    views = torch.stack([images, images.flip(-1)], dim=1)  # [3, 2, 3, H, W]
    with torch.no_grad():
        prompts = trainer.pd.host_prompts(adapter.image_features(images))
        once = adapter.view_logits(views, prompts)
        repeated = {name: prompt.repeat_interleave(2, dim=0) for name, prompt in prompts.items()}
        each = adapter.logits(views.flatten(0, 1), repeated).view(3, 2, -1)
    torch.testing.assert_close(once, each, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weights", ["host", "pd"])
def test_tpt_and_zero_evaluate_a_trained_host_and_a_trained_pd_model(weights, world, tmp_path):
    """TPT: one AdamW step of 5e-3 from each image's host prompt (every coordinate moves by the step
    size, plus the weight decay), then the image's logits at the tuned prompt; Zero: the vote of the
    confident views under the host prompt. Both reset per image: an image's answer is its own in any
    batch. A host's run (CoCoOp) and a PD run (CoCoOpPD) both evaluate through the PD trainer."""
    from prompt_diffusion.test_time import TPT_LR, average_entropy, confident_views, zero_predictions

    out = tmp_path / "run"
    build(make_cfg(world, "CoCoOp" if weights == "host" else "CoCoOpPD", out, QUICK, epochs=1)).train()
    results = {}
    for mode in ("tpt", "zero"):
        trainer = build(make_cfg(world, "CoCoOpPD", tmp_path / mode, QUICK + [
            "TRAINER.PD.INFERENCE", mode, "TRAINER.PD.VIEWS", 16]))
        trainer.load_model(str(out), epoch=1)
        trainer.set_model_mode("eval")
        batch = eval_batch(trainer)
        images = trainer.parse_batch_test(batch)[0]
        pd = trainer.pd
        with torch.no_grad():
            features = pd.adapter.image_features(images)
            center = {k: v.float() for k, v in pd.host_prompts(features).items()}
        views = pd._views(images, batch["index"])
        assert views.shape == (len(images), 16, *images.shape[1:]) and torch.equal(views[:, 0], images)
        logits = inference(trainer, batch)
        if mode == "tpt":
            tuned = pd._tpt_prompts(views, center)["text"]
            step = tuned - center["text"] * (1 - TPT_LR * 0.01)  # AdamW's decoupled weight decay (0.01)
            moved = step.abs()  # AdamW's first step: lr·g/(|g| + eps), the step size wherever |g| >> eps
            assert (moved <= TPT_LR * 1.001).all() and ((moved - TPT_LR).abs() < 1e-6).float().mean() > 0.9
            with torch.no_grad():
                torch.testing.assert_close(logits, pd.adapter.logits(images, {"text": tuned}, features))
                before = pd.adapter.view_logits(views, center)
                after = pd.adapter.view_logits(views, {"text": tuned})

            def kept_entropy(view_logits):
                kept = confident_views(before, 0.1)
                return average_entropy(torch.gather(view_logits, 1, kept.unsqueeze(2).expand(-1, -1, view_logits.shape[2])))
            assert kept_entropy(after).mean() < kept_entropy(before).mean()  # the step lowers TPT's objective
        else:
            with torch.no_grad():
                votes = zero_predictions(pd.adapter.view_logits(views, center))
            assert torch.equal(logits.argmax(1), votes)
        half = {k: v[:3] for k, v in batch.items() if torch.is_tensor(v)}
        torch.testing.assert_close(inference(trainer, half), logits[:3], rtol=1e-4, atol=1e-4)
        results[mode] = trainer.test()
    assert set(results) == {"tpt", "zero"}


def test_views_and_a_prompt_free_host_are_refused_in_one_line(world, tmp_path):
    with pytest.raises(ValueError, match=r"TRAINER.PD.VIEWS = 0 is out of range; allowed: an integer >= 1"):
        build(make_cfg(world, "CoOpPD", tmp_path / "a", ["TRAINER.PD.INFERENCE", "zero", "TRAINER.PD.VIEWS", 0]))
    with pytest.raises(ValueError, match=r"TRAINER.PD.VIEWS = 8 is too few for INFERENCE tpt: the confidence selection "
                                         r"keeps int\(8 views x 0.1\) = 0 views"):
        build(make_cfg(world, "CoOpPD", tmp_path / "b", ["TRAINER.PD.INFERENCE", "tpt", "TRAINER.PD.VIEWS", 8]))
    with pytest.raises(ValueError, match=r"zero-shot CLIP has none to tune"):
        build(make_cfg(world, "ZeroshotCLIP", tmp_path / "c", ["TRAINER.PD.INFERENCE", "tpt"]))
