"""BEO end to end in one process, on a real Fashion-MNIST subset."""

import numpy as np
import pytest
import torch

from ue_core.checks import check_release
from ue_core.data import read_dataset
from ue_core.data.dataset import balanced_subset
from ue_core.errors import InvalidInputError
from ue_core.methods.beo import (
    BEO,
    BEOConfig,
    EstimatorConfig,
    SurrogateConfig,
    measure_bayes_error,
    release_summary_of_batches,
)
from ue_core.methods.random_noise import RandomNoise, RandomNoiseConfig
from ue_core.pga import Budget, PGAConfig

BUDGET = Budget(eps=16 / 255)


@pytest.fixture(scope="module")
def fashion_subset(fashion_mnist_root):
    return balanced_subset(read_dataset(str(fashion_mnist_root), split="train"), 500, seed=0)


def tiny_config(**overrides) -> BEOConfig:
    settings = dict(
        rounds=3,
        pga=PGAConfig(update="sign", step_size=4 / 255),
        surrogate=SurrogateConfig(model="small_cnn", mode="retrain", epochs=4, lr=0.05, batch_size=64),
        estimator=EstimatorConfig(kind="exact", sigma=0.3),
        seed=0,
    )
    settings.update(overrides)
    return BEOConfig(**settings)


@pytest.fixture(scope="module")
def beo_result(fashion_subset):
    return BEO(BUDGET, tiny_config()).protect(fashion_subset)


def test_release_passes_every_invariant(fashion_subset, beo_result):
    release = beo_result.release
    check_release(fashion_subset, release, BUDGET)
    assert release.images.dtype == np.uint8 and release.image_shape == (28, 28, 1)
    np.testing.assert_array_equal(release.index, fashion_subset.index)
    np.testing.assert_array_equal(release.labels, fashion_subset.labels)
    changed = np.abs(release.images.astype(int) - fashion_subset.images.astype(int))
    assert changed.max() == 12 and (changed > 0).mean() > 0.3  # three sign steps of 4/255 were taken


def test_bayes_error_rises_in_the_final_surrogate_space(beo_result):
    summary = beo_result.summary
    assert summary["bayes_error_release"] > summary["bayes_error_clean"] + 0.05, summary


def test_history_has_one_record_per_step(beo_result):
    history = beo_result.history
    assert [h["round"] for h in history] == [0, 1, 2]
    assert all(0 <= h["bayes_error"] <= 1 for h in history)
    assert all(h["delta_max_abs"] <= 16 / 255 + 1e-6 for h in history)
    assert history[-1]["delta_max_abs"] == pytest.approx(12 / 255, abs=1e-6)  # three sign steps of 4/255


def test_beo_beats_random_noise_in_a_fixed_feature_space(fashion_subset, beo_result):
    """β̂ in the final surrogate's space: random noise of the same budget barely moves it."""
    noise = RandomNoise(BUDGET, RandomNoiseConfig(seed=0)).protect(fashion_subset)
    images, labels = noise.release.tensors()
    noisy = measure_bayes_error(beo_result.surrogate, images, labels, 10, EstimatorConfig())
    assert beo_result.summary["bayes_error_release"] > noisy + 0.05
    assert abs(noisy - beo_result.summary["bayes_error_clean"]) < 0.05


def test_same_seed_same_release(fashion_subset):
    small = balanced_subset(fashion_subset, 100, seed=1)
    config = tiny_config(rounds=2, surrogate=SurrogateConfig(model="small_cnn", epochs=1, batch_size=50))
    first = BEO(BUDGET, config).protect(small).release.images
    second = BEO(BUDGET, config).protect(small).release.images
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("mode", ["finetune", "fixed"])
def test_surrogate_modes_train_as_documented(fashion_subset, mode):
    small = balanced_subset(fashion_subset, 100, seed=2)
    surrogate = SurrogateConfig(model="small_cnn", mode=mode, epochs=1, batch_size=50)
    config = tiny_config(rounds=2, surrogate=surrogate, pga=PGAConfig(update="adam", lr=2e-3))
    result = BEO(Budget(eps=8 / 255), config).protect(small)
    check_release(small, result.release, Budget(eps=8 / 255))
    assert len(result.history) == 2


@pytest.mark.parametrize("kind", ["batch", "reference"])
def test_cheap_estimators_run_the_same_loop(fashion_subset, kind):
    small = balanced_subset(fashion_subset, 120, seed=3)
    estimator = EstimatorConfig(kind=kind, batch_size=40, reference_size=50)
    config = tiny_config(rounds=1, estimator=estimator, surrogate=SurrogateConfig(model="small_cnn", epochs=1))
    result = BEO(BUDGET, config).protect(small)
    check_release(small, result.release, BUDGET)
    assert 0 < result.history[0]["bayes_error"] < 1


def test_bad_configs_are_rejected():
    with pytest.raises(InvalidInputError, match="surrogate mode"):
        SurrogateConfig(mode="sometimes")
    with pytest.raises(InvalidInputError, match="estimator"):
        EstimatorConfig(kind="magic")
    with pytest.raises(InvalidInputError, match="rounds"):
        BEOConfig(rounds=0)


