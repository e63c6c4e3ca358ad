"""What the host-vs-PD trainer benchmarks share (``bench_multimodal_pd.py``, ``bench_training_step.py``,
``gpu_check.py``): their command-line options, a generated image folder
with a random-weight ViT-B/16, trainers built from a host's paper config for timing, and the
inference split into prompt diffusion's parts.
"""
import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, Sequence

import torch

from prompt_diffusion import after_training
from prompt_diffusion.backbones import build_random_clip, save_clip
from prompt_diffusion.config import extend_cfg
from prompt_diffusion.engine import build_trainer, get_cfg_default

import prompt_diffusion.trainers  # noqa: F401  (registers the trainers and their PD variants)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "trainers"
sys.path.insert(0, str(REPO / "tests"))
from helpers import make_image_folder, register_tiny_folder_dataset  # noqa: E402  (generated image folder)
from multimodal_setup import write_descriptions  # noqa: E402  (CoPrompt's class descriptions)

# host -> (its paper config under configs/trainers, the node of its PREC key): the settings the
# shipped ``*_pd_paper.yaml`` configs give a host and its PD variant alike
PAPER_CONFIGS = {
    "CoCoOp": ("CoCoOp/vit_b16_c4_ep50_batch4_ctxv1_pd_paper.yaml", "COCOOP"),
    "VPT": ("VPT/vit_b16_c4_ep50_batch32_4_pd_paper.yaml", "VPT"),
    "IVLP": ("IVLP/vit_b16_c2_ep50_batch32_2+2ctx_pd_paper.yaml", "IVLP"),
    "MaPLe": ("MaPLe/vit_b16_c2_ep50_batch32_2ctx_pd_paper.yaml", "MAPLE"),
    "PromptSRC": ("PromptSRC/vit_b16_c2_ep50_batch32_2+2ctx_pd_paper.yaml", "PROMPTSRC"),
    "CoPrompt": ("CoPrompt/coprompt_ep50_batch32_pd_paper.yaml", "CoPrompt"),
}


def lever_opts(spec: str, levers: Dict[str, list]) -> list:
    """``"a+b"`` -> the ``[key, value, ...]`` of the levers ``a`` and ``b`` of ``levers``; ``"default"`` -> []."""
    if spec == "default":
        return []
    unknown = [name for name in spec.split("+") if name not in levers]
    if unknown:
        raise SystemExit(f"unknown lever(s) {unknown}; choose from {sorted(levers)} (joined with '+') or 'default'")
    return [item for name in spec.split("+") for item in levers[name]]


