"""Engine parity: the toy probe of ``test_engine.py`` under real Dassl and under the built-in
engine gives identical per-batch losses, learning rates, weights and accuracy.

Runs only where Dassl.pytorch is importable (CI skips it). Each engine runs in its own process,
since ``PD_ENGINE`` is read when ``prompt_diffusion.engine`` is imported.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.dassl,
    pytest.mark.skipif(importlib.util.find_spec("dassl") is None, reason="Dassl.pytorch is not installed"),
]

HERE = Path(__file__).resolve().parent


def _run_toy(engine_name: str, data_root: Path, tmp_path: Path, script: str = "test_engine.py") -> dict:
    result_path = tmp_path / f"{engine_name}_{script}.json"
    env = dict(os.environ, PD_ENGINE=engine_name, OMP_NUM_THREADS="1")
    subprocess.run(
        [sys.executable, str(HERE / script), str(result_path), str(data_root),
         str(tmp_path / f"out_{engine_name}_{script}")],
        env=env, check=True, cwd=str(HERE.parent), timeout=300,
    )
    return json.loads(result_path.read_text())


def test_dassl_and_builtin_engines_give_identical_runs(tmp_path):
    sys.path.insert(0, str(HERE))
    from test_engine import write_toy_data

    data_root = write_toy_data(tmp_path / "toy_colors")
    with_dassl = _run_toy("dassl", data_root, tmp_path)
    builtin = _run_toy("builtin", data_root, tmp_path)
    assert (with_dassl["engine"], builtin["engine"]) == ("dassl", "builtin")
    assert len(builtin["history"]) == 6
    assert with_dassl["history"] == builtin["history"]  # (epoch, batch, loss, lr), bit for bit
    assert with_dassl["weights"] == builtin["weights"]
    assert with_dassl["accuracy"] == builtin["accuracy"]


def test_fixes_reach_a_fork_trainer_imported_before_the_package(tmp_path):
    """Upstream train.py imports its trainers (binding ``build_lr_scheduler``, ``load_checkpoint``,
    ``compute_accuracy`` by name) before the package: the warmup scheduler must not raise Dassl's
    ``verbose`` TypeError, and the run must equal the built-in engine's, bit for bit."""
    sys.path.insert(0, str(HERE))
    from test_engine import write_toy_data

    data_root = write_toy_data(tmp_path / "toy_colors")
    fork = _run_toy("dassl", data_root, tmp_path, script="dassl_fork_trainer.py")
    builtin = _run_toy("builtin", data_root, tmp_path)
    assert fork["engine"] == "dassl"
    assert len(fork["history"]) == 6 and fork["history"] == builtin["history"]
    assert fork["accuracy"] == builtin["accuracy"]
    assert fork["reloaded"]  # the fork's load_model, through the bound load_checkpoint
    from prompt_diffusion.engine import dassl_bridge

    for fix in dassl_bridge.FIXES:  # describe() lists every fix
        assert fix in fork["description"]


def test_dassl_randaugment_runs_every_operation_on_current_numpy():
    """Dassl's SolarizeAdd used the removed ``np.int``; the bridge replaces it inside Dassl."""
    import numpy as np
    from PIL import Image

    from prompt_diffusion.engine import dassl_bridge

    dassl_bridge.install_fixes()
    from dassl.data.transforms import randaugment

    image = Image.fromarray(np.full((8, 8, 3), 100, dtype=np.uint8))
    for operation, low, high in randaugment.randaugment_list():
        operation(image, high)  # every operation at its strongest setting
    solarized = np.asarray(randaugment.SolarizeAdd(image, addition=50, threshold=128))
    assert (solarized == 255 - 150).all()  # 100 + 50 = 150 >= 128: inverted
