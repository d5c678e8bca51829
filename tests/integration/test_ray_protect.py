"""`ue protect` on a real local Ray: equivalence with the one-process reference, resume after a kill,
the MLflow run it leaves, and no deadlock with the default resource sizing on this 2-core machine."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import ray
import torch
import yaml
from PIL import Image

from pipelines.config import load_protect_config
from pipelines.protect import protect
from ue_core.data import read_dataset, write_shards
from ue_core.data.dataset import balanced_subset
from ue_core.release import read_manifest, read_release, verify_release

CONFIG = {
    "data": {"test_subset": 0},
    "budget": {"eps": "8/255"},
    "beo": {
        "rounds": 2,
        "batch_size": 64,
        "seed": 3,
        "release_rounds": [1],  # the state after round 0, published inside the release: resume compares it first
        "pga": {"update": "sign", "step_size": "2/255"},
        "surrogate": {"model": "small_cnn", "mode": "retrain", "epochs": 2, "lr": 0.05, "batch_size": 50},
        "estimator": {"kind": "exact", "sigma": 0.3},
    },
    "formats": ["parquet"],
}


@pytest.fixture(scope="module")
def job(fashion_mnist_root, tmp_path_factory):
    """A 200-image Fashion-MNIST source as Parquet shards, the job's YAML config, and a tracking store."""
    root = tmp_path_factory.mktemp("ray-protect")
    source = balanced_subset(read_dataset(str(fashion_mnist_root)), 200, seed=5)
    write_shards(source, root / "source", rows_per_shard=70)
    (root / "job.yaml").write_text(yaml.safe_dump(CONFIG))
    return {"root": root, "source": str(root / "source"), "config_file": str(root / "job.yaml"),
            "tracking": f"sqlite:///{root / 'mlruns.db'}", "clean": source}


@pytest.fixture(scope="module")
def ray_release(job):
    """The Ray engine's release (a local Ray started with its defaults, as a user gets it)."""
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        out = job["root"] / "ray-release"
        config = load_protect_config(config_file=job["config_file"])
        started = time.perf_counter()
        summary = protect(job["source"], str(out), config, engine="ray", progress=False,
                          tracking_uri=job["tracking"], experiment="tests")
        assert time.perf_counter() - started < 600  # no deadlock
        return out, summary
    finally:
        ray.shutdown()


def test_ray_release_is_verified_and_its_work_dir_is_gone(job, ray_release):
    out, summary = ray_release
    manifest = verify_release(out)
    assert manifest["engine"] == "ray" and manifest["count"] == 200
    assert [h["round"] for h in manifest["history"]] == [0, 1]
    assert summary.results["bayes_error_release"] > summary.results["bayes_error_clean"]
    assert not (job["root"] / ".ray-release.work").exists()


def test_ray_engine_matches_the_reference(job, ray_release):
    """Same seed, same exact estimator: the same release up to floating-point order.

    Tolerance (stated, and what this test holds the engine to): the Ray engine computes features and
    kernels in other batch and block shapes (and may train with another thread count), so a few gradient
    entries that are ~0 can change sign; at most 0.5% of pixels may differ, and β̂ agrees within 0.02.
    """
    out, summary = ray_release
    config = load_protect_config(config_file=job["config_file"])
    reference = protect(job["source"], str(job["root"] / "reference-release"), config, engine="reference",
                        progress=False, tracking_uri=job["tracking"], experiment="tests")
    assert_releases_agree(out, job["root"] / "reference-release")
    assert summary.results["bayes_error_release"] == pytest.approx(reference.results["bayes_error_release"], abs=0.02)


