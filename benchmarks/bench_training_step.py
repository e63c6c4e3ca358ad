"""The training step of every host and of its PD variant, side by side in one run, and where the PD
step goes.

Two model sizes, each timed in interleaved rounds in one process (the median of ``--repeats``
rounds after a warm-up step; ``forward_backward`` on one training batch, no scheduler step):

- ``--spec SPEC`` (default ``toy_cost``): every method of a shipped experiment spec, built with
  exactly the config its sweep runs get (``sweep.merged_config``) on the spec's first dataset:
  for ``toy_cost``, the toy benchmark's settings (the shipped small CLIP, 32 px, batch 4, I = 2)
  and its cheaper overfitting rows;
- ``--vit``: ViT-B/16 architecture with random weights (timing only), fp32, B images, K classes,
  each host's paper config (``trainer_timing.PAPER_CONFIGS``) and what those configs ship for
  ``TRAINER.PD`` (the defaults), plus ``--levers`` (PD keys timed beside the defaults).

Each PD step is also split into its parts, from one more instrumented step per round: the host's
pass (its loss, forward and backward; where it is the CE at the host's prompts the same pass gives
the first overfitting step), the overfitting (the other I - 1 passes, online or for the stale
samples of a cached step), the generator's loss, the CE of Eq. 8 (forward), the backward of CE and
generator, the optimizer steps, and the rest (the frozen image pass and π, V_h, the scale). A call
inside another timed call belongs to the outer one.

``OVERFIT.MODE cached`` overfits a sample once every ``REFRESH`` epochs, so its steps differ: it is
timed as a refresh step (every sample stale) and as a cache-hit step, and the training's mean step
follows from the config's ``MAX_EPOCH`` and ``REFRESH`` (the refresh epochs: 0, REFRESH, ...).

    python benchmarks/bench_training_step.py --root /tmp/toy_data             # toy_cost, 1 thread, 10 rounds
    python benchmarks/bench_training_step.py --vit --repeats 2                # ViT-B/16, every host
    python benchmarks/bench_training_step.py --vit --levers iters5 iters5+cached    # and the paper's I = 5
"""
import argparse
import math
import statistics
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

import torch

from bench_samplers import round_times  # interleaved rounds: wall / CPU time of each run in each round
from trainer_timing import PAPER_CONFIGS, lever_opts, make_paper_trainer, write_world

import prompt_diffusion.data  # noqa: F401  (registers the datasets)
import prompt_diffusion.trainers  # noqa: F401  (registers the trainers and their PD variants)
import prompt_diffusion.wrapper as wrapper_module
from prompt_diffusion.engine import build_trainer, set_random_seed
from prompt_diffusion.sweep import CONFIGS_DIR, load_spec, merged_config

# --vit levers: TRAINER.PD keys timed beside what the paper configs ship (the default overfitting, one
# step), joined with '+': `iters5` the paper's I = 5 steps of 0.005, `cached` each sample's V* reused
# for OVERFIT.REFRESH epochs
LEVERS = {
    "iters5": ["TRAINER.PD.OVERFIT.ITERS", 5, "TRAINER.PD.OVERFIT.LR", 0.005],
    "cached": ["TRAINER.PD.OVERFIT.MODE", "cached"],
}
PARTS = ("host pass", "overfitting", "generator loss", "CE forward", "CE + generator backward", "optimizer steps")


