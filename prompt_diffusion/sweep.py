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

Spec keys (``configs/experiments/table1.yaml`` is an example):

- ``protocol`` (``base2new`` | ``cross_dataset``), ``seeds``, ``shots`` (16), ``title``, ``paper``
  (a ``data/paper_results`` id shown beside the results).
- ``methods``: ``name: <Host>/<config>`` (the trainer is ``name``; configs live in
  ``configs/trainers``) or ``name: {trainer, config, opts, load_epoch, label, host, train, weights}``;
  ``train: false`` for a method with nothing to train (zero-shot CLIP): its runs only evaluate.
  ``weights: <method>``: nothing to train either; its runs evaluate that method's trained models
  with this method's trainer and opts (e.g. test-time tuning over CoCoOp's trained prompts).
- ``datasets`` (base2new) or ``source`` + ``targets`` (cross_dataset): dataset config names.
- ``domains`` (base2new): test-only datasets with the same classes (domain shift, e.g.
  ``toy_world_sketch``); each trained model is also evaluated on their base and new halves, and
  they join the average column.
- ``host`` (per method): the row a PD method is compared with image by image (default: the name
  without ``PD`` when the spec has it).
- ``opts``: config opts for every run (``{KEY: VALUE}``); a run dir gets a hash of them.
- ``variants``: ``{name, key, values, scope: train | eval, methods}``: one swept config key. ``train``
  trains a model per value; ``eval`` evaluates one model at each value (base accuracy then comes
  from a ``test_base`` run at that value).
- ``by_domain`` (base2new): names of the domain labels of the datasets' images (``batch["domain"]``,
  in index order, e.g. ToyWorldMixed's styles): each dataset also gets a column per domain,
  ``<dataset>/<name>``, the accuracy on the same runs' test images of that domain (from their
  predictions files: no extra runs), paired to the host image by image like every column.
- ``extra_metrics``: ``{table metric: log metric}`` read from the evaluation runs' result blocks.
- ``plot``: ``{x, metric, column, time_metric}`` for ``table --plot``; ``column_names``.
"""
import hashlib
import os
import shlex
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from queue import Queue
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import yaml
from tqdm import tqdm

from prompt_diffusion.results import (COMPLETE, MISSING, Measurement, PaperTable, ResultTable, RowKey, build_table,
                                      load_paper_table, paper_table_ids, read_run)
from prompt_diffusion.run_record import PLACEMENT_KEYS, RUN_CONFIG, flat_keys
from prompt_diffusion.shipped import CONFIGS_DIR

EXPERIMENTS_DIR = CONFIGS_DIR / "experiments"
PROTOCOLS = ("base2new", "cross_dataset")
VARIANT_SCOPES = ("train", "eval")

_SPEC_KEYS = {"name", "title", "paper", "protocol", "seeds", "shots", "methods", "datasets", "domains", "source",
              "targets", "opts", "variants", "extra_metrics", "plot", "column_names", "by_domain"}
_METHOD_KEYS = {"trainer", "config", "opts", "load_epoch", "label", "host", "train", "weights"}
TRAIN_PHASES = ("train_base", "train")
_VARIANT_KEYS = {"name", "key", "values", "scope", "methods"}
_PLOT_KEYS = {"x", "metric", "column", "time_metric"}


class SpecError(ValueError):
    """A spec that cannot run: the message names the spec, the bad entry and what is allowed."""


# ------------------------------------------------------------------------------------------ spec
@dataclass
class Method:
    """A table row's method: the registered trainer and its config (relative to configs/trainers)."""

    name: str
    trainer: str
    config: str
    opts: List[str] = field(default_factory=list)
    load_epoch: Optional[int] = None
    label: Optional[str] = None
    host: Optional[str] = None
    train: bool = True  # False: nothing to train (zero-shot), every run is an evaluation
    weights: Optional[str] = None  # the method whose trained models this one evaluates (train is False)


@dataclass
class Variants:
    """One swept setting: ``key`` (a config key) takes each of ``values``; ``scope`` ``train``
    trains a model per value, ``eval`` evaluates one trained model at each value."""

    name: str
    key: str
    values: List[Any]
    scope: str = "train"
    methods: Optional[List[str]] = None  # methods it applies to (default: all)


