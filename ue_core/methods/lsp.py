"""Linearly separable perturbations (LSP), the model-free baseline of synthetic patch noise, an L2 budget.

Paper: "Availability Attacks Create Shortcuts", Yu, Zhang, Chen, Yin & Liu, KDD 2022 (reference code:
github.com/dayu11/Availability-Attacks-Create-Shortcuts, synthetic_perturbations/; APBench ships the same
generator). Each image gets a point of a synthetic, linearly separable classification problem whose classes
are the dataset's classes, blown up into a coarse grid of constant patches and scaled onto a small L2
sphere; a victim learns the separable noise instead of the images.

    grid      g_h × g_w = ⌈H / p⌉ × ⌈W / p⌉ patches of p × p pixels, d = C · g_h · g_w features
    classes   μ_k = class_sep · s_k, s_k ∈ {−1, +1}^d distinct random vertices of the hypercube     (k < K)
              A_k ∈ [−1, 1]^(d×d) uniform, one per class                                (a random covariance)
    image i   z_i ~ N(0, I_d),  v_i = μ_{y_i} + z_i A_{y_i}                        (a sample of its class)
              u_i = v_i, each feature repeated over its p × p patch, cropped to H × W (the last row and
                    column of patches narrower when p does not divide H or W)
              δ_i = eps · u_i / ‖u_i‖₂                                             (every ‖δ_i‖₂ = eps)

This is scikit-learn's ``make_classification`` with the reference's arguments (one cluster per class,
informative features only, class_sep 10, no label noise), written out: its random feature permutation and
sample shuffle change nothing in distribution and are left out. Sample-wise, as the reference: every image
of a class draws its own point around the class's vertex μ_k, so images of a class share the centroid
direction, not δ (the within-class spread has a standard deviation of √(d/3) per feature, against a
centroid coordinate of ±class_sep). The points are drawn in index order, so δ depends on the seed, the
images' indices and labels, and not on the rows' order. Classes need K ≤ 2^d distinct vertices.

The budget is L2 only (``norms``): the reference scales each image's δ onto the L2 sphere of radius
ε_rms · √(H·W·C), its ``--eps`` (6, i.e. ε_rms = 6/255) being the root-mean-square per pixel, not a bound on
any pixel: δ's patch values are Gaussian, and an image's largest is about 1.4 ε_rms on Fashion-MNIST and
1.8 ε_rms on CIFAR-10 shapes at the defaults (measured, seed 0). An L∞ budget would clip or rescale those
values into a different perturbation, and is refused. The project's default budget is L∞, so ``--method lsp``
needs ``--set budget.norm=l2 --eps …`` (a one-line error otherwise, as OPS needs its L0 budget). Here
``budget.eps`` is the L2 radius itself, in image units:

    CIFAR-10, 32×32×3, p = 8        4×4 patches, d = 48;  ε_rms = 6/255 ⇔ eps = 6/255 · √3072 ≈ 1.3041
    Fashion-MNIST, 28×28×1, p = 8   4×4 patches, d = 16, the last row and column 4 pixels wide (28 = 3·8 + 4);
                                    ε_rms = 6/255 ⇔ eps = 6/255 · 28 = 168/255 ≈ 0.6588 (p = 7 tiles it exactly)

As in the reference, x + δ is clipped to [0, 1] only in the release (which rounds to uint8 and keeps
‖q − x‖₂ ≤ 255 eps, ue_core.pga.quantise_release); δ here is the unclipped perturbation. Unlike the
reference, which draws an equal number of points per class and so fails on unbalanced classes, every image
draws its own; and the reference's feature count int((32/p)² · 3) is written for 32×32×3 images (it breaks
on 28×28 with p = 8), where the grid here is ⌈H/p⌉ × ⌈W/p⌉ × C for any image shape. Shapes: images and δ
float32 (N, C, H, W); the latent points float64 (N, d), features in (channel, patch row, patch column) order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ue_core.data.dataset import ImageDataset
from ue_core.errors import InvalidInputError
from ue_core.methods.base import ProtectionMethod, ProtectionResult
from ue_core.pga import Budget


@dataclass(frozen=True)
class LSPConfig:
    """Linearly separable perturbations.

    Attributes:
        seed: seeds the class vertices, the mixing matrices and every image's point.
        patch_size: p, the side of the constant patches in pixels (the reference's ``--patchsize``, 8).
        class_sep: the vertices' distance from the origin per feature (the reference's 10): larger makes the
            classes' clouds lie further apart relative to their spread.
    """

    seed: int = 0
    patch_size: int = 8
    class_sep: float = 10.0

    def __post_init__(self) -> None:
        if self.patch_size < 1:
            raise InvalidInputError(f"lsp patch_size: must be >= 1, got {self.patch_size}")
        if not 0 < self.class_sep < math.inf:
            raise InvalidInputError(f"lsp class_sep: must be > 0, got {self.class_sep}")


def patch_grid(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """(g_h, g_w): the patches covering an H × W image, the last row and column cropped when p does not
    divide H or W."""
    return -(-height // patch_size), -(-width // patch_size)


def class_vertices(num_classes: int, features: int, generator: torch.Generator) -> torch.Tensor:
    """K distinct random vertices of {−1, +1}^d, float64 (K, d), drawn one by one (a repeat is redrawn).

    Raises:
        InvalidInputError: when K > 2^d (too few patches for the classes).
    """
    if num_classes > 2**features:
        raise InvalidInputError(
            f"lsp: {num_classes} classes need more than {features} features (2^{features} vertices); "
            "use a smaller patch_size"
        )
    vertices: list[torch.Tensor] = []
    while len(vertices) < num_classes:
        vertex = torch.randint(0, 2, (features,), generator=generator)
        if not any(torch.equal(vertex, chosen) for chosen in vertices):
            vertices.append(vertex)
    return torch.stack(vertices).double().mul_(2).sub_(1) if vertices else torch.zeros(0, features).double()


def separable_points(
    labels: torch.Tensor, num_classes: int, features: int, config: LSPConfig
) -> torch.Tensor:
    """Every image's point of the synthetic problem (see the module docstring), in the order of ``labels``.

    Args:
        labels: int64 (N,) in [0, K), in the order the points are drawn (the caller's index order).
        num_classes: K.
        features: d.
        config: seed and class_sep.

    Returns:
        float64 (N, d): v_i = class_sep · s_{y_i} + z_i A_{y_i}.
    """
    generator = torch.Generator().manual_seed(config.seed)
    centroids = class_vertices(num_classes, features, generator) * config.class_sep
    mixing = torch.rand(num_classes, features, features, generator=generator, dtype=torch.float64) * 2 - 1
    points = torch.randn(len(labels), features, generator=generator, dtype=torch.float64)
    for label in range(num_classes):
        members = labels == label
        points[members] = points[members] @ mixing[label] + centroids[label]
    return points


def patches_to_images(points: torch.Tensor, shape: tuple[int, int, int], patch_size: int) -> torch.Tensor:
    """Points float (N, C·g_h·g_w) as images (N, C, H, W): each feature repeated over its patch, cropped.

    ``shape`` is (C, H, W)."""
    channels, height, width = shape
    rows, columns = patch_grid(height, width, patch_size)
    grid = points.reshape(len(points), channels, rows, columns)
    full = grid.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)
    return full[:, :, :height, :width]


class LinearlySeparablePerturbation(ProtectionMethod):
    """Synthetic, linearly separable patch noise per image, scaled onto the L2 sphere of radius eps. See the
    module docstring."""

    name = "lsp"
    norms = ("l2",)

    def __init__(self, budget: Budget, config: LSPConfig = LSPConfig(), device: str = "cpu") -> None:
        """``budget`` must be L2 (eps: every δ's L2 norm, in image units); ``config`` the seed and the
        patches; ``device`` is stored for the shared signature (the noise is drawn on the CPU)."""
        super().__init__(budget, device)
        self.config = config

    def perturb(self, dataset: ImageDataset, progress: bool = False) -> ProtectionResult:
        """δ_i = eps · u_i / ‖u_i‖₂ for every image. Summary: rms_levels, the root-mean-square of δ per pixel
        in uint8 levels (the reference's ``--eps``: 255 eps / √(H·W·C)), and peak_levels, the mean over images
        of max |δ| in levels (before clipping and rounding)."""
        height, width, channels = dataset.image_shape
        rows, columns = patch_grid(height, width, self.config.patch_size)
        order = torch.from_numpy(dataset.index).argsort(stable=True)  # draw in index order
        labels = torch.from_numpy(dataset.labels)
        points = separable_points(labels[order], dataset.num_classes, channels * rows * columns, self.config)
        pattern = patches_to_images(points.float(), (channels, height, width), self.config.patch_size)
        norms = pattern.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(-1, 1, 1, 1)
        delta = torch.empty_like(pattern)
        delta[order] = pattern * (self.budget.eps / norms)
        summary = {
            "rms_levels": 255 * self.budget.eps / math.sqrt(height * width * channels),
            "peak_levels": 255 * float(delta.flatten(1).abs().amax(dim=1).mean()) if len(delta) else 0.0,
        }
        return ProtectionResult(release=dataset, delta=delta, summary=summary)
