"""The interface BEO and its baselines share (one file per method, torchattacks-style).

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
from ue_core.pga import PGAConfig, quantise_release


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
    linf_only: bool = False
    """True for methods defined for the L∞ ball only (their steps are signed): other norms are refused."""

    def __init__(self, pga: PGAConfig) -> None:
        if self.linf_only:
            require_linf(pga, self.name)
        self.pga = pga

    @abstractmethod
    def perturb(self, dataset: ImageDataset, progress: bool = False) -> ProtectionResult:
        """Compute δ for every image; the returned result's ``release`` is filled in by :meth:`protect`."""

    def protect(self, dataset: ImageDataset, progress: bool = False) -> ProtectionResult:
        """δ → quantised uint8 release → invariants checked → result (and the same for every snapshot)."""
        result = self.perturb(dataset, progress)
        result.release = release_of(dataset, result.delta, self.pga)
        result.snapshots = {k: release_of(dataset, delta, self.pga) for k, delta in result.snapshot_deltas.items()}
        return result


def release_of(clean: ImageDataset, delta: torch.Tensor, pga: PGAConfig) -> ImageDataset:
    """The checked uint8 release of ``clean`` perturbed by δ (N, C, H, W, rows aligned with ``clean``)."""
    release = clean.with_images(quantise_release(clean.images, delta, pga, clean.index))
    check_release(clean, release, pga)
    return release


def require_linf(pga: PGAConfig, method: str) -> None:
    """The check behind ``ProtectionMethod.linf_only``: any norm but L∞ is a one-line error naming ``method``."""
    if pga.norm != "linf":
        raise InvalidInputError(f"{method}: only the L∞ budget (norm: linf) is defined, got norm {pga.norm!r}")
