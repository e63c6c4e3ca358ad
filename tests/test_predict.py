"""Self-describing runs and `predict`: a run folder alone evaluates, diagnoses and predicts."""
import csv
import json
from pathlib import Path

import pytest
import yaml

from prompt_diffusion import cli
from prompt_diffusion.results import read_run

from helpers import make_image_folder

CLASSES = ["red_thing", "green_thing", "blue_thing", "yellow_thing"]
TINY = ["OPTIM.MAX_EPOCH", "1", "TRAINER.PD.GENERATOR_SIZE.LAYERS", "1", "TRAINER.PD.GENERATOR_SIZE.WIDTH", "32",
        "TRAINER.PD.GENERATOR_SIZE.HEADS", "2", "TRAINER.PD.OVERFIT.ITERS", "1", "TRAINER.PD.DIAGNOSE_IMAGES", "8"]


def train_run(root: Path, out: Path, trainer: str, *config_files: str) -> Path:
    files = [part for path in config_files for part in ("--config-file", path)]
    code = cli.main(["train", "--root", str(root), "--trainer", trainer, "--seed", "1", "--output-dir", str(out),
                     "--dataset-config-file", "configs/datasets/image_folder.yaml", *files,
                     "--config-file", "configs/profiles/toy_cpu.yaml", *TINY])
    assert code == 0 and read_run(out).status == "complete"
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A folder of images (train/, test/) and a CoOp and a CoCoOpPD run trained on it (toy CLIP, 1 epoch)."""
    tmp = tmp_path_factory.mktemp("user_runs")
    make_image_folder(tmp / "images" / "train", CLASSES, per_class=4, size=32)
    make_image_folder(tmp / "images" / "test", CLASSES, per_class=2, size=32, seed=3)
    coop = train_run(tmp / "images", tmp / "coop", "CoOp")
    pd = train_run(tmp / "images", tmp / "cocooppd", "CoCoOpPD", "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml")
    return {"root": tmp / "images", "coop": coop, "pd": pd, "tmp": tmp}


def test_a_run_folder_records_its_config_and_class_names(runs):
    record = yaml.safe_load((runs["pd"] / "run_config.yaml").read_text())
    assert record["TRAINER"]["NAME"] == "CoCoOpPD" and record["MODEL"]["BACKBONE"]["NAME"] == "toy"
    assert record["TRAINER"]["COCOOP"]["N_CTX"] == 4 and record["DATASET"]["NAME"] == "ImageFolder"
    assert (runs["pd"] / "classnames.txt").read_text().split("\n")[:2] == ["blue thing", "green thing"]


def test_model_dir_alone_evaluates_the_run_as_its_training_did(runs, capsys):
    assert cli.main(["train", "--eval-only", "--model-dir", str(runs["coop"])]) == 0
    evaluated = runs["coop"] / "eval" / "ImageFolder_all"
    assert read_run(evaluated, training=False).status == "complete"
    again, trained = (json.loads((d / "predictions_test.json").read_text()) for d in (evaluated, runs["coop"]))
    assert again == trained  # the same predictions: the record of --model-dir was the config
    record, used = (yaml.safe_load((d / "run_config.yaml").read_text()) for d in (runs["coop"], evaluated))
    assert used["TRAINER"] == record["TRAINER"] and used["MODEL"] == record["MODEL"]


def test_flags_on_top_of_the_record_change_it_and_another_model_is_refused(runs, capsys):
    other = runs["tmp"] / "other_images"
    make_image_folder(other / "train", CLASSES, per_class=1, size=32, seed=7)
    make_image_folder(other / "test", CLASSES[:2], per_class=3, size=32, seed=8)
    out = runs["tmp"] / "coop_on_other"
    assert cli.main(["train", "--eval-only", "--model-dir", str(runs["coop"]), "--root", str(other),
                     "--output-dir", str(out), "--dataset-config-file", "configs/datasets/image_folder.yaml"]) == 0
    assert len(json.loads((out / "predictions_test.json").read_text())["labels"]) == 6
    capsys.readouterr()
    assert cli.main(["train", "--eval-only", "--model-dir", str(runs["coop"]), "MODEL.BACKBONE.NAME", "RN50"]) == 1
    assert "trained with MODEL.BACKBONE.NAME 'toy', this command gives 'RN50'" in capsys.readouterr().err
    assert cli.main(["train", "--eval-only", "--model-dir", str(runs["tmp"])]) == 1
    assert "no run_config.yaml" in capsys.readouterr().err


def test_predict_gives_what_evaluation_gives_on_the_same_images(runs, tmp_path):
    out = tmp_path / "predictions.csv"
    assert cli.main(["predict", "--model-dir", str(runs["coop"]), str(runs["root"] / "test"), "--top-k", "2",
                     "--csv", str(out), "--batch-size", "3"]) == 0
    rows = list(csv.DictReader(out.open()))
    top1 = [row["class"] for row in rows if row["rank"] == "1"]
    names = (runs["coop"] / "classnames.txt").read_text().split("\n")
    evaluated = json.loads((runs["coop"] / "predictions_test.json").read_text())["predictions"]
    assert len(rows) == 2 * 8 and top1 == [names[i] for i in evaluated]  # same images, same (sorted) order
    assert all(0 <= float(row["probability"]) <= 1 for row in rows)


def test_predict_with_new_class_names_and_the_hosts_prediction(runs, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("red thing\npurple thing\n\nblue thing\n")
    image = runs["root"] / "test" / "red_thing" / "0000.png"
    out = tmp_path / "p.json"
    assert cli.main(["predict", "--model-dir", str(runs["pd"]), str(image), "--classnames", str(names),
                     "--host", "--json", str(out)]) == 0
    [found] = json.loads(out.read_text())
    assert sorted(found["classes"]) == ["blue thing", "purple thing", "red thing"]
    assert sorted(found["host_classes"]) == sorted(found["classes"])
    assert found["probabilities"] == sorted(found["probabilities"], reverse=True)
    assert abs(sum(found["probabilities"]) - 1) < 1e-4 and abs(sum(found["host_probabilities"]) - 1) < 1e-4
    assert cli.main(["predict", "--model-dir", str(runs["pd"]), str(image), "--host", "--top-k", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith(str(image)) and table[1].lstrip().startswith("host:")


def test_predicts_host_column_is_the_pd_model_evaluated_with_pd_switched_off(runs, tmp_path):
    """``--host`` on a PD run gives the top-1 that evaluating the same run with
    ``TRAINER.PD.ENABLE False`` gives (the host prompt alone), image by image."""
    out = tmp_path / "p.json"
    assert cli.main(["predict", "--model-dir", str(runs["pd"]), str(runs["root"] / "test"), "--host",
                     "--json", str(out)]) == 0
    host_top1 = [found["host_classes"][0] for found in json.loads(out.read_text())]
    evaluation = tmp_path / "host_only"
    assert cli.main(["train", "--model-dir", str(runs["pd"]), "--eval-only", "--output-dir", str(evaluation),
                     "TRAINER.PD.ENABLE", "False"]) == 0
    names = (runs["pd"] / "classnames.txt").read_text().split("\n")
    evaluated = json.loads((evaluation / "predictions_test.json").read_text())["predictions"]
    assert host_top1 == [names[i] for i in evaluated]


@pytest.mark.parametrize("breakage, message", [
    ("missing", r"nope\.png: no such image file or folder"),
    ("unreadable", r"not a readable image: .*broken\.png"),
    ("names", r"class names file .*absent\.txt: no such file"),
    ("host", r"--host: trainer CoOp is not a prompt-diffusion trainer"),
])
def test_predict_refuses_bad_input_in_one_line(runs, tmp_path, capsys, breakage, message):
    import re

    image = str(runs["root"] / "test" / "red_thing" / "0000.png")
    args = ["predict", "--model-dir", str(runs["coop"]), image, "--json", str(tmp_path / "p.json")]
    if breakage == "missing":
        args[3] = str(tmp_path / "nope.png")
    elif breakage == "unreadable":
        (tmp_path / "broken.png").write_bytes(b"png?")
        args[3] = str(tmp_path / "broken.png")
    elif breakage == "names":
        args += ["--classnames", str(tmp_path / "absent.txt")]
    else:
        args += ["--host"]
    assert cli.main(args) == 1
    error = capsys.readouterr().err.splitlines()[0]
    assert re.search(message, error) and not (tmp_path / "p.json").exists()


def test_diagnose_needs_only_the_run_folder(runs, capsys):
    assert cli.main(["diagnose", "--model-dir", str(runs["pd"]), "--max-images", "4"]) == 0
    assert "host" in capsys.readouterr().out


def test_a_record_the_sweep_wrote_without_its_trainer_checks_the_rest():
    from prompt_diffusion.config import extend_cfg
    from prompt_diffusion.engine import get_cfg_default
    from prompt_diffusion.run_record import check_same_model

    recorded = extend_cfg(get_cfg_default())  # TRAINER.NAME "": the sweep's record before train wrote one
    cfg = recorded.clone()
    cfg.TRAINER.NAME = "CoOp"
    check_same_model(recorded, cfg, "RUN")
    cfg.TRAINER.COOP.N_CTX = 4
    with pytest.raises(ValueError, match=r"RUN was trained with TRAINER.COOP.N_CTX 16, this command gives 4"):
        check_same_model(recorded, cfg, "RUN")


def test_a_pd_variant_loads_its_hosts_run_and_a_host_its_pd_runs_host_part_and_nothing_else(runs, capsys):
    """What a spec's ``weights:`` rows do: a PD variant over its host's trained run (its generator
    fresh), and the host over the host part of its PD variant's run; any other trainer is refused."""
    over_host = runs["tmp"] / "coop_run_as_cooppd"
    assert cli.main(["train", "--eval-only", "--model-dir", str(runs["coop"]), "--trainer", "CoOpPD",
                     "--output-dir", str(over_host)]) == 0
    assert read_run(over_host, training=False).status == "complete"
    assert "(a host's run): the host's weights load, the PD module stays as built" in (
        over_host / "log.txt").read_text()
    host_part = runs["tmp"] / "cocooppd_run_as_cocoop"
    assert cli.main(["train", "--eval-only", "--model-dir", str(runs["pd"]), "--trainer", "CoCoOp",
                     "--output-dir", str(host_part)]) == 0
    assert read_run(host_part, training=False).status == "complete"
    capsys.readouterr()
    for run, trainer, trained in (("coop", "CoCoOp", "CoOp"), ("pd", "VPTPD", "CoCoOpPD"), ("coop", "CoCoOpPD", "CoOp")):
        assert cli.main(["train", "--eval-only", "--model-dir", str(runs[run]), "--trainer", trainer]) == 1
        assert f"was trained with TRAINER.NAME '{trained}', this command gives '{trainer}'" in capsys.readouterr().err
