"""Experiment specs -> runs -> results: ``prompt-diffusion sweep`` and the tables of ``table``.

A spec (``configs/experiments/<name>.yaml``, data, not code) names one table or figure of the
paper: its protocol, methods (trainer + config), datasets, seeds, shots and at most one swept
setting. It expands into *chains*: one training run followed by the evaluation runs that load its
checkpoint, each a plain ``prompt-diffusion train ...`` command (CoOp's ``train.py`` flags):

- ``base2new``: train on the base classes of each dataset (its final test is the *base* accuracy),
  then evaluate on the new classes (``test_new``).
- ``cross_dataset`` (Tables 2, 3, 6): train on the source dataset with all its classes (its final
  test is the source accuracy), then evaluate on every target dataset.

Run directories mirror the upstream scripts (``<out>/base2new/train_base/<dataset>/shots_16/
<trainer>/<config>/seed1`` ...), so Tables 2 and 3 share their ImageNet training runs, and a run
whose log holds a result is never run again. An interrupted run is simply started again: the
engine resumes training from the checkpoint in its output dir.

One job per module, dependencies pointing down the list: ``executors`` (on this machine or SLURM)
-> ``run`` (a run, a chain, the stale-folder check) -> ``validate`` (names, configs, datasets) ->
``plan`` (chains, run folders and configs, table cells) -> ``spec`` (reading a spec; its keys are
listed there). The names below are the package's public ones.
"""
from prompt_diffusion.shipped import CONFIGS_DIR
from prompt_diffusion.sweep.executors import run_local, submit_slurm
from prompt_diffusion.sweep.plan import Run, expand, measurements, merged_config, table_for
from prompt_diffusion.sweep.run import stale_message, stale_runs
from prompt_diffusion.sweep.spec import (EXPERIMENTS_DIR, Spec, SpecError, experiment_names, load_spec, resolve_spec,
                                         select)
from prompt_diffusion.sweep.validate import missing_datasets, registered_trainers, validate_spec

__all__ = [
    "CONFIGS_DIR", "EXPERIMENTS_DIR", "Run", "Spec", "SpecError", "expand", "experiment_names",
    "load_spec", "measurements", "merged_config", "missing_datasets", "registered_trainers", "resolve_spec",
    "run_local", "select", "stale_message", "stale_runs", "submit_slurm", "table_for",
    "validate_spec",
]
