"""A Ctrl-C that cannot be lost.

Python raises ``KeyboardInterrupt`` wherever the main thread is when SIGINT arrives. Raised inside a
finaliser (a ``__del__``, e.g. of a progress bar collected mid-epoch) it is printed as "Exception
ignored" and dropped, and the run goes on to its end as if nothing happened. Within
``sigint_remembered()`` the signal is also remembered, and the engine's training and test loops
raise it again at their next batch (``raise_if_interrupted``).
"""
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

_interrupted = False


def _on_sigint(signum, frame) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


@contextmanager
def sigint_remembered() -> Iterator[None]:
    """Remember SIGINT while the block runs (main thread only; elsewhere signals cannot be handled)."""
    global _interrupted
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _interrupted = False
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _interrupted = False


def raise_if_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` when a SIGINT arrived and was swallowed on its way."""
    if _interrupted:
        raise KeyboardInterrupt
