"""Tables as figures (PNG, matplotlib's Agg backend): Figure-4-style lines over a swept setting, and
the grouped bars of a base-to-new table (the demo's chart).
"""
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from prompt_diffusion.results.render import METRIC_NAMES
from prompt_diffusion.results.table import ResultTable


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