def timing_parser(description: str, repeats: int) -> argparse.ArgumentParser:
    """The options of the ViT-B/16 benchmarks: B, K, threads, timed rounds, device."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="images per batch (B)")
    parser.add_argument("--classes", type=int, default=10, help="classes (K)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=repeats, help="timed rounds (the fastest counts)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    return parser


def write_images(root: Path, n_classes: int, per_class: int, size: int = 224) -> None:
    """``root/images/class_<k>/*.png`` (``TinyImageFolder``; the loaders resize to ``INPUT.SIZE``)."""
    make_image_folder(root / "images", [f"class_{k}" for k in range(n_classes)], per_class, size=size)


def write_descriptions_for(root: Path, n_classes: int) -> None:
    """CoPrompt's class descriptions for ``write_images``'s classes, in ``root/descriptions``."""
    (root / "descriptions").mkdir(exist_ok=True)
    write_descriptions(root / "descriptions", [f"class_{k}" for k in range(n_classes)])


def write_world(root: Path, n_classes: int, per_class: int) -> Path:
    """``write_images`` (224 px), their CoPrompt descriptions and a random-weight ViT-B/16 CLIP file
    (timing only); returns the CLIP file's path."""
    write_images(root, n_classes, per_class)
    write_descriptions_for(root, n_classes)
    clip_path = root / "vit_b16_random.pt"
    save_clip(build_random_clip("ViT-B/16"), clip_path)
    return clip_path


def make_timed_trainer(name: str, config_file: str, prec_node: str, root: Path, clip_path: Path, batch: int,
                       device: str, opts: Sequence = (), prec: str = "fp32"):
    """Trainer ``name`` (a host or its PD variant) with ``configs/trainers/<config_file>`` at
    precision ``prec`` (``TRAINER.<prec_node>.PREC``), on ``write_images``'s folder: ``batch`` images
    per batch, no workers, normalisation only; ``opts`` (``[key, value, ...]``) merge last.

    The trainer never reaches an epoch's last batch, so ``forward_backward`` takes no scheduler
    step; with sampler ``amed`` the predictor is distilled on one batch, so sampling runs AMED.
    """
    cfg = extend_cfg(get_cfg_default())
    cfg.merge_from_file(str(CONFIGS / config_file))
    cfg.merge_from_list([
        "TRAINER.NAME", name, f"TRAINER.{prec_node}.PREC", prec, "MODEL.BACKBONE.PATH", str(clip_path),
        "DATASET.NAME", register_tiny_folder_dataset(), "DATASET.ROOT", str(root / "images"),
        "OUTPUT_DIR", str(root / name), "INPUT.TRANSFORMS", ["normalize"], "DATALOADER.NUM_WORKERS", 0,
        "DATALOADER.TRAIN_X.BATCH_SIZE", batch, "DATALOADER.TEST.BATCH_SIZE", batch,
        "USE_CUDA", device == "cuda", "VERBOSE", False, *opts,
    ])
    cfg.freeze()
    trainer = build_trainer(cfg)
    trainer.num_batches = 10 ** 9
    trainer.batch_idx = 0
    if getattr(trainer, "pd", None) is not None and trainer.pd.amed is not None:
        trainer.set_model_mode("eval")
        conditions = after_training.conditions(trainer.pd, [trainer.parse_batch_train(next(iter(trainer.train_loader_x)))[0]])
        after_training.distill(trainer.pd, conditions, conditions, 0, trainer.cfg.TRAINER.PD.AMED.DISTILL_ITERS)
    return trainer


def make_paper_trainer(name: str, root: Path, clip_path: Path, batch: int, device: str, opts: Sequence = (),
                       prec: str = "fp32"):
    """``name`` (a host of ``PAPER_CONFIGS`` or its ``<host>PD``) with the host's paper config at
    ``prec``; AMED distilled for one batch; CoPrompt's descriptions from ``write_descriptions_for``."""
    config, node = PAPER_CONFIGS[name[:-2] if name.endswith("PD") else name]
    return make_timed_trainer(name, config, node, root, clip_path, batch, device, [
        "TRAINER.CoPrompt.DESCRIPTIONS_DIR", str(root / "descriptions"),
        "TRAINER.PD.AMED.DISTILL_ITERS", 1, *opts,
    ], prec)


def test_batch(images: torch.Tensor) -> dict:
    """A loader batch of ``images`` (labels 0, dataset indices 0..B-1), as the engine's test loop gets it."""
    return {"img": images, "label": torch.zeros(len(images), dtype=torch.long), "index": torch.arange(len(images))}


def inference_runs(trainer, images: torch.Tensor, prefix: str = "") -> Dict[str, Callable[[], object]]:
    """``model_inference`` on ``images`` and, for a PD trainer, its three parts: π (the frozen
    prompt-free image pass + Meta-Net), sampling (NFE denoiser calls) and the logits under the
    per-sample prompts. Keys start with ``prefix``."""
    trainer.parse_batch_test(test_batch(images))  # a PD trainer keeps the batch's indices (its noise seeds)
    runs = {f"{prefix}inference": lambda: trainer.model_inference(images)}
    pd = getattr(trainer, "pd", None)
    if pd is not None:
        indices = torch.arange(len(images))
        with torch.no_grad():
            features = pd.adapter.image_features(images)
            pi = pd.condition(features)
            center = pd.host_prompts(features)
            prompts = pd.generate(pi, center, indices)
        runs[f"{prefix}  π (frozen image pass + Meta-Net)"] = lambda: pd.condition(pd.adapter.image_features(images))
        runs[f"{prefix}  sampling (NFE denoiser calls)"] = lambda: pd.generate(pi, center, indices)
        runs[f"{prefix}  logits (per-sample prompts)"] = lambda: pd.adapter.logits(images, prompts, features)
    return runs
