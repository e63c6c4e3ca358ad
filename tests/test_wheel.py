"""The built wheel, installed (not editable) into a folder of its own, trains and predicts from a
folder that is not the repository: configs/... paths are the package's, the data an image folder."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import make_image_folder

REPO = Path(__file__).resolve().parent.parent
PACKAGING = ("setup.py", "pyproject.toml", "README.md", "LICENSE", "prompt_diffusion", "trainers", "configs")


def test_the_installed_wheel_trains_and_predicts_outside_the_repository(tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    for name in PACKAGING:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, cwd=tmp_path)
    [wheel] = (tmp_path / "dist").glob("prompt_diffusion-*.whl")
    site = tmp_path / "site"
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)], check=True, cwd=tmp_path)

    work = tmp_path / "work"
    make_image_folder(work / "images" / "train", ["red_thing", "green_thing", "blue_thing"], per_class=4)
    make_image_folder(work / "images" / "test", ["red_thing", "green_thing", "blue_thing"], per_class=1, seed=2)
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "prompt_diffusion", *args], cwd=work, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    log = cli("train", "--root", "images", "--trainer", "CoOp", "--seed", "1", "--output-dir", "run",
              "--dataset-config-file", "configs/datasets/image_folder.yaml",
              "--config-file", "configs/profiles/toy_cpu.yaml", "OPTIM.MAX_EPOCH", "1")
    assert f"used from the installed package ({site / 'prompt_diffusion' / 'configs'})" in log
    assert "* accuracy:" in log
    table = cli("predict", "--model-dir", "run", "images/test/red_thing/0000.png", "--top-k", "1")
    assert table.startswith("images/test/red_thing/0000.png")
