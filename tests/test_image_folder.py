"""ImageFolder: one's own images (train/<class>/..., optional val/ and test/) as a dataset."""
from pathlib import Path

import pytest

from prompt_diffusion import cli
from prompt_diffusion.config import extend_cfg
from prompt_diffusion.data.image_folder import ImageFolder
from prompt_diffusion.data.splits import DatasetSetupError
from prompt_diffusion.engine import get_cfg_default

from helpers import make_image_folder

CLASSES = ["red_square", "green_circle", "blue_star", "yellow_moon"]


def folder_cfg(root: Path, **opts):
    cfg = extend_cfg(get_cfg_default())
    cfg.DATASET.NAME = "ImageFolder"
    cfg.DATASET.ROOT = str(root)
    cfg.SEED = 1
    for key, value in opts.items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return cfg


def test_train_and_test_folders_give_sorted_labels_and_folder_names_with_spaces(tmp_path):
    make_image_folder(tmp_path / "train", CLASSES, per_class=5, size=8)
    make_image_folder(tmp_path / "test", CLASSES[:3], per_class=2, size=8, seed=1)
    data = ImageFolder(folder_cfg(tmp_path))
    assert data.classnames == ["blue star", "green circle", "red square", "yellow moon"]
    # no val/: one image of each class's five (VAL_FRACTION) moves from train to val, never a test image
    assert (len(data.train_x), len(data.val), len(data.test)) == (16, 4, 6)
    val, train, test = ({d.impath for d in split} for split in (data.val, data.train_x, data.test))
    assert all(Path(path).parts[-3] == "train" for path in val) and not val & (train | test)
    assert {d.classname for d in data.test} == {"blue star", "green circle", "red square"}
    assert all(Path(d.impath).parent.name.replace("_", " ") == d.classname for d in data.train_x + data.test)


def test_few_shot_and_base_new_halves_work_as_on_the_benchmarks(tmp_path):
    make_image_folder(tmp_path / "train", CLASSES, per_class=6, size=8)
    make_image_folder(tmp_path / "test", CLASSES, per_class=2, size=8, seed=1)
    shots = ImageFolder(folder_cfg(tmp_path, **{"DATASET.NUM_SHOTS": 2}))
    assert len(shots.train_x) == 8 and (tmp_path / "split_fewshot" / "shot_2-seed_1.json").is_file()
    again = ImageFolder(folder_cfg(tmp_path, **{"DATASET.NUM_SHOTS": 2}))  # the cache: the same images
    assert [d.impath for d in again.train_x] == [d.impath for d in shots.train_x]
    new = ImageFolder(folder_cfg(tmp_path, **{"DATASET.NUM_SHOTS": 2, "DATASET.SUBSAMPLE_CLASSES": "new"}))
    assert new.classnames == ["red square", "yellow moon"] and {d.label for d in new.test} == {0, 1}


def test_classnames_txt_names_the_classes(tmp_path):
    make_image_folder(tmp_path / "train", ["n01", "n02"], per_class=3, size=8)
    make_image_folder(tmp_path / "test", ["n01", "n02"], per_class=1, size=8)
    (tmp_path / "classnames.txt").write_text("n01 tabby cat\nn02 golden retriever\n")
    assert ImageFolder(folder_cfg(tmp_path)).classnames == ["tabby cat", "golden retriever"]
    (tmp_path / "classnames.txt").write_text("n01 tabby cat\n")
    with pytest.raises(DatasetSetupError, match=r"classnames\.txt: class folder\(s\) \['n02'\]"):
        ImageFolder(folder_cfg(tmp_path))


def test_one_folder_is_split_per_class_by_a_fixed_seed(tmp_path):
    make_image_folder(tmp_path / "train", CLASSES[:2], per_class=10, size=8)
    first, second = ImageFolder(folder_cfg(tmp_path)), ImageFolder(folder_cfg(tmp_path))
    assert (len(first.train_x), len(first.val), len(first.test)) == (14, 2, 4)
    paths = [{d.impath for d in split} for split in (first.train_x, first.val, first.test)]
    assert sum(map(len, paths)) == len(set.union(*paths)) == 20  # disjoint, nothing lost
    assert [d.impath for d in second.test] == [d.impath for d in first.test]


@pytest.mark.parametrize("breakage, message", [
    ("corrupt", r"not a readable image: .*train/blue_star/0000\.png \(UnidentifiedImageError\)"),
    ("text", r"not a readable image: .*train/blue_star/notes\.txt"),
    ("empty", r"test/blue_star: empty class folder"),
    ("unknown", r"test/purple_cube: class 'purple_cube' is not a class folder of .*train"),
    ("no_train", r"ImageFolder: .*/train not found; expected .*/train/<class>/<image>"),
])
def test_bad_folders_are_one_error_naming_the_path(tmp_path, breakage, message):
    make_image_folder(tmp_path / "train", CLASSES[:3], per_class=2, size=8)
    make_image_folder(tmp_path / "test", CLASSES[:2], per_class=1, size=8)
    if breakage == "corrupt":
        (tmp_path / "train" / "blue_star" / "0000.png").write_bytes(b"\x89PNG truncated")
    elif breakage == "text":
        (tmp_path / "train" / "blue_star" / "notes.txt").write_text("taken on holiday")
    elif breakage == "empty":
        (tmp_path / "test" / "blue_star").mkdir()
    elif breakage == "unknown":
        make_image_folder(tmp_path / "test", ["purple_cube"], per_class=1, size=8)
    else:
        import shutil
        shutil.rmtree(tmp_path / "train")
    with pytest.raises(DatasetSetupError, match=message):
        ImageFolder(folder_cfg(tmp_path))


def test_train_refuses_a_bad_folder_before_writing_the_run_folder(tmp_path, capsys):
    make_image_folder(tmp_path / "images" / "train", CLASSES[:2], per_class=2, size=8)
    (tmp_path / "images" / "train" / "red_square" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    code = cli.main(["train", "--root", str(tmp_path / "images"), "--trainer", "CoOp", "--output-dir", str(out),
                     "--dataset-config-file", "configs/datasets/image_folder.yaml",
                     "--config-file", "configs/profiles/toy_cpu.yaml"])
    assert code == 1 and not out.exists()
    assert "red_square/broken.jpg" in capsys.readouterr().err


def test_data_check_reports_an_image_folder(tmp_path, capsys):
    make_image_folder(tmp_path / "train", CLASSES[:2], per_class=3, size=8)
    assert cli.main(["data", "check", "--root", str(tmp_path), "--dataset", "ImageFolder"]) == 0
    report = capsys.readouterr().out
    assert "ImageFolder" in report and "ok" in report and "classes 2/-" in report
    (tmp_path / "train" / "green_circle" / "0001.png").write_bytes(b"")
    assert cli.main(["data", "check", "--root", str(tmp_path), "--dataset", "ImageFolder"]) == 1
    assert "green_circle/0001.png" in capsys.readouterr().out
