"""prompt-diffusion data check --root DIR [--dataset NAME ...]: check the benchmark datasets.

Prints, for each dataset, whether it is present, its split sizes against CoOp's, missing files
and images, and the fix. Exit code 0 when every present (or named) dataset is fine and at least
one is present, else 1.

Example: prompt-diffusion data check --root $DATA --dataset DescribableTextures
"""
import argparse
import sys
from typing import List

from tqdm import tqdm

from prompt_diffusion.commands import HelpFormatter


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "data", help="check the benchmark datasets (CoOp layout)",
        description="Tools for the 15 CoOp benchmark datasets.",
    )
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    check = actions.add_parser(
        "check", help="report which datasets are set up correctly under --root and how to fix the rest",
        description="For each dataset: present or not, split sizes found against CoOp's, missing files and "
                    "images, and which file to download and where it goes. Exit code 1 when a dataset has "
                    "problems, a named one is absent, or none is found.\n\n"
                    "Example: prompt-diffusion data check --root $DATA --dataset DescribableTextures",
        formatter_class=HelpFormatter,
    )
    check.add_argument("--root", required=True, help="DATASET.ROOT: the folder holding the datasets")
    check.add_argument("--dataset", action="append", metavar="NAME",
                       help="check only this dataset (registry name, e.g. OxfordPets; ImageFolder: --root is a "
                            "folder of one's own images, train/<class>/<image>); repeatable")
    check.set_defaults(func=run_check)
    parser.set_defaults(func=lambda args: parser.print_help() or 0)


def run_check(args: argparse.Namespace) -> int:
    from prompt_diffusion.data import BENCHMARK_DATASETS, CHECKABLE_DATASETS
    from prompt_diffusion.data.check import check_dataset, format_check

    names: List[str] = args.dataset or list(BENCHMARK_DATASETS)
    unknown = [name for name in names if name not in CHECKABLE_DATASETS]
    if unknown:
        print(f"error: unknown dataset(s) {unknown}; choose from {sorted(CHECKABLE_DATASETS)}",
              file=sys.stderr)
        return 2
    print(f"Dataset root: {args.root}")
    checks = [check_dataset(CHECKABLE_DATASETS[name], args.root)
              for name in tqdm(names, desc="checking", leave=False, disable=True if len(names) == 1 else None)]
    for check in checks:
        print(format_check(check))
    n_ok = sum(check.ok for check in checks)
    n_absent = sum(not check.present for check in checks)
    n_bad = len(checks) - n_ok - n_absent
    print(f"Summary: {n_ok} ok, {n_bad} with problems, {n_absent} absent")
    if n_absent == len(checks):
        print(f"No dataset found under {args.root}: is --root the folder that holds the dataset folders?")
    failed = n_bad > 0 or n_absent == len(checks) or (args.dataset is not None and n_absent > 0)
    return 1 if failed else 0
