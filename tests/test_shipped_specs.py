"""Every shipped experiment spec runs: each toy spec end to end at tiny scale on a fresh output folder
(every method, ``weights:`` rows and swept values included, then ``table``), and each paper spec's
first chain on the generated CoOp-layout fixture datasets, after its dry run. So a change that
breaks a spec fails here, not on a user's machine.

Tiny scale: the shipped toy CLIP on 32x32 images, one seed, one shot, one epoch, one test image per
class, one shifted domain, a one-layer generator; the spec's structure (methods, configs, opts,
hosts, variants, domains, by-domain columns) is the shipped one.
"""
from pathlib import Path
from typing import Any, Dict

import pytest
import yaml

from helpers import shared_toy_root
from prompt_diffusion import cli
from prompt_diffusion.backbones import build_tiny_clip, save_clip
from prompt_diffusion.data import BENCHMARK_DATASETS
from prompt_diffusion.sweep import expand, load_spec, table_for
from prompt_diffusion.sweep.spec import EXPERIMENTS_DIR
from test_datasets import build_tree

TOY_SPECS = ["toy_benchmark", "toy_cost", "toy_figure4", "toy_ladder", "toy_mixed", "toy_table4", "toy_table7"]
PAPER_SPECS = ["figure4", "figure5", "table1", "table2", "table3", "table4", "table5", "table6", "table7"]
# on top of every run's opts (a method's own opts included): the tiny scale
TINY: Dict[str, Any] = {
    "MODEL.BACKBONE.NAME": "toy", "INPUT.SIZE": "(32, 32)", "INPUT.TRANSFORMS": "['random_flip', 'normalize']",
    "OPTIM.MAX_EPOCH": 1, "OPTIM.WARMUP_EPOCH": 0, "DATASET.NUM_SHOTS": 1, "DATALOADER.NUM_WORKERS": 0, "DATALOADER.TRAIN_X.BATCH_SIZE": 4,
    "DATALOADER.TEST.BATCH_SIZE": 64, "DATASET.TOY.TEST_PER_CLASS": 1, "TRAINER.PD.GENERATOR_SIZE.LAYERS": 1,
    "TRAINER.PD.GENERATOR_SIZE.WIDTH": 32, "TRAINER.PD.GENERATOR_SIZE.HEADS": 2, "TRAINER.PD.LOSS_DRAWS": 1,
    "TRAINER.PD.AMED.DISTILL_ITERS": 2, "TRAINER.PD.DIAGNOSE_IMAGES": 4,
}


def tiny_spec(name: str, folder: Path, first_value_only: bool = False, **opts: Any) -> Path:
    """The shipped spec ``name`` at tiny scale, written to ``folder/<name>.yaml``: its first seed, one
    shot, its first shifted domain, TINY and ``opts`` on every method; ``first_value_only``: the first
    value of its swept setting (a paper spec's first chain)."""
    data = yaml.safe_load((EXPERIMENTS_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
    data.update(seeds=data["seeds"][:1], shots=1)
    if data.get("domains"):
        data["domains"] = data["domains"][:1]
    if first_value_only and data.get("variants"):
        data["variants"]["values"] = data["variants"]["values"][:1]
    tiny = {**TINY, **opts}
    data["opts"] = {**data.get("opts", {}), **tiny}
    for method, entry in data["methods"].items():
        entry = {"config": entry} if isinstance(entry, str) else entry
        entry["opts"] = {**entry.get("opts", {}), **tiny}
        data["methods"][method] = entry
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def sweep_and_table(spec: Path, root: Path, out: Path) -> str:
    """``sweep`` the spec into ``out`` (two runs at a time), every run finishing; returns what ``table`` prints."""
    assert cli.main(["sweep", str(spec), "--root", str(root), "--output-dir", str(out), "--jobs", "2"]) == 0
    return table_text(spec, out)


def table_text(spec: Path, out: Path, *selection: str) -> str:
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["table", str(spec), "--output-dir", str(out), *selection]) == 0
    return printed.getvalue()


@pytest.mark.parametrize("name", TOY_SPECS)
def test_toy_spec_runs_end_to_end(name, tmp_path):
    spec_path = tiny_spec(name, tmp_path)
    out = tmp_path / "out"
    text = sweep_and_table(spec_path, shared_toy_root(), out)
    spec = load_spec(str(spec_path))
    runs = [run for chain in expand(spec, out) for run in chain.runs]
    assert runs and all(run.status() == "complete" for run in runs)
    assert "Missing or incomplete" not in text
    table = table_for(spec, out, with_paper=False)  # what table printed: every row, weights rows included
    assert {row.key.method for row in table.rows} == {method.name for method in spec.methods}
    assert [row.problems for row in table.rows if row.problems] == []


@pytest.fixture(scope="module")
def benchmark_root(tmp_path_factory) -> Path:
    """The 15 CoOp datasets as tiny generated trees in their exact layouts (test_datasets.build_tree),
    and a tiny CLIP with ViT-B/16's 12 layers (the paper configs prompt up to 12), ``clip.pt`` beside them."""
    root = tmp_path_factory.mktemp("coop_fixtures")
    for name in BENCHMARK_DATASETS:
        build_tree(root, name)
    save_clip(build_tiny_clip(vision_layers=12, transformer_layers=12), root / "clip.pt")
    return root


@pytest.mark.parametrize("name", PAPER_SPECS)
def test_paper_spec_dry_runs_and_runs_its_first_chain(name, benchmark_root, tmp_path):
    """The dry run of the whole spec, then its first chain (a training run and the evaluations of its
    model) run as the sweep runs chains (``run_chain``: the same commands; the sweep itself would
    first refuse datasets smaller than CoOp's), then ``table`` reads it."""
    from prompt_diffusion.sweep.run import run_chain

    assert cli.main(["sweep", name, "--dry-run", "--output-dir", str(tmp_path / "dry")]) == 0
    spec_path = tiny_spec(name, tmp_path, first_value_only=True,
                          **{"MODEL.BACKBONE.NAME": "ViT-B/16", "MODEL.BACKBONE.PATH": str(benchmark_root / "clip.pt")})
    first = expand(load_spec(str(spec_path)), tmp_path / "out")[0]
    assert run_chain(first, str(benchmark_root)) == []
    assert all(run.status() == "complete" for run in first.runs)
    trained = first.runs[0]
    text = table_text(spec_path, tmp_path / "out", "--methods", trained.method, "--seeds", str(trained.seed))
    row = next(row for row in table_for(load_spec(str(spec_path)), tmp_path / "out", with_paper=False).rows
               if row.key == trained.row)
    assert [problem for problem in row.problems if trained.dataset in problem] == []
    assert str(trained.row) in text
