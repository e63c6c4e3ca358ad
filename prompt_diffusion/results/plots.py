"""Tables as figures (PNG, matplotlib's Agg backend): Figure-4-style lines over a swept setting, and
each row's paired difference to its host with its noise (the demo's chart).
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


def plot_differences(table: ResultTable, path: Path, columns: Optional[List[str]] = None,
                     column_names: Optional[Mapping[str, str]] = None, metrics: Tuple[str, ...] = ("base", "new", "hm")
                     ) -> Path:
    """Each row's paired difference to its host (Base, New and H, in points), one panel per column
    (overall and each style, say), with error bars of 2 standard errors of the test images (about a 95 %
    interval; the bars of the seeds' spread beside them when there are several seeds). The axis spans
    the differences, so a 1-point difference is visible; one row label per line, so none overlap."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = columns or list(table.columns)
    rows = [row for row in table.rows if row.host is not None and any(row.paired.get(c) for c in columns)]
    if not rows:
        raise ValueError("plot_differences needs rows paired to a host (a spec's PD rows)")
    labels = {row.key: row.label for row in table.rows}
    names = dict(column_names or {})
    figure, axes = plt.subplots(1, len(columns), figsize=(2.0 + 3.0 * len(columns), 1.2 + 0.55 * len(rows) * len(metrics)),
                                sharey=True, squeeze=False)
    spans = []
    for axis, column in zip(axes[0], columns):
        for r, row in enumerate(rows):
            for m, metric in enumerate(metrics):
                difference = row.paired.get(column, {}).get(metric)
                if difference is None:
                    continue
                y = -(r * (len(metrics) + 1) + m)
                axis.errorbar(difference.mean, y, xerr=2 * difference.se, fmt="o", color=f"C{m}", capsize=3,
                              label=METRIC_NAMES.get(metric, metric) if (r == 0 and column == columns[0]) else None)
                if difference.seed_se is not None:
                    axis.errorbar(difference.mean, y - 0.3, xerr=2 * difference.seed_se, fmt="none", color=f"C{m}",
                                  alpha=0.45, capsize=2)
                spans += [difference.mean - 2 * difference.se, difference.mean + 2 * difference.se]
        axis.axvline(0.0, color="grey", linewidth=0.8)
        axis.set_title(names.get(column, column), fontsize="small")
        axis.set_xlabel("Δ vs host (points)")
        axis.grid(axis="x", alpha=0.3)
    bound = max(1.0, max(abs(v) for v in spans)) * 1.15 if spans else 1.0
    for axis in axes[0]:
        axis.set_xlim(-bound, bound)
    positions = [-(r * (len(metrics) + 1) + (len(metrics) - 1) / 2) for r in range(len(rows))]
    axes[0][0].set_yticks(positions, [f"{row.label}\nvs {labels.get(row.host, str(row.host))}" for row in rows],
                          fontsize=7)
    axes[0][0].legend(fontsize="small", loc="lower left")
    figure.suptitle(f"{table.title}\npaired difference per image, bars: ±2 SE of the test images"
                    + ("; faint bars: ±2 SE of the seeds" if len(table.seeds) > 1 else ""), fontsize="small")
    return _save_figure(figure, path)
