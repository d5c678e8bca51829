"""UEraser: adversarial augmentation as a victim's defence against unlearnable data.

Qin, Gao, Zhao, Ye & Xu, "Learning the Unlearnable: Adversarial Augmentations Suppress Unlearnable Example
Attacks" (arXiv 2303.15127, 2023; ICCV 2023 AROW workshop); reference code github.com/lafeat/ueraser.

Each training batch is augmented K times with a strong random pipeline (:func:`ueraser_augment`), and the
victim minimises, per image, the largest of the K cross-entropies (:func:`max_loss`): the augmentation that
hurts most, an adversarial augmentation found by sampling rather than by gradients. With K = 1 this is plain
training on one augmented copy ("UEraser-Lite"). A :class:`UEraserConfig` gives K for every epoch:

    setting    K in the first E epochs   after them    the reference (LSP/cifar_train.py --mode, README)
    lite       1                         1             "fast": one augmented copy every epoch
    standard   repeats (5)               1             "standard": K = 5 for 50 of 200 epochs, then one copy
    max        repeats (5)               (no "after")  "em": K = 5 every epoch

E (``max_loss_epochs``) defaults to a quarter of the run's epochs, rounded up: the reference's 50 of 200
(its README's example uses 60 of 200; ``max_loss_epochs=60`` gives that). After E epochs the reference keeps
augmenting (K = 1), it does not return to plain training, and neither does this.

The augmentation pipeline, as the reference's ``UEraser`` (kornia's ``AugmentationSequential``), each step drawn
independently per image:

1. plasma brightness, with probability 1/2: x + i·(2P − 1), P a plasma fractal (:func:`plasma_fractal`, roughness
   uniform in [0.3, 0.7]) per image and channel, i uniform in [0.5, 1];
2. plasma contrast, with probability 1/2: (x − 1/2)·4P + 1/2, P likewise;
3. channel shuffle, with probability 1/2: a uniformly random permutation of the channels;
4. a TrivialAugment step (Müller & Hutter, ICCV 2021; :func:`trivial_augment`): one operation of
   :data:`TRIVIAL_AUGMENT_OPS`, drawn uniformly, at a strength drawn uniformly from its range;
5. optionally (``jpeg_quality``; the reference's ``UEraserJPEG`` uses 10) a JPEG round trip with a
   straight-through gradient (:func:`jpeg_straight_through`).

Every result is clamped to [0, 1]. Differences from the reference, which needs kornia (not a dependency here),
all in plain torch and torchvision:

- the plasma fractal is this module's diamond-square (every new point a convex mix of its neighbours' mean
  and uniform noise, so P stays in [0, 1]); kornia's ``diamond_square`` differs in its seed grid and border
  handling, so the maps are alike in kind (smooth, in [0, 1], mean 1/2), not equal;
- TrivialAugment draws an operation per image; kornia's ``TrivialAugment`` draws one per call, i.e. one for
  the whole tiled batch of K copies (with per-image strengths), and (in the kornia source read for this)
  draws the strengths of its symmetric operations, such as rotation, without their random sign (kornia issue
  #4441). The operations and ranges are kornia's default policy's, with
  the meanings TrivialAugment gives them (torchvision's conventions: brightness, contrast and sharpness blend
  with black, the mean grey and a smoothed image by a factor; posterize keeps 1–4 high bits, as 0 bits would
  blank the image);
- JPEG compresses each image on its own (:func:`ue_core.defences.jpeg`, PIL's encoder bit for bit); the
  reference tiles the batch into one JPEG (blocks can straddle images whose side is not a multiple of 16) and
  decodes to (v − 0.5)/255;
- the K copies go through the model as one batch of K·B images (batch-norm statistics over all of them), as
  the reference's ``adversarial_augmentation_loss`` does; its LSP script runs K separate forward passes.

Randomness comes only from the CPU ``torch.Generator`` passed in (:mod:`ue_core.training`'s convention).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ue_core.checks import check_images
from ue_core.errors import InvalidInputError
from ue_core.training import TrainingLoss

SETTINGS: tuple[str, ...] = ("lite", "standard", "max")
"""The schedules of :class:`UEraserConfig` (see the module docstring)."""

PLASMA_PROBABILITY = 0.5
"""Probability of each of plasma brightness, plasma contrast and channel shuffle, per image (the reference's
``ueraser.py``; its EM notebook applies the two plasma steps always)."""

PLASMA_ROUGHNESS = (0.3, 0.7)
BRIGHTNESS_INTENSITY = (0.5, 1.0)

TRIVIAL_AUGMENT_OPS: tuple[str, ...] = (
    "auto_contrast", "equalize", "rotate", "posterize", "solarize", "contrast", "brightness", "sharpness",
    "shear_x", "shear_y", "translate_x", "translate_y",
)
"""kornia's default TrivialAugment policy (the reference's step 4). Strengths, uniform in: rotate ±30°;
posterize 1–4 high bits kept; solarize threshold [0, 1]; contrast, brightness, sharpness factor [0.1, 1.9];
shear ±0.3; translate ±0.5 of the side. auto_contrast and equalize have no strength."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class UEraserConfig:
    """How many augmented copies UEraser trains on in each epoch.

    Attributes:
        setting: "lite", "standard" or "max" (module docstring): lite reads neither of the next two fields,
            max reads ``repeats``, standard both.
        repeats: K, the augmented copies per image whose largest loss is trained on, an integer >= 1; the
            reference uses 5.
        max_loss_epochs: E, the leading epochs of the standard setting that use K copies, an integer >= 0
            (beyond the run's epochs means all); None: a quarter of the run's epochs, rounded up.
        jpeg_quality: None, or a JPEG quality in [1, 100] appended to the pipeline with a straight-through
            gradient (the reference's ``UEraserJPEG`` uses 10).

    Raises:
        InvalidInputError: a field out of range; the message names it.
    """

    setting: str = "standard"
    repeats: int = 5
    max_loss_epochs: int | None = None
    jpeg_quality: int | None = None

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise InvalidInputError(
                f"defence ueraser.setting: unknown {self.setting!r}; known: {', '.join(SETTINGS)}"
            )
        if not (_is_int(self.repeats) and self.repeats >= 1):
            raise InvalidInputError(f"defence ueraser.repeats: must be an integer >= 1, got {self.repeats!r}")
        if self.max_loss_epochs is not None and not (_is_int(self.max_loss_epochs) and self.max_loss_epochs >= 0):
            raise InvalidInputError(
                f"defence ueraser.max_loss_epochs: must be an integer >= 0 or null, got {self.max_loss_epochs!r}"
            )
        if self.jpeg_quality is not None and not (_is_int(self.jpeg_quality) and 1 <= self.jpeg_quality <= 100):
            raise InvalidInputError(
                f"defence ueraser.jpeg_quality: must be null or an integer in [1, 100], got {self.jpeg_quality!r}"
            )

    def leading_epochs(self, epochs: int) -> int:
        """E for a run of ``epochs``: the epochs (from the first) trained on the largest of K losses."""
        if self.setting == "lite":
            return 0
        if self.setting == "max":
            return epochs
        return math.ceil(epochs / 4) if self.max_loss_epochs is None else min(self.max_loss_epochs, epochs)

    def repeats_at(self, epoch: int, epochs: int) -> int:
        """K in epoch ``epoch`` (1-based) of a run of ``epochs``: ``repeats`` in the first E, else 1."""
        if not (_is_int(epoch) and _is_int(epochs) and 1 <= epoch <= epochs):
            raise InvalidInputError(f"ueraser epoch: must be an integer in [1, {epochs}], got {epoch!r}")
        return self.repeats if epoch <= self.leading_epochs(epochs) else 1


