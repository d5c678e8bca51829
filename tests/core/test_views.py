"""Augmentation-aware BEO (ue_core.views, ``beo.augment``): views drawn per index, applied exactly, and
differentiated exactly."""

import numpy as np
import pytest
import torch

from ue_core.data import read_dataset
from ue_core.data.dataset import balanced_subset
from ue_core.errors import InvalidInputError
from ue_core.methods.beo import BEO, BEOConfig, EstimatorConfig, SurrogateConfig, step_views
from ue_core.models import build_model
from ue_core.pga import Budget, PGAConfig
from ue_core.training import compute_features, feature_vjp
from ue_core.views import AugmentConfig, View

BUDGET = Budget(eps=8 / 255)


def reference_view(image: np.ndarray, offset: tuple[int, int], flip: bool, padding: int) -> np.ndarray:
    """One (C, H, W) image zero-padded, cropped at ``offset`` and flipped, in plain numpy."""
    height, width = image.shape[1:]
    padded = np.pad(image, ((0, 0), (padding, padding), (padding, padding)))
    crop = padded[:, offset[0]:offset[0] + height, offset[1]:offset[1] + width]
    return crop[:, :, ::-1] if flip else crop


def test_a_view_depends_on_the_key_and_the_index_alone():
    config = AugmentConfig(views=1, padding=3)
    index = np.array([5, 17, 2, 40, 9, 11])
    whole = View.draw(index, 7, config)
    part = View.draw(index[[4, 1]], 7, config)  # another block of rows, in another order
    assert torch.equal(part.offsets, whole.offsets[[4, 1]]) and torch.equal(part.flips, whole.flips[[4, 1]])
    other = View.draw(index, 8, config)
    assert not torch.equal(other.offsets, whole.offsets)
    assert int(whole.offsets.min()) >= 0 and int(whole.offsets.max()) <= 6
    many = View.draw(np.arange(2000), 7, config)
    assert 0.4 < float(many.flips.float().mean()) < 0.6 and len(torch.unique(many.offsets, dim=0)) == 49
    assert not View.draw(np.arange(100), 7, AugmentConfig(views=1, flip=False)).flips.any()


def test_a_view_crops_and_flips_each_image_as_numpy_does():
    images = torch.rand(8, 3, 10, 12)
    view = View.draw(np.arange(8) * 3, 11, AugmentConfig(views=1, padding=2))
    out = view(images, torch.arange(8)).numpy()
    for row in range(8):
        expected = reference_view(images[row].numpy(), tuple(view.offsets[row].tolist()), bool(view.flips[row]), 2)
        np.testing.assert_array_equal(out[row], expected)


def test_the_pixel_gradient_through_a_view_matches_autograd():
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, 28, width=8, seed=0).double().eval()
    images = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    view = View.draw(np.arange(6), 3, AugmentConfig(views=1, padding=4))
    g = torch.randn(6, model.feature_dim, dtype=torch.float64)
    ours = feature_vjp(model, images, g, batch_size=4, transform=view)
    inputs = images.clone().requires_grad_(True)
    (model.features(view(inputs, torch.arange(6))) * g).sum().backward()
    torch.testing.assert_close(ours, inputs.grad)
    features = compute_features(model, images, batch_size=4, transform=view)
    torch.testing.assert_close(features, model.features(view(images, torch.arange(6))).detach())


def test_augment_config_is_checked():
    with pytest.raises(InvalidInputError, match="views must be in"):
        AugmentConfig(views=-1)
    with pytest.raises(InvalidInputError, match="views must be in"):
        AugmentConfig(views=65)


@pytest.fixture(scope="module")
def small_set(fashion_mnist_root):
    return balanced_subset(read_dataset(str(fashion_mnist_root), split="train"), 200, seed=0)


def config_with(augment: AugmentConfig) -> BEOConfig:
    return BEOConfig(rounds=2, pga=PGAConfig(update="sign", step_size=2 / 255),
                     surrogate=SurrogateConfig(model="small_cnn", mode="retrain", epochs=1, lr=0.05, batch_size=50),
                     estimator=EstimatorConfig(sigma=1.0), augment=augment)


def test_one_identity_view_is_the_method_without_augmentation(small_set):
    """A view with no padding and no flip is the identity: the run equals the run without ``augment``."""
    plain = BEO(BUDGET, config_with(AugmentConfig())).protect(small_set)
    identity = BEO(BUDGET, config_with(AugmentConfig(views=1, padding=0, flip=False))).protect(small_set)
    np.testing.assert_array_equal(identity.release.images, plain.release.images)
    assert [h["bayes_error"] for h in identity.history] == [h["bayes_error"] for h in plain.history]


def test_views_change_the_steps_and_keep_the_budget(small_set):
    config = config_with(AugmentConfig(views=2, padding=2))
    augmented = BEO(BUDGET, config).protect(small_set)
    plain = BEO(BUDGET, config_with(AugmentConfig())).protect(small_set)
    assert np.mean(augmented.release.images != plain.release.images) > 0.05
    assert np.abs(augmented.release.images.astype(int) - small_set.images.astype(int)).max() == 4
    assert len(step_views(config, small_set.index, 0, 0)) == 2


@pytest.mark.parametrize("views", [0, 1, 3])
def test_a_step_has_one_feature_pass_per_view_or_one_without_views(views):
    """``AugmentConfig.passes`` (what the Ray engine loops over) is the length of ``step_views``."""
    config = BEOConfig(augment=AugmentConfig(views=views))
    assert len(step_views(config, np.arange(5), 0, 0)) == config.augment.passes == max(1, views)
