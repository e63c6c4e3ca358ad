"""The commands README.md and docs/ print are run, at tiny scale, so a change that breaks one fails here.

Every ``prompt-diffusion`` line of their code blocks parses with today's command line. The README's
walkthrough on one's own images runs as printed (its shell block, in a fresh folder). The others run
with their placeholders filled (``$DATA``: the generated CoOp-layout datasets, ``data``: the toy
world, ``RUN``: the walkthrough's run) and tiny opts appended; a ``sweep`` of a shipped spec is
run by tests/test_shipped_specs.py (every toy spec end to end, every paper spec's first chain),
``--slurm`` by tests/test_sweep.py (submitit's local executor), ``demo`` by tests/test_toy_demo.py.
"""
import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

from helpers import shared_toy_root
from prompt_diffusion import cli
from prompt_diffusion.commands import train
from prompt_diffusion.results import read_run
from test_shipped_specs import PAPER_SPECS, TOY_SPECS, benchmark_root  # noqa: F401  (a fixture)

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "examples" / "README.md"]
# appended to a documented command that trains or evaluates: the tiny scale (later opts win)
TINY = ["MODEL.BACKBONE.NAME", "toy", "INPUT.SIZE", "(32, 32)", "OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "1",
        "DATASET.TOY.TEST_PER_CLASS", "1", "DATALOADER.NUM_WORKERS", "0", "TRAINER.PD.GENERATOR_SIZE.LAYERS", "1",
        "TRAINER.PD.GENERATOR_SIZE.WIDTH", "32", "TRAINER.PD.GENERATOR_SIZE.HEADS", "2", "TRAINER.PD.AMED.DISTILL_ITERS", "2"]


def code_blocks(path: Path) -> List[str]:
    """The fenced code blocks of a Markdown file, continuation lines joined."""
    return [re.sub(r"\\\n\s*", " ", block) for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), re.S)]


def block_commands(block: str) -> List[str]:
    """The ``prompt-diffusion`` and ``python benchmarks/...`` lines of a code block, without their
    comment and leading environment settings; a ``for VAR in A B; do ... done`` loop gives its body
    once per value."""
    block = re.sub(r"for (\w+) in ([^;\n]+); do\n(.*?)\ndone",
                   lambda loop: "\n".join(loop.group(3).replace(f"${loop.group(1)}", value)
                                          for value in loop.group(2).split()), block, flags=re.S)
    found = []
    for line in block.splitlines():
        line = re.sub(r"\s+#.*$", "", line.strip().removeprefix("$ "))
        line = re.sub(r"^(\w+=\S+ )+", "", line)
        if line.startswith(("prompt-diffusion ", "python benchmarks/")):
            found.append(line)
    return found


def documented_commands() -> List[Tuple[str, str]]:
    """``(document, command)`` for every command of every code block of the documents."""
    return [(path.relative_to(REPO).as_posix(), command) for path in DOCUMENTS for block in code_blocks(path)
            for command in block_commands(block)]


def walkthrough_block() -> str:
    """The README's shell block that makes ``my_images`` and trains, predicts on it."""
    return next(block for block in code_blocks(REPO / "README.md") if "python - <<'PY'" in block)


def test_every_documented_command_parses():
    commands = documented_commands()
    assert len(commands) > 30
    parser = cli.build_parser()
    for document, command in commands:
        if command.startswith("prompt-diffusion "):
            parser.parse_args(shlex.split(command.replace("$DATA", "/data"))[1:])  # exits on a flag it lacks
        sweep = re.match(r"prompt-diffusion sweep (\w+) --root ", command)
        if sweep:  # the shipped spec it sweeps runs in tests/test_shipped_specs.py
            assert sweep.group(1) in TOY_SPECS + PAPER_SPECS, (document, command)


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory) -> Path:
    """The README's walkthrough, run as printed in a fresh folder (the installed commands on PATH)."""
    folder = tmp_path_factory.mktemp("walkthrough")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "-e", "-c", walkthrough_block()], cwd=folder, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "held_out.png  blue star (" in done.stdout and "  host:       blue star (" in done.stdout
    assert read_run(folder / "runs" / "my_cocooppd").status == "complete"
    return folder


def test_the_run_folder_commands_of_own_data(walkthrough, monkeypatch, capsys):
    """docs/own_data.md's commands on the walkthrough's run (RUN), its folder (OTHER), its images."""
    monkeypatch.chdir(walkthrough)
    fill = {"RUN": "runs/my_cocooppd", "OTHER": "my_images", "photo.jpg": "held_out.png", "holiday/": "my_images/test"}
    commands = [command for document, command in documented_commands() if document == "docs/own_data.md"]
    assert len(commands) == 4
    for command in commands:
        argv = [fill.get(part, part) for part in shlex.split(command)[1:]]
        assert cli.main(argv) == 0, command
    assert read_run(walkthrough / "runs" / "my_cocooppd" / "eval" / "ImageFolder_all", training=False).status == "complete"


