"""The CoOp-family trainers (CoOp, CoCoOp, VPT, IVLP) on a tiny CLIP and tiny generated image folders:
they learn, their checkpoints load into a trainer for other class names, and their parameters have
the upstream names and shapes."""
import pytest
import torch
import torch.nn.functional as F

from helpers import align_tiny_clip, assert_test_accuracy_is_its_predictions, make_image_folder, tiny_trainer_cfg
from prompt_diffusion.backbones import build_random_clip, build_tiny_clip, save_clip
from prompt_diffusion.config import extend_cfg
from prompt_diffusion.engine import build_trainer, get_cfg_default

import prompt_diffusion.trainers  # noqa: F401  (registers the trainers)
from prompt_diffusion.trainers import cocoop, coop, ivlp, vpt

BASE_CLASSES = ["red_square", "green_square", "blue_square", "yellow_square"]
NEW_CLASSES = ["purple_ring", "cyan_ring", "orange_ring"]

# trainer -> (its cfg.TRAINER node and keys for the tiny runs, learning rate)
TINY_SETTINGS = {
    "CoOp": ({"COOP": {"N_CTX": 4, "PREC": "fp32"}}, 0.005),
    "CoCoOp": ({"COCOOP": {"N_CTX": 4, "CTX_INIT": "a photo of a", "PREC": "fp32"}}, 0.1),
    "VPT": ({"VPT": {"N_CTX_VISION": 4, "PROMPT_DEPTH_VISION": 2, "PREC": "fp32"}}, 0.5),
    "IVLP": ({"IVLP": {"N_CTX_TEXT": 2, "N_CTX_VISION": 2, "PROMPT_DEPTH_TEXT": 2, "PROMPT_DEPTH_VISION": 2,
                       "PREC": "fp32"}}, 0.02),
}


ALIGN_STEPS = 3


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainers")
    base = make_image_folder(root / "base", BASE_CLASSES, per_class=8)
    make_image_folder(root / "new", NEW_CLASSES, per_class=4, seed=1)
    clip_path = root / "tiny_clip.pt"
    save_clip(align_tiny_clip(build_tiny_clip(transformer_heads=1), base, steps=ALIGN_STEPS), clip_path)
    return root, clip_path


def make_cfg(trainer: str, data_root, clip_path, output_dir, lr: float):
    keys, _ = TINY_SETTINGS[trainer]
    options = [item for node, values in keys.items() for key, value in values.items()
               for item in (f"TRAINER.{node}.{key}", value)]
    return tiny_trainer_cfg(trainer, data_root, clip_path, output_dir, lr, options=options)


@torch.no_grad()
def loss_and_accuracy(trainer):
    """Mean cross-entropy and accuracy (%) of the trainer's model over its test loader (= the train images)."""
    trainer.set_model_mode("eval")
    losses, correct, total = [], 0, 0
    for batch in trainer.test_loader:
        images, labels = trainer.parse_batch_test(batch)
        logits = trainer.model_inference(images)
        losses.append(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(-1) == labels).sum())
        total += len(labels)
    return float(sum(losses)) / total, 100.0 * correct / total


def learned_state(trainer):
    """The registered model's trainable tensors, by name."""
    model = trainer._models[trainer.get_model_names()[0]]
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {name: value.clone() for name, value in model.state_dict().items() if name in trainable}


@pytest.mark.parametrize("name", list(TINY_SETTINGS))
def test_trainer_learns_and_its_checkpoint_evaluates_on_new_classes(world, tmp_path, name):
    root, clip_path = world
    lr = TINY_SETTINGS[name][1]
    trainer = build_trainer(make_cfg(name, root / "base", clip_path, tmp_path / "run", lr))
    loss_before, accuracy_before = loss_and_accuracy(trainer)
    trainer.train()
    loss_after, accuracy_after = loss_and_accuracy(trainer)
    report = f"{name}: loss {loss_before:.3f} -> {loss_after:.3f}, accuracy {accuracy_before:.1f} -> {accuracy_after:.1f}"
    print(report)
    assert loss_after < loss_before, report
    assert accuracy_after > 100 / len(BASE_CLASSES) + 10, report
    learned = learned_state(trainer)
    assert learned  # something was trained

    new_trainer = build_trainer(make_cfg(name, root / "new", clip_path, tmp_path / "eval", lr))
    model = new_trainer.model
    prefix_before = getattr(model, "prompt_learner", None) and model.prompt_learner.token_suffix.clone()
    new_trainer.load_model(str(tmp_path / "run"), epoch=2)
    loaded = learned_state(new_trainer)
    assert loaded.keys() == learned.keys()
    assert all(torch.equal(loaded[k], learned[k]) for k in learned)
    if prefix_before is not None:  # class buffers stay those of the new class names
        assert model.prompt_learner.token_suffix.shape[0] == len(NEW_CLASSES)
        assert torch.equal(model.prompt_learner.token_suffix, prefix_before)
    assert_test_accuracy_is_its_predictions(new_trainer, new_trainer.test())


