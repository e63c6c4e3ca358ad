"""Subcommands of the ``prompt-diffusion`` command line, one module each (see ``cli.py``).

Every command speaks the same way: the output folder is ``--output-dir``, the datasets' folder
``--root``, a list is its values one after another (``--seeds 1 2 3``, ``--gpus 0 1``), and config
opts are ``KEY VALUE`` pairs after the flags (``train``, ``diagnose``, ``demo``, ``predict``), which
may themselves be followed by more flags. A list ends where the opts begin: at the first config key
(``TRAINER.PD.NFE``), so ``--seeds 1 2 TRAINER.PD.NFE 3`` is two seeds and one opt.
"""
import argparse
import re
from typing import Any, Callable, Optional, Sequence

# a yacs key: upper-case first part, then dotted parts (TRAINER.PD.NFE, TRAINER.CoPrompt.N_CTX)
CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Za-z0-9_]+)+$")


def is_config_key(token: str) -> bool:
    """Whether ``token`` reads as a config key, where a list of values ends and the opts begin."""
    return bool(CONFIG_KEY.match(token))


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
    parsed as the flag it is, not swallowed into the opts. ``leading``: the name of the values that
    come before the opts (``predict``'s images): those up to the first config key or flag."""

    def __init__(self, option_strings, dest, leading: Optional[str] = None, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.leading = leading

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        values = list(values or [])
        if values[:1] == ["--"]:
            values = values[1:]
        start = 0
        if self.leading:
            while start < len(values) and not values[start].startswith("--") and not is_config_key(values[start]):
                start += 1
            setattr(namespace, self.leading, list(getattr(namespace, self.leading, None) or []) + values[:start])
        end = start
        while end < len(values) and not values[end].startswith("--"):
            end += 2  # a KEY and its VALUE (a value may look like anything, "-1" included)
        setattr(namespace, self.dest, list(getattr(namespace, self.dest, None) or []) + values[start:end])
        if end < len(values):  # the flags, and any opts after them
            parser.parse_args(values[end:], namespace)


class ListThenOpts(argparse.Action):
    """A list option (``--seeds 1 2 3``): its values end at the first config key, which with what
    follows goes to the command's ``KEY VALUE`` opts (commands that have them). ``kind`` converts each
    value; ``allowed`` (optional) lists the values it may take."""

    def __init__(self, option_strings, dest, kind: Callable[[str], Any] = str,
                 allowed: Optional[Sequence[Any]] = None, **kwargs):
        super().__init__(option_strings, dest, nargs="+", **kwargs)
        self.kind, self.allowed = kind, allowed

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        values = list(values)
        has_opts = hasattr(namespace, "opts")
        end = next((i for i, value in enumerate(values) if has_opts and is_config_key(value)), len(values))
        if end == 0:
            parser.error(f"argument {option_string}: expected at least one value before {values[0]}")
        items = []
        for value in values[:end]:
            try:
                items.append(self.kind(value))
            except ValueError:
                parser.error(f"argument {option_string}: invalid {self.kind.__name__} value: {value!r}")
        unknown = [item for item in items if self.allowed is not None and item not in self.allowed]
        if unknown:
            parser.error(f"argument {option_string}: invalid choice: {unknown[0]!r} (choose from "
                         f"{', '.join(map(str, self.allowed))})")
        setattr(namespace, self.dest, items)
        if end < len(values):
            namespace.opts = list(namespace.opts or []) + values[end:]

