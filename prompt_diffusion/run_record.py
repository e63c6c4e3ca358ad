"""What a run folder records about its run, so that the folder alone describes the model in it.

``prompt-diffusion train`` writes, beside ``log.txt``:

* ``run_config.yaml``: the resolved config (defaults, config files, flags, opts: the trainer is
  ``TRAINER.NAME``), written before the trainer is built;
* ``classnames.txt``: the dataset's class names, one a line in label order, once it is built.

``--model-dir RUN`` without ``--config-file`` then starts from RUN's record (``eval``, ``diagnose``,
``predict``): flags and opts given on top change it, a dataset file replaces its dataset, and a key
that makes another model (``MODEL_KEYS``: backbone, trainer, input size, prompt and generator
shapes) differing from the record is an error naming both values. The sweep compares the same
record with what its spec now gives a run (``sweep.run.stale_runs``), less ``PLACEMENT_KEYS``.
"""
import os
import os.path as osp
from typing import Any, Dict, List, Optional

from yacs.config import CfgNode

RUN_CONFIG = "run_config.yaml"
CLASSNAMES_FILE = "classnames.txt"
# where a run is, not what it is: the flags that place it (and the workers, capped per machine)
PLACEMENT_KEYS = ("DATASET.ROOT", "OUTPUT_DIR", "SEED", "RESUME", "DATALOADER.NUM_WORKERS")
# keys whose value makes another model: a checkpoint of one does not load (or means nothing) in the other
MODEL_KEYS = ("TRAINER.NAME", "MODEL.BACKBONE.NAME", "INPUT.SIZE", "TRAINER.PD.GENERATOR", "TRAINER.PD.COND",
              "TRAINER.PD.DEEP_TOKENS")
MODEL_KEY_PARTS = ("N_CTX", "PROMPT_DEPTH", "TRAINER.PD.GENERATOR_SIZE.")


def flat_keys(node: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"A.B": value}`` of a nested config (a CfgNode or a plain dict)."""
    if not isinstance(node, dict):
        return {prefix: node}
    return {key: value for name, child in node.items()
            for key, value in flat_keys(child, f"{prefix}.{name}" if prefix else str(name)).items()}


def is_model_key(key: str) -> bool:
    return key in MODEL_KEYS or any(part in key for part in MODEL_KEY_PARTS)


def write_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half a file."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.replace(temporary, path)


def write_run_config(output_dir: str, cfg: CfgNode) -> str:
    """``<output_dir>/run_config.yaml``: the resolved config. Returns its path."""
    path = osp.join(output_dir, RUN_CONFIG)
    write_atomically(path, cfg.dump())
    return path


def write_classnames(output_dir: str, classnames: List[str]) -> str:
    """``<output_dir>/classnames.txt``: one class name a line, in label order. Returns its path."""
    path = osp.join(output_dir, CLASSNAMES_FILE)
    write_atomically(path, "".join(f"{name}\n" for name in classnames))
    return path


def run_config_path(model_dir: str) -> str:
    """RUN's ``run_config.yaml``; a folder without one is an error saying what to give instead."""
    if not osp.isdir(model_dir):
        raise FileNotFoundError(f"--model-dir {model_dir}: no such folder")
    path = osp.join(model_dir, RUN_CONFIG)
    if not osp.isfile(path):
        raise FileNotFoundError(f"--model-dir {model_dir}: no {RUN_CONFIG} (the record prompt-diffusion train "
                                "writes); give the --config-file or --trainer, and the opts, it was trained with")
    return path


def read_classnames(path: str) -> List[str]:
    """Class names from a file, one a line (blank lines skipped); an empty file is an error."""
    if not osp.isfile(path):
        raise FileNotFoundError(f"class names file {path}: no such file")
    with open(path, "r", encoding="utf-8") as stream:
        names = [line.strip() for line in stream if line.strip()]
    if not names:
        raise ValueError(f"class names file {path}: no class names (one a line)")
    return names


def run_classnames(model_dir: str) -> List[str]:
    """The class names a run was trained on (its ``classnames.txt``)."""
    path = osp.join(model_dir, CLASSNAMES_FILE)
    if not osp.isfile(path):
        raise FileNotFoundError(f"--model-dir {model_dir}: no {CLASSNAMES_FILE} (written when the trainer is "
                                "built); give --classnames FILE")
    return read_classnames(path)


def check_same_model(recorded: CfgNode, cfg: CfgNode, model_dir: str) -> None:
    """A ``ValueError`` naming the first ``MODEL_KEYS`` key whose value in ``cfg`` is not the run's."""
    then, now = flat_keys(recorded), flat_keys(cfg)
    if then.get("TRAINER.NAME") == "":  # recorded by the sweep before train wrote the records: no trainer
        del then["TRAINER.NAME"]
    for key in sorted(k for k in then if is_model_key(k) and k in now):
        if then[key] != now[key]:
            raise ValueError(f"--model-dir {model_dir} was trained with {key} {then[key]!r}, this command gives "
                             f"{now[key]!r} (another model); drop the flag, option or config file that sets it")


def checkpoint_epoch(model_dir: str, load_epoch: Optional[int]) -> Optional[int]:
    """The epoch to load from RUN: ``load_epoch`` when given; else None (``model-best``) when RUN has a
    ``model-best.pth.tar``; else the last epoch its record trains (``OPTIM.MAX_EPOCH``)."""
    if load_epoch is not None or not osp.isdir(model_dir):
        return load_epoch
    if any(osp.isfile(osp.join(model_dir, name, "model-best.pth.tar")) for name in os.listdir(model_dir)):
        return None
    record = osp.join(model_dir, RUN_CONFIG)
    if not osp.isfile(record):
        return None
    with open(record, "r", encoding="utf-8") as stream:
        return int(CfgNode.load_cfg(stream).OPTIM.MAX_EPOCH)
