"""The ``prompt-diffusion`` command line.

Each subcommand lives in its own module, which exposes ``add_parser(subparsers)``; the parser it
adds sets ``func`` (called with the parsed namespace, returns an exit code). Modules are imported
only when the command line is built, so a broken optional dependency of one command does not
break the others' ``--help``.
"""
import argparse
import importlib
import sys
import warnings
from typing import List, Optional

from prompt_diffusion import __version__

# subcommand modules, in the order ``--help`` lists them
SUBCOMMAND_MODULES: List[str] = [
    "prompt_diffusion.commands.train",
    "prompt_diffusion.commands.diagnose",
    "prompt_diffusion.commands.data",
    "prompt_diffusion.commands.sweep",
    "prompt_diffusion.commands.table",
    "prompt_diffusion.commands.demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prompt-diffusion",
        description="Prompt diffusion for CLIP prompt learners: train, evaluate, reproduce the paper.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    # the `clip` package imports pkg_resources, whose deprecation warning says nothing to our users
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
