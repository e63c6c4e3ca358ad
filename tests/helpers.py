"""Test helpers shared by the test files: tiny generated image folders."""
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image

# one clearly different mean colour per class, so a linear probe (or a tiny CLIP + prompt) can learn
_PALETTE = [
    (220, 40, 40), (40, 200, 40), (40, 60, 220), (230, 210, 40),
    (200, 40, 200), (40, 210, 210), (240, 140, 30), (120, 120, 120),
]


def make_image_folder(
    root: Path, classnames: Sequence[str], per_class: int, size: int = 32, seed: int = 0
) -> Dict[str, List[Path]]:
    """Write ``root/<classname>/<i>.png`` images whose colour depends on the class.

    Returns the written paths per class name. Pixels get small noise so images differ.
    """
    rng = np.random.default_rng(seed)
    written: Dict[str, List[Path]] = {}
    for label, name in enumerate(classnames):
        class_dir = Path(root) / name
        class_dir.mkdir(parents=True, exist_ok=True)
        base = np.array(_PALETTE[label % len(_PALETTE)], dtype=np.float32)
        written[name] = []
        for i in range(per_class):
            noise = rng.normal(0.0, 18.0, size=(size, size, 3))
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            path = class_dir / f"{i:04d}.png"
            Image.fromarray(pixels).save(path)
            written[name].append(path)
    return written


TINY_FOLDER_DATASET = "TinyImageFolder"


def register_tiny_folder_dataset() -> str:
    """Register (once) the dataset ``TinyImageFolder``: ``DATASET.ROOT/<class>/*.png`` (written by
    ``make_image_folder``), classes in sorted folder order, every image in train_x, val and test.

    Returns its name for ``cfg.DATASET.NAME``.
    """
    from prompt_diffusion.engine import DATASET_REGISTRY, DatasetBase, Datum

    if TINY_FOLDER_DATASET in DATASET_REGISTRY.registered_names():
        return TINY_FOLDER_DATASET

    class TinyImageFolder(DatasetBase):
        def __init__(self, cfg):
            root = Path(cfg.DATASET.ROOT)
            classnames = sorted(p.name for p in root.iterdir() if p.is_dir())
            items = [Datum(impath=str(path), label=label, classname=name)
                     for label, name in enumerate(classnames) for path in sorted((root / name).glob("*.png"))]
            super().__init__(train_x=items, val=items, test=items)

    TinyImageFolder.__name__ = TINY_FOLDER_DATASET
    DATASET_REGISTRY.register(TinyImageFolder)
    return TINY_FOLDER_DATASET


def write_result_log(run_dir: Path, accuracy: float, training: bool = True, finished: bool = True,
                     name: str = "log.txt", extra: str = "") -> Path:
    """Write a run log as Dassl prints it, with a known test accuracy (for result-table tests).

    A training log has a progress line and a validation result block before ``Finish training``
    (which must not count); ``finished=False`` cuts the log before its final result. ``extra``:
    more ``* name: value`` lines appended to the final result block.
    """
    def block(acc: float) -> str:
        return ("=> result\n* total: 1,000\n"
                f"* correct: {round(10 * acc):,}\n* accuracy: {acc:.1f}%\n"
                f"* error: {100 - acc:.1f}%\n* macro_f1: {acc - 1:.1f}%\n")

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "Loading trainer: CoCoOp\n"
    if training:
        text += "epoch [1/2] batch [1/4] time 0.1 loss 2.3 lr 2.0e-03 eta 0:00:01\n"
        text += "Evaluate on the *val* set\n" + block(12.5)
        if finished:
            text += "Finish training\nDeploy the last-epoch model\nEvaluate on the *test* set\n"
            text += block(accuracy) + extra + "Elapsed: 0:00:03\n"
    else:
        text += "Evaluate on the *test* set\n"
        text += block(accuracy) + extra if finished else "=> result\n* total: 1,000\n"
    path = run_dir / name
    path.write_text(text)
    return path


# OpenAI CLIP's pixel normalisation (lists, as yacs holds INPUT.PIXEL_MEAN / PIXEL_STD)
CLIP_PIXEL_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_PIXEL_STD = [0.26862954, 0.26130258, 0.27577711]


