"""Result tables from generated run dirs with known accuracies: means, stds, H, flags, paper diffs."""
import csv
import io
import os
import time

import numpy as np
import pytest

from helpers import write_result_log as write_log
from prompt_diffusion.results import (COMPLETE, INCOMPLETE, MISSING, Measurement, RowKey, build_table,
                                      group_run_dirs, harmonic_mean, load_paper_table, parse_log_text,
                                      plot_sweep, read_run, run_groups_markdown, to_csv, to_markdown)


def test_parse_training_log_takes_the_block_after_finish_training():
    text = ("epoch [1/1] batch [1/1] loss 1.0\n=> result\n* accuracy: 10.0%\nFinish training\n"
            "=> result\n* total: 1,000\n* correct: 813\n* accuracy: 81.3%\n* error: 18.7%\n* macro_f1: 80.3%\n"
            "=> per-class result\n* class: 0 (dog)\ttotal: 5\tcorrect: 4\tacc: 80.0%\n"
            "* average: 80.0%\n")
    metrics, why = parse_log_text(text, training=True)
    assert why == "" and metrics["accuracy"] == 81.3 and metrics["total"] == 1000.0
    assert metrics["correct"] == 813.0 and metrics["macro_f1"] == 80.3
    assert parse_log_text(text)[0]["accuracy"] == 81.3  # detected as a training log
    unfinished = "epoch [1/5] batch [1/1] loss 1.0\n=> result\n* accuracy: 10.0%\n"
    assert parse_log_text(unfinished) == (None, "training did not finish (no 'Finish training' line)")
    assert parse_log_text("=> result\n* total: 1,000\n", training=False)[0] is None


def test_read_run_statuses_and_resumed_logs(tmp_path):
    assert read_run(tmp_path / "nothing").status == MISSING
    (tmp_path / "empty").mkdir()
    assert read_run(tmp_path / "empty").reason == "no log.txt"
    write_log(tmp_path / "cut", 70.0, finished=False)
    cut = read_run(tmp_path / "cut", training=True)
    assert cut.status == INCOMPLETE and "did not finish" in cut.reason
    # an interrupted first attempt (log.txt) and its resumed run (log.txt-<date>, newer) that finished
    run = tmp_path / "resumed"
    write_log(run, 70.0, finished=False)
    write_log(run, 74.4, name="log.txt-2026-11-29-06-00-00")
    old = time.time() - 60
    os.utime(run / "log.txt", (old, old))
    result = read_run(run, training=True)
    assert result.status == COMPLETE and result.metrics["accuracy"] == 74.4
    assert result.log_file.name == "log.txt-2026-11-29-06-00-00"


BASE = {("VPT", "imagenet"): [70.1, 71.3, 72.2], ("VPT", "caltech101"): [95.0, 96.0, 97.0],
        ("VPTPD", "imagenet"): [74.0, 75.0, 76.0], ("VPTPD", "caltech101"): [97.1, 97.5, 97.9]}
NEW = {("VPT", "imagenet"): [68.0, 69.5, 70.0], ("VPT", "caltech101"): [93.0, 93.3, 93.9],
       ("VPTPD", "imagenet"): [69.2, 70.2, 71.2], ("VPTPD", "caltech101"): [94.0, 94.2, 94.4]}


def make_base2new_runs(root, skip=(), cut=()):
    """Run dirs of a 2-method × 2-dataset × 3-seed base-to-new experiment; their Measurements."""
    measurements = []
    for (method, dataset), accs in BASE.items():
        for seed, (base, new) in enumerate(zip(accs, NEW[(method, dataset)]), 1):
            train = root / "train_base" / dataset / method / f"seed{seed}"
            test = root / "test_new" / dataset / method / f"seed{seed}"
            if (method, dataset, seed) not in skip:
                write_log(train, base, finished=(method, dataset, seed) not in cut)
                write_log(test, new, training=False)
            row = RowKey(method)
            measurements.append(Measurement(row, dataset, seed, train, True, (("accuracy", "base"),)))
            measurements.append(Measurement(row, dataset, seed, test, False, (("accuracy", "new"),)))
    return measurements


