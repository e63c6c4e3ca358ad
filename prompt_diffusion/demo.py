"""The demo: base-to-new on the toy world with the shipped small CLIP, host trainer vs. its PD variant.

For each method and seed it runs what upstream's ``base2new_train.sh`` / ``base2new_test.sh`` run,
through ``prompt-diffusion train``: train on the base half of ``ToyWorld`` (16 shots), test on
base, then ``--eval-only`` on the new half from the saved model. The run folders are normal ones:

    <out>/base2new/train_base/ToyWorld/shots_<N>/<Method>/seed<S>/   (log.txt, checkpoints)
    <out>/base2new/test_new/ToyWorld/shots_<N>/<Method>/seed<S>/

Results are read back from the logs (``prompt_diffusion.results``) into a paper-style table
(Base, New, H, mean ± population std over seeds, and the difference the PD variant makes over its
host, paired per test image with its standard error), printed and written as ``demo_table.md``,
``demo_table.csv`` and ``demo_table.png``.

Settings that differ from the upstream trainer configs, because the toy CLIP is small and this
runs on a CPU: 32x32 inputs with flips only (a random resized crop would cut the shapes the
labels are about), fp32, AdamW (the toy CLIP's logit scale is about 15, not 100, so SGD at the
upstream rate barely moves the prompts), few epochs, and a small denoiser (2 layers, width 128)
conditioned on the frozen image feature, with 8 diffusion draws per sample, 2 overfitting steps
and the training-free DPM-Solver++(2M) sampler instead of AMED (the toy benchmark's PD settings,
docs/toy_benchmark.md).
"""
import argparse
import contextlib
import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from prompt_diffusion.results import (COMPLETE, PairedDifference, combine_seeds, harmonic_mean, paired_runs,
                                      read_run)

DATASET = "ToyWorld"
ZERO_SHOT = "ZeroshotCLIP"
# host trainer of each PD variant, and the upstream config file each host starts from
HOST_OF = {"CoOpPD": "CoOp", "CoCoOpPD": "CoCoOp", "VPTPD": "VPT"}
HOST_CONFIGS = {
    "CoOp": "CoOp/vit_b16_ep50_ctxv1.yaml",
    "CoCoOp": "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml",
    "VPT": "VPT/vit_b16_c2_ep5_batch4_4.yaml",
}
PREC_NODES = {"CoOp": "COOP", "CoCoOp": "COCOOP", "VPT": "VPT"}
DEMO_METHODS = tuple(HOST_CONFIGS) + tuple(HOST_OF)


@dataclass
class DemoSettings:
    """What the demo runs; the defaults are the ones ``prompt-diffusion demo`` uses."""

    out_dir: Path
    methods: Tuple[str, ...] = ("CoCoOp", "CoCoOpPD")
    seeds: Tuple[int, ...] = (1,)
    shots: int = 16
    epochs: int = 2
    batch_size: int = 4
    lr: float = 2e-3
    test_per_class: int = 10
    data_root: Optional[Path] = None  # DATASET.ROOT for the rendered toy world; None: <out_dir>/data
    zero_shot: bool = True  # add the ZeroshotCLIP row (no training)
    verbose: bool = False  # show the trainers' own output (it always goes to each run's log.txt)
    extra_opts: List[str] = field(default_factory=list)  # appended to every run's KEY VALUE opts

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in DEMO_METHODS]
        if unknown:
            raise ValueError(f"demo methods {unknown} are not supported; choose from {list(DEMO_METHODS)}")
        if not self.seeds:
            raise ValueError("the demo needs at least one seed")
        for name in ("shots", "epochs", "batch_size", "test_per_class"):
            if getattr(self, name) < 1:
                raise ValueError(f"demo setting {name} must be >= 1, got {getattr(self, name)}")
        self.out_dir = Path(self.out_dir)
        self.data_root = self.out_dir / "data" if self.data_root is None else Path(self.data_root)


