"""Training, evaluation, PGD and the feature VJP, on tiny synthetic images and small CNNs."""

import math

import pytest
import torch
import torch.nn.functional as F

from ue_core.errors import InvalidInputError
from ue_core.models import build_model
from ue_core.training import (
    RECIPES,
    PGDConfig,
    Recipe,
    augment_batch,
    compute_features,
    evaluate,
    feature_accuracy,
    feature_vjp,
    fit,
    make_optimizer,
    make_scheduler,
    pgd_attack,
    recalibrate_batch_norm,
    recipe,
    resolve_device,
    robust_accuracy,
    train_one_epoch,
)


def quadrant_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes on 1×28×28 images: class c lights up quadrant c (+0.4) over N(0.3, 0.1) pixel noise."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=generator)
    x = 0.3 + 0.1 * torch.randn(n, 1, 28, 28, generator=generator)
    for c in range(4):
        rows, columns = divmod(c, 2)
        x[y == c, :, 14 * rows : 14 * rows + 14, 14 * columns : 14 * columns + 14] += 0.4
    return x.clamp(0, 1), y


def robust_and_non_robust_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes with a robust feature that is 90% right and a non-robust one that is ~100% right.

    Robust: a 10×10 corner patch at 0.5 ± 0.3 whose sign agrees with the label 90% of the time.
    Non-robust (Tsipras et al.'s construction): every pixel's mean is shifted by ±4/255 under N(0, 0.1) noise;
    averaged over the image it separates the classes, but an 8/255 L∞ attack reverses it.
    """
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=generator)
    sign = (2 * y - 1).float()[:, None, None, None]
    x = 0.5 + (4 / 255) * sign + 0.1 * torch.randn(n, 1, 28, 28, generator=generator)
    patch_sign = torch.where(torch.rand(n, 1, 1, 1, generator=generator) < 0.1, -sign, sign)
    x[:, :, :10, :10] = 0.5 + 0.3 * patch_sign
    return x.clamp(0, 1), y


def tiny_cnn(num_classes: int, seed: int = 0, in_channels: int = 1, width: int = 8):
    return build_model("small_cnn", num_classes, in_channels=in_channels, width=width, seed=seed)


# --- recipes -------------------------------------------------------------------------------------------


def test_recipes_follow_the_method():
    standard, plain = RECIPES["standard"], RECIPES["plain"]
    assert standard.augment and not plain.augment
    for r in (standard, plain):
        assert (r.lr, r.momentum, r.weight_decay, r.batch_size, r.schedule) == (0.1, 0.9, 5e-4, 128, "cosine")
        assert r.crop_padding == 4
    assert recipe("plain", epochs=3, lr=0.01) == Recipe(epochs=3, lr=0.01, augment=False)


@pytest.mark.parametrize(
    "call, named_input",
    [
        (lambda: recipe("fancy"), "recipe name"),
        (lambda: recipe("standard", epoch=3), "epoch"),
        (lambda: recipe("standard", epochs=0), "epochs"),
        (lambda: recipe("standard", lr=0.0), "lr"),
        (lambda: recipe("standard", batch_size=0), "batch_size"),
        (lambda: recipe("standard", schedule="step"), "schedule"),
        (lambda: PGDConfig(eps=0.0), "eps"),
        (lambda: PGDConfig(step=-1.0), "step"),
        (lambda: PGDConfig(steps=0), "steps"),
    ],
)
def test_bad_configs_raise_a_one_line_error_naming_the_input(call, named_input):
    with pytest.raises(InvalidInputError) as error:
        call()
    assert named_input in str(error.value) and "\n" not in str(error.value)


def test_cosine_schedule_goes_from_lr_to_zero_per_step():
    model = tiny_cnn(2)
    training = recipe("plain", lr=0.2)
    optimizer = make_optimizer(model, training)
    scheduler = make_scheduler(optimizer, training, total_steps=10)
    learning_rates = []
    for _ in range(10):
        learning_rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.2 * 0.5 * (1 + math.cos(math.pi * step / 10)) for step in range(10)]
    assert learning_rates == pytest.approx(expected)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


# --- augmentation ----------------------------------------------------------------------------------------


def _crop_and_flip_candidates(image: torch.Tensor, padding: int) -> dict[tuple[int, int, bool], torch.Tensor]:
    """Every crop of the zero-padded image, with and without a horizontal flip, by loops."""
    channels, height, width = image.shape
    padded = torch.zeros(channels, height + 2 * padding, width + 2 * padding)
    padded[:, padding : padding + height, padding : padding + width] = image
    candidates = {}
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = padded[:, top : top + height, left : left + width]
            candidates[(top, left, False)] = crop
            candidates[(top, left, True)] = crop[:, :, list(range(width - 1, -1, -1))]
    return candidates


def test_augmentation_is_a_crop_of_the_padded_image_then_maybe_a_flip():
    x = torch.rand(64, 3, 8, 10) + 0.1  # distinct positive pixels: a crop matches at one offset only
    out = augment_batch(x, torch.Generator().manual_seed(0), padding=2)
    assert out.shape == x.shape and out.dtype == x.dtype
    found = []
    for image, augmented in zip(x, out):
        matches = [
            key for key, crop in _crop_and_flip_candidates(image, 2).items() if torch.equal(crop, augmented)
        ]
        assert len(matches) == 1
        found.append(matches[0])
    flips = sum(flip for _, _, flip in found)
    assert 16 <= flips <= 48
    assert {top for top, _, _ in found} == set(range(5)) and {left for _, left, _ in found} == set(range(5))


def test_augmentation_is_seeded_and_without_padding_only_flips():
    x = torch.rand(32, 1, 28, 28)
    first = augment_batch(x, torch.Generator().manual_seed(3), padding=0)
    second = augment_batch(x, torch.Generator().manual_seed(3), padding=0)
    assert torch.equal(first, second)
    flipped = torch.tensor([torch.equal(a, torch.flip(i, dims=[2])) for a, i in zip(first, x)])
    unchanged = torch.tensor([torch.equal(a, i) for a, i in zip(first, x)])
    assert (flipped ^ unchanged).all() and flipped.any() and unchanged.any()


def _batches_seen(training: Recipe, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """The image batches that reach the model in one epoch, recorded through the batch_transform hook."""
    seen = []

    def record(images, targets, generator):
        seen.append(images.clone())
        return images, targets

    model = tiny_cnn(4)
    optimizer = make_optimizer(model, training)
    train_one_epoch(
        model, x, y, optimizer, None, training, torch.Generator().manual_seed(0), batch_transform=record
    )
    return seen


def test_plain_recipe_feeds_every_image_untouched_once_and_standard_augments():
    x, y = quadrant_images(40, seed=0)
    plain_batches = _batches_seen(recipe("plain", batch_size=16), x, y)
    assert [len(b) for b in plain_batches] == [16, 16, 8]
    seen = torch.cat(plain_batches)
    positions = [next(i for i in range(len(x)) if torch.equal(image, x[i])) for image in seen]
    assert sorted(positions) == list(range(len(x))) and positions != list(range(len(x)))
    standard_seen = torch.cat(_batches_seen(recipe("standard", batch_size=16), x, y))
    assert sum(any(torch.equal(image, original) for original in x) for image in standard_seen) < len(x) // 2


# --- training and evaluation ---------------------------------------------------------------------------


@pytest.mark.parametrize("adversarial", [None, PGDConfig(steps=2, step=4 / 255)])
def test_fit_is_bit_reproducible_for_a_seed(adversarial):
    x, y = quadrant_images(96, seed=1)
    training = recipe("standard", epochs=2, batch_size=32)
    runs = []
    for seed in (5, 5, 6):
        model = tiny_cnn(4, seed=0)
        history = fit(model, x, y, training, seed=seed, adversarial=adversarial)
        runs.append((model.state_dict(), history))
    (first, history), (second, history_again), (other, _) = runs
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert [(h["loss"], h["accuracy"]) for h in history] == [
        (h["loss"], h["accuracy"]) for h in history_again
    ]
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_fit_learns_a_separable_problem_and_reports_each_epoch():
    x, y = quadrant_images(256, seed=2)
    x_test, y_test = quadrant_images(256, seed=3)
    model = tiny_cnn(4)
    assert evaluate(model, x_test, y_test) < 0.6
    history = fit(
        model, x, y, recipe("plain", epochs=5, batch_size=32, lr=0.05), seed=0, eval_data=(x_test, y_test)
    )
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert set(history[0]) == {"epoch", "loss", "accuracy", "lr", "eval_accuracy", "seconds"}
    assert history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert history[-1]["loss"] < history[0]["loss"]
    accuracy = evaluate(model, x_test, y_test, batch_size=100)
    assert accuracy == history[-1]["eval_accuracy"] and accuracy >= 0.95


def test_evaluate_counts_argmax_hits_in_batches():
    model = tiny_cnn(3, in_channels=3).eval()
    x = torch.rand(50, 3, 28, 28)
    with torch.no_grad():
        predictions = model(x).argmax(dim=1)
    y = predictions.clone()
    y[:20] = (y[:20] + 1) % 3
    model.train()
    assert evaluate(model, x, y, batch_size=7) == pytest.approx(30 / 50)
    assert model.training


def test_feature_accuracy_equals_evaluate_on_the_same_images():
    model = tiny_cnn(3, in_channels=3)
    x = torch.rand(50, 3, 28, 28)
    with torch.no_grad():
        y = model.eval()(x).argmax(dim=1)
    y[:15] = (y[:15] + 1) % 3
    features = compute_features(model, x, batch_size=7)
    assert feature_accuracy(model, features, y) == evaluate(model, x, y, batch_size=7) == pytest.approx(35 / 50)
    with pytest.raises(InvalidInputError, match="features must be"):
        feature_accuracy(model, features[:, :-1], y)


@pytest.mark.parametrize(
    "x, y, named_input",
    [
        (torch.rand(4, 28, 28), torch.zeros(4, dtype=torch.int64), "x"),
        (torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), "x"),
        (torch.rand(4, 1, 28, 28), torch.zeros(3, dtype=torch.int64), "y"),
        (torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.int32), "y"),
        (torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3]), "y"),
        (torch.rand(4, 1, 28, 28), torch.tensor([0, -1, 1, 0]), "y"),
    ],
)
def test_bad_training_data_raises_a_one_line_error_naming_the_input(x, y, named_input):
    model = tiny_cnn(3)
    for call in (lambda: fit(model, x, y, recipe("plain", epochs=1), seed=0), lambda: evaluate(model, x, y)):
        with pytest.raises(InvalidInputError) as error:
            call()
        assert str(error.value).startswith(f"{named_input}:") and "\n" not in str(error.value)


# --- PGD and adversarial training -------------------------------------------------------------------------


def test_pgd_stays_in_the_ball_and_the_image_range_and_raises_the_loss():
    x, y = robust_and_non_robust_images(256, seed=4)
    model = tiny_cnn(2)
    fit(model, x, y, recipe("plain", epochs=5, batch_size=32, lr=0.05), seed=0)
    x, y = x[:128], y[:128]
    config = PGDConfig()
    x_adv = pgd_attack(model, x, y, config, torch.Generator().manual_seed(0))
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= config.eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert model.training
    model.zero_grad(set_to_none=True)
    pgd_attack(model, x[:4], y[:4], config)
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        clean_loss = F.cross_entropy(model(x), y)
        adversarial_loss = F.cross_entropy(model(x_adv), y)
    assert adversarial_loss > clean_loss + 0.5


def test_pgd_without_random_start_is_deterministic():
    x, y = quadrant_images(8, seed=5)
    model = tiny_cnn(4)
    config = PGDConfig(random_start=False, steps=3)
    assert torch.equal(pgd_attack(model, x, y, config), pgd_attack(model, x, y, config))


def test_adversarial_training_resists_pgd_where_standard_training_does_not():
    x, y = robust_and_non_robust_images(256, seed=0)
    x_test, y_test = robust_and_non_robust_images(128, seed=1)
    training = recipe("plain", epochs=8, batch_size=32, lr=0.05)
    attack = PGDConfig()
    robust = {}
    for name, adversarial in (("standard", None), ("adversarial", attack)):
        model = tiny_cnn(2, width=16)
        fit(model, x, y, training, seed=0, adversarial=adversarial)
        assert evaluate(model, x_test, y_test) >= 0.8
        robust[name] = robust_accuracy(model, x_test, y_test, attack, torch.Generator().manual_seed(0))
    assert robust["standard"] <= 0.3
    assert robust["adversarial"] >= 0.7
    assert robust["adversarial"] - robust["standard"] >= 0.4


# --- features and their vector-Jacobian product -----------------------------------------------------------


def test_compute_features_matches_the_eval_mode_features_in_batches():
    model = tiny_cnn(5, in_channels=3)
    x = torch.rand(11, 3, 32, 32)
    features = compute_features(model, x, batch_size=4)
    model.eval()
    with torch.no_grad():
        expected = model.features(x)
    assert features.shape == (11, model.feature_dim)
    torch.testing.assert_close(features, expected)
    model.train()
    compute_features(model, x)
    assert model.training


def test_feature_vjp_equals_autograd_of_the_weighted_features():
    model = tiny_cnn(3, in_channels=3)
    x_train, y_train = torch.rand(32, 3, 28, 28), torch.randint(0, 3, (32,))
    fit(model, x_train, y_train, recipe("plain", epochs=1, batch_size=16), seed=0)  # batch-norm statistics
    model.zero_grad(set_to_none=True)
    x = torch.rand(10, 3, 28, 28)
    g = torch.randn(10, model.feature_dim)
    pixel_gradient = feature_vjp(model, x, g, batch_size=3)
    assert pixel_gradient.shape == x.shape
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()
    inputs = x.clone().requires_grad_(True)
    (model.features(inputs) * g).sum().backward()
    torch.testing.assert_close(pixel_gradient, inputs.grad)


def test_feature_vjp_matches_finite_differences_in_float64():
    model = tiny_cnn(2, width=4).double().eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 28, 28, generator=generator, dtype=torch.float64)
    g = torch.randn(3, model.feature_dim, generator=generator, dtype=torch.float64)
    direction = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    pixel_gradient = feature_vjp(model, x, g)
    h = 1e-6
    with torch.no_grad():
        plus = (model.features(x + h * direction) * g).sum(dim=1)
        minus = (model.features(x - h * direction) * g).sum(dim=1)
    finite_difference = (plus - minus) / (2 * h)
    directional = (pixel_gradient * direction).flatten(1).sum(dim=1)
    torch.testing.assert_close(directional, finite_difference, rtol=1e-5, atol=1e-8)


def test_feature_vjp_rejects_a_gradient_of_the_wrong_shape():
    model = tiny_cnn(2)
    with pytest.raises(InvalidInputError, match="^grad_features:"):
        feature_vjp(model, torch.rand(4, 1, 28, 28), torch.randn(4, model.feature_dim + 1))


def test_recalibrated_batch_norm_holds_the_data_average():
    x, y = quadrant_images(64, seed=5)
    model = tiny_cnn(4)
    recalibrate_batch_norm(model, x, y, batch_size=16)
    first_conv, first_norm = model.body[0], model.body[1]
    with torch.no_grad():
        activations = first_conv(x)  # (N, C, H, W) before the first batch norm
    batch_variances = torch.stack([activations[i : i + 16].var(dim=(0, 2, 3)) for i in range(0, 64, 16)])
    torch.testing.assert_close(first_norm.running_mean, activations.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first_norm.running_var, batch_variances.mean(0), rtol=1e-4, atol=1e-6)
    assert first_norm.momentum == 0.1 and model.training


def test_short_fit_has_matching_eval_and_train_mode_accuracy():
    """With ~10 steps the running statistics would lag; fit recalibrates them at the end."""
    x, y = quadrant_images(320, seed=6)
    model = tiny_cnn(4)
    history = fit(model, x, y, recipe("plain", epochs=1, lr=0.05, batch_size=32), seed=0)
    model.train()
    with torch.no_grad():
        train_mode = (model(x).argmax(1) == y).float().mean().item()
    assert history[-1]["accuracy"] > 0.5
    assert evaluate(model, x, y) == pytest.approx(train_mode, abs=0.05)


def test_device_names_resolve_and_auto_is_the_cpu_without_cuda():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # a name only: nothing touches CUDA
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InvalidInputError, match="unknown device 'gpu'"):
        resolve_device("gpu")
