"""Training-time defences, each checked against an independent computation, and their use in ``fit``."""

import io
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import posterize, rgb_to_grayscale

from ue_core.config import from_dict, to_dict
from ue_core.data import read_dataset
from ue_core.defences import (
    DEFENCE_NAMES,
    DefenceConfig,
    adversarial_training,
    beta_sample,
    bit_depth_reduction,
    cutmix,
    cutout,
    draw_mixing,
    grayscale,
    jpeg,
    mixup,
    parse_defences,
    purification,
    to_uint8,
    train_transform,
    training_loss,
)
from ue_core.errors import InvalidInputError
from ue_core.models import build_model
from ue_core.training import PGDConfig, fit, recipe


def images(n=4, c=3, h=8, w=8, seed=0, low=0.0):
    """Uniform random images in [low, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return low + (1 - low) * torch.rand(n, c, h, w, generator=generator)


def smooth_images(n=6, c=3, size=32, seed=0):
    """Natural-looking (smooth) uint8-valued images: 8×8 noise upsampled bilinearly."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, c, 8, 8, generator=generator)
    x = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    return (x * 255).round() / 255


def pil_jpeg(image: Image.Image, quality: int) -> Image.Image:
    """One PIL image through PIL's JPEG encoder and decoder (ISS's JPEG compression)."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer)


def box_of(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right), half-open, if the bool (H, W) mask is exactly one non-empty rectangle."""
    rows = mask.any(dim=1).nonzero().flatten()
    columns = mask.any(dim=0).nonzero().flatten()
    if len(rows) == 0:
        return None
    top, bottom, left, right = (
        rows.min().item(),
        rows.max().item() + 1,
        columns.min().item(),
        columns.max().item() + 1,
    )
    rectangle = torch.zeros_like(mask)
    rectangle[top:bottom, left:right] = True
    assert torch.equal(mask, rectangle), "the mask is not a single rectangle"
    return top, bottom, left, right


def check_clipped_side(start: int, end: int, side: int, full: int) -> None:
    """A box side of nominal length ``side`` centred on an in-image pixel, clipped to [0, full)."""
    length = end - start
    assert length <= side
    assert length >= side - side // 2  # the centre pixel is inside the image
    if length < side:
        assert start == 0 or end == full, "a shortened side must touch the border"


# --- purifications ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_images(fashion_mnist_root):
    """[100 real Fashion-MNIST images (1 channel), 16 random RGB uint8 images], float k/255 (B, C, H, W)."""
    fashion, _ = read_dataset(str(fashion_mnist_root), split="train").subset(np.arange(100)).tensors()
    generator = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (16, 3, 32, 32), generator=generator, dtype=torch.uint8)
    return [fashion, rgb.float() / 255]


def pil_images(x: torch.Tensor) -> list[Image.Image]:
    """Float (B, C, H, W) k/255 images as PIL images: RGB for C = 3, L for C = 1."""
    arrays = to_uint8(x).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a) for a in arrays]


def from_pil(images: list[Image.Image]) -> torch.Tensor:
    """PIL images → float (B, C, H, W) k/255, as ToTensor gives them."""
    arrays = [np.array(image, dtype=np.uint8) for image in images]
    stacked = torch.from_numpy(np.stack([a if a.ndim == 3 else a[:, :, None] for a in arrays]))
    return stacked.permute(0, 3, 1, 2).float() / 255


def test_grayscale_is_iss_torchvision_grayscale_of_pil_images_bit_for_bit(reference_images):
    # ISS: transforms.Grayscale(num_output_channels=3) on the PIL training images
    rgb = reference_images[1]
    expected = from_pil([rgb_to_grayscale(image, num_output_channels=3) for image in pil_images(rgb)])
    assert torch.equal(grayscale(rgb), expected)


def test_jpeg_10_is_iss_pil_round_trip_bit_for_bit(reference_images):
    # ISS: PIL's save(format="JPEG", quality=10) and reopen, on the same uint8 images
    for x in reference_images:
        expected = from_pil([pil_jpeg(image, 10) for image in pil_images(x)])
        assert torch.equal(jpeg(x, 10), expected)


