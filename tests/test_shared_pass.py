"""The host's pass shared with the per-sample overfitting.

For a host whose loss is the cross-entropy of its logits at its own prompts, one forward-backward
gives the host loss and each sample's first overfitting gradient. The shared step must equal the
unshared one (the host's own forward, then I overfitting passes): the same V*, the same losses and
the same weights after the step, to 1e-6 in fp32; and it must run one prompted pass fewer.
"""
import pytest
import torch

import prompt_diffusion.trainers  # noqa: F401  (registers the trainers and their PD variants)
from multimodal_setup import build_world, make_cfg as multimodal_cfg
from prompt_diffusion.engine import build_trainer, set_random_seed
from test_wrapper import make_cfg, world  # noqa: F401  (world: the tiny image folder fixture)

ITERS = 3
PD_OPTS = ["TRAINER.PD.OVERFIT.ITERS", ITERS, "TRAINER.PD.OVERFIT.LR", 0.02, "TRAINER.PD.DIAGNOSE_IMAGES", 0,
           "TRAINER.PD.AMED.DISTILL_ITERS", 0, "TRAINER.PD.CALIBRATE", False]


@pytest.fixture(scope="module")
def multimodal_world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("pd_shared_mm"))


def trainer_for(name, world, multimodal_world, tmp_path, opts):
    if name == "MaPLePD":
        settings = dict(zip(opts[::2], opts[1::2]))
        cfg = multimodal_cfg(name, multimodal_world, "base", tmp_path, lr=0.05, max_epoch=1,
                             **{"TRAINER.PD.GENERATOR_SIZE.LAYERS": 1, "TRAINER.PD.GENERATOR_SIZE.HEADS": 2,
                                "TRAINER.PD.GENERATOR_SIZE.WIDTH": 32, **settings})
    else:
        cfg = make_cfg(world, name, tmp_path, opts, batch=4)
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


def one_step(trainer, shared: bool):
    """One training step on the first batch with the host's pass shared or not; returns V*, the
    loss summary, every registered model's weights after the step and the prompted passes counted
    (``adapter.logits`` calls and host forwards) in the step after a first one."""
    pd = trainer.pd
    if not shared:
        pd.adapter.host_loss_is_prompt_ce = False  # what PromptSRC, CoPrompt, ProGrad declare
    targets = []
    find_targets = pd._targets

    def recording_targets(*args):
        targets.append(find_targets(*args))
        return targets[-1]

    pd._targets = recording_targets
    passes = []
    logits = pd.adapter.logits
    pd.adapter.logits = lambda *args: passes.append("logits") or logits(*args)
    pd.adapter.model.register_forward_hook(lambda *_: passes.append("host forward"))
    batch = next(iter(trainer.train_loader_x))
    trainer.set_model_mode("train")
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, 10
    summary = trainer.forward_backward(batch)
    weights = {f"{name}.{key}": value.detach().clone() for name in trainer.get_model_names()
               for key, value in trainer._models[name].state_dict().items() if torch.is_tensor(value)}
    passes.clear()
    trainer.forward_backward(batch)
    return targets[0], summary, weights, passes


@pytest.mark.parametrize("name", ["CoCoOpPD", "VPTPD", "IVLPPD", "MaPLePD"])
@pytest.mark.parametrize("target,rule", [("label", "sign"), ("label", "sgd"), ("agreement", "sign")])
def test_the_shared_pass_gives_the_same_vstar_losses_and_step(name, target, rule, world, multimodal_world, tmp_path):
    """sgd steps by the gradient's size, so a wrongly scaled first gradient (the batch mean's, the
    amp scale) would show; sign steps by its direction."""
    opts = PD_OPTS + ["TRAINER.PD.OVERFIT.TARGET", target, "TRAINER.PD.OVERFIT.STEP_RULE", rule]
    shared = one_step(trainer_for(name, world, multimodal_world, tmp_path / "shared", opts), shared=True)
    apart = one_step(trainer_for(name, world, multimodal_world, tmp_path / "apart", opts), shared=False)
    (targets, summary, weights, passes), (targets_apart, summary_apart, weights_apart, passes_apart) = shared, apart
    assert targets.keys() == targets_apart.keys()
    for group in targets:
        torch.testing.assert_close(targets[group], targets_apart[group], rtol=0, atol=1e-6)
    assert summary.keys() == summary_apart.keys() and "loss_host" in summary
    for key in summary:
        assert summary[key] == pytest.approx(summary_apart[key], abs=1e-6), key
    assert weights.keys() == weights_apart.keys()
    for key in weights:
        torch.testing.assert_close(weights[key], weights_apart[key], rtol=0, atol=1e-6)
    # shared: the host loss's pass, I - 1 overfitting passes, the CE of Eq. 8; apart: the host's own
    # forward, I overfitting passes, the CE
    assert passes == ["logits"] * (ITERS + 1)
    assert sorted(passes_apart) == ["host forward"] + ["logits"] * (ITERS + 1)


@pytest.mark.parametrize("target", ["label", "agreement"])
def test_cached_overfitting_shares_the_pass_for_its_stale_samples_only(target, world, tmp_path):
    """OVERFIT.MODE cached: the first step overfits every sample (shared as online), the second, all
    cached, runs the host's pass and the CE of Eq. 8 and nothing else."""
    opts = PD_OPTS + ["TRAINER.PD.OVERFIT.TARGET", target, "TRAINER.PD.OVERFIT.MODE", "cached"]
    shared = one_step(trainer_for("CoCoOpPD", world, None, tmp_path / "shared", opts), shared=True)
    apart = one_step(trainer_for("CoCoOpPD", world, None, tmp_path / "apart", opts), shared=False)
    for group in shared[0]:
        torch.testing.assert_close(shared[0][group], apart[0][group], rtol=0, atol=1e-6)
    assert shared[3] == ["logits", "logits"]
    assert sorted(apart[3]) == ["host forward", "logits"]


def test_a_host_loss_that_is_not_the_ce_at_its_prompts_keeps_its_own_pass(world, tmp_path):
    """A fork whose loss differs from the CE at its prompts (here: label smoothing) though its adapter
    says otherwise is caught on the first batch and keeps its own pass."""
    trainer = trainer_for("CoCoOpPD", world, None, tmp_path, PD_OPTS)
    adapter = trainer.pd.adapter

    def smoothed_loss(parsed):
        images, labels = parsed[:2]
        logits = adapter.logits(images, trainer.pd.host_prompts(adapter.image_features(images)))
        return torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)

    adapter.host_loss = smoothed_loss
    trainer.set_model_mode("train")
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, 10
    batch = next(iter(trainer.train_loader_x))
    with torch.no_grad():
        expected = adapter.host_loss(trainer.parse_batch_train(batch)).item()
    summary = trainer.forward_backward(batch)
    assert trainer.pd.host_pass_shared is False
    assert summary["loss_host"] == pytest.approx(expected, abs=1e-6)
