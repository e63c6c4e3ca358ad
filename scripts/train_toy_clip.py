"""Pretrain the shipped small CLIP ("toy") on the toy world, contrastively, on CPU.

    python scripts/train_toy_clip.py                      # the shipped recipe (fixed seed)
    python scripts/train_toy_clip.py --steps 200 --out /tmp/toy_clip.pt.gz   # a quick try

Recipe: a pool of generated (image, caption) pairs over all 64 classes and all 4 styles (as CLIP
saw sketches and renditions), symmetric InfoNCE, AdamW (betas 0.9/0.98, eps 1e-6, weight decay on
weight matrices only), linear warmup then cosine decay, gradient-norm clipping, logit scale
clamped at 100. Every ``--eval-every`` steps it logs zero-shot top-1 per style on held-out images
(prompt "a photo of a {}."). At the end it writes the fp16 weights (gzip) and a JSON next to them
with the recipe, wall time and final zero-shot accuracies, measured on the stored weights.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from prompt_diffusion import toy_clip
from prompt_diffusion.data import toy_world

HELDOUT_SEED = 1  # held-out evaluation images; the pair pool uses --seed (default 0)


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=7e-4)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--warmup", type=float, default=0.05, help="fraction of steps")
    parser.add_argument("--pool", type=int, default=100_000, help="number of generated pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (2 on a quiet 2-core machine: 17 min; use 1 on a busy machine)")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--eval-per-class", type=int, default=8, help="held-out images per class and style")
    parser.add_argument("--out", type=Path, default=toy_clip.ASSET_PATH)
    return parser.parse_args(argv)


def make_pool(seed: int, count: int, chunk: int = 5000):
    """Generate the pair pool in chunks under a progress bar: uint8 images, captions, labels."""
    images, captions, labels = [], [], []
    with tqdm(total=count, desc="render pairs", unit="img") as bar:
        for start in range(0, count, chunk):
            size = min(chunk, count - start)
            chunk_images, chunk_captions, chunk_labels = toy_world.sample_pairs(seed, size, start=start)
            images.append(chunk_images)
            captions.extend(chunk_captions)
            labels.append(chunk_labels)
            bar.update(size)
    return np.concatenate(images), captions, np.concatenate(labels)


def heldout_sets(per_class: int) -> Dict[str, tuple]:
    return {style: toy_world.class_balanced_images(HELDOUT_SEED, style, per_class) for style in toy_world.STYLES}


def evaluate(model, heldout: Dict[str, tuple]) -> Dict[str, float]:
    """Zero-shot top-1 (%) per style, overall, and for shape / colour alone (all styles)."""
    names = toy_world.class_names()
    n_colours = len(toy_world.COLOUR_NAMES)
    result, shape_hits, colour_hits, total = {}, 0, 0, 0
    for style, (images, labels) in heldout.items():
        predictions = toy_clip.zero_shot_logits(model, images, names).argmax(dim=1).numpy()
        result[style] = 100.0 * float((predictions == labels).mean())
        shape_hits += int((predictions // n_colours == labels // n_colours).sum())
        colour_hits += int((predictions % n_colours == labels % n_colours).sum())
        total += len(labels)
    result["all"] = float(np.mean([result[style] for style in heldout]))
    result["shape"] = 100.0 * shape_hits / total
    result["colour"] = 100.0 * colour_hits / total
    return result


def format_accuracy(accuracy: Dict[str, float]) -> str:
    return " ".join(f"{key} {value:.1f}" for key, value in accuracy.items())


def parameter_groups(model, weight_decay: float):
    """Weight decay on weight matrices only (not embeddings, biases, norms or the logit scale)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        is_embedding = "embedding" in name or name.endswith("class_embedding")
        (decay if parameter.ndim >= 2 and not is_embedding else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def learning_rate(step: int, args: argparse.Namespace) -> float:
    warmup_steps = max(1, int(args.warmup * args.steps))
    if step < warmup_steps:
        return args.lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, args.steps - warmup_steps)
    return args.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    images, captions, _ = make_pool(args.seed, args.pool)
    unique_captions = sorted(set(captions))
    caption_index = {text: i for i, text in enumerate(unique_captions)}
    pair_caption = torch.tensor([caption_index[text] for text in captions])
    clip_tokens = toy_clip.tokenize(unique_captions, toy_clip.TRAIN_CONTEXT_LENGTH)  # [U, 20]
    vocab_ids = torch.unique(clip_tokens)  # sorted CLIP token ids the captions use (0 = padding)
    caption_tokens = torch.searchsorted(vocab_ids, clip_tokens)  # [U, 20] in the compact vocabulary
    heldout = heldout_sets(args.eval_per_class)
    render_seconds = time.time() - started
    print(f"pool: {len(captions)} pairs, {len(unique_captions)} unique captions, "
          f"{len(vocab_ids)} token ids; rendered in {render_seconds:.0f}s", flush=True)

    torch.manual_seed(args.seed)
    model = toy_clip.build_toy_clip(vocab_size=len(vocab_ids), seed=args.seed).train()
    optimizer = torch.optim.AdamW(parameter_groups(model, args.weight_decay), lr=args.lr,
                                  betas=(0.9, 0.98), eps=1e-6)
    order_generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(captions), generator=order_generator)
    cursor, loss_ema, curve = 0, None, []
    max_logit_scale = math.log(100.0)
    train_started = time.time()
    bar = tqdm(range(args.steps), desc="train toy CLIP", unit="step")
    for step in bar:
        if cursor + args.batch_size > len(order):
            order, cursor = torch.randperm(len(captions), generator=order_generator), 0
        batch = order[cursor : cursor + args.batch_size]
        cursor += args.batch_size
        pixels = toy_clip.preprocess(images[batch.numpy()])
        tokens = caption_tokens[pair_caption[batch]]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)

        image_features = F.normalize(model.encode_image(pixels), dim=-1)  # [B, E]
        text_features = F.normalize(model.encode_text(tokens), dim=-1)  # [B, E]
        logits = model.logit_scale.exp() * image_features @ text_features.t()  # [B, B]
        targets = torch.arange(len(batch))
        loss = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, max_logit_scale)

        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{loss_ema:.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            exported = toy_clip.densify_state_dict(toy_clip.export_state_dict(model, vocab_ids.tolist()))
            accuracy = evaluate(toy_clip.model_from_state_dict(exported), heldout)
            curve.append({"step": step + 1, "loss_ema": loss_ema, **accuracy})
            tqdm.write(f"step {step + 1}: loss {loss_ema:.3f} | zero-shot % {format_accuracy(accuracy)}")
            sys.stdout.flush()
    train_seconds = time.time() - train_started

    state = toy_clip.export_state_dict(model, vocab_ids.tolist())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    toy_clip.save_state_dict(state, args.out)
    stored = toy_clip.model_from_state_dict(toy_clip.load_toy_state_dict(args.out))
    final_heldout = heldout_sets(args.eval_per_class)
    final = evaluate(stored, final_heldout)
    print(f"stored weights ({args.out.stat().st_size / 1e6:.2f} MB): zero-shot % {format_accuracy(final)}")
    metadata = {
        "recipe": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        "architecture": {**toy_clip.TOY_CLIP_ARCH, "train_context_length": toy_clip.TRAIN_CONTEXT_LENGTH},
        "pool_render_seconds": round(render_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - started, 1),
        "weights_bytes": args.out.stat().st_size,
        "heldout": {"seed": HELDOUT_SEED, "per_class_per_style": args.eval_per_class,
                    "template": "a photo of a {}."},
        "zero_shot_top1": {key: round(value, 2) for key, value in final.items()},
        "curve": curve,
        "torch": torch.__version__,
    }
    args.out.with_name(args.out.name.replace(".pt.gz", "") + ".json").write_text(json.dumps(metadata, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
