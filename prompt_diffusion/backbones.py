"""CLIP backbones: load OpenAI CLIP from a local file or cache; build tiny CLIPs for tests.

The library never downloads weights.
"""
import torch
from clip.model import CLIP


def build_tiny_clip(
    embed_dim: int = 64,
    image_resolution: int = 32,
    vision_layers: int = 2,
    vision_width: int = 64,
    vision_patch_size: int = 8,
    context_length: int = 77,
    transformer_width: int = 64,
    transformer_heads: int = 2,
    transformer_layers: int = 2,
    seed: int = 0,
) -> CLIP:
    """A randomly initialised ViT ``clip.model.CLIP`` of small dimensions (fp32, eval mode).

    It keeps the real vocabulary (49408 tokens) so ``clip.tokenize`` works unchanged.
    ``vision_width // 64`` gives the number of vision heads, as in ``clip.model``.
    """
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = CLIP(
        embed_dim=embed_dim,
        image_resolution=image_resolution,
        vision_layers=vision_layers,
        vision_width=vision_width,
        vision_patch_size=vision_patch_size,
        context_length=context_length,
        vocab_size=49408,
        transformer_width=transformer_width,
        transformer_heads=transformer_heads,
        transformer_layers=transformer_layers,
    )
    torch.random.set_rng_state(generator_state)
    return model.float().eval()
