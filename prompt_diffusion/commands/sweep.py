"""prompt-diffusion sweep SPEC: run every run of an experiment spec (a table or figure of the paper).

Finished runs (a result in their log) are skipped, interrupted ones start again and resume from
their checkpoint. Runs go one after another (--jobs N: N at a time on the CPU), one chain per GPU
(--gpus 0 1), or to SLURM as a job array (--slurm, needs submitit). --dry-run prints the
prompt-diffusion train lines instead. Before launching anything the datasets are checked as
prompt-diffusion data check does; a missing or broken one stops the sweep.

Examples:

  prompt-diffusion sweep --list
  prompt-diffusion sweep table1 --dry-run
  prompt-diffusion sweep table1 --root $DATA --gpus 0 1 2 3
  prompt-diffusion sweep my_spec.yaml --root $DATA --import my_fork/trainers.py
"""
import argparse
from pathlib import Path

from prompt_diffusion.commands import HelpFormatter, ListThenOpts
from prompt_diffusion.sweep.executors import run_local, submit_slurm
from prompt_diffusion.sweep.plan import expand
from prompt_diffusion.sweep.run import stale_message, stale_runs
from prompt_diffusion.sweep.spec import SpecError, experiment_names, load_spec, select
from prompt_diffusion.sweep.validate import missing_datasets, registered_trainers, validate_spec


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """``--output-dir`` and the ``--methods/--datasets/--seeds`` filters shared by ``sweep`` and ``table``."""
    parser.add_argument("--output-dir", default="output", help="root folder of the run directories")
    parser.add_argument("--methods", action=ListThenOpts, help="only these methods of the spec")
    parser.add_argument("--datasets", action=ListThenOpts, help="only these datasets/targets of the spec")
    parser.add_argument("--seeds", action=ListThenOpts, kind=int, help="only these seeds")


def load_selected(args: argparse.Namespace):
    spec = load_spec(args.spec)
    return select(spec, args.methods, args.datasets, args.seeds)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep", help="run an experiment spec (a paper table/figure): every method × dataset × seed",
        description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("spec", nargs="?", help=f"a shipped experiment ({', '.join(experiment_names())}) "
                                                "or the path of a spec .yaml")
    parser.add_argument("--list", action="store_true", help="list the shipped experiments and exit")
    parser.add_argument("--root", help="DATASET.ROOT, the folder holding the datasets (required unless --dry-run)")
    add_selection_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="print the commands of the unfinished runs, run nothing")
    parser.add_argument("--gpus", action=ListThenOpts,
                        help="local GPU ids, e.g. 0 1 2 3: one chain of runs per GPU at a time")
    parser.add_argument("--jobs", type=int, default=1, help="without --gpus: chains of runs at a time on the CPU")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE_OR_FILE",
                        help="a module or .py file that registers trainers or datasets the spec uses "
                             "(repeatable; every run imports it too)")
    slurm = parser.add_argument_group("SLURM (through submitit: pip install 'prompt-diffusion[slurm]')")
    slurm.add_argument("--slurm", action="store_true", help="submit one array task per chain (train + its evaluations)")
    slurm.add_argument("--slurm-partition", help="partition to submit to")
    slurm.add_argument("--slurm-time", type=int, default=24 * 60, help="minutes per task")
    slurm.add_argument("--slurm-parallel", type=int, default=32, help="array tasks running at once")
    slurm.add_argument("--slurm-cpus", type=int, default=8, help="CPUs per task")
    slurm.add_argument("--slurm-mem-gb", type=int, default=64, help="memory per task in GB")
    slurm.add_argument("--slurm-cluster", choices=("slurm", "local"), default="slurm",
                       help="submitit's executor: slurm, or local to run the array's tasks as processes on this "
                            "machine (to try a sweep's submission without a cluster)")
    parser.set_defaults(func=run, _resume_hint="Run the same command again: finished runs are skipped, the "
                                               "interrupted one resumes from its last checkpoint.")


def run(args: argparse.Namespace) -> int:
    if args.list:
        for name in experiment_names():
            spec = load_spec(name)
            print(f"{name:10s} {spec.title}")
        return 0
    if not args.spec:
        print("error: give an experiment (or --list): " + ", ".join(experiment_names()))
        return 2
    if not args.dry_run and not args.root:
        print("error: --root DIR (the datasets folder) is required to run; --dry-run prints the commands without it")
        return 2
    try:
        spec = load_selected(args)
        validate_spec(spec, registered_trainers(args.imports))
        chains = expand(spec, Path(args.output_dir), args.imports)
    except SpecError as error:
        print(f"error: {error}")
        return 2
    runs = [run for chain in chains for run in chain.runs]
    pending = [run for chain in chains for run in chain.pending()]
    if args.dry_run:
        stale = stale_runs(chains)
        if stale:
            print(stale_message(stale))
            return 1
        root = args.root or "$DATA"
        print(f"# {spec.name}: {len(runs)} runs, {len(runs) - len(pending)} finished, {len(pending)} to run")
        for run_ in pending:
            print(run_.command(root))
        return 0
    reports = missing_datasets(sorted({run_.dataset for run_ in pending}), args.root)
    if reports:
        print(f"Datasets missing or broken under {args.root} (as `prompt-diffusion data check` reports them); "
              "nothing was launched:\n")
        print("\n".join(reports))
        return 1
    print(f"{spec.name}: {len(runs)} runs, {len(runs) - len(pending)} finished, {len(pending)} to run")
    if args.slurm:
        parameters = {"timeout_min": args.slurm_time, "slurm_array_parallelism": args.slurm_parallel,
                      "gpus_per_node": 1, "cpus_per_task": args.slurm_cpus, "mem_gb": args.slurm_mem_gb,
                      "name": f"pd-{spec.name}"}
        if args.slurm_partition:
            parameters["slurm_partition"] = args.slurm_partition
        jobs = submit_slurm(chains, args.root, Path(args.output_dir) / "slurm" / spec.name, parameters,
                            cluster=args.slurm_cluster)
        print(f"submitted {len(jobs)} array task(s): {' '.join(job.job_id for job in jobs)}")
        print(f"when they end: prompt-diffusion table {args.spec} --output-dir {args.output_dir}")
        return 0
    failures = run_local(chains, args.root, args.gpus, jobs=args.jobs)
    done = len(runs) - sum(len(chain.pending()) for chain in chains)
    print(f"{spec.name}: {done}/{len(runs)} runs finished, {len(failures)} failed")
    print(f"table: prompt-diffusion table {args.spec} --output-dir {args.output_dir}")
    return 1 if failures else 0
