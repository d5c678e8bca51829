"""`ue sweep`: Ray Tune over method × ε × mixing ratio × victim × defence, one MLflow child run per trial.

    ue sweep fashion-mnist --source data --out results/fmnist-sweep        # a shipped sweep, by name
    ue sweep my-sweep.yaml --out s3://bucket/sweeps/cifar10               # or a file

1. Releases: one per distinct protect config (the grid's method × ε over the sweep's protect config: BEO
   and the baselines it is compared with; a method with its own fixed budget in the sweep's ``budgets``, such
   as OPS at L0 1 or LSP at L2 168/255, has that budget instead of the grid's ε, see
   pipelines/config/sweep.py), content-addressed by a hash of (source, config: the budget's eps and norm
   among it) under --releases (default: releases/ beside --out). A release already there is verified against its manifest and reused;
   a missing one is produced by `ue protect` on Ray.
2. Trials (a Ray Tune grid; each trial is a function that fits a TorchTrainer with TuneReportCallback):
   for each victim × defence — ratio 0: one "clean-all" victim; 0 < ratio < 1: a "mixed" victim per release
   (method × ε) and one "clean-only" victim (the unprotected part alone, the reference the mixed victims are
   compared with; it depends on the mixing draw only); ratio 1: a "mixed" (= poison-only) victim per release.
   Concurrency comes from the cluster's resources; a failed trial is retried (FailureConfig) and, if it still
   fails, reported as failed in the table.
3. Results, published atomically at --out: results.csv and results.md (one row per trial; results.md also
   lists the releases with their PSNR and SSIM), accuracy.png
   (test accuracy versus mixing ratio, one line per release, with the clean-only reference; a heatmap of
   release × ratio; one row of panels per victim × defence; all three from pipelines/sweep_report.py). The
   same files are artifacts of the MLflow parent run, and the table an MLflow table (results.json).

Lineage in MLflow (pipelines/tracking.py): the parent run logs every release as an ``evaluated`` dataset
input and the clean source as ``source`` (both digests from the releases' manifests); each trial's run is
tagged with dataset and ratio (a mixed arm also with its release's method, eps and norm) and logs the clean
images it read as ``source`` and, for a mixed arm, its release as ``evaluated``. The releases' protect runs
go to the experiment given (`--experiment`, MLFLOW_EXPERIMENT_NAME), else to ue-sweep-releases.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from itertools import product
from typing import Any

from pipelines.config import ProtectConfig, ReleaseSpec, SweepConfig, settings_label
from pipelines.evaluate import publish_results
from pipelines.progress import FINAL_FIGURES, EpochLines, emit, progress_line
from pipelines.storage import (
    WorkDir,
    absolute,
    basename,
    check_readable,
    check_writable,
    claim_output,
    remove,
)
from pipelines.sweep_report import (
    TrialOutcome,
    ranked_table,
    release_label,
    releases_table,
    results_table,
    sweep_plot,
)
from pipelines.tracking import (
    DatasetRef,
    RemoteRun,
    Tracker,
    check_reachable,
    experiment_name,
    release_ref,
    run_tags,
)
from ue_core.config import from_dict, to_dict
from ue_core.data.atomic import check_output_free, staged_directory
from ue_core.data.fsutil import filesystem
from ue_core.defences import DefenceConfig
from ue_core.errors import InvalidInputError
from ue_core.release import MANIFEST_NAME, read_manifest, snapshot_uri, verify_release


@dataclass(frozen=True)
class Trial:
    """One victim to train: an arm of the mixing protocol at one grid point. ``method``, ``eps``, ``norm``
    (the budget's, None read as L∞) and ``settings`` (the release's protect-axis values,
    :func:`settings_label`) name the release of a mixed arm and are empty for the clean arms, which no release
    enters; ``evaluation`` holds the evaluate-axis values."""

    arm: str
    eps: float | None
    ratio: float
    victim: str
    defence: str
    method: str | None = None
    settings: str = ""
    evaluation: str = ""
    norm: str | None = None

    @property
    def release(self) -> str:
        """The label of the release this trial trains on ("eps=—" for a clean arm)."""
        return release_label(self.method, self.eps, self.settings, self.norm)

    @property
    def key(self) -> str:
        parts = [self.arm, self.release, f"ratio={self.ratio:g}", self.victim, self.defence, self.evaluation]
        return " ".join(filter(None, parts))


def plan_trials(config: SweepConfig) -> list[Trial]:
    """Every trial of the sweep, in a stable order (see the module docstring)."""
    grid = config.grid
    trials = []
    for evaluation, victim, defence, ratio in product(
        [settings_label(p) for p in config.evaluate_points()], grid.victim, grid.defence, sorted(grid.ratio)
    ):
        if ratio == 0:
            trials.append(Trial("clean-all", None, ratio, victim, defence, evaluation=evaluation))
            continue
        trials.extend(Trial("mixed", spec.eps, ratio, victim, defence, spec.method, settings_label(spec.settings),
                            evaluation, spec.norm) for spec in config.releases())
        if ratio < 1:
            trials.append(Trial("clean-only", None, ratio, victim, defence, evaluation=evaluation))
    return trials


def release_uri(releases: str, source: str, config: SweepConfig, spec: ReleaseSpec) -> str:
    """Where the release ``spec`` of ``source`` lives: a hash of (source, its protect config), whose budget
    holds eps and norm, so two budgets never share a release."""
    return _addressed(releases, source, config.protect_config(spec.method, spec.eps, spec.settings))


def _addressed(releases: str, source: str, protect_config: ProtectConfig) -> str:
    content = json.dumps({"source": source, "config": protect_config.method_record()}, sort_keys=True)
    digest = hashlib.sha256(content.encode()).hexdigest()[:16]
    return f"{releases.rstrip('/')}/{basename(source)}-{digest}"


def ensure_releases(
    source: str, config: SweepConfig, releases: str, ray_address: str | None, tracking_uri: str | None,
    progress: bool, experiment: str = "ue-sweep-releases",
) -> dict[str, str]:
    """Release label → release URI for every release of the grid, protecting only what has no verified
    release yet.

    BEO releases that differ only in ``beo.rounds`` come from one run: the longest, with the shorter ones
    released early (``beo.release_rounds``, each equal to the run stopped there), found inside it at
    ``rounds/round-0000k``."""
    from pipelines.protect import protect

    uris = {}
    for uri, (job, labels) in release_jobs(source, config, releases).items():
        if not reusable(uri):  # an interrupted BEO job resumes from its work folder
            protect(source, uri, job, progress=progress, ray_address=ray_address,
                    tracking_uri=tracking_uri, experiment=experiment)
        for label, rounds in labels.items():
            uris[label] = uri if rounds is None else snapshot_uri(uri, rounds)
    return uris


def reusable(uri: str) -> bool:
    """Whether a published release is at ``uri``, verified against its manifest (a damaged release is an
    error, never silently replaced)."""
    fs, path = filesystem(uri)
    if not fs.exists(f"{path}/{MANIFEST_NAME}"):
        return False
    verify_release(uri)
    return True


def release_jobs(source: str, config: SweepConfig, releases: str) -> dict[str, tuple[ProtectConfig, dict[str, int | None]]]:
    """The protect jobs behind the grid's releases, by the address of each job's release under ``releases``:
    address → (the job's config, {release label: the round it is released after inside that job's release,
    None for the job's own release})."""
    return {_addressed(releases, source, job): (job, labels) for job, labels in _runs(config).items()}


def _runs(config: SweepConfig) -> dict[ProtectConfig, dict[str, int | None]]:
    """The protect jobs behind the grid's releases: job config → {release label: the round it is released
    after inside that job's release, None for the job's own release}."""
    runs: dict[ProtectConfig, dict[str, int | None]] = {}
    groups: dict[str, list[tuple[ReleaseSpec, ProtectConfig]]] = {}
    for spec in config.releases():
        protect_config = config.protect_config(spec.method, spec.eps, spec.settings)
        if spec.method != "beo" or "beo.rounds" not in spec.settings or protect_config.beo.release_rounds:
            runs.setdefault(protect_config, {})[spec.label] = None
            continue
        others = {k: v for k, v in spec.settings.items() if k != "beo.rounds"}
        groups.setdefault(release_label(spec.method, spec.eps, settings_label(others), spec.norm), []).append(
            (spec, protect_config))
    for members in groups.values():
        longest = max(c.beo.rounds for _, c in members)
        earlier = tuple(sorted({c.beo.rounds for _, c in members} - {longest}))
        job = replace(members[0][1], beo=replace(members[0][1].beo, rounds=longest, release_rounds=earlier))
        runs[job] = {spec.label: None if c.beo.rounds == longest else c.beo.rounds for spec, c in members}
    return runs


# ------------------------------------------------------------------------------------------------ trials


def _evaluate_config(config: SweepConfig, trial: Trial):
    """The evaluate config of one trial: the sweep's, with the trial's evaluate-axis values, arm, ratio,
    victim and defence."""
    settings = {label: p for p in config.evaluate_points() if (label := settings_label(p)) == trial.evaluation}
    evaluate = config.evaluate_config(settings[trial.evaluation])
    defence = replace(evaluate.defence, names=DefenceConfig(names=trial.defence).names)
    return replace(evaluate, ratio=trial.ratio, modes=(trial.arm,), victim=replace(evaluate.victim, model=trial.victim),
                   defence=defence)


def run_trial(tune_config: dict[str, Any], context: dict[str, Any]) -> None:
    """A Tune trial: train the victim of ``tune_config["trial"]`` on Ray Train, logging to a child MLflow run."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.evaluate import arms, load_evaluation_data
    from pipelines.ray_utils import Shared
    from pipelines.victims import train_victim

    sweep = from_dict(SweepConfig, context["sweep"])
    plan = Trial(**tune_config["trial"])
    config = _evaluate_config(sweep, plan)
    # a clean arm needs a release only for its indices: every release of the sweep has the same ones
    releases = context["releases"]
    release = releases[plan.release] if plan.method else next(iter(releases.values()))
    data = load_evaluation_data(context["source"], release, config)
    ((train, protected),) = arms(data, config).values()
    test_images, test_labels = data.test.tensors()
    test_ref = Shared.put((test_images.numpy(), test_labels.numpy()))
    name = data.clean.name
    tags = {"dataset": name, "ratio": f"{plan.ratio:g}"}
    datasets = {"source": [DatasetRef(name, context["source"], data.clean.digest())]}
    if plan.method:  # a mixed arm: its victim trains on the release
        tags = run_tags(plan.method, name, plan.eps, plan.norm or "linf", plan.ratio)
        datasets["evaluated"] = [release_ref(release, read_manifest(release))]
    run = RemoteRun.start_child(context["tracking_uri"], context["parent_run"], plan.key,
                                tags={"ue.trial": plan.key, **tags})
    try:
        run.log_datasets(datasets)
        run.log_params({**asdict(plan), "train_images": len(train), "protected_images": len(protected),
                        **to_dict(config)})
        train_victim(train, test_ref, config, name=f"{plan.arm}-{run.run_id}", storage_uri=context["storage"],
                     run=run, callbacks=[TuneReportCallback()])
    except BaseException:
        run.finish("FAILED")
        raise
    run.finish("FINISHED")


def trial_lines(planned: list[Trial], epochs: dict[str, int] | None = None) -> Any:
    """A Ray Tune callback (it runs in this, the driver's, process) that prints a line per epoch of every
    trial's victim, ``victim KEY epoch k/N: …`` (N from ``epochs``, trial key → its victim's epochs, when
    given), and one as each trial ends, ``sweep trial i/T KEY: …`` (i counts the trials ended so far;
    pipelines.progress)."""
    from ray import tune

    class TrialLines(tune.Callback):
        def __init__(self) -> None:
            self.ended = 0

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            key = Trial(**trial.config["trial"]).key
            if "train_loss" in result:  # an epoch's report; the final one is the trial's line
                EpochLines(key, (epochs or {}).get(key))(result)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            emit(progress_line(self.ended_trial(trial), trial.last_result or {}, FINAL_FIGURES))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            emit(f"{self.ended_trial(trial)}: FAILED")

        def ended_trial(self, trial: Any) -> str:
            """Counts ``trial`` as ended; "sweep trial i/T KEY"."""
            self.ended += 1
            return f"sweep trial {self.ended}/{len(planned)} {Trial(**trial.config['trial']).key}"

    return TrialLines()


def run_trials(
    trial_function: Callable[[dict[str, Any], dict[str, Any]], None],
    trials: list[Trial],
    context: dict[str, Any],
    concurrency: int,
    max_failures: int,
    storage_uri: str,
    name: str,
    epochs: dict[str, int] | None = None,
) -> list[TrialOutcome]:
    """Run ``trial_function({"trial": asdict(trial)}, context)`` for every trial as a Ray Tune grid; one
    outcome per trial, in the order of ``trials``. This process prints a line per victim epoch and per trial
    (:func:`trial_lines`; ``epochs``: trial key → its victim's epochs, for "epoch k/N").

    The Tune function itself holds a token 0.01 CPU (Tune refuses an empty request; its TorchTrainer's
    workers hold the real resources), so ``concurrency`` alone bounds how many victims train at once. A trial
    that raises is retried ``max_failures`` times; if every attempt fails, its outcome has status "FAILED"
    and the first line of the error.
    """
    from ray import tune

    from pipelines.storage import pyarrow_filesystem

    storage_fs, storage_path = pyarrow_filesystem(storage_uri)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trial_function, context=context), {"cpu": 0.01}),
        param_space={"trial": tune.grid_search([asdict(t) for t in trials])},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=storage_fs, verbose=0,
            failure_config=tune.FailureConfig(max_failures=max_failures), callbacks=[trial_lines(trials, epochs)],
        ),
    )
    outcomes = {}
    for result in tuner.fit():
        trial = Trial(**result.config["trial"])
        metrics = result.metrics or {}
        outcomes[trial] = TrialOutcome(
            **asdict(trial),
            status="FAILED" if result.error else "DONE",
            final_test_accuracy=None if result.error else metrics.get("final_test_accuracy"),
            best_test_accuracy=None if result.error else metrics.get("best_test_accuracy"),
            error=str(result.error).strip().splitlines()[-1][:300] if result.error else "",
        )
    return [outcomes[t] for t in trials]


def trial_concurrency(config: SweepConfig) -> int:
    """How many victims train at once: the cluster's CPUs (or GPUs) over what one victim holds."""
    import ray

    from pipelines.victims import Scaling

    scaling = Scaling.for_victim(config.evaluate.victim.workers)
    if scaling.use_gpu:
        return max(1, int(ray.cluster_resources().get("GPU", 0)) // scaling.workers)
    spare = float(ray.cluster_resources().get("CPU", 1)) - 1.0  # one CPU for Ray Data and the drivers
    return max(1, int(spare // scaling.cpus))


def release_inputs(source: str, release_uris: dict[str, str]) -> dict[str, list[DatasetRef]]:
    """The sweep's datasets as MLflow inputs, from the releases' manifests: every release (``evaluated``) and
    the clean images they were made from (``source``, one per distinct digest; releases made before manifests
    held the source's digest add none)."""
    manifests = {uri: read_manifest(uri) for uri in dict.fromkeys(release_uris.values())}
    sources = {m["source_digest"]: DatasetRef(m["dataset"], source, m["source_digest"])
               for m in manifests.values() if "source_digest" in m}
    return {"source": list(sources.values()),
            "evaluated": [release_ref(uri, manifest) for uri, manifest in manifests.items()]}


@dataclass
class SweepSummary:
    out: str
    outcomes: list[TrialOutcome]
    mlflow_run: str | None
    tracking_uri: str
    markdown: str

    def line(self) -> str:
        failed = sum(o.status == "FAILED" for o in self.outcomes)
        return (f"{len(self.outcomes)} trials ({failed} failed); results at {self.out}; "
                f"MLflow parent run {self.mlflow_run} in {self.tracking_uri}")


def check_sweep_job(config: SweepConfig, out: str, source: str | None, releases: str | None, overwrite: bool,
                    ray_address: str | None, tracking_uri: str | None) -> tuple[str, str, str]:
    """What a sweep checks before it claims ``out`` and starts any work (`--dry-run` too); the source, the
    output and the releases' folder as the sweep uses them (absolute; the releases default beside ``out``)."""
    source = source or config.source
    if source is None:
        raise InvalidInputError("no source: give --source or a source key in the sweep file")
    source, out = absolute(source), absolute(out)
    check_writable(out)
    fs, path = filesystem(out)
    check_output_free(fs, path, out, overwrite)
    check_readable(source)
    releases = absolute(releases or f"{out.rstrip('/').rsplit('/', 1)[0]}/releases")
    check_writable(releases)
    check_reachable(tracking_uri)
    from pipelines.ray_utils import check_tracking_store

    check_tracking_store(ray_address, tracking_uri)
    return source, out, releases


def sweep(
    config: SweepConfig,
    out: str,
    source: str | None = None,
    releases: str | None = None,
    overwrite: bool = False,
    ray_address: str | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    progress: bool = True,
) -> SweepSummary:
    """Produce (or reuse) the releases, run every trial on Ray Tune, publish the results at ``out``.
    ``experiment``: the MLflow experiment of every run (default: MLFLOW_EXPERIMENT_NAME, else ue-sweep for
    the sweep and ue-sweep-releases for the releases' protect runs)."""
    source, out, releases = check_sweep_job(config, out, source, releases, overwrite, ray_address, tracking_uri)
    from pipelines.ray_utils import connect

    trials = plan_trials(config)
    job = {"command": "sweep", "source": source, "releases": releases, "config": to_dict(config)}
    with claim_output(out, job, overwrite):
        connect(ray_address, progress)
        release_uris = ensure_releases(source, config, releases, ray_address, tracking_uri, progress,
                                       experiment_name(experiment, "ue-sweep-releases"))
        work = WorkDir.beside(out)
        with Tracker(tracking_uri, experiment_name(experiment, "ue-sweep"), run_name=f"sweep {basename(out)}") as parent:
            parent.log_params({"source": source, "out": out, "releases": releases, **to_dict(config)})
            parent.log_datasets(release_inputs(source, release_uris))
            context = {
                "sweep": to_dict(config), "source": source, "releases": release_uris,
                "tracking_uri": parent.uri, "parent_run": parent.run_id, "storage": work.path("checkpoints"),
            }
            epochs = {trial.key: _evaluate_config(config, trial).victim.epochs for trial in trials}
            outcomes = run_trials(run_trial, trials, context, trial_concurrency(config), config.max_failures,
                                  work.path("tune"), name=f"sweep-{parent.run_id}", epochs=epochs)
            csv_text, markdown = results_table(outcomes)
            if config.search.section is not None:
                markdown += "\n" + ranked_table(outcomes, config.search.metric, config.search.mode,
                                                config.search.section)
            markdown += "\n" + releases_table(release_uris)
            figure = sweep_plot(outcomes)
            with staged_directory(out, overwrite) as (out_fs, staging):
                publish_results(out_fs, staging, parent, csv_text, markdown, figure, [asdict(o) for o in outcomes])
            failed = sum(o.status == "FAILED" for o in outcomes)
            parent.log_metrics({"trials": len(outcomes), "failed_trials": failed})
        remove(work.uri)
        return SweepSummary(out, outcomes, parent.run_id, parent.uri, markdown)
