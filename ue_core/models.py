"""Surrogate and victim zoo: torchvision architectures with small-image stems, and a small CNN for CPU work.

torchvision is imported by the builders that use it, not by this module: every Ray worker that loads a
small CNN would otherwise pay its import (~1.5 s of CPU here, mostly ``torchvision.ops``).

Every model is a :class:`Classifier`: ``features(x)`` gives the penultimate features (N, D) after global
pooling, and ``forward(x) = head(features(x))`` gives logits (N, num_classes), ``head`` being one linear layer.

Inputs are float (N, C, H, W) in [0, 1], any channel count C, any size H, W >= 28 (all models end in global
average pooling, so the architecture does not depend on the image size). No per-channel normalisation happens
inside the models: every model has batch norm right after its first convolution, which absorbs the input's
scale and offset, and the pixel-space budget of an attack stays in the units of the released images.

Small-image stems (the common CIFAR variants): the first convolution is 3×3, stride 1, with ``in_channels``
inputs, and there is no max-pool in the stem. VGG-19 (with batch norm) drops its last max-pool, so that a 28 px
image still has a 1×1 map at the end, and pools globally to a 512-d feature. MobileNetV2 also runs its first
stride-2 stage at stride 1. The classifier heads are a single linear layer for every model (no dropout, no
VGG 4096-wide layers). Weights are random: nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ue_core.errors import InvalidInputError

MIN_IMAGE_SIZE = 28
SMALL_CNN_WIDTH = 32


class Classifier(nn.Module):
    """A feature extractor ``body`` followed by a linear ``head``.

    Attributes:
        body: module mapping images (N, C, H, W) float in [0, 1] to features (N, feature_dim).
        head: ``nn.Linear(feature_dim, num_classes)``.
        feature_dim: D, the width of the penultimate features.
        num_classes: number of output logits.
    """

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.num_classes = num_classes

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, feature_dim) of images x, float (N, C, H, W) in [0, 1]."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of images x, float (N, C, H, W) in [0, 1]."""
        return self.head(self.features(x))


def _he_init_convs(module: nn.Module) -> None:
    """He-initialise every convolution in ``module`` (fan-out, zero bias), as torchvision's VGG and ResNet do."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def _stem_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    """3×3 stride-1 convolution without bias (a batch norm follows), He-initialised."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    _he_init_convs(conv)
    return conv


