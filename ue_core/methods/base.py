"""The interface BEO and its baselines share (one file per method, torchattacks-style).

Every method is built the same way: ``Method(budget, config, device="cpu", **extras)``: the perturbation budget
(:class:`ue_core.pga.Budget`, the same for every method), the method's own config dataclass, the torch
device its models run on, and any keyword-only extras of its own (BEO's ``test_set``).

A method turns a clean :class:`ImageDataset` into a perturbation δ; the base class quantises it into the
uint8 release and checks every invariant before anything is returned, so no method can publish a release
that breaks the budget, the labels or the index set.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from ue_core.checks import check_release
from ue_core.data.dataset import ImageDataset
from ue_core.errors import InvalidInputError
from ue_core.pga import Budget, quantise_release


@dataclass
class ProtectionResult:
    """What a method produces.

    Attributes:
        release: the protected dataset: uint8 pixels, the source's indices and labels.
        delta: the continuous perturbation before quantisation, float32 (N, C, H, W), rows in the
            source's row order.
        history: one dict of metrics per optimisation step (empty for one-shot methods).
        summary: headline numbers (e.g. β̂ of the clean data and of the release).
        surrogate: the final surrogate model, for methods that train one.
        snapshot_deltas: δ after round k, for the rounds a method was asked to release early (BEO's
            ``release_rounds``); :meth:`ProtectionMethod.protect` turns each into a checked release in
            ``snapshots``.
        snapshots: round k → the checked uint8 release after round k.
    """

    release: ImageDataset
    delta: torch.Tensor
    history: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)
    surrogate: torch.nn.Module | None = None
    snapshot_deltas: dict[int, torch.Tensor] = field(default_factory=dict)
    snapshots: dict[int, ImageDataset] = field(default_factory=dict)


class ProtectionMethod(ABC):
    """Base class: subclasses implement :meth:`perturb`; :meth:`protect` releases and verifies."""

    name: str = "method"
    norms: tuple[str, ...] = ("linf", "l2")
    """The budget norms (:data:`ue_core.pga.NORMS`) this method is defined for; any other is refused."""
    runs_in_rounds: bool = False
    """True for methods that run in rounds and take keyword-only ``test_set`` (per-round reports) and
    ``on_round`` (called with each round's history records as the round ends): BEO."""

    def __init__(self, budget: Budget, device: str = "cpu") -> None:
        """``budget`` bounds every δ this method makes; ``device`` is the torch device its models run on."""
        require_norm(budget, self.name, self.norms)
        self.budget = budget
        self.device = device

    @abstractmethod
    def perturb(self, dataset: ImageDataset, progress: bool = False) -> ProtectionResult:
        """Compute δ for every image; the returned result's ``release`` is filled in by :meth:`protect`."""

    def protect(self, dataset: ImageDataset, progress: bool = False) -> ProtectionResult:
        """δ → quantised uint8 release → invariants checked → result (and the same for every snapshot)."""
        result = self.perturb(dataset, progress)
        result.release = release_of(dataset, result.delta, self.budget)
        result.snapshots = {k: release_of(dataset, delta, self.budget) for k, delta in result.snapshot_deltas.items()}
        return result


def release_of(clean: ImageDataset, delta: torch.Tensor, budget: Budget) -> ImageDataset:
    """The checked uint8 release of ``clean`` perturbed by δ (N, C, H, W) in image units, rows aligned with
    ``clean``, within ``budget``."""
    release = clean.with_images(quantise_release(clean.images, delta, budget, clean.index))
    check_release(clean, release, budget)
    return release


def require_norm(budget: Budget, method: str, norms: tuple[str, ...]) -> None:
    """The check behind ``ProtectionMethod.norms``: a budget norm not in ``norms`` is a one-line error naming
    ``method``."""
    if budget.norm not in norms:
        raise InvalidInputError(
            f"{method}: defined for the budget norm {' or '.join(norms)} only, got norm {budget.norm!r}"
        )
