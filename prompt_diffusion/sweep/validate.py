"""What a spec needs before it runs: registered trainers, trainer and dataset configs that exist,
config opts every run's config accepts, and (``data check``) the benchmark datasets on disk.
"""
from typing import List, Optional, Sequence

import yaml

from prompt_diffusion.results.paper import paper_table_ids
from prompt_diffusion.shipped import CONFIGS_DIR
from prompt_diffusion.sweep.plan import eval_variants, merged_config, train_variants
from prompt_diffusion.sweep.spec import Spec, SpecError


def dataset_config_names() -> List[str]:
    return sorted(p.stem for p in (CONFIGS_DIR / "datasets").glob("*.yaml"))


def trainer_config_names() -> List[str]:
    root = CONFIGS_DIR / "trainers"
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.glob("*/*.yaml"))


def registered_trainers(imports: Sequence[str] = ()) -> List[str]:
    """Trainer names in the registry once this repo's trainers, the installed plug-ins and
    ``imports`` (``--import`` modules) are imported."""
    from prompt_diffusion.engine import TRAINER_REGISTRY
    from prompt_diffusion.plugins import load_plugins

    load_plugins(imports)

    return sorted(TRAINER_REGISTRY.registered_names())


def validate_spec(spec: Spec, trainers: Optional[Sequence[str]] = None) -> None:
    """Every trainer registered, every dataset and trainer config present, every opt a known config
    key: one ``SpecError`` listing all problems, each with the valid names."""
    trainers = registered_trainers() if trainers is None else list(trainers)
    datasets, configs = dataset_config_names(), trainer_config_names()
    bad_trainers = [m for m in spec.methods if m.trainer not in trainers]
    bad_configs = [m for m in spec.methods if m.config not in configs]
    bad_datasets = [d for d in spec.all_datasets if d not in datasets]
    problems = [f"method {m.name}: trainer {m.trainer!r} is not registered" for m in bad_trainers]
    problems += [f"method {m.name}: config {m.config!r} is not in {CONFIGS_DIR / 'trainers'}" for m in bad_configs]
    problems += [f"dataset {d!r} has no config in {CONFIGS_DIR / 'datasets'}" for d in bad_datasets]
    if spec.paper is not None and spec.paper not in paper_table_ids():
        problems.append(f"paper table {spec.paper!r} is not transcribed; transcribed: {', '.join(paper_table_ids())}")
    if not bad_configs:
        problems += _config_problems(spec)
    if problems:
        valid = ([f"registered trainers: {', '.join(trainers)}"] if bad_trainers else []) + (
            [f"trainer configs: {', '.join(configs)}"] if bad_configs else []) + (
            [f"dataset configs: {', '.join(datasets)}"] if bad_datasets else [])
        raise SpecError(f"{spec.path}:\n  " + "\n  ".join(problems + valid))


def _config_problems(spec: Spec) -> List[str]:
    """Each method's config merged with the spec's opts at every swept value; PD settings checked."""
    from prompt_diffusion.config import validate_pd_cfg
    from prompt_diffusion.trainer_kinds import is_pd_trainer

    problems = []
    for method in spec.methods:
        values = [v for v in train_variants(spec, method) + eval_variants(spec, method)]
        for value in values:
            try:
                cfg = merged_config(method, spec, value)
                if is_pd_trainer(method.trainer):
                    validate_pd_cfg(cfg)
            except Exception as error:  # yacs raises KeyError/ValueError/AssertionError naming the key
                where = "" if value is None else f" at {spec.variants.name}={value}"
                problems.append(f"method {method.name}{where}: config {method.config} with opts "
                                f"{spec.opts + method.opts}: {error}")
                break
    return problems


def missing_datasets(datasets: Sequence[str], root: str) -> List[str]:
    """``data check``'s report of each benchmark dataset (by config name, e.g. ``imagenet_a``)
    that is absent or broken under ``root``; empty when all are fine. Datasets outside the 15
    benchmarks (the generated toy world) need no files and are not checked."""
    from prompt_diffusion.data import BENCHMARK_DATASETS
    from prompt_diffusion.data.check import check_dataset, format_check

    reports = []
    for dataset in datasets:
        config = yaml.safe_load((CONFIGS_DIR / "datasets" / f"{dataset}.yaml").read_text(encoding="utf-8"))
        name = config["DATASET"]["NAME"]
        if name in BENCHMARK_DATASETS:
            check = check_dataset(BENCHMARK_DATASETS[name], root)
            if not check.ok:
                reports.append(format_check(check))
    return reports
