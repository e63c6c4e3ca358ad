"""The demo: the experiment spec ``configs/experiments/demo.yaml``, run and printed like any other.

``configs/experiments/demo.yaml`` is base-to-new on the mixed-style toy world (``ToyWorldMixed``:
each image's style drawn at random, so a prompt per image has something to gain) with the shipped
small CLIP: zero-shot CLIP, the style-oracle ceiling, a host trainer and its PD variant, each
column split by style (the spec's comments say which settings differ from the upstream configs and
why). Under the table, one plain sentence per PD row says whether its difference to its host
clears the noise. The demo applies the command line's changes (methods, seeds,
shots, epochs, test images, extra ``KEY VALUE`` opts) to that spec, writes the result as
``<out>/demo.yaml``, runs it with the sweep's functions (``prompt_diffusion.sweep``: normal run
folders under ``<out>/base2new/``, finished runs skipped, interrupted ones resumed) and prints the
table ``prompt-diffusion table <out>/demo.yaml --output-dir <out>`` prints (``prompt_diffusion.results``:
mean ± population std over seeds, PD rows paired image by image with their host), also written as
``demo_table.md``, ``demo_table.csv`` and the bar chart ``demo_table.png``.

Each run is a child process with ``threads`` torch threads, ``jobs`` of them at a time: tiny models
on a shared CPU go faster as several one-thread processes than as one process whose threads wait
for each other. The trainers' progress lines (epoch, batch, ETA) are shown as they come.
"""
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml
from tqdm import tqdm

from prompt_diffusion.results.plots import plot_differences
from prompt_diffusion.results.render import to_csv, to_markdown
from prompt_diffusion.results.table import ResultTable
from prompt_diffusion.sweep.executors import run_local
from prompt_diffusion.sweep.plan import Run, expand, table_for
from prompt_diffusion.sweep.spec import EXPERIMENTS_DIR, Spec, load_spec
from prompt_diffusion.sweep.validate import validate_spec

DEMO_SPEC = EXPERIMENTS_DIR / "demo.yaml"
# console lines of a run shown while it goes: Dassl's progress line, the evaluation and its result
PROGRESS_LINE = re.compile(r"^(epoch \[\d+/\d+\] batch|Evaluate on|\* accuracy)")


def _spec_methods() -> Dict[str, dict]:
    return yaml.safe_load(DEMO_SPEC.read_text(encoding="utf-8"))["methods"]


#: the demo spec's rows with nothing to train (zero-shot CLIP, the style oracle): added by ``zero_shot``
REFERENCE_ROWS = tuple(name for name, entry in _spec_methods().items()
                       if isinstance(entry, dict) and entry.get("train") is False)
#: the methods of the demo spec a user can choose
DEMO_METHODS = tuple(name for name in _spec_methods() if name not in REFERENCE_ROWS)


@dataclass
class DemoSettings:
    """What the demo changes in its spec; the defaults are the ones ``prompt-diffusion demo`` uses."""

    out_dir: Path
    methods: Tuple[str, ...] = ("CoCoOp", "CoCoOpPD")
    seeds: Tuple[int, ...] = (1,)
    shots: int = 16
    epochs: int = 2
    test_per_class: int = 10
    data_root: Optional[Path] = None  # DATASET.ROOT for the rendered toy world; None: <out_dir>/data
    zero_shot: bool = True  # add the rows with nothing to train (REFERENCE_ROWS: zero-shot CLIP, the style oracle)
    verbose: bool = False  # show every console line of the runs (they always go to console.txt and log.txt)
    threads: int = 1  # torch threads per run
    jobs: int = 2  # runs at a time
    extra_opts: List[str] = field(default_factory=list)  # KEY VALUE opts added to every run

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in DEMO_METHODS]
        if unknown:
            raise ValueError(f"demo methods {unknown} are not supported; choose from {list(DEMO_METHODS)}")
        if not self.seeds:
            raise ValueError("the demo needs at least one seed")
        for name in ("shots", "epochs", "test_per_class", "threads", "jobs"):
            if getattr(self, name) < 1:
                raise ValueError(f"demo setting {name} must be >= 1, got {getattr(self, name)}")
        if len(self.extra_opts) % 2:
            raise ValueError(f"demo opts must be KEY VALUE pairs, got {self.extra_opts}")
        self.out_dir = Path(self.out_dir)
        self.data_root = self.out_dir / "data" if self.data_root is None else Path(self.data_root)


def write_spec(settings: DemoSettings) -> Path:
    """``configs/experiments/demo.yaml`` with the settings' changes, as ``<out>/demo.yaml``."""
    data = yaml.safe_load(DEMO_SPEC.read_text(encoding="utf-8"))
    chosen = (REFERENCE_ROWS if settings.zero_shot else ()) + tuple(settings.methods)
    data["methods"] = {name: entry for name, entry in data["methods"].items() if name in chosen}
    data["seeds"], data["shots"] = list(settings.seeds), settings.shots
    n_seeds = len(settings.seeds)
    data["title"] = (f"Demo: base-to-new on ToyWorldMixed (toy CLIP, {settings.shots} shot{'s' * (settings.shots > 1)}, "
                     f"{settings.epochs} epoch{'s' * (settings.epochs > 1)}, {n_seeds} seed{'s' * (n_seeds > 1)})")
    data["opts"].update({"OPTIM.MAX_EPOCH": settings.epochs, "DATASET.TOY.TEST_PER_CLASS": settings.test_per_class})
    data["opts"].update(zip(settings.extra_opts[::2], settings.extra_opts[1::2]))
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    path = settings.out_dir / "demo.yaml"
    header = ("# Written by `prompt-diffusion demo` from configs/experiments/demo.yaml with its command line's "
              "changes.\n# Reprint the table: prompt-diffusion table " + f"{path} --output-dir {settings.out_dir}\n")
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def demo_spec(settings: DemoSettings) -> Spec:
    """The checked spec of this demo (written to ``<out>/demo.yaml``)."""
    spec = load_spec(str(write_spec(settings)))
    validate_spec(spec)
    return spec


