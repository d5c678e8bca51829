"""Leave-one-out kernel estimate of the Bayes error and its exact gradient (docs/method.md §2).

Given features z (N, D) and labels y (N,) with C classes:

    K_ij = exp(-||z_i - z_j||² / (2σ²)) for j ≠ i, K_ii = 0
    Z_i  = Σ_j K_ij + 1e-8,   P_ic = Σ_j K_ij 1[y_j = c] / Z_i
    ŷ_i  = argmax_c P_ic,     e_i = 1 - P_iŷ_i,     β̂ = mean_i e_i

The gradient holds ŷ fixed (argmax is piecewise constant). With N_i = Σ_j K_ij 1[y_j = ŷ_i],
W_ij = K_ij (1[y_j = ŷ_i] Z_i - N_i) / Z_i² and M = W + Wᵀ:

    ∂β̂/∂z = (diag(M 1) z - M z) / (N σ²)

Objectives. "bayes_error" (the method) ascends β̂. "target" (ours: consistent wrong-class evidence) ascends
the mean kernel posterior of one fixed other class per sample, t_i = (y_i + shift) mod C: the same formulas
with ŷ_i replaced by t_i, and the gradient of (1/N) Σ_i P_it_i = −∂/∂z (1/N) Σ_i (1 − P_it_i). The stats always
also hold max_c Σ_j K_ij 1[y_j = c], so β̂ is reported whatever the objective.

Everything works on row blocks against a feature *bank*, so a sharded caller can compute it exactly in
two passes: :func:`block_stats` (four numbers per sample) and then :func:`block_gradient` (which needs
every bank sample's stats). Inside, rows are processed in chunks sized from a memory budget, so the
extra memory is O(chunk × N), never N × N × D. :func:`estimate` runs the whole thing in one process
and offers the cheaper "batch" and "reference" estimators.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ue_core.errors import InvalidInputError

EPS_Z = 1e-8
"""Added to every kernel row sum Z_i, as in the authors' code."""

DEFAULT_MEMORY_BUDGET = 512 * 2**20
"""Bytes of temporaries a block computation may use (about four chunk × N matrices)."""

Estimator = Literal["exact", "batch", "reference"]
ESTIMATORS: tuple[str, ...] = ("exact", "batch", "reference")
Objective = Literal["bayes_error", "target"]
OBJECTIVES: tuple[str, ...] = ("bayes_error", "target")

MAX_UNSUPPORTED_FRACTION = 0.01
"""Above this fraction of samples whose every kernel weight underflowed, the estimate is refused."""


@dataclass(frozen=True)
class KernelStats:
    """Per-sample statistics of the kernel posterior, each of shape (B,).

    Attributes:
        row_sum: Z_i = Σ_j K_ij + 1e-8.
        predicted_mass: N_i = Σ_j K_ij 1[y_j = r_i], the mass of the class the objective reads.
        predicted: r_i, int64: ŷ_i = argmax_c P_ic for the "bayes_error" objective, the target t_i for "target".
        top_mass: max_c Σ_j K_ij 1[y_j = c], for β̂ (equal to predicted_mass under "bayes_error").
    """

    row_sum: torch.Tensor
    predicted_mass: torch.Tensor
    predicted: torch.Tensor
    top_mass: torch.Tensor

    @property
    def errors(self) -> torch.Tensor:
        """Per-sample Bayes-error estimate e_i = 1 - max_c P_ic, shape (B,), whatever the objective."""
        return 1.0 - self.top_mass / self.row_sum

    def to_arrays(self) -> tuple:
        """The four fields as numpy arrays, for callers that ship stats between processes."""
        return tuple(getattr(self, name).numpy() for name in STATS_FIELDS)

    @staticmethod
    def from_arrays(arrays) -> KernelStats:
        """Inverse of :meth:`to_arrays` (the arrays may be concatenations of several blocks'); copies, since
        arrays read back from a shared object store are read-only."""
        return KernelStats(*(torch.tensor(a) for a in arrays))

    @staticmethod
    def concat(parts: list[KernelStats]) -> KernelStats:
        """Stack the stats of consecutive blocks."""
        return KernelStats(*(torch.cat([getattr(p, name) for p in parts]) for name in STATS_FIELDS))

    def to(self, device: torch.device | str) -> KernelStats:
        """The same stats on ``device``."""
        return KernelStats(*(getattr(self, name).to(device) for name in STATS_FIELDS))

    def take(self, rows: torch.Tensor) -> KernelStats:
        """The stats of the samples at positions ``rows``."""
        return KernelStats(*(getattr(self, name)[rows] for name in STATS_FIELDS))


