"""Experiment specs: every shipped spec expands into commands the train parser accepts; bad specs
name what is wrong; finished runs are skipped; a missing dataset stops the sweep before launching."""
import contextlib
import os
import io
import shlex
from pathlib import Path

import pytest

from helpers import shared_toy_root, write_result_log
from prompt_diffusion.cli import build_parser, main
from prompt_diffusion.results import RowKey, paper_table_ids
from prompt_diffusion.sweep import (CONFIGS_DIR, SpecError, expand, experiment_names, load_spec, measurements,
                                    registered_trainers, select, table_for, validate_spec)

SHIPPED = ["demo", "figure4", "figure5", "table1", "table2", "table3", "table4", "table5", "table6", "table7",
           "toy_benchmark", "toy_cost", "toy_figure4", "toy_ladder", "toy_mixed", "toy_table4", "toy_table7"]
# specs of this project's own demo and benchmarks
PAPERLESS = {"demo", "toy_benchmark", "toy_cost", "toy_figure4", "toy_ladder", "toy_mixed", "toy_table4", "toy_table7"}


def run_cli(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def test_one_spec_per_table_and_figure_each_with_its_paper_numbers():
    assert experiment_names() == SHIPPED
    for name in SHIPPED:
        spec = load_spec(name)
        assert spec.paper in paper_table_ids() if name not in PAPERLESS else spec.paper is None
        assert spec.seeds == ([1, 2] if name == "toy_ladder" else [1] if name == "demo" else [1, 2, 3])


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_spec_validates_and_its_commands_parse(name, tmp_path):
    spec = load_spec(name)
    validate_spec(spec)
    parser = build_parser()
    chains = expand(spec, tmp_path / "out")
    runs = [run for chain in chains for run in chain.runs]
    assert len({run.output_dir for run in runs}) == len(runs)  # no two runs share a directory
    for run in runs:
        line = run.command("/data")
        assert line.startswith("prompt-diffusion train ")
        args = parser.parse_args(shlex.split(line)[1:])
        assert (args.command, args.trainer, args.seed, args.root) == ("train", run.trainer, run.seed, "/data")
        assert Path(args.output_dir) == run.output_dir and [Path(path).is_file() for path in args.config_file] == [True]
        assert Path(args.dataset_config_file).name == f"{run.dataset}.yaml"
        assert args.eval_only == (not run.training)
        if not run.training and run.model_dir is not None:
            assert Path(args.model_dir) == run.model_dir and args.load_epoch == run.load_epoch > 0
        elif not run.training:  # a method with nothing to train (zero-shot CLIP): evaluations of the untrained model
            trains = next(m for m in spec.methods if m.name == run.method).train
            assert not trains and not args.model_dir  # zero-shot CLIP, or TPT over its untrained prompt
            assert run.phase.startswith("test")
        opts = dict(zip(args.opts[::2], args.opts[1::2]))
        assert opts.get("DATASET.NUM_SHOTS") == (None if spec.protocol == "cross_dataset" and not run.training
                                                 else str(spec.shots))


def test_table1_expands_to_train_base_then_test_new_of_its_checkpoint(tmp_path):
    spec = load_spec("table1")
    chains = expand(spec, tmp_path)
    assert len(chains) == 10 * 11 * 3
    train, test = chains[0].runs
    assert (train.method, train.dataset, train.seed, train.phase) == ("VPT", "imagenet", 1, "train_base")
    leaf = "shots_16/VPT/vit_b16_c4_ep50_batch32_4_pd_paper/seed1"
    assert train.output_dir == tmp_path / "base2new/train_base/imagenet" / leaf
    assert test.model_dir == train.output_dir and test.load_epoch == 50 and test.phase == "test_new"
    assert "DATASET.SUBSAMPLE_CLASSES new" in " ".join(test.opts)
    found = measurements(spec, chains[:1])
    assert [(m.column, m.training, m.metrics) for m in found] == [
        ("imagenet", True, (("accuracy", "base"),)), ("imagenet", False, (("accuracy", "new"),))]


def test_toy_benchmark_evaluates_each_model_on_both_halves_of_every_domain(tmp_path):
    spec = load_spec("toy_benchmark")
    chains = expand(spec, tmp_path)
    # CoCoOp, CoCoOpPD, VPT, VPTPD, ZS-ensemble, ZS-weighted, TemplatePD, TemplatePD-agreement x 3
    # seeds; CoCoOp+TPT and CoCoOp+Zero train nothing: their evaluations join CoCoOp's chain, after its training
    assert len(chains) == 8 * 3
    runs = chains[0].runs[:8]
    assert {r.method for r in chains[0].runs[8:]} == {"CoCoOp+TPT", "CoCoOp+Zero"}
    assert len(chains[0].runs) == 8 + 2 * 8  # (they also evaluate the photo's base half)
    assert [(r.phase, r.dataset) for r in runs] == [
        ("train_base", "toy_world"), ("test_new", "toy_world"),
        ("test_base", "toy_world_sketch"), ("test_new", "toy_world_sketch"),
        ("test_base", "toy_world_rendition"), ("test_new", "toy_world_rendition"),
        ("test_base", "toy_world_clutter"), ("test_new", "toy_world_clutter")]
    assert all(r.model_dir == runs[0].output_dir for r in runs[1:])
    assert "DATASET.SUBSAMPLE_CLASSES base" in " ".join(runs[2].opts)
    assert [(m.column, m.metrics[0][1]) for m in measurements(spec, chains[:1])][2:4] == [
        ("toy_world_sketch", "base"), ("toy_world_sketch", "new")]
    assert spec.hosts() == {RowKey("CoCoOpPD"): RowKey("CoCoOp"), RowKey("VPTPD"): RowKey("VPT"),
                            RowKey("CoCoOp+TPT"): RowKey("CoCoOp"), RowKey("CoCoOp+Zero"): RowKey("CoCoOp"),
                            RowKey("TemplatePD"): RowKey("ZS-weighted"), RowKey("TemplatePD-agreement"): RowKey("ZS-weighted")}
    # a PD model is evaluated with its generated prompts and with TRAINER.PD.ENABLE False (V_h alone)
    pd_runs = chains[3].runs
    assert pd_runs[0].method == "CoCoOpPD" and len(pd_runs) == 1 + 2 * 8
    assert {r.row for r in pd_runs[1:]} == {RowKey.make("CoCoOpPD", {"generated": True}),
                                           RowKey.make("CoCoOpPD", {"generated": False})}
    assert all("TRAINER.PD.ENABLE False" in " ".join(r.opts) for r in pd_runs[9:])
    table = table_for(spec, tmp_path)
    assert table.columns == ["toy_world", "toy_world_sketch", "toy_world_rendition", "toy_world_clutter", "average"]


def test_toy_mixed_tunes_cocoops_own_models_and_splits_every_column_by_style(tmp_path):
    """A ``weights`` method trains nothing: its runs load CoCoOp's trained models and join their
    chain (so they run after the training); ``by_domain`` adds a column per style, read from the
    same runs' predictions and paired image by image to the host."""
    import json

    spec = select(load_spec("toy_mixed"), methods=["CoCoOp", "CoCoOp+TTT"], seeds=[1])
    chains = expand(spec, tmp_path)
    assert len(chains) == 1
    train, new, tuned_base, tuned_new = chains[0].runs
    assert train.phase == "train_base" and tuned_base.method == tuned_new.method == "CoCoOp+TTT"
    assert (tuned_base.phase, tuned_new.phase) == ("test_base", "test_new")
    assert tuned_base.model_dir == tuned_new.model_dir == train.output_dir and tuned_base.load_epoch == 2
    assert "--eval-only" in tuned_base.argv("$DATA") and "TRAINER.PD.INFERENCE tune" in " ".join(tuned_base.opts)
    for run, correct in ((train, [1, 1, 0, 0]), (new, [1, 0, 1, 0]), (tuned_base, [1, 1, 1, 0]),
                         (tuned_new, [1, 1, 1, 1])):
        write_result_log(run.output_dir, 100.0 * sum(correct) / 4, training=run.training)
        (run.output_dir / "predictions_test.json").write_text(json.dumps(
            {"split": "test", "images_sha1": "x", "labels": [0, 1, 2, 3], "domains": [0, 0, 1, 1],
             "predictions": [label if ok else 9 for label, ok in zip(range(4), correct)]}))
    table = table_for(spec, tmp_path)
    assert table.columns == ["toy_world_mixed"] + [f"toy_world_mixed/{s}" for s in
                                                   ("photo", "sketch", "rendition", "clutter")]
    host, tuned = RowKey("CoCoOp"), RowKey("CoCoOp+TTT")
    assert table.cell(host, "toy_world_mixed/photo", "base").mean == 100.0  # images 0, 1
    assert table.cell(host, "toy_world_mixed/sketch", "base").mean == 0.0  # images 2, 3
    assert table.cell(tuned, "toy_world_mixed/sketch", "new").mean == 100.0
    paired = next(row for row in table.rows if row.key == tuned).paired
    assert paired["toy_world_mixed/sketch"]["base"].mean == 50.0 and paired["toy_world_mixed"]["base"].mean == 25.0
    assert paired["toy_world_mixed/photo"]["base"].mean == 0.0
    problems = " ".join(p for row in table.rows for p in row.problems)
    assert "toy_world_mixed/rendition seed 1 (base)" in problems and "no test image of domain 2" in problems
    with pytest.raises(SpecError, match="select CoCoOp too"):
        expand(select(load_spec("toy_mixed"), methods=["CoCoOp+TTT"]), tmp_path)


def test_tables_2_and_3_share_their_imagenet_training_runs(tmp_path):
    t2, t3 = expand(load_spec("table2"), tmp_path), expand(load_spec("table3"), tmp_path)
    assert [c.runs[0].output_dir for c in t2] == [c.runs[0].output_dir for c in t3]
    assert [r.dataset for r in t3[0].runs] == ["imagenet", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
    assert "shots_4" in str(expand(load_spec("table6"), tmp_path)[0].runs[0].output_dir)


def test_swept_settings_train_per_value_or_evaluate_one_model_per_value(tmp_path):
    epochs = expand(load_spec("table5"), tmp_path)
    assert len(epochs) == 4 * 11 * 3
    first = epochs[0].runs[0]
    assert first.opts[-2:] == ("OPTIM.MAX_EPOCH", "10") and first.output_dir.parent.name.endswith("_epochs10")
    assert epochs[0].runs[1].load_epoch == 10  # evaluates the last epoch of its own schedule
    assert first.row == RowKey.make("CoCoOpPD", {"epochs": 10})
    nfe = select(load_spec("figure4"), methods=["CoCoOpPD"], datasets=["dtd"], seeds=[1])
    chains = expand(nfe, tmp_path)
    assert len(chains) == 1  # one model ...
    phases = [(r.phase, dict(r.variant).get("nfe")) for r in chains[0].runs]
    assert phases[0] == ("train_base", None)
    assert phases[1:4] == [("test_base", 1), ("test_new", 1), ("test_base", 2)]  # ... evaluated at every NFE
    found = measurements(nfe, chains)
    assert not any(m.training for m in found)  # base accuracy comes from test_base at each NFE
    new_at_5 = next(m for m in found if m.row == RowKey.make("CoCoOpPD", {"nfe": 5}) and m.metrics[0][1] == "new")
    assert new_at_5.metrics == (("accuracy", "new"), ("time_per_image_ms", "time"))


def test_table4_trains_one_cocooppd_per_generator_beside_the_paper(tmp_path):
    spec = load_spec("table4")
    chains = expand(spec, tmp_path)
    rows = {chain.runs[0].row for chain in chains}
    generators = ["mlp", "transformer", "gan", "vae", "flow", "diffusion"]
    assert rows == {RowKey.make("CoCoOp")} | {RowKey.make("CoCoOpPD", {"generator": g}) for g in generators}
    assert len(chains) == 7 * 11 * 3
    gan = next(c.runs[0] for c in chains if c.runs[0].row == RowKey.make("CoCoOpPD", {"generator": "gan"}))
    assert gan.opts[-2:] == ("TRAINER.PD.GENERATOR", "gan") and gan.output_dir.parent.name.endswith("_generatorgan")
    code, text = run_cli("table", "table4", "--output-dir", str(tmp_path))
    assert code == 0
    assert "| CoCoOpPD[generator=gan] |" in text and "75.99" in text  # the paper's H beside the (missing) runs


def write_spec(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return str(path)


GOOD = """
protocol: base2new
seeds: [1]
methods:
  CoCoOp: CoCoOp/vit_b16_c4_ep10_batch1_ctxv1
datasets: [dtd]
"""


def test_bad_specs_name_the_problem_and_the_valid_choices(tmp_path):
    spec = load_spec(write_spec(tmp_path, GOOD.replace("CoCoOp:", "CoCoOpp:").replace("[dtd]", "[dtd, textures]")))
    with pytest.raises(SpecError) as error:
        validate_spec(spec)
    message = str(error.value)
    assert "trainer 'CoCoOpp' is not registered" in message and "registered trainers: " in message
    assert "CoCoOpPD" in message.split("registered trainers: ")[1]
    assert "dataset 'textures' has no config" in message and "dataset configs: caltech101, dtd" in message
    bad_config = load_spec(write_spec(tmp_path, GOOD.replace("ep10_batch1_ctxv1", "ep11")))
    expected = r"config 'CoCoOp/vit_b16_c4_ep11' is not in .*\n.*trainer configs: .*CoCoOp/vit_b16_c4_ep10_batch1_ctxv1"
    with pytest.raises(SpecError, match=expected):
        validate_spec(bad_config)
    with pytest.raises(SpecError, match=r"unknown key\(s\) \['dataset'\]; allowed: .*'datasets'"):
        load_spec(write_spec(tmp_path, GOOD.replace("datasets:", "dataset:")))
    with pytest.raises(SpecError, match=r"protocol 'b2n' is unknown; allowed: \['base2new', 'cross_dataset'\]"):
        load_spec(write_spec(tmp_path, GOOD.replace("base2new", "b2n")))
    opts = load_spec(write_spec(tmp_path, GOOD + "opts: {OPTIM.NOPE: 3}\n"))
    with pytest.raises(SpecError, match="OPTIM.NOPE"):
        validate_spec(opts)
    nfe = GOOD.replace("CoCoOp: ", "CoCoOpPD: ")
    nfe += "variants: {name: nfe, key: TRAINER.PD.NFE, values: [5, 0], scope: eval}\n"
    with pytest.raises(SpecError, match=r"at nfe=0: .*TRAINER.PD.NFE"):
        validate_spec(load_spec(write_spec(tmp_path, nfe)))
    with pytest.raises(SpecError, match="unknown experiment 'table8'; shipped: demo, figure4, figure5, table1"):
        load_spec("table8")
    with pytest.raises(SpecError, match=r"methods \['VPT'\] not in the spec; it has \['CoCoOp'\]"):
        select(load_spec(write_spec(tmp_path, GOOD)), methods=["VPT"])


def test_dry_run_prints_only_unfinished_runs_and_table_reads_finished_ones(tmp_path):
    spec_path = write_spec(tmp_path, GOOD.replace("[1]", "[1, 2]"))
    out = tmp_path / "out"
    code, text = run_cli("sweep", spec_path, "--dry-run", "--output-dir", str(out))
    lines = text.splitlines()
    assert code == 0 and lines[0] == "# spec: 4 runs, 0 finished, 4 to run"
    assert all(line.startswith("prompt-diffusion train --root $DATA --seed ") for line in lines[1:])
    chains = expand(load_spec(spec_path), out)
    write_result_log(chains[0].runs[0].output_dir, 80.0)  # seed 1 trained, not yet evaluated
    code, text = run_cli("sweep", spec_path, "--dry-run", "--output-dir", str(out), "--root", "/data")
    assert text.splitlines()[0] == "# spec: 4 runs, 1 finished, 3 to run"
    assert f"--output-dir {chains[0].runs[0].output_dir} " not in text and "--root /data" in text
    write_result_log(chains[0].runs[1].output_dir, 60.0, training=False)
    code, text = run_cli("table", spec_path, "--output-dir", str(out), "--csv", str(tmp_path / "t.csv"))
    assert code == 0
    row = next(line for line in text.splitlines() if line.startswith("| CoCoOp |"))
    assert row.startswith("| CoCoOp | 80.00 | 60.00 | 68.57 |") and "⚠ missing seed 2" in row
    assert (tmp_path / "t.csv").read_text().count("\n") == 4  # header + base, new, hm of dtd


def test_table_reads_a_glob_of_run_dirs(tmp_path):
    for seed, acc in ((1, 70.0), (2, 74.0)):
        write_result_log(tmp_path / "exp" / f"seed{seed}", acc, training=False)
    code, text = run_cli("table", str(tmp_path / "exp" / "seed*"), "--csv", str(tmp_path / "runs.csv"))
    assert code == 0 and "| accuracy | 72.00 ± 2.00 | 2/2 |" in text
    assert f"{tmp_path / 'exp' / 'seed*'},accuracy,72.0000,2.0000,2,2" in (tmp_path / "runs.csv").read_text()
    code, text = run_cli("table", "no_such_table")
    assert code == 2 and "unknown experiment 'no_such_table'" in text


def test_a_missing_dataset_stops_the_sweep_before_anything_runs(tmp_path):
    out = tmp_path / "out"
    code, text = run_cli("sweep", "table3", "--root", str(tmp_path / "data"), "--output-dir", str(out),
                         "--methods", "CoCoOp", "--seeds", "1")
    assert code == 1 and "nothing was launched" in text
    assert "ImageNetV2" in text and "ABSENT" in text and "fix:" in text
    assert not out.exists()


def test_trainer_configs_and_datasets_come_from_the_package():
    assert (CONFIGS_DIR / "experiments" / "table1.yaml").is_file()
    assert "CoCoOpPD" in registered_trainers()
    table = table_for(load_spec("table3"), Path("/nonexistent"))
    assert all(row.problems for row in table.rows)  # nothing ran: every cell flagged, none averaged


REPO = Path(__file__).resolve().parents[1]


def script_commands(script, *args):
    """The commands a launch script prints with DRY_RUN=1 (run from the repository root)."""
    import os
    import subprocess

    env = {**os.environ, "DRY_RUN": "1"}
    env.pop("DATA", None)
    result = subprocess.run(["bash", str(REPO / "scripts" / script), *args], cwd=REPO, env=env,
                            capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def parsed(line):
    args = build_parser().parse_args(shlex.split(line)[1:])
    args.dataset_config_file = (REPO / args.dataset_config_file).resolve()
    args.config_file = [(REPO / path).resolve() for path in args.config_file]
    return args


def test_launch_scripts_run_what_the_sweep_runs():
    old = Path.cwd()
    os.chdir(REPO)  # the sweep prints paths relative to the working directory, as the scripts do
    try:
        b2n = expand(select(load_spec("table1"), ["CoCoOpPD"], ["dtd"], [1]), Path("output"))[0].runs
        xd = expand(select(load_spec("table3"), ["MaPLePD"], ["imagenet_a"], [2]), Path("output"))[0].runs
    finally:
        os.chdir(old)
    pairs = [(script_commands("base2new_train.sh", "CoCoOpPD", "dtd", "1"), b2n[:1]),
             (script_commands("base2new_test.sh", "CoCoOpPD", "dtd", "1"), b2n[1:]),
             (script_commands("xd_train.sh", "MaPLePD", "2"), xd[:1]),
             (script_commands("dg_test.sh", "MaPLePD", "2")[2:3], xd[1:])]
    for lines, runs in pairs:
        assert len(lines) == len(runs) == 1
        assert vars(parsed(lines[0])) == vars(parsed(runs[0].command("$DATA")))


TINY_OPTS = {  # a tiny CLIP on 32x32 toy-world images, one epoch of a 1-shot dataset
    "INPUT.SIZE": "(32, 32)", "OPTIM.MAX_EPOCH": 1, "DATALOADER.TRAIN_X.BATCH_SIZE": 8,
    "DATALOADER.TEST.BATCH_SIZE": 64, "DATALOADER.NUM_WORKERS": 0, "TRAINER.COOP.PREC": "fp32",
    "TRAINER.COOP.N_CTX": 4, "DATASET.TOY.TEST_PER_CLASS": 1,
}
TINY_PD_OPTS = {"TRAINER.PD.GENERATOR_SIZE.LAYERS": 1, "TRAINER.PD.GENERATOR_SIZE.WIDTH": 32, "TRAINER.PD.GENERATOR_SIZE.HEADS": 2,
                "TRAINER.PD.OVERFIT.ITERS": 1, "TRAINER.PD.AMED.DISTILL_ITERS": 2}


@pytest.mark.slow
def test_sweep_on_the_toy_world_resumes_after_a_kill_and_table_reads_it(tmp_path, monkeypatch):
    """2 methods × 2 seeds of base-to-new on the toy world: a sweep killed during its first run,
    resumed with two parallel workers (--gpus), then ``table`` reads every cell; a third sweep
    launches nothing."""
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from prompt_diffusion.backbones import build_tiny_clip, save_clip

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    save_clip(build_tiny_clip(), tmp_path / "tiny_clip.pt")
    spec = {"protocol": "base2new", "seeds": [1, 2], "shots": 1, "datasets": ["toy_world"],
            "opts": {**TINY_OPTS, "MODEL.BACKBONE.PATH": str(tmp_path / "tiny_clip.pt")},
            "methods": {"CoOp": "CoOp/vit_b16_ep50", "CoOpPD": {"config": "CoOp/vit_b16_ep50", "opts": TINY_PD_OPTS}}}
    spec_path = tmp_path / "toy.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    out, root = tmp_path / "out", tmp_path / "data"
    sweep = ["sweep", str(spec_path), "--root", str(root), "--output-dir", str(out)]
    first = expand(load_spec(str(spec_path)), out)[0].runs[0]

    process = subprocess.Popen([sys.executable, "-m", "prompt_diffusion", *sweep], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (first.output_dir / "log.txt").exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the sweep and the run it started
        process.wait()
    assert (first.output_dir / "log.txt").exists() and first.status() == "incomplete"

    code, text = run_cli(*sweep, "--gpus", "0", "1")
    assert code == 0, text
    assert "8 runs, 0 finished, 8 to run" in text and f"resuming {first.output_dir}" in text
    assert (first.output_dir / "console.txt").read_text().count("$ prompt-diffusion train") == 2

    code, text = run_cli("table", str(spec_path), "--output-dir", str(out), "--csv", str(tmp_path / "toy.csv"))
    assert code == 0 and "Missing or incomplete" not in text
    rows = [line for line in text.splitlines() if line.startswith(("| CoOp |", "| CoOpPD |"))]
    assert len(rows) == 2 and all(row.endswith("| 2/2 |") for row in rows)  # one dataset: no average panel
    # base and new of each method: mean ± std over the two seeds; CoOpPD also Δ vs host ± SE [seeds ± SE]
    # for base, new and H
    assert rows[0].count("±") == 2 and rows[1].count("±") == 2 + 3 * 2 and "Δ vs host Base" in text
    assert len((tmp_path / "toy.csv").read_text().splitlines()) == 1 + 2 * 3

    code, text = run_cli(*sweep)
    assert code == 0 and "8 runs, 8 finished, 0 to run" in text

    # a finished run whose config is no longer what the spec gives it (here: as if OPTIM.LR's value had
    # changed in a trainer file or a default since): the folder name cannot show it; the record does
    record = first.output_dir / "run_config.yaml"
    original = record.read_text()
    recorded = yaml.safe_load(original)
    recorded["OPTIM"]["LR"] = 0.125
    record.write_text(yaml.safe_dump(recorded))
    for argv in (sweep, sweep + ["--dry-run"]):
        code, text = run_cli(*argv)
        assert code == 1 and "nothing was launched" in text
        assert f"{first.output_dir}: OPTIM.LR: 0.125 -> " in text and text.count("OPTIM.LR") == 1

    # a changed TRAINER.PD default makes a PD run stale, not a host run (which never reads those keys)
    record.write_text(original)
    runs = [run for chain in expand(load_spec(str(spec_path)), out) for run in chain.runs]
    host_run = next(run for run in runs if run.trainer == "CoOp")
    pd_run = next(run for run in runs if run.trainer == "CoOpPD")
    records = {run.output_dir: (run.output_dir / "run_config.yaml").read_text() for run in (host_run, pd_run)}
    for run in (host_run, pd_run):
        changed = yaml.safe_load(records[run.output_dir])
        changed["TRAINER"]["PD"]["OVERFIT"]["ITERS"] = 7
        (run.output_dir / "run_config.yaml").write_text(yaml.safe_dump(changed))
    code, text = run_cli(*sweep, "--dry-run")
    assert code == 1 and f"{pd_run.output_dir}: TRAINER.PD.OVERFIT.ITERS: 7 -> " in text
    assert str(host_run.output_dir) + ":" not in text

    # keys only zero-shot CLIP reads (TRAINER.ZEROSHOT), absent from a record made before they existed:
    # neither a prompt learner's run nor a PD run is stale
    for run in (host_run, pd_run):
        older = yaml.safe_load(records[run.output_dir])
        del older["TRAINER"]["ZEROSHOT"]
        (run.output_dir / "run_config.yaml").write_text(yaml.safe_dump(older))
    code, text = run_cli(*sweep, "--dry-run")
    assert code == 0 and "nothing was launched" not in text


def test_slurm_array_task_runs_its_chain_and_reports_the_failure(tmp_path):
    """submitit's in-process debug executor stands in for SLURM: one array task per unfinished
    chain; a task stops its chain at the first failing run and returns it."""
    from dataclasses import replace as with_changes

    from prompt_diffusion.sweep import submit_slurm

    spec = load_spec(write_spec(tmp_path, GOOD.replace("[1]", "[1, 2]")))
    done, broken = expand(spec, tmp_path / "out")
    for run in done.runs:
        write_result_log(run.output_dir, 70.0, training=run.training)
    train = with_changes(broken.runs[0], config_file=tmp_path / "no_such_config.yaml")
    broken.runs = [train] + broken.runs[1:]
    jobs = submit_slurm([done, broken], str(tmp_path / "data"), tmp_path / "slurm", {"timeout_min": 5},
                        cluster="debug")
    assert len(jobs) == 1  # the finished chain is not submitted
    failures = jobs[0].result()
    assert len(failures) == 1 and str(train.output_dir) in failures[0] and "no_such_config.yaml" in failures[0]
    assert not broken.runs[1].output_dir.exists()  # the evaluation of the failed training never ran


def test_profiles_put_their_keys_before_the_opts_and_the_table_says_how_pd_differs(tmp_path):
    """A spec's ``profiles`` (every method) and a method's (its runs) are the shipped profiles' keys,
    before the opts that follow them; the PD rows' settings beside the shipped defaults are listed."""
    from prompt_diffusion.plugins import load_plugins
    from prompt_diffusion.sweep.plan import merged_config, pd_settings_notes

    load_plugins()
    spec = load_spec(str(write_spec(tmp_path, """
protocol: base2new
seeds: [1]
profiles: [toy_cpu]
opts: {OPTIM.MAX_EPOCH: 3}
methods:
  CoCoOp: CoCoOp/vit_b16_c4_ep10_batch1_ctxv1
  CoCoOpPD:
    config: CoCoOp/vit_b16_c4_ep10_batch1_ctxv1
    profiles: [toy_pd]
    opts: {TRAINER.PD.OVERFIT.ITERS: 2}
datasets: [toy_world]
""")))
    host, pd = spec.methods
    host_cfg, pd_cfg = merged_config(host, spec), merged_config(pd, spec)
    assert host_cfg.MODEL.BACKBONE.NAME == "toy" and host_cfg.OPTIM.MAX_EPOCH == 3  # the profile, then the opts
    assert pd_cfg.TRAINER.PD.COND == "image_feature" and pd_cfg.TRAINER.PD.OVERFIT.ITERS == 2
    assert host_cfg.TRAINER.PD.COND == "meta_net"  # toy_pd is the PD method's only
    (note,) = pd_settings_notes(spec)
    assert note.startswith("CoCoOpPD: ") and "COND image_feature (shipped meta_net)" in note
    assert "OVERFIT.ITERS 2 (shipped 1)" in note and "GENERATOR_SIZE.WIDTH 128 (shipped 512)" in note
    with pytest.raises(SpecError, match=r"profiles must name shipped profiles \(.*toy_cpu.*\); got \['toy_gpu'\]"):
        load_spec(str(write_spec(tmp_path, "protocol: base2new\nseeds: [1]\nprofiles: [toy_gpu]\n"
                                           "methods: {CoOp: CoOp/vit_b16}\ndatasets: [toy_world]\n")))


def test_a_background_sweep_killed_leaves_no_run_going(tmp_path):
    """A sweep started as a shell's background job (SIGINT ignored, inherited by all it starts), then
    killed: its fork server ends, the kernel sends the running child Ctrl-C, and the child stops as
    after Ctrl-C (its log says so) instead of training on behind a sweep that is gone."""
    import signal
    import subprocess
    import sys

    import yaml

    spec = {"protocol": "base2new", "seeds": [1], "shots": 1, "datasets": ["toy_world"],
            "opts": {**TINY_OPTS, "MODEL.BACKBONE.NAME": "toy", "OPTIM.MAX_EPOCH": 400},
            "methods": {"CoOp": "CoOp/vit_b16_ep50"}}
    spec_path = tmp_path / "toy.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    training = expand(load_spec(str(spec_path)), out)[0].runs[0]
    log = training.output_dir / "log.txt"
    process = subprocess.Popen(
        [sys.executable, "-m", "prompt_diffusion", "sweep", str(spec_path), "--root", str(shared_toy_root()),
         "--output-dir", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        wait_for(lambda: log.exists() and "epoch [2/400]" in log.read_text(), "the training's second epoch")
    finally:
        process.kill()  # the sweep alone: its child is the fork server's
        process.wait()
    wait_for(lambda: "Interrupted (Ctrl-C)" in log.read_text(), "the orphaned run to stop", timeout=60)
    assert training.status() != "complete"


def test_a_lost_exit_status_counts_a_run_by_its_folder(tmp_path, monkeypatch):
    """multiprocessing reports 255 for a fork-server child whose status the fork server lost: a run
    whose folder then holds its complete result counts as finished (as the next sweep would count
    it), said in its console; one whose folder does not stays a failure with that code."""
    import yaml

    from prompt_diffusion.sweep import run as sweep_run
    from prompt_diffusion.sweep.child import LOST_STATUS

    spec = {"protocol": "base2new", "seeds": [1], "shots": 1, "datasets": ["toy_world"],
            "opts": {**TINY_OPTS, "MODEL.BACKBONE.NAME": "toy"},
            "methods": {"ZeroshotCLIP": {"config": "CoOp/vit_b16", "train": False}}}
    spec_path = tmp_path / "toy.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    first, second = expand(load_spec(str(spec_path)), tmp_path / "out")[0].runs
    real = sweep_run.run_command
    monkeypatch.setattr(sweep_run, "run_command", lambda *args: (real(*args), LOST_STATUS)[1])
    assert sweep_run.run_one(first, str(shared_toy_root())) == (0, "")
    assert "the fork server lost the run's status" in (first.output_dir / "console.txt").read_text()
    monkeypatch.setattr(sweep_run, "run_command", lambda *args: LOST_STATUS)  # the run never ran
    assert sweep_run.run_one(second, str(shared_toy_root()))[0] == LOST_STATUS


def wait_for(condition, what: str, timeout: float = 240.0) -> None:
    import time

    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


def test_slurm_array_through_submitits_local_executor_resumes_after_a_cancel(tmp_path):
    """``sweep --slurm`` with submitit's local executor: the chains pickled and submitted as an array
    of tasks that run as processes here. Cancelled while a training runs (submitit's cancel), the task
    and its run end (the run's log says it was interrupted); the same command then submits only the
    unfinished chains, and the interrupted run resumes from its checkpoint."""
    import yaml

    from prompt_diffusion.sweep import submit_slurm

    spec = {"protocol": "base2new", "seeds": [1, 2], "shots": 1, "datasets": ["toy_world"],
            "opts": {**TINY_OPTS, "MODEL.BACKBONE.NAME": "toy", "OPTIM.MAX_EPOCH": 40},
            "methods": {"CoOp": "CoOp/vit_b16_ep50"}}
    spec_path = tmp_path / "toy.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    out, root = tmp_path / "out", str(shared_toy_root())
    chains = expand(load_spec(str(spec_path)), out)
    jobs = submit_slurm(chains, root, out / "slurm", {"timeout_min": 10}, cluster="local")
    assert len(jobs) == 2 and all(type(job).__name__ == "LocalJob" for job in jobs)
    trainings = [chain.runs[0] for chain in chains]  # one task per chain, in order
    training = dict(zip(jobs, trainings))

    def cancel_each_in_its_second_epoch() -> bool:  # the tasks may start far apart on a loaded machine
        for job, run in list(training.items()):
            log = run.output_dir / "log.txt"
            if log.exists() and "epoch [2/40]" in log.read_text():
                job.cancel()
                del training[job]
        return not training
    wait_for(cancel_each_in_its_second_epoch, "both trainings' second epoch")
    wait_for(lambda: all(job.done() for job in jobs), "the cancelled tasks to end", timeout=60)
    wait_for(lambda: all("Interrupted (Ctrl-C)" in (run.output_dir / "log.txt").read_text() for run in trainings),
             "the runs of the cancelled tasks to stop", timeout=60)
    assert all(run.status() != "complete" for run in trainings)

    code, text = run_cli("sweep", str(spec_path), "--root", root, "--output-dir", str(out), "--slurm",
                         "--slurm-cluster", "local", "--slurm-time", "10")
    pending = [chain for chain in chains if chain.pending()]
    assert code == 0 and f"submitted {len(pending)} array task(s): " in text
    wait_for(lambda: all(run.status() == "complete" for chain in chains for run in chain.runs), "the resubmitted chains")
    for run in trainings:  # resumed from its last epoch, not trained again from scratch
        reruns = sorted(run.output_dir.glob("log.txt-*"))
        assert reruns and "Found checkpoint" in reruns[-1].read_text()