def show_progress(verbose: bool):
    """``echo(run, line)`` for ``run_local``: a run's progress lines (every line when ``verbose``),
    prefixed with its method, seed and phase."""
    def echo(run: Run, line: str) -> None:
        if verbose or PROGRESS_LINE.match(line):
            tqdm.write(f"  [{run.method} seed {run.seed} {run.phase}] {line}")
    return echo


def run_demo(settings: DemoSettings, spec: Spec) -> ResultTable:
    """Run every unfinished run of the demo's ``spec``; returns its table. Raises when a run failed."""
    chains = expand(spec, settings.out_dir)
    threads = str(settings.threads)
    failures = run_local(chains, str(settings.data_root), jobs=settings.jobs,
                         env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads},
                         echo=show_progress(settings.verbose))
    if failures:
        raise RuntimeError(f"{len(failures)} demo run(s) failed (their console.txt and log.txt say why):\n"
                           + "\n".join(failures))
    return table_for(spec, settings.out_dir, with_paper=False)


def write_outputs(table: ResultTable, out_dir: Path, column_names: Dict[str, str]) -> Dict[str, Path]:
    """Write ``demo_table.md``, ``demo_table.csv`` and ``demo_table.png``; returns their paths."""
    written = {"markdown": out_dir / "demo_table.md", "csv": out_dir / "demo_table.csv"}
    written["markdown"].write_text(to_markdown(table, column_names), encoding="utf-8")
    written["csv"].write_text(to_csv(table), encoding="utf-8")
    written["png"] = plot_differences(table, out_dir / "demo_table.png", column_names=column_names)
    return written


def verdicts(table: ResultTable, column: str, column_name: str) -> List[str]:
    """One plain sentence per row with a host: its H difference to the host on ``column``, paired
    image by image, and whether that clears the noise of the test images and of the seeds."""
    labels = {row.key: row.label for row in table.rows}
    lines = []
    for row in table.rows:
        difference = row.paired.get(column, {}).get("hm") if row.host is not None else None
        if difference is None:
            continue
        seeds = f"{difference.seeds} seed{'s' * (difference.seeds > 1)}"
        head = (f"{row.label} vs {labels.get(row.host, str(row.host))}, H on {column_name}: "
                f"{difference.mean:+.2f} ± {difference.se:.2f} points (paired over the same test images, {seeds})")
        seed_se = difference.seed_se
        verdict = difference.verdict()
        if verdict == "within noise":
            said = "within 2 standard errors of the test images: this run shows no difference."
        elif seed_se is not None and verdict != "past 2 SE per image and seeds":
            said = (f"past 2 standard errors of the test images but not 2 of the seeds' spread (± {seed_se:.2f}): "
                    "it may be seed luck.")
        else:
            direction = "better" if difference.mean > 0 else "worse"
            more = (" and of the seeds (± {:.2f})".format(seed_se) if seed_se is not None else
                    "; one seed, so training noise is not in that error: run --seeds 1 2 3")
            said = f"{direction} than its host by more than 2 standard errors of the test images{more}."
        lines.append(f"{head}: {said}")
    return lines


def main(settings: DemoSettings) -> ResultTable:
    """Run the demo, print its table, the verdict on each PD row and where everything went;
    returns the table."""
    started = time.time()
    spec = demo_spec(settings)
    table = run_demo(settings, spec)
    written = write_outputs(table, settings.out_dir, spec.column_names)
    print()
    print(to_markdown(table, spec.column_names))
    column = spec.datasets[0]
    for line in verdicts(table, column, spec.column_names.get(column, column)):
        print(line)
    print(f"demo wall time {time.time() - started:.0f} s ({settings.jobs} run(s) at a time, {settings.threads} "
          f"thread(s) each); runs under {settings.out_dir / 'base2new'}")
    for kind, path in written.items():
        print(f"{kind}: {path}")
    print(f"reprint: prompt-diffusion table {settings.out_dir / 'demo.yaml'} --output-dir {settings.out_dir}")
    return table


def run_dirs(settings: DemoSettings, method: str, seed: int) -> Sequence[Path]:
    """The run folders of ``method`` and ``seed`` (training or base evaluation first, then new)."""
    spec = load_spec(str(settings.out_dir / "demo.yaml"))
    return [run.output_dir for chain in expand(spec, settings.out_dir) for run in chain.runs
            if run.method == method and run.seed == seed]


__all__ = ["DemoSettings", "DEMO_METHODS", "DEMO_SPEC", "REFERENCE_ROWS", "verdicts", "write_spec", "demo_spec", "run_demo", "run_dirs",
           "write_outputs", "main"]