class PartTimer:
    """Wall seconds spent in named calls, each counted at its outermost timed call."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: Dict[str, float] = defaultdict(float)
        self._inside = False

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, part: str, function: Callable) -> Callable:
        def call(*args, **kwargs):
            if self._inside:
                return function(*args, **kwargs)
            self._inside = True
            self.synchronize()
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.synchronize()
                self.seconds[part] += time.perf_counter() - start
                self._inside = False
        return call


@contextmanager
def instrumented(trainer, timer: PartTimer) -> Iterator[None]:
    """Time the parts of ``trainer``'s PD step while inside (its own methods, its adapter's logits and
    generator's loss, and the wrapper module's backward / update, restored on leaving)."""
    patched = [(trainer.pd, "_host_pass", "host pass"), (trainer.pd, "_targets", "overfitting"),
               (trainer.pd.generator, "loss", "generator loss"), (trainer.pd.adapter, "logits", "CE forward"),
               (wrapper_module, "backward", "CE + generator backward"), (wrapper_module, "update", "optimizer steps")]
    originals = [(owner, name, owner.__dict__.get(name)) for owner, name, _ in patched]
    for owner, name, part in patched:
        setattr(owner, name, timer.timed(part, getattr(owner, name)))
    try:
        yield
    finally:
        for owner, name, original in originals:
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)


def step_run(trainer, batch: dict, refresh: bool = False) -> Callable[[], None]:
    """One training step on ``batch``; ``refresh``: with the overfitting cache emptied first, so a
    cached trainer overfits every sample (a refresh step)."""
    def run() -> None:
        if refresh:
            trainer.pd._residual_cache.clear()
        trainer.forward_backward(batch)
    return run


def split(trainer, run: Callable[[], None], device: torch.device, steps: int) -> Dict[str, float]:
    """Seconds per step of each part of ``trainer``'s PD step and of the rest (``"rest"``: the
    step's time outside the parts), over ``steps`` instrumented steps."""
    timer = PartTimer(device)
    with instrumented(trainer, timer):
        timer.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            run()
        timer.synchronize()
        total = time.perf_counter() - start
    parts = {part: timer.seconds[part] / steps for part in PARTS}
    parts["rest"] = total / steps - sum(parts.values())
    return parts


def refresh_share(cfg) -> float:
    """The share of a cached training's epochs that overfit every sample (epochs 0, REFRESH, ...)."""
    epochs = cfg.OPTIM.MAX_EPOCH
    return math.ceil(epochs / cfg.TRAINER.PD.OVERFIT.REFRESH) / epochs