def load_image_batch(paths: Sequence[Path]):
    """``[N, 3, H, W]`` float tensor of the PNGs, normalised with CLIP's pixel mean and std."""
    import torch

    pixels = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0 for p in paths])
    images = (pixels - np.array(CLIP_PIXEL_MEAN, dtype=np.float32)) / np.array(CLIP_PIXEL_STD, dtype=np.float32)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def align_tiny_clip(model, images_by_class: Dict[str, List[Path]], steps: int = 40, lr: float = 1e-3):
    """Give a random tiny CLIP a little image-text alignment, in place: ``steps`` Adam steps of
    cross-entropy between the images and the captions "a photo of a <class>." (both towers train).

    Random CLIPs give prompt learners nothing to adapt (their shared contexts collapse the class
    features); a few aligned steps make the tiny model behave like a (very weak) pretrained CLIP.
    Returns the model in eval mode.
    """
    import clip
    import torch
    import torch.nn.functional as F

    names = list(images_by_class)
    images = load_image_batch([p for name in names for p in images_by_class[name]])
    labels = torch.tensor([k for k, name in enumerate(names) for _ in images_by_class[name]])
    captions = clip.tokenize([f"a photo of a {name.replace('_', ' ')}." for name in names])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        logits_per_image, _ = model(images, captions)  # [N, K]
        loss = F.cross_entropy(logits_per_image, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def tiny_trainer_cfg(trainer: str, data_root, clip_path, output_dir, lr: float, max_epoch: int = 2,
                     options: Sequence = ()):
    """A frozen config for a short CPU run of ``trainer`` on a ``make_image_folder`` folder
    (``TinyImageFolder``) with a tiny CLIP file: 32 px, CLIP normalisation only, batch 4, no
    workers, SGD + cosine, seed 0, last-step model. ``options`` (``[key, value, ...]``) merge last.
    """
    from prompt_diffusion.config import extend_cfg
    from prompt_diffusion.engine import get_cfg_default

    cfg = extend_cfg(get_cfg_default())
    cfg.TRAINER.NAME = trainer
    cfg.DATASET.NAME = register_tiny_folder_dataset()
    cfg.DATASET.ROOT = str(data_root)
    cfg.MODEL.BACKBONE.NAME = "ViT-B/16"
    cfg.MODEL.BACKBONE.PATH = str(clip_path)
    cfg.INPUT.SIZE = (32, 32)
    cfg.INPUT.TRANSFORMS = ("normalize",)
    cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD = CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 4
    cfg.DATALOADER.TEST.BATCH_SIZE = 32
    cfg.OPTIM.NAME = "sgd"
    cfg.OPTIM.LR = lr
    cfg.OPTIM.MAX_EPOCH = max_epoch
    cfg.OPTIM.LR_SCHEDULER = "cosine"
    cfg.TRAIN.PRINT_FREQ = 100
    cfg.TEST.FINAL_MODEL = "last_step"
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.USE_CUDA = False
    cfg.SEED = 0
    cfg.merge_from_list(list(options))
    cfg.freeze()
    return cfg


def small_prompt_learners(cfg) -> None:
    """Small settings of the CoOp / CoCoOp / VPT / IVLP trainer keys, in place on an unfrozen config:
    fp32, 4 text context tokens (CoOp, CoCoOp), prompt depth 2 (VPT, IVLP text and vision)."""
    for node in ("COOP", "COCOOP", "VPT", "IVLP"):
        cfg.TRAINER[node].PREC = "fp32"
    cfg.TRAINER.COOP.N_CTX = 4
    cfg.TRAINER.COCOOP.N_CTX = 4
    cfg.TRAINER.VPT.PROMPT_DEPTH_VISION = 2
    cfg.TRAINER.IVLP.PROMPT_DEPTH_TEXT = 2
    cfg.TRAINER.IVLP.PROMPT_DEPTH_VISION = 2


def shared_toy_root() -> Path:
    """One ``DATASET.ROOT`` for the toy-world datasets per test session: the first test renders
    the images (seconds), later ones reuse them. Removed when the session's process exits."""
    global _TOY_ROOT
    if _TOY_ROOT is None:
        import atexit
        import shutil
        import tempfile

        _TOY_ROOT = Path(tempfile.mkdtemp(prefix="pd_toy_root_"))
        atexit.register(shutil.rmtree, _TOY_ROOT, ignore_errors=True)
    return _TOY_ROOT


_TOY_ROOT = None


def assert_one_step_moves_the_generator_and_inference_is_finite(trainer) -> None:
    """One PD training step on the first training batch changes some generator weight and reports the
    three loss terms; inference on the first test batch gives finite logits [B, K]."""
    import torch

    batch = next(iter(trainer.train_loader_x))
    trainer.set_model_mode("train")
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, 2
    before = [p.detach().clone() for p in trainer.pd.generator.parameters()]
    summary = trainer.forward_backward(batch)
    assert {"loss_ce", "loss_gen", "loss_host"} <= set(summary)
    assert any(not torch.equal(p, q) for p, q in zip(trainer.pd.generator.parameters(), before))
    trainer.set_model_mode("eval")
    logits = inference(trainer, next(iter(trainer.test_loader)))
    assert logits.shape == (len(logits), trainer.num_classes) and torch.isfinite(logits).all()


def inference(trainer, batch: dict):
    """``model_inference`` on a loader ``batch`` parsed as the engine's test loop parses it (a
    prompt-diffusion trainer seeds each image's noise by its dataset index, ``batch["index"]``)."""
    import torch

    images, _ = trainer.parse_batch_test(batch)
    with torch.no_grad():
        return trainer.model_inference(images)


# the prompted trainers and their opts for one training step on a converted backbone (OpenCLIP, transformers):
# 2-3 prompt tokens, depth <= 3 (the test backbones have 3 layers), fp32; the PD variants with a 1-layer generator
ONE_STEP_SETTINGS = {
    "CoOp": ["TRAINER.COOP.N_CTX", 4, "TRAINER.COOP.PREC", "fp32"],
    "CoCoOp": ["TRAINER.COCOOP.N_CTX", 4, "TRAINER.COCOOP.CTX_INIT", "a photo of a", "TRAINER.COCOOP.PREC", "fp32"],
    "VPT": ["TRAINER.VPT.N_CTX_VISION", 4, "TRAINER.VPT.PROMPT_DEPTH_VISION", 2, "TRAINER.VPT.PREC", "fp32"],
    "IVLP": ["TRAINER.IVLP.N_CTX_TEXT", 2, "TRAINER.IVLP.N_CTX_VISION", 2, "TRAINER.IVLP.PROMPT_DEPTH_TEXT", 2,
             "TRAINER.IVLP.PROMPT_DEPTH_VISION", 2, "TRAINER.IVLP.PREC", "fp32"],
    "MaPLe": ["TRAINER.MAPLE.N_CTX", 2, "TRAINER.MAPLE.PROMPT_DEPTH", 3, "TRAINER.MAPLE.PREC", "fp32"],
}
ONE_STEP_PD = ["TRAINER.PD.GENERATOR_SIZE.LAYERS", 1, "TRAINER.PD.GENERATOR_SIZE.WIDTH", 32, "TRAINER.PD.GENERATOR_SIZE.HEADS", 2,
               "TRAINER.PD.OVERFIT.ITERS", 1, "TRAINER.PD.SAMPLER", "dpmpp_2m", "TRAINER.PD.NFE", 2]
ONE_STEP_TRAINERS = [name + pd for name in ONE_STEP_SETTINGS for pd in ("", "PD")]


def one_step_options(trainer: str) -> list:
    """The opts of ``trainer`` (one of ``ONE_STEP_TRAINERS``) for ``assert_one_training_step``."""
    return [*ONE_STEP_SETTINGS[trainer.removesuffix("PD")], *(ONE_STEP_PD if trainer.endswith("PD") else [])]


def assert_one_training_step(trainer) -> None:
    """One training step of a built trainer on its first batch: a PD variant moves its generator (and infers
    finite logits), a host gives a finite loss and changes some learned parameter."""
    import torch

    if getattr(trainer, "pd", None) is not None:
        assert_one_step_moves_the_generator_and_inference_is_finite(trainer)
        return
    learned = [p for p in trainer.model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in learned]
    trainer.set_model_mode("train")
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, 2
    summary = trainer.forward_backward(next(iter(trainer.train_loader_x)))
    assert torch.isfinite(torch.tensor(summary["loss"]))
    assert learned and any(not torch.equal(p, q) for p, q in zip(learned, before))


def write_clip_bpe_tokenizer(folder: Path, swap: Sequence[str] = ()) -> None:
    """``vocab.json`` and ``merges.txt`` of OpenAI's BPE (the openai-clip package's), as transformers' CLIP
    folders hold them; ``swap``: two tokens whose ids are exchanged (a tokenizer that differs)."""
    import json

    from clip.simple_tokenizer import SimpleTokenizer  # the trainers' tokenizer (trainers/_common.py)

    bpe = SimpleTokenizer()
    vocab = dict(bpe.encoder)
    if swap:
        vocab[swap[0]], vocab[swap[1]] = vocab[swap[1]], vocab[swap[0]]
    (folder / "vocab.json").write_text(json.dumps(vocab))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
