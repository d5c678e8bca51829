"""BEO: unlearnable examples by Bayes-error optimisation — the one-process reference.

Paper: "Towards Provably Unlearnable Examples via Bayes Error Optimisation", Zhang, Sun, Lim, Zhang,
AAAI 2026 (arXiv 2511.08191). docs/method.md §2–3 is the specification this file follows.

    δ ← 0
    for each round: φ ← surrogate trained on clip(x + δ) ("retrain" | "finetune" | "fixed")
        for each step: z = φ(x + δ) / s;  β̂, ∂β̂/∂z (exact two-pass kernel estimator, or "batch" /
                       "reference");  g = J_φᵀ (∂β̂/∂z / s);  δ ← project(δ + update(g))
    release: round(255 (x + δ)) re-projected in integers, checked, uint8

Shapes: images (N, C, H, W) float in [0, 1]; δ and the Adam state the same; features (N, D).
Defaults are the authors' (ResNet-18 surrogate, 30 epochs, no augmentation; AdamW lr 1e-3; ε = 8/255;
σ = 0.3) apart from the number of rounds, which is small here: paper-scale runs set ~100–190.

Each step of a round is one public function here, and the Ray engine (pipelines/ray_engine) calls the same
functions where the data is, never a copy: :func:`round_seed` and :func:`train_surrogate` (the surrogate),
:func:`normalise_with_anchors` and :meth:`EstimatorConfig.step_sigma` (features and σ), :func:`exact_stats`
and :func:`exact_gradient` (the exact estimator's two passes over any block of rows) or :func:`estimate_step`
(every estimator in one call), :func:`pixel_step` (the pixel update) and :func:`release_summary` (finishing a
job).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ue_core import bayes_error
from ue_core.compute import Compute
from ue_core.data.dataset import ImageDataset
from ue_core.efficacy import ProbeConfig, clean_only_probe, mixed_probe
from ue_core.errors import InvalidInputError
from ue_core.methods.base import ProtectionMethod, ProtectionResult, release_of
from ue_core.models import MODEL_NAMES, Classifier, build_model
from ue_core.pga import Budget, PGAConfig, PixelState, ascent_step
from ue_core.training import (
    Device,
    PGDConfig,
    compute_features,
    evaluate,
    feature_accuracy,
    feature_vjp,
    fit,
    recipe,
    resolve_device,
)
from ue_core.views import AugmentConfig, View, view_key

SurrogateMode = Literal["retrain", "finetune", "fixed"]
SURROGATE_MODES: tuple[str, ...] = ("retrain", "finetune", "fixed")


@dataclass(frozen=True)
class SurrogateConfig:
    """How the surrogate φ is trained each round.

    Attributes:
        model: a name from ue_core.models.MODEL_NAMES.
        mode: "retrain" (fresh init, ``epochs`` every round), "finetune" (``epochs`` in the first round,
            then ``finetune_epochs`` from the previous round's weights), "fixed" (trained once on the
            clean data, never again).
        epochs, finetune_epochs: training epochs.
        recipe: "plain" (no augmentation, the authors' generation recipe) or "standard".
        lr, batch_size: SGD learning rate and batch size.
        adversarial: None (standard training, the method), or PGD adversarial training of the surrogate with
            this config (ours: a robust surrogate, whose features are the ones that transfer to other models;
            e.g. ``{eps: 8/255, step: 2/255, steps: 5}``). It costs ``steps`` + 1 passes per batch.
    """

    model: str = "resnet18"
    mode: SurrogateMode = "retrain"
    epochs: int = 30
    finetune_epochs: int = 1
    recipe: str = "plain"
    lr: float = 0.1
    batch_size: int = 128
    adversarial: PGDConfig | None = None

    def __post_init__(self) -> None:
        if self.model not in MODEL_NAMES:
            raise InvalidInputError(f"unknown surrogate model {self.model!r}; expected one of {', '.join(MODEL_NAMES)}")
        if self.mode not in SURROGATE_MODES:
            raise InvalidInputError(
                f"unknown surrogate mode {self.mode!r}; expected one of {', '.join(SURROGATE_MODES)}"
            )
        if self.epochs < 1 or self.finetune_epochs < 1:
            raise InvalidInputError(f"surrogate epochs must be >= 1, got {self.epochs} and {self.finetune_epochs}")


@dataclass(frozen=True)
class EstimatorConfig:
    """The Bayes-error estimator (ue_core.bayes_error.estimate) and the objective the ascent raises.

    Attributes:
        kind: "exact", "batch" or "reference".
        sigma: kernel bandwidth on features normalised to max |z| = 1 (bandwidth "fixed").
        bandwidth: "fixed" (``sigma``) or "nearest-neighbour": each step, σ = ``bandwidth_scale`` × the
            median nearest-neighbour distance of the step's features (bayes_error.nearest_neighbour_sigma),
            so the kernel stays a soft few-neighbour posterior however the surrogate's features spread.
        bandwidth_scale: see ``bandwidth`` (0.75 gives σ ≈ 0.3 on a 3-epoch small CNN's Fashion-MNIST features).
        objective: "bayes_error" (the method: ascend β̂) or "target" (ours: ascend the kernel posterior of
            the class (y + target_shift) mod C, one fixed wrong class per sample; β̂ is still reported).
        target_shift: the "target" objective's class offset, in [1, C - 1].
        target_map: instead of the offset, the "target" objective's class for each class, C entries, entry c
            not c (ours): e.g. each class's most confusable one, where the evidence a perturbation carries
            transfers to other models more than towards (y + 1) mod C (docs/study.md). Empty: the offset.
        anchors: "none", or "clean" (ours, mixture-aware): the clean copies of the images, in the round's
            surrogate's feature space, are fixed kernel partners beside the protected ones, so the objective is
            that of the mixture a victim may see (bayes_error.anchored_estimate); exact estimator only; it
            costs a second feature pass and a (2N)² kernel, computed in one task by the Ray engine.
        batch_size: mini-batch size of the "batch" estimator.
        reference_size: partners of the "reference" estimator (a subset fixed for the whole run).
        memory_budget_mb: temporaries allowed per kernel block.
    """

    kind: bayes_error.Estimator = "exact"
    sigma: float = 0.3
    bandwidth: str = "fixed"
    bandwidth_scale: float = 0.75
    objective: bayes_error.Objective = "bayes_error"
    target_shift: int = 1
    target_map: tuple[int, ...] = ()
    anchors: str = "none"
    batch_size: int = 1024
    reference_size: int = 2048
    memory_budget_mb: int = 512

    def __post_init__(self) -> None:
        if self.kind not in bayes_error.ESTIMATORS:
            raise InvalidInputError(
                f"unknown estimator {self.kind!r}; expected one of {', '.join(bayes_error.ESTIMATORS)}"
            )
        if not self.sigma > 0:
            raise InvalidInputError(f"estimator sigma must be > 0, got {self.sigma}")
        if self.bandwidth not in BANDWIDTHS:
            raise InvalidInputError(
                f"unknown estimator bandwidth {self.bandwidth!r}; expected one of {', '.join(BANDWIDTHS)}"
            )
        if not self.bandwidth_scale > 0:
            raise InvalidInputError(f"estimator bandwidth_scale must be > 0, got {self.bandwidth_scale}")
        if self.objective not in bayes_error.OBJECTIVES:
            raise InvalidInputError(
                f"unknown objective {self.objective!r}; expected one of {', '.join(bayes_error.OBJECTIVES)}"
            )
        if self.target_shift < 1:
            raise InvalidInputError(f"estimator target_shift must be >= 1, got {self.target_shift}")
        object.__setattr__(self, "target_map", tuple(self.target_map))
        if self.anchors not in ANCHORS:
            raise InvalidInputError(f"unknown estimator anchors {self.anchors!r}; expected one of {', '.join(ANCHORS)}")
        if self.anchors != "none" and self.kind != "exact":
            raise InvalidInputError(f"estimator anchors: {self.anchors} needs kind: exact, got {self.kind}")

    def check_targets(self, num_classes: int) -> None:
        """Refuse, before the rounds, a "target" objective that a dataset of C classes cannot have (a shift
        of C or more, a map of another length: :func:`bayes_error.target_classes` checks both)."""
        if self.objective == "target":
            bayes_error.target_classes(torch.arange(num_classes), num_classes, self.target_shift, self.target_map)

    def step_sigma(self, features: torch.Tensor, generator_seed: tuple[int, int, int]) -> float:
        """The bandwidth of one ascent step on normalised features (N, D); ``generator_seed`` is
        (seed, round, step), so a resumed or distributed run draws the same queries."""
        if self.bandwidth == "fixed":
            return self.sigma
        generator = torch.Generator().manual_seed(hash_seed(*generator_seed))
        return bayes_error.nearest_neighbour_sigma(features, self.bandwidth_scale, generator=generator)


BANDWIDTHS: tuple[str, ...] = ("fixed", "nearest-neighbour")
ANCHORS: tuple[str, ...] = ("none", "clean")


def hash_seed(seed: int, round_index: int, step: int) -> int:
    """One integer seed for the draws of (seed, round, step)."""
    return (seed * 1_000_003 + round_index) * 1_009 + step


def round_seed(seed: int, round_index: int) -> int:
    """The seed of round ``round_index``'s surrogate training (its initialisation and data order)."""
    return seed * 100_003 + round_index


@dataclass(frozen=True)
class BEOConfig:
    """Everything a BEO run depends on.

    Attributes:
        rounds: surrogate re-trainings (R); steps_per_round: ascent steps per round (T, authors: 1).
        pga: the update rule on δ (the budget is the job's, :class:`BEO`'s first argument); surrogate,
            estimator: see their classes.
        batch_size: images per forward/backward pass when computing features and pixel gradients.
        seed: seeds the surrogate's initialisation and data order and the estimator's sampling.
        probe: the mixed efficacy probe every few rounds (ue_core.efficacy; off by default, needs a test set).
        release_rounds: also release the protected images after each of these rounds (1 ≤ k < rounds), so
            that one long run shows how efficacy grows with the horizon; the release after ``rounds`` is
            the job's own. A release taken after round k equals the final release of the same run with
            ``rounds = k``.
        augment: augmentation-aware steps (ue_core.views; off by default): the objective on K crop/flip
            views of the data, the pixel gradient their mean.
        compute: channels-last memory and bf16 autocast for the surrogate's training, features and pixel
            gradients (ue_core.compute; off by default, for GPUs; the estimator and the update stay float32).
    """

    rounds: int = 10
    steps_per_round: int = 1
    pga: PGAConfig = field(default_factory=PGAConfig)
    surrogate: SurrogateConfig = field(default_factory=SurrogateConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    batch_size: int = 256
    seed: int = 0
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    release_rounds: tuple[int, ...] = ()
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    compute: Compute = field(default_factory=Compute)

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.steps_per_round < 1:
            raise InvalidInputError(
                f"rounds and steps_per_round must be >= 1, got {self.rounds}, {self.steps_per_round}"
            )
        object.__setattr__(self, "release_rounds", tuple(sorted({int(k) for k in self.release_rounds})))
        outside = [k for k in self.release_rounds if not 1 <= k < self.rounds]
        if outside:
            raise InvalidInputError(
                f"release_rounds: each must be in [1, rounds - 1] = [1, {self.rounds - 1}], got {outside[0]}"
            )


def train_surrogate(
    previous: Classifier | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config: SurrogateConfig,
    seed: int,
    device: Device = "cpu",
    compute: Compute = Compute(),
) -> Classifier:
    """The surrogate for this round: trained now, or the previous one in mode "fixed".

    Args:
        previous: last round's surrogate, or None in the first round.
        images: what to train on, float (N, C, H, W) in [0, 1]: the current protected images, or the
            clean ones for mode "fixed".
        labels: int64 (N,).
        seed: seeds the initialisation and the data order of this round's training.
        device: where it trains (images stay where they are, batches move); the model is returned on it.
        compute: memory format and autocast of its training (:class:`ue_core.compute.Compute`).
    """
    if previous is not None and config.mode == "fixed":
        return previous
    if previous is not None and config.mode == "finetune":
        model, epochs = copy.deepcopy(previous), config.finetune_epochs
    else:
        model = build_model(
            config.model, num_classes, in_channels=images.shape[1], image_size=images.shape[-1], seed=seed
        )
        epochs = config.epochs
    training = recipe(config.recipe, epochs=epochs, lr=config.lr, batch_size=config.batch_size)
    fit(model, images, labels, training, seed=seed, adversarial=config.adversarial, device=device, compute=compute)
    return model


def step_views(config: BEOConfig, index: np.ndarray, round_index: int, step: int) -> list[View | None]:
    """The views of one ascent step for the images with dataset indices ``index`` (N,): ``[None]`` (the
    images as they are) unless ``config.augment.views`` ≥ 1; each view a function of (seed, round, step,
    view, index), so any block of rows draws its own part of it."""
    if config.augment.views == 0:
        return [None]
    step_seed = hash_seed(config.seed, round_index, step)
    return [View.draw(index, view_key(step_seed, v), config.augment) for v in range(config.augment.views)]


def pixel_gradient(
    model: Classifier,
    protected: torch.Tensor,
    feature_gradients: list[torch.Tensor],
    views: list[View | None],
    batch_size: int,
    device: Device = "cpu",
    compute: Compute = Compute(),
) -> torch.Tensor:
    """The objective's gradient with respect to the pixels of a block of rows, (B, C, H, W): the mean over the
    step's views v of J_{φ∘v}(x + δ)ᵀ (∂objective_v/∂z / s_v).

    Args:
        protected: x + δ (B, C, H, W) in [0, 1].
        feature_gradients: per view, the objective's gradient with respect to the normalised features
            divided by the normalisation s, (B, D): the gradient with respect to the raw features.
        views: the views, drawn for these rows (:func:`step_views`; ``[None]`` without augmentation).
        device: where ``model`` is and the VJP runs, batch by batch; the gradient is returned on the host.
        compute: memory format and autocast of the VJP passes.
    """
    gradients = [
        feature_vjp(model, protected, feature_gradient, batch_size=batch_size, transform=view, device=device,
                    compute=compute)
        for feature_gradient, view in zip(feature_gradients, views, strict=True)
    ]
    return gradients[0] if len(gradients) == 1 else torch.stack(gradients).mean(dim=0)


def pixel_step(
    model: Classifier,
    images: torch.Tensor,
    state: PixelState,
    feature_gradients: list[torch.Tensor],
    views: list[View | None],
    budget: Budget,
    pga: PGAConfig,
    batch_size: int,
    device: Device = "cpu",
    compute: Compute = Compute(),
) -> PixelState:
    """One update of δ for a block of rows: the :func:`pixel_gradient` at x + δ, then ascent by the rule
    ``pga`` and projection onto ``budget``. ``images`` are the clean x (B, C, H, W) in [0, 1]; ``state``
    holds their δ and optimiser state, which stay on the host (batches move to ``device``)."""
    gradient = pixel_gradient(model, images + state.delta, feature_gradients, views, batch_size, device, compute)
    return ascent_step(state, gradient, images, budget, pga)


def measure_bayes_error(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config: EstimatorConfig,
    batch_size: int = 256,
    seed: int = 0,
    device: Device = "cpu",
    compute: Compute = Compute(),
) -> float:
    """β̂ of ``images`` (N, C, H, W) in ``model``'s normalised penultimate feature space, with the bandwidth
    ``config`` gives these features (under "nearest-neighbour": from their own distances); ``model`` is on
    ``device``, where the features (with ``compute``) and the exact estimator's blocks are computed."""
    features = compute_features(model, images, batch_size=batch_size, device=device, compute=compute)
    return bayes_error_of_features(features, labels, num_classes, config, seed, device)


def bayes_error_of_features(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, config: EstimatorConfig, seed: int = 0,
    device: Device = "cpu",
) -> float:
    """β̂ of penultimate features (N, D), normalised here, with labels (N,): the estimator's part of
    :func:`measure_bayes_error`, for features computed a batch at a time."""
    features, _ = bayes_error.normalise_features(features)
    generator = estimator_generator(config, seed)
    sigma = config.step_sigma(features, (seed, 0, 0))
    return float(estimate_step(features, labels, num_classes, config, sigma, generator, False, device=device).value)


def estimator_generator(config: EstimatorConfig, seed: int, round_index: int = 0, step: int = 0) -> torch.Generator:
    """The random draws of one ascent step's estimator, a function of (seed, round, step) only, so that a
    resumed or distributed run draws what an uninterrupted one does. The "reference" subset depends on the
    seed alone: it stays fixed for the whole run."""
    if config.kind == "reference":
        return torch.Generator().manual_seed(seed)
    return torch.Generator().manual_seed(hash_seed(seed, round_index, step))


def normalise_with_anchors(
    raw: torch.Tensor, raw_anchors: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Raw features φ(x + δ) (N, D) and, under ``anchors: clean``, φ(x) (N, D) → (z, anchors, s): both scaled
    by one s = max |φ| over everything the kernel sees."""
    if raw_anchors is None:
        features, scale = bayes_error.normalise_features(raw)
        return features, None, scale
    both, scale = bayes_error.normalise_features(torch.cat([raw, raw_anchors]))
    return both[: len(raw)], both[len(raw) :], scale


def exact_stats(
    bank: torch.Tensor, labels: torch.Tensor, num_classes: int, config: EstimatorConfig, sigma: float,
    start: int, stop: int, device: Device = "cpu",
) -> bayes_error.KernelStats:
    """Pass 1 of the exact estimator for rows ``start:stop`` of the bank z (N, D), labels (N,): each row's
    kernel statistics against every other sample (four numbers per row, :class:`bayes_error.KernelStats`),
    computed on ``device`` (the bank is copied there) and returned on the host."""
    bank, labels = bank.to(device), labels.to(device)
    rows = torch.arange(start, stop, device=device)
    targets = None
    if config.objective == "target":
        targets = bayes_error.target_classes(labels[start:stop], num_classes, config.target_shift, config.target_map)
    return bayes_error.block_stats(bank[start:stop], bank, labels, num_classes, sigma, rows,
                                   config.memory_budget_mb * 2**20, targets).to("cpu")


def exact_gradient(
    bank: torch.Tensor, labels: torch.Tensor, stats: bayes_error.KernelStats, config: EstimatorConfig,
    sigma: float, start: int, stop: int, device: Device = "cpu",
) -> torch.Tensor:
    """Pass 2 of the exact estimator: the objective's gradient (stop − start, D) for rows ``start:stop`` of
    the bank z (N, D), given every sample's stats (N rows, checked with :func:`bayes_error.check_support`),
    computed on ``device`` and returned on the host."""
    bank, labels, stats = bank.to(device), labels.to(device), stats.to(device)
    rows = torch.arange(start, stop, device=device)
    return bayes_error.block_gradient(bank[rows], labels[rows], stats.take(rows), bank, labels, stats, sigma,
                                      len(bank), rows, config.memory_budget_mb * 2**20, config.objective).cpu()


def estimate_step(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config: EstimatorConfig,
    sigma: float,
    generator: torch.Generator,
    with_gradient: bool,
    anchors: torch.Tensor | None = None,
    device: Device = "cpu",
) -> bayes_error.Estimate:
    """β̂ and the objective's gradient (N, D) of one step on normalised features z (N, D), labels (N,),
    with bandwidth ``sigma`` (:meth:`EstimatorConfig.step_sigma`) and, under ``anchors: clean``, the clean
    copies' normalised features (N, D) as fixed partners (β̂ is then that of the 2N-sample mixture).
    The exact estimator's two passes run on ``device`` (the bank is copied there once); the others, and the
    anchored one, on the host. Everything returned is on the host."""
    if anchors is None and config.kind == "exact":  # the two passes the Ray engine runs over row blocks
        features, labels = features.to(device), labels.to(device)
        stats = exact_stats(features, labels, num_classes, config, sigma, 0, len(features), device)
        bayes_error.check_support(stats, sigma)
        errors = stats.errors
        gradient = (exact_gradient(features, labels, stats, config, sigma, 0, len(features), device)
                    if with_gradient else None)
        return bayes_error.Estimate(errors.mean(), errors, gradient)
    if anchors is not None:
        return bayes_error.anchored_estimate(
            features, labels, anchors, labels, num_classes, sigma=sigma, twins=True,
            memory_budget=config.memory_budget_mb * 2**20, objective=config.objective, target_shift=config.target_shift,
            target_map=config.target_map,
        )
    return bayes_error.estimate(
        features,
        labels,
        num_classes,
        sigma=sigma,
        estimator=config.kind,
        with_gradient=with_gradient,
        batch_size=config.batch_size,
        reference_size=config.reference_size,
        generator=generator,
        memory_budget=config.memory_budget_mb * 2**20,
        objective=config.objective,
        target_shift=config.target_shift,
        target_map=config.target_map,
    )


class BEO(ProtectionMethod):
    """Bayes-error optimisation (the one-process reference). See the module docstring."""

    name = "beo"
    runs_in_rounds = True

    def __init__(
        self,
        budget: Budget,
        config: BEOConfig,
        device: str = "cpu",
        *,
        test_set: ImageDataset | None = None,
        on_round: Callable[[list[dict[str, float]]], None] | None = None,
    ) -> None:
        """``budget`` bounds δ, ``config`` sets the rest. ``device`` ("cpu", "cuda", "cuda:N" or "auto",
        :func:`ue_core.training.resolve_device`) runs the surrogate's training, the features, the exact
        estimator and the feature VJP; images, δ and the optimiser state stay on the host and batches move.
        ``test_set``, when given, serves only the surrogate's test accuracy per round and, with
        ``config.probe``, the mixed efficacy probe (which trains its own models on the CPU). ``on_round``, when
        given, is called after every round with that round's history records (one per step)."""
        super().__init__(budget, str(resolve_device(device)))
        self.config = config
        self.test_set = test_set
        self.on_round = on_round
        self._clean_only_probe: float | None = None

    def perturb(self, dataset: ImageDataset, progress: bool = False) -> ProtectionResult:
        """Run the rounds; the history has one record per step: round, step, bayes_error (β̂ before the
        step's update), delta_mean_abs and delta_max_abs (after it), surrogate_train_accuracy (the round's
        surrogate on the round's protected images x + δ, scored from step 0's features),
        surrogate_test_accuracy (with a test set), seconds_surrogate and seconds_ascent; the last record of a
        probed round also has probe_mixed_accuracy and probe_clean_only_accuracy (ue_core.efficacy)."""
        config = self.config
        config.estimator.check_targets(dataset.num_classes)
        images, labels = dataset.tensors()
        state = self.initial_state(images, labels, dataset.num_classes)
        surrogate: Classifier | None = None
        history: list[dict[str, float]] = []
        snapshots: dict[int, torch.Tensor] = {}
        rounds = tqdm(range(config.rounds), desc="BEO rounds", disable=not progress)
        for round_index in rounds:
            started = time.perf_counter()
            protected = images + state.delta
            training_images = images if config.surrogate.mode == "fixed" else protected
            surrogate = train_surrogate(
                surrogate, training_images, labels, dataset.num_classes, config.surrogate,
                seed=round_seed(config.seed, round_index), device=self.device, compute=config.compute,
            )
            # seconds_surrogate: training and the test accuracy, as the Ray engine's surrogate step measures it
            round_metrics = {"round": round_index, **self._test_accuracy(surrogate),
                             "seconds_surrogate": time.perf_counter() - started}
            for step in range(config.steps_per_round):
                step_started = time.perf_counter()
                protected = images + state.delta
                views = step_views(config, dataset.index, round_index, step)
                values, sigmas, feature_gradients = [], [], []
                for view in views:
                    raw = compute_features(surrogate, protected, batch_size=config.batch_size, transform=view,
                                           device=self.device, compute=config.compute)
                    if step == 0 and view is views[0]:  # the round's protected images (first view), no second pass
                        round_metrics["surrogate_train_accuracy"] = feature_accuracy(surrogate, raw, labels)
                    raw_anchors = None
                    if config.estimator.anchors == "clean":
                        raw_anchors = compute_features(surrogate, images, batch_size=config.batch_size,
                                                       transform=view, device=self.device, compute=config.compute)
                    features, anchors, scale = normalise_with_anchors(raw, raw_anchors)
                    # from the protected features alone: with anchors, an image's nearest one is its own clean copy
                    # (at distance 0 in the first round), which is never its partner
                    sigma = config.estimator.step_sigma(features, (config.seed, round_index, step))
                    result = estimate_step(
                        features, labels, dataset.num_classes, config.estimator, sigma,
                        estimator_generator(config.estimator, config.seed, round_index, step), True, anchors,
                        self.device,
                    )
                    values.append(float(result.value))
                    sigmas.append(sigma)
                    feature_gradients.append(result.gradient / scale)
                state = self.step_pixels(surrogate, images, labels, state, feature_gradients, views)
                history.append({
                    **round_metrics,
                    "step": step,
                    "bayes_error": sum(values) / len(values),
                    "sigma": sum(sigmas) / len(sigmas),
                    "delta_mean_abs": float(state.delta.abs().mean()),
                    "delta_max_abs": float(state.delta.abs().max()),
                    "seconds_ascent": time.perf_counter() - step_started,
                })
            if self.test_set is not None and config.probe.due(round_index + 1, config.rounds):
                history[-1].update(self.probe(dataset, release_of(dataset, state.delta, self.budget)))
            rounds.set_postfix(bayes_error=f"{history[-1]['bayes_error']:.4f}")
            if self.on_round is not None:
                self.on_round([record for record in history if record["round"] == round_index])
            if round_index + 1 in config.release_rounds:
                snapshots[round_index + 1] = state.delta.clone()
        return ProtectionResult(release=dataset, delta=state.delta, history=history, surrogate=surrogate,
                                snapshot_deltas=snapshots)

    def initial_state(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> PixelState:
        """Where the ascent starts for images (N, C, H, W) in [0, 1] and labels (N,): δ = 0 and empty
        optimiser state, as published (and as the Ray engine starts). A subclass may start elsewhere inside
        the budget, e.g. bench/mixing_probes.py's class-pattern-then-beo probe."""
        return PixelState.zeros(tuple(images.shape))

    def step_pixels(self, surrogate: Classifier, images: torch.Tensor, labels: torch.Tensor, state: PixelState,
                    feature_gradients: list[torch.Tensor], views: list[View | None]) -> PixelState:
        """One update of every row's δ, by :func:`pixel_step` (as the Ray engine's ascent actors do); labels
        (N,) are for a subclass that steps otherwise, e.g. bench/mixing_probes.py's class-wise probe."""
        return pixel_step(surrogate, images, state, feature_gradients, views, self.budget, self.config.pga,
                          self.config.batch_size, self.device, self.config.compute)

    def probe(self, clean: ImageDataset, release: ImageDataset) -> dict[str, float]:
        """The mixed probe's accuracy on this release and the clean-only reference (trained once), in [0, 1]."""
        probe = self.config.probe
        if self._clean_only_probe is None:
            self._clean_only_probe = clean_only_probe(clean, self.test_set, probe)
        return {"probe_mixed_accuracy": mixed_probe(clean, release, self.test_set, probe),
                "probe_clean_only_accuracy": self._clean_only_probe}

    def _test_accuracy(self, surrogate: Classifier) -> dict[str, float]:
        if self.test_set is None:
            return {}
        images, labels = self.test_set.tensors()
        return {"surrogate_test_accuracy": evaluate(surrogate, images, labels, batch_size=self.config.batch_size,
                                                    device=self.device, compute=self.config.compute)}

    def protect(self, dataset: ImageDataset, progress: bool = False) -> ProtectionResult:
        """Release as the base class does, then measure β̂ of the clean data and of the uint8 release in
        the final surrogate's feature space (summary keys bayes_error_clean, bayes_error_release)."""
        result = super().protect(dataset, progress)
        result.summary |= release_summary(result.surrogate, dataset, result.release, self.config, self.device)
        return result


def release_summary(
    surrogate: Classifier, clean: ImageDataset, release: ImageDataset, config: BEOConfig, device: Device = "cpu"
) -> dict[str, float]:
    """Finishing a job: β̂ of the clean images and of the checked uint8 release (rows aligned) in the final
    surrogate's feature space (the surrogate on ``device``), keys bayes_error_clean and bayes_error_release."""
    return release_summary_of_batches(surrogate, [(clean, release)], config, device)


def release_summary_of_batches(
    surrogate: Classifier, pairs: Iterable[tuple[ImageDataset, ImageDataset]], config: BEOConfig,
    device: Device = "cpu",
) -> dict[str, float]:
    """:func:`release_summary` of a set given as aligned (clean rows, release rows) batches: the features
    (N × D) are kept, never the images, so a set larger than memory is summarised a batch at a time."""
    features: dict[str, list[torch.Tensor]] = {"clean": [], "release": []}
    labels, num_classes = [], 0
    for clean_rows, release_rows in pairs:
        for name, rows in (("clean", clean_rows), ("release", release_rows)):
            features[name].append(compute_features(surrogate, rows.tensors()[0], batch_size=config.batch_size,
                                                   device=device, compute=config.compute))
        labels.append(torch.from_numpy(clean_rows.labels))
        num_classes = clean_rows.num_classes
    return {
        f"bayes_error_{name}": bayes_error_of_features(torch.cat(parts), torch.cat(labels), num_classes,
                                                       config.estimator, config.seed, device)
        for name, parts in features.items()
    }