@dataclass
class DemoRow:
    """One table row: a method's Base / New / H per seed, and the PD variant's gain over its host."""

    method: str
    base: List[float]
    new: List[float]
    host: Optional[str] = None
    # paired difference to the host on the same test images, pooled over seeds: {"base"|"new": ...}
    paired: Dict[str, PairedDifference] = field(default_factory=dict)

    @property
    def hm(self) -> List[float]:
        return [harmonic_mean(b, n) for b, n in zip(self.base, self.new)]


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))  # population std, as prompt_diffusion.results


def metric_stats(row: "DemoRow", metric: str) -> Tuple[float, float]:
    """(mean, population std over seeds) of ``base``, ``new`` or ``hm``; H's mean is the H of the
    mean Base and mean New (as the papers and ``prompt_diffusion.results`` report it)."""
    if metric != "hm":
        return _mean_std(getattr(row, metric))
    return harmonic_mean(float(np.mean(row.base)), float(np.mean(row.new))), _mean_std(row.hm)[1]


def run_opts(settings: DemoSettings, method: str) -> List[str]:
    """The ``KEY VALUE`` opts every run of ``method`` gets on top of its host's upstream config."""
    opts = [
        "DATASET.NUM_SHOTS", str(settings.shots),
        "DATASET.TOY.TEST_PER_CLASS", str(settings.test_per_class),
        "MODEL.BACKBONE.NAME", "toy",
        "INPUT.SIZE", "(32, 32)",
        "INPUT.TRANSFORMS", "['random_flip', 'normalize']",
        "DATALOADER.NUM_WORKERS", "0",
        "DATALOADER.TRAIN_X.BATCH_SIZE", str(settings.batch_size),
        "OPTIM.NAME", "adamw",
        "OPTIM.LR", str(settings.lr),
        "OPTIM.MAX_EPOCH", str(settings.epochs),
        "OPTIM.WARMUP_EPOCH", "0",
        "TRAIN.PRINT_FREQ", "32",
    ]
    host = HOST_OF.get(method, method)
    if host in PREC_NODES:
        opts += [f"TRAINER.{PREC_NODES[host]}.PREC", "fp32"]
    if host == "VPT":  # the toy CLIP's vision tower has 4 layers
        opts += ["TRAINER.VPT.PROMPT_DEPTH_VISION", "4", "TRAINER.VPT.N_CTX_VISION", "4"]
    if method in HOST_OF:
        opts += [
            "TRAINER.PD.DENOISER.LAYERS", "2", "TRAINER.PD.DENOISER.WIDTH", "128",
            "TRAINER.PD.DENOISER.HEADS", "4", "TRAINER.PD.OVERFIT.ITERS", "2",
            "TRAINER.PD.SAMPLER", "dpmpp_2m", "TRAINER.PD.AMED.DISTILL_ITERS", "0",
            "TRAINER.PD.COND", "image_feature", "TRAINER.PD.DIFFUSION_DRAWS", "8",
        ]
    return opts + list(settings.extra_opts)


def run_dirs(settings: DemoSettings, method: str, seed: int) -> Tuple[Path, Path]:
    """(training run on base, evaluation run on new) folders of ``method`` and ``seed``."""
    tail = Path(DATASET) / f"shots_{settings.shots}" / method / f"seed{seed}"
    root = settings.out_dir / "base2new"
    return root / "train_base" / tail, root / "test_new" / tail


def _config_path(relative: str) -> str:
    import prompt_diffusion.configs

    return str(Path(prompt_diffusion.configs.__file__).resolve().parent / relative)


def _train_command(argv: List[str], verbose: bool) -> None:
    """Run ``prompt-diffusion train`` with ``argv``; its output goes to the run's log (and the
    console when ``verbose``)."""
    from prompt_diffusion.commands import train

    parser = argparse.ArgumentParser(prog="prompt-diffusion train")
    train.add_arguments(parser)
    args = parser.parse_args(argv)
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        train.run(args)


def _accuracy(run_dir: Path, training: bool) -> float:
    result = read_run(run_dir, training=training)
    if result.status != COMPLETE:
        raise RuntimeError(f"demo run {run_dir} has no result ({result.status}: {result.reason}); see its log.txt")
    return result.metrics["accuracy"]


