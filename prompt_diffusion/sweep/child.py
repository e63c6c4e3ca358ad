"""One ``prompt-diffusion`` command in a child process, started without importing torch again.

A sweep runs many short commands; a fresh interpreter spends about 4 s of CPU importing torch,
torchvision and the trainers before a toy run's 1-2 s of work. The children are forked from
multiprocessing's fork server, a clean single-threaded process that imported those modules once
(never CUDA: a child's ``CUDA_VISIBLE_DEVICES`` is set before it touches a GPU). Each child gets its
own environment additions (torch threads read from ``OMP_NUM_THREADS`` again), the caller's working
folder, and stdout and stderr on one pipe whose lines the caller reads as they come. Its exit code is
the command's (130 after Ctrl-C; a negative signal number when it was killed). A child outlives
neither its caller nor the fork server: interrupted while it waits, the caller passes Ctrl-C on to
the child and waits for it (the child stops as after Ctrl-C: its log says so, its folder's lock is
released); killed, the caller's end of a lifeline pipe closes, and the child, seeing it close, stops
as after Ctrl-C and still writes its log. (The fork server cannot say it: every child it forks holds
its liveness pipe, so it outlives a killed caller while a run goes on.) So a cancelled SLURM task or a
killed sweep leaves no run going on behind it, however it was started.
"""
import io
import multiprocessing
import os
import signal
import sys
import threading
from typing import Callable, Dict, List, Optional

# seconds an interrupted caller gives its child to end on the Ctrl-C it got too, before passing it on
INTERRUPT_GRACE_S = 0.5
# multiprocessing's exit code of a fork-server child whose status the fork server did not report
# (popen_forkserver: "perhaps the forkserver process itself got killed"); what the child did is unknown
LOST_STATUS = 255


class _PipeOutput(io.TextIOWrapper):
    """The child's stdout and stderr: the pipe to its caller, line by line; once the caller is gone
    (a broken pipe), what is written is dropped, so the run goes on to its log and its end."""

    def write(self, text: str) -> int:
        if not self.closed:
            try:
                return super().write(text)
            except (BrokenPipeError, ValueError):
                pass
        return len(text)

    def flush(self) -> None:
        try:
            super().flush()
        except (BrokenPipeError, ValueError):
            pass

# what the fork server imports once: the command line, the trainers and datasets, and what they import
PRELOADED = ["prompt_diffusion.cli", "prompt_diffusion.commands.train", "prompt_diffusion.trainers",
             "prompt_diffusion.data", "torchvision"]


def _context() -> "multiprocessing.context.ForkServerContext":
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOADED)
    return context


def take_ctrl_c() -> None:
    """Ctrl-C (SIGINT) raises ``KeyboardInterrupt`` in this process even when it started with SIGINT
    ignored, as a shell's background job (``&``, ``nohup``) and everything it starts do: the SIGINT a
    caller passes on, a cancelled task gets or the lifeline's watcher sends at the caller's death must
    stop the run, not be dropped."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _interrupt_when_caller_ends(lifeline) -> None:
    """Ctrl-C to this process when ``lifeline`` ends: the reading end of a pipe whose only writing end
    the caller holds, open and silent, while it waits for this child; its end of file is the caller's
    death (killed, where it could not pass Ctrl-C on). Watched by a daemon thread."""
    def watch() -> None:
        try:
            lifeline.recv()
        except EOFError:
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, daemon=True).start()


def _command_in_child(argv: List[str], env: Dict[str, str], cwd: str, output, lifeline) -> None:
    """The child's body: output to the pipe, environment and folder as the caller's, then the command."""
    take_ctrl_c()
    _interrupt_when_caller_ends(lifeline)
    for fd in (1, 2):
        os.dup2(output.fileno(), fd)
    output.close()
    sys.stdout = _PipeOutput(open(1, "wb", buffering=0, closefd=False), encoding="utf-8", line_buffering=True)
    sys.stderr = _PipeOutput(open(2, "wb", buffering=0, closefd=False), encoding="utf-8", line_buffering=True)
    os.environ.update(env)
    os.chdir(cwd)
    if env.get("OMP_NUM_THREADS", "").isdigit():
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    from prompt_diffusion.cli import main

    sys.exit(main(argv))


def run_command(argv: List[str], env: Optional[Dict[str, str]] = None,
                on_line: Optional[Callable[[str], None]] = None) -> int:
    """Run ``prompt-diffusion <argv>`` in a child process with ``env`` added to its environment;
    ``on_line`` gets each line of its output (stdout and stderr) as it comes. Returns its exit code."""
    context = _context()
    reader, writer = context.Pipe(duplex=False)
    lifeline, held = context.Pipe(duplex=False)  # the caller holds `held` until the child ends
    child = context.Process(target=_command_in_child,
                            args=(list(argv), dict(env or {}), os.getcwd(), writer, lifeline))
    child.start()
    writer.close()
    lifeline.close()
    pump = threading.Thread(target=_read_lines, args=(reader, on_line), daemon=True)
    pump.start()
    try:
        child.join()
    except BaseException:  # Ctrl-C (or a cancelled task): the child ends too, then the caller
        child.join(INTERRUPT_GRACE_S)
        if child.exitcode is None:
            os.kill(child.pid, signal.SIGINT)
        child.join()
        raise
    finally:
        pump.join()
        held.close()
    return child.exitcode


def _read_lines(reader, on_line: Optional[Callable[[str], None]]) -> None:
    """Every line the child writes, to ``on_line``, until the child's end closes the pipe."""
    with open(os.dup(reader.fileno()), "r", encoding="utf-8", errors="replace") as stream:
        reader.close()
        for line in stream:
            if on_line is not None:
                on_line(line)