# upstream names and shapes for ViT-B/16 with the upstream default config files
# (CoOp vit_b16_ep50, CoCoOp vit_b16_c4_ep10_batch1_ctxv1, VPT vit_b16_c2_ep5_batch4_4, IVLP 2+2ctx depth 9)
K = 5
UPSTREAM_TRAINABLE = {
    "CoOp": ({"COOP": {"N_CTX": 16}}, {"prompt_learner.ctx": (16, 512)}),
    "CoCoOp": ({"COCOOP": {"N_CTX": 4, "CTX_INIT": "a photo of a"}}, {
        "prompt_learner.ctx": (4, 512),
        "prompt_learner.meta_net.linear1.weight": (32, 512), "prompt_learner.meta_net.linear1.bias": (32,),
        "prompt_learner.meta_net.linear2.weight": (512, 32), "prompt_learner.meta_net.linear2.bias": (512,),
    }),
    "VPT": ({"VPT": {"N_CTX_VISION": 8, "PROMPT_DEPTH_VISION": 12}}, {
        "image_encoder.VPT": (8, 768),
        **{f"image_encoder.transformer.resblocks.{i}.VPT_shallow": (8, 768) for i in range(1, 12)},
    }),
    "IVLP": ({"IVLP": {"N_CTX_TEXT": 2, "N_CTX_VISION": 2, "PROMPT_DEPTH_TEXT": 9, "PROMPT_DEPTH_VISION": 9}}, {
        "prompt_learner.ctx": (2, 512),
        **{f"text_encoder.transformer.resblocks.{i}.VPT_shallow": (2, 512) for i in range(1, 9)},
        "image_encoder.VPT": (2, 768),
        **{f"image_encoder.transformer.resblocks.{i}.VPT_shallow": (2, 768) for i in range(1, 9)},
    }),
}
UPSTREAM_CLASS_BUFFERS = {  # n_ctx of the text prompt -> token_prefix / token_suffix shapes
    "CoOp": 16, "CoCoOp": 4, "IVLP": 2,
}
CUSTOM_CLIP = {"CoOp": coop.CustomCLIP, "CoCoOp": cocoop.CustomCLIP, "VPT": vpt.CustomCLIP, "IVLP": ivlp.CustomCLIP}


@pytest.mark.parametrize("name", list(UPSTREAM_TRAINABLE))
def test_parameter_names_and_shapes_match_upstream_vit_b16(name):
    cfg = extend_cfg(get_cfg_default())
    keys, expected = UPSTREAM_TRAINABLE[name]
    for node, values in keys.items():
        for key, value in values.items():
            cfg.TRAINER[node][key] = value
    model = CUSTOM_CLIP[name](cfg, [f"class_{i}" for i in range(K)], build_random_clip("ViT-B/16"))
    trainer_class = {"CoOp": coop.CoOp, "CoCoOp": cocoop.CoCoOp, "VPT": vpt.VPT, "IVLP": ivlp.IVLP}[name]
    trainable = {n: tuple(p.shape) for n, p in model.named_parameters()
                 if any(part in n for part in trainer_class.TRAINABLE)}
    assert trainable == expected
    if name in UPSTREAM_CLASS_BUFFERS:
        n_ctx = UPSTREAM_CLASS_BUFFERS[name]
        buffers = dict(model.named_buffers())
        assert tuple(buffers["prompt_learner.token_prefix"].shape) == (K, 1, 512)
        assert tuple(buffers["prompt_learner.token_suffix"].shape) == (K, 77 - 1 - n_ctx, 512)
    else:  # VPT: frozen hand-crafted text features, never checkpointed
        assert "embeddings.fixed_embeddings" not in model.state_dict()


def test_an_unknown_precision_is_refused_before_anything_loads(tmp_path):
    cfg = tiny_trainer_cfg("CoCoOp", tmp_path / "nowhere", tmp_path / "no_clip.pt", tmp_path / "out", 0.1,
                           options=["TRAINER.COCOOP.PREC", "bf16"])
    with pytest.raises(ValueError, match=r"TRAINER.COCOOP.PREC='bf16': must be one of \('fp16', 'fp32', 'amp'\)"):
        build_trainer(cfg)


@pytest.mark.parametrize("position, template", [("end", "a photo of a {}."), ("middle", "a photo {} of a."),
                                                ("front", "{} a photo of a.")])
@torch.no_grad()
def test_coop_class_token_positions_give_the_written_prompt(position, template):
    """CoOp's context set to the embeddings of "a photo of a" reads as the corresponding sentence."""
    import clip

    cfg = extend_cfg(get_cfg_default())
    cfg.INPUT.SIZE = (32, 32)
    cfg.TRAINER.COOP.N_CTX, cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = 4, position
    classes = ["red_circle", "big blue star"]
    clip_model = build_tiny_clip(transformer_heads=1)
    model = coop.CustomCLIP(cfg, classes, clip_model)
    model.prompt_learner.ctx.copy_(clip_model.token_embedding(clip.tokenize("a photo of a"))[0, 1:5])
    text = model.text_encoder(model.prompt_learner(), model.tokenized_prompts)
    expected = clip_model.encode_text(clip.tokenize([template.format(c.replace("_", " ")) for c in classes]))
    assert (text - expected).abs().max() <= 1e-5
