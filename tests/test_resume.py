"""Ctrl-C, then the same command: a run resumes from its last finished epoch with the shipped configs
(no TRAIN.CHECKPOINT_FREQ), and ends where an uninterrupted run ends, bit for bit, for a host and
for its PD variant (online overfitting)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import shared_toy_root
from prompt_diffusion import cli
from prompt_diffusion.sweep import CONFIGS_DIR

SHIPPED = ["--dataset-config-file", str(CONFIGS_DIR / "datasets" / "toy_world.yaml"),
           "--config-file", str(CONFIGS_DIR / "trainers" / "CoCoOp" / "vit_b16_c4_ep10_batch1_ctxv1.yaml"),
           "--config-file", str(CONFIGS_DIR / "profiles" / "toy_cpu.yaml")]
# two short epochs of 8 batches: 32 base classes x 1 shot, batch 4 (the CPU profile's)
SMALL = ["OPTIM.MAX_EPOCH", "2", "DATASET.NUM_SHOTS", "1", "DATASET.SUBSAMPLE_CLASSES", "base",
         "DATASET.TOY.TEST_PER_CLASS", "1", "TRAINER.PD.GENERATOR_SIZE.LAYERS", "1", "TRAINER.PD.GENERATOR_SIZE.WIDTH", "32"]


def train_argv(trainer: str, out: Path) -> list:
    return ["train", "--root", str(shared_toy_root()), "--seed", "1", "--trainer", trainer, *SHIPPED,
            "--output-dir", str(out), *SMALL]


def interrupt_in_epoch_2(argv: list, out: Path) -> str:
    """Run ``prompt-diffusion <argv>`` in a child process and Ctrl-C it once its log shows epoch 2;
    returns the child's stderr."""
    child = subprocess.Popen([sys.executable, "-m", "prompt_diffusion", *argv], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = out / "log.txt"
    deadline = time.time() + 240
    while time.time() < deadline and not (log.exists() and "epoch [2/2] batch [" in log.read_text()):
        assert child.poll() is None, f"the run ended before it was interrupted: {child.communicate()[1][-2000:]}"
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err[-2000:]
    return err


def final_state(out: Path) -> dict:
    """Every registered model's weights at the last epoch, and the test predictions."""
    state = {f"{path.parent.name}/{key}": value for path in sorted(out.glob("*/model.pth.tar-2"))
             for key, value in torch.load(path, weights_only=True)["state_dict"].items()}
    return {"weights": state, "predictions": json.loads((out / "predictions_test.json").read_text())}


@pytest.mark.parametrize("trainer", ["CoCoOp", "CoCoOpPD"])
def test_ctrl_c_then_the_same_command_ends_where_an_uninterrupted_run_ends(tmp_path, trainer):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert cli.main(train_argv(trainer, straight)) == 0
    err = interrupt_in_epoch_2(train_argv(trainer, resumed), resumed)
    assert "Run the same command again to resume" in err
    assert sorted(p.name for p in resumed.glob("*/model.pth.tar-*")) == ["model.pth.tar-1"] * (1 + trainer.endswith("PD"))
    assert cli.main(train_argv(trainer, resumed)) == 0
    log = next(path for path in resumed.glob("log.txt-*")).read_text()  # the rerun's log, beside the first
    assert "Found checkpoint" in log and "No checkpoint found" not in log
    expected, got = final_state(straight), final_state(resumed)
    assert got["weights"].keys() == expected["weights"].keys() and len(got["weights"]) > 0
    assert all(torch.equal(got["weights"][key], value) if isinstance(value, torch.Tensor)
               else got["weights"][key] == value for key, value in expected["weights"].items())  # (+ extra state)
    assert got["predictions"] == expected["predictions"]
    if trainer.endswith("PD"):
        assert {"prompt_diffusion", "prompt_learner"} <= {path.parent.name for path in resumed.glob("*/model.pth.tar-2")}
