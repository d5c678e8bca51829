"""The mixed efficacy probe along a BEO run, against an independent computation of the same victim."""

import numpy as np
import pytest

from ue_core.data import read_dataset
from ue_core.data.dataset import balanced_subset
from ue_core.data.mixing import protected_mask
from ue_core.efficacy import ProbeConfig, clean_only_probe, mixed_probe
from ue_core.errors import InvalidInputError
from ue_core.methods.beo import BEO, BEOConfig, EstimatorConfig, SurrogateConfig
from ue_core.models import build_model
from ue_core.pga import Budget, PGAConfig
from ue_core.training import evaluate, fit, recipe

PROBE = ProbeConfig(every=2, ratio=0.5, width=16, epochs=2, seed=3)


@pytest.fixture(scope="module")
def data(fashion_mnist_root):
    train = balanced_subset(read_dataset(str(fashion_mnist_root), split="train"), 300, seed=0)
    test = balanced_subset(read_dataset(str(fashion_mnist_root), split="test"), 200, seed=0)
    return train, test


def test_probe_schedule_and_bad_settings():
    assert [k for k in range(1, 8) if ProbeConfig(every=3).due(k, 7)] == [3, 6, 7]
    assert not any(ProbeConfig().due(k, 7) for k in range(1, 8))  # off by default
    for bad in ({"every": -1}, {"ratio": 1.0}, {"model": "resnet18", "width": 64}, {"epochs": 0}):
        with pytest.raises(InvalidInputError, match="probe|recipe"):
            ProbeConfig(**bad)


def test_mixed_probe_is_the_victim_trained_on_the_mixture(data):
    train, test = data
    rng = np.random.default_rng(0)
    release = train.with_images(np.clip(train.images.astype(int) + rng.integers(-8, 9, train.images.shape), 0, 255)
                                .astype(np.uint8))
    # the same victim on a mixture built by hand from the protocol's draw
    protected = protected_mask(train.index, PROBE.ratio, PROBE.seed)
    mixed = train.with_images(np.where(protected[:, None, None, None], release.images, train.images))
    x, y = mixed.tensors()
    model = build_model("small_cnn", 10, in_channels=1, image_size=28, width=16, seed=3)
    fit(model, x, y, recipe("plain", epochs=2, lr=0.05), seed=3)
    assert mixed_probe(train, release, test, PROBE) == evaluate(model, *test.tensors())
    clean_only = clean_only_probe(train, test, PROBE)
    assert 0.15 < clean_only < 1.0  # above chance (0.1), on ~150 images and 2 epochs


def test_beo_records_the_probe_at_the_rounds_it_is_due(data):
    train, test = data
    config = BEOConfig(rounds=3, probe=PROBE, pga=PGAConfig(update="sign", step_size=4 / 255),
                       surrogate=SurrogateConfig(model="small_cnn", epochs=1, lr=0.05, batch_size=64),
                       estimator=EstimatorConfig(sigma=0.3))
    method = BEO(Budget(eps=16 / 255), config, test_set=test)
    result = method.protect(train)
    probed = [h["round"] for h in result.history if "probe_mixed_accuracy" in h]
    assert probed == [1, 2]  # after rounds 2 and 3 (the last)
    assert {h["probe_clean_only_accuracy"] for h in result.history if "probe_mixed_accuracy" in h} == {
        clean_only_probe(train, test, PROBE)}
    final = result.history[-1]["probe_mixed_accuracy"]
    assert final == mixed_probe(train, result.release, test, PROBE)  # the probe saw the release itself
