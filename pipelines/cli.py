"""The `ue` command.

    ue fetch fashion-mnist --root data            # the real Fashion-MNIST, offline (Debian package)
    ue protect --preset fashion-mnist --source data --out outputs/fmnist-beo
    ue protect --preset fashion-mnist --set beo.rounds=20 --print-config > mine.yaml   # then --config mine.yaml
    ue protect --preset fashion-mnist --source data --out outputs/x --dry-run   # checks; what would run
    ue evaluate --source data --release outputs/fmnist-beo --out results/fmnist --victim small_cnn --epochs 8
    ue verify outputs/fmnist-beo                  # re-check a release against its manifest
    ue sweep fashion-mnist --source data --out results/fmnist-sweep
    ue presets                                    # list the shipped presets and sweeps
    ue submit --address http://head:8265 -- protect …   # any of these on a Ray cluster; ue jobs; ue logs ID

Jobs print a plain progress line per round, victim epoch and sweep trial on stderr (pipelines.progress);
--no-progress hides the bars only. Errors the user can act on print one line, ``error: …``, and exit with
status 2 — a command that needs the ``[ray]`` extra (Ray, MLflow, s3fs, matplotlib) on a base install among
them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from pipelines import DISTRIBUTION, __version__
from ue_core.errors import UEError

# The top-level modules of the [ray] extra (pyproject.toml): a base install lacks them.
RAY_EXTRA_MODULES = frozenset({"ray", "mlflow", "s3fs", "boto3", "matplotlib"})


def _add_job_options(parser: argparse.ArgumentParser, overwrite_help: str) -> None:
    """The options every Ray job command shares: where to run, where to track, overwrite, progress, printing
    the config; the options in the command's ``required`` default are required unless it prints its config."""
    parser.set_defaults(command_parser=parser)
    parser.add_argument("--ray-address", help="a Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else "
                                               "sqlite:///mlflow.db, the store `mlflow ui` opens)")
    parser.add_argument("--experiment", help="MLflow experiment (default: MLFLOW_EXPERIMENT_NAME, else ue-COMMAND)")
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)
    parser.add_argument("--no-progress", action="store_true",
                        help="hide progress bars (the plain progress lines on stderr stay)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the merged, validated config as YAML (a --config or sweep file) and exit "
                             "without doing any work")
    parser.add_argument("--dry-run", action="store_true",
                        help="run the job's checks (sources, outputs, credentials, tracking, the cluster's "
                             "resources), say what would run, and exit without claiming or writing anything")


def _add_protect(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("protect", help="protect a dataset with BEO (or a baseline) and publish the release")
    parser.add_argument("--source", help="dataset folder or URI (any supported layout; required)")
    parser.add_argument("--out", help="release folder or URI (must not exist; required)")
    parser.set_defaults(required=("--source", "--out"))
    parser.add_argument("--preset", help="a shipped preset (see `ue presets`)")
    parser.add_argument("--config", help="a YAML config file, merged over the preset")
    parser.add_argument("--method",
                        help="beo (default), or a baseline: random noise, error-minimising (em), targeted "
                             "adversarial poisoning (tap), one-pixel shortcut (ops, an L0 budget: "
                             "--set budget.norm=l0 --eps 1), autoregressive perturbations (ar; the paper's "
                             "L2 setting: --set budget.norm=l2 --eps 1.0), linearly separable perturbations (lsp, "
                             "an L2 budget: --set budget.norm=l2 --eps 168/255 on 28x28 gray) (method)")
    parser.add_argument("--eps",
                        help="budget of every method, e.g. 8/255 (L-inf), 1 pixel (l0) or 1.0 (the L2 norm of "
                             "every perturbation, l2) (budget.eps)")
    parser.add_argument("--rounds", type=int, help="surrogate rounds (beo.rounds)")
    parser.add_argument("--subset", type=int, help="protect a class-balanced subset of this size (data.subset)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set beo.surrogate.epochs=5 (repeatable)")
    parser.add_argument("--engine", choices=["ray", "reference"], default="ray",
                        help="ray (default): BEO distributed and resumable, a baseline as one Ray task; "
                             "reference: ue_core's one-process method here")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where the reference engine runs: auto (default: CUDA when available), cpu or cuda; "
                             "the Ray engine uses the GPUs Ray gives its workers")
    parser.add_argument("--work-dir", help="where an interrupted job resumes from (default: .OUT.work beside --out)")
    parser.add_argument("--no-surrogate", action="store_true",
                        help="do not keep the final surrogate's weights as the MLflow artifact surrogate.pt")
    _add_job_options(parser, "replace an existing release at --out")