# --- the augmentations -------------------------------------------------------------------------------


def _uniform(count: int, bounds: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(count, generator=generator)


def plasma_fractal(
    count: int,
    height: int,
    width: int,
    roughness: torch.Tensor,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``count`` plasma fractals by the diamond-square algorithm (Fournier, Fussell & Carpenter 1982).

    On a square grid of 2^L + 1 points covering H × W, the four corners are uniform in [0, 1]; then, level by
    level, with s multiplied by the map's roughness r at each level (s = r, r², …), every new point — first the
    centres of the squares (diamond step), then the midpoints of their sides (square step) — becomes
    (1 − s)·(mean of its 4 neighbours, or 3 on the border) + s·u, u uniform in [0, 1]. Every value is thus a
    convex combination of values in [0, 1]; a small r gives a smooth map, a large r a rough one. The map is
    the grid's top-left H × W corner.

    Args:
        count: number of maps.
        height, width: their size, >= 1.
        roughness: float (count,) in [0, 1].
        generator: CPU generator; draws the corners, then per level the centres' u, then the (whole lattice's)
            side midpoints' u.
        device: where the maps are computed (the draws are made on the CPU and moved there).

    Returns:
        float32 (count, H, W) in [0, 1], on ``device``.
    """

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator).to(device)

    side = max(height, width, 2)
    size = 2 ** math.ceil(math.log2(side - 1)) + 1
    scale_per_level = roughness.reshape(count, 1, 1).float().to(device)
    grid = torch.zeros(count, size, size, device=device)
    grid[:, :: size - 1, :: size - 1] = uniform(count, 2, 2)
    scale = torch.ones(count, 1, 1, device=device)
    step = size - 1
    while step > 1:
        half = step // 2
        scale = scale * scale_per_level
        corners = grid[:, ::step, ::step]
        centre_mean = (corners[:, :-1, :-1] + corners[:, :-1, 1:] + corners[:, 1:, :-1] + corners[:, 1:, 1:]) / 4
        noise = uniform(*centre_mean.shape)
        grid[:, half::step, half::step] = (1 - scale) * centre_mean + scale * noise
        lattice = grid[:, ::half, ::half]  # corners and centres set; the side midpoints are (i + j) odd
        points = lattice.shape[1]
        padded = F.pad(lattice, (1, 1, 1, 1))
        neighbour_sum = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
        position = torch.arange(points, device=device)
        inside = (position > 0).float() + (position < points - 1).float()  # neighbours along one axis
        neighbours = inside[:, None] + inside[None, :]
        midpoint = (position[:, None] + position[None, :]) % 2 == 1
        noise = uniform(count, points, points)
        mixed = (1 - scale) * neighbour_sum / neighbours + scale * noise
        grid[:, ::half, ::half] = torch.where(midpoint, mixed, lattice)
        step = half
    return grid[:, :height, :width].contiguous()


def _plasma_maps(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One plasma fractal per image and channel of x (B, C, H, W), roughness drawn per image."""
    batch, channels, height, width = x.shape
    roughness = _uniform(batch, PLASMA_ROUGHNESS, generator).repeat_interleave(channels)
    maps = plasma_fractal(batch * channels, height, width, roughness, generator, x.device)
    return maps.reshape(batch, channels, height, width).to(x.dtype)


def _chosen(x: torch.Tensor, changed: torch.Tensor, applied: torch.Tensor) -> torch.Tensor:
    """``changed`` where the bool (B,) ``applied`` (on the CPU) is set, else x."""
    return torch.where(applied.to(x.device)[:, None, None, None], changed, x)


def plasma_brightness(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Step 1: with probability 1/2 per image, x + i·(2P − 1) clamped to [0, 1] (draws: the coins, i, then
    the maps of :func:`_plasma_maps`)."""
    applied = torch.rand(len(x), generator=generator) < PLASMA_PROBABILITY
    intensity = _uniform(len(x), BRIGHTNESS_INTENSITY, generator).to(device=x.device, dtype=x.dtype)
    maps = _plasma_maps(x, generator)
    return _chosen(x, (x + intensity[:, None, None, None] * (2 * maps - 1)).clamp(0, 1), applied)


def plasma_contrast(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Step 2: with probability 1/2 per image, (x − 1/2)·4P + 1/2 clamped to [0, 1] (draws: the coins, then
    the maps)."""
    applied = torch.rand(len(x), generator=generator) < PLASMA_PROBABILITY
    maps = _plasma_maps(x, generator)
    return _chosen(x, ((x - 0.5) * 4 * maps + 0.5).clamp(0, 1), applied)


def channel_shuffle(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Step 3: with probability 1/2 per image, its channels in a uniformly random order (draws: the coins,
    then (B, C) uniform keys whose argsort is the order)."""
    applied = torch.rand(len(x), generator=generator) < PLASMA_PROBABILITY
    order = torch.rand(x.shape[:2], generator=generator).argsort(dim=1).to(x.device)
    shuffled = x.gather(1, order[:, :, None, None].expand_as(x))
    return _chosen(x, shuffled, applied)


def _grey_mean(x: torch.Tensor) -> torch.Tensor:
    """Per image, the mean of its grey image (torchvision's luma 0.2989 R + 0.587 G + 0.114 B for 3 channels,
    the channel mean otherwise), (B, 1, 1, 1): torchvision's ``adjust_contrast`` blends with it."""
    if x.shape[1] == 3:
        weights = torch.tensor([0.2989, 0.587, 0.114], dtype=x.dtype, device=x.device)
        grey = torch.einsum("bchw,c->bhw", x, weights)
    else:
        grey = x.mean(dim=1)
    return grey.mean(dim=(1, 2))[:, None, None, None]


def _smoothed(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter ([[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13) inside, the border pixels unchanged, as
    torchvision's ``adjust_sharpness`` blends with it."""
    channels, height, width = x.shape[1:]
    if height < 3 or width < 3:
        return x
    kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5
    kernel = (kernel / 13).expand(channels, 1, 3, 3)
    inner = F.conv2d(x, kernel, groups=channels)
    return torch.cat([x[:, :, :1], torch.cat([x[:, :, 1:-1, :1], inner, x[:, :, 1:-1, -1:]], dim=3),
                      x[:, :, -1:]], dim=2)


def _affine(x: torch.Tensor, matrix: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Each image resampled (bilinear, zero outside) at A·p + t for every output pixel p, with A (B, 2, 2)
    and t (B, 2) in pixel units about the image centre, (column, row) order."""
    height, width = x.shape[2:]
    half_sides = torch.tensor([width / 2, height / 2], dtype=x.dtype, device=x.device)
    theta = torch.cat([matrix * half_sides[None, None, :] / half_sides[None, :, None],  # D⁻¹ A D
                       (shift / half_sides)[:, :, None]], dim=2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _geometric(name: str, x: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    batch, _, height, width = x.shape
    signed = 2 * strength - 1  # uniform in [-1, 1]
    matrix = torch.eye(2, dtype=x.dtype, device=x.device).repeat(batch, 1, 1)
    shift = torch.zeros(batch, 2, dtype=x.dtype, device=x.device)
    if name == "rotate":
        angle = torch.deg2rad(30 * signed)
        cos, sin = torch.cos(angle), torch.sin(angle)
        matrix = torch.stack([torch.stack([cos, -sin], dim=1), torch.stack([sin, cos], dim=1)], dim=1)
    elif name == "shear_x":
        matrix[:, 0, 1] = 0.3 * signed
    elif name == "shear_y":
        matrix[:, 1, 0] = 0.3 * signed
    elif name == "translate_x":
        shift[:, 0] = 0.5 * signed * width
    else:  # translate_y
        shift[:, 1] = 0.5 * signed * height
    return _affine(x, matrix, shift)


def apply_trivial_op(name: str, x: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """One operation of :data:`TRIVIAL_AUGMENT_OPS` on every image of x (B, C, H, W) in [0, 1], at strength
    (B,) in [0, 1] mapped linearly onto the operation's range; the result is in [0, 1]."""
    from torchvision.transforms.v2 import functional as tvf

    strength = strength.to(device=x.device, dtype=x.dtype)
    factor = (0.1 + 1.8 * strength)[:, None, None, None]  # contrast, brightness, sharpness
    if name == "auto_contrast":
        return tvf.autocontrast(x)
    if name == "equalize":
        return tvf.equalize(x)
    if name == "posterize":
        bits = 1 + (4 * strength).floor().clamp(max=3).to(torch.int64)  # 1, 2, 3 or 4 high bits kept
        keep = (256 - 2 ** (8 - bits))[:, None, None, None]
        return torch.bitwise_and((x * 255).round().clamp(0, 255).to(torch.int64), keep).to(x.dtype) / 255
    if name == "solarize":
        return torch.where(x >= strength[:, None, None, None], 1 - x, x)
    if name == "contrast":
        return (factor * x + (1 - factor) * _grey_mean(x)).clamp(0, 1)
    if name == "brightness":
        return (factor * x).clamp(0, 1)
    if name == "sharpness":
        smooth = _smoothed(x)
        return (factor * x + (1 - factor) * smooth).clamp(0, 1)
    if name in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
        return _geometric(name, x, strength).clamp(0, 1)
    raise InvalidInputError(f"trivial augment op: unknown {name!r}; known: {', '.join(TRIVIAL_AUGMENT_OPS)}")


def trivial_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Step 4: per image, one operation of :data:`TRIVIAL_AUGMENT_OPS` drawn uniformly, at a strength drawn
    uniformly (draws: B operation indices, then B strengths in [0, 1))."""
    ops = torch.randint(0, len(TRIVIAL_AUGMENT_OPS), (len(x),), generator=generator)
    strengths = torch.rand(len(x), generator=generator)
    result = x.clone()
    for index, name in enumerate(TRIVIAL_AUGMENT_OPS):
        rows = (ops == index).nonzero().flatten()
        if len(rows):
            on_device = rows.to(x.device)
            result[on_device] = apply_trivial_op(name, x[on_device], strengths[rows])
    return result


def jpeg_straight_through(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Step 5: forward, the JPEG round trip :func:`ue_core.defences.jpeg`; backward, the identity (a
    straight-through estimator, as the reference's ``jpeg_compression``): x + (jpeg(x) − x) held constant.

    The max-loss objective needs no gradient in the pixels, so this only matters to a caller that
    differentiates through the pipeline."""
    from ue_core.defences import jpeg  # ue_core.defences imports this module

    return x + (jpeg(x.detach(), quality) - x).detach()


def ueraser_augment(x: torch.Tensor, generator: torch.Generator, jpeg_quality: int | None = None) -> torch.Tensor:
    """The UEraser pipeline (module docstring, steps 1–5) on every image of x, drawn independently per image.

    Args:
        x: float (B, C, H, W) in [0, 1].
        generator: CPU generator; draws steps 1 to 4 in order (each function says what it draws).
        jpeg_quality: None, or the quality of step 5.

    Returns:
        float (B, C, H, W) in [0, 1], on the device and in the dtype of x.
    """
    check_images(x, allow_empty=True)
    x = plasma_brightness(x, generator)
    x = plasma_contrast(x, generator)
    x = channel_shuffle(x, generator)
    x = trivial_augment(x, generator)
    if jpeg_quality is not None:
        x = jpeg_straight_through(x, jpeg_quality)
    return x


# --- the loss ----------------------------------------------------------------------------------------


def max_loss(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    targets: torch.Tensor,
    generator: torch.Generator,
    repeats: int,
    jpeg_quality: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """UEraser's loss: the batch mean of each image's largest cross-entropy over K augmented copies.

    The K copies are :func:`ueraser_augment` of x repeated K times (copy k of image i is row k·B + i), passed
    through ``forward`` as one batch of K·B images; with ℓ_ki the cross-entropy of copy k of image i, the loss
    is (1/B) Σ_i max_k ℓ_ki. Its gradient flows through the largest ℓ_ki of each image only. K = 1 is the
    mean cross-entropy of one augmented copy (UEraser-Lite).

    Args:
        forward: the model's forward pass, images (N, C, H, W) → logits (N, num_classes).
        x: float (B, C, H, W) in [0, 1].
        targets: int64 labels (B,), or float class probabilities (B, num_classes) (after mixup or cutmix).
        generator: CPU generator for the augmentations.
        repeats: K >= 1.
        jpeg_quality: step 5 of the pipeline, if not None.

    Returns:
        (loss, a float32 scalar; logits float32 (B, num_classes) of each image's copy of largest loss).
    """
    if not (_is_int(repeats) and repeats >= 1):
        raise InvalidInputError(f"ueraser repeats: must be an integer >= 1, got {repeats!r}")
    batch = len(x)
    views = ueraser_augment(x.repeat(repeats, 1, 1, 1), generator, jpeg_quality)
    logits = forward(views).float()
    tiled = targets.repeat(repeats) if targets.ndim == 1 else targets.repeat(repeats, 1)
    losses = F.cross_entropy(logits, tiled, reduction="none").reshape(repeats, batch)
    worst, which = losses.max(dim=0)
    chosen = logits.reshape(repeats, batch, -1)[which, torch.arange(batch, device=logits.device)]
    return worst.mean(), chosen


def ueraser_training_loss(config: UEraserConfig, epochs: int) -> TrainingLoss:
    """The :data:`ue_core.training.TrainingLoss` of ``config`` for a run of ``epochs``: in epoch e,
    :func:`max_loss` with K = ``config.repeats_at(e, epochs)``."""
    if not (_is_int(epochs) and epochs >= 1):
        raise InvalidInputError(f"ueraser epochs: must be an integer >= 1, got {epochs!r}")

    def loss(
        forward: Callable[[torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        targets: torch.Tensor,
        generator: torch.Generator,
        epoch: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return max_loss(forward, x, targets, generator, config.repeats_at(epoch, epochs), config.jpeg_quality)

    return loss
