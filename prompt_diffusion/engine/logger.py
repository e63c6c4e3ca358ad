"""``setup_logger``: copy everything printed to ``<output>/log.txt`` (Dassl's ``Logger``).

Trainers report with ``print`` (as Dassl's do), so the log is a tee on ``sys.stdout``. Unlike
Dassl's, it wraps whatever ``sys.stdout`` is now (a test runner's capture keeps working), never
closes the console, and ``close()`` puts the previous ``sys.stdout`` back. The file is written
line by line (``tail -f`` follows a run; a killed run keeps its log up to the kill), and a
progress bar's carriage-return redraws reach the file as their last state only.
"""
import os
import os.path as osp
import sys
import time
from typing import Optional, TextIO

from prompt_diffusion.engine.utils import mkdir_if_missing


class Logger:
    """A ``sys.stdout`` replacement writing to the previous stdout and to ``fpath``."""

    def __init__(self, fpath: Optional[str] = None):
        self.console: TextIO = sys.stdout
        self.file = None
        if fpath is not None:
            mkdir_if_missing(osp.dirname(fpath))
            self.file = open(fpath, "w", buffering=1)  # line-buffered: each line reaches the file

    def write(self, msg: str) -> None:
        self.console.write(msg)
        self.write_to_file_only(msg)

    def write_to_file_only(self, msg: str) -> None:
        """Write ``msg`` to the log file alone (a traceback the console shows as one line)."""
        if self.file is not None:
            self.file.write(last_redraw(msg))

    def flush(self) -> None:
        self.console.flush()
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())

    def isatty(self) -> bool:
        return self.console.isatty()

    def close(self) -> None:
        """Close the file and, if this logger is the current stdout, restore the previous one."""
        if sys.stdout is self:
            sys.stdout = self.console
        if self.file is not None:
            self.file.close()
            self.file = None

    def __enter__(self) -> "Logger":
        return self

    def __exit__(self, *args) -> None:
        self.close()


def last_redraw(text: str) -> str:
    """``text`` with carriage-return redraws (progress bars) reduced to each finished line's last
    state; an unfinished redraw (no newline yet) is left out."""
    if "\r" not in text:
        return text
    *finished, tail = text.split("\n")
    lines = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in finished]
    return "\n".join(lines + ["" if "\r" in tail else tail])


def setup_logger(output: Optional[str] = None) -> Optional[Logger]:
    """Tee stdout into ``output`` (a ``.txt``/``.log`` file, or a folder: ``<folder>/log.txt``).

    An existing log file is kept: the new one gets a ``-YYYY-MM-DD-HH-MM-SS`` suffix. Returns the
    installed ``Logger`` (call ``close()`` to stop logging), or ``None`` when ``output`` is None.
    """
    if output is None:
        return None
    if output.endswith(".txt") or output.endswith(".log"):
        fpath = output
    else:
        fpath = osp.join(output, "log.txt")
    if osp.exists(fpath):
        fpath += time.strftime("-%Y-%m-%d-%H-%M-%S")
    logger = Logger(fpath)
    sys.stdout = logger
    return logger
