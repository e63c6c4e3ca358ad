"""A spec's plan: the chains of runs it expands into (a training run, then the evaluations of its
checkpoint), each run's folder and config, and which run fills which table cell.
"""
import hashlib
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from prompt_diffusion.results.paper import PaperTable, RowKey, load_paper_table
from prompt_diffusion.results.runs import COMPLETE, read_run
from prompt_diffusion.results.table import Measurement, ResultTable, build_table
from prompt_diffusion.run_record import absolute_paths
from prompt_diffusion.shipped import CONFIGS_DIR
from prompt_diffusion.sweep.spec import Method, Spec, SpecError

TRAIN_PHASES = ("train_base", "train")


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
        absolute_paths(cfg)  # as train records them
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


def train_variants(spec: Spec, method: Method) -> List[Optional[Any]]:
    return _variant_values(spec, method, "train")


def eval_variants(spec: Spec, method: Method) -> List[Any]:
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


def effective_opts(config_file: Path, opts: Sequence[str]) -> List[str]:
    """The ``KEY VALUE`` pairs of ``opts`` that change the config the trainer file gives (a profile that
    restates the defaults, as ``pd_paper``, adds none): what a run's command line and folder name carry."""
    cfg = _resolved_config(config_file, [])
    kept: List[str] = []
    for key, value in zip(opts[::2], opts[1::2]):
        node, leaf = cfg, key.split(".")
        for part in leaf[:-1]:
            node = node[part]
        before = node[leaf[-1]] if leaf[-1] in node else None
        cfg.merge_from_list([key, value])
        if node[leaf[-1]] != before:
            kept += [key, value]
    return kept


def merged_config(method: Method, spec: Spec, variant_value: Optional[Any] = None):
    """The yacs config a training run of ``method`` gets, before its dataset: defaults, project keys,
    the trainer config file, then the spec's and the method's opts (as ``train`` merges them)."""
    return _resolved_config(CONFIGS_DIR / "trainers" / f"{method.config}.yaml",
                            spec.opts + method.opts + _variant_opts(spec, variant_value))


def unread_key_prefixes(trainer: str) -> Tuple[str, ...]:
    """The config keys (by prefix) that the registered trainer ``trainer`` never reads, so its runs do
    not change with their defaults: ``TRAINER.PD.`` unless it is a prompt-diffusion trainer,
    ``TRAINER.ZEROSHOT.`` unless it is zero-shot CLIP. A name not registered reads them all."""
    from prompt_diffusion.engine import TRAINER_REGISTRY
    from prompt_diffusion.trainer_kinds import is_pd_trainer
    from prompt_diffusion.trainers.zsclip import ZeroshotCLIP

    if trainer not in TRAINER_REGISTRY.registered_names():
        return ()
    unread = () if is_pd_trainer(trainer) else ("TRAINER.PD.",)
    return unread + (() if issubclass(TRAINER_REGISTRY.get(trainer), ZeroshotCLIP) else ("TRAINER.ZEROSHOT.",))


def pd_settings_notes(spec: Spec) -> List[str]:
    """One line per prompt-diffusion method of ``spec``: the ``TRAINER.PD`` settings its runs get that
    differ from the shipped defaults (``config.add_pd_keys``), so a table says what it measured."""
    from prompt_diffusion.config import extend_cfg
    from prompt_diffusion.engine import get_cfg_default
    from prompt_diffusion.run_record import flat_keys

    shipped = flat_keys(extend_cfg(get_cfg_default()).TRAINER.PD)
    notes = []
    for method in spec.methods:
        if "TRAINER.PD." in unread_key_prefixes(method.trainer):
            continue
        used = flat_keys(merged_config(method, spec).TRAINER.PD)
        changed = [f"{key} {used[key]} (shipped {shipped[key]})" for key in used if used[key] != shipped[key]]
        notes.append(f"{method.label or method.name}: " + (", ".join(changed) if changed else "the shipped defaults"))
    return notes


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

    opts_of = {method.name: effective_opts(CONFIGS_DIR / "trainers" / f"{method.config}.yaml", spec.opts + method.opts)
               for method in spec.methods}

    def run_dir(method: Method, train_value: Optional[Any], phase: str, on: str, seed: int,
                eval_value: Optional[Any] = None) -> Path:
        name = Path(method.config).name + _dir_tag(opts_of[method.name]) + _value_tag(spec, train_value)
        if method.weights is not None:  # the same trainer and opts over another method's models: its own dirs
            name += f"_weights-{method.weights}"
        return (output_root / kind / phase / on / f"shots_{spec.shots}" / method.trainer /
                (name + _value_tag(spec, eval_value)) / f"seed{seed}")

    # a chain per (method, trained value, dataset, seed); a ``weights`` method's runs join the chain
    # of the model they load, after its own runs, so they never start before it is trained
    chains: Dict[Tuple[str, Any, str, int], Chain] = {}
    for method in sorted(spec.methods, key=lambda m: m.weights is not None):
        config_file = CONFIGS_DIR / "trainers" / f"{method.config}.yaml"
        method_opts = opts_of[method.name]
        if method.weights is not None and method.weights not in methods:
            raise SpecError(f"{spec.path}: method {method.name} evaluates {method.weights}'s trained models: "
                            f"select {method.weights} too")
        source = methods[method.weights] if method.weights is not None else method  # whose trained model loads
        for train_value in train_variants(spec, method):
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
                    for eval_value in eval_variants(spec, method) or [None]:
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