def test_base2new_table_means_stds_and_h_from_averaged_base_and_new(tmp_path):
    table = build_table("b2n", ["base", "new", "hm"], ["imagenet", "caltech101"], [1, 2, 3],
                        make_base2new_runs(tmp_path), average_of=["imagenet", "caltech101"],
                        paper=load_paper_table("table1"))
    cell = table.cell(RowKey("VPT"), "imagenet", "base")
    assert cell.mean == pytest.approx(np.mean([70.1, 71.3, 72.2]))
    assert cell.std == pytest.approx(np.std([70.1, 71.3, 72.2]))  # population std, as parse_test_res.py
    base, new = np.mean(BASE[("VPTPD", "caltech101")]), np.mean(NEW[("VPTPD", "caltech101")])
    hm = table.cell(RowKey("VPTPD"), "caltech101", "hm")
    assert hm.mean == pytest.approx(harmonic_mean(base, new))
    pairs = zip(BASE[("VPTPD", "caltech101")], NEW[("VPTPD", "caltech101")])
    per_seed = np.mean([harmonic_mean(b, n) for b, n in pairs])
    assert hm.mean != pytest.approx(per_seed, abs=1e-6)  # H of the means, not the mean of H
    avg_base = np.mean([np.mean(BASE[("VPT", d)]) for d in ("imagenet", "caltech101")])
    avg_new = np.mean([np.mean(NEW[("VPT", d)]) for d in ("imagenet", "caltech101")])
    assert table.cell(RowKey("VPT"), "average", "base").mean == pytest.approx(avg_base)
    assert table.cell(RowKey("VPT"), "average", "hm").mean == pytest.approx(harmonic_mean(avg_base, avg_new))
    # the paper's VPT ImageNet row is 74.45 / 69.22 / 71.74
    assert table.paper_value(RowKey("VPT"), "imagenet", "base") == 74.45
    text = to_markdown(table, {"imagenet": "ImageNet"})
    assert "### ImageNet" in text and "### caltech101" in text
    vpt_line = next(line for line in text.splitlines() if line.startswith("| VPT |"))
    assert f"| {np.mean(BASE[('VPT', 'imagenet')]):.2f} ± {np.std(BASE[('VPT', 'imagenet')]):.2f} |" in vpt_line
    assert f"| 74.45 | 69.22 | 71.74 | {np.mean(BASE[('VPT', 'imagenet')]) - 74.45:+.2f} |" in vpt_line
    assert vpt_line.endswith("| 3/3 |")
    assert "Missing or incomplete" not in text
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert len(rows) == 2 * 3 * 3
    row = next(r for r in rows if r["row"] == "VPTPD" and r["column"] == "imagenet" and r["metric"] == "new")
    assert float(row["mean"]) == pytest.approx(70.2)
    assert float(row["std"]) == pytest.approx(np.std([69.2, 70.2, 71.2]), abs=1e-4)
    assert row["paper"] == "69.99" and float(row["diff"]) == pytest.approx(70.2 - 69.99, abs=1e-4)
    assert row["n_seeds"] == "3" and row["missing_seeds"] == ""


def test_incomplete_and_missing_runs_are_flagged_and_never_averaged(tmp_path):
    measurements = make_base2new_runs(tmp_path, skip={("VPTPD", "caltech101", 2)}, cut={("VPT", "imagenet", 3)})
    table = build_table("b2n", ["base", "new", "hm"], ["imagenet", "caltech101"], [1, 2, 3], measurements,
                        average_of=["imagenet", "caltech101"])
    cut = table.cell(RowKey("VPT"), "imagenet", "base")
    assert cut.values == {1: 70.1, 2: 71.3} and cut.incomplete == [3]
    assert cut.mean == pytest.approx(70.7)
    missing = table.cell(RowKey("VPTPD"), "caltech101", "new")
    assert missing.missing == [2] and missing.mean == pytest.approx(np.mean([94.0, 94.4]))
    text = to_markdown(table)
    vpt_lines = [line for line in text.splitlines() if line.startswith("| VPT |")]
    assert vpt_lines[0].endswith("| ⚠ incomplete seed 3 |")
    assert vpt_lines[-1].endswith("| ⚠ incomplete seed 3 |")  # the average panel inherits the flag
    assert any(line.endswith("| ⚠ missing seed 2 |") for line in text.splitlines() if line.startswith("| VPTPD |"))
    assert "training did not finish" in text and str(tmp_path / "train_base" / "imagenet" / "VPT" / "seed3") in text


