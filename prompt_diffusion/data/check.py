"""``prompt-diffusion data check``: is each benchmark dataset set up as CoOp's DATASETS.md says?

For every dataset: present or not, the split sizes found against the expected ones
(``split_counts.json``), missing files and images named, and the exact fix (which file to
download and where it goes). Uses the loaders' own reading code, so what passes here loads.
"""
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Type

from prompt_diffusion.data.benchmark import (
    BenchmarkDataset, SplitFileDataset, count_classes, expected_split_counts, split_sizes,
)
from prompt_diffusion.data.splits import (
    MAX_LISTED, DatasetSetupError, SplitFileError, missing_images,
)

COUNT_KEYS = ("train", "val", "test", "classes")


@dataclass
class DatasetCheck:
    """The findings for one dataset; ``ok`` when present and without problems."""

    name: str
    dataset_dir: str
    present: bool = False
    found: Dict[str, Optional[int]] = field(default_factory=dict)
    expected: Dict[str, Optional[int]] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    fixes: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.present and not self.problems

    @property
    def status(self) -> str:
        if not self.present:
            return "ABSENT"
        return "ok" if self.ok else "PROBLEM"


def check_dataset(
    cls: Type[BenchmarkDataset], root: str, expected: Optional[Dict[str, Optional[int]]] = None
) -> DatasetCheck:
    """Inspect ``<root>/<cls.dataset_dir>`` without loading images or needing a config.

    ``expected``: ``{"train", "val", "test", "classes"}`` sizes to compare with; default CoOp's
    (``split_counts.json``), none for a dataset without published sizes (``ImageFolder``).
    """
    dataset_dir = os.path.normpath(os.path.join(os.path.abspath(os.path.expanduser(root)), cls.dataset_dir))
    if expected is None:
        expected = expected_split_counts().get(cls.__name__, {})
    check = DatasetCheck(cls.__name__, dataset_dir, expected=dict(expected))
    if not os.path.isdir(dataset_dir):
        check.fixes.append(f"create {dataset_dir} with:\n{cls.setup_text(dataset_dir)}")
        return check
    check.present = True
    missing = cls.missing_required(dataset_dir)
    if missing:
        check.problems.extend(f"missing: {os.path.join(dataset_dir, path)}" for path in missing)
        check.fixes.append(cls.setup_text(dataset_dir, only=missing))
        return check
    try:
        entries = cls.read_entries(dataset_dir)
    except (DatasetSetupError, SplitFileError, OSError) as err:
        check.problems.append(str(err))
        check.fixes.append(cls.setup_text(dataset_dir))
        return check

    check.found = dict(split_sizes(entries), classes=count_classes(entries))
    differing = [key for key in COUNT_KEYS if check.expected and check.found.get(key) != check.expected.get(key)]
    if differing:
        check.problems.append("sizes differ from CoOp's: " + ", ".join(
            f"{key} {check.found.get(key)} (expected {check.expected.get(key)})" for key in differing))
        if issubclass(cls, SplitFileDataset):
            check.fixes.append(f"use CoOp's split file:\n{cls.setup_text(dataset_dir, only=[cls.split_file])}")
        else:
            check.fixes.append(f"get the complete dataset again:\n{cls.setup_text(dataset_dir)}")

    if not cls.listed_from_disk:
        all_entries = [entry for items in entries.values() for entry in items]
        absent = missing_images(all_entries, os.path.join(dataset_dir, cls.image_subdir))
        if absent:
            shown = "".join(f"\n      {path}" for path in absent[:MAX_LISTED])
            check.problems.append(f"{len(absent)} of {len(all_entries)} listed images are not on "
                                  f"disk, e.g.:{shown}")
            only = [path for path, _ in cls.required if path != getattr(cls, "split_file", None)]
            check.fixes.append(f"(re-)extract the images so the listed paths exist under "
                               f"{os.path.join(dataset_dir, cls.image_subdir)}:\n"
                               f"{cls.setup_text(dataset_dir, only=only)}")

    renamed = cls.classname_mismatches(entries)
    if renamed:
        examples = "; ".join(f"{got!r} (upstream: {want!r})" for _, got, want in renamed[:MAX_LISTED])
        check.warnings.append(f"{len(renamed)} images have class names other than upstream's "
                              f"naming rule gives, e.g. {examples}")
    return check


def format_check(check: DatasetCheck) -> str:
    """A few indented lines per dataset: status, sizes found/expected, problems and fixes."""
    lines = [f"{check.name:<20} {check.status:<8} {check.dataset_dir}"]
    if check.found:
        lines.append("    " + "  ".join(
            f"{key} {_count(check.found.get(key))}/{_count(check.expected.get(key))}"
            for key in COUNT_KEYS))
    lines += [f"    problem: {text}" for text in check.problems]
    lines += [f"    warning: {text}" for text in check.warnings]
    lines += ["    fix: " + text.replace("\n", "\n         ") for text in check.fixes]
    return "\n".join(lines)


def _count(value: Optional[int]) -> str:
    return "-" if value is None else str(value)
