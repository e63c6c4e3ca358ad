"""The Table 7 baselines on the toy world (shipped toy CLIP, one shot per base class, one epoch):
CLIP-Adapter and ProGrad train, save and reload to identical logits; CLIP-Adapter with ratio 0 is
zero-shot CLIP exactly; ProGrad's update never opposes the zero-shot distillation gradient, and
ProGradPD keeps that projection on the host loss it trains with."""
import pytest
import torch

from helpers import shared_toy_root
from prompt_diffusion.config import extend_cfg
from prompt_diffusion.engine import build_trainer, get_cfg_default

from prompt_diffusion.adapters import ProGradAdapter
from prompt_diffusion.clip_prompting import encode_image, prompted_logits
from prompt_diffusion.trainers.prograd import project_gradient, projected_gradient_loss, prograd_loss_terms

import prompt_diffusion.data  # noqa: F401  (registers the datasets)
import prompt_diffusion.trainers  # noqa: F401  (registers the trainers)

TOY_OPTIONS = {
    "MODEL.BACKBONE.NAME": "toy", "INPUT.SIZE": (32, 32), "INPUT.TRANSFORMS": ("normalize",),
    "DATASET.NAME": "ToyWorld", "DATASET.SUBSAMPLE_CLASSES": "base", "DATASET.NUM_SHOTS": 1,
    "DATASET.TOY.TEST_PER_CLASS": 1, "DATALOADER.NUM_WORKERS": 0, "DATALOADER.TRAIN_X.BATCH_SIZE": 8,
    "DATALOADER.TEST.BATCH_SIZE": 32, "OPTIM.NAME": "sgd", "OPTIM.LR": 0.01, "OPTIM.MAX_EPOCH": 1,
    "OPTIM.WARMUP_EPOCH": 0, "TRAIN.PRINT_FREQ": 100, "TEST.FINAL_MODEL": "last_step", "USE_CUDA": False,
    "SEED": 1, "TRAINER.COOP.PREC": "fp32", "TRAINER.COOP.N_CTX": 4,
}


def toy_cfg(trainer: str, output_dir, **changes):
    cfg = extend_cfg(get_cfg_default())
    for key, value in {**TOY_OPTIONS, **changes, "TRAINER.NAME": trainer, "OUTPUT_DIR": str(output_dir),
                       "DATASET.ROOT": str(shared_toy_root())}.items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    cfg.freeze()
    return cfg


@torch.no_grad()
def eval_logits(trainer) -> torch.Tensor:
    trainer.set_model_mode("eval")
    images, _ = trainer.parse_batch_test(next(iter(trainer.test_loader)))
    return trainer.model_inference(images)


def learned_weights(trainer):
    return {name: p.detach().clone() for name, p in trainer.learned_module().named_parameters()}


@pytest.mark.parametrize("name", ["CLIPAdapter", "ProGrad"])
def test_trains_saves_and_reloads_to_identical_logits(name, tmp_path):
    trainer = build_trainer(toy_cfg(name, tmp_path / "run"))
    before = learned_weights(trainer)
    trainer.train()
    after = learned_weights(trainer)
    assert any(not torch.equal(before[k], after[k]) for k in before), f"{name} did not move its weights"
    logits = eval_logits(trainer)

    fresh = build_trainer(toy_cfg(name, tmp_path / "eval"))
    assert not torch.equal(eval_logits(fresh), logits)
    fresh.load_model(str(tmp_path / "run"), epoch=1)
    assert torch.equal(eval_logits(fresh), logits)


