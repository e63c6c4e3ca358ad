"""One ``prompt-diffusion`` command in a child process, started without importing torch again.

A sweep runs many short commands; a fresh interpreter spends about 4 s of CPU importing torch,
torchvision and the trainers before a toy run's 1-2 s of work. The children are forked from
multiprocessing's fork server, a clean single-threaded process that imported those modules once
(never CUDA: a child's ``CUDA_VISIBLE_DEVICES`` is set before it touches a GPU). Each child gets its
own environment additions (torch threads read from ``OMP_NUM_THREADS`` again), the caller's working
folder, and stdout and stderr on one pipe whose lines the caller reads as they come. Its exit code is
the command's (130 after Ctrl-C; a negative signal number when it was killed).
"""
import multiprocessing
import os
import sys
from typing import Callable, Dict, List, Optional

# what the fork server imports once: the command line, the trainers and datasets, and what they import
PRELOADED = ["prompt_diffusion.cli", "prompt_diffusion.commands.train", "prompt_diffusion.trainers",
             "prompt_diffusion.data", "torchvision"]


def _context() -> "multiprocessing.context.ForkServerContext":
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOADED)
    return context


def _command_in_child(argv: List[str], env: Dict[str, str], cwd: str, output) -> None:
    """The child's body: output to the pipe, environment and folder as the caller's, then the command."""
    for fd in (1, 2):
        os.dup2(output.fileno(), fd)
    output.close()
    sys.stdout = open(1, "w", encoding="utf-8", buffering=1, closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)
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
    child = context.Process(target=_command_in_child, args=(list(argv), dict(env or {}), os.getcwd(), writer))
    child.start()
    writer.close()
    with open(os.dup(reader.fileno()), "r", encoding="utf-8", errors="replace") as stream:
        reader.close()
        for line in stream:
            if on_line is not None:
                on_line(line)
    child.join()
    return child.exitcode
