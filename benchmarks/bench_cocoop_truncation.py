"""CoCoOp with exact EOT truncation vs upstream's full 77-token path, side by side in one run.

ViT-B/16 architecture with random weights, fp32, CPU. The upstream path is KaiyangZhou/CoOp's
``CustomCLIP.forward``: per image, the K full 77-token prompts through CLIP's own text transformer.
The truncated path is this repository's ``trainers.cocoop.CustomCLIP`` (``clip_prompting``: B x K
sequences cut to ``max EOT + 1`` positions). Both use the same model, weights and inputs; timings are
medians over interleaved repeats of an inference forward and a training step (forward, loss,
backward, SGD step on the prompt learner), as wall time and as this process's CPU time.

    python benchmarks/bench_cocoop_truncation.py --threads 2 --batch 4 --classes 10
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from prompt_diffusion.backbones import build_random_clip
from prompt_diffusion.config import extend_cfg
from prompt_diffusion.engine import get_cfg_default
from prompt_diffusion.trainers.cocoop import CustomCLIP

CLASSNAMES = ["airplane", "bonsai", "brain", "butterfly", "camera", "chair", "dolphin", "elephant",
              "laptop", "sunflower", "grand piano", "golden retriever", "fire truck", "sea anemone"]


def upstream_logits(model: CustomCLIP, images: torch.Tensor) -> torch.Tensor:
    """The upstream CoCoOp forward (eval logits): per image, full 77-token prompts [K, 77, D]."""
    learner, text_encoder = model.prompt_learner, model.text_encoder
    image_features = model.image_encoder(images)
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    ctx_shifted = learner(image_features)  # [B, n_ctx, D]
    eot = model.tokenized_prompts.argmax(dim=-1)
    logits = []
    for ctx_i, image_feature in zip(ctx_shifted, image_features):
        prompts = torch.cat([learner.token_prefix, ctx_i.expand(learner.n_cls, -1, -1), learner.token_suffix], dim=1)
        x = (prompts + text_encoder.positional_embedding).permute(1, 0, 2)  # [77, K, D]
        x = text_encoder.transformer(x).permute(1, 0, 2)  # CLIP's blocks, full 77x77 causal mask
        x = text_encoder.ln_final(x)
        text = x[torch.arange(x.shape[0]), eot] @ text_encoder.text_projection  # [K, E]
        text = text / text.norm(dim=-1, keepdim=True)
        logits.append(model.logit_scale.exp() * image_feature @ text.t())
    return torch.stack(logits)


def truncated_logits(model: CustomCLIP, images: torch.Tensor) -> torch.Tensor:
    model.prompt_learner.eval()  # CustomCLIP returns logits (not the loss) in eval mode
    return model(images)


def time_call(fn) -> tuple:
    """(wall seconds, CPU seconds of this process) of one call; CPU time is the steadier measure
    when other processes share the cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not 1 <= args.classes <= len(CLASSNAMES):
        parser.error(f"--classes must be in 1..{len(CLASSNAMES)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = extend_cfg(get_cfg_default())  # CoCoOp vit_b16_c4_ep10_batch1_ctxv1 prompt settings, fp32
    cfg.TRAINER.COCOOP.N_CTX, cfg.TRAINER.COCOOP.CTX_INIT, cfg.TRAINER.COCOOP.PREC = 4, "a photo of a", "fp32"
    model = CustomCLIP(cfg, CLASSNAMES[: args.classes], build_random_clip("ViT-B/16"))
    for name, param in model.named_parameters():
        param.requires_grad_("prompt_learner" in name)
    optimizer = torch.optim.SGD(model.prompt_learner.parameters(), lr=1e-4)
    images = torch.randn(args.batch, 3, 224, 224)
    labels = torch.arange(args.batch) % args.classes

    with torch.no_grad():
        reference, truncated = upstream_logits(model, images), truncated_logits(model, images)
    max_diff = (reference - truncated).abs().max().item()

    def train_step(logits_fn):
        def step():
            loss = F.cross_entropy(logits_fn(model, images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return step

    def infer(logits_fn):
        def run():
            with torch.no_grad():
                logits_fn(model, images)
        return run

    calls = {"infer_full": infer(upstream_logits), "infer_trunc": infer(truncated_logits),
             "train_full": train_step(upstream_logits), "train_trunc": train_step(truncated_logits)}
    timings = {key: [] for key in calls}
    for _ in range(args.repeats + 1):  # interleaved; the first round is warm-up
        for key, call in calls.items():
            timings[key].append(time_call(call))
    wall = {key: statistics.median(t[0] for t in values[1:]) for key, values in timings.items()}
    cpu = {key: statistics.median(t[1] for t in values[1:]) for key, values in timings.items()}

    eot = model.tokenized_prompts.argmax(-1)
    print(f"CoCoOp ViT-B/16 (random weights), fp32, {args.threads} threads, B={args.batch}, K={args.classes}, "
          f"n_ctx=4; text positions: 77 (upstream) vs {int(eot.max()) + 1} (truncated); "
          f"median of {args.repeats} interleaved repeats")
    print(f"{'':<24}{'full 77 [s]':>12}{'truncated [s]':>15}{'speed-up':>10}")
    for label, key in (("inference", "infer"), ("training step", "train")):
        for clock, median in (("wall", wall), ("CPU", cpu)):
            full, trunc = median[f"{key}_full"], median[f"{key}_trunc"]
            print(f"{label + ' (' + clock + ')':<24}{full:>12.3f}{trunc:>15.3f}{full / trunc:>9.2f}x")
    print(f"max |logit difference| (eval): {max_diff:.2e}")


if __name__ == "__main__":
    main()
