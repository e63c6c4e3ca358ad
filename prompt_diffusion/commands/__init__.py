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