def _resnet(depth: int, in_channels: int, num_classes: int) -> Classifier:
    from torchvision import models

    net = getattr(models, f"resnet{depth}")(weights=None)
    body = nn.Sequential(
        _stem_conv(in_channels, net.conv1.out_channels),
        net.bn1,
        net.relu,
        net.layer1,
        net.layer2,
        net.layer3,
        net.layer4,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return Classifier(body, net.fc.in_features, num_classes)


def _vgg19(in_channels: int, num_classes: int) -> Classifier:
    # torchvision's VGG-19-BN convolutional part ("E"), built alone: its 4096-wide classifier is never used.
    from torchvision.models.vgg import cfgs as vgg_configs
    from torchvision.models.vgg import make_layers as make_vgg_layers

    conv_layers = make_vgg_layers(vgg_configs["E"], batch_norm=True)
    conv_layers[0] = nn.Conv2d(in_channels, conv_layers[0].out_channels, kernel_size=3, padding=1)
    _he_init_convs(conv_layers)
    body = nn.Sequential(*conv_layers[:-1], nn.AdaptiveAvgPool2d(1), nn.Flatten())  # [:-1]: last max-pool
    return Classifier(body, 512, num_classes)


def _densenet121(in_channels: int, num_classes: int) -> Classifier:
    from torchvision import models

    net = models.densenet121(weights=None)
    net.features.conv0 = _stem_conv(in_channels, net.features.conv0.out_channels)
    net.features.pool0 = nn.Identity()
    body = nn.Sequential(net.features, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(body, net.classifier.in_features, num_classes)


# torchvision's MobileNetV2 setting (expansion t, channels c, repeats n, stride s) with the second stage at
# stride 1, as in the common CIFAR variant.
_MOBILENETV2_SMALL_IMAGE_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 1],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


def _mobilenetv2(in_channels: int, num_classes: int) -> Classifier:
    from torchvision import models
    from torchvision.ops.misc import Conv2dNormActivation

    net = models.mobilenet_v2(weights=None, inverted_residual_setting=_MOBILENETV2_SMALL_IMAGE_SETTING)
    stem_channels = net.features[0].out_channels
    net.features[0] = Conv2dNormActivation(
        in_channels, stem_channels, kernel_size=3, stride=1, activation_layer=nn.ReLU6
    )
    _he_init_convs(net.features[0])
    body = nn.Sequential(net.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(body, net.last_channel, num_classes)


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def _small_cnn(in_channels: int, num_classes: int, width: int) -> Classifier:
    """Four 3×3 conv-BN-ReLU layers of widths w, 2w, 4w, 8w; 2×2 max-pools after the first three.

    With w = 32: 0.39 M parameters, a 256-d feature, about 10 M multiply-adds per 28 px image (the pools
    come before the wide layers), so it trains at roughly 1,500 images/s on 2 CPU cores.
    """
    body = nn.Sequential(
        *_conv_bn_relu(in_channels, width),
        nn.MaxPool2d(2),
        *_conv_bn_relu(width, 2 * width),
        nn.MaxPool2d(2),
        *_conv_bn_relu(2 * width, 4 * width),
        nn.MaxPool2d(2),
        *_conv_bn_relu(4 * width, 8 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    _he_init_convs(body)
    return Classifier(body, 8 * width, num_classes)


_BUILDERS: dict[str, Callable[[int, int], Classifier]] = {
    "resnet18": lambda in_channels, num_classes: _resnet(18, in_channels, num_classes),
    "resnet34": lambda in_channels, num_classes: _resnet(34, in_channels, num_classes),
    "vgg19": _vgg19,
    "densenet121": _densenet121,
    "mobilenetv2": _mobilenetv2,
}

MODEL_NAMES: tuple[str, ...] = (*_BUILDERS, "small_cnn")


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    *,
    width: int | None = None,
    seed: int | None = None,
) -> Classifier:
    """A freshly initialised classifier from the zoo.

    Args:
        name: one of :data:`MODEL_NAMES`.
        num_classes: number of classes (>= 1).
        in_channels: image channels C (>= 1), e.g. 1 for Fashion-MNIST, 3 for CIFAR.
        image_size: the smaller side of the input images in pixels; validated only (>= 28), since every
            model pools globally.
        width: base width w of "small_cnn" (default 64, about 1 M parameters); an error for other models.
        seed: if given, the initial weights depend on this seed alone and the global RNG is left untouched;
            if None, the global torch RNG draws them.

    Raises:
        InvalidInputError: on an unknown name or an out-of-range argument.
    """
    if name not in MODEL_NAMES:
        raise InvalidInputError(f"model name: unknown {name!r}; known names: {', '.join(MODEL_NAMES)}")
    for argument, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if value < 1:
            raise InvalidInputError(f"{argument}: must be >= 1, got {value}")
    if image_size < MIN_IMAGE_SIZE:
        raise InvalidInputError(f"image_size: must be >= {MIN_IMAGE_SIZE} px, got {image_size}")
    if width is not None and name != "small_cnn":
        raise InvalidInputError(f"width: only small_cnn has a configurable width, not {name!r}")
    if width is not None and width < 1:
        raise InvalidInputError(f"width: must be >= 1, got {width}")
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        if name == "small_cnn":
            return _small_cnn(in_channels, num_classes, SMALL_CNN_WIDTH if width is None else width)
        return _BUILDERS[name](in_channels, num_classes)
