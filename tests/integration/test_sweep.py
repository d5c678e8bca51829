"""`ue sweep` on a real local Ray (Tune over Train) with a real MLflow sqlite store, on real Fashion-MNIST."""

import csv

import mlflow
import numpy as np
import pytest
import ray
from PIL import Image

from pipelines.config import ReleaseSpec, budget_label, load_sweep_config
from pipelines.sweep import Trial, _runs, ensure_releases, plan_trials, release_uri, run_trials, sweep
from pipelines.sweep_report import TrialOutcome, ranked_table, results_table
from ue_core.errors import InvalidInputError
from ue_core.methods import METHODS as METHOD_CLASSES
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
TINY_METHODS = {**TINY, "grid.method": ["beo", "random", "ops"]}


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
    config = load_sweep_config("fashion-mnist-baselines", {"grid.ratio": [0, 0.5], "grid.defence": ["none"]})
    keys = [t.key for t in plan_trials(config)]
    assert keys == ["clean-all eps=— ratio=0 small_cnn none",
                    *(f"mixed {m} eps=8/255 ratio=0.5 small_cnn none" for m in ("beo", "random", "em", "tap")),
                    "mixed ops l0=1 ratio=0.5 small_cnn none", "mixed ar l2=1 ratio=0.5 small_cnn none",
                    "mixed lsp l2=168/255 ratio=0.5 small_cnn none",
                    "clean-only eps=— ratio=0.5 small_cnn none"]
    assert config.protect_config("tap", 8 / 255).tap.model == "small_cnn"
    with pytest.raises(InvalidInputError, match="sweep grid.method: unknown 'no-such-method'"):
        load_sweep_config("fashion-mnist-baselines", {"grid.method": ["beo", "no-such-method"]})


def test_the_baselines_sweep_has_every_method_at_a_budget_it_is_defined_for():
    config = load_sweep_config("fashion-mnist-baselines")
    assert config.grid.method == ("beo", "random", "em", "tap", "ops", "ar", "lsp") == tuple(METHOD_CLASSES)
    budgets = {spec.method: (spec.norm, spec.eps) for spec in config.releases()}
    assert budgets == {"beo": ("linf", 8 / 255), "random": ("linf", 8 / 255), "em": ("linf", 8 / 255),
                       "tap": ("linf", 8 / 255), "ops": ("l0", 1.0), "ar": ("l2", 1.0), "lsp": ("l2", 168 / 255)}
    for spec in config.releases():  # ProtectConfig checks the method's norms (ue_core.methods) as it builds
        protect = config.protect_config(spec.method, spec.eps, spec.settings)
        assert (protect.method, protect.budget.norm, protect.budget.eps) == (spec.method, spec.norm, spec.eps)
        assert protect.budget.norm in METHOD_CLASSES[spec.method].norms
        assert protect.data.subset == 2000
    assert [spec.label for spec in config.releases()][-3:] == ["ops l0=1", "ar l2=1", "lsp l2=168/255"]
    assert config.grid.defence == ("none", "jpeg")
    assert len(plan_trials(config)) == 2 * (1 + 7 + 1 + 7)  # per defence: ratio 0, 0.5 (with clean-only), 1
    # a budget of a method the grid leaves out is ignored, so --set grid.method=… narrows the sweep
    narrow = load_sweep_config("fashion-mnist-baselines", {"grid.method": ["beo", "ops"]})
    assert [spec.label for spec in narrow.releases()] == ["beo eps=8/255", "ops l0=1"]


def test_a_method_with_its_own_budget_has_one_release_per_protect_point_not_per_eps():
    config = load_sweep_config("fashion-mnist-baselines", {
        "grid.method": ["beo", "random", "ops", "ar"], "grid.eps": ["4/255", "8/255"], "grid.ratio": [0.5],
        "grid.defence": ["none"],
        "grid.protect": {"ar.seed": [0, 1], "beo.rounds": [2]},
    })
    assert [(spec.label, spec.norm) for spec in config.releases()] == [
        ("beo eps=4/255 beo.rounds=2", "linf"), ("beo eps=8/255 beo.rounds=2", "linf"),
        ("random eps=4/255", "linf"), ("random eps=8/255", "linf"),
        ("ops l0=1", "l0"),  # neither axis is read by OPS: one release at its own budget
        ("ar l2=1 ar.seed=0", "l2"), ("ar l2=1 ar.seed=1", "l2"),  # one per ar.seed, none per grid ε
    ]
    assert config.method_eps("ops") == (1.0,) and config.method_eps("beo") == (4 / 255, 8 / 255)
    trials = [t for t in plan_trials(config) if t.arm == "mixed"]
    assert [(t.method, t.eps, t.norm) for t in trials if t.method in ("ops", "ar")] == [
        ("ops", 1.0, "l0"), ("ar", 1.0, "l2"), ("ar", 1.0, "l2")]
    assert trials[4].key == "mixed ops l0=1 ratio=0.5 small_cnn none"
    with pytest.raises(InvalidInputError, match="sweep budgets.ops: ops is released at its own budget l0=1 only"):
        config.protect_config("ops", 8 / 255)


