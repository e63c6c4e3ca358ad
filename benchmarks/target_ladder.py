"""The ceiling of each overfitting target: test-time tuning with it, image by image.

For one trained model (built and loaded as ``prompt-diffusion train --eval-only`` builds it: the
same flags, config files and ``KEY VALUE`` opts), every ``--setting TARGET:ITERS:LR:RULE``
overfits each test image's prompt from its host prompt ``V_h`` (``PromptDiffusion.overfit``) and reports:

- the accuracy at that ``V*`` minus the host's, paired per image ± SE (for a label-free target this
  is test-time tuning; for ``label`` it uses the true label: a ceiling, never a method);
- the share of the variance of ``V* − V_h`` that the image's domain explains (``group_share``;
  ToyWorldMixed: its style), what an image-conditioned generator can learn of it;
- the residual's RMS per coordinate, and the wall time per image.

What a generator trained on that target can at best reach is the accuracy at ``V*``: a target
whose ``V*`` does not beat the host leaves PD nothing to generate.

    python benchmarks/target_ladder.py --setting agreement:5:0.01:sign --setting label:2:0.005:sign \\
      --max-images 320 --root data --trainer CoCoOpPD --model-dir RUN --load-epoch 2 \\
      --dataset-config-file configs/datasets/toy_world_mixed.yaml \\
      --config-file configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml \\
      DATASET.SUBSAMPLE_CLASSES new MODEL.BACKBONE.NAME toy INPUT.SIZE "(32, 32)" ...
"""
import argparse
import time
from typing import List, Tuple

import torch

from prompt_diffusion import engine
from prompt_diffusion.commands import train
from prompt_diffusion.diagnostics import group_share
from prompt_diffusion.results import paired_difference

Setting = Tuple[str, int, float, str]


def parse_setting(text: str) -> Setting:
    parts = text.split(":")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"a setting is TARGET:ITERS:LR:RULE (e.g. agreement:5:0.01:sign), got {text!r}")
    return parts[0], int(parts[1]), float(parts[2]), parts[3]


def ladder(trainer, settings: List[Setting], max_images: int) -> List[str]:
    """One Markdown row per setting on the first ``max_images`` test images."""
    pd = trainer.pd
    adapter = pd.adapter
    trainer.set_model_mode("eval")
    batches, seen = [], 0
    for batch in trainer.test_loader:  # the images, once: every setting tunes the same ones
        images, labels = trainer.parse_batch_test(batch)
        batches.append((images, labels, batch["domain"]))
        seen += len(labels)
        if seen >= max_images:
            break
    rows = []
    overfit = trainer.cfg.TRAINER.PD.OVERFIT
    for target, iters, lr, rule in settings:
        trainer.cfg.defrost()
        overfit.ITERS, overfit.LR, overfit.STEP_RULE = iters, lr, rule
        trainer.cfg.freeze()
        host_ok, tuned_ok, residuals, domains, seconds = [], [], [], [], 0.0
        for images, labels, domain in batches:
            features = adapter.image_features(images)
            with torch.no_grad():
                center = {k: v.float() for k, v in pd.host_prompts(features).items()}
                host_ok.append(adapter.logits(images, center, features).argmax(1) == labels)
            started = time.perf_counter()
            tuned = pd.overfit(images, labels if target == "label" else None, features, center, target=target)
            with torch.no_grad():
                tuned_ok.append(adapter.logits(images, tuned, features).argmax(1) == labels)
            seconds += time.perf_counter() - started
            residuals.append(torch.cat([(tuned[k] - center[k]).flatten(1) for k in sorted(center)], dim=1))
            domains.append(torch.as_tensor(domain))
        host, tuned_all = torch.cat(host_ok).tolist(), torch.cat(tuned_ok).tolist()
        difference = paired_difference(tuned_all, host)
        residual = torch.cat(residuals)
        share = group_share(residual, torch.cat(domains))
        rms = float(residual.pow(2).mean().sqrt())
        rows.append(f"| {target} | {iters} x {lr} {rule} | {100 * sum(host) / len(host):.2f} | "
                    f"{100 * sum(tuned_all) / len(host):.2f} | {difference.mean:+.2f} ± {difference.se:.2f} | "
                    f"{share:.3f} | {rms:.4f} | {1000 * seconds / len(host):.1f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", type=parse_setting, action="append", required=True,
                        help="TARGET:ITERS:LR:RULE, repeatable (targets: label, entropy, agreement)")
    parser.add_argument("--max-images", type=int, default=320, help="test images (the first of the loader)")
    train.add_arguments(parser)
    args = parser.parse_args()
    cfg, _ = train.prepare(args)
    engine.set_random_seed(max(cfg.SEED, 0))
    trainer = engine.build_trainer(cfg)
    trainer.load_model(args.model_dir, epoch=args.load_epoch)
    print("| target | budget | host % | at V* % | V* − host (± SE) | style share of V* − V_h | RMS of V* − V_h "
          "| ms / image |\n|---|---|---|---|---|---|---|---|")
    ladder(trainer, args.setting, args.max_images)


if __name__ == "__main__":
    main()
