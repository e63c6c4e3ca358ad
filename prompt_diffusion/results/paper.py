"""The paper's tables and figures as data (``data/paper_results/<id>.json``), and the row keys that
index every table: a method and the setting it varies.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

PAPER_RESULTS_DIR = Path(__file__).resolve().parent.parent / "data" / "paper_results"


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