def assert_releases_agree(ours_uri: Path, theirs_uri: Path) -> None:
    """Same rows and labels; at most 0.5% of pixels differ; β̂ per round within 0.02."""
    ours, theirs = read_release(ours_uri).sorted_by_index(), read_release(theirs_uri).sorted_by_index()
    np.testing.assert_array_equal(ours.index, theirs.index)
    np.testing.assert_array_equal(ours.labels, theirs.labels)
    differing = np.mean(ours.images != theirs.images)
    print(f"Ray vs reference: {differing:.4%} of pixels differ")
    assert differing <= 0.005, f"{differing:.4%} of pixels differ"
    ours_history, theirs_history = read_manifest(ours_uri)["history"], read_manifest(theirs_uri)["history"]
    assert len(ours_history) == len(theirs_history)
    for a, b in zip(ours_history, theirs_history):
        assert a["bayes_error"] == pytest.approx(b["bayes_error"], abs=0.02)


def protect_with_both_engines(job, config, out: Path):
    """(reference summary, Ray summary) of ``config`` on the job's source, published at out/reference and
    out/ray; the Ray engine on a local Ray started for it."""
    reference = protect(job["source"], str(out / "reference"), config, engine="reference",
                        progress=False, tracking_uri=job["tracking"], experiment="tests")
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        ours = protect(job["source"], str(out / "ray"), config, engine="ray",
                       progress=False, tracking_uri=job["tracking"], experiment="tests")
    finally:
        ray.shutdown()
    return reference, ours


def test_adam_rule_on_ray_matches_the_reference(job, tmp_path):
    """Under ``update: adam`` the state also carries Adam's per-sample moments from round to round (the sign
    rule's state leaves them out); the release still matches the reference's, with the tolerance above."""
    config = load_protect_config(config_file=job["config_file"],
                                 overrides={"beo.pga.update": "adam", "beo.pga.lr": "2/255"})
    reference, ours = protect_with_both_engines(job, config, tmp_path)
    assert_releases_agree(tmp_path / "ray", tmp_path / "reference")
    assert ours.results["bayes_error_release"] == pytest.approx(reference.results["bayes_error_release"], abs=0.02)
    assert np.mean(read_release(tmp_path / "ray").images != job["clean"].sorted_by_index().images) > 0.1


ROBUST = {"eps": "8/255", "step": "4/255", "steps": 1}


CONFUSABLE = [6, 3, 4, 0, 2, 7, 0, 9, 6, 7]  # a class map: each Fashion-MNIST class to a similar one


@pytest.mark.parametrize("anchors, target_map, views, adversarial, channels_last",
                         [("none", CONFUSABLE, 0, None, False), ("clean", [], 2, ROBUST, True)])
def test_stronger_options_and_early_releases_on_ray_match_the_reference(
    job, tmp_path, anchors, target_map, views, adversarial, channels_last
):
    """The "target" objective (towards a class map, then (y + 1) mod C), the nearest-neighbour bandwidth,
    without and with the clean copies as anchors
    (the sharded estimator, then the anchored one), augmentation-aware steps (two crop/flip views), a
    robust (adversarially trained) surrogate and channels-last passes, a release after round 1 of 2 and the
    mixed efficacy probe after round 2: the Ray engine runs every option the reference runs and publishes the
    same releases (tolerance as above), the early one as a whole release inside the final one."""
    config = load_protect_config(config_file=job["config_file"], overrides={
        "beo.surrogate.adversarial": adversarial, "beo.compute.channels_last": channels_last,
        "beo.estimator.objective": "target", "beo.estimator.target_map": target_map,
        "beo.estimator.bandwidth": "nearest-neighbour",
        "beo.estimator.anchors": anchors, "beo.augment.views": views, "beo.release_rounds": [1],
        "data.test_subset": 100, "beo.probe": {"every": 2, "epochs": 1, "width": 16}})
    _, ours = protect_with_both_engines(job, config, tmp_path)
    assert ours.early_releases == {1: f"{tmp_path / 'ray'}/rounds/round-00001"}
    assert f"and after rounds 1 at {tmp_path / 'ray'}/rounds/round-00001" in ours.line()
    assert_releases_agree(tmp_path / "ray", tmp_path / "reference")
    probes = [read_manifest(tmp_path / engine)["history"][-1] for engine in ("ray", "reference")]
    assert probes[0]["probe_clean_only_accuracy"] == pytest.approx(probes[1]["probe_clean_only_accuracy"], abs=0.02)
    assert probes[0]["probe_mixed_accuracy"] == pytest.approx(probes[1]["probe_mixed_accuracy"], abs=0.05)
    assert all("probe_mixed_accuracy" not in h for h in read_manifest(tmp_path / "ray")["history"][:-1])
    for engine in ("ray", "reference"):
        manifest = verify_release(tmp_path / engine)
        assert manifest["snapshots"] == {"1": "rounds/round-00001"}
        early = verify_release(tmp_path / engine / "rounds" / "round-00001")
        assert early["rounds"] == 1 and [h["round"] for h in early["history"]] == [0]
        assert all(h["sigma"] != 0.3 for h in manifest["history"])  # the bandwidth followed the features
    assert_releases_agree(tmp_path / "ray" / "rounds" / "round-00001", tmp_path / "reference" / "rounds" / "round-00001")
    early, final = read_release(tmp_path / "ray" / "rounds" / "round-00001"), read_release(tmp_path / "ray")
    clean = job["clean"].sorted_by_index().images.astype(int)
    assert np.abs(early.sorted_by_index().images.astype(int) - clean).max() == 2  # one sign step of 2/255
    assert np.abs(final.sorted_by_index().images.astype(int) - clean).max() == 4


