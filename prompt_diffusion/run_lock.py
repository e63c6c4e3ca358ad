"""One run per folder: ``<folder>/run.lock`` holds the process id and host of the run writing there.

``prompt-diffusion train`` takes the lock before it writes anything else and removes it when it
ends (normally, on an error or on Ctrl-C). A second run into the same folder stops with an error
naming the process that holds it. A lock left by a process that no longer runs (killed; the same
host) is stale: the next run takes it over and says so. A lock of another host cannot be checked
from here: the error says which file to remove once that run is gone.
"""
import os
import os.path as osp
import socket
from typing import Optional, Tuple

LOCK_FILE = "run.lock"


def _holder(path: str) -> Optional[Tuple[int, str]]:
    """``(pid, host)`` written in the lock file at ``path``; None when it is gone or unreadable."""
    try:
        with open(path, "r", encoding="utf-8") as stream:
            pid, host = stream.read().split(maxsplit=1)
        return int(pid), host.strip()
    except (OSError, ValueError):
        return None


def _running(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (one of another user counts; a killed one that is
    not yet reaped, a zombie, does not: Linux's /proc says which)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "r", encoding="utf-8") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc: it runs
        return True


class RunLock:
    """The lock of one run folder: ``acquire()`` (creates the folder and the lock file, atomically:
    the file appears with its content or not at all), ``release()``."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = osp.join(folder, LOCK_FILE)
        self.held = False

    def acquire(self) -> str:
        """Take the lock; returns a line for the log when a stale lock was taken over, else "".
        A lock held by a running process is a ``RuntimeError`` naming it."""
        os.makedirs(self.folder, exist_ok=True)
        host = socket.gethostname()
        temporary = f"{self.path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(f"{os.getpid()} {host}\n")
        note = ""
        try:
            while True:
                try:
                    os.link(temporary, self.path)  # fails when the lock exists: never two holders
                    break
                except FileExistsError:
                    holder = _holder(self.path)
                    if holder is None:
                        continue  # released meanwhile: try again
                    pid, holder_host = holder
                    if holder_host != host or _running(pid):
                        raise RuntimeError(
                            f"--output-dir {self.folder} is in use by process {pid} on {holder_host} ({self.path}); "
                            "wait for that run to end or give another --output-dir (remove the file if that run "
                            "is gone)") from None
                    os.remove(self.path)
                    note = f"Took over the lock of process {pid}, which no longer runs ({self.path})"
        finally:
            os.remove(temporary)
        self.held = True
        return note

    def release(self) -> None:
        """Remove the lock file if this process holds it."""
        if self.held and _holder(self.path) == (os.getpid(), socket.gethostname()):
            os.remove(self.path)
        self.held = False