def test_grayscale_is_the_bt601_weighted_sum_in_every_channel():
    x = to_uint8(images(n=2, c=3, h=3, w=4)).float() / 255
    result = grayscale(x)
    assert result.shape == x.shape
    for b in range(2):
        for i in range(3):
            for j in range(4):
                luma = (
                    0.299 * x[b, 0, i, j].item() + 0.587 * x[b, 1, i, j].item() + 0.114 * x[b, 2, i, j].item()
                )
                for c in range(3):
                    assert result[b, c, i, j].item() == pytest.approx(luma, abs=0.5 / 255 + 1e-6)


def test_grayscale_leaves_one_channel_images_alone_and_rejects_other_channel_counts():
    x = images(c=1)
    assert torch.equal(grayscale(x), x)
    with pytest.raises(InvalidInputError, match="1 or 3 channels"):
        grayscale(images(c=2))


@pytest.mark.parametrize("quality", [10, 90])
def test_jpeg_matches_pil_at_the_same_quality(quality):
    # Tolerance: at most 2/255 on any pixel, 0.05/255 on average (here both encoders are libjpeg and agree exactly).
    for channels in (3, 1):
        x = smooth_images(c=channels)
        result = jpeg(x, quality)
        assert result.shape == x.shape and result.dtype == x.dtype
        reference = from_pil([pil_jpeg(image, quality) for image in pil_images(x)])
        difference = (result - reference).abs()
        assert difference.max().item() <= 2 / 255 + 1e-6
        assert difference.mean().item() <= 0.05 / 255


def test_jpeg_compresses_other_channel_counts_channel_by_channel():
    x = smooth_images(n=3, c=2)
    result = jpeg(x, 10)
    per_channel = [from_pil([pil_jpeg(i, 10) for i in pil_images(x[:, c : c + 1])]) for c in range(2)]
    reference = torch.cat(per_channel, dim=1)
    assert (result - reference).abs().max().item() <= 2 / 255 + 1e-6


def test_jpeg_quality_10_changes_images_more_than_quality_90_and_returns_uint8_levels():
    x = smooth_images()
    change_10 = (jpeg(x, 10) - x).abs().mean().item()
    change_90 = (jpeg(x, 90) - x).abs().mean().item()
    assert change_10 > 2 * change_90 > 0
    result = jpeg(x, 10)
    assert torch.equal(result, (result * 255).round() / 255)
    assert result.min() >= 0 and result.max() <= 1
    with pytest.raises(InvalidInputError, match="quality"):
        jpeg(x, 0)


@pytest.mark.parametrize("bits", range(1, 8))
def test_bit_depth_reduction_is_torchvision_posterize_bit_for_bit(reference_images, bits):
    # APBench's BDR is RandomPosterize(bits, p=1): equal to posterize on the same uint8 images
    for x in reference_images:
        expected = posterize(to_uint8(x), bits).float() / 255
        assert torch.equal(bit_depth_reduction(x, bits), expected)


def test_bit_depth_reduction_truncates_to_the_high_bits():
    x = torch.tensor([0, 63, 64, 127, 128, 191, 192, 255]).reshape(1, 1, 1, 8) / 255
    expected = torch.tensor([0, 0, 64, 64, 128, 128, 192, 192]).reshape(1, 1, 1, 8) / 255
    assert torch.equal(bit_depth_reduction(x, 2), expected)
    with pytest.raises(InvalidInputError, match="bit depth"):
        bit_depth_reduction(x, 8)


# --- cutout ---------------------------------------------------------------------------------------------


def test_cutout_zeroes_one_clipped_square_per_image_and_nothing_else():
    x = images(n=200, c=3, h=10, w=12, low=0.1)  # no zero pixels before cutout
    result = cutout(x, 0.5, torch.Generator().manual_seed(0))
    clipped = 0
    for image, original in zip(result, x):
        zero = image == 0
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])  # every channel
        top, bottom, left, right = box_of(zero[0])
        check_clipped_side(top, bottom, 5, 10)
        check_clipped_side(left, right, 6, 12)
        clipped += (bottom - top, right - left) != (5, 6)
        assert torch.equal(image[:, ~zero[0]], original[:, ~zero[0]])  # bit-identical elsewhere
    assert 0 < clipped < 200  # centres near the border clip the square, others do not


