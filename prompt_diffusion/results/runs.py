"""Run folders and their logs: which runs finished, and the metrics their result block reports.

A run writes Dassl's result block into ``<output_dir>/log.txt`` (read the way CoOp's
``parse_test_res.py`` reads it)::

    => result
    * total: 1,000
    * correct: 913
    * accuracy: 91.3%

A *training* run's result counts only after its ``Finish training`` line (the test of the final
model; epochs may print validation blocks before it); an evaluation run (``--eval-only``) has no
such line. A log without a complete block is *incomplete* and is reported, never averaged. A
resumed run leaves ``log.txt-<date>`` files beside ``log.txt`` (Dassl never overwrites a log): the
newest complete one counts. Run folders without a spec are grouped by their ``seed<N>`` part
(``group_run_dirs``), as ``parse_test_res.py`` groups them.
"""
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

COMPLETE, INCOMPLETE, MISSING = "complete", "incomplete", "missing"

_RESULT_HEADER = "=> result"
_TRAINING_END = re.compile(r"^Finish(ed)? training$")
_TRAINING_PROGRESS = re.compile(r"^epoch \[\d+/\d+\]")
# "* accuracy: 91.3%", "* total: 1,000", "* time_per_image_ms: 12.5"; not the per-class lines
_RESULT_LINE = re.compile(r"^\* ([A-Za-z_]\w*): ([-+]?[\d,]*\.?\d+(?:[eE][-+]?\d+)?)\s*%?$")


@dataclass
class RunResult:
    """What one run directory holds: its status, the metrics of its result block, the log read."""

    run_dir: Path
    status: str
    metrics: Dict[str, float] = field(default_factory=dict)
    log_file: Optional[Path] = None
    reason: str = ""


def parse_log_text(text: str, training: Optional[bool] = None) -> Tuple[Optional[Dict[str, float]], str]:
    """Metrics of the last complete ``=> result`` block of a log, or ``(None, why not)``.

    ``training``: True for a training log (only a block after ``Finish training`` counts), False
    for an evaluation log, None to decide from the log (a log with ``epoch [i/n]`` progress lines
    or a ``Finish training`` line is a training log). A block is complete when it has an
    ``accuracy`` line.
    """
    lines = [line.strip() for line in text.splitlines()]
    if training is None:
        training = any(_TRAINING_END.match(line) or _TRAINING_PROGRESS.match(line) for line in lines)
    counting = not training
    last_complete: Optional[Dict[str, float]] = None
    block: Optional[Dict[str, float]] = None
    for line in lines:
        if _TRAINING_END.match(line):
            counting = True
            continue
        if line == _RESULT_HEADER:
            block = {} if counting else None
            continue
        match = _RESULT_LINE.match(line)
        if match and block is not None:
            block[match.group(1)] = float(match.group(2).replace(",", ""))
            if "accuracy" in block:
                last_complete = block
            continue
        block = None
    if last_complete is not None:
        return dict(last_complete), ""
    if training and not counting:
        return None, "training did not finish (no 'Finish training' line)"
    return None, "no complete '=> result' block with an '* accuracy:' line"


def log_files(run_dir: Path) -> List[Path]:
    """``log.txt`` and the ``log.txt-<date>`` files a resumed run leaves, newest first."""
    run_dir = Path(run_dir)
    found = [p for p in run_dir.glob("log.txt*") if p.is_file()]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name), reverse=True)


def read_run(run_dir: Path, training: Optional[bool] = None) -> RunResult:
    """The result of one run directory: the newest log with a complete result block counts."""
    run_dir = Path(run_dir)
    logs = log_files(run_dir)
    if not logs:
        why = "no log.txt" if run_dir.is_dir() else "run directory does not exist"
        return RunResult(run_dir, MISSING, reason=why)
    reasons = []
    for path in logs:
        metrics, reason = parse_log_text(path.read_text(errors="replace"), training)
        if metrics is not None:
            return RunResult(run_dir, COMPLETE, metrics, path)
        reasons.append(f"{path.name}: {reason}")
    return RunResult(run_dir, INCOMPLETE, log_file=logs[0], reason="; ".join(reasons))


# run dirs without a spec (``table`` over a glob): grouped by their path less the seed part
_SEED_PART = re.compile(r"^seed\d+$")


@dataclass
class RunGroup:
    """Run dirs that differ only in their ``seed<N>`` path part, as ``parse_test_res.py`` groups them."""

    name: str
    runs: List[RunResult]

    def summary(self) -> Dict[str, Tuple[float, float, int]]:
        """metric -> (mean, std, number of complete runs), over the complete runs only."""
        complete = [r for r in self.runs if r.status == COMPLETE]
        names = [k for k in complete[0].metrics] if complete else []
        return {k: (float(np.mean([r.metrics[k] for r in complete if k in r.metrics])),
                    float(np.std([r.metrics[k] for r in complete if k in r.metrics])),
                    sum(k in r.metrics for r in complete)) for k in names}


def group_run_dirs(run_dirs: Iterable[Path]) -> List[RunGroup]:
    """Group run dirs by their path with the ``seed<N>`` part replaced by ``seed*``."""
    groups: Dict[str, List[RunResult]] = {}
    for run_dir in sorted(Path(p) for p in run_dirs):
        name = str(Path(*["seed*" if _SEED_PART.match(part) else part for part in run_dir.parts]))
        groups.setdefault(name, []).append(read_run(run_dir))
    return [RunGroup(name, runs) for name, runs in groups.items()]