def run_method(settings: DemoSettings, method: str, seed: int) -> Tuple[float, float]:
    """Train ``method`` on base (or only evaluate, for zero-shot), then evaluate on new: (base, new) %."""
    train_dir, test_dir = run_dirs(settings, method, seed)
    common = ["--root", str(settings.data_root), "--seed", str(seed), "--trainer", method,
              "--dataset-config-file", _config_path("datasets/toy_world.yaml")]
    if method != ZERO_SHOT:
        common += ["--config-file", _config_path("trainers/" + HOST_CONFIGS[HOST_OF.get(method, method)])]
    opts = run_opts(settings, method)
    if method == ZERO_SHOT:
        _train_command(common + ["--eval-only", "--output-dir", str(train_dir)]
                       + opts + ["DATASET.SUBSAMPLE_CLASSES", "base"], settings.verbose)
    else:
        _train_command(common + ["--output-dir", str(train_dir)]
                       + opts + ["DATASET.SUBSAMPLE_CLASSES", "base"], settings.verbose)
    base = _accuracy(train_dir, training=method != ZERO_SHOT)
    model_dir = [] if method == ZERO_SHOT else ["--model-dir", str(train_dir), "--load-epoch", str(settings.epochs)]
    _train_command(common + ["--eval-only", "--output-dir", str(test_dir)] + model_dir
                   + opts + ["DATASET.SUBSAMPLE_CLASSES", "new"], settings.verbose)
    return base, _accuracy(test_dir, training=False)


def run_demo(settings: DemoSettings) -> List[DemoRow]:
    """Every run of the demo, in order (zero-shot, then each method), under one progress bar."""
    methods = ((ZERO_SHOT,) if settings.zero_shot else ()) + tuple(settings.methods)
    rows = {m: DemoRow(m, [], [], HOST_OF.get(m)) for m in methods}
    jobs = [(method, seed) for method in methods for seed in settings.seeds]
    with tqdm(jobs, desc="demo runs", unit="run") as bar:
        for method, seed in bar:
            bar.set_postfix_str(f"{method} seed {seed}")
            base, new = run_method(settings, method, seed)
            rows[method].base.append(base)
            rows[method].new.append(new)
            tqdm.write(f"{method} seed {seed}: base {base:.1f}  new {new:.1f}  H {harmonic_mean(base, new):.1f}")
    for row in rows.values():
        if row.host in rows:
            row.paired = paired_to_host(settings, row.method, row.host)
    return list(rows.values())


def paired_to_host(settings: DemoSettings, method: str, host: str) -> Dict[str, PairedDifference]:
    """``method`` minus ``host`` on the same base and new test images, pooled over the seeds."""
    found: Dict[str, List[PairedDifference]] = {"base": [], "new": []}
    for seed in settings.seeds:
        for metric, own, other in zip(("base", "new"), run_dirs(settings, method, seed), run_dirs(settings, host, seed)):
            difference, reason = paired_runs(own, other)
            if difference is None:
                raise RuntimeError(f"demo: cannot pair {method} with {host}: {reason}")
            found[metric].append(difference)
    return {metric: combine_seeds(values) for metric, values in found.items()}


def _delta(rows: Dict[str, DemoRow], row: DemoRow, metric: str) -> Optional[float]:
    host = rows.get(row.host) if row.host else None
    if host is None:
        return None
    return metric_stats(row, metric)[0] - metric_stats(host, metric)[0]


def table_markdown(rows: Sequence[DemoRow]) -> str:
    """The paper-style table: Base / New / H as mean ± population std over seeds, and what the PD
    variant changes over its host (Δ Base and Δ New ± their paired standard errors)."""
    by_name = {row.method: row for row in rows}
    n_seeds = max(len(row.base) for row in rows)
    lines = [f"Base-to-new on {DATASET} (toy CLIP, {n_seeds} seed{'s' if n_seeds > 1 else ''}; accuracy %)", "",
             "| Method | Base | New | H | Δ Base | Δ New | Δ H |", "|---|---|---|---|---|---|---|"]
    noted = False
    for row in rows:
        cells = []
        for metric in ("base", "new", "hm"):
            mean, std = metric_stats(row, metric)
            cells.append(f"{mean:.2f} ± {std:.2f}" if n_seeds > 1 else f"{mean:.2f}")
        for metric in ("base", "new", "hm"):
            delta = _delta(by_name, row, metric)
            paired = row.paired.get(metric)
            cells.append("" if delta is None else paired.text() if paired is not None else f"{delta:+.2f}")
            noted = noted or paired is not None
        lines.append(f"| {row.method} | " + " | ".join(cells) + " |")
    if n_seeds > 1:
        lines += ["", "± after a mean: population std over seeds."]
    if noted:
        lines += ["Δ: the PD variant minus its host on the same test images, ± the standard error of the paired "
                  "per-image difference (pooled over seeds); within noise when |Δ| ≤ 1 SE."]
    return "\n".join(lines) + "\n"


