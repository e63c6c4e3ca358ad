"""configs/... paths name the installed package's configs; the CPU profile covers every trainer."""
import pytest

from prompt_diffusion.cli import build_parser
from prompt_diffusion.commands.train import setup_cfg
from prompt_diffusion.config import extend_cfg
from prompt_diffusion.engine import get_cfg_default
from prompt_diffusion.shipped import CONFIGS_DIR


def test_a_configs_path_missing_from_the_working_folder_is_the_shipped_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(
        ["train", "--dataset-config-file", "configs/datasets/toy_world.yaml",
         "--config-file", "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml",
         "--config-file", "./configs/profiles/toy_cpu.yaml"])
    notes = []
    cfg = setup_cfg(args, notes)
    assert cfg.DATASET.NAME == "ToyWorld" and cfg.OPTIM.MAX_EPOCH == 2 and cfg.MODEL.BACKBONE.NAME == "toy"
    assert cfg.TRAINER.COOP.CTX_INIT == "a photo of a"  # the trainer file, then the profile on top
    assert len(notes) == 1 and str(CONFIGS_DIR) in notes[0] and "configs/profiles/toy_cpu.yaml" in notes[0]


def test_a_file_in_the_working_folder_wins_and_a_missing_one_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs" / "datasets").mkdir(parents=True)
    (tmp_path / "configs" / "datasets" / "toy_world.yaml").write_text("DATASET:\n  NAME: ToySizes\n")
    notes = []
    cfg = setup_cfg(build_parser().parse_args(["train", "--dataset-config-file", "configs/datasets/toy_world.yaml"]),
                    notes)
    assert cfg.DATASET.NAME == "ToySizes" and notes == []
    with pytest.raises(FileNotFoundError, match=r"--config-file configs/trainers/CoOp/nope\.yaml: no such file"):
        setup_cfg(build_parser().parse_args(["train", "--config-file", "configs/trainers/CoOp/nope.yaml"]))


def test_the_cpu_profile_sets_fp32_for_every_trainer_the_config_knows():
    cfg = extend_cfg(get_cfg_default())
    cfg.merge_from_file(str(CONFIGS_DIR / "profiles" / "toy_cpu.yaml"))
    precisions = {name: node.PREC for name, node in cfg.TRAINER.items() if hasattr(node, "get") and "PREC" in node}
    assert precisions and set(precisions.values()) == {"fp32"}, precisions


def test_every_pd_key_is_set_by_a_shipped_config_or_spec_or_is_a_research_knob():
    """``TRAINER.PD`` keys earn their place: each is set by a shipped profile, trainer config or
    experiment spec (its opts or swept key), or lives under ``RESEARCH``; ``ADAPTER`` is the command
    line's (a trainer registered without an adapter)."""
    import yaml

    from prompt_diffusion.run_record import flat_keys

    keys = {f"TRAINER.PD.{key}" for key in flat_keys(extend_cfg(get_cfg_default()).TRAINER.PD)}
    set_somewhere = set()
    for path in (CONFIGS_DIR / "profiles").glob("*.yaml"):
        set_somewhere |= set(flat_keys(yaml.safe_load(path.read_text())))
    for path in (CONFIGS_DIR / "trainers").rglob("*.yaml"):
        set_somewhere |= set(flat_keys(yaml.safe_load(path.read_text()) or {}))
    for path in (CONFIGS_DIR / "experiments").glob("*.yaml"):
        spec = yaml.safe_load(path.read_text())
        set_somewhere |= set(spec.get("opts") or {}) | {(spec.get("variants") or {}).get("key")}
        for entry in spec["methods"].values():
            set_somewhere |= set((entry.get("opts") or {}) if isinstance(entry, dict) else {})
    unset = sorted(key for key in keys - set_somewhere
                   if not key.startswith("TRAINER.PD.RESEARCH.") and key != "TRAINER.PD.ADAPTER")
    assert unset == []
    assert {"TRAINER.PD.RESEARCH.REMOVE_CLASS_MEAN", "TRAINER.PD.RESEARCH.VAE_KL_WEIGHT"} <= keys