@dataclass
class Spec:
    name: str
    path: Path
    title: str
    protocol: str
    seeds: List[int]
    shots: int
    methods: List[Method]
    datasets: List[str] = field(default_factory=list)  # base2new
    domains: List[str] = field(default_factory=list)  # base2new: shifted test-only datasets
    by_domain: List[str] = field(default_factory=list)  # base2new: names of the images' domain labels
    source: Optional[str] = None  # cross_dataset
    targets: List[str] = field(default_factory=list)
    paper: Optional[str] = None
    opts: List[str] = field(default_factory=list)
    variants: Optional[Variants] = None
    extra_metrics: Dict[str, str] = field(default_factory=dict)  # table metric -> metric in the log
    plot: Optional[Dict[str, str]] = None
    column_names: Dict[str, str] = field(default_factory=dict)

    @property
    def all_datasets(self) -> List[str]:
        if self.protocol == "base2new":
            return list(self.datasets) + list(self.domains)
        return [self.source] + list(self.targets)

    def hosts(self) -> Dict[RowKey, RowKey]:
        """Each method's host row (its ``host``, else its name without ``PD`` when that is a method)."""
        names = {m.name for m in self.methods}
        found = {}
        for method in self.methods:
            host = method.host or (method.name[:-2] if method.name.endswith("PD") else None)
            if host in names and host != method.name:
                found[RowKey(method.name)] = RowKey(host)
        return found


def experiment_names() -> List[str]:
    """The shipped specs: ``configs/experiments/<name>.yaml``."""
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))


def resolve_spec(name_or_path: str) -> Path:
    """A spec file path, or the name of a shipped spec (``table1``); unknown names list the shipped ones."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise SpecError(f"spec file {path} does not exist")
        return path
    shipped = EXPERIMENTS_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    raise SpecError(f"unknown experiment {name_or_path!r}; shipped: {', '.join(experiment_names())} "
                    f"(or give the path of a .yaml spec)")


def _check_keys(where: str, given: Dict[str, Any], allowed: set) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _as_list(where: str, value: Any, kind: type) -> list:
    if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise SpecError(f"{where} must be a list of {kind.__name__}, got {value!r}")
    return list(value)


def _opts(where: str, value: Any) -> List[str]:
    """Config opts as ``[KEY, VALUE, ...]`` strings (a mapping ``{KEY: VALUE}`` is accepted too)."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [str(x) for kv in value.items() for x in kv]
    if isinstance(value, list) and len(value) % 2 == 0:
        return [str(x) for x in value]
    raise SpecError(f"{where} must be a KEY: VALUE mapping or a list of KEY VALUE pairs, got {value!r}")


