"""Results of runs: log parsing, mean ± std over seeds, paper-style tables beside the paper's numbers.

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
newest complete one counts.

Tables follow the paper: mean over seeds per dataset, the harmonic mean H from the *averaged* base
and new accuracies, and the average column as the mean of the per-dataset means (H again from the
averaged base and new). The paper's numbers (``prompt_diffusion/data/paper_results/*.json``) stand
beside each cell with the difference. ± is the population standard deviation over seeds (as
``parse_test_res.py``).

A row with a host row (``CoCoOpPD`` beside ``CoCoOp``) also gets its *paired* difference to the host:
both runs of a seed evaluated the same images (``predictions_<split>.json``, written by ``test``),
so the difference is taken image by image; its standard error is that of the mean per-image
difference, pooled over seeds (``combine_seeds``). H and the average column carry it on by the
delta method and by independent columns.
"""
import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

PAPER_RESULTS_DIR = Path(__file__).resolve().parent / "data" / "paper_results"

COMPLETE, INCOMPLETE, MISSING = "complete", "incomplete", "missing"

_RESULT_HEADER = "=> result"
_TRAINING_END = re.compile(r"^Finish(ed)? training$")
_TRAINING_PROGRESS = re.compile(r"^epoch \[\d+/\d+\]")
# "* accuracy: 91.3%", "* total: 1,000", "* time_per_image_ms: 12.5"; not the per-class lines
_RESULT_LINE = re.compile(r"^\* ([A-Za-z_]\w*): ([-+]?[\d,]*\.?\d+(?:[eE][-+]?\d+)?)\s*%?$")

METRIC_NAMES = {"base": "Base", "new": "New", "hm": "H", "accuracy": "Acc."}
MAX_LISTED_PROBLEMS = 40  # missing/incomplete runs listed under a Markdown table


def harmonic_mean(base: float, new: float) -> float:
    """H = 2·base·new / (base + new), the base-to-new summary of CoCoOp and every paper since."""
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


# ---------------------------------------------------------------------------- paired differences
@dataclass
class PairedDifference:
    """Accuracy of A minus that of B on the same images, in points, with its standard error."""

    mean: float
    se: float  # standard error of the mean per-image difference (pooled over seeds)
    fixed: int = 0  # images B gets wrong and A right
    broken: int = 0  # images B gets right and A wrong
    images: int = 0
    seeds: int = 1
    per_seed: Tuple[float, ...] = ()  # the difference of each seed (its trained models), when pooled

    @property
    def seed_se(self) -> Optional[float]:
        """Standard error from the spread of the per-seed differences (``std / √S``, S ≥ 2): it also
        holds the training noise that the per-image SE leaves out."""
        if len(self.per_seed) < 2:
            return None
        return float(np.std(self.per_seed, ddof=1) / math.sqrt(len(self.per_seed)))

    def within_noise(self, k: float = 1.0) -> bool:
        """Whether ``|mean| <= k`` standard errors (the per-image one)."""
        return abs(self.mean) <= k * self.se

    def text(self) -> str:
        seeds = "" if self.seed_se is None else f" [seeds ± {self.seed_se:.2f}]"
        return f"{self.mean:+.2f} ± {self.se:.2f}{seeds}" + (" (within noise)" if self.within_noise() else "")


