"""A shortened ``prompt-diffusion demo`` runs end to end and writes its table."""
import csv

from prompt_diffusion import cli
from prompt_diffusion.demo import DemoRow, run_dirs, DemoSettings, table_markdown
from prompt_diffusion.results import PairedDifference, read_run

from helpers import shared_toy_root


def test_short_demo_writes_the_table(tmp_path, capsys):
    out = tmp_path / "demo"
    code = cli.main(["demo", "--out", str(out), "--data-root", str(shared_toy_root()), "--shots", "1", "--epochs", "1", "--test-per-class", "1",
                     "--threads", "1", "TRAINER.PD.OVERFIT.ITERS", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| CoCoOpPD |" in printed and "| ZeroshotCLIP |" in printed
    with open(out / "demo_table.csv") as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"ZeroshotCLIP", "CoCoOp", "CoCoOpPD"}
    for row in rows.values():
        assert 0.0 <= float(row["base_mean"]) <= 100.0 and 0.0 <= float(row["new_mean"]) <= 100.0
    assert rows["CoCoOpPD"]["host"] == "CoCoOp" and rows["CoCoOpPD"]["delta_hm"] != ""
    assert float(rows["CoCoOpPD"]["delta_base_se"]) >= 0.0 and float(rows["CoCoOpPD"]["delta_new_se"]) >= 0.0
    assert "standard error of the paired per-image difference" in printed
    # the runs are normal run folders: the training log has its base result, the model its checkpoint
    settings = DemoSettings(out_dir=out, shots=1, epochs=1)
    train_dir, test_dir = run_dirs(settings, "CoCoOpPD", 1)
    assert read_run(train_dir).status == "complete" and read_run(test_dir, training=False).status == "complete"
    assert list(train_dir.glob("prompt_learner/model.pth.tar-1"))
    assert (out / "demo_table.md").read_text().startswith("Base-to-new on ToyWorld")


def test_table_shows_the_difference_pd_makes():
    rows = [DemoRow("CoCoOp", [60.0, 62.0], [80.0, 82.0]), DemoRow("CoCoOpPD", [63.0, 65.0], [79.0, 81.0], "CoCoOp")]
    text = table_markdown(rows)
    assert "| CoCoOp | 61.00 ± 1.00 | 81.00 ± 1.00 |" in text  # population std, as `prompt-diffusion table`
    assert "| +3.00 | -1.00 |" in text  # Δ Base, Δ New of CoCoOpPD over CoCoOp
    rows[1].paired = {"base": PairedDifference(3.0, 0.5), "new": PairedDifference(-1.0, 1.5)}
    text = table_markdown(rows)
    assert "| +3.00 ± 0.50 | -1.00 ± 1.50 (within noise) |" in text
