"""ue_core.compute: channels-last passes equal the default up to float32 rounding; bf16 autocast stays close
to float32 and returns float32; every pass that takes a Compute honours it (here on the CPU, where both
options run too)."""

import copy

import pytest
import torch

from ue_core.compute import Compute
from ue_core.data.dataset import ImageDataset
from ue_core.methods.beo import BEO, BEOConfig, EstimatorConfig, SurrogateConfig
from ue_core.models import build_model
from ue_core.pga import Budget, PGAConfig
from ue_core.training import compute_features, evaluate, feature_vjp, fit, recipe

CHANNELS_LAST = Compute(channels_last=True)
BF16 = Compute(bf16=True)


def model_and_data(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(96, 1, 28, 28, generator=generator)
    y = torch.arange(96) % 4
    model = build_model("small_cnn", 4, in_channels=1, image_size=28, seed=seed)
    fit(model, x, y, recipe("plain", epochs=1, lr=0.05, batch_size=32), seed=seed)
    grad = torch.randn(96, model.feature_dim, generator=generator)
    return model, x, y, grad


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def test_move_keeps_labels_and_lays_images_out_channels_last():
    x, y = torch.rand(4, 3, 8, 8), torch.arange(4)
    moved = CHANNELS_LAST.move(x, "cpu")
    assert moved.is_contiguous(memory_format=torch.channels_last) and torch.equal(moved, x)
    assert torch.equal(CHANNELS_LAST.move(y, "cpu"), y)
    assert Compute().move(x, "cpu").is_contiguous()


def test_channels_last_features_and_vjp_equal_the_default():
    model, x, _, grad = model_and_data()
    features = compute_features(model, x, batch_size=40)
    pixels = feature_vjp(model, x, grad, batch_size=40)
    converted = CHANNELS_LAST.prepare(copy.deepcopy(model))
    assert next(p for p in converted.parameters() if p.ndim == 4).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(compute_features(converted, x, batch_size=40, compute=CHANNELS_LAST), features,
                               rtol=1e-5, atol=1e-5)
    ours = feature_vjp(converted, x, grad, batch_size=40, compute=CHANNELS_LAST)
    # max pooling may break ties (windows of equal ReLU outputs) at another position in this layout: the
    # gradient then moves within a window, at a few pixels; everywhere else it is the default's
    close = torch.isclose(ours, pixels, rtol=1e-4, atol=1e-6)
    assert float(close.float().mean()) > 0.99 and cosine(ours, pixels) > 0.99


def test_bf16_features_and_vjp_are_float32_and_close_to_float32():
    model, x, y, grad = model_and_data()
    features, pixels = compute_features(model, x), feature_vjp(model, x, grad)
    low, low_pixels = compute_features(model, x, compute=BF16), feature_vjp(model, x, grad, compute=BF16)
    assert low.dtype == torch.float32 and low_pixels.dtype == torch.float32
    assert not torch.equal(low, features)  # bf16 did run: 8 mantissa bits change the values
    assert float((low - features).norm() / features.norm()) < 0.03
    assert cosine(low_pixels, pixels) > 0.95
    assert abs(evaluate(model, x, y, compute=BF16) - evaluate(model, x, y)) <= 0.05


def test_fit_under_each_option_trains_like_the_default():
    _, x, y, _ = model_and_data()
    histories = {}
    for name, compute in (("default", Compute()), ("channels_last", CHANNELS_LAST), ("bf16", BF16)):
        model = build_model("small_cnn", 4, in_channels=1, image_size=28, seed=1)
        histories[name] = fit(model, x, y, recipe("plain", epochs=2, lr=0.05, batch_size=32), seed=1,
                              compute=compute)
    losses = {name: [record["loss"] for record in history] for name, history in histories.items()}
    assert losses["channels_last"] == pytest.approx(losses["default"], rel=1e-3)
    assert losses["bf16"] == pytest.approx(losses["default"], rel=0.05)
    assert losses["bf16"] != losses["default"]


def test_beo_config_reaches_every_pass():
    """BEO under bf16 gives a run close to, not equal to, the float32 run: the surrogate's training, the
    features and the pixel gradients all went through the option (the key is ``beo.compute``)."""
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(60, 28, 28, 1, generator=generator) * 255).to(torch.uint8).numpy()
    dataset = ImageDataset(images, (torch.arange(60) % 3).numpy(), num_classes=3)
    results = {}
    for name, compute in (("default", Compute()), ("bf16", BF16)):
        config = BEOConfig(rounds=1, pga=PGAConfig(update="sign", step_size=2 / 255), batch_size=32,
                           surrogate=SurrogateConfig(model="small_cnn", epochs=1, batch_size=32),
                           estimator=EstimatorConfig(sigma=1.0), compute=compute)
        results[name] = BEO(Budget(8 / 255), config).perturb(dataset)
    before = [results[name].history[0]["bayes_error"] for name in results]
    assert before[0] == pytest.approx(before[1], abs=0.05) and before[0] != before[1]
    agree = (results["bf16"].delta.sign() == results["default"].delta.sign()).float().mean()
    assert 0.6 < float(agree) < 1.0