def paired_difference(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> PairedDifference:
    """The paired difference of two per-image correctness vectors of the same images, in points."""
    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired correctness must be two equal non-empty vectors, got {a.shape} and {b.shape}")
    diff = a - b  # [n] in {-1, 0, 1}
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    return PairedDifference(100.0 * float(diff.mean()), 100.0 * se, int((diff > 0).sum()), int((diff < 0).sum()),
                            len(diff))


def _mean_of_independent(parts: Sequence[PairedDifference], seeds: int,
                         per_seed: Tuple[float, ...]) -> PairedDifference:
    """The mean of independent paired differences: SE ``sqrt(Σ SE_i²) / n``, counts summed."""
    n = len(parts)
    return PairedDifference(float(np.mean([d.mean for d in parts])), math.sqrt(sum(d.se ** 2 for d in parts)) / n,
                            sum(d.fixed for d in parts), sum(d.broken for d in parts), sum(d.images for d in parts),
                            seeds, per_seed)


def combine_seeds(per_seed: Sequence[PairedDifference]) -> PairedDifference:
    """The mean over seeds of their paired differences; SE ``sqrt(Σ SE_s²) / S`` (the test images'
    noise, each seed's trained models held fixed)."""
    if not per_seed:
        raise ValueError("combine_seeds needs at least one seed")
    return _mean_of_independent(per_seed, sum(d.seeds for d in per_seed), tuple(d.mean for d in per_seed))


def paired_runs(run_a: Path, run_b: Path, split: str = "test",
                domain: Optional[int] = None) -> Tuple[Optional[PairedDifference], str]:
    """The paired difference of two runs' predictions on ``split`` (the images of ``domain`` only,
    when given), or ``(None, why not)``."""
    from prompt_diffusion.engine.predictions import read_predictions

    a, b = read_predictions(str(run_a), split), read_predictions(str(run_b), split)
    for run, found in ((run_a, a), (run_b, b)):
        if found is None:
            return None, f"{run} has no predictions_{split}.json"
    try:
        a, b = a.of_domain(domain), b.of_domain(domain)
    except ValueError as error:
        return None, str(error)
    if not a.labels:
        return None, f"{run_a} has no test image of domain {domain}"
    if a.images_sha1 != b.images_sha1 or a.labels != b.labels:
        return None, f"{run_a} and {run_b} did not evaluate the same images"
    return paired_difference(a.correct, b.correct), ""


def _hm_gradient(base: float, new: float) -> Tuple[float, float]:
    """(∂H/∂base, ∂H/∂new) of H = 2bn / (b + n)."""
    total = (base + new) ** 2
    return 2.0 * new ** 2 / total, 2.0 * base ** 2 / total


# ----------------------------------------------------------------------------------------- logs
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


# -------------------------------------------------------------------------------- paper numbers
@dataclass(frozen=True)
class RowKey:
    """A table row: a method (trainer name) and the setting it varies, e.g. ``CoCoOpPD[epochs=10]``."""

    method: str
    variant: Tuple[Tuple[str, Any], ...] = ()

    @classmethod
    def make(cls, method: str, variant: Optional[Mapping[str, Any]] = None) -> "RowKey":
        return cls(method, tuple(sorted((variant or {}).items())))

    def __str__(self) -> str:
        if not self.variant:
            return self.method
        return self.method + "[" + ",".join(f"{k}={v}" for k, v in self.variant) + "]"


@dataclass
class PaperTable:
    """One table or figure of the paper as transcribed in ``data/paper_results/<id>.json``."""

    id: str
    protocol: str
    caption: str
    metrics: List[str]
    columns: List[str]
    cells: Dict[RowKey, Dict[str, Dict[str, float]]]
    labels: Dict[RowKey, str]
    errata: List[Dict[str, Any]]
    data: Dict[str, Any]
    # rows the paper prints that this library cannot run (no public code): row -> why
    references: Dict[RowKey, str] = field(default_factory=dict)

    def value(self, row: RowKey, column: str, metric: str) -> Optional[float]:
        return self.cells.get(row, {}).get(column, {}).get(metric)

    def erratum(self, row: RowKey, column: str, metric: str) -> Optional[Dict[str, Any]]:
        """The listed erratum of a printed cell (an inconsistent average or H), if any."""
        check = f"{row}/{column}/{metric}"
        return next((e for e in self.errata if e["check"] == check), None)


def paper_table_ids() -> List[str]:
    """Ids of the transcribed tables and figures (``table1``, ``figure4`` ...)."""
    return sorted(p.stem for p in PAPER_RESULTS_DIR.glob("*.json"))


def load_paper_table(table_id: str) -> PaperTable:
    """Load ``data/paper_results/<table_id>.json``; an unknown id names the valid ones."""
    path = PAPER_RESULTS_DIR / f"{table_id}.json"
    if not path.is_file():
        raise KeyError(f"no paper table {table_id!r}; transcribed: {', '.join(paper_table_ids())}")
    data = json.loads(path.read_text(encoding="utf-8"))
    cells, labels, references = {}, {}, {}
    for row in data["rows"]:
        key = RowKey.make(row["method"], row.get("variant"))
        cells[key] = row["cells"]
        labels[key] = row.get("label", str(key))
        if "reference" in row:
            references[key] = row["reference"]
    return PaperTable(
        id=data["id"], protocol=data["protocol"], caption=data["caption"], metrics=list(data["metrics"]),
        columns=list(data["columns"]), cells=cells, labels=labels, errata=list(data.get("errata", [])),
        data=data, references=references,
    )


# -------------------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class Measurement:
    """Where one seed of one table cell comes from: the run dir and which log metric fills which
    table metric, e.g. a base-to-new training run fills ``base`` from its ``accuracy`` line."""

    row: RowKey
    column: str
    seed: int
    run_dir: Path
    training: bool
    metrics: Tuple[Tuple[str, str], ...]  # (metric in the log, metric in the table)
    # the accuracy on the run's test images of this domain (batch["domain"]), from its predictions
    # file, in place of the log's metrics (a by-domain column, e.g. a mixed world's styles)
    domain: Optional[int] = None


@dataclass
class Cell:
    """Mean ± std (population std, as ``parse_test_res.py``) over the seeds that finished."""

    values: Dict[int, float] = field(default_factory=dict)
    missing: List[int] = field(default_factory=list)
    incomplete: List[int] = field(default_factory=list)
    derived: Optional[float] = None  # H or an average: computed from other cells, not from seeds
    complete: bool = True  # False when a derived value lacks some of its inputs

    @property
    def mean(self) -> Optional[float]:
        if self.derived is not None:
            return self.derived
        return float(np.mean(list(self.values.values()))) if self.values else None

    @property
    def std(self) -> Optional[float]:
        """None for derived cells and for a single seed (one value has no spread to show)."""
        return float(np.std(list(self.values.values()))) if len(self.values) >= 2 and self.derived is None else None


@dataclass
class ResultRow:
    key: RowKey
    label: str
    cells: Dict[str, Dict[str, Cell]]
    problems: List[str]
    host: Optional[RowKey] = None
    # paired difference to the host row: {column: {metric: PairedDifference}} (complete cells only)
    paired: Dict[str, Dict[str, PairedDifference]] = field(default_factory=dict)


@dataclass
class ResultTable:
    """A paper-style table built from run logs, with the paper's cells beside ours."""

    title: str
    metrics: List[str]
    columns: List[str]
    seeds: List[int]
    rows: List[ResultRow]
    paper: Optional[PaperTable] = None

    def cell(self, row: RowKey, column: str, metric: str) -> Cell:
        found = next((r for r in self.rows if r.key == row), None)
        if found is None:
            raise KeyError(f"no row {row}; rows: {', '.join(str(r.key) for r in self.rows)}")
        return found.cells[column][metric]

    def paper_value(self, row: RowKey, column: str, metric: str) -> Optional[float]:
        return self.paper.value(row, column, metric) if self.paper else None


def build_table(
    title: str,
    metrics: Sequence[str],
    columns: Sequence[str],
    seeds: Sequence[int],
    measurements: Iterable[Measurement],
    average_of: Optional[Sequence[str]] = None,
    paper: Optional[PaperTable] = None,
    labels: Optional[Mapping[RowKey, str]] = None,
    hosts: Optional[Mapping[RowKey, RowKey]] = None,
) -> ResultTable:
    """Read every measurement's run and aggregate.

    ``metrics``: the table's metrics in display order; ``hm`` is derived from ``base`` and ``new``.
    ``columns``: the datasets; ``average_of`` (a subset of them) adds an ``average`` column: each
    metric's mean over those datasets' means, ``hm`` from the averaged base and new. An average
    that lacks a dataset is shown as incomplete, never as a partial mean.
    ``hosts``: row (or, for every row of a method, ``RowKey(method)``) -> its host row; such rows get
    their paired difference to the host (``paired``).
    """
    measurements = list(measurements)
    columns = list(columns) + (["average"] if average_of else [])
    seeds = list(seeds)
    order: List[RowKey] = []
    for m in measurements:
        if m.row not in order:
            order.append(m.row)
    runs: Dict[Path, RunResult] = {}
    rows = []
    for key in order:
        cells = {c: {metric: Cell() for metric in metrics} for c in columns}
        problems = []
        for m in (m for m in measurements if m.row == key):
            if m.run_dir not in runs:
                runs[m.run_dir] = read_run(m.run_dir, m.training)
            run = runs[m.run_dir]
            for log_metric, table_metric in m.metrics:
                cell = cells[m.column][table_metric]
                value, why = _measured(run, m, log_metric)
                if value is not None:
                    cell.values[m.seed] = value
                    continue
                if run.status == MISSING:
                    cell.missing.append(m.seed)
                else:
                    cell.incomplete.append(m.seed)
                problem = f"{m.column} seed {m.seed} ({table_metric}): {run.status}: {m.run_dir} ({why})"
                problems.append(problem)
        for column in columns:
            _derive_hm(cells[column], metrics)
        if average_of:
            _fill_average(cells, metrics, list(average_of))
        label = (labels or {}).get(key) or str(key)
        host = (hosts or {}).get(key) or (hosts or {}).get(RowKey(key.method))  # a swept row: its method's host
        rows.append(ResultRow(key, label, cells, problems, host=host))
    for row in rows:
        if row.host is not None:
            row.paired = _paired_cells(row, measurements, runs, metrics, columns, average_of)
    return ResultTable(title, list(metrics), columns, seeds, rows, paper)


def _measured(run: RunResult, m: Measurement, log_metric: str) -> Tuple[Optional[float], str]:
    """A finished run's value for one of ``m``'s metrics, or ``(None, why not)``: the log's line,
    or with ``m.domain`` the accuracy (%) over the images of that domain in its predictions."""
    if run.status != COMPLETE:
        return None, run.reason
    if m.domain is None:
        if log_metric in run.metrics:
            return run.metrics[log_metric], ""
        return None, f"no '* {log_metric}:' line in its result block"
    from prompt_diffusion.engine.predictions import read_predictions

    found = read_predictions(str(m.run_dir))
    if found is None:
        return None, "no predictions_test.json"
    try:
        correct = found.of_domain(m.domain).correct
    except ValueError as error:
        return None, str(error)
    if not correct:
        return None, f"no test image of domain {m.domain}"
    return 100.0 * sum(correct) / len(correct), ""


def _paired_cells(row: ResultRow, measurements: Sequence[Measurement], runs: Dict[Path, RunResult],
                  metrics: Sequence[str], columns: Sequence[str],
                  average_of: Optional[Sequence[str]]) -> Dict[str, Dict[str, PairedDifference]]:
    """The row's paired difference to its host per column and metric, over the seeds both rows
    finished with predictions (a pair on different images is left out and listed as a problem)."""
    own = {(m.column, m.seed, table): m for m in measurements if m.row == row.key for _, table in m.metrics}
    host = {(m.column, m.seed, table): m for m in measurements if m.row == row.host for _, table in m.metrics}
    paired: Dict[str, Dict[str, PairedDifference]] = {}
    for column in columns:
        for metric in metrics:
            keys = sorted(k for k in own if k[0] == column and k[2] == metric)
            per_seed = []
            for key in keys:  # the seeds both rows finished (the Seeds column flags the others)
                if key not in host or runs[own[key].run_dir].status != COMPLETE \
                        or runs[host[key].run_dir].status != COMPLETE:
                    continue
                difference, reason = paired_runs(own[key].run_dir, host[key].run_dir, domain=own[key].domain)
                if difference is None:
                    row.problems.append(f"{column} seed {key[1]} ({metric}) vs {row.host}: {reason}")
                    continue
                per_seed.append(difference)
            if per_seed:
                paired.setdefault(column, {})[metric] = combine_seeds(per_seed)
        cells = paired.get(column, {})
        if "hm" in metrics and "base" in cells and "new" in cells:
            cells["hm"] = _hm_difference(row.cells[column], cells["base"], cells["new"])
    if average_of and all(paired.get(c) for c in average_of):
        for metric in metrics:
            if metric != "hm" and all(metric in paired[c] for c in average_of):
                parts = [paired[c][metric] for c in average_of]  # the columns' test images are disjoint
                same_seeds = len({len(p.per_seed) for p in parts}) == 1
                paired.setdefault("average", {})[metric] = _mean_of_independent(
                    parts, parts[0].seeds, tuple(np.mean([p.per_seed for p in parts], axis=0)) if same_seeds else ())
        average = paired.get("average", {})
        if "hm" in metrics and "base" in average and "new" in average:
            average["hm"] = _hm_difference(row.cells["average"], average["base"], average["new"])
    return paired


def _hm_difference(cells: Dict[str, Cell], base: PairedDifference, new: PairedDifference) -> PairedDifference:
    """Δ H from the rows' own H (``H(row) − H(host)`` with the host's base/new = row's − Δ), SE by
    the delta method (base and new are disjoint image sets, so independent); per seed linearised."""
    b, n = cells["base"].mean, cells["new"].mean
    d_base, d_new = _hm_gradient(b, n)
    delta = harmonic_mean(b, n) - harmonic_mean(b - base.mean, n - new.mean)
    se = math.sqrt((d_base * base.se) ** 2 + (d_new * new.se) ** 2)
    per_seed = tuple(d_base * x + d_new * y for x, y in zip(base.per_seed, new.per_seed)) \
        if len(base.per_seed) == len(new.per_seed) else ()
    return PairedDifference(delta, se, seeds=base.seeds, images=base.images + new.images, per_seed=per_seed)


def _derive_hm(cells: Dict[str, Cell], metrics: Sequence[str]) -> None:
    if "hm" not in metrics:
        return
    base, new = cells["base"].mean, cells["new"].mean
    hm = cells["hm"]
    hm.missing = sorted(set(cells["base"].missing) | set(cells["new"].missing))
    hm.incomplete = sorted(set(cells["base"].incomplete) | set(cells["new"].incomplete))
    if base is not None and new is not None:
        hm.derived = harmonic_mean(base, new)


def _fill_average(cells: Dict[str, Dict[str, Cell]], metrics: Sequence[str], over: List[str]) -> None:
    for metric in metrics:
        if metric == "hm":
            continue
        means = [cells[c][metric].mean for c in over]
        average = cells["average"][metric]
        average.missing = sorted({s for c in over for s in cells[c][metric].missing})
        average.incomplete = sorted({s for c in over for s in cells[c][metric].incomplete})
        if all(v is not None for v in means):
            average.derived = float(np.mean(means))
        else:
            average.complete = False
    if "hm" in metrics:
        base, new = cells["average"]["base"], cells["average"]["new"]
        cells["average"]["hm"].missing = sorted(set(base.missing) | set(new.missing))
        cells["average"]["hm"].incomplete = sorted(set(base.incomplete) | set(new.incomplete))
        if base.derived is not None and new.derived is not None:
            cells["average"]["hm"].derived = harmonic_mean(base.derived, new.derived)
        else:
            cells["average"]["hm"].complete = False


# ------------------------------------------------------------------------------------ rendering
def _fmt(value: Optional[float], signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _fmt_cell(cell: Cell) -> str:
    if cell.mean is None:
        return "—" if cell.complete else "incomplete"
    std = cell.std
    return _fmt(cell.mean) + (f" ± {std:.2f}" if std is not None else "")


def _seed_flag(cells: Iterable[Cell], n_seeds: int) -> str:
    """``3/3`` when every seed of these cells finished, else which seeds are missing or incomplete
    (for derived cells, H and averages, the seeds missing from any of their inputs)."""
    cells = list(cells)
    missing = sorted({s for c in cells for s in c.missing})
    incomplete = sorted({s for c in cells for s in c.incomplete})
    if not missing and not incomplete:
        done = min((len(c.values) for c in cells if c.derived is None), default=n_seeds)
        return f"{done}/{n_seeds}"
    parts = []
    if missing:
        parts.append("missing seed " + ",".join(map(str, missing)))
    if incomplete:
        parts.append("incomplete seed " + ",".join(map(str, incomplete)))
    return "⚠ " + "; ".join(parts)


def _paper_text(table: ResultTable, row: RowKey, column: str, metric: str, notes: List[str]) -> str:
    value = table.paper_value(row, column, metric)
    if value is None:
        return "—"
    erratum = table.paper.erratum(row, column, metric) if table.paper else None
    if erratum is None:
        return _fmt(value)
    notes.append(f"{row} {column} {METRIC_NAMES.get(metric, metric)}: printed {value:.2f}, "
                 f"recomputed from the paper's own cells {erratum['recomputed']:.2f}. {erratum['note']}")
    return _fmt(value) + f"[^{len(notes)}]"


def _reference_rows(table: ResultTable, column: str) -> Dict[RowKey, str]:
    """The paper's reference rows (methods without public code, ``"reference"`` in its JSON) with
    cells in ``column`` that the table has no row of: shown under it with the paper's numbers only."""
    if table.paper is None:
        return {}
    ours = {row.key for row in table.rows}
    return {key: why for key, why in table.paper.references.items()
            if key not in ours and table.paper.cells[key].get(column)}


def _diff(table: ResultTable, row: ResultRow, column: str, metric: str) -> Optional[float]:
    ours, paper = row.cells[column][metric].mean, table.paper_value(row.key, column, metric)
    return None if ours is None or paper is None else ours - paper


def _paired_text(row: ResultRow, column: str, metric: str) -> str:
    if row.host is None:
        return ""
    found = row.paired.get(column, {}).get(metric)
    return "—" if found is None else found.text()


def to_markdown(table: ResultTable, column_names: Optional[Mapping[str, str]] = None) -> str:
    """Markdown: a panel per dataset for base/new/H tables, one wide table for accuracy tables."""
    names = dict(column_names or {})
    out = [f"## {table.title}", ""]
    if len(table.seeds) > 1:
        out += ["Mean ± population std over seeds.", ""]
    hosted = [row for row in table.rows if row.host is not None]
    if hosted:
        out += ["Δ vs host: the row minus its host on the same test images (paired per image), ± its standard "
                "error over the test images pooled over seeds; [seeds ± x]: the standard error from the spread "
                "of the per-seed differences (it also holds training noise); *within noise* when |Δ| ≤ 1 "
                "per-image SE.", ""]
    notes: List[str] = []
    # the paper's columns only for metrics it reports, and only when it prints rows (figures do not)
    paper_metrics = [m for m in table.metrics if table.paper and table.paper.cells and m in table.paper.metrics]
    if "base" in table.metrics and "new" in table.metrics:
        for column in table.columns:
            out += [f"### {names.get(column, column)}", ""]
            head = ["Method"] + [METRIC_NAMES.get(m, m) for m in table.metrics]
            head += [f"Paper {METRIC_NAMES.get(m, m)}" for m in paper_metrics]
            head += [f"Δ {METRIC_NAMES.get(m, m)}" for m in paper_metrics]
            host_metrics = [m for m in table.metrics if m in ("base", "new", "hm")] if hosted else []
            head += [f"Δ vs host {METRIC_NAMES.get(m, m)}" for m in host_metrics]
            head.append("Seeds")
            out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for row in table.rows:
                line = [row.label] + [_fmt_cell(row.cells[column][m]) for m in table.metrics]
                line += [_paper_text(table, row.key, column, m, notes) for m in paper_metrics]
                line += [_fmt(_diff(table, row, column, m), signed=True) for m in paper_metrics]
                line += [_paired_text(row, column, m) for m in host_metrics]
                line.append(_seed_flag(row.cells[column].values(), len(table.seeds)))
                out.append("| " + " | ".join(line) + " |")
            for key, why in _reference_rows(table, column).items():  # the paper's numbers only, never ours
                if why not in notes:
                    notes.append(why)
                line = [f"{table.paper.labels[key]} (paper only[^{notes.index(why) + 1}])"] + ["—"] * len(table.metrics)
                line += [_paper_text(table, key, column, m, notes) for m in paper_metrics]
                line += ["—"] * len(paper_metrics) + [""] * len(host_metrics) + ["not run"]
                out.append("| " + " | ".join(line) + " |")
            out.append("")
    else:
        metric = table.metrics[0]
        head = ["Method"] + [names.get(c, c) for c in table.columns] + ["Seeds"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in table.rows:
            flag = _seed_flag((row.cells[c][metric] for c in table.columns), len(table.seeds))
            out.append("| " + " | ".join([row.label] + [_fmt_cell(row.cells[c][metric]) for c in table.columns]
                                         + [flag]) + " |")
            if table.paper and row.key in table.paper.cells:
                paper = [_paper_text(table, row.key, c, metric, notes) for c in table.columns]
                diff = [_fmt(_diff(table, row, c, metric), signed=True) for c in table.columns]
                out.append("| " + " | ".join(["  paper"] + paper + [""]) + " |")
                out.append("| " + " | ".join(["  Δ"] + diff + [""]) + " |")
        out.append("")
    problems = [p for row in table.rows for p in row.problems]
    if problems:
        out += [f"**Missing or incomplete runs** ({len(problems)}, not averaged):", ""]
        out += [f"- {p}" for p in problems[:MAX_LISTED_PROBLEMS]]
        if len(problems) > MAX_LISTED_PROBLEMS:
            out.append(f"- ... and {len(problems) - MAX_LISTED_PROBLEMS} more (the CSV's missing_seeds and "
                       "incomplete_seeds columns list them all)")
        out.append("")
    if notes:
        out += [f"[^{i}]: {note}" for i, note in enumerate(notes, 1)] + [""]
    return "\n".join(out)


CSV_FIELDS = ["row", "method", "variant", "column", "metric", "mean", "std", "n_seeds", "expected_seeds",
              "missing_seeds", "incomplete_seeds", "paper", "diff", "paper_erratum", "host", "host_diff",
              "host_diff_se"]


def to_csv(table: ResultTable) -> str:
    """One line per (row, column, metric): ours, the paper's, the difference and the seed flags."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in table.rows:
        for column in table.columns:
            for metric in table.metrics:
                cell = row.cells[column][metric]
                paper = table.paper_value(row.key, column, metric)
                erratum = table.paper.erratum(row.key, column, metric) if table.paper else None
                paired = row.paired.get(column, {}).get(metric)
                writer.writerow({
                    "row": str(row.key), "method": row.key.method,
                    "variant": ";".join(f"{k}={v}" for k, v in row.key.variant),
                    "column": column, "metric": metric,
                    "mean": "" if cell.mean is None else f"{cell.mean:.4f}",
                    "std": "" if cell.std is None else f"{cell.std:.4f}",
                    "n_seeds": len(cell.values) if cell.derived is None else "",
                    "expected_seeds": len(table.seeds),
                    "missing_seeds": " ".join(map(str, cell.missing)),
                    "incomplete_seeds": " ".join(map(str, cell.incomplete)),
                    "paper": "" if paper is None else f"{paper:.2f}",
                    "diff": "" if cell.mean is None or paper is None else f"{cell.mean - paper:.4f}",
                    "paper_erratum": "" if erratum is None else f"recomputed {erratum['recomputed']:.2f}",
                    "host": "" if row.host is None else str(row.host),
                    "host_diff": "" if paired is None else f"{paired.mean:.4f}",
                    "host_diff_se": "" if paired is None else f"{paired.se:.4f}",
                })
    return buffer.getvalue()


def plot_sweep(table: ResultTable, x_key: str, path: Path, column: str = "average",
               metric: str = "hm", time_metric: Optional[str] = None) -> Path:
    """Figure-4-style PNG: ``metric`` of ``column`` against the swept setting ``x_key`` (e.g.
    NFE), one line per method, ``time_metric`` dashed on a second axis when the table has it. Rows
    without the setting (the host method without diffusion) are drawn as flat reference lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if column not in table.columns:
        raise ValueError(f"plot column {column!r} is not in the table; columns: {table.columns}")
    with_time = bool(time_metric) and time_metric in table.metrics
    swept: Dict[str, List[Tuple[float, float, float]]] = {}
    flat: Dict[str, Tuple[float, float]] = {}
    for row in table.rows:
        values = row.cells[column]
        y = values[metric].mean
        t = values[time_metric].mean if with_time else None
        point = (float("nan") if y is None else y, float("nan") if t is None else t)
        variant = dict(row.key.variant)
        if x_key in variant:
            swept.setdefault(row.key.method, []).append((float(variant[x_key]),) + point)
        else:
            flat[row.label] = point
    if not swept:
        raise ValueError(f"no row of the table has the setting {x_key!r} to plot against")
    xs_all = sorted({p[0] for points in swept.values() for p in points})
    fig, axis = plt.subplots(figsize=(5.5, 3.8))
    time_axis = axis.twinx() if with_time else None
    name = METRIC_NAMES.get(metric, metric)
    for method, points in sorted(swept.items()):
        points.sort()
        line, = axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{method} {name}")
        if time_axis is not None:
            time_axis.plot([p[0] for p in points], [p[2] for p in points], marker="s", linestyle="--",
                           color=line.get_color(), label=f"{method} {time_metric}")
    for label, (y, t) in flat.items():
        line = axis.axhline(y, linestyle=":", color="grey", label=f"{label} {name}")
        if time_axis is not None:
            time_axis.axhline(t, linestyle="-.", color="grey", label=f"{label} {time_metric}")
    axis.set_xticks(xs_all)
    axis.set_xlabel(x_key)
    axis.set_ylabel(f"{name} (%), {column}")
    handles, labels = axis.get_legend_handles_labels()
    if time_axis is not None:
        time_axis.set_ylabel(time_metric)
        more_handles, more_labels = time_axis.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    axis.legend(handles, labels, fontsize="small", loc="best")
    axis.set_title(table.title, fontsize="small")
    return _save_figure(fig, path)


def _save_figure(figure, path: Path) -> Path:
    """Lay out, write as a 120-dpi PNG (creating the folder) and close ``figure``; returns the path."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_bars(table: ResultTable, path: Path, column: Optional[str] = None,
              column_names: Optional[Mapping[str, str]] = None) -> Path:
    """Grouped bar chart of one column of a base-to-new table: Base, New and H per row, each bar
    labelled with its value and the number of seeds it averages. The y-axis starts at 0, so a
    1-point difference looks like one; error bars (population std over seeds) only where a bar
    averages >= 2 seeds. H is computed from the mean Base and New, so it has no error bar."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    column = column or table.columns[0]
    metrics = [m for m in ("base", "new", "hm") if m in table.metrics]
    if not metrics:
        raise ValueError(f"plot_bars needs a base-to-new table (metrics base/new/hm), got {table.metrics}")
    figure, axis = plt.subplots(figsize=(1.8 + 1.6 * len(table.rows), 3.8))
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        cells = [row.cells[column][metric] for row in table.rows]
        means = [float("nan") if c.mean is None else c.mean for c in cells]
        seeds = [len(table.seeds) - len(c.missing) - len(c.incomplete) if c.derived is not None else len(c.values)
                 for c in cells]
        errors = [0.0 if c.std is None else c.std for c in cells]
        positions = [x + (i - (len(metrics) - 1) / 2) * width for x in range(len(table.rows))]
        bars = axis.bar(positions, means, width, label=METRIC_NAMES.get(metric, metric),
                        yerr=errors if any(errors) else None, capsize=3)
        axis.bar_label(bars, labels=[f"{m:.1f}\nn={n}" for m, n in zip(means, seeds)], fontsize=7, padding=2)
    axis.set_xticks(range(len(table.rows)), [row.label for row in table.rows])
    axis.set_ylim(0.0, 115.0)  # from 0: bar heights compare honestly; the top leaves room for the labels
    axis.set_yticks(range(0, 101, 20))
    axis.set_ylabel("accuracy (%)")
    name = dict(column_names or {}).get(column, column)
    errors_note = "error bars: population std over seeds" if len(table.seeds) >= 2 else "1 seed: no error bars"
    axis.set_title(f"{table.title}\n{name}; n = seeds per bar; {errors_note}", fontsize="small")
    axis.legend(loc="upper left", fontsize="small", bbox_to_anchor=(1.0, 1.0))
    return _save_figure(figure, path)


# ------------------------------------------------------------------------- run dirs without a spec
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


def run_groups_markdown(groups: Sequence[RunGroup]) -> str:
    """Markdown summary of run groups: each metric's mean ± std and the incomplete runs."""
    out = ["| Runs | Metric | Mean ± std | Complete |", "|---|---|---|---|"]
    problems = []
    for group in groups:
        for metric, (mean, std, n) in group.summary().items():
            out.append(f"| {group.name} | {metric} | {mean:.2f} ± {std:.2f} | {n}/{len(group.runs)} |")
        problems += [f"- {r.run_dir}: {r.status} ({r.reason})" for r in group.runs if r.status != COMPLETE]
    if problems:
        out += ["", "**Missing or incomplete runs** (not averaged):", ""] + problems
    return "\n".join(out) + "\n"


def run_groups_csv(groups: Sequence[RunGroup]) -> str:
    """CSV of run groups: one line per (group, metric) with mean, std and the complete/total runs."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["runs", "metric", "mean", "std", "complete", "total"])
    for group in groups:
        for metric, (mean, std, n) in group.summary().items():
            writer.writerow([group.name, metric, f"{mean:.4f}", f"{std:.4f}", n, len(group.runs)])
    return buffer.getvalue()
