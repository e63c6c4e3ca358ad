"""The commands README.md and docs/ print are run, at tiny scale, so a change that breaks one fails here.

Every ``prompt-diffusion`` line of their code blocks parses with today's command line. The README's
walkthrough on one's own images runs as printed (its shell block, in a fresh folder). The others run
with their placeholders filled (``$DATA``: the generated CoOp-layout datasets, ``data``: the toy
world, ``RUN``: the walkthrough's run) and tiny opts appended; a ``sweep`` of a shipped spec is
run by tests/test_shipped_specs.py (every toy spec end to end, every paper spec's first chain),
``--slurm`` by tests/test_sweep.py (submitit's local executor), ``demo`` by tests/test_toy_demo.py.
"""
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


def documented_commands() -> List[Tuple[str, str]]:
    """``(document, command)`` for every ``prompt-diffusion`` or ``python benchmarks/...`` line of a
    code block, without its comment and leading environment settings."""
    found = []
    for path in DOCUMENTS:
        for block in code_blocks(path):
            for line in block.splitlines():
                line = re.sub(r"\s+#.*$", "", line.strip().removeprefix("$ "))
                line = re.sub(r"^(\w+=\S+ )+", "", line)
                if line.startswith(("prompt-diffusion ", "python benchmarks/")):
                    found.append((path.relative_to(REPO).as_posix(), line))
    return found


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


def run_documented(command: str, tmp: Path, fill: dict, tiny: bool) -> int:
    argv = [fill.get(part, part) for part in shlex.split(command)[1:]]
    if tiny:
        argv += TINY
    if command.startswith("python "):  # a script of the repository, run from the folder the command's paths are in
        return subprocess.run([sys.executable, str(REPO / argv[0]), *argv[1:]], cwd=tmp,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
    here = os.getcwd()
    os.chdir(tmp)
    try:
        return cli.main(argv)
    finally:
        os.chdir(here)


def test_the_other_documented_commands_run(benchmark_root, tmp_path, capsys):
    """The README's own-trainer, DTD and diagnose commands, docs/toy_mixed.md's ladder of targets, the
    dry runs, lists, tables and data checks, each as printed with its placeholders filled."""
    (tmp_path / "my_trainers.py").write_text(next(block for block in code_blocks(REPO / "README.md")
                                                  if block.startswith("# my_trainers.py")))
    fill = {"$DATA": str(benchmark_root), "data": str(shared_toy_root())}
    ran = []
    for document, command in documented_commands():
        words = shlex.split(command)
        if words[:2] == ["prompt-diffusion", "sweep"] and "--dry-run" not in words and "--list" not in words:
            continue  # tests/test_shipped_specs.py and tests/test_sweep.py
        if document == "docs/own_data.md" or "my_images" in command or words[:2] == ["prompt-diffusion", "demo"]:
            continue  # the walkthrough's, above; the demo: tests/test_toy_demo.py
        if words[:2] == ["python", "benchmarks/gpu_check.py"]:
            continue  # a GPU's; its --dry-run: tests/test_gpu_check.py; --cpu measures ViT-B/16 for minutes
        trains = words[1] in ("train", "diagnose") or words[1].endswith("target_ladder.py")
        if words[1].endswith("target_ladder.py"):  # its model: CoCoOp's seed-1 run of toy_mixed, trained tiny here
            model_dir = words[words.index("--model-dir") + 1]
            assert cli.main(["train", "--root", fill["data"], "--seed", "1", "--trainer", "CoCoOp",
                             "--dataset-config-file", "configs/datasets/toy_world_mixed.yaml",
                             "--config-file", "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml",
                             "--output-dir", str(tmp_path / model_dir), "DATASET.SUBSAMPLE_CLASSES", "base",
                             "TRAINER.COCOOP.PREC", "fp32", *TINY, "OPTIM.MAX_EPOCH", "2"]) == 0
            command = command.replace("--max-images 480", "--max-images 8")
        code = run_documented(command, tmp_path, fill, trains)
        expected = (0, 1) if words[1:3] == ["data", "check"] else (0,)  # the fixtures are smaller than CoOp's
        assert code in expected, (document, command, capsys.readouterr().err[-2000:])
        ran.append(command)
    assert any("--import my_trainers.py" in command for command in ran)
    assert any(command.startswith("prompt-diffusion diagnose --model-dir output/dtd") for command in ran)
    assert any("target_ladder.py" in command for command in ran)
