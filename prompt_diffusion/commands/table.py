"""prompt-diffusion table SPEC|GLOB: the paper-style table of a spec's runs, or a summary of run dirs.

With a spec (a shipped experiment name or a .yaml path): Base/New/H (or accuracy) per dataset and
the average, mean ± population std over seeds, H from the averaged base and new, the paper's cell
beside each with the difference, a PD row's paired difference to its host, and a flag for missing
or incomplete seeds (never averaged). With a glob of run directories (quote it): the runs grouped
by their path without seed<N>, each metric's mean ± population std, as CoOp's parse_test_res.py
prints it.

Examples:

  prompt-diffusion table table1 --output-dir output --csv table1.csv
  prompt-diffusion table figure4 --output-dir output --plot figure4.png
  prompt-diffusion table "output/base2new/train_base/dtd/shots_16/CoCoOp/*/seed*"
"""
import argparse
import glob
from pathlib import Path

from prompt_diffusion.commands import HelpFormatter
from prompt_diffusion.commands.sweep import add_selection_arguments, load_selected
from prompt_diffusion.results.plots import plot_sweep
from prompt_diffusion.results.render import run_groups_csv, run_groups_markdown, to_csv, to_markdown
from prompt_diffusion.results.runs import group_run_dirs, log_files
from prompt_diffusion.sweep.plan import pd_settings_notes, table_for
from prompt_diffusion.sweep.spec import SpecError, experiment_names, resolve_spec

DATASET_NAMES = {
    "imagenet": "ImageNet", "caltech101": "Caltech101", "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars", "oxford_flowers": "Flowers102", "food101": "Food101",
    "fgvc_aircraft": "FGVCAircraft", "sun397": "SUN397", "dtd": "DTD", "eurosat": "EuroSAT", "ucf101": "UCF101",
    "imagenetv2": "-V2", "imagenet_sketch": "-Sketch", "imagenet_a": "-A", "imagenet_r": "-R", "average": "Average",
}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "table", help="paper-style table of a spec's runs (mean ± std over seeds, paper beside), or of run dirs",
        description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("spec", help=f"a shipped experiment ({', '.join(experiment_names())}), a spec .yaml, "
                                     "or a quoted glob of run directories")
    add_selection_arguments(parser)
    parser.add_argument("--csv", type=Path, help="also write the table as CSV (one line per row, dataset, metric)")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown to this file")
    parser.add_argument("--plot", type=Path, help="write the Figure-4-style PNG (metric and time against the "
                                                  "swept setting)")
    parser.add_argument("--no-paper", action="store_true", help="leave out the paper's numbers")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        resolve_spec(args.spec)
    except SpecError as error:
        if any(ch in args.spec for ch in "*?[") or Path(args.spec).is_dir():
            return _run_dirs(args)
        print(f"error: {error}")
        return 2
    try:
        spec = load_selected(args)
        table = table_for(spec, Path(args.output_dir), with_paper=not args.no_paper)
    except SpecError as error:
        print(f"error: {error}")
        return 2
    text = to_markdown(table, {**DATASET_NAMES, **spec.column_names})
    notes = pd_settings_notes(spec)
    if notes:
        text += "\nPrompt-diffusion settings beside the shipped TRAINER.PD defaults:\n" + "".join(
            f"- {note}\n" for note in notes)
    print(text)
    _write(args.markdown, text)
    _write(args.csv, to_csv(table))
    if args.plot:
        plot = spec.plot or {}
        x = plot.get("x") or (spec.variants.name if spec.variants else None)
        if x is None:
            print("error: --plot needs a spec with a swept setting (variants), e.g. figure4")
            return 2
        path = plot_sweep(table, x, args.plot, column=plot.get("column", "average"), metric=plot.get("metric", "hm"),
                          time_metric=plot.get("time_metric"))
        print(f"plot: {path}")
    return 0


def _run_dirs(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in sorted(glob.glob(args.spec, recursive=True))]
    run_dirs = [p for p in paths if p.is_dir() and (log_files(p) or p.name.startswith("seed"))]
    if not run_dirs:
        print(f"error: {args.spec!r} is neither an experiment ({', '.join(experiment_names())}) nor a glob "
              "matching run directories (folders with a log.txt)")
        return 2
    if args.plot:
        print("error: --plot needs an experiment spec with a swept setting (e.g. figure4), not run dirs")
        return 2
    groups = group_run_dirs(run_dirs)
    text = run_groups_markdown(groups)
    print(text)
    _write(args.markdown, text)
    _write(args.csv, run_groups_csv(groups))
    return 0


def _write(path, text: str) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
        print(f"wrote {path}")
