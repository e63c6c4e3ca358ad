"""TemplateCoOp (a learned context before each template of a bank, the bank weighted per image) and its
prompt-diffusion variant, whose generated prompt is a per-image log-prior over the templates."""
import pytest
import torch

import prompt_diffusion.trainers  # noqa: F401  (registers the trainers and their PD variants)
from helpers import inference, shared_toy_root
from prompt_diffusion.adapters import TemplateBankAdapter
from prompt_diffusion.config import extend_cfg
from prompt_diffusion.engine import build_trainer, get_cfg_default, set_random_seed
from prompt_diffusion.shipped import CONFIGS_DIR
from test_trainers_zsclip import TOY_MIXED, loader_images, toy_zeroshot, write_templates

TEMPLATES = ("a photo of a {}.", "a sketch of a {}.", "a rendition of a {}.")
TINY_PD = ["TRAINER.PD.GENERATOR_SIZE.LAYERS", 1, "TRAINER.PD.GENERATOR_SIZE.HEADS", 2,
           "TRAINER.PD.GENERATOR_SIZE.WIDTH", 32, "TRAINER.PD.SAMPLER", "dpmpp_2m", "TRAINER.PD.AMED.DISTILL_ITERS", 0,
           "TRAINER.PD.DIAGNOSE_IMAGES", 0, "TRAINER.PD.OVERFIT.ITERS", 2, "TRAINER.PD.OVERFIT.LR", 0.5]


def template_coop(tmp_path, trainer: str, templates: str, n_ctx: int, opts=()):
    cfg = extend_cfg(get_cfg_default())
    cfg.merge_from_file(str(CONFIGS_DIR / "trainers" / "CoOp" / "vit_b16_ep50_ctxv1.yaml"))
    cfg.merge_from_list(TOY_MIXED + ["DATASET.ROOT", str(shared_toy_root()), "TRAINER.NAME", trainer,
                                     "OUTPUT_DIR", str(tmp_path), "TRAINER.TEMPLATE_COOP.TEMPLATES", templates,
                                     "TRAINER.TEMPLATE_COOP.N_CTX", n_ctx, "TRAINER.TEMPLATE_COOP.PREC", "fp32",
                                     "DATASET.NUM_SHOTS", 1, "DATALOADER.TRAIN_X.BATCH_SIZE", 8, "OPTIM.NAME", "adamw",
                                     "OPTIM.LR", 2e-3, "OPTIM.MAX_EPOCH", 1, "OPTIM.WARMUP_EPOCH", 0, "SEED", 1,
                                     "TRAIN.PRINT_FREQ", 100, *opts])
    cfg.freeze()
    set_random_seed(1)
    return build_trainer(cfg)


def test_without_a_context_the_host_is_zero_shot_clip_weighting_its_templates_per_image(tmp_path):
    bank = write_templates(tmp_path, *TEMPLATES)
    host = template_coop(tmp_path / "host", "TemplateCoOp", bank, 0)
    weighted = toy_zeroshot(tmp_path / "zs", bank, "weighted")
    images, _ = loader_images(host)
    host.set_model_mode("eval")
    with torch.no_grad():
        ours, theirs = host.model_inference(images), weighted.model_inference(images)
    torch.testing.assert_close(ours.log_softmax(1), theirs, rtol=1e-4, atol=1e-4)  # the same class probabilities


def test_the_pd_variant_generates_a_log_prior_and_a_zero_one_is_the_host(tmp_path):
    bank = write_templates(tmp_path, *TEMPLATES)
    pd_trainer = template_coop(tmp_path / "pd", "TemplateCoOpPD", bank, 2, TINY_PD)
    host = template_coop(tmp_path / "host", "TemplateCoOp", bank, 2)
    adapter = pd_trainer.pd.adapter
    assert isinstance(adapter, TemplateBankAdapter) and [tuple(g) for g in adapter.groups] == [("template", 1, 3)]
    batch = next(iter(pd_trainer.test_loader))
    for trainer in (pd_trainer, host):
        trainer.set_model_mode("eval")
    torch.testing.assert_close(inference(pd_trainer, batch), inference(host, batch), rtol=1e-5, atol=1e-5)
    images = pd_trainer.parse_batch_test(batch)[0]
    with torch.no_grad():  # a prior on the sketch template moves the prediction toward its classes
        features = adapter.image_features(images)
        prior = torch.tensor([[[0.0, 5.0, 0.0]]]).expand(len(images), 1, 3)
        tilted = adapter.logits(images, {"template": prior}, features)
        sketch_only = adapter.logits(images, {"template": torch.tensor([[[-1e4, 0.0, -1e4]]]).expand(len(images), 1, 3)},
                                     features)
    assert not torch.allclose(tilted, inference(host, batch))
    assert (tilted.argmax(1) == sketch_only.argmax(1)).float().mean() > (inference(host, batch).argmax(1) == sketch_only.argmax(1)).float().mean() - 1e-6
    pd_trainer.train()  # one epoch: the host's context and the generator train, the step's losses finite
    assert bool(pd_trainer.pd.calibrated) and torch.isfinite(inference(pd_trainer, batch)).all()


def test_the_bank_texts_are_encoded_once_per_context_at_evaluation(tmp_path):
    host = template_coop(tmp_path, "TemplateCoOp", write_templates(tmp_path, *TEMPLATES), 2)
    host.set_model_mode("eval")
    with torch.no_grad():
        first = host.model.bank_text_features()
        assert host.model.bank_text_features() is first  # cached
        host.model.prompt_learner.ctx.add_(0.1)  # an in-place change (an optimizer step, a load)
        assert host.model.bank_text_features() is not first
    assert host.model.bank_text_features().requires_grad  # with autograd: computed anew, attached to ctx


def test_the_pd_variant_trains_over_a_host_with_nothing_to_learn(tmp_path):
    """``N_CTX 0``: the zero-shot bank, its host loss without a gradient; the generator alone trains."""
    trainer = template_coop(tmp_path, "TemplateCoOpPD", write_templates(tmp_path, *TEMPLATES), 0, TINY_PD)
    before = [p.detach().clone() for p in trainer.pd.generator.parameters()]
    trainer.train()
    assert any(not torch.equal(p, q) for p, q in zip(trainer.pd.generator.parameters(), before))
