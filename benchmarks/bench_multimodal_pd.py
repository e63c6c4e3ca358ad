"""Prompt diffusion's inference cost on the hosts with visual or multi-modal prompts: VPTPD, MaPLePD,
PromptSRCPD and CoPromptPD against their hosts, side by side in one process, and where the time goes
(the training step of every host: ``bench_training_step.py``). ``--hosts CoCoOp`` times CoCoOpPD
against CoCoOp the same way (the paper config ``CoCoOp/*_pd_paper.yaml``, 4 prompt tokens).

ViT-B/16 architecture with random weights (timing only), fp32, B images per batch, K classes, the
paper's settings (``*_pd_paper.yaml``: VPT 4 tokens at depth 12; MaPLe, PromptSRC, CoPrompt depth 9
with 2 tokens per modality) and the default ``TRAINER.PD`` (denoiser 12 layers / 16 heads / width
512, one denoiser token per prompted layer (``DEEP_TOKENS layer``), NFE 5, AMED distilled for one
batch, so the timed sampling is AMED's). The real trainers run
``model_inference`` on one batch of a generated K-class image folder; each PD inference is also
split into its parts: π (the frozen prompt-free image pass + Meta-Net), sampling (NFE denoiser
calls) and the logits under the per-sample prompts (prompted image pass, B x K text sequences).
Rounds interleave every trainer of a host family, so load from other processes hits them alike;
the fastest round counts. Each row also shows the process CPU time of its fastest round: on a
machine loaded by other processes a single-threaded run's CPU time is the steadier measure of its
work (the wall time includes waiting for a core).

Levers (``--levers``; each a set of ``TRAINER.PD`` keys on top of the defaults, timed beside the
defaults): ``layer`` = ``DEEP_TOKENS layer`` (one denoiser token per prompted layer),
``vector`` = ``DEEP_TOKENS vector``, ``w256`` / ``w384`` / ``w512`` = ``GENERATOR_SIZE.WIDTH``.
Combine with ``+`` (``layer+w256``).

    python benchmarks/bench_multimodal_pd.py                                  # CPU, 1 thread, B=4, K=10
    python benchmarks/bench_multimodal_pd.py --hosts VPT --levers vector layer layer+w256
    python benchmarks/bench_multimodal_pd.py --device cuda --repeats 10
"""
import tempfile
from pathlib import Path
from typing import Dict, List

import torch

from bench_samplers import timings  # interleaved rounds, fastest wall / CPU time (this folder is on sys.path)
from trainer_timing import PAPER_CONFIGS, inference_runs, lever_opts, make_paper_trainer, timing_parser, write_world

# the hosts with visual or multi-modal prompts (their paper configs: trainer_timing.PAPER_CONFIGS)
MULTIMODAL_HOSTS = ("VPT", "MaPLe", "PromptSRC", "CoPrompt")
LEVERS = {
    "layer": ["TRAINER.PD.DEEP_TOKENS", "layer"],
    "vector": ["TRAINER.PD.DEEP_TOKENS", "vector"],
    "w256": ["TRAINER.PD.GENERATOR_SIZE.WIDTH", 256],
    "w384": ["TRAINER.PD.GENERATOR_SIZE.WIDTH", 384],
    "w512": ["TRAINER.PD.GENERATOR_SIZE.WIDTH", 512],
}


def compare(trainers: Dict[str, object], images: torch.Tensor, repeats: int, device: torch.device, batch: int) -> None:
    """Inference of every trainer and the parts of every PD one in interleaved rounds; ms per batch
    and per image, and each row's ratio to the host's inference (the first trainer)."""
    runs = {}
    with torch.no_grad():
        for label, trainer in trainers.items():
            trainer.set_model_mode("eval")
            runs.update({(label, key): run for key, run in inference_runs(trainer, images).items()})
        best = timings(runs, repeats, device)
    host = next(iter(trainers))
    base = best[(host, "inference")][0]
    for (label, key), (wall, cpu) in best.items():
        print(f"  {label:28s} {key:36s} {1000 * wall:9.1f} ms/batch {1000 * wall / batch:8.1f} ms/image "
              f"(CPU {1000 * cpu:9.1f} ms)  {wall / base:5.2f}x {host}", flush=True)


def main() -> None:
    parser = timing_parser(__doc__, repeats=3)
    parser.set_defaults(threads=1)
    parser.add_argument("--hosts", nargs="+", default=list(MULTIMODAL_HOSTS), choices=list(PAPER_CONFIGS))
    parser.add_argument("--levers", nargs="+", default=["default"],
                        help="PD settings timed side by side: 'default' or levers joined with '+' "
                             f"({', '.join(sorted(LEVERS))})")
    args = parser.parse_args()
    levers = {spec: lever_opts(spec, LEVERS) for spec in args.levers}
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    print(f"ViT-B/16 (random weights), fp32, {args.device}, {args.threads} thread(s), B={args.batch}, "
          f"K={args.classes}, paper configs, NFE 5 (AMED); fastest of {args.repeats} interleaved rounds "
          "after a warm-up call")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        per_class = -(-args.batch // args.classes)  # enough images for one batch, no more (π pass of AMED)
        clip_path = write_world(root, args.classes, per_class)
        for host in args.hosts:
            trainers = {host: make_paper_trainer(host, root, clip_path, args.batch, args.device)}
            for spec, opts in levers.items():
                trainers[f"{host}PD {spec}"] = make_paper_trainer(f"{host}PD", root, clip_path, args.batch,
                                                                  args.device, opts)
            images = trainers[host].parse_batch_test(next(iter(trainers[host].test_loader)))[0]
            print(f"\nInference, {host} family")
            compare(trainers, images, args.repeats, device, args.batch)
            del trainers


if __name__ == "__main__":
    main()
