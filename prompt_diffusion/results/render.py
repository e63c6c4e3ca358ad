"""Tables as text: Markdown (a panel per dataset, the paper's cells and the host differences beside
ours, the missing runs listed) and CSV (one line per row, column and metric); run groups likewise.
"""
import csv
import io
import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

from prompt_diffusion.results.paper import RowKey
from prompt_diffusion.results.runs import COMPLETE, RunGroup
from prompt_diffusion.results.table import Cell, ResultRow, ResultTable

METRIC_NAMES = {"base": "Base", "new": "New", "hm": "H", "accuracy": "Acc."}
MAX_LISTED_PROBLEMS = 40  # missing/incomplete runs listed under a Markdown table


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
                "of the per-seed differences (it also holds training noise); a difference is one past 2 SE "
                "(about a 95 % interval), and each cell says which it cleared: *within noise* (|Δ| ≤ 2 per-image "
                "SE), *past 2 SE per image* (not the seeds' 2 SE, or one seed), *past 2 SE per image and seeds*.", ""]
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
