"""The CUDA path in one command, for a lent GPU (under 5 minutes on one): the CUDA tests, then
prompt diffusion's cost table.

1. ``pytest -m cuda tests/test_devices.py``: every host and PD variant trained a step, evaluated and
   checkpointed in fp32 / fp16 / amp, AMED distilled in fp16 (all of which also run on the CPU),
   registered models on the GPU, seeded inference, GPU <-> CPU checkpoints, host-device
   synchronisations while sampling (the count is printed).
2. ms per image, CoCoOp vs CoCoOpPD, at NFE 1, 2, 3, 5, 10 (AMED distilled for one batch), for
   B = 4 and 32 and K = 100 and 1000, beside the paper's extra time at NFE 5 (Fig. 4: +0.045 s
   per prediction, batch not stated).
3. VPTPD, MaPLePD, PromptSRCPD, CoPromptPD against their hosts at NFE 5 (K = 100).
4. Peak GPU memory at K = 1000 (ImageNet's class count), B = 4, for CoCoOp and CoCoOpPD: inference
   and one training step (online overfitting, I = 5), above what the resident models hold.

CLIP ViT-B/16 architecture with random weights (timing only), fp16 (``TRAINER.<host>.PREC``), the
paper's configs (``*_pd_paper.yaml``), default ``TRAINER.PD``; times are those of the fastest of
``--repeats`` interleaved rounds after a warm-up call (``bench_samplers.timings``): wall time on a
GPU, process CPU time on a CPU (``timed_ms``).

``--dry-run`` walks the same path on the CPU at tiny scale (a 12-layer tiny CLIP, K = 3 and 5,
B = 2 and 4, a 2-layer denoiser, fp32, no memory column): it checks the script, not the GPU.
``--cpu`` measures the real architecture on the CPU at a scale a CPU affords (K = 10 and 100, B = 4,
fp32, DPM-Solver++(2M): the same NFE denoiser calls as AMED, without its distillation).

    python benchmarks/gpu_check.py                     # on a GPU
    python benchmarks/gpu_check.py --dry-run           # anywhere, about a minute
    python benchmarks/gpu_check.py --cpu --skip-tests  # ViT-B/16 on 1 CPU thread, 10-20 minutes
"""
import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from bench_multimodal_pd import MULTIMODAL_HOSTS
from bench_samplers import timings
from trainer_timing import REPO, make_paper_trainer, test_batch, write_descriptions_for, write_images
from prompt_diffusion.backbones import build_random_clip, build_tiny_clip, save_clip
from prompt_diffusion.results import load_paper_table

NFES = (1, 2, 3, 5, 10)


@dataclass(frozen=True)
class Scale:
    """What one run of the check measures."""

    device: str
    prec: str
    classes: Tuple[int, ...]  # K of the NFE table; the last is the memory column's K
    batches: Tuple[int, ...]
    multimodal_classes: int
    repeats: int
    pd_opts: Tuple = ()  # TRAINER.PD keys on top of the defaults
    tiny: bool = False


GPU = Scale(device="cuda", prec="fp16", classes=(100, 1000), batches=(4, 32), multimodal_classes=100, repeats=10)
# the real architecture on a CPU, where no GPU is lent: fewer classes and rounds, DPM-Solver++(2M)
# (the same NFE denoiser calls as AMED, without distilling a predictor over every training image)
CPU = Scale(device="cpu", prec="fp32", classes=(10, 100), batches=(4,), multimodal_classes=10, repeats=2,
            pd_opts=("TRAINER.PD.SAMPLER", "dpmpp_2m"))
DRY = Scale(device="cpu", prec="fp32", classes=(3, 5), batches=(2, 4), multimodal_classes=3, repeats=2,
            pd_opts=("TRAINER.PD.GENERATOR_SIZE.LAYERS", 2, "TRAINER.PD.GENERATOR_SIZE.WIDTH", 64,
                     "TRAINER.PD.GENERATOR_SIZE.HEADS", 4), tiny=True)


def run_cuda_tests() -> int:
    """``pytest -m cuda tests/test_devices.py`` in a subprocess (its output streams through)."""
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda", "-s", str(REPO / "tests" / "test_devices.py")]
    print("$ " + " ".join(command), flush=True)
    return subprocess.call(command, cwd=REPO)


