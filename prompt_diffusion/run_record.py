"""What a run folder records about its run, so that the folder alone describes the model in it.

``prompt-diffusion train`` writes, beside ``log.txt``:

* ``run_config.yaml``: the resolved config (defaults, config files, flags, opts: the trainer is
  ``TRAINER.NAME``), written before the trainer is built;
* ``classnames.txt``: the dataset's class names, one a line in label order, once it is built.

``--model-dir RUN`` without ``--config-file`` then starts from RUN's record (``eval``, ``diagnose``,
``predict``): flags and opts given on top change it, a dataset file replaces its dataset, and a key
that makes another model (``MODEL_KEYS``: backbone, trainer, input size, prompt and generator
shapes) differing from the record is an error naming both values (``check_same_model``; a PD variant
loads its host's run and a host the host part of its PD variant's: ``trainer_kinds.same_weights``).
A rerun into a folder whose record holds another model or seed is refused before anything is
written (``check_same_run``). The sweep compares the same record with what its spec now gives a run
(``sweep.run.stale_runs``), less ``PLACEMENT_KEYS``. Paths in the record are absolute
(``absolute_paths``), so it reads the same from any working folder; ``--root`` gives another.
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
# keys that hold a path: resolved to absolute before the record is written
PATH_KEYS = ("DATASET.ROOT", "OUTPUT_DIR", "RESUME", "MODEL.BACKBONE.PATH", "MODEL.INIT_WEIGHTS",
             "DATASET.FEWSHOT_CACHE_DIR", "TRAINER.CoPrompt.DESCRIPTIONS_DIR")


def flat_keys(node: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"A.B": value}`` of a nested config (a CfgNode or a plain dict); tuples as lists, as a record
    read back from YAML holds them."""
    if not isinstance(node, dict):
        return {prefix: list(node) if isinstance(node, tuple) else node}
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


def absolute_paths(cfg: CfgNode) -> None:
    """Every non-empty ``PATH_KEYS`` value of ``cfg`` (unfrozen) made absolute (``~`` expanded), in place."""
    for key in PATH_KEYS:
        *parents, leaf = key.split(".")
        node = cfg
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(leaf), str) and node[leaf]:
            node[leaf] = osp.abspath(osp.expanduser(node[leaf]))


def _model_differences(recorded: CfgNode, cfg: CfgNode) -> List[str]:
    """The ``MODEL_KEYS`` keys whose values differ between a run's record and ``cfg``, sorted.
    ``TRAINER.NAME`` differs only where the weights do not load (``trainer_kinds.same_weights``), and
    the generator's keys count only between two prompt-diffusion trainers (a host has no generator)."""
    from prompt_diffusion.trainer_kinds import is_pd_trainer, same_weights

    then, now = flat_keys(recorded), flat_keys(cfg)
    trained, loading = then.get("TRAINER.NAME", ""), now.get("TRAINER.NAME", "")
    both_pd = bool(trained) and is_pd_trainer(trained) and is_pd_trainer(loading)
    differing = []
    for key in sorted(k for k in then if is_model_key(k) and k in now and then[k] != now[k]):
        if key == "TRAINER.NAME" and (not trained or same_weights(trained, loading)):
            continue  # no trainer recorded (the sweep recorded runs before train did), or weights that load
        if key.startswith("TRAINER.PD.") and not both_pd:
            continue
        differing.append(key)
    return differing


def check_same_model(recorded: CfgNode, cfg: CfgNode, model_dir: str) -> None:
    """A ``ValueError`` naming the first ``MODEL_KEYS`` key whose value in ``cfg`` makes another model
    than the run's (``_model_differences``)."""
    then, now = flat_keys(recorded), flat_keys(cfg)
    for key in _model_differences(recorded, cfg)[:1]:
        raise ValueError(f"--model-dir {model_dir} was trained with {key} {then[key]!r}, this command gives "
                         f"{now[key]!r} (another model); drop the flag, option or config file that sets it")


def check_same_run(output_dir: str, cfg: CfgNode) -> None:
    """Refuse a run into ``output_dir`` whose record (a run there before) has another trainer, model
    or seed than ``cfg``: its checkpoints would be resumed as this run's. A ``ValueError`` naming
    both values; nothing when the folder has no record."""
    path = osp.join(output_dir, RUN_CONFIG)
    if not osp.isfile(path):
        return
    with open(path, "r", encoding="utf-8") as stream:
        recorded = CfgNode.load_cfg(stream)
    then, now = flat_keys(recorded), flat_keys(cfg)
    differing = [key for key in ("TRAINER.NAME", "SEED") if then.get(key, "") not in ("", now.get(key))]
    for key in (differing + _model_differences(recorded, cfg))[:1]:
        raise ValueError(f"--output-dir {output_dir} holds a run with {key} {then[key]!r}, this command gives "
                         f"{now[key]!r}; give another --output-dir (or remove that run)")


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