def test_the_norm_is_in_the_label_and_the_release_address():
    """AR at L2 8/255 and at L∞ 8/255 are two releases with two labels; AR given the grid's own budget
    explicitly is the very release it had without a budget."""
    plain = load_sweep_config("fashion-mnist", {"grid.method": ["ar"], "grid.eps": ["8/255"]})
    l2 = load_sweep_config("fashion-mnist", {"grid.method": ["ar"], "budgets.ar": {"norm": "l2", "eps": "8/255"}})
    same = load_sweep_config("fashion-mnist", {"grid.method": ["ar"], "budgets.ar": {"norm": "linf", "eps": "8/255"}})
    (linf_spec,), (l2_spec,), (same_spec,) = (c.releases() for c in (plain, l2, same))
    assert (linf_spec.label, l2_spec.label, same_spec.label) == ("ar eps=8/255", "ar l2=8/255", "ar eps=8/255")
    assert release_uri("r", "data", plain, linf_spec) != release_uri("r", "data", l2, l2_spec)
    assert release_uri("r", "data", plain, linf_spec) == release_uri("r", "data", same, same_spec)
    assert Trial("mixed", 8 / 255, 1.0, "small_cnn", "none", "ar", norm="l2").key != \
        Trial("mixed", 8 / 255, 1.0, "small_cnn", "none", "ar").key
    assert [budget_label(e, n) for e, n in [(8 / 255, "linf"), (1, "l0"), (168 / 255, "l2"), (1.0, "l2"),
                                            (0.5, "l2"), (1.3, "l2")]] == [
        "eps=8/255", "l0=1", "l2=168/255", "l2=1", "l2=0.5", "l2=1.3"]
    outcome = TrialOutcome("mixed", 1.0, "l0", 0.5, "small_cnn", "none", "ops", "", "", "DONE", 0.5, 0.6, "")
    _, markdown = results_table([outcome])
    assert "| mixed | ops | l0=1 | — | 0.5 |" in markdown


@pytest.mark.parametrize("overrides, message", [
    ({"budgets.nope": {"norm": "l0", "eps": 1}}, "sweep budgets.nope: unknown method 'nope'; expected one of beo"),
    ({"budgets.ops": {"norm": "l0"}}, "sweep budgets.ops: give both norm and eps"),
    ({"budgets.ops": {"norm": "l9", "eps": 1}}, "sweep budgets.ops.norm: expected one of linf, l2, l0, got 'l9'"),
    ({"budgets.ops": {"norm": "l0", "eps": 1.5}}, "sweep budgets.ops: eps must be an integer >= 1"),
    ({"budgets.ops": {"norm": "l0", "eps": "one"}}, "sweep budgets.ops.eps: expected a number"),
    ({"budgets.ops": {"norm": "l0", "eps": 1, "seed": 0}}, "unknown key sweep budgets.ops.seed"),
    ({"budgets.ops": 1}, "sweep budgets.ops: expected a mapping of keys to values, got 1"),
    ({"budgets.lsp": {"norm": "linf", "eps": "8/255"}}, "sweep budgets.lsp: lsp: defined for the budget norm l2 only"),
    ({"budgets.em": {"norm": "l2", "eps": 0.5}}, "sweep budgets.em: em: defined for the budget norm linf only"),
    ({"budgets": [1]}, "budgets: expected a mapping of keys to values"),
    ({"grid.protect": {"budget.norm": ["l2"]}}, "a budget.norm axis and budgets cannot both set the norm"),
])
def test_a_bad_budget_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(InvalidInputError, match=message) as error:
        load_sweep_config("fashion-mnist-baselines", overrides)
    assert "\n" not in str(error.value)


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
        "grid.method": ["beo", "random"], "grid.ratio": [0, 0.5], "grid.defence": ["none"],
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


SIGMA_SEARCH = {"search.protect": {"beo.estimator.sigma": {"loguniform": [0.3, 10]}}, "search.samples": 4,
                "search.mode": "min"}


