"""`ue sweep` on a real local Ray (Tune over Train) with a real MLflow sqlite store, on real Fashion-MNIST."""

import csv

import mlflow
import pytest
import ray
from PIL import Image

from pipelines.config import ReleaseSpec, load_sweep_config
from pipelines.sweep import Trial, _runs, ensure_releases, plan_trials, release_uri, run_trials, sweep
from ue_core.errors import InvalidInputError
from ue_core.release import read_manifest, verify_release

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def shutdown_ray_afterwards():
    """The jobs start a local Ray in this process; later modules start their own."""
    yield
    ray.shutdown()

TINY = {
    "protect.data.subset": 200, "protect.data.test_subset": 0, "protect.beo.rounds": 1,
    "protect.beo.surrogate.epochs": 1, "evaluate.test_subset": 300, "evaluate.victim.epochs": 1,
    "grid.eps": ["8/255"], "grid.ratio": [0, 0.5], "grid.defence": ["none"],
}
TINY_METHODS = {**TINY, "grid.method": ["beo", "random"]}


def test_plan_has_the_arms_each_ratio_needs():
    config = load_sweep_config("fashion-mnist", {"grid.eps": ["4/255", "8/255"], "grid.ratio": [1, 0, 0.3]})
    keys = [t.key for t in plan_trials(config) if t.defence == "none"]
    assert keys == [
        "clean-all eps=— ratio=0 small_cnn none",
        "mixed beo eps=4/255 ratio=0.3 small_cnn none", "mixed beo eps=8/255 ratio=0.3 small_cnn none",
        "clean-only eps=— ratio=0.3 small_cnn none",
        "mixed beo eps=4/255 ratio=1 small_cnn none", "mixed beo eps=8/255 ratio=1 small_cnn none",
    ]
    paper = load_sweep_config("cifar10-paper")
    assert paper.grid.ratio == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 1.0)
    assert paper.grid.defence == ("none", "adversarial") and paper.grid.victim == ("resnet18",)
    assert paper.protect_config("beo", 8 / 255).beo.surrogate.model == "resnet18"
    assert paper.grid.method == ("beo", "random", "em", "tap")
    assert paper.protect_config("em", 8 / 255).em.model == "resnet18"  # the authors' generator


def test_a_method_axis_adds_a_mixed_victim_per_release_and_no_clean_one():
    config = load_sweep_config("fashion-mnist-baselines", {"grid.ratio": [0, 0.5]})
    keys = [t.key for t in plan_trials(config)]
    assert keys == ["clean-all eps=— ratio=0 small_cnn none",
                    *(f"mixed {m} eps=8/255 ratio=0.5 small_cnn none" for m in ("beo", "random", "em", "tap")),
                    "clean-only eps=— ratio=0.5 small_cnn none"]
    assert config.protect_config("tap", 8 / 255).tap.model == "small_cnn"
    with pytest.raises(InvalidInputError, match="sweep grid.method: unknown 'no-such-method'"):
        load_sweep_config("fashion-mnist-baselines", {"grid.method": ["beo", "no-such-method"]})


def test_releases_are_addressed_by_source_and_config():
    config = load_sweep_config("fashion-mnist")
    rounds = load_sweep_config("fashion-mnist", {"protect.beo.rounds": 3})
    em_steps = load_sweep_config("fashion-mnist", {"protect.em.pgd_steps": 5})

    def uri(sweep_config=config, method="beo", eps=8 / 255, source="data"):
        return release_uri("r", source, sweep_config, ReleaseSpec(method, eps, {}))

    assert uri() == uri()
    assert len({uri(), uri(eps=16 / 255), uri(source="other/data"), uri(rounds), uri(method="em")}) == 5
    # a section the method never reads does not move its release: BEO's ignores em, EM's ignores beo.rounds
    assert uri(em_steps) == uri() and uri(rounds, "em") == uri(method="em") != uri(em_steps, "em")


