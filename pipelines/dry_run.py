"""`--dry-run`: a job's own checks, then what it would run, as plain lines; nothing is claimed or written.

    ue protect --preset fashion-mnist --source data --out outputs/x --dry-run
    ue sweep fashion-mnist --source data --out results/s --ray-address auto --dry-run

Each command runs the same checks its job runs before any work (check_protect_job, check_evaluate_job,
check_sweep_job: outputs, sources, credentials, the tracking server, a node-local store on a multi-node
cluster), then reads what the job would read first — the dataset (its format and size), a release's
manifest and checksums, the releases a sweep would reuse — and, for the Ray engine, joins the cluster (or
starts the local Ray the job would start, and stops it) to report its nodes and how the job would size
itself on them. A failing check is the job's own one-line error and exit status.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from pipelines.config import EvaluateConfig, ProtectConfig, SweepConfig, budget_label
from pipelines.storage import WorkDir, absolute
from pipelines.tracking import experiment_name, tracking_uri
from ue_core.data.dataset import ImageDataset
from ue_core.data.fsutil import filesystem

NOTHING_WRITTEN = "dry run: no job was started, nothing was claimed or written"


def protect_plan(source: str, out: str, config: ProtectConfig, engine: str, overwrite: bool,
                 ray_address: str | None, uri: str | None, experiment: str | None, work_dir: str | None) -> list[str]:
    """The lines `ue protect --dry-run` prints, after the job's own checks."""
    from pipelines.protect import check_protect_job
    from pipelines.sources import load_training_set

    check_protect_job(source, out, engine, overwrite, ray_address, uri)
    clean = load_training_set(source, config)
    lines = [f"source {absolute(source)}: {describe(clean)}",
             f"release {absolute(out)}: {fate(out, overwrite)}",
             f"method {config.method} at {budget_label(config.budget.eps, config.budget.norm)}"
             + (f": {beo_summary(config)}" if config.method == "beo" else "")]
    if engine == "ray" and config.method == "beo":
        work = WorkDir(work_dir) if work_dir else WorkDir.beside(out)
        resumes = _exists(work.uri)
        lines.append(f"work folder {work.uri}: " + ("there: the job resumes from its last completed round"
                                                    if resumes else "new"))
    if engine == "ray":
        with joined(ray_address):
            lines += cluster_lines(ray_address, protect_engine=config.method == "beo")
    else:
        lines.append("engine reference: one process here")
    lines += [tracking_line(uri, experiment_name(experiment, "ue-protect")), NOTHING_WRITTEN]
    return lines


def evaluate_plan(source: str, release: str, out: str, config: EvaluateConfig, overwrite: bool,
                  storage: str | None, ray_address: str | None, uri: str | None,
                  experiment: str | None) -> list[str]:
    """The lines `ue evaluate --dry-run` prints, after the job's own checks."""
    from pipelines.evaluate import check_evaluate_job, load_evaluation_data
    from ue_core.release import verify_release

    source, release, out = absolute(source), absolute(release), absolute(out)
    check_evaluate_job(source, release, out, overwrite, storage, ray_address, uri)
    verify_release(release)
    data = load_evaluation_data(source, release, config)  # matches the release to the source
    victim = config.victim
    lines = [f"source {source}: {describe(data.clean)}; test images: {len(data.test)}",
             f"release {release}: verified, {len(data.release)} images",
             f"results {out}: {fate(out, overwrite)}"]
    with joined(ray_address):
        lines += cluster_lines(ray_address)
        lines.append(f"victims: {', '.join(config.modes)} at ratio {config.ratio:g}, {victim.model} "
                     f"({victim.recipe}, {victim.epochs} epochs, {workers(victim.workers)} each), defence "
                     f"{'+'.join(config.defence.names) or 'none'}")
    lines += [tracking_line(uri, experiment_name(experiment, "ue-evaluate")), NOTHING_WRITTEN]
    return lines


