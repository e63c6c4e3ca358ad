"""The examples/ folder: each example runs at tiny scale through the command line."""
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from prompt_diffusion import cli
from prompt_diffusion.results import read_run
from prompt_diffusion.sweep import CONFIGS_DIR

from helpers import shared_toy_root

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# the examples' toy settings, made tiny: 1 shot, 1 epoch, 1 test image per class
TINY = ["MODEL.BACKBONE.NAME", "toy", "INPUT.SIZE", "(32, 32)", "INPUT.TRANSFORMS", "['random_flip', 'normalize']",
        "OPTIM.NAME", "adamw", "OPTIM.LR", "2e-3", "OPTIM.MAX_EPOCH", "1", "DATALOADER.NUM_WORKERS", "0",
        "TRAINER.PD.GENERATOR_SIZE.LAYERS", "1", "TRAINER.PD.GENERATOR_SIZE.WIDTH", "32", "TRAINER.PD.GENERATOR_SIZE.HEADS", "2",
        "TRAINER.PD.SAMPLER", "dpmpp_2m", "TRAINER.PD.AMED.DISTILL_ITERS", "0", "TRAINER.PD.OVERFIT.ITERS", "1",
        "DATASET.NUM_SHOTS", "1", "DATASET.TOY.TEST_PER_CLASS", "1"]


def toy_train(tmp_path: Path, *flags: str, opts=()) -> list:
    return ["train", "--root", str(shared_toy_root()), "--seed", "1",
            "--dataset-config-file", str(CONFIGS_DIR / "datasets" / "toy_world.yaml"), *flags, *TINY, *opts]


def test_fork_trainer_outside_the_package_trains_through_the_cli(tmp_path):
    out = tmp_path / "WideCoCoOpPD"
    code = cli.main(toy_train(tmp_path, "--import", str(EXAMPLES / "fork_trainer" / "my_fork.py"),
                              "--trainer", "WideCoCoOpPD", "--output-dir", str(out),
                              "--config-file", str(CONFIGS_DIR / "trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml"),
                              opts=["TRAINER.COCOOP.PREC", "fp32", "DATASET.SUBSAMPLE_CLASSES", "base"]))
    assert code == 0 and read_run(out).status == "complete"
    state = torch.load(out / "prompt_learner" / "model.pth.tar-1", weights_only=True)["state_dict"]
    width = state["ctx"].shape[1]
    assert state["meta_net.linear1.weight"].shape == (width // 4, width)  # the fork's wider Meta-Net trained
    pd_state = torch.load(out / "prompt_diffusion" / "model.pth.tar-1", weights_only=True)["state_dict"]
    assert pd_state["generator._extra_state"]["groups"] == [["text", 4, width]]  # CoCoOp's layout, found by detection
    log = (out / "log.txt").read_text()
    assert log.startswith("Engine:") and "System info **" not in log and (out / "env.txt").stat().st_size > 0


def test_prompt_adapter_for_a_new_prompt_learner(tmp_path):
    module = EXAMPLES / "new_prompt_learner" / "feature_prompt_pd.py"
    train, new = tmp_path / "train_base", tmp_path / "test_new"
    common = ["--import", str(module), "--trainer", "FeaturePromptPD"]
    assert cli.main(toy_train(tmp_path, *common, "--output-dir", str(train),
                              opts=["DATASET.SUBSAMPLE_CLASSES", "base"])) == 0
    assert cli.main(toy_train(tmp_path, *common, "--output-dir", str(new), "--eval-only", "--model-dir", str(train),
                              "--load-epoch", "1", opts=["DATASET.SUBSAMPLE_CLASSES", "new"])) == 0
    assert read_run(train).status == "complete" and read_run(new, training=False).status == "complete"
    pd_state = torch.load(train / "prompt_diffusion" / "model.pth.tar-1", weights_only=True)["state_dict"]
    assert pd_state["generator._extra_state"]["groups"][0][:2] == ["feature", 1]  # the example's adapter

    # the adapter's contract: the host's own prompt for every image gives the host's own logits
    from feature_prompt import FeaturePromptCLIP
    from feature_prompt_pd import FeaturePromptAdapter

    from prompt_diffusion.backbones import build_tiny_clip

    model = FeaturePromptCLIP(build_tiny_clip(), ["red circle", "blue square", "green star"]).eval()
    torch.nn.init.normal_(model.prompt_learner.ctx, std=0.1)
    adapter = FeaturePromptAdapter(model)
    images = torch.randn(5, 3, 32, 32)
    features = adapter.image_features(images)
    host = adapter.host_prompts(features)
    assert host["feature"].shape == (5, 1, model.text_features.shape[1])
    torch.testing.assert_close(adapter.logits(images, host, features), model(images))
    shifted = {"feature": host["feature"].clone()}
    shifted["feature"][2] += 1.0  # one image's prompt changes: only its logits change
    changed = (adapter.logits(images, shifted, features) != model(images)).any(dim=1)
    assert changed.tolist() == [False, False, True, False, False]


def test_toy_base2new_spec_sweeps_then_tables(tmp_path):
    spec = yaml.safe_load((EXAMPLES / "toy_base2new" / "toy_base2new.yaml").read_text())
    spec.update(seeds=[1], shots=1, domains=[])  # tiny: the example's spec at 1 seed, 1 shot, no domain
    spec["opts"].update({"OPTIM.MAX_EPOCH": 1, "DATASET.TOY.TEST_PER_CLASS": 1})
    spec["methods"]["CoOpPD"]["opts"].update({"TRAINER.PD.GENERATOR_SIZE.WIDTH": 32, "TRAINER.PD.OVERFIT.ITERS": 1})
    path = tmp_path / "toy_base2new.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    assert cli.main(["sweep", str(path), "--root", str(shared_toy_root()), "--output-dir", str(out), "--jobs", "2"]) == 0
    printed = subprocess.run([sys.executable, "-m", "prompt_diffusion", "table", str(path), "--output-dir", str(out)],
                             capture_output=True, text=True, check=True).stdout
    assert "| CoOpPD |" in printed and "| CoOp |" in printed and "Missing or incomplete" not in printed


def test_plain_loop_trains_and_evaluates_prompt_diffusion_without_dassl_or_the_engine(tmp_path):
    """examples/plain_loop: a plain PyTorch loop holds the PromptDiffusion module; the process imports
    neither Dassl nor the built-in engine, and the generated prompts classify the test images."""
    from PIL import Image

    from prompt_diffusion.data.toy_world import render_example

    for k, (shape, colour) in enumerate([("heart", "red"), ("star", "blue"), ("circle", "green"), ("ring", "yellow")]):
        for split, seed, count in (("train", 1, 4), ("val", 2, 2), ("test", 3, 4)):
            folder = tmp_path / "images" / split / f"{colour}_{shape}"
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(render_example(seed, 100 * k + i, shape, colour, "photo")[0]).save(folder / f"{i}.png")
    script = ("import json, sys; sys.path.insert(0, sys.argv[1]); import train; from pathlib import Path; "
              "accuracy = train.main(Path(sys.argv[2]), epochs=1); "
              "print(json.dumps({'accuracy': accuracy, 'engine': [m for m in sys.modules "
              "if m.startswith(('dassl', 'prompt_diffusion.engine'))]}))")
    done = subprocess.run([sys.executable, "-c", script, str(EXAMPLES / "plain_loop"), str(tmp_path / "images")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    assert result["engine"] == []
    assert result["accuracy"]["generated"] > 50.0 and result["accuracy"]["host"] > 50.0  # 4 classes: chance is 25
