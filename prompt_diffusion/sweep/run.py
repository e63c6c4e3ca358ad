"""Running a plan's runs: each ``prompt-diffusion train`` in a child process (``sweep.child``; its
console in ``console.txt``), a chain in order (finished runs skipped, interrupted ones resumed, the rest of a
chain skipped after a failure), and the check that refuses folders whose run a changed config
would now make differently.
"""
import signal
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import yaml
from tqdm import tqdm

from prompt_diffusion.results.runs import COMPLETE, MISSING, read_run
from prompt_diffusion.run_record import PLACEMENT_KEYS, RUN_CONFIG, flat_keys
from prompt_diffusion.sweep.child import LOST_STATUS, run_command
from prompt_diffusion.sweep.plan import Chain, Run, unread_key_prefixes


def stale_runs(chains: Sequence[Chain]) -> List[str]:
    """The runs whose folder holds a run made with another config than the spec now gives them (a
    changed default, trainer file or opt that the folder name does not show), one line each with
    the keys that differ. Runs recorded before ``RUN_CONFIG`` existed cannot be checked."""
    stale = []
    for run in (run for chain in chains for run in chain.runs):
        record = run.output_dir / RUN_CONFIG
        if not record.exists():
            continue
        then, now = (flat_keys(yaml.safe_load(text)) for text in (record.read_text(encoding="utf-8"), run.config_text()))
        if then.get("TRAINER.NAME") == "":  # recorded by the sweep itself, before train wrote the records
            then["TRAINER.NAME"] = now["TRAINER.NAME"]
        unread = unread_key_prefixes(run.trainer)
        changed = sorted(key for key in then.keys() | now.keys()
                         if key not in PLACEMENT_KEYS and not key.startswith(unread)
                         and then.get(key) != now.get(key))
        if changed:
            shown = ", ".join(f"{key}: {then.get(key)!r} -> {now.get(key)!r}" for key in changed[:4])
            stale.append(f"{run.output_dir}: {shown}" + (f" (+{len(changed) - 4} more)" if len(changed) > 4 else ""))
    return stale


def stale_message(stale: Sequence[str]) -> str:
    return ("These run folders hold runs made with another config than the spec now gives them (a changed "
            "default, config file or opt); nothing was launched. Move them away, or sweep into another "
            "--output:\n" + "\n".join(stale))


def run_one(run: Run, root: str, env: Optional[Dict[str, str]] = None,
            echo: Optional[Callable[[str], None]] = None) -> Tuple[int, str]:
    """Run one ``prompt-diffusion train`` in a child process; its console output goes, line by line
    as it comes, to ``<output_dir>/console.txt`` and to ``echo`` when given. Returns (exit code,
    the console's tail on failure)."""
    run.output_dir.mkdir(parents=True, exist_ok=True)
    console_path = run.output_dir / "console.txt"
    with open(console_path, "a", encoding="utf-8", buffering=1) as console:
        console.write(f"\n$ {run.command(root)}\n")

        def on_line(line: str) -> None:
            console.write(line)
            if echo is not None:
                echo(line.rstrip("\n"))

        code = run_command(run.argv(root), env, on_line)
        if code == LOST_STATUS and run.status() == COMPLETE:  # its folder holds its whole result: it ended
            console.write(f"(exit status {LOST_STATUS}: the fork server lost the run's status; its folder holds "
                          "a complete result, so it counts as finished, as the next sweep would count it)\n")
            code = 0
    if code == 0 and run.status() != COMPLETE:
        reason = read_run(run.output_dir, run.training).reason
        return 1, f"exited 0 but {run.output_dir}/log.txt holds no result ({reason})"
    if code != 0:
        tail = console_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        return code, "\n".join(tail)
    return 0, ""


def run_chain(chain: Chain, root: str, env: Optional[Dict[str, str]] = None,
              report: Callable[[str], None] = tqdm.write, progress: Optional[tqdm] = None,
              echo: Optional[Callable[[Run, str], None]] = None) -> List[str]:
    """Run a chain's unfinished runs in order; stop the chain at its first failure. Returns failures.
    ``echo(run, line)`` sees each console line of each run."""
    failures = []
    for run in chain.runs:
        status = run.status()
        if status == COMPLETE:
            continue
        if status != MISSING:
            report(f"resuming {run.output_dir} ({read_run(run.output_dir, run.training).reason})")
        else:
            report(f"running {run.output_dir}")
        code, note = run_one(run, root, env, None if echo is None else (lambda line, run=run: echo(run, line)))
        if code in (130, -signal.SIGINT):  # Ctrl-C reached the run too: the command line says so, once
            failures.append(f"{run.output_dir}: interrupted")
            break
        if progress is not None:
            progress.update(1)
        if code != 0:
            failures.append(f"{run.output_dir}: exit {code}\n{note}")
            report(f"FAILED {run.output_dir} (exit {code}); skipping the rest of its chain\n{note}")
            break
    return failures
