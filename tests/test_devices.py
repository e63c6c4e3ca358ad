"""Precision and devices: every host and PD variant trains a step, evaluates, and round-trips its
checkpoint (dtypes kept) in fp32, fp16 and amp, and AMED distils in fp16, on the CPU always and on a
GPU when there is one; every registered model lives on the trainer's device, seeded inference is
reproducible there, checkpoints move between GPU and CPU, and the sampling loop does not synchronise
with the host per step.

Tests marked ``cuda`` are collected always and skipped without a GPU (``benchmarks/gpu_check.py``
runs them on one): only what is about device placement. The precision logic runs on the CPU too
(torch runs float16 there), as do the CPU halves of the device logic (checkpoints written on a GPU
load on a CPU).
"""
import math

import pytest
import torch
from torch import serialization

import prompt_diffusion.trainers  # noqa: F401  (registers the trainers and their PD variants)
from helpers import inference, tiny_trainer_cfg
from multimodal_setup import TINY_SETTINGS, build_world
from prompt_diffusion import after_training
from prompt_diffusion.engine import build_trainer
from prompt_diffusion.engine.checkpoint import load_checkpoint
from prompt_diffusion.wrapper import PD_MODEL_NAME

HAS_CUDA = torch.cuda.is_available()
cuda = pytest.mark.cuda
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (benchmarks/gpu_check.py runs these on one)")

# a tiny denoiser and sampler settings shared by every test here
PD_KEYS = {
    "TRAINER.PD.GENERATOR_SIZE.LAYERS": 1, "TRAINER.PD.GENERATOR_SIZE.HEADS": 2, "TRAINER.PD.GENERATOR_SIZE.WIDTH": 32,
    "TRAINER.PD.OVERFIT.ITERS": 1, "TRAINER.PD.NFE": 5, "TRAINER.PD.DIAGNOSE_IMAGES": 0,
    "TRAINER.PD.AMED.DISTILL_ITERS": 2,
    "DATALOADER.TEST.BATCH_SIZE": 8,
}
# the small settings of the hosts that multimodal_setup does not cover, and each host's PREC key
SMALL = {
    "CoOp": {"TRAINER.COOP.N_CTX": 4, "TRAINER.COOP.PREC": "fp32"},
    "CoCoOp": {"TRAINER.COCOOP.N_CTX": 4, "TRAINER.COCOOP.PREC": "fp32"},
    "VPT": {"TRAINER.VPT.N_CTX_VISION": 2, "TRAINER.VPT.PROMPT_DEPTH_VISION": 2, "TRAINER.VPT.PREC": "fp32"},
    "IVLP": {"TRAINER.IVLP.PROMPT_DEPTH_TEXT": 2, "TRAINER.IVLP.PROMPT_DEPTH_VISION": 2, "TRAINER.IVLP.PREC": "fp32"},
    **TINY_SETTINGS,
}
HOSTS = sorted(SMALL)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("devices"))


def device_cfg(world, output, trainer: str, device: str, prec: str = "fp32", max_epoch: int = 1, **extra):
    """The tiny run of ``trainer`` (host or PD variant) on ``device`` at precision ``prec``."""
    root, clip_path, descriptions = world
    host = trainer[:-2] if trainer.endswith("PD") else trainer
    settings = {**SMALL[host], **PD_KEYS, "MODEL.TEXT_CHUNK": 16, "TRAINER.CoPrompt.DESCRIPTIONS_DIR": str(descriptions),
                "USE_CUDA": device == "cuda", "TRAIN.CHECKPOINT_FREQ": 1, **extra}
    prec_key = next(key for key in SMALL[host] if key.endswith(".PREC"))
    settings[prec_key] = prec
    options = [item for key, value in settings.items() for item in (key, value)]
    return tiny_trainer_cfg(trainer, root / "base", clip_path, output, 0.05, max_epoch, options)


def tensors_of(trainer):
    """Every parameter and buffer of every registered model: ``{model/name: tensor}``."""
    return {f"{model_name}/{name}": tensor for model_name in trainer.get_model_names()
            for name, tensor in [*trainer._models[model_name].named_parameters(),
                                 *trainer._models[model_name].named_buffers()]}


