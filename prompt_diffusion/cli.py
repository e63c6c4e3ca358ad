"""The ``prompt-diffusion`` command line.

Each subcommand lives in its own module, which exposes ``add_parser(subparsers)``; the parser it
adds sets ``func`` (called with the parsed namespace, returns an exit code) and may set
``_resume_hint`` (said when Ctrl-C interrupts it). Modules are imported only when the command line
is built, so a broken optional dependency of one command does not break the others' ``--help``.

An error prints its message alone (exit code 1); ``--debug`` or ``PROMPT_DIFFUSION_DEBUG=1`` shows
the traceback instead. Ctrl-C prints one line saying what was interrupted (exit code 130).
"""
import argparse
import importlib
import os
import sys
from typing import List, Optional

from prompt_diffusion import __version__

# subcommand modules, in the order ``--help`` lists them
SUBCOMMAND_MODULES: List[str] = [
    "prompt_diffusion.commands.train",
    "prompt_diffusion.commands.diagnose",
    "prompt_diffusion.commands.predict",
    "prompt_diffusion.commands.data",
    "prompt_diffusion.commands.sweep",
    "prompt_diffusion.commands.table",
    "prompt_diffusion.commands.demo",
]


DEBUG_ENV = "PROMPT_DIFFUSION_DEBUG"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prompt-diffusion",
        description="Prompt diffusion for CLIP prompt learners: train, evaluate, reproduce the paper.",
        epilog="Example: prompt-diffusion demo (then prompt-diffusion COMMAND --help for each command).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"on an error, show the traceback (also: {DEBUG_ENV}=1)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def error_text(error: BaseException) -> str:
    """An exception as one message: its text (a ``KeyError``'s without the quotes repr adds), with
    the type named for errors that are not the usual user-facing ones."""
    message = error.args[0] if len(error.args) == 1 and isinstance(error.args[0], str) else str(error)
    if isinstance(error, (ValueError, LookupError, OSError, ImportError)) and message:
        return message
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    command = f"prompt-diffusion {args.command}"
    if args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        return int(args.func(args) or 0)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        hint = getattr(args, "_resume_hint", "")
        print(f"\n{command}: interrupted." + (f" {hint}" if hint else ""), file=sys.stderr)
        return 130
    except Exception as error:  # a user's mistake reads best as its message alone
        print(f"{command}: error: {error_text(error)}\n(the traceback: prompt-diffusion --debug ..., or "
              f"{DEBUG_ENV}=1)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