def write_clip(path: Path, tiny: bool) -> Path:
    """A random-weight CLIP file: ViT-B/16's architecture, or (``tiny``) a 12-layer small ViT."""
    model = (build_tiny_clip(vision_layers=12, transformer_layers=12, image_resolution=32) if tiny
             else build_random_clip("ViT-B/16"))
    save_clip(model, path)
    return path


class World:
    """Image folders with K classes (one image each, 32 px: the loaders resize) and one CLIP file,
    under ``root``; trainers built on them for ``scale``."""

    def __init__(self, root: Path, scale: Scale):
        self.root, self.scale = root, scale
        self.clip_path = write_clip(root / "clip.pt", scale.tiny)

    def folder(self, classes: int) -> Path:
        folder = self.root / f"k{classes}"
        if not folder.exists():
            write_images(folder, classes, per_class=1, size=32)
            write_descriptions_for(folder, classes)
        return folder

    def trainer(self, name: str, classes: int, batch: int, opts: Sequence = ()):
        """``name`` with its host's paper config on ``classes`` classes, AMED distilled for one batch."""
        extra = list(self.scale.pd_opts) + (["INPUT.SIZE", (32, 32)] if self.scale.tiny else []) + list(opts)
        return make_paper_trainer(name, self.folder(classes), self.clip_path, batch, self.scale.device, extra,
                                  self.scale.prec)


def timed_ms(runs: dict, scale: Scale) -> dict:
    """Milliseconds of each run (``bench_samplers.timings``, interleaved): wall time on a GPU; on a
    CPU the process CPU time of the fastest round, the steadier measure of a single-threaded run's
    work on a machine shared with other processes (its wall time includes waiting for a core)."""
    best = timings(runs, scale.repeats, torch.device(scale.device))
    return {key: 1000 * (wall if scale.device == "cuda" else cpu) for key, (wall, cpu) in best.items()}


def random_images(trainer, batch: int) -> torch.Tensor:
    """``[batch, 3, H, W]`` normal pixels at the trainer's input size, on its device (timing only)."""
    size = tuple(trainer.cfg.INPUT.SIZE)
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0)).to(trainer.device)


def inference(trainer, images: torch.Tensor) -> Callable[[], object]:
    trainer.parse_batch_test(test_batch(images))  # a PD trainer keeps the batch's indices (its noise seeds)

    def run():
        with torch.no_grad():
            return trainer.model_inference(images)

    return run


def nfe_table(world: World, scale: Scale, paper_extra_s: float) -> List[str]:
    """Markdown rows: CoCoOp and CoCoOpPD ms per image at each NFE, per K and B."""
    rows = ["| K | B | CoCoOp ms/image | " + " | ".join(f"PD NFE {n}" for n in NFES)
            + f" | extra at NFE 5 (paper: +{1000 * paper_extra_s:.0f} ms per prediction) |",
            "|---|---|---|" + "---|" * len(NFES) + "---|"]
    for classes in scale.classes:
        trainers = {"host": world.trainer("CoCoOp", classes, max(scale.batches))}
        trainers.update({n: world.trainer("CoCoOpPD", classes, max(scale.batches), ["TRAINER.PD.NFE", n])
                         for n in NFES})
        for trainer in trainers.values():
            trainer.set_model_mode("eval")
        for batch in scale.batches:
            images = random_images(trainers["host"], batch)
            per_batch = timed_ms({key: inference(trainer, images) for key, trainer in trainers.items()}, scale)
            per_image = {key: ms / batch for key, ms in per_batch.items()}
            cells = " | ".join(f"{per_image[n]:.2f} ({per_image[n] / per_image['host']:.2f}x)" for n in NFES)
            rows.append(f"| {classes} | {batch} | {per_image['host']:.2f} | {cells} | "
                        f"+{per_image[5] - per_image['host']:.2f} ms/image, +{per_batch[5] - per_batch['host']:.1f} ms/batch |")
            print(rows[-1], flush=True)
        del trainers
    return rows


def multimodal_table(world: World, scale: Scale) -> List[str]:
    """Markdown rows: each multi-modal host and its PD variant at NFE 5, ms per image and ratio."""
    rows = ["| host | B | host ms/image | PD ms/image | PD / host |", "|---|---|---|---|---|"]
    classes = scale.multimodal_classes
    for host in MULTIMODAL_HOSTS:
        trainers = {name: world.trainer(name, classes, max(scale.batches)) for name in (host, f"{host}PD")}
        for trainer in trainers.values():
            trainer.set_model_mode("eval")
        for batch in scale.batches:
            images = random_images(trainers[host], batch)
            per_batch = timed_ms({name: inference(trainer, images) for name, trainer in trainers.items()}, scale)
            host_ms, pd_ms = (per_batch[name] / batch for name in (host, f"{host}PD"))
            rows.append(f"| {host} | {batch} | {host_ms:.2f} | {pd_ms:.2f} | {pd_ms / host_ms:.2f}x |")
            print(rows[-1], flush=True)
        del trainers
    return rows