def runs_here(document: str, command: str) -> bool:
    """Whether this module runs ``command`` below; the others run elsewhere (the module's docstring)."""
    words = shlex.split(command)
    if words[:2] == ["prompt-diffusion", "sweep"] and "--dry-run" not in words and "--list" not in words:
        return False  # tests/test_shipped_specs.py and tests/test_sweep.py
    if document == "docs/own_data.md" or command in block_commands(walkthrough_block()):
        return False  # the walkthrough's, above
    if words[:2] == ["prompt-diffusion", "demo"] or words[:2] == ["python", "benchmarks/gpu_check.py"]:
        return False  # tests/test_toy_demo.py; a GPU's (its --dry-run: tests/test_gpu_check.py)
    return True


def run_documented(command: str, folder: Path, fill: dict) -> int:
    """``command`` run in ``folder`` with its placeholders filled; one that trains or evaluates at tiny scale."""
    words = shlex.split(command)
    argv = [fill.get(part, part) if part.startswith("$") or previous == "--root" else part
            for previous, part in zip(words, words[1:])]
    if words[1] in ("train", "diagnose") or words[1].endswith("target_ladder.py"):
        argv += TINY
    if command.startswith("python "):  # a script of the repository, run from the folder the command's paths are in
        argv = [str(REPO / argv[0]), *argv[1:]]
        return subprocess.run([sys.executable, *argv], cwd=folder, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
    here = os.getcwd()
    os.chdir(folder)
    try:
        return cli.main(argv)
    finally:
        os.chdir(here)


@pytest.fixture(scope="module")
def prepared(benchmark_root, tmp_path_factory) -> Tuple[Path, dict]:
    """A folder with the README's my_trainers.py, and the models docs/toy_mixed.md's ladders load
    (each trained tiny by ``ladder_training``); the placeholders' values."""
    folder = tmp_path_factory.mktemp("documented")
    (folder / "my_trainers.py").write_text(next(block for block in code_blocks(REPO / "README.md")
                                                if block.startswith("# my_trainers.py")))
    fill = {"$DATA": str(benchmark_root), "data": str(shared_toy_root())}
    ladders = [command for _, command in documented_commands() if "target_ladder.py --max-images" in command]
    assert len(ladders) == 2  # the CoCoOp route's and the template route's
    for ladder in ladders:
        assert cli.main(ladder_training(ladder, fill["data"], folder)) == 0
    return folder, fill


def ladder_training(ladder: str, data: str, folder: Path) -> List[str]:
    """The ``train`` command line of the model a documented ``target_ladder.py`` command loads, tiny:
    its trainer, dataset and config files and opts, on the base classes, for ``--load-epoch`` epochs,
    into ``folder / --model-dir``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--setting", action="append")
    parser.add_argument("--max-images")
    train.add_arguments(parser)
    args = parser.parse_args(shlex.split(ladder)[2:])
    opts = [word if word != "new" else "base" for word in args.opts]  # DATASET.SUBSAMPLE_CLASSES
    return ["train", "--root", data, "--seed", str(args.seed), "--trainer", args.trainer,
            "--dataset-config-file", args.dataset_config_file, *sum((["--config-file", f] for f in args.config_file), []),
            "--output-dir", str(folder / args.model_dir), *opts, *TINY, "OPTIM.MAX_EPOCH", str(args.load_epoch)]


def documented_here():
    """The commands this module runs, in the documents' order (a command may use an earlier one's run)."""
    # the DTD fixture's new half has one class: the overfitting moves nothing (a one-class CE), and
    # the generator's fit divides by the zero residual (after_training.generator_fit)
    return [pytest.param(document, command, id=command[:80])
            for document, command in documented_commands() if runs_here(document, command)]


@pytest.mark.parametrize("document, command", documented_here())
def test_documented_command_runs(document, command, prepared, capsys):
    """The README's own-trainer, DTD and diagnose commands, docs/toy_mixed.md's ladder of targets, the
    dry runs, lists, tables and data checks, each as printed with its placeholders filled."""
    folder, fill = prepared
    command = re.sub(r"--max-images \d+", "--max-images 8", command)  # a ladder, at tiny scale
    code = run_documented(command, folder, fill)
    expected = (0, 1) if shlex.split(command)[1:3] == ["data", "check"] else (0,)  # fixtures: smaller than CoOp's
    assert code in expected, (document, command, capsys.readouterr().err[-2000:])
