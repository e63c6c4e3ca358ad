"""Loading a transformers CLIPModel folder (``MODEL.BACKBONE.NAME hf``) beside the same weights as an OpenAI state dict.

A ViT-B/16-shaped ``CLIPModel`` (random weights, fp32) is saved by transformers in a temporary folder
(``model.safetensors`` and ``config.json``, with the CLIP BPE's ``vocab.json`` / ``merges.txt`` as
downloaded folders have them, so the tokenizer check runs too); the model it converts to is saved as a
plain OpenAI state dict (``torch.save(model.state_dict())``, what ``MODEL.BACKBONE.NAME ViT-B/16
MODEL.BACKBONE.PATH <file>`` loads). In one process, in interleaved rounds (fastest of ``--repeats``
after a warm-up), ``backbones.load_clip`` of each is timed, from files in the page cache.

    OMP_NUM_THREADS=1 python benchmarks/bench_hf_backbone.py
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
import transformers

from bench_samplers import ratio_line, timings  # interleaved rounds, fastest wall / CPU time (folder on sys.path)

from prompt_diffusion.backbones import load_clip

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import write_clip_bpe_tokenizer  # noqa: E402  (the tests' CLIP BPE tokenizer files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory() as work:
        folder, state_file = Path(work) / "clip-vit-base-patch16", Path(work) / "ViT-B-16.pt"
        torch.manual_seed(0)
        # CLIPConfig's defaults are ViT-B/32's (text 512 x 12, vision 768 x 12, projection 512): patch 16
        transformers.CLIPModel(transformers.CLIPConfig(vision_config={"patch_size": 16})).save_pretrained(folder)
        write_clip_bpe_tokenizer(folder)
        converted = load_clip("hf", str(folder))
        torch.save(converted.state_dict(), state_file)
        reloaded = load_clip("ViT-B/16", str(state_file)).state_dict()
        assert all(torch.equal(weight, reloaded[name]) for name, weight in converted.state_dict().items())
        runs = {"hf folder": lambda: load_clip("hf", str(folder)),
                "OpenAI state dict": lambda: load_clip("ViT-B/16", str(state_file))}
        best = timings(runs, args.repeats, torch.device("cpu"))
        mib = {"hf folder": (folder / "model.safetensors").stat().st_size / 2**20,
               "OpenAI state dict": state_file.stat().st_size / 2**20}
    print(f"ViT-B/16-shaped CLIP, {sum(p.numel() for p in converted.parameters()) / 1e6:.1f} M parameters (fp32), "
          f"{torch.get_num_threads()} thread(s), fastest of {args.repeats} interleaved rounds:")
    for name, (wall, cpu) in best.items():
        print(f"  {name:<17} {mib[name]:4.0f} MiB  {wall:5.2f} s wall  {cpu:5.2f} s CPU")
    print(f"  {ratio_line(best, 'hf folder', 'OpenAI state dict', digits=2)}")


if __name__ == "__main__":
    main()
