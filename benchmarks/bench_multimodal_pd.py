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
import tempfile
from pathlib import Path

import torch

from bench_samplers import timings  # interleaved rounds, fastest wall / CPU time (this folder is on sys.path)
from trainer_timing import inference_runs, make_timed_trainer, timing_parser, write_world

HOSTS = {
    "MaPLe": ("MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml", "MAPLE"),
    "PromptSRC": ("PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml", "PROMPTSRC"),
}


def make_trainer(name: str, root: Path, clip_path: Path, batch: int, device: str):
    """The upstream default config of ``name``'s host, sampler ``dpmpp_2m``."""
    config, node = HOSTS[name.replace("PD", "")]
    return make_timed_trainer(name, config, node, root, clip_path, batch, device, ["TRAINER.PD.SAMPLER", "dpmpp_2m"])


def compare(host: str, trainers: dict, batches: dict, repeats: int, train_repeats: int) -> None:
    """Time host and PD side by side (interleaved rounds) and print seconds and PD/host ratios."""
    device = torch.device(trainers[host].device)
    runs = {}
    with torch.no_grad():
        for name, trainer in trainers.items():
            trainer.set_model_mode("eval")
            runs.update(inference_runs(trainer, trainer.parse_batch_test(batches[name])[0], prefix=f"{name} "))
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
    args = timing_parser(__doc__, repeats=3, train_repeats=1).parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"ViT-B/16 (random weights), fp32, {args.device}, {args.threads} threads, B={args.batch}, "
          f"K={args.classes}; fastest of {args.repeats} (inference) / {args.train_repeats} (training step) rounds")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clip_path = write_world(root, args.classes, args.batch)
        for host in HOSTS:
            trainers = {name: make_trainer(name, root, clip_path, args.batch, args.device)
                        for name in (host, f"{host}PD")}
            batches = {name: next(iter(trainer.train_loader_x)) for name, trainer in trainers.items()}
            compare(host, trainers, batches, args.repeats, args.train_repeats)
            del trainers, batches


if __name__ == "__main__":
    main()
