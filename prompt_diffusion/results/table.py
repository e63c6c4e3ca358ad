"""Paper-style tables from run logs: mean ± std over seeds per cell, H, the average column, and each
hosted row's paired difference to its host.

Tables follow the paper: mean over seeds per dataset, the harmonic mean H from the *averaged* base
and new accuracies, and the average column as the mean of the per-dataset means (H again from the
averaged base and new). The paper's numbers (``prompt_diffusion/data/paper_results/*.json``) stand
beside each cell with the difference. ± is the population standard deviation over seeds (as
``parse_test_res.py``). A row's paired difference to its host (``paired``) is carried on to H by the
delta method and to the average column by independent columns.
"""
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from prompt_diffusion.results.paired import PairedDifference, combine_seeds, mean_of_independent, paired_runs
from prompt_diffusion.results.paper import PaperTable, RowKey
from prompt_diffusion.results.runs import COMPLETE, MISSING, RunResult, read_run


def harmonic_mean(base: float, new: float) -> float:
    """H = 2·base·new / (base + new), the base-to-new summary of CoCoOp and every paper since."""
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


def _hm_gradient(base: float, new: float) -> Tuple[float, float]:
    """(∂H/∂base, ∂H/∂new) of H = 2bn / (b + n)."""
    total = (base + new) ** 2
    return 2.0 * new ** 2 / total, 2.0 * base ** 2 / total


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
                paired.setdefault("average", {})[metric] = mean_of_independent(
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
