"""What prompt diffusion costs on the toy benchmark's own settings, side by side with its host.

Each method of ``configs/experiments/toy_benchmark.yaml`` (or ``--spec``) is built with exactly the
config its sweep runs get (``prompt_diffusion.sweep.merged_config``: the trainer config, the spec's
and the method's opts) on ToyWorld's base classes, 16 shots, the shipped toy CLIP. Timed in
interleaved rounds in one process (fastest of ``--repeats`` after a warm-up): one training step
(``forward_backward``, the host's batch size) and inference on one test batch; printed with the
ratio of each PD method to its host.

    python benchmarks/bench_toy_cost.py --root /tmp/toy_data            # 1 thread, 10 rounds
"""
import argparse
from typing import Dict

import torch

from bench_samplers import timings  # interleaved rounds, fastest wall/CPU time per run

import prompt_diffusion.data  # noqa: F401  (registers the datasets)
import prompt_diffusion.trainers  # noqa: F401  (registers the trainers and their PD variants)
from prompt_diffusion.engine import build_trainer, set_random_seed
from prompt_diffusion.sweep import CONFIGS_DIR, load_spec, merged_config


def build(spec, method, root: str, test_batch: int):
    cfg = merged_config(method, spec)
    cfg.merge_from_file(str(CONFIGS_DIR / "datasets" / f"{spec.datasets[0]}.yaml"))
    cfg.merge_from_list(["TRAINER.NAME", method.trainer, "DATASET.ROOT", root, "DATASET.NUM_SHOTS", spec.shots,
                         "DATASET.SUBSAMPLE_CLASSES", "base", "SEED", 1, "OUTPUT_DIR", "",
                         "DATALOADER.TEST.BATCH_SIZE", test_batch, "TRAINER.PD.DIAGNOSE_IMAGES", 0])
    cfg.freeze()
    set_random_seed(1)
    trainer = build_trainer(cfg)
    trainer.num_batches = 10 ** 9  # no scheduler step inside the timed steps
    trainer.batch_idx = 0
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="toy_benchmark")
    parser.add_argument("--root", required=True, help="DATASET.ROOT (the toy world is rendered there once)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--test-batch", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    hosts = {str(k): str(v) for k, v in spec.hosts().items()}
    trainers = {m.name: build(spec, m, args.root, args.test_batch) for m in spec.methods}
    runs: Dict = {}
    for name, trainer in trainers.items():
        batch = next(iter(trainer.train_loader_x))
        test_images = trainer.parse_batch_test(next(iter(trainer.test_loader)))[0]

        def train_step(trainer=trainer, batch=batch):
            trainer.set_model_mode("train")
            trainer.forward_backward(batch)

        def inference(trainer=trainer, images=test_images):
            trainer.set_model_mode("eval")
            with torch.no_grad():
                trainer.model_inference(images)

        runs[(name, "training step")] = train_step
        runs[(name, f"inference ({args.test_batch} images)")] = inference
    best = timings(runs, args.repeats, torch.device("cpu"))
    print(f"{spec.name}: {args.threads} thread(s), fastest of {args.repeats} interleaved rounds after a warm-up")
    for (name, what), (wall, cpu) in best.items():
        host = hosts.get(name)
        ratio = f"{wall / best[(host, what)][0]:5.2f}x {host}" if host else ""
        print(f"  {name:10s} {what:26s} {1000 * wall:9.1f} ms (CPU {1000 * cpu:9.1f} ms)  {ratio}")


if __name__ == "__main__":
    main()