def test_cutout_is_seeded():
    x = images(n=8, low=0.1)
    same = cutout(x, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(same, cutout(x, 0.5, torch.Generator().manual_seed(3)))
    assert not torch.equal(same, cutout(x, 0.5, torch.Generator().manual_seed(4)))


# --- Beta sampling, mixup, cutmix --------------------------------------------------------------------------

BETA_CDFS = {
    0.5: lambda t: 2 / math.pi * math.asin(math.sqrt(t)),  # arcsine law
    1.0: lambda t: t,
    2.0: lambda t: 3 * t**2 - 2 * t**3,
}


@pytest.mark.parametrize("alpha", sorted(BETA_CDFS))
def test_beta_sample_follows_beta_alpha_alpha(alpha):
    generator = torch.Generator().manual_seed(0)
    draws = np.sort([beta_sample(alpha, generator) for _ in range(2000)])
    empirical = np.arange(1, len(draws) + 1) / len(draws)
    exact = np.array([BETA_CDFS[alpha](t) for t in draws])
    ks = max(np.abs(empirical - exact).max(), np.abs(empirical - 1 / len(draws) - exact).max())
    assert ks < 1.63 / math.sqrt(len(draws))  # Kolmogorov-Smirnov at the 1% level


def test_beta_sample_is_seeded_and_stays_in_range_for_tiny_alpha():
    first = [beta_sample(1.0, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert first[0] == first[1]
    assert first[0] != beta_sample(1.0, torch.Generator().manual_seed(8))
    generator = torch.Generator().manual_seed(0)
    assert all(0 <= beta_sample(1e-3, generator) <= 1 for _ in range(50))


def test_mixup_is_the_convex_combination_with_the_drawn_lambda_and_permutation():
    x, labels = images(n=6), torch.tensor([0, 1, 2, 3, 4, 0])
    mixed, targets = mixup(x, labels, 5, 1.0, torch.Generator().manual_seed(11))
    lam, permutation = draw_mixing(6, 1.0, torch.Generator().manual_seed(11))
    assert 0 < lam < 1 and sorted(permutation.tolist()) == list(range(6))
    for i in range(6):
        j = permutation[i].item()
        assert torch.allclose(mixed[i], lam * x[i] + (1 - lam) * x[j], atol=1e-6)
        expected = torch.zeros(5)
        expected[labels[i]] += lam
        expected[labels[j]] += 1 - lam
        assert torch.allclose(targets[i], expected, atol=1e-6)
    assert torch.allclose(targets.sum(dim=1), torch.ones(6), atol=1e-6)


def test_mixup_accepts_soft_targets():
    x, labels = images(n=6), torch.tensor([0, 1, 2, 0, 1, 2])
    _, soft = mixup(x, labels, 3, 1.0, torch.Generator().manual_seed(1))
    mixed, targets = mixup(x, soft, 3, 0.4, torch.Generator().manual_seed(2))
    lam, permutation = draw_mixing(6, 0.4, torch.Generator().manual_seed(2))
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[permutation], atol=1e-6)
    assert torch.allclose(targets, lam * soft + (1 - lam) * soft[permutation], atol=1e-6)
    assert torch.allclose(targets.sum(dim=1), torch.ones(6), atol=1e-6)
    with pytest.raises(InvalidInputError, match="targets"):
        mixup(x, soft, 4, 1.0, torch.Generator())
    with pytest.raises(InvalidInputError, match="labels must be in"):
        mixup(x, labels, 2, 1.0, torch.Generator())


def test_cutmix_pastes_one_box_and_mixes_targets_by_the_unpasted_area():
    n, height, width = 8, 16, 12
    x = images(n=n, c=2, h=height, w=width)  # continuous values: two images never share a pixel value
    labels = torch.arange(n)  # one class per image, so a target row shows λ' directly
    pasted_seen = 0
    for seed in range(12):
        mixed, targets = cutmix(x, labels, n, 1.0, torch.Generator().manual_seed(seed))
        lam, permutation = draw_mixing(n, 1.0, torch.Generator().manual_seed(seed))
        assert torch.allclose(targets.sum(dim=1), torch.ones(n), atol=1e-6)
        moved = [i for i in range(n) if permutation[i] != i]
        boxes = set()
        for i in moved:
            j = permutation[i].item()
            from_other = (mixed[i] == x[j]).all(dim=0)
            assert torch.equal(
                from_other | (mixed[i] == x[i]).all(dim=0), torch.ones(height, width, dtype=torch.bool)
            )
            boxes.add(box_of(from_other))
        assert len(boxes) == 1  # the same box in every image
        box = boxes.pop()
        area = 0 if box is None else (box[1] - box[0]) * (box[3] - box[2])
        if box is not None:
            side = math.sqrt(1 - lam)
            check_clipped_side(box[0], box[1], int(height * side), height)
            check_clipped_side(box[2], box[3], int(width * side), width)
            pasted_seen += 1
        for i in moved:
            assert targets[i, i].item() == pytest.approx(1 - area / (height * width), abs=1e-6)
            assert targets[i, permutation[i]].item() == pytest.approx(area / (height * width), abs=1e-6)
    assert pasted_seen >= 6


@pytest.mark.parametrize("mix", [mixup, cutmix])
def test_mixing_is_seeded(mix):
    x, labels = images(n=8), torch.arange(8) % 3
    first = mix(x, labels, 3, 1.0, torch.Generator().manual_seed(5))
    again = mix(x, labels, 3, 1.0, torch.Generator().manual_seed(5))
    other = mix(x, labels, 3, 1.0, torch.Generator().manual_seed(6))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


# --- names and config ---------------------------------------------------------------------------------


def test_parse_defences_canonical_order_separators_and_none():
    assert parse_defences("jpeg+grayscale") == ("grayscale", "jpeg")
    assert parse_defences(" bitdepth , Cutout ") == ("cutout", "bitdepth")
    assert parse_defences(["mixup", "adversarial"]) == ("adversarial", "mixup")
    assert parse_defences(["jpeg+grayscale", "cutout"]) == ("cutout", "grayscale", "jpeg")
    assert parse_defences("+".join(reversed(DEFENCE_NAMES))) == DEFENCE_NAMES
    for nothing in ("none", "", "  ", "None", [], ["none"], ()):
        assert parse_defences(nothing) == ()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("grayscale+jpg", "unknown 'jpg'; known names: none, adversarial, cutout"),
        (["sharpen"], "unknown 'sharpen'"),
        ("jpeg+", "unknown ''"),
        ("none+jpeg", "'none' cannot be combined"),
        ("jpeg+jpeg", "jpeg given more than once"),
        (3, "expected a string"),
    ],
)
def test_parse_defences_errors_name_the_input(spec, message):
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        parse_defences(spec)


