"""The command line in a user's hands: errors, flags after opts, logs, Ctrl-C, plug-ins, help."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prompt_diffusion import cli
from prompt_diffusion.backbones import build_tiny_clip, save_clip
from prompt_diffusion.engine.logger import last_redraw, setup_logger
from prompt_diffusion.sweep import CONFIGS_DIR

from helpers import shared_toy_root

TOY_WORLD = str(CONFIGS_DIR / "datasets" / "toy_world.yaml")
COOP = str(CONFIGS_DIR / "trainers" / "CoOp" / "vit_b16_ep50_ctxv1.yaml")
TOY_OPTS = ["MODEL.BACKBONE.NAME", "toy", "INPUT.SIZE", "(32, 32)", "TRAINER.COOP.PREC", "fp32",
            "DATALOADER.NUM_WORKERS", "0", "DATASET.NUM_SHOTS", "1", "DATASET.TOY.TEST_PER_CLASS", "1"]


def test_a_user_error_prints_its_message_alone(tmp_path, capsys, monkeypatch):
    argv = ["train", "--config-file", str(tmp_path / "missing.yaml")]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "prompt-diffusion train: error: --config-file" in err and "missing.yaml: no such file" in err
    assert "Traceback" not in err and "PROMPT_DIFFUSION_DEBUG=1" in err
    with pytest.raises(FileNotFoundError):  # the traceback, on request
        cli.main(["--debug"] + argv)
    monkeypatch.setenv("PROMPT_DIFFUSION_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        cli.main(argv)


def test_flags_after_the_opts_are_flags():
    args = cli.build_parser().parse_args(["train", "--trainer", "CoOp", "OPTIM.LR", "0.01", "--output-dir", "out",
                                          "OPTIM.MAX_EPOCH", "3", "--seed", "-1", "TRAIN.PRINT_FREQ", "-5"])
    assert (args.output_dir, args.seed, args.trainer) == ("out", -1, "CoOp")
    assert args.opts == ["OPTIM.LR", "0.01", "OPTIM.MAX_EPOCH", "3", "TRAIN.PRINT_FREQ", "-5"]
    assert cli.build_parser().parse_args(["train", "--", "OPTIM.LR", "0.1"]).opts == ["OPTIM.LR", "0.1"]
    demo = cli.build_parser().parse_args(["demo", "TRAINER.PD.NFE", "3", "--seeds", "1", "2"])
    assert (demo.opts, demo.seeds) == (["TRAINER.PD.NFE", "3"], [1, 2])


def test_every_command_speaks_one_language():
    """The same output flag and root flag, lists of values one after another, and KEY VALUE opts after
    the flags in train, diagnose, demo and predict: a list ends at the first config key."""
    parse = cli.build_parser().parse_args
    for argv in (["train", "--source-domains", "a", "b", "OPTIM.LR", "0.1", "--seed", "2"],
                 ["diagnose", "--model-dir", "RUN", "--target-domains", "a", "b", "OPTIM.LR", "0.1", "--seed", "2"],
                 ["demo", "--methods", "CoOp", "CoOpPD", "OPTIM.LR", "0.1", "--seeds", "2"],
                 ["predict", "--model-dir", "RUN", "a.png", "b/", "OPTIM.LR", "0.1", "--top-k", "2"]):
        args = parse(argv)
        assert args.opts == ["OPTIM.LR", "0.1"], argv
        lists = {"train": args.__dict__.get("source_domains"), "diagnose": args.__dict__.get("target_domains"),
                 "demo": args.__dict__.get("methods"), "predict": args.__dict__.get("images")}[argv[0]]
        assert len(lists) == 2, argv
    predict = parse(["predict", "--model-dir", "RUN", "a.png", "--host", "b.png", "TRAINER.PD.NFE", "10"])
    assert (predict.images, predict.host, predict.opts) == (["a.png", "b.png"], True, ["TRAINER.PD.NFE", "10"])
    for command in (["train"], ["demo"], ["sweep", "table1"], ["table", "table1"]):
        assert parse(command + ["--output-dir", "OUT"]).output_dir == "OUT", command
    for command in (["train"], ["demo"], ["sweep", "table1"]):
        assert parse(command + ["--root", "DATA"]).root == "DATA", command
    sweep = parse(["sweep", "table1", "--gpus", "0", "1", "--seeds", "1", "2", "--methods", "VPT", "VPTPD"])
    assert (sweep.gpus, sweep.seeds, sweep.methods) == (["0", "1"], [1, 2], ["VPT", "VPTPD"])
    with pytest.raises(SystemExit):
        parse(["sweep", "table1", "--seeds", "1,2"])  # one separator: the space


def test_train_help_lists_the_trainers(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    trainers = text.split("trainers (--trainer", 1)[1]
    assert all(f" {name}," in trainers or trainers.rstrip().endswith(name)
               for name in ("CoOp", "CoCoOpPD", "MaPLePD", "ZeroshotCLIP"))


def test_a_truncated_clip_file_is_refused_before_any_data_is_read(tmp_path, capsys):
    weights = tmp_path / "ViT-B-16.pt"
    save_clip(build_tiny_clip(), weights)
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"<html>404 Not Found</html>")
    for path in (weights, garbage):
        data = tmp_path / f"data_{path.stem}"
        code = cli.main(["train", "--root", str(data), "--trainer", "CoOp", "--dataset-config-file", TOY_WORLD,
                         "--output-dir", str(tmp_path / "run"), "MODEL.BACKBONE.NAME", "ViT-B/16",
                         "MODEL.BACKBONE.PATH", str(path)])
        err = capsys.readouterr().err
        assert code == 1 and f"MODEL.BACKBONE.PATH {path}: not a CLIP checkpoint" in err
        assert "weights_only" not in err and "Traceback" not in err
        assert not data.exists()  # nothing was rendered


def test_eval_only_without_an_epoch_names_the_saved_ones(tmp_path):
    from prompt_diffusion.engine.checkpoint import missing_model_message

    (tmp_path / "prompt_learner").mkdir()
    for epoch in (10, 2, 5):
        (tmp_path / "prompt_learner" / f"model.pth.tar-{epoch}").write_bytes(b"")
    message = missing_model_message(str(tmp_path / "prompt_learner" / "model-best.pth.tar"))
    assert "no model-best.pth.tar" in message and "--load-epoch" in message and "epoch(s) 2, 5, 10" in message
    assert "epoch(s) 2, 5, 10" in missing_model_message(str(tmp_path / "prompt_learner" / "model.pth.tar-3"))
    assert "does not exist" in missing_model_message(str(tmp_path / "nope" / "model-best.pth.tar"))


def test_data_check_with_every_dataset_absent_fails(tmp_path, capsys):
    assert cli.main(["data", "check", "--root", str(tmp_path)]) == 1
    assert "No dataset found under" in capsys.readouterr().out


def test_log_is_written_as_it_goes_without_bar_redraws(tmp_path):
    logger = setup_logger(str(tmp_path))
    try:
        print("epoch [1/2] batch [1/8]")
        assert (tmp_path / "log.txt").read_text() == "epoch [1/2] batch [1/8]\n"  # before the run ends
    finally:
        logger.close()
    assert last_redraw("\rbar 10%\rbar 100%\ndone\n") == "bar 100%\ndone\n"
    assert last_redraw("\rbar 10%") == "" and last_redraw("a\r\nb\n") == "a\nb\n"


def test_workers_are_capped_at_the_available_cores():
    from prompt_diffusion.engine import get_cfg_default
    from prompt_diffusion.engine.utils import available_cores, cap_workers

    cfg = get_cfg_default()
    cfg.DATALOADER.NUM_WORKERS = available_cores() + 6
    line = cap_workers(cfg)
    assert cfg.DATALOADER.NUM_WORKERS == available_cores() and f"{available_cores() + 6} -> " in line
    assert cap_workers(cfg) == ""


def test_ctrl_c_says_the_same_command_resumes(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "prompt_diffusion", "train", "--root", str(shared_toy_root()), "--seed", "1",
               "--trainer", "CoOp", "--dataset-config-file", TOY_WORLD, "--config-file", COOP,
               "--output-dir", str(out), *TOY_OPTS, "OPTIM.MAX_EPOCH", "200", "TRAIN.PRINT_FREQ", "1",
               "DATASET.SUBSAMPLE_CLASSES", "base"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    log = out / "log.txt"
    deadline = time.time() + 240
    while time.time() < deadline and not (log.exists() and "epoch [2/200]" in log.read_text()):
        assert child.poll() is None, f"the run ended before it was interrupted: {child.communicate()[1][-2000:]}"
        time.sleep(0.5)  # the log is read while the run goes: it is written line by line
    assert "epoch [2/200]" in log.read_text(), "the run did not reach its second epoch within 240 s"
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, f"exit {child.returncode}; stderr: {err[-2000:]}"
    assert "prompt-diffusion train: interrupted. Run the same command again to resume" in err
    assert "Traceback" not in err
    assert "Interrupted (Ctrl-C)" in log.read_text()
    assert "\r" not in log.read_text()


def test_pkg_resources_deprecation_is_silenced_at_the_import(tmp_path):
    fake = tmp_path / "pkg_resources.py"  # what setuptools >= 81 does when clip imports pkg_resources
    fake.write_text("import warnings\nwarnings.warn('pkg_resources is deprecated as an API.', UserWarning, "
                    "stacklevel=2)\nwarnings.warn('another pkg_resources warning', UserWarning, stacklevel=2)\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-W", "always", "-c", "import prompt_diffusion"], env=env,
                          capture_output=True, text=True, check=True)
    assert "pkg_resources is deprecated" not in done.stderr
    assert "another pkg_resources warning" in done.stderr  # only that one warning is silenced


def test_entry_point_plugins_are_imported(tmp_path, monkeypatch):
    from prompt_diffusion.engine import TRAINER_REGISTRY
    from prompt_diffusion.plugins import ENTRY_POINT_GROUP, load_plugins

    (tmp_path / "pd_test_plugin.py").write_text(
        "from prompt_diffusion.engine import TRAINER_REGISTRY\n"
        "from prompt_diffusion.trainers.coop import CoOp\n"
        "@TRAINER_REGISTRY.register()\nclass EntryPointCoOp(CoOp):\n    pass\n")
    info = tmp_path / "pd_test_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pd-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nmine = pd_test_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "pd_test_plugin" in load_plugins()
    assert "EntryPointCoOp" in TRAINER_REGISTRY.registered_names()


def test_every_command_has_an_example_and_its_defaults_in_its_help(capsys):
    for command in (["train"], ["diagnose"], ["data", "check"], ["sweep"], ["table"], ["demo"]):
        with pytest.raises(SystemExit):
            cli.main(command + ["--help"])
        text = capsys.readouterr().out
        assert "Example" in text and "prompt-diffusion " + command[0] in text.split("Example", 1)[1], command
        assert "``" not in text, command
        if command not in (["train"], ["data", "check"]):  # train's defaults come from the config files
            assert "(default:" in text, command


def test_an_import_that_fails_names_itself(tmp_path, capsys):
    assert cli.main(["train", "--import", str(tmp_path / "missing.py")]) == 1
    assert f"--import {tmp_path / 'missing.py'}: no such file" in capsys.readouterr().err
    assert cli.main(["train", "--import", "no_such_module_pd_test"]) == 1
    assert "--import no_such_module_pd_test: no module named 'no_such_module_pd_test'" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed interrupt
def test_a_ctrl_c_swallowed_by_a_finaliser_is_raised_at_the_next_batch():
    """SIGINT arriving while a ``__del__`` runs is printed as "Exception ignored" and lost; within
    ``sigint_remembered`` the engine's loops raise it again (``raise_if_interrupted``)."""
    from prompt_diffusion.engine.interrupt import raise_if_interrupted, sigint_remembered

    class Finaliser:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs here, inside the finaliser

    with sigint_remembered():
        Finaliser()  # collected at once: its KeyboardInterrupt is swallowed
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
    raise_if_interrupted()  # outside the block nothing is remembered


def test_a_ctrl_c_during_a_checkpoint_write_stops_the_run_after_the_write(tmp_path):
    """SIGINT arriving inside ``torch.save`` would be raised in its zip writer, whose cleanup replaces
    the KeyboardInterrupt by its own RuntimeError (the run crashes instead of stopping); a checkpoint's
    write holds it and raises it once the file is written and in place."""
    import torch

    from prompt_diffusion.engine.checkpoint import atomic_torch_save
    from prompt_diffusion.engine.interrupt import sigint_remembered

    class CtrlCWhilePickled:
        def __reduce__(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs here, inside torch.save
            return (dict, ())

    path = tmp_path / "model.pth.tar-1"
    with sigint_remembered():
        with pytest.raises(KeyboardInterrupt):
            atomic_torch_save({"weights": torch.ones(3), "state": CtrlCWhilePickled()}, str(path))
    saved = torch.load(path, weights_only=False)  # the file this test wrote (its stand-in pickles `dict`)
    assert torch.equal(saved["weights"], torch.ones(3)) and saved["state"] == {}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