def test_clip_adapter_parameters_have_upstream_names_and_shapes(tmp_path):
    trainer = build_trainer(toy_cfg("CLIPAdapter", tmp_path))
    shapes = {name: tuple(p.shape) for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert shapes == {"adapter.fc.0.weight": (32, 128), "adapter.fc.2.weight": (128, 32)}  # E = 128, reduction 4
    assert trainer.get_model_names() == ["clip_adapter"]


def test_clip_adapter_with_ratio_zero_is_zero_shot_clip_exactly(tmp_path):
    adapter = build_trainer(toy_cfg("CLIPAdapter", tmp_path / "a", **{"TRAINER.CLIP_ADAPTER.RATIO": 0.0}))
    zero_shot = build_trainer(toy_cfg("ZeroshotCLIP", tmp_path / "z"))
    with torch.no_grad():  # a trained-looking adapter: ratio 0 must still ignore it
        for p in adapter.model.adapter.parameters():
            p.normal_()
    assert torch.equal(eval_logits(adapter), eval_logits(zero_shot))
    mixed = build_trainer(toy_cfg("CLIPAdapter", tmp_path / "m"))
    assert not torch.allclose(eval_logits(mixed), eval_logits(zero_shot))


def test_projection_removes_the_opposing_component_and_keeps_an_aligned_gradient():
    reference = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    opposing = torch.tensor([[-2.0, 1.0], [0.5, 0.0]])  # dot with the reference < 0
    projected = project_gradient(opposing, reference, lam=1.0)
    assert torch.dot(projected.flatten(), reference.flatten()).abs() < 1e-7  # orthogonal to it
    assert torch.equal(projected, torch.tensor([[0.0, 1.0], [0.5, 0.0]]))
    half = project_gradient(opposing, reference, lam=0.5)  # λ < 1: part of the opposing component stays
    assert torch.allclose(half, torch.tensor([[-1.0, 1.0], [0.5, 0.0]]))
    aligned = torch.tensor([[2.0, -3.0], [1.0, 1.0]])
    assert project_gradient(aligned, reference, lam=1.0) is aligned


def test_projected_gradient_loss_has_the_loss_value_and_the_projected_gradient():
    param = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = (param[0] - 3.0) ** 2 + param[1]  # gradient [-4, 1]
    reference_loss = 2.0 * param[0]  # gradient [2, 0]: opposes the loss's
    surrogate = projected_gradient_loss(loss, reference_loss, [param], lam=1.0)
    assert surrogate.item() == loss.item()
    surrogate.backward()
    assert torch.equal(param.grad, torch.tensor([0.0, 1.0]))


def toy_prograd_cfg(trainer, output_dir):
    return toy_cfg(trainer, output_dir, **{"TRAINER.PD.GENERATOR_SIZE.LAYERS": 1, "TRAINER.PD.GENERATOR_SIZE.WIDTH": 32,
                                          "TRAINER.PD.GENERATOR_SIZE.HEADS": 2, "TRAINER.PD.OVERFIT.ITERS": 1,
                                          "TRAINER.PD.SAMPLER": "dpmpp_2m", "TRAINER.PD.NFE": 2,
                                          "TRAINER.PD.AMED.DISTILL_ITERS": 0, "TRAINER.PD.CALIBRATE": False})


def test_prograd_pd_uses_the_prograd_adapter_and_its_step_projects_the_host_gradient(tmp_path):
    trainer = build_trainer(toy_prograd_cfg("ProGradPD", tmp_path))
    assert type(trainer.pd.adapter) is ProGradAdapter
    model = trainer.model
    batch = next(iter(trainer.train_loader_x))
    images, labels = trainer.parse_batch_train(batch)
    with torch.no_grad():  # the adapter's forward at the host prompt is ProGrad's own
        features = trainer.pd.adapter.image_features(images)
        host = trainer.pd.adapter.logits(images, trainer.pd.adapter.host_prompts(features), features)
        assert torch.allclose(host, model(images), atol=1e-5)
    trainer.set_model_mode("train")
    # the two gradients ProGrad compares, at the current prompt
    logits = model(images)
    with torch.no_grad():
        teacher = prompted_logits(encode_image(model.image_encoder, images), model.zs_text_features,
                                  model.logit_scale)
    loss, distill = prograd_loss_terms(logits, teacher, labels, model.temperature)
    ctx = model.prompt_learner.ctx
    (reference,) = torch.autograd.grad(distill, ctx, retain_graph=True)
    (plain,) = torch.autograd.grad(loss, ctx)
    expected = project_gradient(plain, reference, model.lam) * trainer.cfg.TRAINER.PD.HOST_LOSS_WEIGHT
    # the wrapper's step: the prompt learner's gradient is the projected host gradient only
    optimizers = {name: trainer._optims[name] for name in trainer.get_model_names()}
    steps = {name: optim.step for name, optim in optimizers.items()}
    for optim in optimizers.values():  # keep the gradients: no step
        optim.step = lambda *args, **kwargs: None
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, 2
    summary = trainer.forward_backward(batch)
    for name, optim in optimizers.items():
        optim.step = steps[name]
    assert {"loss_ce", "loss_gen", "loss_host"} <= set(summary)
    assert torch.allclose(ctx.grad, expected, atol=1e-6, rtol=1e-5)
    assert torch.dot(ctx.grad.flatten(), reference.flatten()) >= -1e-6  # never against the distillation
