"""A run folder holds one run and says what it holds: a lock against a second run, a rerun with
another seed or model refused, a record whose paths work from any working folder, and nothing
written (no folder, no log, no record) for a command that is refused."""
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import shared_toy_root
from prompt_diffusion import cli
from prompt_diffusion.results import read_run
from prompt_diffusion.run_lock import LOCK_FILE
from prompt_diffusion.sweep import CONFIGS_DIR

TOY = ["--dataset-config-file", str(CONFIGS_DIR / "datasets" / "toy_world.yaml"),
       "--config-file", str(CONFIGS_DIR / "trainers" / "CoOp" / "vit_b16_ep50_ctxv1.yaml"),
       "--config-file", str(CONFIGS_DIR / "profiles" / "toy_cpu.yaml")]
TINY = ["OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "1", "DATASET.TOY.TEST_PER_CLASS", "1",
        "DATASET.SUBSAMPLE_CLASSES", "base", "TRAINER.PD.GENERATOR_SIZE.LAYERS", "1", "TRAINER.PD.GENERATOR_SIZE.WIDTH", "32"]


def train(out, *flags, root=None, trainer="CoOp", seed="1", opts=()):
    return ["train", "--root", str(root or shared_toy_root()), "--seed", seed, "--trainer", trainer, *TOY,
            "--output-dir", str(out), *flags, *TINY, *opts]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished CoOp run (seed 1, one epoch), trained with a relative --root from the data's parent."""
    out = tmp_path_factory.mktemp("runs") / "coop"
    root = shared_toy_root()
    here = os.getcwd()
    os.chdir(root.parent)
    try:
        assert cli.main(train(out, root=root.name)) == 0
    finally:
        os.chdir(here)
    assert read_run(out).status == "complete"
    return out


def test_the_record_holds_absolute_paths_so_the_run_evaluates_from_anywhere(finished, tmp_path, monkeypatch):
    record = yaml.safe_load((finished / "run_config.yaml").read_text())
    assert record["DATASET"]["ROOT"] == str(shared_toy_root()) and record["OUTPUT_DIR"] == str(finished)
    monkeypatch.chdir(tmp_path)  # another working folder: the relative root given at training means nothing here
    assert cli.main(["train", "--eval-only", "--model-dir", str(finished)]) == 0
    assert read_run(finished / "eval" / "ToyWorld_base", training=False).status == "complete"
    from prompt_diffusion.commands.train import build_parser, setup_cfg

    moved = setup_cfg(build_parser().parse_args(["--eval-only", "--model-dir", str(finished), "--root", "moved"]))
    assert moved.DATASET.ROOT == str(tmp_path / "moved")  # --root gives another, resolved here


def test_a_rerun_with_another_seed_or_trainer_is_refused_before_anything_is_written(finished, capsys):
    before = sorted(path.name for path in finished.iterdir())
    assert cli.main(train(finished, seed="2")) == 1
    assert f"--output-dir {finished} holds a run with SEED 1, this command gives 2" in capsys.readouterr().err
    assert cli.main(train(finished, trainer="CoOpPD")) == 1
    assert "holds a run with TRAINER.NAME 'CoOp', this command gives 'CoOpPD'" in capsys.readouterr().err
    assert sorted(path.name for path in finished.iterdir()) == before  # no second log, no new record, no lock


@pytest.mark.parametrize("opts, message", [
    (["TRAINER.PD.NFE", "-3"], "TRAINER.PD.NFE = -3 is out of range"),
    (["TRAINER.PD.SAMPLER", "amedd"], "TRAINER.PD.SAMPLER = 'amedd' is not allowed"),
    (["TRAINER.COOP.PREC", "bf16"], "TRAINER.COOP.PREC='bf16': must be one of"),
])
def test_a_bad_value_writes_nothing(tmp_path, capsys, opts, message):
    assert cli.main(train(tmp_path / "run", trainer="CoOpPD", opts=opts)) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_unknown_trainer_writes_nothing(tmp_path, capsys):
    assert cli.main(train(tmp_path / "run", trainer="CoCoOpp")) == 1
    assert "TRAINER.NAME 'CoCoOpp' is not registered (closest: CoCoOp); registered: " in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_corrupt_checkpoint_is_refused_before_an_evaluation_folder_is_written(finished, tmp_path, capsys):
    import shutil

    run = tmp_path / "coop"
    shutil.copytree(finished, run, ignore=shutil.ignore_patterns("eval"))
    checkpoint = run / "prompt_learner" / "model.pth.tar-1"
    checkpoint.write_bytes(checkpoint.read_bytes()[:300])
    assert cli.main(["train", "--eval-only", "--model-dir", str(run)]) == 1
    assert f'Checkpoint "{checkpoint}" is corrupt or truncated' in capsys.readouterr().err
    assert not (run / "eval").exists()
    assert cli.main(["train", "--eval-only", "--model-dir", str(run), "--load-epoch", "4"]) == 1
    assert f"--model-dir {run}: no model.pth.tar-4 in its model folders (saved epochs: 1;" in capsys.readouterr().err
    assert cli.main(train(run)) == 1  # the rerun would resume from it: refused before its log
    assert "is corrupt or truncated" in capsys.readouterr().err and not list(run.glob("log.txt-*"))


def test_no_tensorboard_folder_unless_tensorboard_writes_there(finished):
    has_tensorboard = importlib.util.find_spec("tensorboard") is not None
    folder = finished / "tensorboard"
    assert folder.exists() == has_tensorboard and (not has_tensorboard or any(folder.iterdir()))


def test_a_second_run_into_a_busy_folder_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "prompt_diffusion", *train(out, opts=["OPTIM.MAX_EPOCH", "200"])],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not ((out / "log.txt").exists() and "epoch [1/200]" in (out / "log.txt").read_text()):
            assert first.poll() is None, first.communicate()[1][-2000:]
            time.sleep(0.2)
        assert (out / LOCK_FILE).read_text().split()[0] == str(first.pid)
        assert cli.main(train(out)) == 1
        assert f"--output-dir {out} is in use by process {first.pid} on " in capsys.readouterr().err
    finally:
        first.send_signal(signal.SIGKILL)  # killed: its lock stays behind, stale
        first.communicate()
    assert (out / LOCK_FILE).exists()
    assert cli.main(train(out)) == 0  # the same run, resumed; one epoch this time
    log = next(out.glob("log.txt-*")).read_text()
    assert f"Took over the lock of process {first.pid}, which no longer runs" in log
    assert not (out / LOCK_FILE).exists()  # released at the end
