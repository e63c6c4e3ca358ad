"""A Ctrl-C that cannot be lost.

Python raises ``KeyboardInterrupt`` wherever the main thread is when SIGINT arrives. Raised inside a
finaliser (a ``__del__``, e.g. of a progress bar collected mid-epoch) it is printed as "Exception
ignored" and dropped, and the run goes on to its end as if nothing happened. Within
``sigint_remembered()`` the signal is also remembered, and the engine's training and test loops
raise it again at their next batch (``raise_if_interrupted``). Raised inside a library's file writer
(``torch.save``'s zip writer) it is replaced by the writer's own error on its way out, and the run
crashes instead of stopping: within ``sigint_held()`` (a checkpoint's write) the signal waits for the
block's end.
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


@contextmanager
def sigint_held() -> Iterator[None]:
    """Hold a SIGINT that arrives while the block runs, and deliver it, to the handler in place
    before, once the block has finished (main thread only; elsewhere signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: arrived.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if arrived:
        signal.raise_signal(signal.SIGINT)
