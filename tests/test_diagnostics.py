"""Diagnostics: paired differences and their standard errors, and ``prompt-diffusion diagnose`` on a
tiny trained run where the right residual is known (it is decided by the class, and the classes
are told apart by colour)."""
import json
import math

import pytest
import torch

import prompt_diffusion.trainers  # noqa: F401  (registers the trainers and their PD variants)
from helpers import make_image_folder, register_tiny_folder_dataset
from prompt_diffusion import cli
from prompt_diffusion.backbones import build_tiny_clip, save_clip
from prompt_diffusion.diagnostics import mean_pairwise_cosine
from prompt_diffusion.results import combine_seeds, paired_difference


def test_paired_difference_counts_and_standard_error():
    a = [True] * 8 + [False] * 2   # 10 images
    b = [True] * 6 + [False] * 4   # A fixes images 6 and 7
    d = paired_difference(a, b)
    assert (d.mean, d.fixed, d.broken, d.images) == (20.0, 2, 0, 10)
    diffs = [0] * 6 + [1, 1] + [0, 0]
    mean = sum(diffs) / 10
    assert d.se == pytest.approx(100 * math.sqrt(sum((x - mean) ** 2 for x in diffs) / 9 / 10))
    assert not d.within_noise()
    assert paired_difference([True, False], [False, True]).within_noise()
    with pytest.raises(ValueError, match="equal non-empty"):
        paired_difference([True], [True, False])
    pooled = combine_seeds([d, paired_difference(b, a)])
    assert pooled.mean == pytest.approx(0.0) and pooled.se == pytest.approx(d.se / math.sqrt(2))
    assert (pooled.fixed, pooled.broken, pooled.images, pooled.seeds) == (2, 2, 20, 2)


def test_mean_pairwise_cosine():
    assert mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])) == pytest.approx(1.0)
    assert mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(0.0)
    assert mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-1.0)


CLASSNAMES = ["blue", "green", "red", "yellow"]


def test_diagnose_reports_alignment_where_the_residual_is_learnable(tmp_path):
    """Per-sample overfitting pushes each image's prompt towards its own class, and the image
    feature tells the class: a denoiser conditioned on it learns the residual, so the generated
    residuals align with the overfitted ones on the images it trained on."""
    make_image_folder(tmp_path / "images", CLASSNAMES, per_class=6)
    save_clip(build_tiny_clip(), tmp_path / "tiny_clip.pt")
    run = tmp_path / "run"
    common = ["--root", str(tmp_path / "images"), "--seed", "1", "--trainer", "CoOpPD"]
    opts = ["DATASET.NAME", register_tiny_folder_dataset(), "MODEL.BACKBONE.NAME", "tiny",
            "MODEL.BACKBONE.PATH", str(tmp_path / "tiny_clip.pt"), "INPUT.SIZE", "(32, 32)", "INPUT.TRANSFORMS", "()",
            "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "8",
            "OPTIM.NAME", "adam", "OPTIM.LR", "0.003", "OPTIM.MAX_EPOCH", "6", "TEST.NO_TEST", "True",
            "TRAINER.COOP.PREC", "fp32", "TRAINER.COOP.N_CTX", "4",
            "TRAINER.PD.GENERATOR_SIZE.LAYERS", "1", "TRAINER.PD.GENERATOR_SIZE.HEADS", "2", "TRAINER.PD.GENERATOR_SIZE.WIDTH", "32",
            "TRAINER.PD.COND", "image_feature", "TRAINER.PD.LOSS_DRAWS", "8", "TRAINER.PD.SAMPLER", "dpmpp_2m",
            "TRAINER.PD.AMED.DISTILL_ITERS", "0", "TRAINER.PD.OVERFIT.ITERS", "2", "TRAINER.PD.OVERFIT.LR", "0.005",
            "TRAINER.PD.DIAGNOSE_IMAGES", "8"]
    assert cli.main(["train", *common, "--output-dir", str(run), *opts]) == 0
    numbers = tmp_path / "diagnosis.json"
    assert cli.main(["diagnose", "--split", "train", "--probe", "--json", str(numbers), *common,
                     "--output-dir", str(tmp_path / "diag"), "--model-dir", str(run), "--load-epoch", "6", *opts]) == 0
    result = json.loads(numbers.read_text())
    assert result["images"] == 24
    assert result["alignment"] > 0.1 and result["alignment"] > 2 * result["alignment_se"], result  # past 2 SE
    assert result["generator_fit"] < 0.9, result
    # the ridge probe, fitted on the same (training) images, predicts the class-decided residual
    assert result["probe"]["alignment_train"] == pytest.approx(result["probe"]["alignment"])
    assert result["probe"]["alignment"] > 0.3 and result["probe"]["images"] == 24
    # overfitting toward the host's own prediction never changes it
    assert result["differences"]["overfit_predicted"]["broken"] == 0
    assert result["differences"]["overfit_true"]["broken"] == 0
