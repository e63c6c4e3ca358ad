"""Reading and writing CoOp's ``split_zhou_<Name>.json`` files, with errors that say what to fix.

A split file is ``{"train": [[impath, label, classname], ...], "val": [...], "test": [...]}``
where ``impath`` is relative to the dataset's image directory (CoOp's ``read_split`` /
``save_split`` in ``datasets/oxford_pets.py``). Reading checks the structure entry by entry and
that every listed image exists, so a wrong download or a half-extracted archive is reported with
counts and example paths instead of failing later inside a data loader.
"""
import json
import os
from typing import Any, Dict, List, Sequence, Tuple

SPLIT_NAMES = ("train", "val", "test")
# how many example paths an error message lists
MAX_LISTED = 5

SplitEntry = Tuple[str, int, str]  # (path relative to the image directory, label, classname)


class DatasetSetupError(RuntimeError):
    """A dataset folder is not in the layout the loader expects (missing or wrong files)."""


class SplitFileError(ValueError):
    """A split file is not valid JSON or does not have the split-file structure."""


def require_path(path: str, what: str, fix: str) -> str:
    """Return ``path`` if it exists, else raise :class:`DatasetSetupError` naming it and the fix."""
    if not os.path.exists(path):
        raise DatasetSetupError(f"{what} not found: {path}\n  fix: {fix}")
    return path


def read_json_file(path: str) -> Any:
    """``json.load`` with an error naming the file and the parse position."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise SplitFileError(
            f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno} "
            f"(character {err.pos}). The file is probably truncated or corrupt: download it again."
        ) from err
    except UnicodeDecodeError as err:
        raise SplitFileError(
            f"{path} is not a UTF-8 text file (byte {err.start}): download it again."
        ) from err


def load_split_entries(path: str, fix: str = "") -> Dict[str, List[SplitEntry]]:
    """Read a split file into ``{"train"|"val"|"test": [(relpath, label, classname), ...]}``.

    Raises :class:`DatasetSetupError` when the file is missing (the message carries ``fix``: which
    file to download and where it goes) and :class:`SplitFileError` on bad JSON or structure.
    """
    require_path(path, "split file", fix or f"put the split file at {path}")
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise SplitFileError(f"{path}: expected a JSON object with keys {list(SPLIT_NAMES)}, "
                             f"got {type(data).__name__}")
    missing = [name for name in SPLIT_NAMES if name not in data]
    if missing:
        raise SplitFileError(f"{path}: missing split(s) {missing}; a split file has keys "
                             f"{list(SPLIT_NAMES)}")
    splits: Dict[str, List[SplitEntry]] = {}
    for name in SPLIT_NAMES:
        entries = data[name]
        if not isinstance(entries, list):
            raise SplitFileError(f"{path}: '{name}' must be a list, got {type(entries).__name__}")
        parsed: List[SplitEntry] = []
        for index, entry in enumerate(entries):
            if (
                not isinstance(entry, (list, tuple)) or len(entry) != 3
                or not isinstance(entry[0], str) or not isinstance(entry[2], str)
                or isinstance(entry[1], bool) or not isinstance(entry[1], (int, str))
            ):
                raise SplitFileError(f"{path}: {name}[{index}] must be [impath, label, classname], "
                                     f"got {entry!r}")
            try:
                label = int(entry[1])
            except ValueError:
                raise SplitFileError(f"{path}: {name}[{index}] has a non-integer label {entry[1]!r}")
            parsed.append((entry[0], label, entry[2]))
        splits[name] = parsed
    return splits


def missing_images(entries: Sequence[SplitEntry], image_dir: str) -> List[str]:
    """Full paths of the entries whose image file is not on disk (in split order)."""
    return [
        full for full in (os.path.join(image_dir, relpath) for relpath, _, _ in entries)
        if not os.path.isfile(full)
    ]


def require_images(entries: Sequence[SplitEntry], image_dir: str, source: str, fix: str = "") -> None:
    """Raise :class:`DatasetSetupError` if any entry's image is not on disk.

    The message says how many of how many are missing, lists the first few full paths, reminds
    that split paths are relative to ``image_dir``, and appends ``fix``. Nothing is dropped.
    """
    missing = missing_images(entries, image_dir)
    if not missing:
        return
    shown = "\n    ".join(missing[:MAX_LISTED])
    more = f"\n    ... and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
    raise DatasetSetupError(
        f"{len(missing)} of {len(entries)} images listed in {source} are not on disk, e.g.:\n"
        f"    {shown}{more}\n"
        f"  Paths are relative to {image_dir}: check that the images are extracted there (not one "
        f"folder deeper), or get them again." + (f"\n{fix}" if fix else "")
    )


def check_label_names(splits: Dict[str, List[SplitEntry]], source: str) -> None:
    """Each label has one class name everywhere and labels are 0..K-1 (else SplitFileError)."""
    names: Dict[int, str] = {}
    for split_name, entries in splits.items():
        for relpath, label, classname in entries:
            if names.setdefault(label, classname) != classname:
                raise SplitFileError(
                    f"{source}: label {label} is called both {names[label]!r} and {classname!r} "
                    f"({split_name}: {relpath})"
                )
    labels = sorted(names)
    if labels and labels != list(range(len(labels))):
        gaps = sorted(set(range(labels[-1] + 1)) - set(labels))
        raise SplitFileError(f"{source}: labels must be 0..K-1; labels {gaps[:MAX_LISTED]} are "
                             f"absent (min {labels[0]}, max {labels[-1]})")


def entries_to_data(entries: Sequence[SplitEntry], image_dir: str, datum_cls: type) -> List[Any]:
    """Datum objects for entries (paths joined onto ``image_dir``)."""
    return [datum_cls(impath=os.path.join(image_dir, relpath), label=label, classname=classname)
            for relpath, label, classname in entries]


def read_split(
    path: str, image_dir: str, datum_cls: type, fix: str = ""
) -> Tuple[List[Any], List[Any], List[Any]]:
    """Train, val and test Datum lists from a split file, every listed image checked on disk.

    Raises :class:`DatasetSetupError` for a missing file (with ``fix``) or for listed images that
    are not on disk (how many, the first few paths); nothing is dropped silently.
    """
    splits = load_split_entries(path, fix)
    check_label_names(splits, path)
    require_images([entry for name in SPLIT_NAMES for entry in splits[name]], image_dir, path)
    train, val, test = (entries_to_data(splits[name], image_dir, datum_cls) for name in SPLIT_NAMES)
    return train, val, test


def to_entries(items: Sequence[Any], image_dir: str) -> List[SplitEntry]:
    """``(path relative to image_dir with '/' separators, label, classname)`` per Datum."""
    prefix = os.path.join(os.path.abspath(image_dir), "")

    def relative(path: str) -> str:
        # plain prefix strip: os.path.relpath is slow over ImageNet's 1.28M paths
        rel = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, image_dir)
        return rel.replace(os.sep, "/")

    return [(relative(item.impath), int(item.label), item.classname) for item in items]


def write_split(
    train: Sequence[Any], val: Sequence[Any], test: Sequence[Any], path: str, image_dir: str
) -> None:
    """Write a split file (paths relative to ``image_dir``) in CoOp's format, atomically."""
    data = {name: to_entries(items, image_dir) for name, items in zip(SPLIT_NAMES, (train, val, test))}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp_path = f"{path}.tmp{os.getpid()}"
    with open(tmp_path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=4, separators=(",", ": "))
    os.replace(tmp_path, path)
