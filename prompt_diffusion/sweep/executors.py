"""Where the chains run: on this machine (sequentially, N at a time on the CPU, one per GPU) or as
a SLURM array through submitit, one task per unfinished chain.
"""
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Queue
from typing import Any, Callable, Dict, List, Optional, Sequence

from tqdm import tqdm

from prompt_diffusion.sweep.child import take_ctrl_c
from prompt_diffusion.sweep.plan import Chain, Run
from prompt_diffusion.sweep.run import run_chain, stale_message, stale_runs


def run_local(chains: Sequence[Chain], root: str, gpus: Optional[Sequence[str]] = None,
              report: Callable[[str], None] = tqdm.write, jobs: int = 1, env: Optional[Dict[str, str]] = None,
              echo: Optional[Callable[[Run, str], None]] = None) -> List[str]:
    """Run the unfinished chains: one chain per listed GPU at a time (``CUDA_VISIBLE_DEVICES``), else
    ``jobs`` chains at a time on the CPU. ``env`` is added to every run's environment (e.g.
    ``OMP_NUM_THREADS``); ``echo(run, line)`` sees the runs' console lines."""
    from prompt_diffusion.engine.utils import available_cores

    stale = stale_runs(chains)
    if stale:
        report(stale_message(stale))
        return [f"{line} (stale)" for line in stale]
    todo = [chain for chain in chains if chain.pending()]
    total = sum(len(chain.pending()) for chain in todo)
    slots: "Queue[Dict[str, str]]" = Queue()
    for gpu in gpus or []:
        slots.put({**(env or {}), "CUDA_VISIBLE_DEVICES": gpu})
    if not gpus:  # CPU runs side by side share the cores: torch threads per run = cores // jobs
        jobs = max(1, jobs)
        threads = str(max(1, available_cores() // jobs))
        for _ in range(jobs):
            slots.put({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, **(env or {})} if jobs > 1
                      else dict(env or {}))
    failures: List[str] = []
    with tqdm(total=total, desc="runs", unit="run", disable=None) as progress:

        def in_slot(chain: Chain) -> List[str]:
            slot_env = slots.get()
            try:
                return run_chain(chain, root, slot_env, report, progress, echo)
            finally:
                slots.put(slot_env)

        pool = ThreadPoolExecutor(max_workers=slots.qsize())
        try:
            for result in pool.map(in_slot, todo):
                failures += result
        finally:  # on Ctrl-C the running children stop too (same process group); start no other chain
            pool.shutdown(wait=True, cancel_futures=True)
    return failures


def _slurm_chain_job(runs: List[Run], root: str) -> List[str]:
    """A SLURM array task: one chain (module-level so submitit can pickle it). A cancel (submitit's
    local tasks get SIGINT) stops it however the submitting process was started."""
    take_ctrl_c()
    return run_chain(Chain(list(runs)), root)


def submit_slurm(chains: Sequence[Chain], root: str, folder: Path, parameters: Dict[str, Any],
                 cluster: Optional[str] = None) -> list:
    """Submit one SLURM array task per unfinished chain through ``submitit``; returns the jobs
    (``job.job_id``; ``job.result()`` is the task's list of failures). ``cluster``: ``"slurm"``, or
    submitit's ``"local"`` (tasks as processes on this machine) or ``"debug"`` (in this process) to try
    a sweep without SLURM; None: what submitit detects."""
    try:
        import submitit
    except ImportError as error:
        raise RuntimeError("--slurm needs submitit: pip install 'prompt-diffusion[slurm]'") from error
    stale = stale_runs(chains)
    if stale:
        raise RuntimeError(stale_message(stale))
    todo = [chain for chain in chains if chain.pending()]
    if not todo:
        return []
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    executor.update_parameters(**parameters)
    return executor.map_array(_slurm_chain_job, [chain.runs for chain in todo], [root] * len(todo))