def table_csv(rows: Sequence[DemoRow]) -> str:
    """One line per method: per-metric mean and std, the seeds' values, and the Δ over the host."""
    by_name = {row.method: row for row in rows}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["method", "host", "seeds", "base_mean", "base_std", "new_mean", "new_std",
                     "hm_mean", "hm_std", "delta_base", "delta_new", "delta_hm", "delta_base_se", "delta_new_se",
                     "base_per_seed", "new_per_seed"])
    for row in rows:
        stats = [f"{v:.4f}" for metric in ("base", "new", "hm") for v in metric_stats(row, metric)]
        deltas = [_delta(by_name, row, metric) for metric in ("base", "new", "hm")]
        writer.writerow([row.method, row.host or "", len(row.base), *stats,
                         *["" if d is None else f"{d:.4f}" for d in deltas],
                         *["" if m not in row.paired else f"{row.paired[m].se:.4f}" for m in ("base", "new")],
                         " ".join(f"{v:.2f}" for v in row.base), " ".join(f"{v:.2f}" for v in row.new)])
    return buffer.getvalue()


def plot_table(rows: Sequence[DemoRow], path: Path) -> Path:
    """Grouped bar chart (Base, New, H per method, std as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = (("base", "Base"), ("new", "New"), ("hm", "H"))
    figure, axis = plt.subplots(figsize=(1.6 + 1.4 * len(rows), 3.6))
    width = 0.8 / len(metrics)
    for i, (metric, label) in enumerate(metrics):
        stats = [metric_stats(row, metric) for row in rows]
        positions = [x + (i - 1) * width for x in range(len(rows))]
        axis.bar(positions, [m for m, _ in stats], width, yerr=[s for _, s in stats], label=label, capsize=3)
    axis.set_xticks(range(len(rows)), [row.method for row in rows])
    axis.set_ylabel("accuracy (%)")
    axis.set_title(f"Base-to-new on {DATASET} (toy CLIP)")
    axis.legend(loc="upper center", ncol=len(metrics))
    lowest = min(metric_stats(row, metric)[0] for row in rows for metric, _ in metrics)
    axis.set_ylim(max(0.0, 10.0 * (lowest // 10) - 10.0), 100.0)  # differences of a few points stay visible
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_outputs(rows: Sequence[DemoRow], out_dir: Path) -> Dict[str, Path]:
    """Write ``demo_table.md``, ``demo_table.csv`` and ``demo_table.png``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"markdown": out_dir / "demo_table.md", "csv": out_dir / "demo_table.csv"}
    written["markdown"].write_text(table_markdown(rows))
    written["csv"].write_text(table_csv(rows))
    written["png"] = plot_table(rows, out_dir / "demo_table.png")
    return written


def main(settings: DemoSettings, threads: Optional[int] = None) -> List[DemoRow]:
    """Run the demo, print its table and where everything went; returns the rows."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    started = time.time()
    rows = run_demo(settings)
    written = write_outputs(rows, settings.out_dir)
    print()
    print(table_markdown(rows))
    print(f"demo wall time {time.time() - started:.0f} s on {torch.get_num_threads()} thread(s); "
          f"runs under {settings.out_dir / 'base2new'}")
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return rows


__all__ = ["DemoSettings", "DemoRow", "run_demo", "run_method", "run_opts", "run_dirs", "table_markdown",
           "table_csv", "write_outputs", "main", "DEMO_METHODS", "HOST_OF"]