def give_denoiser_an_output(trainer, seed: int = 0) -> None:
    """Random output maps: an untrained denoiser outputs a zero residual (the host exactly), which
    would make any comparison of generated prompts vacuous."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for proj in trainer.pd.generator.net.proj_out.values():
            proj.weight.copy_(0.5 * torch.randn(proj.weight.shape, generator=generator))


def test_load_checkpoint_maps_onto_the_cpu(tmp_path):
    """A checkpoint whose tensors were written on a GPU (storages tagged ``cuda:0``, as ``torch.save``
    writes them there) loads onto the CPU, whether or not this machine has a GPU."""
    path = tmp_path / "model.pth.tar-1"
    save_as_gpu({"state_dict": {"w": torch.arange(3.0)}, "epoch": 1}, path)
    if not HAS_CUDA:  # the file really says cuda: torch cannot read it without a map
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    state = load_checkpoint(str(path))
    assert state["state_dict"]["w"].device.type == "cpu"
    assert torch.equal(state["state_dict"]["w"], torch.arange(3.0))


def save_as_gpu(state, path) -> None:
    """``torch.save`` with every storage tagged ``cuda:0``: the bytes a GPU run writes."""
    entry = (0, lambda storage: "cuda:0", lambda storage, location: None)
    serialization.register_package(*entry)
    try:
        torch.save(state, path)
    finally:
        serialization._package_registry.remove(entry)


def test_pd_checkpoint_written_on_gpu_loads_on_cpu_everywhere(world, tmp_path):
    """CoCoOpPD trained for an epoch, its checkpoints rewritten as a GPU run writes them: a CPU
    trainer loads every registered model (host, denoiser, AMED predictor) with equal weights."""
    trained = build_trainer(device_cfg(world, tmp_path / "run", "CoCoOpPD", "cpu"))
    trained.train()
    expected = {k: v.detach().clone() for k, v in tensors_of(trained).items()}
    files = sorted((tmp_path / "run").glob("*/model.pth.tar-1"))
    assert {f.parent.name for f in files} == set(trained.get_model_names())
    for path in files:
        save_as_gpu(torch.load(path, weights_only=True), path)
    loaded = build_trainer(device_cfg(world, tmp_path / "eval", "CoCoOpPD", "cpu"))
    loaded.load_model(str(tmp_path / "run"), epoch=1)
    got = tensors_of(loaded)
    assert got.keys() == expected.keys()
    assert all(v.device.type == "cpu" and torch.equal(v, expected[k]) for k, v in got.items())


# ----------------------------------------------------------------------------- precision, CPU and GPU
TRAINERS = [trainer for host in HOSTS for trainer in (host, f"{host}PD")]
# the CPU always; the GPU when there is one (marked cuda: benchmarks/gpu_check.py runs those)
DEVICES = ["cpu", pytest.param("cuda", marks=[cuda, needs_cuda])]


def trainable_tensors(trainer):
    """Every trainable parameter of every registered model, cloned: ``{model/name: tensor}``."""
    return {f"{model_name}/{name}": p.detach().clone() for model_name in trainer.get_model_names()
            for name, p in trainer._models[model_name].named_parameters() if p.requires_grad}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("prec", ["fp32", "fp16", "amp"])
@pytest.mark.parametrize("name", TRAINERS)
def test_training_step_evaluation_and_checkpoint_at_every_precision(world, tmp_path, name, prec, device):
    """Three training steps move some trainable weight with finite losses (amp: through the
    GradScaler, which may skip a step whose gradients overflow), inference gives finite logits on the
    device, and the weights round-trip through a checkpoint with their dtypes."""
    trainer = build_trainer(device_cfg(world, tmp_path / "run", name, device, prec))
    assert (getattr(trainer, "scaler", None) is not None) == (prec == "amp")
    before = trainable_tensors(trainer)
    batch = next(iter(trainer.train_loader_x))
    trainer.set_model_mode("train")
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, 10  # as the training loop sets them
    for _ in range(3):
        summary = trainer.forward_backward(batch)
        assert all(math.isfinite(value) for value in summary.values()), summary
    after = trainable_tensors(trainer)
    assert any(not torch.equal(after[key], before[key]) for key in before), f"{name} {prec}: nothing trained"
    trainer.set_model_mode("eval")
    logits = inference(trainer, next(iter(trainer.test_loader)))
    assert logits.device.type == device and logits.shape == (len(logits), trainer.num_classes)
    assert torch.isfinite(logits.float()).all()
    trainer.save_model(0, str(tmp_path / "run"))
    loaded = build_trainer(device_cfg(world, tmp_path / "eval", name, device, prec))
    loaded.load_model(str(tmp_path / "run"), epoch=1)
    saved, got = tensors_of(trainer), tensors_of(loaded)
    assert {key: value.dtype for key, value in got.items()} == {key: value.dtype for key, value in saved.items()}
    assert all(torch.equal(got[key], saved[key]) for key in trainable_tensors(trainer))


@pytest.mark.parametrize("device", DEVICES)
def test_amed_distils_in_fp16(world, tmp_path, device):
    trainer = build_trainer(device_cfg(world, tmp_path / "run", "CoCoOpPD", device, "fp16",
                                       **{"TRAINER.PD.AMED.DISTILL_ITERS": 8}))
    assert trainer.model.dtype == torch.float16  # the host's CLIP runs in half precision
    give_denoiser_an_output(trainer)
    trainer.set_model_mode("eval")
    conditions = after_training.conditions(trainer.pd, [trainer.parse_batch_train(next(iter(trainer.train_loader_x)))[0]])
    history = after_training.distill(trainer.pd, conditions, conditions, 0, 8)[trainer.cfg.TRAINER.PD.NFE]
    assert len(history) == 8 and all(math.isfinite(loss) for loss in history)
    assert trainer.pd.amed.distilled and all(p.device.type == device for p in trainer.pd.amed.parameters())
    assert trainer.pd.sampler()[0] == "amed"
    assert torch.isfinite(inference(trainer, next(iter(trainer.test_loader))).float()).all()


# ---------------------------------------------------------------------------------------- CUDA only
@cuda
@needs_cuda
@pytest.mark.parametrize("name", TRAINERS)
def test_every_registered_model_is_on_the_gpu(world, tmp_path, name):
    trainer = build_trainer(device_cfg(world, tmp_path / "run", name, "cuda"))
    misplaced = [k for k, v in tensors_of(trainer).items() if not v.is_cuda]
    assert misplaced == []
    if name.endswith("PD"):
        assert trainer.get_model_names()[-1] == PD_MODEL_NAME
        assert trainer.pd.generator.schedule.sigma_max > 0


@cuda
@needs_cuda
@pytest.mark.parametrize("name", ["CoCoOpPD", "VPTPD", "MaPLePD"])
def test_seeded_inference_is_reproducible_on_cuda_and_matches_the_cpu(world, tmp_path, name):
    gpu = build_trainer(device_cfg(world, tmp_path / "gpu", name, "cuda"))
    cpu = build_trainer(device_cfg(world, tmp_path / "cpu", name, "cpu"))
    give_denoiser_an_output(gpu)
    for model_name in cpu.get_model_names():
        cpu._models[model_name].load_state_dict(gpu._models[model_name].state_dict())
    batch = next(iter(gpu.test_loader))
    runs = []
    for trainer in (gpu, gpu, cpu):
        trainer.set_model_mode("eval")
        runs.append(inference(trainer, batch).cpu())
    assert torch.equal(runs[0], runs[1])
    torch.testing.assert_close(runs[0], runs[2], atol=1e-3, rtol=1e-3)
    host = gpu.pd.host_logits(gpu.parse_batch_test(batch)[0])  # the noise matters: the generated prompts differ
    assert not torch.allclose(runs[0], host.cpu(), atol=1e-4)


@cuda
@needs_cuda
@pytest.mark.parametrize("source, target", [("cuda", "cpu"), ("cpu", "cuda")])
def test_checkpoint_moves_between_gpu_and_cpu(world, tmp_path, source, target):
    trained = build_trainer(device_cfg(world, tmp_path / "run", "VPTPD", source))
    trained.train()
    expected = {k: v.detach().cpu().clone() for k, v in tensors_of(trained).items()}
    loaded = build_trainer(device_cfg(world, tmp_path / "eval", "VPTPD", target))
    loaded.load_model(str(tmp_path / "run"), epoch=1)
    got = tensors_of(loaded)
    assert got.keys() == expected.keys()
    assert all(v.device.type == target for v in got.values())
    assert all(torch.equal(v.cpu(), expected[k]) for k, v in got.items())
    assert loaded.pd.amed.distilled


def sync_events(trainer, nfe: int):
    """The CUDA runtime's synchronising calls during one ``PromptDiffusion.generate`` at ``nfe`` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    batch = next(iter(trainer.test_loader))
    pd, images = trainer.pd, trainer.parse_batch_test(batch)[0]
    features = pd.adapter.image_features(images)
    pi, center = pd.condition(features), pd.host_prompts(features)
    trainer.cfg.defrost()
    trainer.cfg.TRAINER.PD.NFE = nfe
    trainer.cfg.freeze()
    pd.generate(pi, center, batch["index"])  # warm-up: tables copied to the GPU once
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        pd.generate(pi, center, batch["index"])
        torch.cuda.synchronize()
    names = [event.name for event in prof.events()]
    return [name for name in names if "Synchronize" in name or name == "aten::_local_scalar_dense"]


@cuda
@needs_cuda
def test_sampling_loop_does_not_synchronise_per_step(world, tmp_path, capsys):
    """Host-device synchronisations while sampling one batch of prompts: what is needed (the
    per-sample seeds copied over, the σ grid's zeros read once) and nothing per denoiser call:
    the same count at NFE 5 and 10 (dpmpp_2m, one call per step)."""
    trainer = build_trainer(device_cfg(world, tmp_path / "run", "CoCoOpPD", "cuda",
                                       **{"TRAINER.PD.SAMPLER": "dpmpp_2m"}))
    trainer.set_model_mode("eval")
    with torch.no_grad():
        at5, at10 = sync_events(trainer, 5), sync_events(trainer, 10)
    with capsys.disabled():
        print(f"\nsynchronising calls in one generate: NFE 5: {len(at5)} {sorted(set(at5))}; NFE 10: {len(at10)}")
    assert len(at10) == len(at5) <= 8