STATS_FIELDS = ("row_sum", "predicted_mass", "predicted", "top_mass")


def target_classes(
    labels: torch.Tensor, num_classes: int, shift: int = 1, class_map: Sequence[int] = ()
) -> torch.Tensor:
    """The "target" objective's class of each sample, int64 (N,) like ``labels``: t_i = class_map[y_i] when a
    class map is given (:func:`check_class_map`), else t_i = (y_i + shift) mod C."""
    if class_map:
        check_class_map(class_map, num_classes)
        return torch.as_tensor(list(class_map), dtype=labels.dtype, device=labels.device)[labels]
    if not 1 <= shift < num_classes:
        raise InvalidInputError(f"target shift must be in [1, {num_classes - 1}] for {num_classes} classes, got {shift}")
    return (labels + shift) % num_classes


def check_class_map(class_map: Sequence[int], num_classes: int) -> None:
    """Refuse a class map that is not one wrong class per class: C entries, entry c in [0, C) and not c."""
    wrong = len(class_map) != num_classes or any(not 0 <= t < num_classes or t == c for c, t in enumerate(class_map))
    if wrong:
        raise InvalidInputError(
            f"target map must give each of the {num_classes} classes another class in [0, {num_classes - 1}] "
            f"(entry c not c), got {list(class_map)}"
        )


def check_support(stats: KernelStats, sigma: float) -> None:
    """Refuse an estimate in which too many samples have no kernel partner with a non-zero weight.

    With σ far below the nearest-neighbour distances every exp(−d²/2σ²) underflows: such a sample's
    posterior is undefined (its e_i would read 1 and its gradient 0), so a β̂ made of them is not an estimate.
    """
    unsupported = int((stats.row_sum <= EPS_Z).sum())
    if unsupported > MAX_UNSUPPORTED_FRACTION * len(stats.row_sum):
        raise InvalidInputError(
            f"estimator sigma {sigma:g} is too small for these features: {unsupported} of {len(stats.row_sum)} "
            "samples have no kernel partner with a non-zero weight; use a larger estimator.sigma or "
            "estimator.bandwidth: nearest-neighbour"
        )


def nearest_neighbour_sigma(
    features: torch.Tensor, scale: float, queries: int = 2048, generator: torch.Generator | None = None
) -> float:
    """A bandwidth from the data: σ = ``scale`` × the median nearest-neighbour distance.

    The median is taken over at most ``queries`` samples drawn with ``generator``, each against every other
    sample of ``features`` (N, D); the cost is queries × N × D multiply-adds. On max-normalised features of a
    3-epoch small CNN (2,000 Fashion-MNIST images) the median is about 0.4, so ``scale`` 0.75 gives the
    fixed default σ = 0.3 there, and the kernel stays a soft few-nearest-neighbour posterior wherever the
    features move.
    """
    if not scale > 0:
        raise InvalidInputError(f"bandwidth scale must be > 0, got {scale}")
    total = len(features)
    if total < 2:
        raise InvalidInputError(f"a nearest-neighbour bandwidth needs at least 2 samples, got {total}")
    chosen = torch.randperm(total, generator=generator)[: min(queries, total)]
    bank = features.double()
    nearest = []
    for part in chosen.split(256):  # 256 × N distances at a time
        distances = torch.cdist(bank[part], bank)
        distances[torch.arange(len(part)), part] = torch.inf
        nearest.append(distances.min(dim=1).values)
    return float(scale * torch.cat(nearest).median())


@dataclass(frozen=True)
class Estimate:
    """Result of :func:`estimate`.

    Attributes:
        value: β̂, a 0-d tensor.
        errors: e_i, shape (N,).
        gradient: ∂β̂/∂z, shape (N, D), or None when not asked for.
    """

    value: torch.Tensor
    errors: torch.Tensor
    gradient: torch.Tensor | None