def peak_memory_gib(run: Callable[[], object], device: str) -> Optional[float]:
    """Peak memory ``run`` allocates on the GPU above what was allocated before it (GiB); None on a CPU."""
    if device != "cuda":
        run()
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    resident = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - resident) / 2 ** 30


def memory_table(world: World, scale: Scale) -> List[str]:
    """Markdown rows: peak memory of CoCoOp and CoCoOpPD at the largest K, B = 4."""
    classes, batch = scale.classes[-1], 4
    rows = [f"| model (K = {classes}, B = {batch}) | inference peak GiB | training step peak GiB |", "|---|---|---|"]
    for name in ("CoCoOp", "CoCoOpPD"):
        trainer = world.trainer(name, classes, batch)
        images = random_images(trainer, batch)
        trainer.set_model_mode("eval")
        infer = peak_memory_gib(inference(trainer, images), scale.device)
        trainer.set_model_mode("train")
        train_batch = next(iter(trainer.train_loader_x))
        step = peak_memory_gib(lambda: trainer.forward_backward(train_batch), scale.device)
        cells = [("n/a (CPU)" if value is None else f"{value:.2f}") for value in (infer, step)]
        rows.append(f"| {name} | {cells[0]} | {cells[1]} |")
        print(rows[-1], flush=True)
    return rows


def device_name(scale: Scale) -> str:
    if scale.device == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    what = "dry run: tiny models, not a measurement of the method" if scale.tiny else "ViT-B/16 architecture"
    return f"CPU, {torch.get_num_threads()} thread(s) ({what})"


def tests_verdict(rc: int, skipped: bool, scale: Scale) -> str:
    if skipped:
        return "not run (--skip-tests)"
    if rc != 0:
        return f"FAILED (pytest exit {rc})"
    return "passed" if scale.device == "cuda" else "collected, and skipped without a GPU"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="tiny scale on the CPU: checks the script end to end")
    mode.add_argument("--cpu", action="store_true",
                      help="ViT-B/16 on the CPU (K 10 and 100, B 4, fp32, dpmpp_2m): the table where no GPU is lent")
    parser.add_argument("--skip-tests", action="store_true", help="the cost table only")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 10 on a GPU, 2 dry)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (dry run)")
    args = parser.parse_args(argv)
    scale = DRY if args.dry_run else CPU if args.cpu else GPU
    if args.repeats is not None:
        scale = Scale(**{**scale.__dict__, "repeats": args.repeats})
    if scale.device == "cuda" and not torch.cuda.is_available():
        print("No CUDA device: run on a GPU, or use --dry-run to check the script on the CPU", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    tests_rc = 0 if args.skip_tests else run_cuda_tests()
    torch.manual_seed(0)
    paper_extra = float(load_paper_table("figure4").data["facts"]["extra_prediction_time_vs_host_s"])
    measure = "wall time" if scale.device == "cuda" else "process CPU time"
    print(f"\nCost table on {device_name(scale)}; PREC {scale.prec}; {measure} of the fastest of {scale.repeats} "
          "interleaved rounds")
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp), scale)
        sections = [
            ("CoCoOp vs CoCoOpPD, ms per image (ratio to CoCoOp)", nfe_table(world, scale, paper_extra)),
            ("Multi-modal hosts vs their PD variants at NFE 5", multimodal_table(world, scale)),
            ("Peak memory above the resident models", memory_table(world, scale)),
        ]
    print(f"\n## gpu_check: {time.strftime('%Y-%m-%d')}, {device_name(scale)}; {measure}")
    print(f"CUDA tests: {tests_verdict(tests_rc, args.skip_tests, scale)}")
    for title, rows in sections:
        print(f"\n### {title}\n")
        print("\n".join(rows))
    print(f"\nTotal {time.perf_counter() - started:.0f} s")
    return tests_rc


if __name__ == "__main__":
    sys.exit(main())
