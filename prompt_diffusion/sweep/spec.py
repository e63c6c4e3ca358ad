"""Experiment specs: ``configs/experiments/<name>.yaml`` read and checked into a ``Spec``.

A spec (data, not code) names one table or figure of the paper: its protocol, methods (trainer +
config), datasets, seeds, shots and at most one swept setting; ``sweep.plan`` expands it into runs.

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
- ``profiles`` (spec level, and per method): shipped profiles, ``configs/profiles/<name>.yaml``, whose
  keys go before the spec's (or the method's) own opts, so one block of settings lives in one file
  (``toy_cpu``: any trainer on the CPU with the toy CLIP; ``toy_pd``: the toy tables' PD choices).
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

from prompt_diffusion.results.paper import RowKey
from prompt_diffusion.run_record import flat_keys
from prompt_diffusion.shipped import CONFIGS_DIR

EXPERIMENTS_DIR = CONFIGS_DIR / "experiments"
PROTOCOLS = ("base2new", "cross_dataset")
VARIANT_SCOPES = ("train", "eval")

_SPEC_KEYS = {"name", "title", "paper", "protocol", "seeds", "shots", "methods", "datasets", "domains", "source",
              "targets", "opts", "profiles", "variants", "extra_metrics", "plot", "column_names", "by_domain"}
_METHOD_KEYS = {"trainer", "config", "opts", "profiles", "load_epoch", "label", "host", "train", "weights"}
PROFILES_DIR = CONFIGS_DIR / "profiles"
_VARIANT_KEYS = {"name", "key", "values", "scope", "methods"}
_PLOT_KEYS = {"x", "metric", "column", "time_metric"}


class SpecError(ValueError):
    """A spec that cannot run: the message names the spec, the bad entry and what is allowed."""


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


def _profile_opts(where: str, value: Any) -> List[str]:
    """The ``[KEY, VALUE, ...]`` opts of the shipped profiles ``value`` names (one name or a list), in order."""
    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    shipped = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
    unknown = [name for name in names if not isinstance(name, str) or name not in shipped]
    if not isinstance(names, list) or unknown:
        raise SpecError(f"{where} must name shipped profiles ({', '.join(shipped)}); got {value!r}")
    return [str(x) for name in names
            for key, setting in flat_keys(yaml.safe_load((PROFILES_DIR / f"{name}.yaml").read_text(encoding="utf-8"))).items()
            for x in (key, setting)]


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
                              opts=_profile_opts(f"{where}: methods.{name}.profiles", entry.get("profiles"))
                              + _opts(f"{where}: methods.{name}.opts", entry.get("opts")),
                              load_epoch=entry.get("load_epoch"), label=entry.get("label"),
                              host=entry.get("host"), train=bool(entry.get("train", "weights" not in entry)),
                              weights=entry.get("weights")))
    spec = Spec(
        name=str(data.get("name", path.stem)), path=path, title=str(data.get("title", path.stem)),
        protocol=data["protocol"], seeds=_as_list(f"{where}: seeds", data["seeds"], int),
        shots=int(data.get("shots", 16)), methods=methods, paper=data.get("paper"),
        opts=_profile_opts(f"{where}: profiles", data.get("profiles")) + _opts(f"{where}: opts", data.get("opts")),
        extra_metrics=dict(data.get("extra_metrics") or {}),
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
