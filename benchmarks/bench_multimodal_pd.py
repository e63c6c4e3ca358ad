"""Prompt diffusion on the multi-modal trainers: MaPLePD vs MaPLe and PromptSRCPD vs PromptSRC, side
by side in one run, inference and training step.

ViT-B/16 architecture with random weights (timing only), fp32, B images per batch, K classes, the
upstream default configs (MaPLe ``vit_b16_c2_ep5_batch4_2ctx``, PromptSRC ``vit_b16_c2_ep20_batch4_4+4ctx``)
and the default ``TRAINER.PD`` (denoiser 12 layers / 16 heads / width 512, NFE 5, I=5 online
overfitting; sampler ``dpmpp_2m``, which makes the same NFE denoiser calls as AMED without its
distillation phase). The real trainers run: ``model_inference`` and ``forward_backward`` on a batch
of a generated K-class image folder. The PD inference is also split into its parts: the frozen
prompt-free image pass for π, the NFE-step sampling, and the logits under the per-sample prompts
(B x K text sequences, EOT-truncated).

    python benchmarks/bench_multimodal_pd.py                  # CPU, 2 threads, B=4, K=10
    python benchmarks/bench_multimodal_pd.py --device cuda --repeats 10
"""
import argparse
import tempfile
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import torch
from PIL import Image

from bench_samplers import timings  # interleaved rounds, fastest wall / CPU time (this folder is on sys.path)
from prompt_diffusion.backbones import build_random_clip, save_clip
from prompt_diffusion.config import extend_cfg
from prompt_diffusion.engine import DATASET_REGISTRY, DatasetBase, Datum, build_trainer, get_cfg_default

import prompt_diffusion.trainers  # noqa: F401  (registers the trainers)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "trainers"
HOSTS = {
    "MaPLe": "MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml",
    "PromptSRC": "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml",
}
DATASET = "BenchImageFolder"


@DATASET_REGISTRY.register()
class BenchImageFolder(DatasetBase):
    """``DATASET.ROOT/<class>/*.png``; every image in train_x and test."""

    def __init__(self, cfg):
        root = Path(cfg.DATASET.ROOT)
        classnames = sorted(p.name for p in root.iterdir() if p.is_dir())
        items = [Datum(impath=str(path), label=label, classname=name)
                 for label, name in enumerate(classnames) for path in sorted((root / name).glob("*.png"))]
        super().__init__(train_x=items, test=items)


def write_images(root: Path, n_classes: int, per_class: int, size: int = 224) -> None:
    rng = np.random.default_rng(0)
    for label in range(n_classes):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def make_trainer(name: str, root: Path, clip_path: Path, batch: int, device: str):
    cfg = extend_cfg(get_cfg_default())
    cfg.merge_from_file(str(CONFIGS / HOSTS[name.replace("PD", "")]))
    node = "MAPLE" if name.startswith("MaPLe") else "PROMPTSRC"
    cfg.merge_from_list([
        "TRAINER.NAME", name, f"TRAINER.{node}.PREC", "fp32", "MODEL.BACKBONE.PATH", str(clip_path),
        "DATASET.NAME", DATASET, "DATASET.ROOT", str(root / "images"), "OUTPUT_DIR", str(root / name),
        "INPUT.TRANSFORMS", ["normalize"], "DATALOADER.NUM_WORKERS", 0,
        "DATALOADER.TRAIN_X.BATCH_SIZE", batch, "DATALOADER.TEST.BATCH_SIZE", batch,
        "USE_CUDA", device == "cuda", "TRAINER.PD.SAMPLER", "dpmpp_2m", "VERBOSE", False,
    ])
    cfg.freeze()
    trainer = build_trainer(cfg)
    trainer.num_batches = 10 ** 9  # never the last batch: no scheduler step inside forward_backward
    trainer.batch_idx = 0
    return trainer


def inference_runs(label: str, trainer, images) -> Dict[str, Callable[[], object]]:
    """``model_inference`` of ``trainer``; for a PD trainer also its three parts."""
    runs = {f"{label} inference": lambda: trainer.model_inference(images)}
    if hasattr(trainer, "pd_adapter"):
        adapter = trainer.pd_adapter
        features = adapter.image_features(images)
        pi = trainer.pd_condition(features)
        prompts = trainer.pd_generate(pi, 0)
        runs[f"{label}   π (frozen image pass + Meta-Net)"] = \
            lambda: trainer.pd_condition(adapter.image_features(images))
        runs[f"{label}   sampling (NFE denoiser calls)"] = lambda: trainer.pd_generate(pi, 0)
        runs[f"{label}   logits (per-sample prompts)"] = lambda: adapter.logits(images, prompts, features)
    return runs


def compare(host: str, trainers: dict, batches: dict, repeats: int, train_repeats: int) -> None:
    """Time host and PD side by side (interleaved rounds) and print seconds and PD/host ratios."""
    device = torch.device(trainers[host].device)
    runs = {}
    with torch.no_grad():
        for name, trainer in trainers.items():
            trainer.set_model_mode("eval")
            runs.update(inference_runs(name, trainer, trainer.parse_batch_test(batches[name])[0]))
        results = timings(runs, repeats, device)
    for trainer in trainers.values():
        trainer.set_model_mode("train")
    results.update(timings({f"{name} training step": (lambda t=trainer, b=batches[name]: t.forward_backward(b))
                            for name, trainer in trainers.items()}, train_repeats, device))
    print(f"\n{host} vs {host}PD: fastest wall / process-CPU seconds per batch (PD/host ratio of wall)")
    for key, (wall, cpu) in results.items():
        base = results.get(key.replace(f"{host}PD", host)) if key.startswith(f"{host}PD ") else None
        ratio = f"  {wall / base[0]:.2f}x" if base else ""
        print(f"{key:50s} {wall:9.3f} {cpu:9.3f}{ratio}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="images per batch (B)")
    parser.add_argument("--classes", type=int, default=10, help="classes (K)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed inference rounds (fastest)")
    parser.add_argument("--train-repeats", type=int, default=1, help="timed training-step rounds (fastest)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"ViT-B/16 (random weights), fp32, {args.device}, {args.threads} threads, B={args.batch}, "
          f"K={args.classes}; fastest of {args.repeats} (inference) / {args.train_repeats} (training step) rounds")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root / "images", args.classes, args.batch)
        clip_path = root / "vit_b16_random.pt"
        save_clip(build_random_clip("ViT-B/16"), clip_path)
        for host in HOSTS:
            trainers = {name: make_trainer(name, root, clip_path, args.batch, args.device)
                        for name in (host, f"{host}PD")}
            batches = {name: next(iter(trainer.train_loader_x)) for name, trainer in trainers.items()}
            compare(host, trainers, batches, args.repeats, args.train_repeats)
            del trainers, batches


if __name__ == "__main__":
    main()
