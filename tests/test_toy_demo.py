"""A shortened ``prompt-diffusion demo`` runs end to end and writes its table; the demo is a spec."""
import ast
import csv
from pathlib import Path

import pytest

import prompt_diffusion.demo
from prompt_diffusion import cli
from prompt_diffusion.demo import DemoSettings, run_dirs, write_spec
from prompt_diffusion.results import read_run, to_markdown
from prompt_diffusion.sweep import expand, load_spec, table_for

from helpers import shared_toy_root, write_result_log


def test_short_demo_writes_the_table(tmp_path, capsys):
    """The demo with every method it offers, at tiny scale, on a fresh output folder."""
    out = tmp_path / "demo"
    code = cli.main(["demo", "--output-dir", str(out), "--root", str(shared_toy_root()), "--shots", "1", "--epochs", "1",
                     "--test-per-class", "1", "--threads", "1", "--methods", *prompt_diffusion.demo.DEMO_METHODS,
                     "TRAINER.PD.OVERFIT.ITERS", "1", "TRAINER.PD.GENERATOR_SIZE.WIDTH", "32"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| CoCoOpPD |" in printed and "| ZeroshotCLIP |" in printed
    with open(out / "demo_table.csv") as handle:  # the CSV `prompt-diffusion table --csv` writes
        rows = {(row["method"], row["metric"]): row for row in csv.DictReader(handle)
                if row["column"] == "toy_world_mixed"}
    methods = {*prompt_diffusion.demo.REFERENCE_ROWS, *prompt_diffusion.demo.DEMO_METHODS}
    assert {method for method, _ in rows} == methods and len(methods) == 9
    assert rows["ZS-weighted", "hm"]["host"] == "CoCoOpPD"  # the best baseline, paired to the PD row
    for method in methods:  # far above chance (1/32), H of the two
        base, new = (float(rows[method, metric]["mean"]) for metric in ("base", "new"))
        assert min(base, new) > 20.0 and float(rows[method, "hm"]["mean"]) == pytest.approx(2 * base * new / (base + new), abs=0.01)
    assert rows["CoCoOpPD", "hm"]["host"] == "CoCoOp" and rows["CoCoOpPD", "hm"]["host_diff"] != ""
    assert float(rows["CoCoOpPD", "base"]["host_diff_se"]) >= 0.0 and float(rows["CoCoOpPD", "new"]["host_diff_se"]) >= 0.0
    assert "± its standard error over the test images" in printed  # the paired per-image difference
    assert "### sketch" in printed  # every column split by the images' style
    verdict = next(line for line in printed.splitlines() if line.startswith("CoCoOpPD vs CoCoOp, H on ToyWorldMixed: "))
    assert "(paired over the same test images, 1 seed)" in verdict and verdict.endswith(".")
    # the runs are normal run folders: the training log has its base result, the model its checkpoint
    settings = DemoSettings(out_dir=out, shots=1, epochs=1)
    train_dir, test_dir = run_dirs(settings, "CoCoOpPD", 1)
    assert read_run(train_dir).status == "complete" and read_run(test_dir, training=False).status == "complete"
    assert list(train_dir.glob("prompt_learner/model.pth.tar-1"))
    assert (out / "demo_table.md").read_text().startswith("## Demo: base-to-new on ToyWorld")
    assert (out / "demo_table.png").stat().st_size > 0
    # the same table is what `prompt-diffusion table <out>/demo.yaml` prints
    assert cli.main(["table", str(out / "demo.yaml"), "--output-dir", str(out)]) == 0
    assert (out / "demo_table.md").read_text().strip() in capsys.readouterr().out


def test_demo_is_a_spec_with_the_command_lines_changes(tmp_path):
    settings = DemoSettings(out_dir=tmp_path, methods=("CoOp", "CoOpPD"), seeds=(1, 2), shots=2, epochs=3,
                            test_per_class=4, extra_opts=["TRAINER.PD.NFE", "3"])
    spec = load_spec(str(write_spec(settings)))
    assert [m.name for m in spec.methods] == ["ZeroshotCLIP", "StyleOracle", "ZS-weighted", "CoOp", "CoOpPD"]
    assert (spec.seeds, spec.shots) == ([1, 2], 2)
    opts = dict(zip(spec.opts[::2], spec.opts[1::2]))
    assert (opts["OPTIM.MAX_EPOCH"], opts["DATASET.TOY.TEST_PER_CLASS"], opts["TRAINER.PD.NFE"]) == ("3", "4", "3")
    zero_shot = [run for chain in expand(spec, tmp_path) for run in chain.runs if run.method == "ZeroshotCLIP"]
    assert [run.phase for run in zero_shot] == ["test_base", "test_new"] * 2  # nothing to train
    assert all("--eval-only" in run.argv("/data") and run.model_dir is None for run in zero_shot)
    with pytest.raises(ValueError, match="not supported"):
        DemoSettings(out_dir=tmp_path, methods=("CoOpp",))


def test_demo_imports_nothing_from_the_commands():
    tree = ast.parse(Path(prompt_diffusion.demo.__file__).read_text())
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert imported and not [name for name in imported if name.startswith("prompt_diffusion.commands")]


def test_table_shows_the_difference_pd_makes(tmp_path):
    settings = DemoSettings(out_dir=tmp_path, methods=("CoCoOp", "CoCoOpPD"), seeds=(1, 2), zero_shot=False)
    spec = load_spec(str(write_spec(settings)))
    accuracy = {("CoCoOp", "train_base"): [60.0, 62.0], ("CoCoOp", "test_new"): [80.0, 82.0],
                ("CoCoOpPD", "train_base"): [63.0, 65.0], ("CoCoOpPD", "test_new"): [79.0, 81.0]}
    for chain in expand(spec, tmp_path):
        for run in chain.runs:
            write_result_log(run.output_dir, accuracy[run.method, run.phase][run.seed - 1], training=run.training)
    text = to_markdown(table_for(spec, tmp_path, with_paper=False))
    assert "| CoCoOp | 61.00 ± 1.00 | 81.00 ± 1.00 |" in text  # population std, as `prompt-diffusion table`
    assert "Mean ± population std over seeds." in text
    assert "| CoCoOpPD | 64.00 ± 1.00 | 80.00 ± 1.00 |" in text  # Δ Base +3, Δ New -1 over CoCoOp
