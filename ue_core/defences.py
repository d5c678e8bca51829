"""Training-time defences a victim may use against unlearnable data (docs/method.md §4).

Three kinds, all on float images (B, C, H, W) in [0, 1]:

- purifications, deterministic per image: :func:`grayscale`, :func:`jpeg` (the two compressions of Image
  Shortcut Squeezing, Liu, Zhao & Larson, ICML 2023) and :func:`bit_depth_reduction` (APBench's BDR, Qin et
  al. 2023: torchvision's ``posterize``), each defined on the uint8 pixels exactly as its reference computes
  it, and tested bit for bit against that reference (PIL's grayscale and JPEG, torchvision's posterize);
- augmentations, random: :func:`cutout` (DeVries & Taylor 2017), :func:`mixup` (Zhang et al., ICLR 2018),
  :func:`cutmix` (Yun et al., ICCV 2019);
- PGD adversarial training (Madry et al., ICLR 2018), which :func:`ue_core.training.fit` already implements:
  :func:`adversarial_training` only selects its :class:`~ue_core.training.PGDConfig`;
- UEraser (Qin et al. 2023, :mod:`ue_core.ueraser`): strong random augmentations, K copies per image of which
  the victim trains on the largest loss. It changes the loss rather than the batch: :func:`training_loss`
  gives ``fit``'s ``training_loss``, configured by :class:`~ue_core.ueraser.UEraserConfig`.

A :class:`DefenceConfig` names any combination of :data:`DEFENCE_NAMES` (mixup and cutmix exclude each other).
:func:`purification` gives the purifications (grayscale → jpeg → bitdepth), applied once to every stored training
image before training, as Image Shortcut Squeezing compresses the training set itself: crop and flip then work
on the purified images, and JPEG is computed once rather than every epoch. :func:`train_transform` gives the
:data:`~ue_core.training.BatchTransform` that ``fit`` applies to every training batch after its crop/flip
augmentation and before PGD: cutout, then mixup or cutmix. UEraser's augmentations come last, inside its loss,
on the batch as the cross-entropy would have seen it (after PGD, when combined with adversarial training).

The same :func:`purification` applies to the test images: a defender controls its own inference pipeline, so
the victim is evaluated on the input distribution it was trained on (a grayscale-trained model sees grayscale
test images). This is ISS's ``--ISS_both_train_test`` setting; ISS's default compresses the training images
only.

Randomness comes only from the CPU ``torch.Generator`` passed in (see :mod:`ue_core.training`), so the same
seed gives the same batches. In particular the mixing coefficient λ ~ Beta(α, α) is drawn by
:func:`beta_sample` from that generator, not with ``torch.distributions.Beta``, whose Gamma sampler
(``torch._standard_gamma``) takes no generator.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F

from ue_core.checks import check_images
from ue_core.errors import InvalidInputError
from ue_core.training import BatchTransform, PGDConfig, TrainingLoss
from ue_core.ueraser import UEraserConfig, ueraser_training_loss

DEFENCE_NAMES: tuple[str, ...] = (
    "adversarial", "cutout", "mixup", "cutmix", "grayscale", "jpeg", "bitdepth", "ueraser",
)
"""Every defence a :class:`DefenceConfig` can name; :func:`parse_defences` returns names in this order."""

PURIFICATIONS: tuple[str, ...] = ("grayscale", "jpeg", "bitdepth")
"""The deterministic defences, in the order :func:`purification` applies them."""

LUMA_WEIGHTS: tuple[int, int, int] = (19595, 38470, 7471)
"""ITU-R BT.601 luma weights of R, G, B (0.299, 0.587, 0.114) in 16-bit fixed point, as PIL's ``convert("L")``
computes L = (19595 R + 38470 G + 7471 B + 2^15) >> 16 on uint8 values."""


def parse_defences(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Defence names from a flag or config value, in the canonical order of :data:`DEFENCE_NAMES`.

    Args:
        spec: "none" or "" (no defence); names joined by "+" or "," ("grayscale+jpeg", "jpeg, cutout");
            or a sequence of names or of such strings (a config's ``names: grayscale+jpeg`` arrives as a
            list of one). Surrounding whitespace and case are ignored.

    Returns:
        The distinct names, ordered as in :data:`DEFENCE_NAMES`; () for no defence.

    Raises:
        InvalidInputError: on an unknown or repeated name, an empty name ("jpeg+"), or "none" combined with
            other names; the message names the offending input.
    """
    if not isinstance(spec, str) and isinstance(spec, Sequence) and all(isinstance(s, str) for s in spec):
        spec = "+".join(spec)
    if not isinstance(spec, str):
        raise InvalidInputError(
            f"defence names: expected a string like 'grayscale+jpeg' or a list of names, got {spec!r}"
        )
    if spec.strip().lower() in ("", "none"):
        return ()
    tokens = re.split(r"[+,]", spec)
    names = [token.strip().lower() for token in tokens]
    for name in names:
        if name not in DEFENCE_NAMES:
            what = "'none' cannot be combined with other defences" if name == "none" else f"unknown {name!r}"
            raise InvalidInputError(
                f"defence names {spec!r}: {what}; known names: none, {', '.join(DEFENCE_NAMES)}"
            )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InvalidInputError(f"defence names {spec!r}: {', '.join(repeated)} given more than once")
    return tuple(name for name in DEFENCE_NAMES if name in names)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class DefenceConfig:
    """Which defences a victim trains with, and their parameters.

    Every parameter is validated, whether or not its defence is selected. ``names`` may also be given as a
    list or a "grayscale+jpeg" string (as from YAML or a flag); it is stored as the tuple
    :func:`parse_defences` returns, so ``from_dict(DefenceConfig, to_dict(config)) == config``.

    Attributes:
        names: any combination of :data:`DEFENCE_NAMES` except mixup with cutmix; () means no defence.
        jpeg_quality: JPEG quality factor in [1, 100]; ISS (Liu et al. 2023) uses 10.
        bit_depth: the high bits kept of each uint8 channel value, in [1, 7], i.e. 2**bit_depth levels
            (:func:`bit_depth_reduction`). Default 2 (levels 0, 64, 128, 192 of 255): the step of 64/255 is 8×
            the usual budget ε = 8/255, so a ±ε perturbation changes the truncated value only of pixels within
            ε of one of the 3 thresholds (≈ 19% of uniformly spread values, against ≈ 44% at 3 bits and ≈ 94%
            at 4), while shapes stay recognisable.
        cutout_size: side of the cutout square as a fraction of the image side (of each side for non-square
            images), in (0, 1]; 0.5 is DeVries & Taylor's 16 px on 32 px CIFAR images.
        mixup_alpha: α of mixup's λ ~ Beta(α, α), > 0 (Zhang et al. use 1 on CIFAR-10).
        cutmix_alpha: α of cutmix's λ ~ Beta(α, α), > 0 (Yun et al. use 1).
        pgd: adversarial training's attack; the default is Madry's ε 8/255, step 2/255, 10 steps, random start
            (docs/method.md §4 also uses ε 4/255 with step 0.8/255).
        ueraser: UEraser's setting (lite, standard, max), K, the epochs of the largest loss, optional JPEG.

    Raises:
        InvalidInputError: on an unknown or repeated name, mixup together with cutmix, or a parameter out of
            range; the message names the field.
    """

    names: tuple[str, ...] = ()
    jpeg_quality: int = 10
    bit_depth: int = 2
    cutout_size: float = 0.5
    mixup_alpha: float = 1.0
    cutmix_alpha: float = 1.0
    pgd: PGDConfig = field(default_factory=PGDConfig)
    ueraser: UEraserConfig = field(default_factory=UEraserConfig)

    def __post_init__(self) -> None:
        names = parse_defences(self.names)
        if "mixup" in names and "cutmix" in names:
            raise InvalidInputError("defence names: mixup and cutmix exclude each other; choose one")
        object.__setattr__(self, "names", names)
        if not (_is_int(self.jpeg_quality) and 1 <= self.jpeg_quality <= 100):
            raise InvalidInputError(
                f"defence jpeg_quality: must be an integer in [1, 100], got {self.jpeg_quality!r}"
            )
        if not (_is_int(self.bit_depth) and 1 <= self.bit_depth <= 7):
            raise InvalidInputError(
                f"defence bit_depth: must be an integer in [1, 7], got {self.bit_depth!r}"
            )
        if not (_is_number(self.cutout_size) and 0 < self.cutout_size <= 1):
            raise InvalidInputError(
                f"defence cutout_size: must be a number in (0, 1], got {self.cutout_size!r}"
            )
        object.__setattr__(self, "cutout_size", float(self.cutout_size))
        for name in ("mixup_alpha", "cutmix_alpha"):
            value = getattr(self, name)
            if not (_is_number(value) and value > 0):
                raise InvalidInputError(f"defence {name}: must be a finite number > 0, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not isinstance(self.pgd, PGDConfig):
            raise InvalidInputError(f"defence pgd: must be a PGDConfig, got {type(self.pgd).__name__}")
        if not isinstance(self.ueraser, UEraserConfig):
            raise InvalidInputError(
                f"defence ueraser: must be a UEraserConfig, got {type(self.ueraser).__name__}"
            )


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float (B, C, H, W) in [0, 1] → uint8 (B, C, H, W) on the device of x: round(255 x), the exact inverse
    of the k/255 floats that images become in ue_core (:meth:`ue_core.data.dataset.ImageDataset.tensors`)."""
    return (x.detach() * 255).round().clamp(0, 255).to(torch.uint8)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma in uint8, replicated to every channel (ISS's grayscale compression).

    ISS applies ``torchvision.transforms.Grayscale(num_output_channels=3)`` to the PIL training images, i.e.
    PIL's ``convert("L")`` replicated to 3 channels: this computes the same integers (:data:`LUMA_WEIGHTS`) on
    the uint8 pixels (:func:`to_uint8`), and is tested equal, bit for bit, to
    ``torchvision.transforms.functional.rgb_to_grayscale(image, num_output_channels=3)`` on PIL images.

    Args:
        x: float (B, C, H, W) in [0, 1] with C = 3 (RGB) or C = 1 (returned unchanged).

    Returns:
        float (B, C, H, W) with values k/255, in the dtype and on the device of x: for C = 3 every channel
        is (19595 R + 38470 G + 7471 B + 2^15) >> 16 of the uint8 values, ÷ 255.

    Raises:
        InvalidInputError: for any other channel count, which has no defined luma.
    """
    check_images(x, allow_empty=True)
    channels = x.shape[1]
    if channels == 1:
        return x
    if channels != 3:
        raise InvalidInputError(f"grayscale: needs 1 or 3 channels (RGB), got {channels}")
    weights = torch.tensor(LUMA_WEIGHTS, dtype=torch.int64, device=x.device)
    weighted = torch.einsum("bchw,c->bhw", to_uint8(x).to(torch.int64), weights)
    luma = torch.bitwise_right_shift(weighted + 2**15, 16).to(x.dtype) / 255
    return luma[:, None].expand_as(x).contiguous()


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG compression and decompression of every image (ISS's JPEG compression).

    ISS saves each PIL training image with PIL's ``save(format="JPEG", quality=10)`` and reads it back; this
    is tested equal, bit for bit, to that PIL round trip on the same uint8 images. Each image is rounded to uint8
    (:func:`to_uint8`), encoded with libjpeg through ``torchvision.io.encode_jpeg`` (baseline, 4:2:0
    chroma subsampling for colour, as PIL's ``save(format="JPEG", quality=quality)``, whose decoded pixels it
    reproduces) and decoded with ``decode_jpeg``, the whole batch in one call each. 3-channel images are
    encoded as colour JPEGs; any other channel count is encoded channel by channel as grayscale JPEGs, so
    1-channel images stay 1 channel.

    Args:
        x: float (B, C, H, W) in [0, 1].
        quality: JPEG quality factor in [1, 100] (lower compresses more; ISS uses 10).

    Returns:
        float (B, C, H, W) in [0, 1] with values k/255, on the device and in the dtype of x.
    """
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg  # the module's only torchvision use

    check_images(x, allow_empty=True)
    if not (_is_int(quality) and 1 <= quality <= 100):
        raise InvalidInputError(f"jpeg quality: must be an integer in [1, 100], got {quality!r}")
    batch, channels, height, width = x.shape
    pixels = to_uint8(x).cpu()
    if channels != 3:
        pixels = pixels.reshape(batch * channels, 1, height, width)
    decoded = decode_jpeg(encode_jpeg(list(pixels), quality=quality), mode=ImageReadMode.UNCHANGED)
    result = torch.stack(decoded).reshape(batch, channels, height, width)
    return result.to(device=x.device, dtype=x.dtype) / 255


def bit_depth_reduction(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Keep the ``bits`` high bits of every uint8 channel value (APBench's BDR defence).

    APBench (Qin et al., "APBench: A unified benchmark for availability poisoning attacks and defenses", 2023)
    reduces bit depth with ``torchvision.transforms.RandomPosterize(bits, p=1)``, which truncates: a uint8
    value v becomes v & ~(2^(8 − bits) − 1). This does so on the uint8 pixels (:func:`to_uint8`), and is
    tested equal, bit for bit, to ``torchvision.transforms.functional.posterize`` on the same images.

    Args:
        x: float (B, C, H, W) in [0, 1].
        bits: bits kept per channel, in [1, 7].

    Returns:
        float (B, C, H, W) with values k·2^(8 − bits)/255, in the dtype and on the device of x.
    """
    check_images(x, allow_empty=True)
    if not (_is_int(bits) and 1 <= bits <= 7):
        raise InvalidInputError(f"bit depth: must be an integer in [1, 7], got {bits!r}")
    kept = torch.bitwise_and(to_uint8(x), 256 - 2 ** (8 - bits))
    return kept.to(x.dtype) / 255


def _random_boxes(
    count: int,
    height: int,
    width: int,
    box_height: int,
    box_width: int,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """``count`` masks, bool (count, H, W), each a box_height × box_width box clipped at the border.

    The box's centre pixel (row, column) is uniform over the image: ``count`` rows then ``count`` columns are
    drawn with ``torch.randint`` from the generator. The box covers rows [row − box_height // 2, that +
    box_height) and likewise columns, intersected with the image (the convention of DeVries & Taylor's and
    Yun et al.'s code, which agree with it for even sides).
    """
    rows = torch.randint(0, height, (count,), generator=generator).to(device)
    columns = torch.randint(0, width, (count,), generator=generator).to(device)
    top, left = rows - box_height // 2, columns - box_width // 2
    row_index = torch.arange(height, device=device)
    column_index = torch.arange(width, device=device)
    in_rows = (row_index >= top[:, None]) & (row_index < top[:, None] + box_height)  # (count, H)
    in_columns = (column_index >= left[:, None]) & (column_index < left[:, None] + box_width)  # (count, W)
    return in_rows[:, :, None] & in_columns[:, None, :]


def cutout(x: torch.Tensor, size: float, generator: torch.Generator) -> torch.Tensor:
    """Zero one square per image in every channel (DeVries & Taylor, "Improved regularization of convolutional
    neural networks with cutout", 2017).

    The square's side is round(size·H) rows by round(size·W) columns; its centre pixel is uniform over the
    image, so near the border the square is clipped to the image.

    Args:
        x: float (B, C, H, W) in [0, 1].
        size: side as a fraction of the image side, in (0, 1]; 0.5 is their 16 px on 32 px CIFAR images.
        generator: CPU generator; draws B centre rows then B centre columns.

    Returns:
        float (B, C, H, W) on the device of x, equal to x outside the squares.
    """
    check_images(x, allow_empty=True)
    if not (_is_number(size) and 0 < size <= 1):
        raise InvalidInputError(f"cutout size: must be a number in (0, 1], got {size!r}")
    batch, _, height, width = x.shape
    masks = _random_boxes(
        batch, height, width, round(size * height), round(size * width), generator, x.device
    )
    return x.masked_fill(masks[:, None], 0)


def beta_sample(alpha: float, generator: torch.Generator) -> float:
    """One draw of λ ~ Beta(α, α), from ``generator`` alone.

    λ = G₁ / (G₁ + G₂) with G₁, G₂ ~ Gamma(α, 1) independent. Each Gamma comes from Marsaglia & Tsang's
    rejection method (ACM TOMS 2000) driven by ``torch.randn``/``torch.rand`` draws from the generator (a
    a variable number: each try is accepted with probability ≥ 0.95), with the boost Gamma(α) = Gamma(α + 1)·U^(1/α) for α < 1. The ratio
    is formed from the Gammas' logarithms, so that a small α (where U^(1/α) underflows) still gives a λ in
    [0, 1] rather than 0/0.

    Args:
        alpha: α > 0.
        generator: CPU generator.

    Returns:
        λ in [0, 1].
    """
    if not (_is_number(alpha) and alpha > 0):
        raise InvalidInputError(f"Beta alpha: must be a finite number > 0, got {alpha!r}")

    def uniform() -> float:  # in (0, 1]
        return 1.0 - torch.rand((), generator=generator, dtype=torch.float64).item()

    def log_gamma(shape: float) -> float:
        log_boost = 0.0
        if shape < 1:
            log_boost = math.log(uniform()) / shape
            shape += 1
        d = shape - 1 / 3
        c = 1 / math.sqrt(9 * d)
        while True:
            z = torch.randn((), generator=generator, dtype=torch.float64).item()
            v = (1 + c * z) ** 3
            if v > 0 and math.log(uniform()) < 0.5 * z * z + d - d * v + d * math.log(v):
                return math.log(d * v) + log_boost

    first, second = log_gamma(alpha), log_gamma(alpha)
    return 1 / (1 + math.exp(min(second - first, 700.0)))


def draw_mixing(batch_size: int, alpha: float, generator: torch.Generator) -> tuple[float, torch.Tensor]:
    """The random choices of :func:`mixup` and :func:`cutmix`, in the order they make them.

    Args:
        batch_size: B.
        alpha: α of λ ~ Beta(α, α).
        generator: CPU generator; draws λ with :func:`beta_sample`, then the permutation.

    Returns:
        (λ in [0, 1], permutation int64 (B,) on the CPU): image i is mixed with image permutation[i].
    """
    lam = beta_sample(alpha, generator)
    return lam, torch.randperm(batch_size, generator=generator)


def _soft_targets(
    targets: torch.Tensor, num_classes: int, batch_size: int, dtype: torch.dtype
) -> torch.Tensor:
    """Class probabilities (B, num_classes) from int labels (B,) (one-hot) or from probabilities."""
    if not _is_int(num_classes) or num_classes < 1:
        raise InvalidInputError(f"num_classes: must be an integer >= 1, got {num_classes!r}")
    if targets.ndim == 1 and not targets.is_floating_point() and len(targets) == batch_size:
        if len(targets) and (targets.min() < 0 or targets.max() >= num_classes):
            raise InvalidInputError(
                f"targets: labels must be in [0, {num_classes}), got range [{targets.min()}, {targets.max()}]"
            )
        return F.one_hot(targets, num_classes).to(dtype)
    if targets.shape == (batch_size, num_classes) and targets.is_floating_point():
        return targets.to(dtype)
    raise InvalidInputError(
        f"targets: must be int labels ({batch_size},) or float class probabilities ({batch_size}, {num_classes}), "
        f"got {targets.dtype} {tuple(targets.shape)}"
    )


def mixup(
    x: torch.Tensor, targets: torch.Tensor, num_classes: int, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al., "mixup: Beyond empirical risk minimization", ICLR 2018), one λ per batch.

    With (λ, π) from :func:`draw_mixing`: x'ᵢ = λ·xᵢ + (1 − λ)·x_π(i) and t'ᵢ = λ·tᵢ + (1 − λ)·t_π(i), t being
    the one-hot labels or the given class probabilities.

    Args:
        x: float (B, C, H, W) in [0, 1].
        targets: int64 labels (B,) in [0, num_classes), or float class probabilities (B, num_classes).
        num_classes: number of classes K.
        alpha: α of λ ~ Beta(α, α), > 0 (1 in the paper's CIFAR-10 runs).
        generator: CPU generator.

    Returns:
        (x' float (B, C, H, W) in [0, 1], t' float (B, K) class probabilities whose rows sum to 1), in the
        dtype and on the device of x.
    """
    check_images(x, allow_empty=True)
    soft = _soft_targets(targets, num_classes, len(x), x.dtype)
    lam, permutation = draw_mixing(len(x), alpha, generator)
    permutation = permutation.to(x.device)
    return lam * x + (1 - lam) * x[permutation], lam * soft + (1 - lam) * soft[permutation]


def cutmix(
    x: torch.Tensor, targets: torch.Tensor, num_classes: int, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al., "CutMix: Regularization strategy to train strong classifiers with localizable
    features", ICCV 2019), one λ and one box per batch as in their code.

    With (λ, π) from :func:`draw_mixing`, a box of int(H·√(1 − λ)) × int(W·√(1 − λ)) pixels, centred on a
    uniformly drawn pixel and clipped at the border, is pasted from image π(i) into image i; the targets are
    mixed with the area actually kept, λ' = 1 − (box area after clipping) / (H·W):
    t'ᵢ = λ'·tᵢ + (1 − λ')·t_π(i).

    Args:
        x: float (B, C, H, W) in [0, 1].
        targets: int64 labels (B,) in [0, num_classes), or float class probabilities (B, num_classes).
        num_classes: number of classes K.
        alpha: α of λ ~ Beta(α, α), > 0 (1 in the paper).
        generator: CPU generator; after :func:`draw_mixing`, draws the box centre's row then its column.

    Returns:
        (x' float (B, C, H, W) in [0, 1], t' float (B, K) class probabilities whose rows sum to 1), in the
        dtype and on the device of x.
    """
    check_images(x, allow_empty=True)
    soft = _soft_targets(targets, num_classes, len(x), x.dtype)
    lam, permutation = draw_mixing(len(x), alpha, generator)
    permutation = permutation.to(x.device)
    _, _, height, width = x.shape
    side = math.sqrt(1 - lam)
    box = _random_boxes(1, height, width, int(height * side), int(width * side), generator, x.device)[0]
    kept = 1 - box.sum().item() / (height * width)
    mixed = torch.where(box, x[permutation], x)
    return mixed, kept * soft + (1 - kept) * soft[permutation]


def purification(config: DefenceConfig) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The purifications of ``config`` (grayscale → jpeg → bitdepth), applied once to every training and test
    image before training (see the module docstring).

    Deterministic: x float (B, C, H, W) in [0, 1] → float (B, C, H, W) in [0, 1]. None if ``config`` names no
    purification.
    """
    steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
    if "grayscale" in config.names:
        steps.append(grayscale)
    if "jpeg" in config.names:
        steps.append(partial(jpeg, quality=config.jpeg_quality))
    if "bitdepth" in config.names:
        steps.append(partial(bit_depth_reduction, bits=config.bit_depth))
    if not steps:
        return None

    def purify(x: torch.Tensor) -> torch.Tensor:
        for step in steps:
            x = step(x)
        return x

    return purify


def train_transform(config: DefenceConfig, num_classes: int) -> BatchTransform | None:
    """The per-batch defence for :func:`ue_core.training.fit`'s ``batch_transform``.

    Applies cutout, then mixup or cutmix (those named). The purifications are not part of it: they apply
    once to the stored images (:func:`purification`). Nor is adversarial training: pass
    :func:`adversarial_training` as ``fit``'s ``adversarial``; nor UEraser: pass :func:`training_loss` as
    ``fit``'s ``training_loss``.

    Args:
        config: the defences and their parameters.
        num_classes: K, the width of the soft targets mixup and cutmix return.

    Returns:
        (x, targets, generator) → (x, targets): x float (B, C, H, W) in [0, 1]; targets int64 (B,) unchanged,
        or float (B, K) probabilities after mixup/cutmix. None if ``config`` names no such defence.
    """
    if not _is_int(num_classes) or num_classes < 1:
        raise InvalidInputError(f"num_classes: must be an integer >= 1, got {num_classes!r}")
    use_cutout = "cutout" in config.names
    mix = None
    if "mixup" in config.names:
        mix = partial(mixup, num_classes=num_classes, alpha=config.mixup_alpha)
    elif "cutmix" in config.names:
        mix = partial(cutmix, num_classes=num_classes, alpha=config.cutmix_alpha)
    if not use_cutout and mix is None:
        return None

    def transform(
        x: torch.Tensor, targets: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if use_cutout:
            x = cutout(x, config.cutout_size, generator)
        if mix is not None:
            x, targets = mix(x, targets, generator=generator)
        return x, targets

    return transform


def adversarial_training(config: DefenceConfig) -> PGDConfig | None:
    """``config.pgd`` if "adversarial" is among ``config.names`` (for ``fit``'s ``adversarial``), else None."""
    return config.pgd if "adversarial" in config.names else None


def training_loss(config: DefenceConfig, epochs: int) -> TrainingLoss | None:
    """UEraser's loss for ``fit``'s ``training_loss`` if "ueraser" is among ``config.names``, else None.

    Args:
        config: the defences; ``config.ueraser`` says how many copies each epoch trains on.
        epochs: the run's epochs (the recipe's), which the standard setting's schedule depends on.
    """
    return ueraser_training_loss(config.ueraser, epochs) if "ueraser" in config.names else None
