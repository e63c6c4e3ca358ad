"""Prompt diffusion in a plain PyTorch loop: no Dassl, no trainer class, no engine.

A CoOp prompt learner (a shared context after SOS, upstream's attribute names) on the small CLIP that
ships with the package, trained on a folder of images (``train/``, ``val/``, ``test/``, one folder per
class, read by torchvision). ``PromptDiffusion`` holds the method and the loop stays the user's: one
optimizer over the learner and the PD module, its training step, calibration on the val images, and
the generated prompts' test accuracy beside the host prompt's.

    python examples/plain_loop/train.py IMAGES [--epochs 3]
"""
import argparse
from pathlib import Path

import torch
from torch import nn
from torchvision import datasets, transforms

from prompt_diffusion import PromptDiffusion, pd_config
from prompt_diffusion.adapters import CoOpAdapter
from prompt_diffusion.after_training import LabelledBatch, calibrate
from prompt_diffusion.clip_prompting import encode_image, encode_prompted_text, prompted_logits, split_prompt_embeddings
from prompt_diffusion.toy_clip import PIXEL_MEAN, PIXEL_STD, load_toy_state_dict, model_from_state_dict, tokenize

PD_SETTINGS = ("COND", "image_feature", "SAMPLER", "dpmpp_2m", "AMED.DISTILL_ITERS", 0, "LOSS_DRAWS", 8,
               "GENERATOR_SIZE.LAYERS", 2, "GENERATOR_SIZE.HEADS", 4, "GENERATOR_SIZE.WIDTH", 128)


class PromptedCLIP(nn.Module):
    """CoOp's model: ``prompt_learner.ctx`` [n, D] ("a photo of a" at first) before each class name."""

    def __init__(self, clip_model: nn.Module, classnames, init: str = "a photo of a"):
        super().__init__()
        self.image_encoder, self.text_encoder, self.logit_scale = clip_model.visual, clip_model, clip_model.logit_scale
        n_ctx = len(init.split())
        self.tokenized_prompts = tokenize([f"{init} {name.replace('_', ' ')}." for name in classnames], 77)  # [K, 77]
        prefix, suffix = split_prompt_embeddings(clip_model.token_embedding, self.tokenized_prompts, n_ctx)
        self.prompt_learner = nn.Module()
        self.prompt_learner.ctx = nn.Parameter(clip_model.token_embedding(self.tokenized_prompts[0, 1:1 + n_ctx]))
        self.prompt_learner.register_buffer("token_prefix", prefix)
        self.prompt_learner.register_buffer("token_suffix", suffix)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] -> [B, K]
        learner = self.prompt_learner
        text = encode_prompted_text(self.text_encoder, learner.token_prefix, learner.token_suffix,
                                    self.tokenized_prompts, learner.ctx)  # [K, E]
        return prompted_logits(encode_image(self.image_encoder, images), text, self.logit_scale)


def main(images: Path, epochs: int = 3, seed: int = 1) -> dict:
    torch.manual_seed(seed)
    pixels = transforms.Compose([transforms.ToTensor(), transforms.Normalize(PIXEL_MEAN, PIXEL_STD)])
    train, val, test = (datasets.ImageFolder(str(images / split), pixels) for split in ("train", "val", "test"))
    model = PromptedCLIP(model_from_state_dict(load_toy_state_dict()).requires_grad_(False), train.classes)
    pd = PromptDiffusion(CoOpAdapter(model), pd_config(*PD_SETTINGS), num_classes=len(train.classes))
    optimizer = torch.optim.AdamW([*model.prompt_learner.parameters(), *pd.parameters()], lr=2e-3)
    for epoch in range(epochs):
        pd.train()
        for batch in torch.utils.data.DataLoader(train, batch_size=4, shuffle=True):
            optimizer.zero_grad()
            step = pd.training_step(batch, epoch=epoch)  # the host's loss, then CE + generator: two backward
            optimizer.step()
        print(f"epoch {epoch + 1}: " + ", ".join(f"{name} {value:.3f}" for name, value in step.losses.items()))
    pd.eval()

    def labelled(dataset):  # the images' positions in their split are their dataset indices (noise seeds)
        for start, (x, y) in zip(range(0, len(dataset), 32), torch.utils.data.DataLoader(dataset, batch_size=32)):
            yield LabelledBatch(x, y, torch.arange(start, start + len(y)))

    calibrate(pd, labelled(val))
    correct = {"generated": 0, "host": 0}
    with torch.no_grad():
        for batch in labelled(test):
            correct["generated"] += int((pd.logits(batch.images, batch.indices).argmax(1) == batch.labels).sum())
            correct["host"] += int((pd.host_logits(batch.images).argmax(1) == batch.labels).sum())
    accuracy = {name: 100.0 * count / len(test) for name, count in correct.items()}
    print(f"test accuracy: generated prompts {accuracy['generated']:.1f}%, host prompt {accuracy['host']:.1f}%")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", type=Path, help="a folder with train/, val/ and test/, one folder per class")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    main(args.images, args.epochs)