def test_config_defaults_and_name_normalisation():
    config = DefenceConfig()
    assert config.names == () and config.jpeg_quality == 10 and config.bit_depth == 2
    assert config.cutout_size == 0.5 and config.mixup_alpha == config.cutmix_alpha == 1.0
    assert config.pgd == PGDConfig(eps=8 / 255, step=2 / 255, steps=10, random_start=True)
    assert DefenceConfig(names=["jpeg", "grayscale"]).names == ("grayscale", "jpeg")
    assert DefenceConfig(names="cutmix+jpeg") == DefenceConfig(names=("jpeg", "cutmix"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"names": ("mixup", "cutmix")}, "mixup and cutmix exclude each other"),
        ({"names": ("blur",)}, "unknown 'blur'"),
        ({"names": ("jpeg", "jpeg")}, "jpeg given more than once"),
        ({"jpeg_quality": 0}, "jpeg_quality"),
        ({"jpeg_quality": 101}, "jpeg_quality"),
        ({"jpeg_quality": 10.5}, "jpeg_quality"),
        ({"bit_depth": 0}, "bit_depth"),
        ({"bit_depth": 8}, "bit_depth"),
        ({"cutout_size": 0}, "cutout_size"),
        ({"cutout_size": 1.5}, "cutout_size"),
        ({"mixup_alpha": 0}, "mixup_alpha"),
        ({"cutmix_alpha": -1}, "cutmix_alpha"),
        ({"cutmix_alpha": float("inf")}, "cutmix_alpha"),
        ({"pgd": {"eps": 0.1}}, "pgd"),
    ],
)
def test_config_validation_names_the_field(overrides, message):
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        DefenceConfig(**overrides)


