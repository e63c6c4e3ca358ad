"""Results of runs: log parsing, mean ± std over seeds, paper-style tables beside the paper's numbers.

One job per module, dependencies pointing down the list:

- ``runs``: run folders and their logs (``read_run``: complete, incomplete or missing; run groups
  of folders that differ by seed);
- ``paper``: the paper's transcribed tables (``load_paper_table``) and the row keys (``RowKey``);
- ``paired``: a run's paired difference to another on the same images, ± its standard error;
- ``table``: ``build_table``: runs -> cells (mean ± std over seeds, H, the average column, the
  paired difference of a PD row to its host);
- ``render``: tables as Markdown and CSV; ``plots``: as PNG figures.

The names below are the package's public ones (the command line, benchmarks, tests and docs use them).
"""
from prompt_diffusion.results.paired import PairedDifference, combine_seeds, paired_difference, paired_runs
from prompt_diffusion.results.paper import PAPER_RESULTS_DIR, RowKey, load_paper_table, paper_table_ids
from prompt_diffusion.results.plots import plot_differences, plot_sweep
from prompt_diffusion.results.render import run_groups_csv, run_groups_markdown, to_csv, to_markdown
from prompt_diffusion.results.runs import (COMPLETE, INCOMPLETE, MISSING, group_run_dirs, log_files, parse_log_text,
                                           read_run)
from prompt_diffusion.results.table import Measurement, ResultTable, build_table, harmonic_mean

__all__ = [
    "COMPLETE", "INCOMPLETE", "MISSING", "Measurement", "PAPER_RESULTS_DIR", "PairedDifference", "ResultTable",
    "RowKey", "build_table", "combine_seeds", "group_run_dirs", "harmonic_mean",
    "load_paper_table", "log_files", "paired_difference", "paired_runs", "paper_table_ids", "parse_log_text",
    "plot_differences", "plot_sweep", "read_run", "run_groups_csv", "run_groups_markdown", "to_csv", "to_markdown",
]