def test_average_lacking_a_dataset_is_not_a_partial_mean(tmp_path):
    measurements = [m for m in make_base2new_runs(tmp_path) if not (m.row.method == "VPT" and m.column == "caltech101")]
    measurements += [Measurement(RowKey("VPT"), "caltech101", s, tmp_path / "nowhere" / str(s), True,
                                 (("accuracy", "base"), )) for s in (1, 2, 3)]
    measurements += [Measurement(RowKey("VPT"), "caltech101", s, tmp_path / "nowhere" / str(s), False,
                                 (("accuracy", "new"), )) for s in (1, 2, 3)]
    table = build_table("b2n", ["base", "new", "hm"], ["imagenet", "caltech101"], [1, 2, 3], measurements,
                        average_of=["imagenet", "caltech101"])
    average = table.cell(RowKey("VPT"), "average", "base")
    assert average.mean is None and not average.complete
    assert table.cell(RowKey("VPTPD"), "average", "base").mean is not None


def test_cross_dataset_table_has_paper_and_difference_rows(tmp_path):
    measurements = []
    accs = {"imagenet": [71.0, 71.4], "caltech101": [94.0, 95.0], "oxford_pets": [90.0, 91.0]}
    for column, values in accs.items():
        for seed, acc in enumerate(values, 1):
            run = tmp_path / column / f"seed{seed}"
            write_log(run, acc, training=column == "imagenet")
            measurements.append(Measurement(RowKey("CoCoOp"), column, seed, run, column == "imagenet",
                                            (("accuracy", "accuracy"),)))
    table = build_table("xd", ["accuracy"], list(accs), [1, 2], measurements,
                        average_of=["caltech101", "oxford_pets"], paper=load_paper_table("table2"))
    assert table.cell(RowKey("CoCoOp"), "average", "accuracy").mean == pytest.approx((94.5 + 90.5) / 2)
    lines = to_markdown(table).splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("| CoCoOp |"))
    assert lines[i].startswith("| CoCoOp | 71.20 ± 0.20 | 94.50 ± 0.50 | 90.50 ± 0.50 | 92.50 |")
    assert lines[i + 1].startswith("|   paper | 71.02 | 94.43 | 90.14 | 65.74 |")  # paper's average: 10 targets
    assert lines[i + 2].startswith("|   Δ | +0.18 | +0.07 | +0.36 |")


def test_paper_errata_are_footnoted_beside_the_printed_value(tmp_path):
    run = tmp_path / "seed1"
    write_log(run, 60.0, training=False)
    measurement = Measurement(RowKey("MaPLe"), "imagenetv2", 1, run, False, (("accuracy", "accuracy"),))
    table = build_table("dg", ["accuracy"], ["imagenetv2"], [1], [measurement], average_of=["imagenetv2"],
                        paper=load_paper_table("table3"))
    text = to_markdown(table)
    assert "60.83[^1]" in text and "[^1]: MaPLe average Acc.: printed 60.83, recomputed" in text