def load_spec(name_or_path: str) -> Spec:
    """Read and check a spec's structure (names are checked against the registry by ``validate_spec``)."""
    path = resolve_spec(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec is a YAML mapping with keys {sorted(_SPEC_KEYS)}")
    where = str(path)
    _check_keys(where, data, _SPEC_KEYS)
    for key in ("protocol", "seeds", "methods"):
        if key not in data:
            raise SpecError(f"{where}: missing required key {key!r}")
    if data["protocol"] not in PROTOCOLS:
        raise SpecError(f"{where}: protocol {data['protocol']!r} is unknown; allowed: {list(PROTOCOLS)}")
    methods = []
    if not isinstance(data["methods"], dict) or not data["methods"]:
        raise SpecError(f"{where}: methods must map a method name to its config (or to {sorted(_METHOD_KEYS)})")
    for name, entry in data["methods"].items():
        entry = {"config": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or "config" not in entry:
            raise SpecError(f"{where}: methods.{name} needs a config (e.g. 'CoCoOp/vit_b16_c4_ep10_batch1_ctxv1')")
        _check_keys(f"{where}: methods.{name}", entry, _METHOD_KEYS)
        methods.append(Method(name=str(name), trainer=str(entry.get("trainer", name)), config=str(entry["config"]),
                              opts=_opts(f"{where}: methods.{name}.opts", entry.get("opts")),
                              load_epoch=entry.get("load_epoch"), label=entry.get("label"),
                              host=entry.get("host"), train=bool(entry.get("train", "weights" not in entry)),
                              weights=entry.get("weights")))
    spec = Spec(
        name=str(data.get("name", path.stem)), path=path, title=str(data.get("title", path.stem)),
        protocol=data["protocol"], seeds=_as_list(f"{where}: seeds", data["seeds"], int),
        shots=int(data.get("shots", 16)), methods=methods, paper=data.get("paper"),
        opts=_opts(f"{where}: opts", data.get("opts")), extra_metrics=dict(data.get("extra_metrics") or {}),
        column_names=dict(data.get("column_names") or {}),
    )
    trained = {m.name for m in methods if m.train}
    for method in methods:
        if method.weights is not None and (method.train or method.weights not in trained):
            raise SpecError(f"{where}: methods.{method.name}.weights must name another method of the spec that "
                            f"trains (one of {sorted(trained)}), and the method itself trains nothing; "
                            f"got weights {method.weights!r}, train {method.train}")
    if spec.protocol == "base2new":
        if "datasets" not in data or "source" in data or "targets" in data:
            raise SpecError(f"{where}: protocol base2new takes 'datasets' (not 'source'/'targets')")
        spec.datasets = _as_list(f"{where}: datasets", data["datasets"], str)
        spec.domains = _as_list(f"{where}: domains", data.get("domains") or [], str)
        spec.by_domain = _as_list(f"{where}: by_domain", data.get("by_domain") or [], str)
    else:
        if "source" not in data or "targets" not in data or "datasets" in data:
            raise SpecError(f"{where}: protocol cross_dataset takes 'source' and 'targets' (not 'datasets')")
        if "domains" in data or "by_domain" in data:
            raise SpecError(f"{where}: 'domains' and 'by_domain' belong to protocol base2new")
        spec.source = str(data["source"])
        spec.targets = _as_list(f"{where}: targets", data["targets"], str)
    if data.get("variants") is not None:
        variants = data["variants"]
        if not isinstance(variants, dict):
            raise SpecError(f"{where}: variants must be a mapping with keys {sorted(_VARIANT_KEYS)}")
        _check_keys(f"{where}: variants", variants, _VARIANT_KEYS)
        if variants.get("scope", "train") not in VARIANT_SCOPES:
            raise SpecError(f"{where}: variants.scope {variants['scope']!r} is unknown; "
                            f"allowed: {list(VARIANT_SCOPES)}")
        if not isinstance(variants.get("values"), list) or not variants["values"]:
            raise SpecError(f"{where}: variants.values must be a non-empty list")
        spec.variants = Variants(name=str(variants.get("name", variants.get("key", "variant"))),
                                 key=str(variants.get("key", "")), values=list(variants["values"]),
                                 scope=variants.get("scope", "train"), methods=variants.get("methods"))
        if not spec.variants.key:
            raise SpecError(f"{where}: variants.key (the config key it sets, e.g. TRAINER.PD.NFE) is required")
        unknown = sorted(set(spec.variants.methods or []) - {m.name for m in methods})
        if unknown:
            raise SpecError(f"{where}: variants.methods {unknown} are not among the spec's methods "
                            f"{[m.name for m in methods]}")
    if data.get("plot") is not None:
        _check_keys(f"{where}: plot", data["plot"], _PLOT_KEYS)
        spec.plot = dict(data["plot"])
    return spec


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

    problems = []
    for method in spec.methods:
        values = [v for v in _train_variants(spec, method) + _eval_variants(spec, method)]
        for value in values:
            try:
                cfg = merged_config(method, spec, value)
                if method.trainer.endswith("PD"):
                    validate_pd_cfg(cfg)
            except Exception as error:  # yacs raises KeyError/ValueError/AssertionError naming the key
                where = "" if value is None else f" at {spec.variants.name}={value}"
                problems.append(f"method {method.name}{where}: config {method.config} with opts "
                                f"{spec.opts + method.opts}: {error}")
                break
    return problems


# ------------------------------------------------------------------------------------------ runs
@dataclass(frozen=True)
class Run:
    """One ``prompt-diffusion train`` invocation."""

    method: str
    variant: Tuple[Tuple[str, Any], ...]
    trainer: str
    config_file: Path
    dataset: str
    seed: int
    phase: str  # train_base | test_new | test_base | train | test
    output_dir: Path
    opts: Tuple[str, ...]
    model_dir: Optional[Path] = None  # the trained model an evaluation loads (None: nothing to load)
    load_epoch: Optional[int] = None
    imports: Tuple[str, ...] = ()  # --import modules (trainers defined outside this package)

    @property
    def training(self) -> bool:
        return self.phase in TRAIN_PHASES

    @property
    def row(self) -> RowKey:
        return RowKey(self.method, self.variant)

    def argv(self, root: str) -> List[str]:
        """The ``train`` subcommand's arguments (CoOp's ``train.py`` flags, then config opts)."""
        args = ["train", "--root", root, "--seed", str(self.seed), "--trainer", self.trainer,
                "--dataset-config-file", _show_path(CONFIGS_DIR / "datasets" / f"{self.dataset}.yaml"),
                "--config-file", _show_path(self.config_file), "--output-dir", str(self.output_dir)]
        args += [part for module in self.imports for part in ("--import", module)]
        if self.model_dir is not None:
            args += ["--model-dir", str(self.model_dir), "--load-epoch", str(self.load_epoch)]
        if not self.training:
            args.append("--eval-only")
        return args + list(self.opts)

    def command(self, root: str) -> str:
        """The line a user could type: ``prompt-diffusion train ...``."""
        return "prompt-diffusion " + " ".join(shlex.quote(a) if not a.startswith("$") else a for a in self.argv(root))

    def status(self) -> str:
        return read_run(self.output_dir, self.training).status

    def config_text(self) -> str:
        """The run's config as ``train`` resolves it and records it in ``RUN_CONFIG``, less the flags
        that place the run (root, seed, output and model dirs): what ``stale_runs`` compares."""
        cfg = _resolved_config(self.config_file, self.opts, self.dataset)
        cfg.TRAINER.NAME = self.trainer
        return cfg.dump()


@dataclass
class Chain:
    """A training run and the evaluation runs of its checkpoint, run in this order."""

    runs: List[Run]

    def pending(self) -> List[Run]:
        return [run for run in self.runs if run.status() != COMPLETE]


def _show_path(path: Path) -> str:
    """A path relative to the working directory when it lies below it (shorter commands), else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _variant_values(spec: Spec, method: Method, scope: str) -> List[Optional[Any]]:
    v = spec.variants
    if v is None or v.scope != scope or (v.methods is not None and method.name not in v.methods):
        return [None]
    return list(v.values)


def _train_variants(spec: Spec, method: Method) -> List[Optional[Any]]:
    return _variant_values(spec, method, "train")


def _eval_variants(spec: Spec, method: Method) -> List[Any]:
    return [v for v in _variant_values(spec, method, "eval") if v is not None]


def _variant_opts(spec: Spec, value: Optional[Any]) -> List[str]:
    return [] if value is None else [spec.variants.key, str(value)]


def _resolved_config(config_file: Path, opts: Sequence[str], dataset: Optional[str] = None):
    """Defaults, project keys, the dataset file (when given), the trainer config file, then ``opts``:
    the order in which ``train`` merges them."""
    from prompt_diffusion.config import extend_cfg
    from prompt_diffusion.engine import get_cfg_default

    cfg = get_cfg_default()
    extend_cfg(cfg)
    if dataset is not None:
        cfg.merge_from_file(str(CONFIGS_DIR / "datasets" / f"{dataset}.yaml"))
    cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(list(opts))
    return cfg


def merged_config(method: Method, spec: Spec, variant_value: Optional[Any] = None):
    """The yacs config a training run of ``method`` gets, before its dataset: defaults, project keys,
    the trainer config file, then the spec's and the method's opts (as ``train`` merges them)."""
    return _resolved_config(CONFIGS_DIR / "trainers" / f"{method.config}.yaml",
                            spec.opts + method.opts + _variant_opts(spec, variant_value))


def _dir_tag(opts: Sequence[str]) -> str:
    """A short stable suffix for run dirs whose runs get extra opts (so they never collide)."""
    return "" if not opts else "_" + hashlib.sha1(" ".join(opts).encode()).hexdigest()[:8]


def _value_tag(spec: Spec, value: Optional[Any]) -> str:
    return "" if value is None else f"_{spec.variants.name}{value}"


def _variant(spec: Spec, value: Optional[Any]) -> Tuple[Tuple[str, Any], ...]:
    return () if value is None else ((spec.variants.name, value),)


def _evaluations(spec: Spec, dataset: str, eval_value: Optional[Any]) -> List[Tuple[str, str, List[str]]]:
    """(phase, dataset, opts) of the evaluation runs of a model trained on ``dataset``, at one
    swept setting (``None``: no eval-scope setting)."""
    if spec.protocol == "base2new":
        shots = ["DATASET.NUM_SHOTS", str(spec.shots)]
        evaluations = [("test_new", dataset, shots + ["DATASET.SUBSAMPLE_CLASSES", "new"])]
        if eval_value is not None:  # the training run's own final test is at the default setting
            evaluations.insert(0, ("test_base", dataset, shots + ["DATASET.SUBSAMPLE_CLASSES", "base"]))
        for domain in spec.domains:  # the same model on shifted test sets: both halves
            evaluations += [("test_base", domain, shots + ["DATASET.SUBSAMPLE_CLASSES", "base"]),
                            ("test_new", domain, shots + ["DATASET.SUBSAMPLE_CLASSES", "new"])]
        return evaluations
    evaluations = [("test", target, []) for target in spec.targets]
    return ([("test", dataset, [])] if eval_value is not None else []) + evaluations


def expand(spec: Spec, output_root: Path, imports: Sequence[str] = ()) -> List[Chain]:
    """All chains of a spec, method by method (in the spec's order), then swept value, dataset, seed.

    Run dirs: ``<output_root>/<base2new|xd>/<phase>/<dataset>/shots_<S>/<trainer>/<config>[_<opts
    hash>][_<setting><value>][_weights-<method>]/seed<N>``, as the upstream scripts lay them out. A method with
    ``train: false`` gets a ``test_base`` (``test`` for cross_dataset) run in place of its training
    run; one with ``weights`` loads that method's model in each run, and its runs join that chain. ``imports``: ``--import`` modules every run gets (paths made absolute).
    """
    imports = tuple(str(Path(m).resolve()) if Path(m).suffix == ".py" else m for m in imports)
    output_root = Path(output_root)
    base2new = spec.protocol == "base2new"
    kind, train_phase = ("base2new", "train_base") if base2new else ("xd", "train")
    methods = {method.name: method for method in spec.methods}

    def run_dir(method: Method, train_value: Optional[Any], phase: str, on: str, seed: int,
                eval_value: Optional[Any] = None) -> Path:
        name = Path(method.config).name + _dir_tag(spec.opts + method.opts) + _value_tag(spec, train_value)
        if method.weights is not None:  # the same trainer and opts over another method's models: its own dirs
            name += f"_weights-{method.weights}"
        return (output_root / kind / phase / on / f"shots_{spec.shots}" / method.trainer /
                (name + _value_tag(spec, eval_value)) / f"seed{seed}")

    # a chain per (method, trained value, dataset, seed); a ``weights`` method's runs join the chain
    # of the model they load, after its own runs, so they never start before it is trained
    chains: Dict[Tuple[str, Any, str, int], Chain] = {}
    for method in sorted(spec.methods, key=lambda m: m.weights is not None):
        config_file = CONFIGS_DIR / "trainers" / f"{method.config}.yaml"
        method_opts = spec.opts + method.opts
        if method.weights is not None and method.weights not in methods:
            raise SpecError(f"{spec.path}: method {method.name} evaluates {method.weights}'s trained models: "
                            f"select {method.weights} too")
        source = methods[method.weights] if method.weights is not None else method  # whose trained model loads
        for train_value in _train_variants(spec, method):
            train_opts = method_opts + _variant_opts(spec, train_value)
            load_epoch = (source.load_epoch or int(merged_config(source, spec, train_value).OPTIM.MAX_EPOCH)
                          if source.train else None)
            for dataset in spec.datasets if base2new else [spec.source]:
                for seed in spec.seeds:
                    subsample = ["DATASET.SUBSAMPLE_CLASSES", "base"] if base2new else []
                    phase = train_phase if method.train else ("test_base" if base2new else "test")
                    model_dir = run_dir(source, train_value, train_phase, dataset, seed) if source.train else None
                    first = Run(method.name, _variant(spec, train_value), method.trainer, config_file, dataset, seed,
                                phase, run_dir(method, train_value, phase, dataset, seed),
                                tuple(["DATASET.NUM_SHOTS", str(spec.shots)] + subsample + train_opts),
                                model_dir=None if method.train else model_dir,
                                load_epoch=None if method.train else load_epoch, imports=imports)
                    runs = [first]
                    for eval_value in _eval_variants(spec, method) or [None]:
                        for phase, on, opts in _evaluations(spec, dataset, eval_value):
                            runs.append(Run(method.name, first.variant + _variant(spec, eval_value), method.trainer,
                                            config_file, on, seed, phase,
                                            run_dir(method, train_value, phase, on, seed, eval_value),
                                            tuple(opts + train_opts + _variant_opts(spec, eval_value)),
                                            model_dir=model_dir, load_epoch=load_epoch, imports=imports))
                    key = (source.name, train_value, dataset, seed)
                    if method.weights is None:
                        chains[key] = Chain(runs)
                    elif key in chains:
                        chains[key].runs.extend(runs)
                    else:
                        raise SpecError(f"{spec.path}: method {method.name} evaluates {source.name}'s models at "
                                        f"{_variant(spec, train_value)}, which {source.name} does not train")
    return list(chains.values())


def measurements(spec: Spec, chains: Sequence[Chain]) -> List[Measurement]:
    """Which run fills which table cell: base2new ``base`` from the training run's final test and
    ``new`` from ``test_new``; cross_dataset ``accuracy`` from the training run (source column) and
    each ``test`` run (targets). When a chain is evaluated at swept settings (scope ``eval``), the
    base/source accuracy comes from its ``test_base``/source ``test`` run at each setting instead.
    ``extra_metrics`` (e.g. inference time) come from the ``test_new``/``test`` runs."""
    found = []
    extra = tuple((log, table) for table, log in spec.extra_metrics.items())
    for chain in chains:
        train = chain.runs[0]
        swept_at_eval = any(run.row != train.row for run in chain.runs[1:] if run.method == train.method)
        for run in chain.runs:
            if run.training and swept_at_eval:
                continue
            if spec.protocol == "base2new":
                metric = "base" if run.phase in ("train_base", "test_base") else "new"
            else:
                metric = "accuracy"
            own_test = run.training or run.phase == "test_base" or (
                spec.protocol == "cross_dataset" and run.dataset == train.dataset)
            pairs = (("accuracy", metric),) + (() if own_test else extra)
            found.append(Measurement(run.row, run.dataset, run.seed, run.output_dir, run.training, pairs))
            if run.dataset in spec.datasets:
                found += [Measurement(run.row, f"{run.dataset}/{name}", run.seed, run.output_dir, run.training,
                                      (("accuracy", metric),), domain=index)
                          for index, name in enumerate(spec.by_domain)]
    return found


def table_for(spec: Spec, output_root: Path, with_paper: bool = True) -> ResultTable:
    """The paper-style table of a spec's runs under ``output_root`` (finished or not)."""
    chains = expand(spec, output_root)
    metrics = ["base", "new", "hm"] if spec.protocol == "base2new" else ["accuracy"]
    metrics += list(spec.extra_metrics)
    average_of = spec.all_datasets if spec.protocol == "base2new" else spec.targets
    paper: Optional[PaperTable] = load_paper_table(spec.paper) if spec.paper and with_paper else None
    labels = {RowKey(m.name): m.label for m in spec.methods if m.label}
    columns = spec.all_datasets + [f"{dataset}/{name}" for dataset in spec.datasets for name in spec.by_domain]
    return build_table(spec.title, metrics, columns, spec.seeds, measurements(spec, chains),
                       average_of=average_of if len(average_of) > 1 else None, paper=paper, labels=labels,
                       hosts=spec.hosts())


def select(spec: Spec, methods: Optional[Sequence[str]] = None, datasets: Optional[Sequence[str]] = None,
           seeds: Optional[Sequence[int]] = None) -> Spec:
    """A copy of ``spec`` restricted to some methods, datasets (or targets) and seeds."""
    def keep(kind: str, chosen: Optional[Sequence], valid: List) -> List:
        if chosen is None:
            return valid
        unknown = [c for c in chosen if c not in valid]
        if unknown:
            raise SpecError(f"{spec.path}: {kind} {unknown} not in the spec; it has {valid}")
        return [v for v in valid if v in chosen]

    chosen_methods = keep("methods", methods, [m.name for m in spec.methods])
    spec = replace(spec, methods=[m for m in spec.methods if m.name in chosen_methods],
                   seeds=keep("seeds", seeds, spec.seeds))
    if spec.protocol == "base2new":
        return replace(spec, datasets=keep("datasets", datasets, spec.datasets))
    if datasets is not None and spec.source in datasets:
        datasets = [d for d in datasets if d != spec.source]
    return replace(spec, targets=keep("datasets", datasets, spec.targets))


# ---------------------------------------------------------------------------------- data check
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


# ----------------------------------------------------------------------------------- execution
def stale_runs(chains: Sequence[Chain]) -> List[str]:
    """The runs whose folder holds a run made with another config than the spec now gives them (a
    changed default, trainer file or opt that the folder name does not show), one line each with
    the keys that differ. Runs recorded before ``RUN_CONFIG`` existed cannot be checked."""
    stale = []
    for run in (run for chain in chains for run in chain.runs):
        record = run.output_dir / RUN_CONFIG
        if not record.exists():
            continue
        then, now = (flat_keys(yaml.safe_load(text)) for text in (record.read_text(encoding="utf-8"), run.config_text()))
        if then.get("TRAINER.NAME") == "":  # recorded by the sweep itself, before train wrote the records
            then["TRAINER.NAME"] = now["TRAINER.NAME"]
        changed = sorted(key for key in then.keys() | now.keys()
                         if key not in PLACEMENT_KEYS and then.get(key) != now.get(key))
        if changed:
            shown = ", ".join(f"{key}: {then.get(key)!r} -> {now.get(key)!r}" for key in changed[:4])
            stale.append(f"{run.output_dir}: {shown}" + (f" (+{len(changed) - 4} more)" if len(changed) > 4 else ""))
    return stale


def stale_message(stale: Sequence[str]) -> str:
    return ("These run folders hold runs made with another config than the spec now gives them (a changed "
            "default, config file or opt); nothing was launched. Move them away, or sweep into another "
            "--output:\n" + "\n".join(stale))


def run_one(run: Run, root: str, env: Optional[Dict[str, str]] = None,
            echo: Optional[Callable[[str], None]] = None) -> Tuple[int, str]:
    """Run one ``prompt-diffusion train`` in a child process; its console output goes, line by line
    as it comes, to ``<output_dir>/console.txt`` and to ``echo`` when given. Returns (exit code,
    the console's tail on failure)."""
    run.output_dir.mkdir(parents=True, exist_ok=True)
    console_path = run.output_dir / "console.txt"
    command = [sys.executable, "-m", "prompt_diffusion"] + run.argv(root)
    with open(console_path, "a", encoding="utf-8", buffering=1) as console:
        console.write(f"\n$ {run.command(root)}\n")
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}) as child:
            for line in child.stdout:
                console.write(line)
                if echo is not None:
                    echo(line.rstrip("\n"))
        code = child.returncode
    if code == 0 and run.status() != COMPLETE:
        reason = read_run(run.output_dir, run.training).reason
        return 1, f"exited 0 but {run.output_dir}/log.txt holds no result ({reason})"
    if code != 0:
        tail = console_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        return code, "\n".join(tail)
    return 0, ""


def run_chain(chain: Chain, root: str, env: Optional[Dict[str, str]] = None,
              report: Callable[[str], None] = tqdm.write, progress: Optional[tqdm] = None,
              echo: Optional[Callable[[Run, str], None]] = None) -> List[str]:
    """Run a chain's unfinished runs in order; stop the chain at its first failure. Returns failures.
    ``echo(run, line)`` sees each console line of each run."""
    failures = []
    for run in chain.runs:
        status = run.status()
        if status == COMPLETE:
            continue
        if status != MISSING:
            report(f"resuming {run.output_dir} ({read_run(run.output_dir, run.training).reason})")
        else:
            report(f"running {run.output_dir}")
        code, note = run_one(run, root, env, None if echo is None else (lambda line, run=run: echo(run, line)))
        if code in (130, -signal.SIGINT):  # Ctrl-C reached the run too: the command line says so, once
            failures.append(f"{run.output_dir}: interrupted")
            break
        if progress is not None:
            progress.update(1)
        if code != 0:
            failures.append(f"{run.output_dir}: exit {code}\n{note}")
            report(f"FAILED {run.output_dir} (exit {code}); skipping the rest of its chain\n{note}")
            break
    return failures


def run_local(chains: Sequence[Chain], root: str, gpus: Optional[Sequence[str]] = None,
              report: Callable[[str], None] = tqdm.write, jobs: int = 1, env: Optional[Dict[str, str]] = None,
              echo: Optional[Callable[[Run, str], None]] = None) -> List[str]:
    """Run the unfinished chains: one chain per listed GPU at a time (``CUDA_VISIBLE_DEVICES``), else
    ``jobs`` chains at a time on the CPU. ``env`` is added to every run's environment (e.g.
    ``OMP_NUM_THREADS``); ``echo(run, line)`` sees the runs' console lines."""
    from prompt_diffusion.engine.utils import available_cores

    stale = stale_runs(chains)
    if stale:
        report(stale_message(stale))
        return [f"{line} (stale)" for line in stale]
    todo = [chain for chain in chains if chain.pending()]
    total = sum(len(chain.pending()) for chain in todo)
    slots: "Queue[Dict[str, str]]" = Queue()
    for gpu in gpus or []:
        slots.put({**(env or {}), "CUDA_VISIBLE_DEVICES": gpu})
    if not gpus:  # CPU runs side by side share the cores: torch threads per run = cores // jobs
        jobs = max(1, jobs)
        threads = str(max(1, available_cores() // jobs))
        for _ in range(jobs):
            slots.put({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, **(env or {})} if jobs > 1
                      else dict(env or {}))
    failures: List[str] = []
    with tqdm(total=total, desc="runs", unit="run", disable=None) as progress:

        def in_slot(chain: Chain) -> List[str]:
            slot_env = slots.get()
            try:
                return run_chain(chain, root, slot_env, report, progress, echo)
            finally:
                slots.put(slot_env)

        pool = ThreadPoolExecutor(max_workers=slots.qsize())
        try:
            for result in pool.map(in_slot, todo):
                failures += result
        finally:  # on Ctrl-C the running children stop too (same process group); start no other chain
            pool.shutdown(wait=True, cancel_futures=True)
    return failures


def _slurm_chain_job(runs: List[Run], root: str) -> List[str]:
    """A SLURM array task: one chain (module-level so submitit can pickle it)."""
    return run_chain(Chain(list(runs)), root)


def submit_slurm(chains: Sequence[Chain], root: str, folder: Path, parameters: Dict[str, Any],
                 cluster: Optional[str] = None) -> list:
    """Submit one SLURM array task per unfinished chain through ``submitit``; returns the jobs
    (``job.job_id``; ``job.result()`` is the task's list of failures). ``cluster``: submitit's
    ``"local"`` or ``"debug"`` to try a sweep without SLURM; default: SLURM."""
    try:
        import submitit
    except ImportError as error:
        raise RuntimeError("--slurm needs submitit: pip install 'prompt-diffusion[slurm]'") from error
    stale = stale_runs(chains)
    if stale:
        raise RuntimeError(stale_message(stale))
    todo = [chain for chain in chains if chain.pending()]
    if not todo:
        return []
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    executor.update_parameters(**parameters)
    return executor.map_array(_slurm_chain_job, [chain.runs for chain in todo], [root] * len(todo))