def test_any_config_key_is_a_grid_axis():
    config = load_sweep_config("fashion-mnist-baselines", {
        "grid.method": ["beo", "random"], "grid.ratio": [0, 0.5],
        "grid.protect": {"beo.rounds": [2, 4], "beo.estimator.sigma": [0.3, 1.0]},
        "grid.evaluate": {"seed": [0, 1], "victim.recipe": ["plain"]},
    })
    labels = [spec.label for spec in config.releases()]
    assert labels == ["beo eps=8/255 beo.rounds=2 beo.estimator.sigma=0.3",
                      "beo eps=8/255 beo.rounds=2 beo.estimator.sigma=1.0",
                      "beo eps=8/255 beo.rounds=4 beo.estimator.sigma=0.3",
                      "beo eps=8/255 beo.rounds=4 beo.estimator.sigma=1.0",
                      "random eps=8/255"]  # random reads neither key: one release, not four
    assert config.protect_config("beo", 8 / 255, {"beo.rounds": 4}).beo.rounds == 4
    trials = plan_trials(config)
    assert len(trials) == 2 * (1 + 5 + 1)  # per evaluation: clean-all, a mixed victim per release, clean-only
    assert trials[0].key == "clean-all eps=— ratio=0 small_cnn none seed=0 victim.recipe=plain"
    assert trials[2].key == "mixed beo eps=8/255 beo.rounds=2 beo.estimator.sigma=1.0 ratio=0.5 small_cnn none " \
                            "seed=0 victim.recipe=plain"
    assert trials[-1].evaluation == "seed=1 victim.recipe=plain"
    # releases that differ only in beo.rounds are one run: the longest, the others released early inside it
    runs = _runs(config)
    assert sorted((c.method, c.beo.rounds, c.beo.release_rounds, c.beo.estimator.sigma) for c in runs) == [
        ("beo", 4, (2,), 0.3), ("beo", 4, (2,), 1.0), ("random", 8, (), 0.3)]  # the preset's rounds
    assert sorted(r for labels in runs.values() for r in labels.values() if r) == [2, 2]


@pytest.mark.parametrize("axes, message", [
    ({"grid.protect": {"beo.roundz": [1, 2]}}, "sweep grid.protect .beo.roundz=1.: unknown key config.beo.roundz"),
    ({"grid.protect": {"beo.estimator.sigma": [0.3, -1]}}, "estimator sigma must be > 0"),
    ({"grid.evaluate": {"victim.recipee": ["plain"]}}, "unknown key evaluate.victim.recipee"),
    ({"grid.protect": {"budget.eps": ["8/255"]}}, "budget.eps is an axis of its own; use grid.eps"),
    ({"grid.protect": {"beo.pga.eps": ["8/255"]}}, "budget.eps is an axis of its own; use grid.eps"),  # its old key
    ({"grid.evaluate": {"ratio": [0.5]}}, "ratio is an axis of its own; use grid.ratio"),
    ({"grid.protect": {"beo.rounds": [2, 2]}}, "grid.protect.beo.rounds: expected a non-empty list of distinct"),
])
def test_a_bad_axis_is_one_line_before_any_trial(axes, message):
    with pytest.raises(InvalidInputError, match=message):
        load_sweep_config("fashion-mnist", axes)


def test_failed_trials_are_retried_and_reported(tmp_path):
    """Real Ray Tune: a trial that fails once succeeds on its retry; one that always fails is reported."""
    attempts = tmp_path / "attempts"
    attempts.mkdir()

    def flaky(tune_config, context):
        from ray import tune

        trial = tune_config["trial"]
        log = attempts / trial["victim"]
        log.write_text(log.read_text() + "x" if log.exists() else "x")
        if trial["victim"] == "always" or len(log.read_text()) == 1:
            raise RuntimeError(f"attempt {len(log.read_text())} of {trial['victim']} failed")
        tune.report({"final_test_accuracy": 0.25, "best_test_accuracy": 0.5})

    trials = [Trial("clean-all", None, 0.0, "flaky", "none"), Trial("clean-all", None, 0.0, "always", "none")]
    outcomes = run_trials(flaky, trials, {}, concurrency=1, max_failures=2, storage_uri=str(tmp_path / "tune"),
                          name="retries")
    retried, failed = outcomes
    assert (retried.status, retried.final_test_accuracy, retried.best_test_accuracy) == ("DONE", 0.25, 0.5)
    assert failed.status == "FAILED" and failed.final_test_accuracy is None
    assert "RuntimeError: attempt 3 of always failed" in failed.error
    assert (attempts / "flaky").read_text() == "xx" and (attempts / "always").read_text() == "xxx"


