"""Sampler time per batch at a fixed NFE, all samplers side by side (and, on request, accuracy).

Timing: builds a default-size PromptDenoiser (12 layers, 16 heads, width 512, untrained: timing
only) for prompts of 4×512 and 18×512 tokens and times ``sample`` for every sampler, next to the
bare cost of NFE network forwards (the sampler's own arithmetic is the difference).

Accuracy (``--accuracy``): on Gaussian data with the exact denoiser (``diffusion.analytic``), the
relative error of each ODE sampler at the given NFE against the exact probability-flow answer, per
σ grid, with AMED distilled from DPM-Solver++(2M); and the convergence order of each fixed solver
fitted from log error vs log NFE at NFE 17, 33, 65, 129.

    python benchmarks/bench_samplers.py                 # CPU, 1 thread, B=32, NFE=5
    python benchmarks/bench_samplers.py --accuracy      # seconds, no timing
    python benchmarks/bench_samplers.py --device cuda --threads 4
"""
import argparse
import time
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

from prompt_diffusion.diffusion import (
    GRID_KINDS,
    SAMPLERS,
    AMEDPredictor,
    NoiseSchedule,
    PromptDenoiser,
    distill_amed,
    sample,
)
from prompt_diffusion.diffusion.analytic import GaussianDenoiser


def round_times(runs: Dict[str, Callable[[], object]], repeats: int,
                device: torch.device) -> Dict[str, List[Tuple[float, float]]]:
    """(wall, process CPU) seconds of each run in each of ``repeats`` interleaved rounds.

    One warm-up call each first. Rounds interleave the runs so that load from other processes
    on a shared machine hits all of them alike.
    """
    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for run in runs.values():
        run()
    synchronize()
    times: Dict[str, List[Tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            synchronize()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def timings(runs: Dict[str, Callable[[], object]], repeats: int, device: torch.device) -> Dict[str, Tuple[float, float]]:
    """Fastest (wall, process CPU) seconds of each run over ``repeats`` interleaved rounds
    (``round_times``): the least disturbed measurement on a shared machine."""
    return {name: (min(wall for wall, _ in rounds), min(cpu for _, cpu in rounds))
            for name, rounds in round_times(runs, repeats, device).items()}


def ratio_line(best: Dict[str, Tuple[float, float]], numerator: str, denominator: str, digits: int = 3) -> str:
    """``<numerator> / <denominator>: <wall ratio> (wall), <CPU ratio> (CPU)`` of ``timings``' result."""
    wall, cpu = (best[numerator][i] / best[denominator][i] for i in (0, 1))
    return f"{numerator} / {denominator}: {wall:.{digits}f} (wall), {cpu:.{digits}f} (CPU)"


def accuracy(nfe: int) -> None:
    """Print relative errors at ``nfe`` per grid and the fitted convergence orders (float64)."""
    schedule = NoiseSchedule()
    generator = torch.Generator().manual_seed(0)
    dim = 16
    mean = 0.3 * torch.randn(dim, generator=generator, dtype=torch.float64)
    std = torch.linspace(0.2, 1.5, dim, dtype=torch.float64)
    denoiser = GaussianDenoiser(mean, std, schedule)
    noise = torch.randn(1024, dim, generator=generator, dtype=torch.float64)
    exact = denoiser.exact_sample(noise)

    def error(name: str, steps: int, grid: str = "logsnr", predictor=None) -> float:
        out = sample(denoiser, noise, schedule, name, steps, amed_predictor=predictor, grid=grid)
        return ((out - exact).norm() / exact.norm()).item()

    solvers = ["ddim", "dpm_solver_2", "dpmpp_2m"]
    print(f"relative error at NFE={nfe} on Gaussian data (exact denoiser, float64), per σ grid")
    print(f"{'grid':>12} | " + " | ".join(f"{name:>12}" for name in solvers + ["amed", "amed (r=.5,c=1)"]))
    for grid in GRID_KINDS:
        predictor = AMEDPredictor(feature_dim=1, nfe=nfe, grid=grid).double()
        batches = ((denoiser, torch.randn(64, dim, generator=generator, dtype=torch.float64)) for _ in range(100))
        distill_amed(predictor, batches, schedule, progress=False)
        fresh = AMEDPredictor(feature_dim=1, nfe=nfe, grid=grid).double()
        row = [error(name, nfe, grid) for name in solvers]
        row += [error("amed", nfe, grid, predictor), error("amed", nfe, grid, fresh)]
        print(f"{grid:>12} | " + " | ".join(f"{value:>12.4f}" for value in row))
    nfes = [17, 33, 65, 129]
    print(f"convergence order (slope of log error vs log NFE over NFE {nfes}, logsnr grid)")
    for name in solvers:
        errors = [error(name, steps) for steps in nfes]
        slope = np.polyfit(np.log(nfes), np.log(errors), 1)[0]
        print(f"{name:>12}: order {-slope:.2f}  (errors {', '.join(f'{e:.2e}' for e in errors)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--nfe", type=int, default=5)
    parser.add_argument("--tokens", type=int, nargs="+", default=[4, 18], help="prompt lengths (×512)")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--accuracy", action="store_true", help="print sampler accuracy instead of timing")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.accuracy:
        accuracy(args.nfe)
        return
    torch.manual_seed(0)
    device = torch.device(args.device)
    schedule = NoiseSchedule()
    print(f"sampler time per batch: B={args.batch}, NFE={args.nfe}, denoiser {args.layers} layers × "
          f"width {args.width} × {args.heads} heads, device {device}, {args.threads} thread(s); fastest of "
          f"{args.repeats} interleaved rounds, wall / process-CPU milliseconds")
    columns = ["network ×NFE", *SAMPLERS]
    header = f"{'prompt':>9} | " + " | ".join(f"{name:>15}" for name in columns)
    print(header)
    print("-" * len(header))
    for tokens in args.tokens:
        denoiser = PromptDenoiser([("text", tokens, 512)], cond_dim=512, layers=args.layers, heads=args.heads,
                                  width=args.width).to(device).eval()
        predictor = AMEDPredictor(feature_dim=args.width, nfe=args.nfe).to(device).eval()
        cond = torch.randn(args.batch, 512, device=device)
        noise = torch.randn(args.batch, denoiser.layout.numel, device=device)
        denoise = denoiser.denoise_fn(cond)
        t = torch.full((args.batch,), 50.0, device=device)

        def network() -> None:
            with torch.no_grad():
                for _ in range(args.nfe):
                    denoise(noise, t)

        def sampler_run(name: str) -> Callable[[], object]:
            generator = torch.Generator(device).manual_seed(0)
            return lambda: sample(denoise, noise, schedule, name, args.nfe, generator, predictor)

        runs = {"network ×NFE": network, **{name: sampler_run(name) for name in SAMPLERS}}
        best = timings(runs, args.repeats, device)
        print(f"{f'{tokens}×512':>9} | " + " | ".join(f"{best[n][0] * 1e3:>6.0f} / {best[n][1] * 1e3:>6.0f}" for n in columns))


if __name__ == "__main__":
    main()
