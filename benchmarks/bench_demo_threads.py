"""Why the demo runs one-thread processes side by side: wall time of the same work done as
"1 process x 2 threads" and as "2 processes x 1 thread", interleaved round by round in one run.

The work is the demo's unit: the toy CLIP's text encoder over a CoCoOp-sized batch of prompts
(4 images x 32 classes) with a learned context, forward and backward. Setting A runs 2N steps in
one process with 2 torch threads; setting B runs N steps in each of two concurrent processes with
1 thread. On a quiet 2-core machine both use both cores; when other jobs take cores, A's two
threads wait for each other at every operation while B's processes go on independently.

    python benchmarks/bench_demo_threads.py --steps 20 --rounds 3
"""
import argparse
import subprocess
import sys
import time


def work(steps: int) -> None:
    import clip
    import torch

    from prompt_diffusion.backbones import load_clip

    model = load_clip("toy").float()
    tokens = clip.tokenize([f"a photo of a thing number {i}." for i in range(128)],
                           context_length=model.context_length)  # [4 x 32, L]
    ctx = torch.zeros(1, 1, model.token_embedding.weight.shape[1], requires_grad=True)
    for _ in range(steps):
        x = model.token_embedding(tokens) + ctx + model.positional_embedding  # [128, L, D]
        x = model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = model.ln_final(x)[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection
        x.square().mean().backward()


def timed(processes: int, threads: int, steps: int) -> float:
    env_threads = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    import os

    started = time.perf_counter()
    children = [subprocess.Popen([sys.executable, __file__, "--worker", str(steps)], env={**os.environ, **env_threads})
                for _ in range(processes)]
    if any(child.wait() for child in children):
        raise RuntimeError("a worker failed")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="steps per process of setting B (A runs twice as many)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work(args.worker)
        return
    one_by_two, two_by_one = [], []
    for round_ in range(args.rounds):
        one_by_two.append(timed(1, 2, 2 * args.steps))
        two_by_one.append(timed(2, 1, args.steps))
        print(f"round {round_ + 1}: 1 process x 2 threads {one_by_two[-1]:.1f} s, "
              f"2 processes x 1 thread {two_by_one[-1]:.1f} s", flush=True)
    ratios = sorted(a / b for a, b in zip(one_by_two, two_by_one))
    print(f"wall time ratio (1x2 / 2x1) per round: {', '.join(f'{r:.2f}' for r in ratios)}; "
          f"median {ratios[len(ratios) // 2]:.2f}")


if __name__ == "__main__":
    main()
