"""What prompt diffusion costs on top of its host: CoCoOpPD vs CoCoOp and VPTPD vs VPT, side by side.

ViT-B/16 architecture with random weights (timing only), fp32, B images per batch, K classes, the
paper's settings (``*_pd_paper.yaml``: 4 prompt tokens; VPT depth 12) and the default ``TRAINER.PD``
(denoiser 12 layers / 16 heads / width 512, NFE 5, AMED sampler distilled for one batch, so the timed
sampling is AMED's). The real trainers run ``model_inference`` and ``forward_backward`` on one batch
of a generated K-class image folder:

- inference: CoCoOpPD vs CoCoOp (target <= 1.10x), VPTPD vs VPT (target <= 2.2x: VPTPD needs a
  frozen prompt-free image pass for π on top of the prompted one), VPTPD also with
  ``TRAINER.PD.DEEP_TOKENS layer`` (12 denoiser tokens instead of 48); the PD inference also split
  into π, sampling (NFE denoiser calls) and the logits under the per-sample prompts;
- training step: CoCoOp vs CoCoOpPD with I per-sample overfitting steps online (every step) and
  cached (``OVERFIT.MODE cached``: V* reused; timed on cache hits).

    python benchmarks/bench_pd_overhead.py                     # CPU, 2 threads, B=4, K=10
    python benchmarks/bench_pd_overhead.py --device cuda --repeats 20 --train-repeats 5
"""
import argparse
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict

import torch

from bench_samplers import timings  # interleaved rounds, fastest wall/CPU time per run
from prompt_diffusion.backbones import build_random_clip, save_clip
from prompt_diffusion.config import extend_cfg
from prompt_diffusion.engine import build_trainer, get_cfg_default

import prompt_diffusion.trainers  # noqa: F401  (registers the trainers and their PD variants)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from helpers import make_image_folder, register_tiny_folder_dataset  # noqa: E402  (generated image folder)

CONFIGS = REPO / "configs" / "trainers"
PAPER_CONFIGS = {
    "CoCoOp": ("CoCoOp/vit_b16_c4_ep50_batch4_ctxv1_pd_paper.yaml", "COCOOP"),
    "VPT": ("VPT/vit_b16_c4_ep50_batch32_4_pd_paper.yaml", "VPT"),
}


def make_trainer(name: str, root: Path, clip_path: Path, args: argparse.Namespace, opts=()):
    host = name[:-2] if name.endswith("PD") else name
    config, node = PAPER_CONFIGS[host]
    cfg = extend_cfg(get_cfg_default())
    cfg.merge_from_file(str(CONFIGS / config))
    cfg.merge_from_list([
        "TRAINER.NAME", name, f"TRAINER.{node}.PREC", "fp32", "MODEL.BACKBONE.PATH", str(clip_path),
        "DATASET.NAME", register_tiny_folder_dataset(), "DATASET.ROOT", str(root / "images"),
        "OUTPUT_DIR", str(root / name),
        "INPUT.TRANSFORMS", ["normalize"], "DATALOADER.NUM_WORKERS", 0,
        "DATALOADER.TRAIN_X.BATCH_SIZE", args.batch, "DATALOADER.TEST.BATCH_SIZE", args.batch,
        "USE_CUDA", args.device == "cuda", "VERBOSE", False, "TRAINER.PD.OVERFIT.ITERS", args.iters,
        "TRAINER.PD.AMED.DISTILL_ITERS", 1, "TRAINER.PD.AMED.BATCH", args.batch, *opts,
    ])
    cfg.freeze()
    trainer = build_trainer(cfg)
    trainer.num_batches = 10 ** 9  # never the last batch: no scheduler step inside forward_backward
    trainer.batch_idx = 0
    if hasattr(trainer, "pd_amed") and trainer.pd_amed is not None:
        trainer.pd_distill_amed()  # one batch: the predictor exists, so sampling runs AMED
    return trainer