def test_the_mlflow_run_holds_params_metrics_and_figures(job, ray_release, mlflow_global_store):
    _, summary = ray_release
    mlflow_global_store(job["tracking"])
    run = mlflow.get_run(summary.mlflow_run)
    assert run.info.status == "FINISHED"
    assert run.data.params["budget.eps"] == str(8 / 255) and run.data.params["engine"] == "ray"
    history = mlflow.MlflowClient().get_metric_history(summary.mlflow_run, "bayes_error")
    assert [m.step for m in history] == [0, 1]
    assert run.data.metrics["bayes_error_release"] == pytest.approx(summary.results["bayes_error_release"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(summary.mlflow_run)}
    assert {"bayes_error.png", "images.png", "manifest.json", "surrogate.pt"} <= artifacts
    surrogate = mlflow.artifacts.download_artifacts(run_id=summary.mlflow_run, artifact_path="surrogate.pt")
    spec = torch.load(surrogate, weights_only=True)
    assert (spec["name"], spec["num_classes"], spec["in_channels"]) == ("small_cnn", 10, 1)
    assert run.data.tags["method"] == "beo" and run.data.tags["eps"] == "8/255"
    local = Path(mlflow.artifacts.download_artifacts(run_id=summary.mlflow_run, artifact_path="images.png"))
    with Image.open(local) as image:
        assert image.size[0] > 100 and image.size[1] > 100
        assert np.asarray(image.convert("L")).std() > 10  # a picture, not a blank canvas


def run_cli(job, out: Path, work: Path, rounds: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "protect", "--config", job["config_file"], "--source", job["source"],
         "--out", str(out), "--work-dir", str(work), "--tracking-uri", job["tracking"], "--no-progress",
         "--rounds", str(rounds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def test_a_killed_job_resumes_to_the_uninterrupted_result(job, ray_release, tmp_path):
    out, work = tmp_path / "resumed", tmp_path / "work"
    first = run_cli(job, out, work, rounds=2)
    deadline = time.monotonic() + 480
    while not (work / "rounds" / "round-00000" / "round.json").exists():
        assert first.poll() is None, first.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "round 0 did not finish in time"
        time.sleep(0.02)  # round 1 of 200 images can take under a second: kill soon after round 0 is done
    os.killpg(first.pid, signal.SIGKILL)  # the driver and everything it started in its session
    first.wait()
    assert not out.exists() and not (work / "rounds" / "round-00001" / "round.json").exists()

    second = run_cli(job, out, work, rounds=2)
    stdout, stderr = second.communicate(timeout=600)
    assert second.returncode == 0, stderr[-2000:]
    history = read_manifest(out)["history"]
    assert [h["round"] for h in history] == [0, 1]
    # round 0 (computed by the killed job, read back by the rerun) first, then round 1 (the rerun's)
    for release in ("rounds/round-00001", "."):
        resumed, uninterrupted = read_release(out / release), read_release(ray_release[0] / release)
        differing = int(np.sum(resumed.sorted_by_index().images != uninterrupted.sorted_by_index().images))
        assert differing == 0, f"{release}: {differing} pixels differ from the uninterrupted run's"


def test_state_left_by_a_killed_write_is_replaced(tmp_path):
    """A round killed while writing its state leaves shards but no round.json; the retry must not add to them."""
    from pipelines.ray_engine.state import JobState
    from pipelines.storage import WorkDir

    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        job = JobState(WorkDir(str(tmp_path / "work")))
        target = tmp_path / "work" / "rounds" / "round-00000" / "state"
        target.mkdir(parents=True)
        (target / "stale-part.parquet").write_bytes(b"left by a killed attempt")
        job.write_round(0, ray.data.from_items([{"index": i} for i in range(5)]), {"name": "small_cnn"})
        assert not (target / "stale-part.parquet").exists()
        assert job.completed_rounds() == []  # no round.json yet
        job.complete_round(0, [{"round": 0}])
        assert job.completed_rounds() == [0] and job.records(0) == [{"round": 0}]
        assert sorted(job.state_after(0).to_pandas()["index"]) == [0, 1, 2, 3, 4]
        assert job.surrogate_of(0) == {"name": "small_cnn"}
    finally:
        ray.shutdown()


def test_a_baseline_runs_as_one_ray_task_and_matches_the_reference(job, tmp_path, mlflow_global_store):
    """EM through the Ray engine (one task reading the source where it runs) publishes what the one-process
    run does (tolerance as above: thread counts may differ), and its MLflow run holds EM's params and its
    per-iteration metrics, not BEO's."""
    config = load_protect_config(config_file=job["config_file"], overrides={
        "method": "em", "em.model": "small_cnn", "em.max_iterations": 2, "em.batch_size": 50, "em.lr": 0.05})
    reference, ours = protect_with_both_engines(job, config, tmp_path)
    assert verify_release(tmp_path / "ray")["method"] == "em"
    mine = read_release(tmp_path / "ray").sorted_by_index()
    theirs = read_release(tmp_path / "reference").sorted_by_index()
    np.testing.assert_array_equal(mine.index, theirs.index)
    assert np.mean(mine.images != theirs.images) <= 0.005
    assert np.mean(mine.images != job["clean"].sorted_by_index().images) > 0.3
    assert ours.results["iterations"] == reference.results["iterations"] == 2
    mlflow_global_store(job["tracking"])
    run = mlflow.get_run(ours.mlflow_run)
    assert run.data.params["method"] == "em" and run.data.params["em.max_iterations"] == "2"
    assert "beo.rounds" not in run.data.params and "tap.steps" not in run.data.params
    accuracy = mlflow.MlflowClient().get_metric_history(ours.mlflow_run, "accuracy_on_protected")
    assert [m.step for m in accuracy] == [0, 1]


def test_every_pass_records_the_device_ray_gave_it(ray_release):
    """The surrogate's Train worker, the feature and ascent actors and the estimator's tasks each record where
    they ran (on_gpu_*, 1.0 on CUDA): on this machine, with no GPU in the local Ray, every pass is on the CPU."""
    out, _ = ray_release
    history = read_manifest(out)["history"]
    passes = ("on_gpu_surrogate", "on_gpu_features", "on_gpu_estimator", "on_gpu_ascent")
    assert all(record[key] == 0.0 for record in history for key in passes), history
