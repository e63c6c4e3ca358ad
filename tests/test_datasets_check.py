"""``prompt-diffusion data check`` on generated trees: correct, broken and absent datasets."""
import json

from test_datasets import PER_SPLIT, build_tree

from prompt_diffusion.cli import main
from prompt_diffusion.data import BENCHMARK_DATASETS
from prompt_diffusion.data.check import check_dataset, format_check


def test_check_reports_broken_tree(tmp_path, capsys):
    for name in ("OxfordPets", "Caltech101", "DescribableTextures", "ImageNetR"):
        build_tree(tmp_path, name)
    (tmp_path / "caltech-101" / "split_zhou_Caltech101.json").unlink()
    removed = sorted((tmp_path / "dtd" / "images" / "blotchy").iterdir())[:3]
    for path in removed:
        path.unlink()

    code = main(["data", "check", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    sections = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
    assert set(BENCHMARK_DATASETS) <= set(sections)
    assert "PROBLEM" in sections["Caltech101"] and "PROBLEM" in sections["DescribableTextures"]
    assert "ABSENT" in sections["Food101"]
    # missing split file: named, with where to download it and where it goes
    assert f"problem: missing: {tmp_path / 'caltech-101' / 'split_zhou_Caltech101.json'}" in out
    assert "download split_zhou_Caltech101.json from https://drive.google.com/file/d/" in out
    # missing images: how many, which
    assert f"problem: 3 of {3 * sum(PER_SPLIT.values())} listed images are not on disk" in out
    assert str(removed[0]) in out
    # sizes against CoOp's (the tiny tree has far fewer images)
    assert f"train {3 * PER_SPLIT['train']}/2944  val {3 * PER_SPLIT['val']}/736" in out
    assert "sizes differ from CoOp's: train 18 (expected 2944)" in out
    assert "test 6/30000  classes 3/200" in out  # ImageNetR: test-only, 3 of 200 folders
    # absent datasets get the full setup
    assert f"create {tmp_path / 'food-101'} with:" in out
    assert "Summary: 0 ok, 4 with problems, 11 absent" in out


def test_check_passes_a_correct_tree(tmp_path):
    classnames = build_tree(tmp_path, "EuroSAT")
    expected = {split: len(classnames) * count for split, count in PER_SPLIT.items()}
    check = check_dataset(BENCHMARK_DATASETS["EuroSAT"], str(tmp_path),
                          expected=dict(expected, classes=len(classnames)))
    assert check.ok and not check.warnings, format_check(check)
    assert "train 24/24  val 20/20  test 8/8  classes 4/4" in format_check(check)


def test_check_flags_corrupt_split_and_renamed_classes(tmp_path):
    build_tree(tmp_path, "UCF101")
    build_tree(tmp_path, "EuroSAT")
    split_path = tmp_path / "ucf101" / "split_zhou_UCF101.json"
    split_path.write_text(split_path.read_text()[:-40])
    bad = check_dataset(BENCHMARK_DATASETS["UCF101"], str(tmp_path))
    assert any("split_zhou_UCF101.json is not valid JSON" in p and "line 1, column" in p
               for p in bad.problems)

    split_path = tmp_path / "eurosat" / "split_zhou_EuroSAT.json"
    split = json.loads(split_path.read_text())
    for entries in split.values():
        for entry in entries:
            entry[2] = entry[2].replace("Annual Crop Land", "AnnualCrop")
    split_path.write_text(json.dumps(split))
    renamed = check_dataset(BENCHMARK_DATASETS["EuroSAT"], str(tmp_path))
    assert renamed.warnings and "'AnnualCrop' (upstream: 'Annual Crop Land')" in renamed.warnings[0]


def test_check_exit_codes_for_named_datasets(tmp_path, capsys):
    assert main(["data", "check", "--root", str(tmp_path), "--dataset", "ImageNet"]) == 1
    assert "ABSENT" in capsys.readouterr().out
    assert main(["data", "check", "--root", str(tmp_path), "--dataset", "Imagenet"]) == 2
    assert "unknown dataset(s) ['Imagenet']" in capsys.readouterr().err