def inference_runs(trainer, images: torch.Tensor) -> Dict[str, Callable[[], object]]:
    """The inference forward and, for a PD trainer, its three parts (π, sampling, logits)."""
    runs = {"inference": lambda: trainer.model_inference(images)}
    if hasattr(trainer, "pd_adapter"):
        adapter = trainer.pd_adapter
        with torch.no_grad():
            features = adapter.image_features(images)
            pi = trainer.pd_condition(features)
            prompts = trainer.pd_generate(pi, 0)
        runs["  π (frozen image pass + Meta-Net)"] = lambda: trainer.pd_condition(adapter.image_features(images))
        runs["  sampling (NFE denoiser calls)"] = lambda: trainer.pd_generate(pi, 0)
        runs["  logits (per-sample prompts)"] = lambda: adapter.logits(images, prompts, features)
    return runs


def compare(trainers: Dict[str, object], make_runs, repeats: int, device: torch.device, batch: int) -> None:
    """Time every run of every trainer in interleaved rounds; print ms per batch / image and the
    ratio to the first trainer (the host)."""
    runs = {(label, key): run for label, trainer in trainers.items() for key, run in make_runs(trainer).items()}
    best = timings(runs, repeats, device)
    host = next(iter(trainers))
    for (label, key), (wall, cpu) in best.items():
        base = best.get((host, key))
        ratio = f"{wall / base[0]:6.2f}x {host}" if base is not None and label != host else ""
        print(f"  {label:24s} {key:36s} {1000 * wall:9.1f} ms/batch {1000 * wall / batch:8.1f} ms/image "
              f"(CPU {1000 * cpu:9.1f} ms)  {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="images per batch (B)")
    parser.add_argument("--classes", type=int, default=10, help="classes (K)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5, help="per-sample overfitting steps I")
    parser.add_argument("--repeats", type=int, default=5, help="timed inference rounds (fastest counts)")
    parser.add_argument("--train-repeats", type=int, default=2,
                        help="timed training-step rounds (fastest counts)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--hosts", nargs="+", default=list(PAPER_CONFIGS), choices=list(PAPER_CONFIGS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    print(f"ViT-B/16 (random weights), fp32, {args.device}, {args.threads} threads, B={args.batch}, "
          f"K={args.classes}, I={args.iters}; fastest of interleaved rounds after a warm-up call")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        per_class = -(-args.batch // args.classes)  # enough images for one batch, no more (π pass of AMED)
        make_image_folder(root / "images", [f"class_{k}" for k in range(args.classes)], per_class, size=224)
        clip_path = root / "vit_b16_random.pt"
        save_clip(build_random_clip("ViT-B/16"), clip_path)

        for host in args.hosts:
            trainers = {name: make_trainer(name, root, clip_path, args) for name in (host, f"{host}PD")}
            if host == "VPT":  # one denoiser token per prompted layer: 12 tokens instead of 48
                trainers["VPTPD layer tokens"] = make_trainer(
                    "VPTPD", root, clip_path, args, ["TRAINER.PD.DEEP_TOKENS", "layer"])
            batch = next(iter(trainers[host].train_loader_x))
            images = trainers[host].parse_batch_test(batch)[0]
            for trainer in trainers.values():
                trainer.set_model_mode("eval")
            print(f"\nInference, {host} family (best of {args.repeats} interleaved rounds)")
            with torch.no_grad():
                compare(trainers, lambda trainer: inference_runs(trainer, images), args.repeats, device, args.batch)
            if host == "CoCoOp":
                trainers["CoCoOpPD cached"] = make_trainer(
                    "CoCoOpPD", root, clip_path, args, ["TRAINER.PD.OVERFIT.MODE", "cached"])
                trainers[f"CoCoOpPD online I={args.iters}"] = trainers.pop("CoCoOpPD")
                for trainer in trainers.values():
                    trainer.set_model_mode("train")
                print(f"\nTraining step, {host} family (best of {args.train_repeats} interleaved rounds; "
                      "the warm-up step fills the cache)")
                compare(trainers, lambda trainer: {"training step": lambda: trainer.forward_backward(batch)},
                        args.train_repeats, device, args.batch)
            del trainers


if __name__ == "__main__":
    main()