def _protect(args: argparse.Namespace) -> int:
    from pipelines.config import load_protect_config, parse_override

    overrides = dict(parse_override(text) for text in args.set)
    flags = (("method", args.method), ("budget.eps", args.eps), ("beo.rounds", args.rounds),
             ("data.subset", args.subset))
    for key, value in flags:
        if value is not None:
            overrides[key] = value
    config = load_protect_config(args.preset, args.config, overrides)
    if args.print_config:
        return print_config(config)
    if args.dry_run:
        from pipelines.dry_run import protect_plan

        return print_lines(protect_plan(args.source, args.out, config, args.engine, args.overwrite, args.ray_address,
                                        args.tracking_uri, args.experiment, args.work_dir))
    from pipelines.protect import protect  # after the config, so its errors come first
    summary = protect(
        args.source, args.out, config, engine=args.engine, overwrite=args.overwrite, progress=not args.no_progress,
        work_dir=args.work_dir, ray_address=args.ray_address, tracking_uri=args.tracking_uri, device=args.device,
        experiment=args.experiment, keep_surrogate=not args.no_surrogate,
    )
    print(summary.line())
    return 0


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "evaluate", help="train victims on the clean-all / clean-only / mixed arms and report their test accuracy"
    )
    parser.add_argument("--source", help="the clean dataset folder or URI (train and test splits; required)")
    parser.add_argument("--release", help="a published release of (a subset of) that dataset (required)")
    parser.add_argument("--out", help="results folder or URI (must not exist; required)")
    parser.set_defaults(required=("--source", "--release", "--out"))
    parser.add_argument("--config", help="a YAML evaluate config (pipelines.config.EvaluateConfig)")
    parser.add_argument("--ratio", help="probability that an index takes its protected version (ratio)")
    parser.add_argument("--victim", help="victim model, e.g. resnet18 or small_cnn (victim.model)")
    parser.add_argument("--recipe", help="standard or plain (victim.recipe)")
    parser.add_argument("--epochs", type=int, help="victim training epochs (victim.epochs)")
    parser.add_argument("--workers", type=int, help="Ray Train workers per victim (victim.workers)")
    parser.add_argument("--defence", help="none, or defences joined by +, e.g. grayscale+jpeg (defence.names)")
    parser.add_argument("--test-subset", type=int, help="class-balanced clean test images to use (test_subset)")
    parser.add_argument("--poison-only", action="store_true", help="also train on the release alone")
    parser.add_argument("--robust", action="store_true", help="also report accuracy under PGD (robust_accuracy)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set defence.jpeg_quality=30 (repeatable)")
    parser.add_argument("--storage", help="folder or URI for victim checkpoints (default: removed work folder)")
    _add_job_options(parser, "replace existing results at --out")


def _evaluate(args: argparse.Namespace) -> int:
    from pipelines.config import load_evaluate_config, parse_override
    from ue_core.defences import parse_defences

    overrides = dict(parse_override(text) for text in args.set)
    for key, value in (("ratio", args.ratio), ("victim.model", args.victim), ("victim.recipe", args.recipe),
                       ("victim.epochs", args.epochs), ("victim.workers", args.workers),
                       ("test_subset", args.test_subset)):
        if value is not None:
            overrides[key] = value
    if args.defence is not None:
        overrides["defence.names"] = list(parse_defences(args.defence))
    if args.poison_only:
        overrides["modes"] = ["clean-all", "clean-only", "mixed", "poison-only"]
    if args.robust:
        overrides["robust_accuracy"] = True
    config = load_evaluate_config(args.config, overrides)
    if args.print_config:
        return print_config(config)
    if args.dry_run:
        from pipelines.dry_run import evaluate_plan

        return print_lines(evaluate_plan(args.source, args.release, args.out, config, args.overwrite, args.storage,
                                         args.ray_address, args.tracking_uri, args.experiment))
    from pipelines.evaluate import evaluate_release  # after the config, so its errors come first
    summary = evaluate_release(
        args.source, args.release, args.out, config, overwrite=args.overwrite, storage=args.storage,
        ray_address=args.ray_address, tracking_uri=args.tracking_uri, progress=not args.no_progress,
        experiment=args.experiment,
    )
    print(summary.markdown, end="")
    print(summary.line())
    return 0


def _add_sweep(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("sweep", help="Ray Tune over method x eps x mixing ratio x victim x defence")
    parser.add_argument("sweep", help="a shipped sweep name (see `ue presets`) or a sweep YAML file")
    parser.add_argument("--out", help="results folder or URI (must not exist; required)")
    parser.set_defaults(required=("--out",))
    parser.add_argument("--source", help="the clean dataset (default: the sweep file's source)")
    parser.add_argument("--releases", help="where releases are kept and reused (default: releases/ beside --out)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any sweep key, e.g. --set grid.ratio=[0,0.5] (repeatable)")
    _add_job_options(parser, "replace existing results at --out")


def _sweep(args: argparse.Namespace) -> int:
    from pipelines.config import load_sweep_config, parse_override

    config = load_sweep_config(args.sweep, dict(parse_override(text) for text in args.set))
    if args.print_config:  # with --source in it: the file, run without --source, is this sweep
        return print_config(replace(config, source=args.source or config.source))
    if args.dry_run:
        from pipelines.dry_run import sweep_plan

        return print_lines(sweep_plan(config, args.out, args.source, args.releases, args.overwrite, args.ray_address,
                                      args.tracking_uri, args.experiment))
    from pipelines.sweep import sweep  # after the config, so its errors come first
    summary = sweep(
        config, args.out, source=args.source, releases=args.releases, overwrite=args.overwrite,
        ray_address=args.ray_address, tracking_uri=args.tracking_uri, progress=not args.no_progress,
        experiment=args.experiment,
    )
    print(summary.markdown, end="")
    print(summary.line())
    return 1 if any(o.status == "FAILED" for o in summary.outcomes) else 0


def print_config(config: Any) -> int:
    """Print ``config`` (a validated job config) as YAML that reads back as the same config: the job's
    ``--config`` file (protect, evaluate) or sweep file; 0."""
    import yaml

    from ue_core.config import to_dict

    print(yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True), end="")
    return 0