def compare(trainers: Dict[str, Tuple[object, str]], batches: Dict[str, dict], repeats: int,
            device: torch.device) -> List[str]:
    """Time every trainer's step (``trainers``: label -> (trainer, its host's label)) in interleaved
    rounds and split every PD step; returns the markdown rows. A step's time is its median over the
    rounds (on this project's shared CPUs single steps have fast outliers that a fastest-of would
    pick for one trainer and not the other); the ratio is of medians."""
    runs = {}
    for label, (trainer, _) in trainers.items():
        trainer.set_model_mode("train")
        if getattr(trainer, "pd", None) is not None and trainer.cfg.TRAINER.PD.OVERFIT.MODE == "cached":
            runs[(label, "refresh")] = step_run(trainer, batches[label], refresh=True)
            runs[(label, "cache hit")] = step_run(trainer, batches[label])
        else:
            runs[(label, "")] = step_run(trainer, batches[label])
    median = {key: tuple(statistics.median(times) for times in zip(*rounds))
              for key, rounds in round_times(runs, repeats, device).items()}  # (wall, CPU)
    rows = []
    for (label, kind), (wall, cpu) in median.items():
        trainer, host = trainers[label]
        host_wall = median[(host, "")][0]
        cells = [""] * (len(PARTS) + 1)
        if getattr(trainer, "pd", None) is not None:
            parts = split(trainer, runs[(label, kind)], device, steps=2)
            cells = [f"{1000 * parts[p]:.1f}" for p in ("rest", *PARTS)]
        ratio = "" if label == host else f"{wall / host_wall:.2f}x"
        name = f"{label} ({kind})" if kind else label
        rows.append(f"| {name} | {1000 * wall:.1f} | {1000 * cpu:.1f} | {ratio} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
        if kind == "cache hit":
            share = refresh_share(trainer.cfg)
            mean = share * median[(label, "refresh")][0] + (1 - share) * wall
            rows.append(f"| {label} (mean over the training: {share:.0%} refresh steps) | {1000 * mean:.1f} | | "
                        f"{mean / host_wall:.2f}x |" + " |" * (len(PARTS) + 1))
            print(rows[-1], flush=True)
    return rows


HEADER = ["| trainer | step ms (median) | CPU ms | × host | frozen pass, π, V_h, rest | " + " | ".join(PARTS) + " |",
          "|---|---|---|---|---|" + "---|" * len(PARTS)]


def spec_trainers(spec_name: str, root: str) -> Dict[str, Tuple[object, str]]:
    """Every method of the spec with its sweep config on the spec's first dataset (base classes,
    seed 1), and the label of the spec's row of its host trainer (CoCoOp for every CoCoOpPD row)."""
    spec = load_spec(spec_name)
    host_of = {method.trainer: method.name for method in spec.methods}  # a host trainer's own row
    trainers = {}
    for method in spec.methods:
        cfg = merged_config(method, spec)
        cfg.merge_from_file(str(CONFIGS_DIR / "datasets" / f"{spec.datasets[0]}.yaml"))
        cfg.merge_from_list(["TRAINER.NAME", method.trainer, "DATASET.ROOT", root, "DATASET.NUM_SHOTS", spec.shots,
                             "DATASET.SUBSAMPLE_CLASSES", "base", "SEED", 1, "OUTPUT_DIR", "",
                             "TRAINER.PD.DIAGNOSE_IMAGES", 0])
        cfg.freeze()
        set_random_seed(1)
        trainer = build_trainer(cfg)
        trainer.num_batches = 10 ** 9  # no scheduler step inside the timed steps
        trainer.batch_idx = 0
        host = method.trainer[:-2] if method.trainer.endswith("PD") else method.trainer
        trainers[method.name] = (trainer, host_of.get(host, method.name))
    return trainers


def vit_trainers(host: str, levers: Sequence[str], root: Path, clip_path: Path, batch: int,
                 device: str) -> Dict[str, Tuple[object, str]]:
    """``host`` and its PD variant with the paper config (what it ships), and one PD trainer per lever."""
    no_amed = ["TRAINER.PD.AMED.DISTILL_ITERS", 0, "TRAINER.PD.DIAGNOSE_IMAGES", 0]  # training only
    trainers = {host: (make_paper_trainer(host, root, clip_path, batch, device), host),
                f"{host}PD": (make_paper_trainer(f"{host}PD", root, clip_path, batch, device, no_amed), host)}
    for lever in levers:
        trainers[f"{host}PD {lever}"] = (make_paper_trainer(f"{host}PD", root, clip_path, batch, device,
                                                            no_amed + lever_opts(lever, LEVERS)), host)
    return trainers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="toy_cost", help="the experiment spec whose methods are timed")
    parser.add_argument("--root", help="DATASET.ROOT of the spec (the toy world is rendered there once)")
    parser.add_argument("--vit", action="store_true", help="ViT-B/16 with the paper configs instead of the spec")
    parser.add_argument("--hosts", nargs="+", default=list(PAPER_CONFIGS), choices=list(PAPER_CONFIGS))
    parser.add_argument("--levers", nargs="*", default=[],
                        help=f"--vit: PD settings timed beside the shipped one, levers joined with '+' ({', '.join(LEVERS)})")
    parser.add_argument("--batch", type=int, default=4, help="--vit: images per batch (B)")
    parser.add_argument("--classes", type=int, default=10, help="--vit: classes (K)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rounds = f"{args.threads} thread(s), {args.device}, median of {args.repeats} interleaved rounds after a warm-up step"
    if not args.vit:
        if args.root is None:
            parser.error("--root is needed for the spec's datasets (or --vit)")
        trainers = spec_trainers(args.spec, args.root)
        print(f"{args.spec}: {rounds}\n" + "\n".join(HEADER))
        batches = {label: next(iter(trainer.train_loader_x)) for label, (trainer, _) in trainers.items()}
        rows = compare(trainers, batches, args.repeats, device)
    else:
        print(f"ViT-B/16 (random weights), fp32, B={args.batch}, K={args.classes}, paper configs: {rounds}\n"
              + "\n".join(HEADER))
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            clip_path = write_world(root, args.classes, -(-args.batch // args.classes))
            for host in args.hosts:
                trainers = vit_trainers(host, args.levers, root, clip_path, args.batch, args.device)
                batch = next(iter(trainers[host][0].train_loader_x))
                rows += compare(trainers, {label: batch for label in trainers}, args.repeats, device)
                del trainers
    print("\n" + "\n".join(HEADER + rows))


if __name__ == "__main__":
    main()
