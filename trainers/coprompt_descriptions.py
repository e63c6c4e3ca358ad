"""Reading CoPrompt's LLM-written class descriptions.

CoPrompt ships one JSON file per dataset (its ``gpt_file/`` folder), ``{class name: [description,
...]}`` with class names written with spaces. The trainer's text consistency loss compares the
prompted class features with the frozen CLIP features of one randomly drawn description per class.
The files are not part of this package: ``TRAINER.CoPrompt.DESCRIPTIONS_DIR`` points at a folder
holding them (download ``gpt_file/`` from https://github.com/ShuvenduRoy/CoPrompt).
"""
import json
from pathlib import Path
from typing import List, Sequence

from .coprompt_constants import description_file_name


def description_file(directory: str, dataset_name: str) -> Path:
    """Path of the description file of ``dataset_name`` in ``directory``; a clear error if it is absent."""
    if not directory:
        raise ValueError(
            "TRAINER.CoPrompt.DESCRIPTIONS_DIR is empty: set it to a folder holding CoPrompt's description "
            "files (<dataset>_prompt.json, from the gpt_file/ folder of https://github.com/ShuvenduRoy/CoPrompt)"
        )
    path = Path(directory).expanduser() / description_file_name(dataset_name)
    if not path.is_file():
        raise FileNotFoundError(
            f"no CoPrompt description file for dataset '{dataset_name}': expected {path} "
            "(TRAINER.CoPrompt.DESCRIPTIONS_DIR; files come from the gpt_file/ folder of "
            "https://github.com/ShuvenduRoy/CoPrompt)"
        )
    return path


def load_class_descriptions(path: Path, classnames: Sequence[str]) -> List[List[str]]:
    """The descriptions of each class of ``classnames``, in that order, read from ``path``.

    Class names are looked up with ``_`` replaced by spaces, as upstream. Every class must be in
    the file, with the same (non-zero) number of descriptions: the loss draws one index for all
    classes at each step.
    """
    with open(path, encoding="utf-8") as handle:
        table = json.load(handle)
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected a JSON object {{class name: [descriptions]}}, got {type(table).__name__}")
    descriptions = []
    for classname in classnames:
        key = classname.replace("_", " ")
        if key not in table:
            raise KeyError(
                f"{path}: class '{key}' has no descriptions (the file has {len(table)} classes, "
                f"e.g. {sorted(table)[:5]})"
            )
        entries = table[key]
        if not isinstance(entries, list) or not entries or not all(isinstance(e, str) for e in entries):
            raise ValueError(f"{path}: class '{key}' must map to a non-empty list of strings")
        descriptions.append(entries)
    first = len(descriptions[0])
    for classname, entries in zip(classnames, descriptions):
        if len(entries) != first:
            raise ValueError(
                f"{path}: every class needs the same number of descriptions; '{classnames[0]}' has {first}, "
                f"'{classname}' has {len(entries)}"
            )
    return descriptions