def test_a_search_draws_tunes_samples_with_its_seed_and_multiplies_the_grid():
    config = load_sweep_config("fashion-mnist", {**SIGMA_SEARCH, "grid.eps": ["8/255"], "grid.ratio": [0.5],
                                                 "grid.defence": ["none"], "grid.protect": {"beo.rounds": [2, 4]}})
    # Tune's log-uniform: exp of a uniform draw between the logs, in draw order from RandomState(seed)
    expected = [float(f"{v:.4g}") for v in np.exp(np.random.RandomState(0).uniform(np.log(0.3), np.log(10), 4))]
    assert [p["beo.estimator.sigma"] for p in config.search.points("protect")] == expected
    assert all(0.3 <= v <= 10 for v in expected) and len(set(expected)) == 4
    assert [spec.label for spec in config.releases()] == [
        f"beo eps=8/255 beo.rounds={rounds} beo.estimator.sigma={sigma}" for rounds in (2, 4) for sigma in expected]
    drawn = {"beo.estimator.sigma": expected[1]}
    assert config.protect_config("beo", 8 / 255, drawn).beo.estimator.sigma == expected[1]
    assert len(plan_trials(config)) == 8 + 1  # a mixed victim per release, one clean-only
    again = load_sweep_config("fashion-mnist", {**SIGMA_SEARCH, "search.seed": 0})
    other = load_sweep_config("fashion-mnist", {**SIGMA_SEARCH, "search.seed": 1})
    assert again.search.points("protect") == config.search.points("protect") != other.search.points("protect")
    defence = load_sweep_config("fashion-mnist", {"search.evaluate": {"victim.lr": {"uniform": [0.01, 0.1]},
                                                                      "seed": {"randint": [0, 3]}},
                                                  "search.samples": 5, "search.mode": "max", "grid.ratio": [0.5],
                                                  "grid.defence": ["none"]})
    points = defence.search.points("evaluate")
    assert 1 <= len(points) <= 5 and all(p["seed"] in (0, 1, 2) and 0.01 <= p["victim.lr"] <= 0.1 for p in points)
    assert [t.evaluation for t in plan_trials(defence) if t.arm == "clean-only"] == [
        f"victim.lr={p['victim.lr']} seed={p['seed']}" for p in points]


@pytest.mark.parametrize("search, message", [
    ({"search.samples": 2}, "sweep search.samples: nothing to sample"),
    ({**SIGMA_SEARCH, "search.mode": None}, "sweep search.mode: expected min"),
    ({**SIGMA_SEARCH, "search.samples": 0}, "sweep search.samples: expected an integer >= 1, got 0"),
    ({**SIGMA_SEARCH, "search.metric": "loss"}, "sweep search.metric: expected one of final_test_accuracy"),
    ({**SIGMA_SEARCH, "search.protect": {"beo.estimator.sigma": {"loguniform": [0, 10]}}},
     r"search.protect.beo.estimator.sigma: loguniform takes \[low, high\]: a float, uniform in log space"),
    ({**SIGMA_SEARCH, "search.protect": {"beo.estimator.sigma": {"logunifrom": [0.3, 10]}}},
     "search.protect.beo.estimator.sigma.logunifrom: expected one search space"),
    ({**SIGMA_SEARCH, "search.protect": {"beo.rounds": {"randint": [1.5, 4]}}}, "randint takes integers"),
    ({**SIGMA_SEARCH, "search.protect": {"beo.estimator.sigm": {"uniform": [0.3, 1]}}},
     "sweep search.protect .beo.estimator.sigm=.*: unknown key config.beo.estimator.sigm"),
    ({**SIGMA_SEARCH, "search.protect": {"budget.eps": {"uniform": [0.01, 0.1]}}},
     "budget.eps is also an axis .grid.eps.; sample it or list it, not both"),
    ({**SIGMA_SEARCH, "grid.protect": {"beo.estimator.sigma": [0.3, 1.0]}},
     "beo.estimator.sigma is also an axis .grid.protect.beo.estimator.sigma."),
    ({**SIGMA_SEARCH, "search.evaluate": {"victim.lr": {"uniform": [0.01, 0.1]}}},
     "sample protect keys or evaluate keys, not both"),
])
def test_a_bad_search_is_one_line_before_any_trial(search, message):
    with pytest.raises(InvalidInputError, match=message) as error:
        load_sweep_config("fashion-mnist", search)
    assert "\n" not in str(error.value)