def test_a_release_after_round_k_equals_the_release_of_the_run_stopped_at_k(fashion_subset, beo_result):
    longer = BEO(BUDGET, tiny_config(rounds=4, release_rounds=(1, 3))).protect(fashion_subset)
    assert sorted(longer.snapshots) == [1, 3]
    np.testing.assert_array_equal(longer.snapshots[3].images, beo_result.release.images)  # beo_result: 3 rounds
    one_round = BEO(BUDGET, tiny_config(rounds=1)).protect(fashion_subset)
    np.testing.assert_array_equal(longer.snapshots[1].images, one_round.release.images)
    check_release(fashion_subset, longer.snapshots[1], BUDGET)
    assert not np.array_equal(longer.release.images, beo_result.release.images)  # round 4 moved δ again


def test_release_rounds_must_fall_inside_the_run():
    with pytest.raises(InvalidInputError, match="release_rounds"):
        tiny_config(rounds=3, release_rounds=(3,))
    with pytest.raises(InvalidInputError, match="release_rounds"):
        tiny_config(rounds=3, release_rounds=(0,))


def test_clean_anchors_make_the_mixture_the_objective(fashion_subset):
    """With the clean copies as fixed partners the run still publishes a valid release, and its β̂ is that of
    the 2N-sample mixture: the protected images' own β̂ is not what it reports."""
    config = tiny_config(rounds=2, estimator=EstimatorConfig(anchors="clean", objective="target"))
    result = BEO(BUDGET, config).protect(fashion_subset)
    check_release(fashion_subset, result.release, BUDGET)
    assert all(0 < h["bayes_error"] < 1 for h in result.history)
    with pytest.raises(InvalidInputError, match="anchors: clean needs kind: exact"):
        EstimatorConfig(anchors="clean", kind="batch")


def test_a_robust_surrogate_is_the_adversarially_fitted_model(fashion_subset):
    """``surrogate.adversarial`` trains the surrogate with PGD adversarial training, exactly as ``fit`` does, and
    reaches it from a config file's nested dict (the path both engines take)."""
    from ue_core.config import from_dict, to_dict
    from ue_core.methods.beo import train_surrogate
    from ue_core.models import build_model
    from ue_core.training import PGDConfig, fit, recipe

    attack = PGDConfig(eps=8 / 255, step=4 / 255, steps=2)
    config = from_dict(SurrogateConfig, {"model": "small_cnn", "epochs": 1, "lr": 0.05, "batch_size": 64,
                                         "adversarial": {"eps": "8/255", "step": "4/255", "steps": 2}})
    assert config.adversarial == attack and from_dict(SurrogateConfig, to_dict(config)) == config
    assert SurrogateConfig().adversarial is None
    images, labels = fashion_subset.subset(np.arange(128)).tensors()
    robust = train_surrogate(None, images, labels, 10, config, seed=3)
    expected = build_model("small_cnn", 10, in_channels=1, image_size=28, seed=3)
    fit(expected, images, labels, recipe("plain", epochs=1, lr=0.05, batch_size=64), seed=3, adversarial=attack)
    standard = train_surrogate(None, images, labels, 10, SurrogateConfig(**{**to_dict(config), "adversarial": None}), 3)
    for name, weight in robust.state_dict().items():
        assert torch.equal(weight, expected.state_dict()[name]), name
    assert not all(torch.equal(w, standard.state_dict()[n]) for n, w in robust.state_dict().items())


def test_cpu_and_auto_devices_give_the_default_release_bit_for_bit(fashion_subset):
    """`device="cpu"` and (on this machine, which has no CUDA) `"auto"` are the default run, exactly."""
    small = balanced_subset(fashion_subset, 100, seed=1)
    config = tiny_config(rounds=1, surrogate=SurrogateConfig(model="small_cnn", epochs=1, lr=0.05, batch_size=50),
                         estimator=EstimatorConfig(kind="exact", bandwidth="nearest-neighbour"))
    default = BEO(BUDGET, config).protect(small)
    for device in ("cpu", "auto"):
        method = BEO(BUDGET, config, device)
        assert method.device == "cpu"
        result = method.protect(small)
        np.testing.assert_array_equal(result.release.images, default.release.images)
        assert result.summary == default.summary


def test_the_summary_of_batches_is_the_summary_of_the_whole_set(fashion_subset, beo_result):
    """Finishing a job a batch at a time (the Ray engine's publish) keeps only features: same β̂ as at once."""
    clean, release = fashion_subset, beo_result.release
    cuts = [(0, 1), (1, 130), (130, 500)]
    pairs = [(clean.subset(np.arange(*cut)), release.subset(np.arange(*cut))) for cut in cuts]
    batched = release_summary_of_batches(beo_result.surrogate, pairs, tiny_config())
    assert batched == pytest.approx({key: beo_result.summary[key] for key in batched}, abs=1e-6)
    assert set(batched) == {"bayes_error_clean", "bayes_error_release"}