def test_small_sweep_on_fashion_mnist(fashion_mnist_root, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    config = load_sweep_config("fashion-mnist", TINY_METHODS)
    out = tmp_path / "sweep"
    summary = sweep(config, str(out), source=str(fashion_mnist_root), tracking_uri=store, progress=False)

    assert [o.status for o in summary.outcomes] == ["DONE"] * 4, summary.markdown
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["arm"], r["method"], r["ratio"]) for r in rows] == [
        ("clean-all", "", "0.0"), ("mixed", "beo", "0.5"), ("mixed", "random", "0.5"), ("clean-only", "", "0.5")]
    with Image.open(out / "accuracy.png") as image:
        assert image.size[0] > 200 and image.convert("L").getextrema()[0] < 128

    releases = {read_manifest(r)["method"]: r for r in (tmp_path / "releases").iterdir()}
    assert set(releases) == {"beo", "random"}
    for release in releases.values():
        manifest = verify_release(release)
        assert manifest["count"] == 200 and manifest["eps"] == pytest.approx(8 / 255)
        assert manifest["config"]["data"]["subset"] == 200
    for method, release in releases.items():
        quality = read_manifest(release)["summary"]
        row = f"| {method} eps=8/255 | {quality['psnr_db']:.2f} | {quality['ssim']:.4f} | {release} |"
        assert row in summary.markdown and row in (out / "results.md").read_text()
    before = (releases["beo"] / "manifest.json").stat().st_mtime_ns
    again = ensure_releases(str(fashion_mnist_root), config, str(tmp_path / "releases"), None, store, False)
    assert again == {"beo eps=8/255": str(releases["beo"]), "random eps=8/255": str(releases["random"])}
    assert (releases["beo"] / "manifest.json").stat().st_mtime_ns == before

    client = mlflow.MlflowClient(store)
    parent = client.get_run(summary.mlflow_run)
    assert parent.data.params["grid.ratio"] == "[0.0, 0.5]"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"results.csv", "results.md", "accuracy.png"}
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_key = {c.data.tags["ue.trial"]: c for c in children}
    assert len(children) == 4 and set(by_key) == {Trial(**{k: o.__dict__[k] for k in Trial.__dataclass_fields__}).key
                                                  for o in summary.outcomes}
    for outcome, row in zip(summary.outcomes, rows):
        child = by_key[Trial(outcome.arm, outcome.eps, outcome.ratio, outcome.victim, outcome.defence,
                             outcome.method, outcome.settings, outcome.evaluation).key]
        assert child.info.status == "FINISHED" and child.data.params["arm"] == outcome.arm
        assert child.data.metrics["final_test_accuracy"] == pytest.approx(float(row["final_test_accuracy"]))
        assert 0 <= outcome.final_test_accuracy <= 1


def test_a_rounds_axis_is_one_protect_run(fashion_mnist_root, tmp_path):
    """grid.protect beo.rounds [1, 2]: one protect job of 2 rounds publishes both releases (the 1-round one
    inside it), and a mixed victim trains on each."""
    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    config = load_sweep_config("fashion-mnist", {**TINY, "grid.ratio": [0.5], "grid.protect": {"beo.rounds": [1, 2]}})
    summary = sweep(config, str(tmp_path / "sweep"), source=str(fashion_mnist_root), tracking_uri=store,
                    progress=False)
    assert [(o.arm, o.settings, o.status) for o in summary.outcomes] == [
        ("mixed", "beo.rounds=1", "DONE"), ("mixed", "beo.rounds=2", "DONE"), ("clean-only", "", "DONE")]
    (release,) = (tmp_path / "releases").iterdir()  # one job
    manifest = verify_release(release)
    assert manifest["config"]["beo"]["rounds"] == 2 and manifest["snapshots"] == {"1": "rounds/round-00001"}
    assert verify_release(release / "rounds" / "round-00001")["rounds"] == 1
    assert "beo eps=8/255 beo.rounds=1" in summary.markdown and str(release / "rounds" / "round-00001") in summary.markdown
