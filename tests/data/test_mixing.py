"""The mixing protocol: the per-index draw, the four training sets, the saved index set."""

import math

import numpy as np
import pytest

from ue_core.data import ImageDataset, build_training_set, load_index_set, protected_mask, save_index_set
from ue_core.errors import InvalidInputError


@pytest.mark.parametrize("ratio", [-0.01, 1.01, math.nan])
def test_ratio_outside_unit_interval_is_rejected(ratio, dataset_factory):
    with pytest.raises(InvalidInputError, match="ratio"):
        protected_mask(np.arange(5), ratio, seed=0)
    with pytest.raises(InvalidInputError, match="ratio"):
        build_training_set(dataset_factory(), dataset_factory(seed=1), "mixed", ratio, seed=0)


def test_ratio_bounds_are_exact():
    index = np.arange(10_000)
    assert not protected_mask(index, 0.0, seed=3).any()
    assert protected_mask(index, 1.0, seed=3).all()


def test_same_seed_same_draw_other_seed_other_draw():
    index = np.arange(5_000)
    np.testing.assert_array_equal(protected_mask(index, 0.3, 7), protected_mask(index, 0.3, 7))
    assert (protected_mask(index, 0.3, 7) != protected_mask(index, 0.3, 8)).sum() > 1_000


def test_draw_does_not_depend_on_row_order_or_on_other_indices():
    index = np.random.default_rng(0).choice(10**9, size=3_000, replace=False)
    mask = protected_mask(index, 0.4, seed=11)
    permutation = np.random.default_rng(1).permutation(len(index))
    np.testing.assert_array_equal(protected_mask(index[permutation], 0.4, seed=11), mask[permutation])
    np.testing.assert_array_equal(protected_mask(index[:100], 0.4, seed=11), mask[:100])
    assert [bool(protected_mask(np.array([i]), 0.4, seed=11)[0]) for i in index[:50]] == mask[:50].tolist()


@pytest.mark.parametrize("ratio", [0.05, 0.3, 0.5, 0.9])
def test_empirical_fraction_is_near_ratio(ratio):
    n = 200_000
    mask = protected_mask(np.arange(n), ratio, seed=2024)
    tolerance = 4 * math.sqrt(ratio * (1 - ratio) / n)  # four standard deviations: a biased draw fails this
    assert abs(mask.mean() - ratio) < tolerance
    for part in (mask[::2], mask[1::2], mask[: n // 2], mask[n // 2 :]):  # no drift with parity or position
        assert abs(part.mean() - ratio) < 2 * tolerance
    other_seed = protected_mask(np.arange(n), ratio, seed=2025)
    assert abs((mask & other_seed).mean() - ratio**2) < tolerance  # seeds give independent draws


def _pair(n=40, seed=0):
    """A clean set and a 'protected' one whose every pixel differs, given in another row order."""
    rng = np.random.default_rng(seed)
    index = rng.choice(1_000, size=n, replace=False)
    labels = rng.integers(0, 5, size=n)
    clean_images = rng.integers(0, 128, size=(n, 4, 4, 3), dtype=np.uint8)
    clean = ImageDataset(images=clean_images, labels=labels, index=index, num_classes=5)
    order = rng.permutation(n)
    protected = ImageDataset(
        images=clean_images[order] + 128, labels=labels[order], index=index[order], num_classes=5
    )
    return clean, protected


@pytest.mark.parametrize("mode", ["clean-all", "clean-only", "mixed", "poison-only"])
def test_modes_match_an_independent_per_index_computation(mode):
    clean, protected = _pair()
    ratio, seed = 0.35, 5
    clean_by_index = {int(i): (img, lab) for i, img, lab in zip(clean.index, clean.images, clean.labels)}
    protected_by_index = {int(i): img for i, img in zip(protected.index, protected.images)}
    drawn = {i for i in clean_by_index if protected_mask(np.array([i]), ratio, seed)[0]}
    assert 0 < len(drawn) < len(clean)
    expected = {
        "clean-all": {i: clean_by_index[i][0] for i in clean_by_index},
        "clean-only": {i: clean_by_index[i][0] for i in clean_by_index if i not in drawn},
        "mixed": {i: protected_by_index[i] if i in drawn else clean_by_index[i][0] for i in clean_by_index},
        "poison-only": dict(protected_by_index),
    }[mode]
    expected_protected = {"clean-all": set(), "poison-only": set(clean_by_index)}.get(mode, drawn)

    result, protected_indices = build_training_set(clean, protected, mode, ratio, seed)

    assert sorted(result.index.tolist()) == sorted(expected)
    for i, image, label in zip(result.index, result.images, result.labels):
        np.testing.assert_array_equal(image, expected[int(i)])
        assert label == clean_by_index[int(i)][1]
    assert protected_indices.tolist() == sorted(expected_protected)


def test_shuffled_clean_set_gives_the_same_protected_set():
    clean, protected = _pair()
    _, reference = build_training_set(clean, protected, "mixed", 0.5, 1)
    shuffled = clean.subset(np.random.default_rng(3).permutation(len(clean)))
    result, again = build_training_set(shuffled, protected, "mixed", 0.5, 1)
    np.testing.assert_array_equal(again, reference)
    np.testing.assert_array_equal(result.index, shuffled.index)  # rows keep the clean set's order


def test_mismatched_indices_or_labels_are_rejected_naming_them():
    clean, protected = _pair()
    other_index = protected.index.copy()
    other_index[np.argmax(other_index)] = 5_000
    renamed = ImageDataset(images=protected.images, labels=protected.labels, index=other_index, num_classes=5)
    with pytest.raises(InvalidInputError, match=r"only in clean \[\d+\], only in protected \[5000\]"):
        build_training_set(clean, renamed, "mixed", 0.5, 0)
    relabelled_labels = protected.labels.copy()
    row = int(np.argmin(protected.index))
    relabelled_labels[row] = (relabelled_labels[row] + 1) % 5
    relabelled = ImageDataset(
        images=protected.images, labels=relabelled_labels, index=protected.index, num_classes=5
    )
    with pytest.raises(InvalidInputError, match=rf"1 indices .* \[{protected.index[row]}\]"):
        build_training_set(clean, relabelled, "mixed", 0.5, 0)
    with pytest.raises(InvalidInputError, match="mode"):
        build_training_set(clean, protected, "half", 0.5, 0)


def test_index_set_round_trip_and_no_silent_overwrite(tmp_path):
    clean, protected = _pair()
    _, drawn = build_training_set(clean, protected, "mixed", 0.25, 9)
    path = tmp_path / "runs" / "index_set.json"
    save_index_set(path, drawn[::-1], mode="mixed", ratio=0.25, seed=9)
    loaded = load_index_set(path)
    assert (loaded.mode, loaded.ratio, loaded.seed) == ("mixed", 0.25, 9)
    np.testing.assert_array_equal(loaded.protected_indices, drawn)  # stored sorted
    with pytest.raises(InvalidInputError, match="index_set.json"):
        save_index_set(path, drawn, mode="mixed", ratio=0.25, seed=9)
    save_index_set(path, drawn[:1], mode="mixed", ratio=0.25, seed=9, overwrite=True)
    assert len(load_index_set(path).protected_indices) == 1
