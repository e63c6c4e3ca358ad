"""PromptSRCPD: test the generator aggregated by GPA with the prompts, or the last epoch's? (issue 14)

GPA replaces PromptSRC's prompts by their Gaussian average over the epochs after the last one. The
prompt generator learned residuals around each epoch's prompts; ``PromptSRC.register_model`` now
aggregates it over the same epochs with the same weights. This compares, per seed and image by
image on the same test images (ToyWorld, the toy CLIP), the model as trained (a: generator
aggregated) with the same model whose generator is put back to its last-epoch weights (b: the
behaviour before the change); each is gain-calibrated (``after_training.calibrate``) on the val split as a
training run does. Also printed: how far GPA moved the prompts (RMS per coordinate) beside the
residual scales (the RMS of the overfitted residuals the generator models).

    python benchmarks/bench_promptsrc_gpa.py --root /tmp/bench/data --output /tmp/gpa --seeds 1 2 3
"""
import argparse
from typing import Dict, List

import numpy as np
import torch

from prompt_diffusion.after_training import calibrate
from prompt_diffusion.commands.train import add_arguments, setup_cfg
from prompt_diffusion.engine import build_trainer, set_random_seed
from prompt_diffusion.plugins import load_plugins
from prompt_diffusion.sweep import CONFIGS_DIR
from prompt_diffusion.trainers.promptsrc import trainable_tensors
from prompt_diffusion.wrapper import PD_MODEL_NAME, labelled_batches

GENERATOR = (PD_MODEL_NAME,)
TOY_OPTS = [
    "DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base", "MODEL.BACKBONE.NAME", "toy",
    "INPUT.SIZE", "(32, 32)", "INPUT.TRANSFORMS", "['random_flip', 'normalize']", "DATALOADER.NUM_WORKERS", "0",
    "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "OPTIM.NAME", "adamw", "OPTIM.LR", "2e-3", "OPTIM.WARMUP_EPOCH", "0",
    "OPTIM.MAX_EPOCH", "4", "TRAIN.PRINT_FREQ", "100", "DATASET.TOY.TEST_PER_CLASS", "50", "TEST.NO_TEST", "True",
    "TRAINER.PROMPTSRC.PREC", "fp32", "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "3",
    "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "3", "TRAINER.PROMPTSRC.GPA_MEAN", "3", "TRAINER.PROMPTSRC.GPA_STD", "1",
    "TRAINER.PD.GENERATOR_SIZE.LAYERS", "2", "TRAINER.PD.GENERATOR_SIZE.WIDTH", "128", "TRAINER.PD.GENERATOR_SIZE.HEADS", "4",
    "TRAINER.PD.OVERFIT.ITERS", "2", "TRAINER.PD.SAMPLER", "dpmpp_2m", "TRAINER.PD.AMED.DISTILL_ITERS", "0",
    "TRAINER.PD.LOSS_DRAWS", "8", "TRAINER.PD.DIAGNOSE_IMAGES", "0",
]


@torch.no_grad()
def correct_per_image(trainer) -> np.ndarray:
    trainer.set_model_mode("eval")
    correct = []
    for batch in trainer.test_loader:
        images, labels = trainer.parse_batch_test(batch)
        correct.append((trainer.model_inference(images).argmax(dim=1) == labels).cpu().numpy())
    return np.concatenate(correct)


def run_seed(root: str, output: str, seed: int) -> Dict[str, object]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([
        "--root", root, "--seed", str(seed), "--trainer", "PromptSRCPD", "--output-dir", f"{output}/seed{seed}",
        "--dataset-config-file", str(CONFIGS_DIR / "datasets" / "toy_world.yaml"),
        "--config-file", str(CONFIGS_DIR / "trainers" / "PromptSRC" / "vit_b16_c2_ep20_batch4_4+4ctx.yaml"),
        *TOY_OPTS])
    cfg = setup_cfg(args)
    load_plugins()
    set_random_seed(seed)
    trainer = build_trainer(cfg)
    last_epoch: Dict[str, Dict[str, torch.Tensor]] = {}  # the tensors GPA is about to replace
    for name, aggregate in trainer.model.gpa.items():
        copy_to = aggregate.copy_to

        def keep_then_copy(tensors, copy_to=copy_to, name=name):
            last_epoch[name] = {k: v.detach().clone() for k, v in tensors.items()}
            copy_to(tensors)

        aggregate.copy_to = keep_then_copy
    trainer.train()  # GPA (prompts and generator), then the gain calibration
    prompts = trainable_tensors(trainer._models["VLPromptLearner"])
    moved = torch.cat([(prompts[k] - last_epoch["VLPromptLearner"][k]).flatten() for k in prompts])
    shift = float(moved.pow(2).mean().sqrt())  # RMS per prompt coordinate, comparable with the residual scales
    scales = {k: float(v.mean()) for k, v in trainer.pd.generator.state_dict().items() if "scale" in k}
    aggregated = correct_per_image(trainer)
    gains_a = {n: float(getattr(trainer.pd.generator, f"{n}_gain")) for n in trainer.pd.generator.layout.names}
    with torch.no_grad():
        for name in GENERATOR:
            for key, tensor in trainable_tensors(trainer._models[name]).items():
                tensor.copy_(last_epoch[name][key])
    trainer.set_model_mode("eval")
    gains_b = calibrate(trainer.pd, labelled_batches(trainer, trainer.val_loader))
    last = correct_per_image(trainer)
    return {"aggregated": aggregated, "last": last, "gains": (gains_a, gains_b), "shift": shift, "scales": scales}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    torch.set_num_threads(1)
    differences: List[float] = []
    for seed in args.seeds:
        result = run_seed(args.root, args.output, seed)
        a, b = 100 * result["aggregated"].mean(), 100 * result["last"].mean()
        differences.append(a - b)
        print(f"seed {seed}: accuracy (a) generator aggregated {a:.2f}%, (b) last-epoch generator {b:.2f}%, "
              f"a - b {a - b:+.2f} points on {len(result['last'])} images; gains a {result['gains'][0]} "
              f"b {result['gains'][1]}; GPA moved the prompts by {result['shift']:.4f} (RMS); "
              f"residual scales (RMS) {result['scales']}", flush=True)
    mean = float(np.mean(differences))
    se = float(np.std(differences, ddof=1) / np.sqrt(len(differences))) if len(differences) > 1 else float("nan")
    print(f"a - b over {len(differences)} seeds: {mean:+.2f} ± {se:.2f} points (mean ± standard error)")


if __name__ == "__main__":
    main()