def print_lines(lines: list[str]) -> int:
    """Print a dry run's lines; 0."""
    print("\n".join(lines))
    return 0


def _add_cluster_commands(commands: argparse._SubParsersAction) -> None:
    address = {"help": "the cluster's job API, e.g. http://head:8265 (default: RAY_API_SERVER_ADDRESS or an "
                       "http RAY_ADDRESS, else http://127.0.0.1:8265)"}
    submit = commands.add_parser("submit", help="run a ue command on a Ray cluster (ue submit -- protect …)")
    submit.add_argument("--address", **address)
    submit.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable for the job (repeatable; credentials are refused)")
    submit.add_argument("--working-dir", help="ship this folder as the job's code (default: the installed package)")
    submit.add_argument("--pip", action="append", default=[], metavar="SPEC",
                        help="a package for the job to pip-install, e.g. 'unlearnable-beo[ray]' (repeatable)")
    submit.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    submit.add_argument("arguments", nargs=argparse.REMAINDER, help="-- then the ue command to run")
    jobs = commands.add_parser("jobs", help="list the jobs of a Ray cluster")
    jobs.add_argument("--address", **address)
    logs = commands.add_parser("logs", help="print a job's logs")
    logs.add_argument("--address", **address)
    logs.add_argument("job_id")


def _submit(args: argparse.Namespace) -> int:
    from pipelines.submit import submit

    arguments = args.arguments[1:] if args.arguments[:1] == ["--"] else args.arguments
    return submit(arguments, args.address, args.env, args.working_dir, follow=not args.no_wait, pip=args.pip)


def _jobs(args: argparse.Namespace) -> int:
    from pipelines.submit import list_jobs

    print(list_jobs(args.address))
    return 0


def _logs(args: argparse.Namespace) -> int:
    from pipelines.submit import job_logs

    print(job_logs(args.address, args.job_id), end="")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from ue_core.data import fetch_fashion_mnist

    if "://" in args.root:  # a URI: check it first, so a bad endpoint or bucket is one line naming it
        from pipelines.storage import check_writable

        check_writable(args.root)
    print(fetch_fashion_mnist(args.root))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ue_core.release import release_digest, verify_release

    manifest = verify_release(args.uri)
    print(f"release {args.uri} verified: {manifest['count']} images, {len(manifest['files'])} files match; "
          f"digest {release_digest(manifest)}")
    return 0


def _presets(args: argparse.Namespace) -> int:
    from pipelines.config import preset_names, sweep_names

    print("protect presets (ue protect --preset NAME):\n  " + "\n  ".join(preset_names()))
    print("sweeps (ue sweep NAME):\n  " + "\n  ".join(sweep_names()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ue", description="Unlearnable examples by Bayes-error optimisation.")
    parser.add_argument("--version", action="version", version=f"ue {__version__}")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint URL for s3:// URIs (sets AWS_ENDPOINT_URL)")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_protect(commands)
    _add_evaluate(commands)
    _add_sweep(commands)
    _add_cluster_commands(commands)
    fetch = commands.add_parser("fetch", help="make a dataset available offline")
    fetch.add_argument("dataset", choices=["fashion-mnist"])
    fetch.add_argument("--root", default="data", help="folder or URI (s3://bucket/prefix) to hold it (default: data)")
    verify = commands.add_parser("verify", help="check a release's files against its manifest")
    verify.add_argument("uri")
    commands.add_parser("presets", help="list the shipped presets")
    return parser


HANDLERS = {"protect": _protect, "evaluate": _evaluate, "sweep": _sweep, "submit": _submit, "jobs": _jobs,
            "logs": _logs, "fetch": _fetch, "verify": _verify, "presets": _presets}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    missing = [flag for flag in getattr(args, "required", ()) if getattr(args, flag.lstrip("-")) is None]
    if missing and not args.print_config:  # argparse's own message and exit status 2
        args.command_parser.error(f"the following arguments are required: {', '.join(missing)}")
    if args.s3_endpoint:
        os.environ["AWS_ENDPOINT_URL"] = args.s3_endpoint
    from pipelines.storage import quiet_abandoned_requests

    quiet_abandoned_requests()
    try:
        return HANDLERS[args.command](args)
    except UEError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        missing = (error.name or "").partition(".")[0]
        if missing not in RAY_EXTRA_MODULES:
            raise
        print(f"error: `ue {args.command}` needs the [ray] extra ({missing} is not installed): "
              f"pip install '{DISTRIBUTION}[ray]'", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