def test_the_ranked_table_orders_each_group_by_the_metric():
    def outcome(arm, accuracy, settings="", ratio=0.5, method="beo"):
        return TrialOutcome(arm, None if arm != "mixed" else 8 / 255, None if arm != "mixed" else "linf", ratio,
                            "small_cnn", "none", method if arm == "mixed" else None, settings, "", "DONE",
                            accuracy, accuracy, "")

    outcomes = [outcome("clean-only", 0.80), outcome("mixed", 0.70, "s=1"), outcome("mixed", 0.60, "s=2"),
                outcome("mixed", 0.75, "s=3"), outcome("mixed", 0.50, "s=1", ratio=1.0),
                outcome("mixed", 0.55, "s=2", ratio=1.0), outcome("mixed", None, "s=3", ratio=1.0)]
    rows = [line.split(" | ")[3:7] for line in ranked_table(outcomes, "final_test_accuracy", "min",
                                                            "protect").splitlines() if line.startswith("| 0.5 |")
            or line.startswith("| 1 |")]
    assert rows == [["1", "beo eps=8/255 s=2", "—", "60.00"], ["2", "beo eps=8/255 s=1", "—", "70.00"],
                    ["3", "beo eps=8/255 s=3", "—", "75.00"],
                    ["1", "beo eps=8/255 s=1", "—", "50.00"], ["2", "beo eps=8/255 s=2", "—", "55.00"]]
    assert ranked_table(outcomes, "final_test_accuracy", "min", "protect").splitlines()[4].endswith("| 80.00 |")
    highest = ranked_table(outcomes, "best_test_accuracy", "max", "protect")
    assert [line.split(" | ")[4] for line in highest.splitlines() if line.startswith("| 0.5 |")] == [
        "beo eps=8/255 s=3", "beo eps=8/255 s=1", "beo eps=8/255 s=2"]


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