def normalise_features(features: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Scale raw penultimate features φ (N, D) by s = max |φ| + 1e-8; returns (z = φ / s, s).

    s is a constant of the round: the gradient with respect to φ is ∂β̂/∂z / s.
    """
    scale = float(features.abs().max()) + 1e-8
    return features / scale, scale


def chunk_rows(bank_size: int, dtype: torch.dtype, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Rows per chunk so that the two chunk × bank_size work matrices fit in ``memory_budget`` bytes."""
    bytes_per_row = 2 * bank_size * torch.finfo(dtype).bits // 8
    return max(1, min(bank_size, memory_budget // max(1, bytes_per_row)))


class _BankKernel:
    """The kernel against a fixed bank, one row chunk at a time, into a buffer reused across chunks.

    The scaled squared distance -(‖a‖² + ‖b‖² - 2abᵀ) / (2σ²) is a single GEMM of the augmented features
    [a, ‖a‖², 1] · [-2b, 1, ‖b‖²]ᵀ / (2σ²) → clamp at 0 distance → exp, all in place. Reusing the buffers
    matters: a fresh chunk × N tensor per chunk costs more in page faults than the arithmetic on it.
    """

    def __init__(self, bank: torch.Tensor, sigma: float, memory_budget: int) -> None:
        ones = bank.new_ones(len(bank), 1)
        self.bank = bank
        self.right = torch.cat([-2.0 * bank, ones, bank.square().sum(1, keepdim=True)], 1)  # (N, D+2)
        self.scale = -0.5 / sigma**2
        self.chunk = chunk_rows(len(bank), bank.dtype, memory_budget)
        self._kernel = bank.new_empty(0)
        self._work = bank.new_empty(0)

    def buffers(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two (rows, N) work matrices, allocated once at the largest size asked for."""
        if self._kernel.shape[0] < rows:
            self._kernel = self.bank.new_empty(rows, len(self.bank))
            self._work = self.bank.new_empty(rows, len(self.bank))
        return self._kernel[:rows], self._work[:rows]

    def rows(self, rows: torch.Tensor, self_positions: torch.Tensor | None) -> torch.Tensor:
        """K of ``rows`` (b, D) against the bank, (b, N), leave-one-out masked; a view of the buffer."""
        kernel, _ = self.buffers(len(rows))
        left = torch.cat([rows, rows.square().sum(1, keepdim=True), rows.new_ones(len(rows), 1)], 1)
        torch.mm(left.mul_(self.scale), self.right.T, out=kernel)
        kernel.clamp_(max=0.0).exp_()
        if self_positions is not None:  # (b,) or (b, k): every listed position of a row is masked
            positions = self_positions.reshape(len(rows), -1)
            for column in positions.T:
                inside = (column >= 0).nonzero().squeeze(1)
                kernel[inside, column[inside]] = 0.0
        return kernel

    def chunks(self, rows: torch.Tensor, self_positions: torch.Tensor | None):
        """Yield (start, stop, kernel rows) over ``rows`` in chunks of at most ``self.chunk``."""
        for start in range(0, len(rows), self.chunk):
            stop = start + self.chunk
            positions = None if self_positions is None else self_positions[start:stop]
            yield start, min(stop, len(rows)), self.rows(rows[start:stop], positions)


def kernel_block(
    rows: torch.Tensor, bank: torch.Tensor, sigma: float, self_positions: torch.Tensor | None = None
) -> torch.Tensor:
    """RBF kernel of ``rows`` (B, D) against ``bank`` (N, D), shape (B, N).

    ``self_positions`` (B,) gives the position of each row in the bank (-1 if it is not in it), or (B, k)
    several positions per row; those entries are zeroed (leave-one-out).
    """
    _check_inputs(rows, bank, sigma)
    return _BankKernel(bank, sigma, memory_budget=2**62).rows(rows, self_positions).clone()


def _check_inputs(rows: torch.Tensor, bank: torch.Tensor, sigma: float, bank_labels=None) -> None:
    if rows.ndim != 2 or bank.ndim != 2 or rows.shape[1] != bank.shape[1]:
        raise InvalidInputError(
            f"features must be (B, D) and (N, D) with the same D, got {tuple(rows.shape)} and {tuple(bank.shape)}"
        )
    if bank_labels is not None and bank_labels.shape != (bank.shape[0],):
        raise InvalidInputError(f"bank labels must have shape ({bank.shape[0]},), got {tuple(bank_labels.shape)}")
    if not sigma > 0:
        raise InvalidInputError(f"sigma must be > 0, got {sigma}")


def block_stats(
    rows: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    sigma: float,
    self_positions: torch.Tensor | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    row_targets: torch.Tensor | None = None,
) -> KernelStats:
    """Pass 1: the kernel-posterior stats of a block of rows against a feature bank.

    Args:
        rows: features of the block, (B, D).
        bank: features of every kernel partner, (N, D).
        bank_labels: int64 labels of the bank, (N,).
        num_classes: C.
        sigma: kernel bandwidth on the normalised features.
        self_positions: (B,) position of each row in the bank, -1 when absent (leave-one-out mask); or (B, k)
            positions a row is never a partner of (e.g. itself and its clean copy, :func:`anchored_estimate`).
        memory_budget: bytes of temporaries allowed.
        row_targets: int64 (B,), the "target" objective's class of each row (:func:`target_classes`); None
            for the "bayes_error" objective (the class read is the argmax).
    Returns:
        KernelStats of shape (B,).
    """
    _check_inputs(rows, bank, sigma, bank_labels)
    if row_targets is not None and row_targets.shape != (len(rows),):
        raise InvalidInputError(f"row targets must have shape ({len(rows)},), got {tuple(row_targets.shape)}")
    one_hot = torch.nn.functional.one_hot(bank_labels, num_classes).to(bank.dtype)
    # (N, C + 1) as the transpose of a contiguous (C + 1, N): the faster layout for this skinny GEMM
    one_hot_and_ones = torch.cat([one_hot, one_hot.new_ones(len(bank), 1)], 1).T.contiguous().T
    row_sum = rows.new_empty(len(rows))
    predicted_mass = rows.new_empty(len(rows))
    top_mass = rows.new_empty(len(rows))
    predicted = torch.empty(len(rows), dtype=torch.long, device=rows.device)
    for start, stop, kernel in _BankKernel(bank, sigma, memory_budget).chunks(rows, self_positions):
        masses = kernel @ one_hot_and_ones  # class masses and, in the last column, the row sum
        torch.max(masses[:, :num_classes], 1, out=(top_mass[start:stop], predicted[start:stop]))
        row_sum[start:stop] = masses[:, num_classes]
        if row_targets is not None:  # the objective reads the target's mass, β̂ still the top one
            predicted[start:stop] = row_targets[start:stop]
            predicted_mass[start:stop] = masses[torch.arange(stop - start, device=rows.device), row_targets[start:stop]]
    if row_targets is None:
        predicted_mass = top_mass
    return KernelStats(row_sum.add_(EPS_Z), predicted_mass, predicted, top_mass)


def block_gradient(
    rows: torch.Tensor,
    row_labels: torch.Tensor,
    row_stats: KernelStats,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    bank_stats: KernelStats | None,
    sigma: float,
    total: int,
    self_positions: torch.Tensor | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    objective: Objective = "bayes_error",
) -> torch.Tensor:
    """Pass 2: the gradient of the objective for a block of rows, shape (B, D): ∂β̂/∂z with
    β̂ = (1/total) Σ_i e_i, or under the "target" objective ∂/∂z (1/total) Σ_i P_it_i (stats from
    :func:`block_stats` with ``row_targets``).

    With ``bank_stats`` (every bank sample's stats) the gradient is exact: M = W + Wᵀ, because each row
    is also a kernel partner of every bank sample. With ``bank_stats=None`` the bank is held constant
    (M = W), which is the exact gradient of the "reference" estimator, whose partners are fixed.

    Args:
        rows, row_labels, row_stats: the block's features (B, D), labels (B,) and stats (B,).
        bank, bank_labels, bank_stats: every partner's features (N, D), labels (N,) and stats (N,).
        sigma: kernel bandwidth.
        total: the number of samples β̂ averages over (N for the exact estimator).
        self_positions: (B,) or (B, k) positions masked for each row, -1 when absent (as in block_stats).
        memory_budget: bytes of temporaries allowed.
        objective: "bayes_error" or "target" (the stats must have been computed for it).
    """
    _check_inputs(rows, bank, sigma, bank_labels)
    _check_objective(objective)
    left, right = _weight_factors(row_labels, row_stats, bank_labels, bank_stats, bank.dtype)
    bank_kernel = _BankKernel(bank, sigma, memory_budget)
    gradient = torch.empty_like(rows)
    for start, stop, kernel in bank_kernel.chunks(rows, self_positions):
        _, weights = bank_kernel.buffers(stop - start)
        torch.mm(left[start:stop], right, out=weights)  # M / K, element-wise
        m_block = weights.mul_(kernel)
        gradient[start:stop] = m_block.sum(1, keepdim=True) * rows[start:stop] - m_block @ bank
    sign = 1.0 if objective == "bayes_error" else -1.0  # raising P_it_i is lowering 1 - P_it_i
    return gradient.div_(sign * total * sigma**2)


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise InvalidInputError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")


def _weight_factors(
    row_labels: torch.Tensor,
    row_stats: KernelStats,
    bank_labels: torch.Tensor,
    bank_stats: KernelStats | None,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors L (B, k) and R (k, N) with (L R)_mj = M_mj / K_mj, a rank-k product (k = C + 2 or 2C + 2).

    W_mj / K_mj = 1[y_j = ŷ_m] / Z_m - N_m / Z_m²: onehot(ŷ_m)/Z_m · onehot(y_j) plus a row constant;
    Wᵀ_mj / K_mj = 1[y_m = ŷ_j] / Z_j - N_j / Z_j²: onehot(y_m) · onehot(ŷ_j)/Z_j plus a column constant.
    One skinny GEMM builds the whole weight matrix, with no compare-and-convert temporaries.
    """
    labels_and_predictions = [row_labels, row_stats.predicted, bank_labels]
    if bank_stats is not None:
        labels_and_predictions.append(bank_stats.predicted)
    classes = 1 + int(max(int(t.max()) for t in labels_and_predictions if t.numel()))

    def one_hot(labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(labels, classes).to(dtype)

    inv_z = (1.0 / row_stats.row_sum).unsqueeze(1)
    left = [one_hot(row_stats.predicted) * inv_z, -row_stats.predicted_mass.unsqueeze(1) * inv_z.square()]
    right = [one_hot(bank_labels), bank_labels.new_ones(len(bank_labels), 1, dtype=dtype)]
    if bank_stats is not None:
        bank_inv_z = (1.0 / bank_stats.row_sum).unsqueeze(1)
        left += [one_hot(row_labels), torch.ones_like(inv_z)]
        right += [one_hot(bank_stats.predicted) * bank_inv_z, -bank_stats.predicted_mass.unsqueeze(1) * bank_inv_z.square()]
    return torch.cat(left, 1), torch.cat(right, 1).T.contiguous()


def estimate(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    sigma: float = 0.3,
    estimator: Estimator = "exact",
    with_gradient: bool = True,
    batch_size: int = 1024,
    reference_size: int = 2048,
    generator: torch.Generator | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    objective: Objective = "bayes_error",
    target_shift: int = 1,
    target_map: Sequence[int] = (),
) -> Estimate:
    """β̂, the per-sample errors and (optionally) the objective's gradient for all N samples in one process.

    Args:
        features: normalised features z, (N, D), float32 or float64.
        labels: int64 (N,).
        num_classes: C.
        sigma: kernel bandwidth (0.3 on features normalised by :func:`normalise_features`).
        estimator: "exact" (every other sample is a partner); "batch" (the estimator inside random
            mini-batches of ``batch_size``; β̂ is still the mean over all N); "reference" (partners are a
            random subset of ``reference_size`` samples, held constant in the gradient).
        with_gradient: also compute the gradient.
        batch_size, reference_size: sizes for the cheap estimators.
        generator: draws the batches or the reference subset.
        memory_budget: bytes of temporaries allowed.
        objective: "bayes_error" (the gradient is ∂β̂/∂z) or "target" (the gradient is that of the mean
            posterior of t_i = (y_i + target_shift) mod C, or t_i = target_map[y_i] when a map is given:
            :func:`target_classes`; ``value`` and ``errors`` are β̂'s still).
    Raises:
        InvalidInputError: when more than 1% of the samples have no partner with a non-zero kernel weight
            (σ too small for the features: :func:`check_support`).
    """
    _check_objective(objective)
    if estimator not in ESTIMATORS:
        raise InvalidInputError(f"unknown estimator {estimator!r}; expected one of {', '.join(ESTIMATORS)}")
    if labels.shape != (features.shape[0],):
        raise InvalidInputError(
            f"labels must have shape ({features.shape[0]},), got {tuple(labels.shape)}"
        )
    total = len(features)
    targets = target_classes(labels, num_classes, target_shift, target_map) if objective == "target" else None
    if estimator == "exact":
        groups = [torch.arange(total)]
    elif estimator == "batch":
        if batch_size < 2:
            raise InvalidInputError(f"estimator batch size must be >= 2, got {batch_size}")
        groups = list(torch.randperm(total, generator=generator).split(batch_size))
    else:
        return _reference_estimate(
            features, labels, num_classes, sigma, with_gradient, reference_size, generator, memory_budget,
            objective, targets,
        )
    errors = features.new_empty(total)
    gradient = torch.empty_like(features) if with_gradient else None
    parts = []
    for group in groups:
        z, y = features[group], labels[group]
        positions = torch.arange(len(group))
        stats = block_stats(z, z, y, num_classes, sigma, positions, memory_budget,
                            None if targets is None else targets[group])
        parts.append(stats)
        errors[group] = stats.errors
        if gradient is not None:
            gradient[group] = block_gradient(
                z, y, stats, z, y, stats, sigma, total, positions, memory_budget, objective
            )
    check_support(KernelStats.concat(parts), sigma)
    return Estimate(errors.mean(), errors, gradient)


def anchored_estimate(
    features: torch.Tensor,
    labels: torch.Tensor,
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    num_classes: int,
    sigma: float = 0.3,
    twins: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    objective: Objective = "bayes_error",
    target_shift: int = 1,
    target_map: Sequence[int] = (),
) -> Estimate:
    """The exact estimator of a mixture: the protected features z (N, D) beside fixed clean anchors a (M, D).

    Every sample of [z; a] is a kernel partner of every other. With ``twins`` the anchors are the clean
    copies of the same N images (M = N, a_i of image i): sample i and its copy N + i are never each other's
    partners, since a victim sees an index either clean or protected. The objective is that of all N + M
    samples, so moving z_i near the clean images of another class also counts through their posteriors;
    the gradient (N, D) is with respect to z only (the anchors are fixed). ``value`` and ``errors`` (N + M,)
    are β̂ of the mixture. Without anchors (M = 0) this is :func:`estimate`'s exact estimator.

    Args:
        features, labels: z (N, D) and int64 (N,).
        anchors, anchor_labels: a (M, D) and int64 (M,).
        twins: whether anchors[i] is the clean copy of the image behind features[i].
        objective, target_shift, target_map: as in :func:`estimate`.
    """
    _check_objective(objective)
    count = len(features)
    if anchors.ndim != 2 or anchors.shape[1] != features.shape[1] or anchor_labels.shape != (len(anchors),):
        raise InvalidInputError(f"anchors must be (M, {features.shape[1]}) with (M,) labels, got "
                                f"{tuple(anchors.shape)} and {tuple(anchor_labels.shape)}")
    if twins and len(anchors) != count:
        raise InvalidInputError(f"twin anchors must be one per protected sample ({count}), got {len(anchors)}")
    bank, bank_labels = torch.cat([features, anchors]), torch.cat([labels, anchor_labels])
    own = torch.arange(len(bank))
    positions = torch.stack([own, (own + count) % len(bank)], 1) if twins else own
    targets = target_classes(bank_labels, num_classes, target_shift, target_map) if objective == "target" else None
    stats = block_stats(bank, bank, bank_labels, num_classes, sigma, positions, memory_budget, targets)
    check_support(stats, sigma)
    rows = torch.arange(count)
    gradient = block_gradient(features, labels, stats.take(rows), bank, bank_labels, stats, sigma, len(bank),
                              positions[:count], memory_budget, objective)
    return Estimate(stats.errors.mean(), stats.errors, gradient)


def _reference_estimate(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    sigma: float,
    with_gradient: bool,
    reference_size: int,
    generator: torch.Generator | None,
    memory_budget: int,
    objective: Objective,
    targets: torch.Tensor | None,
) -> Estimate:
    total = len(features)
    if not 2 <= reference_size:
        raise InvalidInputError(f"reference size must be >= 2, got {reference_size}")
    reference = torch.randperm(total, generator=generator)[: min(reference_size, total)]
    positions = reference_positions(reference, total)
    bank, bank_labels = features[reference], labels[reference]
    stats = block_stats(features, bank, bank_labels, num_classes, sigma, positions, memory_budget, targets)
    check_support(stats, sigma)
    gradient = None
    if with_gradient:
        gradient = block_gradient(
            features, labels, stats, bank, bank_labels, None, sigma, total, positions, memory_budget, objective
        )
    return Estimate(stats.errors.mean(), stats.errors, gradient)


def reference_positions(reference: torch.Tensor, total: int) -> torch.Tensor:
    """For each of ``total`` samples, its position in the ``reference`` index list, or -1; shape (total,)."""
    positions = torch.full((total,), -1, dtype=torch.long)
    positions[reference] = torch.arange(len(reference))
    return positions