def sweep_plan(config: SweepConfig, out: str, source: str | None, releases: str | None, overwrite: bool,
               ray_address: str | None, uri: str | None, experiment: str | None) -> list[str]:
    """The lines `ue sweep --dry-run` prints, after the sweep's own checks."""
    from pipelines.sources import load_training_set
    from pipelines.sweep import check_sweep_job, plan_trials, release_jobs, reusable, trial_concurrency

    source, out, releases = check_sweep_job(config, out, source, releases, overwrite, ray_address, uri)
    jobs = release_jobs(source, config, releases)
    clean = load_training_set(source, config.protect_config(*next(
        (spec.method, spec.eps, spec.settings) for spec in config.releases())))
    lines = [f"source {source}: {describe(clean)}",
             f"results {out}: {fate(out, overwrite)}"]
    reused = 0
    for address, (_, labels) in jobs.items():
        there = reusable(address)
        reused += there
        lines.append(f"release {', '.join(labels)}: {address} " + ("(there, verified: reused)" if there else
                                                                   "(to protect)"))
    trials = plan_trials(config)
    lines.insert(2, f"{len(config.releases())} release(s) from {len(jobs)} protect job(s): {reused} reused, "
                    f"{len(jobs) - reused} to run; {len(trials)} trial(s)")
    with joined(ray_address):
        lines += cluster_lines(ray_address, protect_engine=len(jobs) > reused)
        lines.append(f"victims at once: {trial_concurrency(config)}")
    lines += [tracking_line(uri, experiment_name(experiment, "ue-sweep")), NOTHING_WRITTEN]
    return lines


def describe(data: ImageDataset) -> str:
    """"fashion-mnist, 2,000 images 28×28×1, 10 classes"."""
    count, height, width, channels = data.images.shape
    return f"{data.name}, {count:,} images {height}×{width}×{channels}, {data.num_classes} classes"


def beo_summary(config: ProtectConfig) -> str:
    beo = config.beo
    return (f"{beo.rounds} rounds of {beo.pga.update} steps, surrogate {beo.surrogate.model} "
            f"({beo.surrogate.mode}, {beo.surrogate.epochs} epochs), estimator {beo.estimator.kind} "
            f"(σ {beo.estimator.sigma:g}, {beo.estimator.objective})")


@contextmanager
def joined(address: str | None) -> Iterator[None]:
    """Inside the block, this process is on the Ray cluster the job would use: joined at ``address`` (or
    RAY_ADDRESS), else a local Ray started for the check and stopped at the end of the block."""
    import ray

    from pipelines.ray_utils import connect

    connect(address, progress=False)
    try:
        yield
    finally:
        if not _joins(address):
            ray.shutdown()


def cluster_lines(address: str | None, protect_engine: bool = False) -> list[str]:
    """The cluster this process is on (inside :func:`joined`): its nodes, CPUs and GPUs; with
    ``protect_engine``, how the Ray engine would size its pass actors and estimator blocks there
    (pipelines.ray_engine.resources, which also refuses a cluster too small for a protect job)."""
    import ray

    nodes = [node for node in ray.nodes() if node["Alive"]]
    total = ray.cluster_resources()
    where = f"Ray cluster at {address or os.environ.get('RAY_ADDRESS')}" if _joins(address) else \
        "a local Ray (started for this check; the job starts its own)"
    lines = [f"{where}: {len(nodes)} node(s), {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs"]
    if protect_engine:
        from pipelines.ray_engine.resources import Resources

        resources = Resources.from_cluster()
        lines.append(f"Ray engine: {resources.actors} pass actor(s) of {resources.pass_threads} thread(s), "
                     f"{resources.blocks} estimator block(s) per step, the surrogate on one Ray Train worker")
    return lines


def workers(requested: int | None) -> str:
    """How a victim would train on this cluster (pipelines.victims.Scaling): "1 Ray Train worker on CPUs"."""
    from pipelines.victims import Scaling

    scaling = Scaling.for_victim(requested)
    return f"{scaling.workers} Ray Train worker(s) on {'GPUs' if scaling.use_gpu else 'CPUs'}"


def tracking_line(uri: str | None, experiment: str) -> str:
    return f"tracking {tracking_uri(uri)}: experiment {experiment}"


def fate(out: str, overwrite: bool) -> str:
    """What the job would do to ``out`` (which the checks accepted): "new", or "replaced (--overwrite)"."""
    return "replaced (--overwrite)" if overwrite and _exists(out) else "new"


def _joins(address: str | None) -> bool:
    return bool(address or os.environ.get("RAY_ADDRESS"))


def _exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)