def test_small_sweep_on_fashion_mnist(fashion_mnist_root, tmp_path, mlflow_global_store):
    """BEO over a rounds axis (grid.protect beo.rounds [1, 2]: one protect job of 2 rounds publishes both
    releases, the 1-round one inside it) and random noise on the grid's ε with two seeds drawn by a search
    (search.protect random.seed), beside OPS at its own L0 budget (model-free, so cheap): a victim per
    release, the clean references, the report with the mixed trials ranked, the MLflow runs."""
    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    config = load_sweep_config("fashion-mnist", {**TINY_METHODS, "budgets.ops": {"norm": "l0", "eps": 1},
                                                 "grid.protect": {"beo.rounds": [1, 2]},
                                                 "search.protect": {"random.seed": {"randint": [0, 1000]}},
                                                 "search.samples": 2, "search.mode": "min"})
    seeds = [point["random.seed"] for point in config.search.points("protect")]
    assert len(set(seeds)) == 2
    out = tmp_path / "sweep"
    summary = sweep(config, str(out), source=str(fashion_mnist_root), tracking_uri=store, progress=False)

    assert [o.status for o in summary.outcomes] == ["DONE"] * 7, summary.markdown
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["arm"], r["method"], r["settings"], r["norm"], r["ratio"]) for r in rows] == [
        ("clean-all", "", "", "", "0.0"), ("mixed", "beo", "beo.rounds=1", "linf", "0.5"),
        ("mixed", "beo", "beo.rounds=2", "linf", "0.5"),
        *(("mixed", "random", f"random.seed={seed}", "linf", "0.5") for seed in seeds),
        ("mixed", "ops", "", "l0", "0.5"), ("clean-only", "", "", "", "0.5")]
    assert "| mixed | ops | l0=1 | — | 0.5 |" in summary.markdown
    # the ranking: the five mixed trials, lowest final accuracy first, beside the clean-only reference
    mixed = sorted((float(r["final_test_accuracy"]), r["method"], r["settings"]) for r in rows if r["arm"] == "mixed")
    clean_only = 100 * float(rows[-1]["final_test_accuracy"])
    ranked = [line for line in summary.markdown.splitlines() if line.startswith("| 0.5 | small_cnn | none |")]
    assert [line.split(" | ")[3] for line in ranked] == ["1", "2", "3", "4", "5"]
    assert [float(line.split(" | ")[6]) for line in ranked] == [round(100 * a, 2) for a, _, _ in mixed]
    assert all(line.endswith(f"| {clean_only:.2f} |") for line in ranked)
    assert summary.markdown == (out / "results.md").read_text()
    with Image.open(out / "accuracy.png") as image:
        assert image.size[0] > 200 and image.convert("L").getextrema()[0] < 128

    manifests = {r: read_manifest(r) for r in (tmp_path / "releases").iterdir()}
    assert sorted(m["method"] for m in manifests.values()) == ["beo", "ops", "random", "random"]  # one BEO job
    assert sorted(m["config"]["random"]["seed"] for m in manifests.values() if m["method"] == "random") == sorted(seeds)
    releases = {m["method"]: r for r, m in manifests.items() if m["method"] != "random" or
                m["config"]["random"]["seed"] == seeds[0]}
    for method, release in releases.items():
        manifest = verify_release(release)
        assert manifest["count"] == 200 and manifest["config"]["data"]["subset"] == 200
        assert manifest["config"]["budget"] == ({"eps": 1.0, "norm": "l0"} if method == "ops" else
                                                {"eps": pytest.approx(8 / 255), "norm": "linf"})
    beo = releases["beo"]
    assert read_manifest(beo)["config"]["beo"]["rounds"] == 2
    assert read_manifest(beo)["snapshots"] == {"1": "rounds/round-00001"}
    assert verify_release(beo / "rounds" / "round-00001")["rounds"] == 1
    labels = {"beo eps=8/255 beo.rounds=1": beo / "rounds" / "round-00001", "beo eps=8/255 beo.rounds=2": beo,
              **{f"random eps=8/255 random.seed={seed}": next(r for r, m in manifests.items() if m["method"] ==
                                                             "random" and m["config"]["random"]["seed"] == seed)
                 for seed in seeds},
              "ops l0=1": releases["ops"]}
    for label, release in labels.items():
        quality = read_manifest(release)["summary"]
        row = f"| {label} | {quality['psnr_db']:.2f} | {quality['ssim']:.4f} | {release} |"
        assert row in summary.markdown and row in (out / "results.md").read_text()
    before = (beo / "manifest.json").stat().st_mtime_ns
    again = ensure_releases(str(fashion_mnist_root), config, str(tmp_path / "releases"), None, store, False)
    assert again == {label: str(release) for label, release in labels.items()}
    assert (beo / "manifest.json").stat().st_mtime_ns == before

    client = mlflow.MlflowClient(store)
    parent = client.get_run(summary.mlflow_run)
    assert parent.data.params["grid.ratio"] == "[0.0, 0.5]"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"results.csv", "results.md", "accuracy.png"}
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_key = {c.data.tags["ue.trial"]: c for c in children}
    assert len(children) == 7 and set(by_key) == {Trial(**{k: o.__dict__[k] for k in Trial.__dataclass_fields__}).key
                                                  for o in summary.outcomes}
    assert "mixed ops l0=1 ratio=0.5 small_cnn none" in by_key
    for outcome, row in zip(summary.outcomes, rows):
        child = by_key[Trial(outcome.arm, outcome.eps, outcome.ratio, outcome.victim, outcome.defence,
                             outcome.method, outcome.settings, outcome.evaluation, outcome.norm).key]
        assert child.info.status == "FINISHED" and child.data.params["arm"] == outcome.arm
        assert child.data.metrics["final_test_accuracy"] == pytest.approx(float(row["final_test_accuracy"]))
        assert 0 <= outcome.final_test_accuracy <= 1

    # lineage: the parent logs every release it evaluated, a mixed trial its own, a clean trial the source only
    digests = {label: read_manifest(release)["digest"] for label, release in labels.items()}
    names = {"beo eps=8/255 beo.rounds=1": "beo eps=8/255 round 1", "beo eps=8/255 beo.rounds=2": "beo eps=8/255",
             **{f"random eps=8/255 random.seed={seed}": "random eps=8/255" for seed in seeds}}  # the manifests' names
    assert {(i.dataset.name, i.dataset.digest) for i in parent.inputs.dataset_inputs if context(i) == "evaluated"} == {
        (f"fashion-mnist {names.get(label, label)}", digest) for label, digest in digests.items()}
    ops = by_key["mixed ops l0=1 ratio=0.5 small_cnn none"]
    assert {context(i): i.dataset.digest for i in ops.inputs.dataset_inputs}["evaluated"] == digests["ops l0=1"]
    assert ops.data.tags.items() >= {"method": "ops", "eps": "1", "norm": "l0", "ratio": "0.5"}.items()
    clean_all = by_key["clean-all eps=— ratio=0 small_cnn none"]
    assert [context(i) for i in clean_all.inputs.dataset_inputs] == ["source"]
    mlflow_global_store(store)  # MlflowClient.load_table searches the global store, not the client's
    experiment = client.get_run(parent.info.run_id).info.experiment_id
    table = client.load_table(experiment, "results.json", run_ids=[parent.info.run_id])
    assert table["arm"].tolist() == [r["arm"] for r in rows]


def context(dataset_input) -> str:
    """The context an MLflow dataset input was logged with."""
    return next(t.value for t in dataset_input.tags if t.key == "mlflow.data.context")
