"""What prompt diffusion costs on top of CoCoOp: CoCoOpPD vs CoCoOp, side by side.

ViT-B/16 architecture with random weights (timing only), fp32, B images per batch, K classes, the
paper's settings (``CoCoOp/*_pd_paper.yaml``: 4 prompt tokens) and the default ``TRAINER.PD``
(denoiser 12 layers / 16 heads / width 512, NFE 5, AMED sampler distilled for one batch, so the timed
sampling is AMED's). The real trainers run ``model_inference`` and ``forward_backward`` on one batch
of a generated K-class image folder:

- inference: CoCoOpPD vs CoCoOp (target <= 1.10x), the PD inference also split into π, sampling
  (NFE denoiser calls) and the logits under the per-sample prompts;
- training step: CoCoOp vs CoCoOpPD with I per-sample overfitting steps online (every step) and
  cached (``OVERFIT.MODE cached``: V* reused; timed on cache hits).

The hosts with visual or multi-modal prompts (VPT, MaPLe, PromptSRC, CoPrompt) are in
``bench_multimodal_pd.py``.

    python benchmarks/bench_pd_overhead.py                     # CPU, 2 threads, B=4, K=10
    python benchmarks/bench_pd_overhead.py --device cuda --repeats 20 --train-repeats 5
"""
import argparse
import tempfile
from pathlib import Path
from typing import Dict

import torch

from bench_samplers import timings  # interleaved rounds, fastest wall/CPU time per run
from trainer_timing import inference_runs, make_timed_trainer, timing_parser, write_world

COCOOP_PAPER = ("CoCoOp/vit_b16_c4_ep50_batch4_ctxv1_pd_paper.yaml", "COCOOP")


def make_trainer(name: str, root: Path, clip_path: Path, args: argparse.Namespace, opts=()):
    """CoCoOp's paper config for ``name`` (CoCoOp or CoCoOpPD); I overfitting steps, AMED distilled
    for one batch."""
    return make_timed_trainer(name, *COCOOP_PAPER, root, clip_path, args.batch, args.device, [
        "TRAINER.PD.OVERFIT.ITERS", args.iters, "TRAINER.PD.AMED.DISTILL_ITERS", 1,
        "TRAINER.PD.AMED.BATCH", args.batch, *opts,
    ])


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
    parser = timing_parser(__doc__, repeats=5, train_repeats=2)
    parser.add_argument("--iters", type=int, default=5, help="per-sample overfitting steps I")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    print(f"ViT-B/16 (random weights), fp32, {args.device}, {args.threads} threads, B={args.batch}, "
          f"K={args.classes}, I={args.iters}; fastest of interleaved rounds after a warm-up call")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        per_class = -(-args.batch // args.classes)  # enough images for one batch, no more (π pass of AMED)
        clip_path = write_world(root, args.classes, per_class)

        trainers = {name: make_trainer(name, root, clip_path, args) for name in ("CoCoOp", "CoCoOpPD")}
        batch = next(iter(trainers["CoCoOp"].train_loader_x))
        images = trainers["CoCoOp"].parse_batch_test(batch)[0]
        for trainer in trainers.values():
            trainer.set_model_mode("eval")
        print(f"\nInference (best of {args.repeats} interleaved rounds)")
        with torch.no_grad():
            compare(trainers, lambda trainer: inference_runs(trainer, images), args.repeats, device, args.batch)
        trainers["CoCoOpPD cached"] = make_trainer("CoCoOpPD", root, clip_path, args, ["TRAINER.PD.OVERFIT.MODE", "cached"])
        trainers[f"CoCoOpPD online I={args.iters}"] = trainers.pop("CoCoOpPD")
        for trainer in trainers.values():
            trainer.set_model_mode("train")
        print(f"\nTraining step (best of {args.train_repeats} interleaved rounds; the warm-up step fills the cache)")
        compare(trainers, lambda trainer: {"training step": lambda: trainer.forward_backward(batch)},
                args.train_repeats, device, args.batch)

if __name__ == "__main__":
    main()