def test_config_round_trips_through_dicts():
    config = DefenceConfig(
        names=("bitdepth", "adversarial", "cutmix"),
        jpeg_quality=30,
        bit_depth=3,
        cutout_size=0.25,
        mixup_alpha=0.2,
        cutmix_alpha=0.5,
        pgd=PGDConfig(eps=4 / 255, step=0.8 / 255, steps=5, random_start=False),
    )
    assert from_dict(DefenceConfig, to_dict(config)) == config
    assert from_dict(DefenceConfig, to_dict(DefenceConfig())) == DefenceConfig()
    from_yaml = from_dict(
        DefenceConfig, {"names": "adversarial+jpeg", "pgd": {"eps": "4/255", "step": "0.8/255"}}
    )
    assert from_yaml == DefenceConfig(
        names=("jpeg", "adversarial"), pgd=PGDConfig(eps=4 / 255, step=0.8 / 255)
    )


def test_adversarial_training_selects_the_pgd_config():
    pgd = PGDConfig(eps=4 / 255, step=0.8 / 255)
    assert adversarial_training(DefenceConfig(names=("adversarial",), pgd=pgd)) == pgd
    assert adversarial_training(DefenceConfig(names=("jpeg",), pgd=pgd)) is None


# --- composition --------------------------------------------------------------------------------------


def test_transforms_are_none_when_there_is_nothing_to_do():
    assert train_transform(DefenceConfig(), 10) is None
    assert train_transform(DefenceConfig(names=("adversarial", "grayscale", "jpeg")), 10) is None
    assert purification(DefenceConfig(names=("adversarial", "cutout", "mixup"))) is None


def test_purification_is_grayscale_then_jpeg_then_bitdepth():
    config = DefenceConfig(names=("bitdepth", "jpeg", "grayscale", "cutout"), jpeg_quality=20, bit_depth=3)
    x = smooth_images()
    expected = bit_depth_reduction(jpeg(grayscale(x), 20), 3)
    assert torch.equal(purification(config)(x), expected)


def test_train_transform_leaves_purification_out_and_mixes_after_cutout():
    config = DefenceConfig(names=("grayscale", "bitdepth", "cutout", "cutmix"), bit_depth=2)
    x, labels = images(n=8, low=0.1), torch.arange(8) % 4
    result, targets = train_transform(config, 4)(x, labels, torch.Generator().manual_seed(2))
    generator = torch.Generator().manual_seed(2)
    expected = cutmix(cutout(x, 0.5, generator), labels, 4, 1.0, generator)
    assert torch.equal(result, expected[0]) and torch.equal(targets, expected[1])
    assert targets.shape == (8, 4)


def test_train_transform_is_seeded():
    transform = train_transform(DefenceConfig(names=("cutout", "mixup")), 3)
    x, labels = images(n=8), torch.arange(8) % 3
    first = transform(x, labels, torch.Generator().manual_seed(0))
    again = transform(x, labels, torch.Generator().manual_seed(0))
    other = transform(x, labels, torch.Generator().manual_seed(1))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_fit_runs_with_every_defence_combined(mix):
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 28, 28, generator=generator), torch.randint(0, 10, (64,), generator=generator)
    names = tuple(name for name in DEFENCE_NAMES if name not in ("mixup", "cutmix")) + (mix,)
    config = DefenceConfig(names=names, pgd=PGDConfig(steps=2))  # 2 PGD steps instead of 10, for time
    model = build_model("small_cnn", 10, in_channels=1, image_size=28, width=8, seed=0)
    purify = purification(config)
    history = fit(
        model,
        purify(x),
        y,
        recipe("plain", epochs=1, batch_size=32),
        seed=0,
        batch_transform=train_transform(config, 10),
        adversarial=adversarial_training(config),
        eval_data=(purify(x[:16]), y[:16]),
        training_loss=training_loss(config, 1),
    )
    assert len(history) == 1
    assert math.isfinite(history[0]["loss"]) and 0 <= history[0]["eval_accuracy"] <= 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