def test_reference_rows_show_the_paper_numbers_only_and_never_a_run(tmp_path):
    run = tmp_path / "seed1"
    write_log(run, 80.0)
    measurement = Measurement(RowKey("MaPLe"), "imagenet", 1, run, True, (("accuracy", "base"),))
    table = build_table("t7", ["base", "new", "hm"], ["imagenet"], [1], [measurement], average_of=["imagenet"],
                        paper=load_paper_table("table7"))
    lines = to_markdown(table).splitlines()
    llu = [line for line in lines if line.startswith("| LLU (Ibing et al., 2023) (paper only[^")]
    assert len(llu) == 1  # in the average panel only: the paper prints no per-dataset LLU cells
    assert llu[0].split(" | ")[1:8] == ["—", "—", "—", "83.48", "74.47", "78.46[^2]", "—"]
    assert llu[0].endswith("| not run |")
    assert any(line.startswith("| LLU + Diffusion Prompt (paper only[^") for line in lines)
    assert any("no public code that this project could check" in line for line in lines if line.startswith("[^"))
    assert not any("(paper only" in line for line in to_markdown(build_table(
        "t7", ["base", "new", "hm"], ["imagenet"], [1], [measurement], average_of=["imagenet"])).splitlines())


def test_a_missing_time_line_is_reported(tmp_path):
    run = tmp_path / "seed1"
    write_log(run, 80.0, training=False, extra="* time_per_image_ms: 12.5\n")
    ok = Measurement(RowKey.make("CoCoOpPD", {"nfe": 5}), "dtd", 1, run, False,
                     (("accuracy", "new"), ("time_per_image_ms", "time")))
    run2 = tmp_path / "seed2"
    write_log(run2, 82.0, training=False)
    lacking = Measurement(RowKey.make("CoCoOpPD", {"nfe": 5}), "dtd", 2, run2, False,
                          (("accuracy", "new"), ("time_per_image_ms", "time")))
    table = build_table("t", ["new", "time"], ["dtd"], [1, 2], [ok, lacking])
    cell = table.cell(RowKey.make("CoCoOpPD", {"nfe": 5}), "dtd", "time")
    assert cell.values == {1: 12.5} and cell.incomplete == [2]
    assert "no '* time_per_image_ms:' line" in to_markdown(table)


def test_run_dir_groups_like_parse_test_res(tmp_path):
    for seed, acc in ((1, 70.0), (2, 72.0)):
        write_log(tmp_path / "exp" / f"seed{seed}", acc, training=False)
    write_log(tmp_path / "exp" / "seed3", 0.0, training=False, finished=False)
    groups = group_run_dirs(sorted((tmp_path / "exp").glob("seed*")))
    assert len(groups) == 1 and groups[0].name.endswith("exp/seed*")
    mean, std, n = groups[0].summary()["accuracy"]
    assert (mean, std, n) == (pytest.approx(71.0), pytest.approx(1.0), 2)
    text = run_groups_markdown(groups)
    assert "| accuracy | 71.00 ± 1.00 | 2/3 |" in text and "seed3: incomplete" in text


def test_plot_writes_a_png(tmp_path):
    measurements = []
    for nfe, acc, ms in ((1, 60.0, 3.0), (5, 70.0, 9.0), (10, 71.0, 17.0)):
        for method in ("CoCoOpPD", "VPTPD"):
            run = tmp_path / method / f"nfe{nfe}"
            write_log(run, acc, training=False, extra=f"* time_per_image_ms: {ms}\n")
            measurements.append(Measurement(RowKey.make(method, {"nfe": nfe}), "dtd", 1, run, False,
                                            (("accuracy", "new"), ("time_per_image_ms", "time"))))
    host = tmp_path / "CoCoOp"
    write_log(host, 65.0, training=False, extra="* time_per_image_ms: 2.0\n")  # drawn as a flat reference
    measurements.append(Measurement(RowKey("CoCoOp"), "dtd", 1, host, False,
                                    (("accuracy", "new"), ("time_per_image_ms", "time"))))
    table = build_table("NFE", ["new", "time"], ["dtd"], [1], measurements)
    path = plot_sweep(table, "nfe", tmp_path / "fig4.png", column="dtd", metric="new", time_metric="time")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with pytest.raises(ValueError, match="no row of the table has the setting 'iters'"):
        plot_sweep(table, "iters", tmp_path / "x.png", column="dtd", metric="new")


