"""Inference cost of the per-image rows, side by side: milliseconds per test image and ratios.

Each ``--run NAME=DIR`` is an evaluation run of a sweep (a ``test_new`` folder, or a ``train_base``
one): its model is rebuilt from the command the sweep recorded in ``DIR/console.txt`` (the last
``$ prompt-diffusion train`` line: the same trainer, config files, opts and ``--model-dir``), the
first ``--images`` test images are loaded once, and in ``--repeats`` interleaved rounds every
model classifies them as its evaluation does (``parse_batch_test`` then ``model_inference``: for a
PD model the sampler, TPT's step or Zero's views included); the fastest round of each counts. Ratios
are to each ``--ratio A/B`` pair. Run it alone, on one thread (the sweeps' ``time_per_image_ms``
come from separate processes on a shared CPU).

    OMP_NUM_THREADS=1 python benchmarks/bench_per_image.py --images 100 --repeats 3 \\
      --run CoCoOp=RUNS/test_new/.../CoCoOp/.../seed1 --run ZS-weighted=RUNS/test_new/.../seed1 \\
      --ratio ZS-weighted/CoCoOp
"""
import argparse
import shlex
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

from bench_samplers import ratio_line, timings  # interleaved rounds, fastest wall/CPU time per run

from prompt_diffusion import engine
from prompt_diffusion.commands import train

COMMAND_PREFIX = "$ prompt-diffusion train "


def recorded_command(run: Path) -> List[str]:
    """The ``prompt-diffusion train`` arguments the sweep last ran in ``run`` (its console.txt)."""
    lines = [line for line in (run / "console.txt").read_text(encoding="utf-8").splitlines()
             if line.startswith(COMMAND_PREFIX)]
    if not lines:
        raise SystemExit(f"{run}/console.txt holds no '{COMMAND_PREFIX.strip()}' line: not a sweep's run folder")
    return shlex.split(lines[-1][len(COMMAND_PREFIX):])


def build_evaluation(run: Path, scratch: Path) -> engine.TrainerBase:
    """The run's trainer, its model loaded as its evaluation loaded it; outputs go to ``scratch``."""
    argv = recorded_command(run)
    argv[argv.index("--output-dir") + 1] = str(scratch)
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args(argv)
    cfg, _ = train.prepare(args)
    engine.set_random_seed(max(cfg.SEED, 0))
    trainer = engine.build_trainer(cfg)
    if args.model_dir:
        trainer.load_model(args.model_dir, epoch=args.load_epoch)
    trainer.set_model_mode("eval")
    return trainer


def first_batches(trainer: engine.TrainerBase, images: int) -> List[dict]:
    """The test loader's first batches holding ``images`` images (the last one cut)."""
    batches, seen = [], 0
    for batch in trainer.test_loader:
        keep = min(len(batch["label"]), images - seen)
        batches.append({k: v[:keep] for k, v in batch.items()})
        seen += keep
        if seen >= images:
            break
    return batches


def classify(trainer: engine.TrainerBase, batches: List[dict]) -> Callable[[], None]:
    """One pass of the evaluation's model over ``batches``, as ``test()`` makes it."""
    def run() -> None:
        with torch.no_grad():
            for batch in batches:
                images, _ = trainer.parse_batch_test(batch)
                trainer.model_inference(images)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="NAME=DIR",
                        help="a row's name and one of its evaluation run folders (repeatable)")
    parser.add_argument("--ratio", action="append", default=[], metavar="A/B", help="print A's time over B's")
    parser.add_argument("--images", type=int, default=100, help="test images per model")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (the fastest counts)")
    args = parser.parse_args()
    runs: Dict[str, Callable[[], None]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for item in args.run:
            name, _, folder = item.partition("=")
            trainer = build_evaluation(Path(folder), Path(scratch) / name)
            runs[name] = classify(trainer, first_batches(trainer, args.images))
        best: Dict[str, Tuple[float, float]] = timings(runs, args.repeats, torch.device("cpu"))
    print(f"fastest of {args.repeats} interleaved rounds, {args.images} test images, "
          f"{torch.get_num_threads()} thread(s)")
    for name, (wall, cpu) in best.items():
        print(f"{name}: {1000 * wall / args.images:.2f} ms/image (wall), {1000 * cpu / args.images:.2f} (CPU)")
    for pair in args.ratio:
        numerator, _, denominator = pair.partition("/")
        print(ratio_line(best, numerator, denominator, digits=2))


if __name__ == "__main__":
    main()
