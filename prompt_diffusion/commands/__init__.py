"""Subcommands of the ``prompt-diffusion`` command line, one module each (see ``cli.py``)."""
import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written (with its examples); each option's default shown when it says
    something (not for empty, None or False defaults)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("%(default)" in text or not action.option_strings or action.default is argparse.SUPPRESS
                or action.default in (None, "", False, [])):
            return text
        return text + " (default: %(default)s)"


class OptsThenFlags(argparse.Action):
    """The trailing ``KEY VALUE`` opts; a flag among them (``... OPTIM.LR 0.01 --output-dir X``) is
    parsed as the flag it is, not swallowed into the opts."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        values = list(values or [])
        if values[:1] == ["--"]:
            values = values[1:]
        end = 0
        while end < len(values) and not values[end].startswith("--"):
            end += 2  # a KEY and its VALUE (a value may look like anything, "-1" included)
        setattr(namespace, self.dest, list(getattr(namespace, self.dest, None) or []) + values[:end])
        if end < len(values):  # the flags, and any opts after them
            parser.parse_args(values[end:], namespace)