def write_predictions(run_dir, correct, labels=None):
    """A predictions file as ``test`` writes it: images ``img<i>.png``, top-1 right where ``correct``."""
    import torch

    from prompt_diffusion.engine.predictions import PredictionRecord

    labels = labels if labels is not None else [i % 3 for i in range(len(correct))]
    outputs = torch.zeros(len(correct), 3)
    for i, (label, right) in enumerate(zip(labels, correct)):
        outputs[i, label if right else (label + 1) % 3] = 1.0
    record = PredictionRecord("test")
    record.add([f"img{i}.png" for i in range(len(correct))], torch.tensor(labels), outputs)
    return record.write(str(run_dir))


def test_pd_rows_get_their_paired_difference_to_the_host(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    measurements, expected = [], {"base": [], "new": []}
    for seed in (1, 2):
        for metric, phase, training in (("base", "train_base", True), ("new", "test_new", False)):
            host_correct = rng.random(n) < 0.8
            pd_correct = host_correct.copy()
            flips = rng.choice(n, 40, replace=False)
            pd_correct[flips[:28]] = True  # PD fixes some images and breaks others
            pd_correct[flips[28:]] = False
            for method, correct in (("CoCoOp", host_correct), ("CoCoOpPD", pd_correct)):
                run = tmp_path / phase / method / f"seed{seed}"
                write_log(run, 100.0 * correct.mean(), training=training)
                write_predictions(run, correct.tolist())
                measurements.append(Measurement(RowKey(method), "toy_world", seed, run, training, (("accuracy", metric),)))
            diff = pd_correct.astype(float) - host_correct.astype(float)
            expected[metric].append((100 * diff.mean(), 100 * diff.std(ddof=1) / np.sqrt(n)))
    table = build_table("paired", ["base", "new", "hm"], ["toy_world"], [1, 2], measurements,
                        hosts={RowKey("CoCoOpPD"): RowKey("CoCoOp")})
    pd_row = next(r for r in table.rows if r.key == RowKey("CoCoOpPD"))
    host_row = next(r for r in table.rows if r.key == RowKey("CoCoOp"))
    assert host_row.paired == {}
    for metric in ("base", "new"):
        got = pd_row.paired["toy_world"][metric]
        assert got.mean == pytest.approx(np.mean([m for m, _ in expected[metric]]))
        assert got.se == pytest.approx(np.sqrt(sum(se ** 2 for _, se in expected[metric])) / 2)
        assert got.images == 2 * n and got.seeds == 2
        per_seed = [m for m, _ in expected[metric]]
        assert got.per_seed == pytest.approx(per_seed)
        assert got.seed_se == pytest.approx(np.std(per_seed, ddof=1) / np.sqrt(2))
        assert f"[seeds ± {got.seed_se:.2f}]" in got.text()
    # the same difference as the table's own means (the log accuracies are the predictions' accuracies)
    hm = pd_row.paired["toy_world"]["hm"]
    assert hm.mean == pytest.approx(pd_row.cells["toy_world"]["hm"].mean - host_row.cells["toy_world"]["hm"].mean,
                                    abs=0.06)  # the logs round accuracies to 0.1
    assert 0 < hm.se < max(pd_row.paired["toy_world"]["base"].se, pd_row.paired["toy_world"]["new"].se)
    text = to_markdown(table)
    assert "Δ vs host Base" in text and "paired per image" in text
    assert pd_row.paired["toy_world"]["base"].text() in text
    assert "host_diff_se" in to_csv(table).splitlines()[0]


def test_runs_on_other_images_are_not_paired(tmp_path):
    measurements = []
    for method, labels in (("VPT", [0, 1, 2, 0]), ("VPTPD", [0, 1, 2, 1])):
        run = tmp_path / method
        write_log(run, 50.0, training=False)
        write_predictions(run, [True, False, True, False], labels)
        measurements.append(Measurement(RowKey(method), "toy_world", 1, run, False, (("accuracy", "new"),)))
    table = build_table("t", ["new"], ["toy_world"], [1], measurements, hosts={RowKey("VPTPD"): RowKey("VPT")})
    row = next(r for r in table.rows if r.key == RowKey("VPTPD"))
    assert row.paired == {} and any("did not evaluate the same images" in p for p in row.problems)
