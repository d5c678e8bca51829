"""Training and evaluation on in-memory tensors: standard and PGD adversarial training, features and their VJP.

Conventions: images are float (N, C, H, W) in [0, 1], labels int64 (N,). Every random draw (shuffle,
augmentation, PGD start, batch transforms) comes from a CPU ``torch.Generator``, so a run is a function of its
seed: on the CPU the same seed gives bit-identical weights. Batches are moved to ``device`` one at a time, so the
full tensors may stay in host memory; functions that return tensors return them on the device of ``x``. A
``compute`` (:class:`ue_core.compute.Compute`) asks for channels-last memory and bf16 autocast of the model's
passes; the default is neither.

Functions that only read a model (``evaluate``, ``compute_features``, ``feature_vjp``, ``pgd_attack``) run it
in eval mode and restore its previous mode afterwards; none of them touches the parameters' ``.grad``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ue_core.checks import check_images
from ue_core.compute import Compute
from ue_core.errors import InvalidInputError
from ue_core.models import Classifier

RowTransform = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A per-row image transform: (images (B, C, H, W), their row positions (B,)) → images (B, C, H, W)."""

Device = torch.device | str

BatchTransform = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
"""(x, targets, generator) → (x, targets), applied to every training batch after augmentation.

x is float (B, C, H, W) in [0, 1] on the training device, targets int64 (B,) or class probabilities float
(B, num_classes) (e.g. after mixup); the transform draws its randomness from the CPU generator it is given."""

TrainingLoss = Callable[
    [Callable[[torch.Tensor], torch.Tensor], torch.Tensor, torch.Tensor, torch.Generator, int],
    tuple[torch.Tensor, torch.Tensor],
]
"""(forward, x, targets, generator, epoch) → (loss, logits): a training loss that replaces the batch's
cross-entropy (e.g. UEraser's largest loss over augmented copies, :func:`ue_core.ueraser.max_loss`).

``forward`` runs the model on images (N, C, H, W) under the run's autocast and returns logits (N, num_classes);
x and targets are the batch as the cross-entropy would see it (augmented, transformed, adversarial); ``epoch``
is 1-based. The loss is a scalar to minimise, the logits (B, num_classes) are what the training accuracy is
counted on."""

SCHEDULES = ("cosine", "constant")


def resolve_device(name: Device) -> torch.device:
    """The torch device a device name means: "cpu", "cuda", "cuda:N", or "auto" (CUDA when
    ``torch.cuda.is_available()``, else the CPU). A torch.device is returned as it is."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not re.fullmatch(r"cuda(:\d+)?", name):
        raise InvalidInputError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N")
    return torch.device(name)


@dataclass(frozen=True)
class Recipe:
    """How to train: SGD with momentum and weight decay, a per-step learning-rate schedule, augmentation.

    Attributes:
        epochs: passes over the training set.
        lr: peak learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty on every parameter (batch norm included, as in the usual CIFAR code).
        batch_size: images per optimiser step (the last batch of an epoch may be smaller).
        schedule: "cosine" (from lr to 0 over all steps, updated every step) or "constant".
        augment: random crop with zero padding ``crop_padding`` and a random horizontal flip per image.
        crop_padding: padding of the random crop in pixels.
        recalibrate_bn: after the last epoch, re-estimate batch-norm statistics as exact averages over the
            (un-augmented, batch-transformed) training images ("precise BN"). Short runs need it: after
            ~30 steps the running averages lag the weights and eval-mode accuracy collapsed to chance
            (0.14) where training-mode accuracy was 0.77 (small CNN, 500 Fashion-MNIST images). Skipped
            under adversarial training, whose statistics are those of the adversarial batches.
    """

    epochs: int = 30
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    schedule: str = "cosine"
    augment: bool = True
    crop_padding: int = 4
    recalibrate_bn: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise InvalidInputError(f"recipe epochs: must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise InvalidInputError(f"recipe batch_size: must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise InvalidInputError(f"recipe lr: must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise InvalidInputError(f"recipe momentum: must be in [0, 1), got {self.momentum}")
        if not self.weight_decay >= 0:
            raise InvalidInputError(f"recipe weight_decay: must be >= 0, got {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise InvalidInputError(
                f"recipe schedule: unknown {self.schedule!r}; known: {', '.join(SCHEDULES)}"
            )
        if self.crop_padding < 0:
            raise InvalidInputError(f"recipe crop_padding: must be >= 0, got {self.crop_padding}")


RECIPES: dict[str, Recipe] = {
    "standard": Recipe(augment=True),
    "plain": Recipe(augment=False),  # the authors' surrogate recipe during protection
}


def recipe(name: str, **overrides: object) -> Recipe:
    """The named recipe from :data:`RECIPES` with some fields replaced, e.g. ``recipe("plain", epochs=5)``."""
    if name not in RECIPES:
        raise InvalidInputError(f"recipe name: unknown {name!r}; known names: {', '.join(RECIPES)}")
    known_fields = {f.name for f in fields(Recipe)}
    unknown = sorted(set(overrides) - known_fields)
    if unknown:
        raise InvalidInputError(
            f"recipe override: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known_fields))}"
        )
    return replace(RECIPES[name], **overrides)


@dataclass(frozen=True)
class PGDConfig:
    """L∞ projected gradient descent on the cross-entropy (Madry et al.), in pixel units of [0, 1] images.

    Attributes:
        eps: radius of the L∞ ball.
        step: size of each signed-gradient step.
        steps: number of steps.
        random_start: start from a uniform draw in the ball instead of the clean image.
    """

    eps: float = 8 / 255
    step: float = 2 / 255
    steps: int = 10
    random_start: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.eps < 1:
            raise InvalidInputError(f"PGD eps: must be in (0, 1), got {self.eps}")
        if not self.step > 0:
            raise InvalidInputError(f"PGD step: must be > 0, got {self.step}")
        if self.steps < 1:
            raise InvalidInputError(f"PGD steps: must be >= 1, got {self.steps}")


def bare_model(model: nn.Module) -> nn.Module:
    """The module inside a data-parallel wrapper (DistributedDataParallel, DataParallel), else ``model``.

    Attacks, evaluation and batch-norm recalibration run on the bare module: a DDP forward with gradients on
    arms an all-reduce of the parameters' gradients that an input gradient never triggers, and one rank
    evaluating alone must not join the other ranks' collectives.
    """
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block, then restore its previous train/eval mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _check_images_labels(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    check_images(x)
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (len(x),):
        raise InvalidInputError(
            f"y: must be an int64 tensor of shape ({len(x)},), got "
            f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}"
        )
    if y.min() < 0 or (isinstance(model, Classifier) and y.max() >= model.num_classes):
        upper = model.num_classes if isinstance(model, Classifier) else "num_classes"
        raise InvalidInputError(f"y: labels must be in [0, {upper}), got range [{y.min()}, {y.max()}]")


def augment_batch(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, independently per image, vectorised.

    Args:
        x: float (B, C, H, W).
        generator: CPU generator; draws B crop offsets in [0, 2·padding]² then B flip coins (p = 1/2).
        padding: zero padding on every side before cropping back to H×W, in pixels.

    Returns:
        float (B, C, H, W) on the device of x.
    """
    offsets = torch.randint(0, 2 * padding + 1, (len(x), 2), generator=generator)
    flips = torch.rand(len(x), generator=generator) < 0.5
    return crop_and_flip(x, offsets, flips, padding)


def crop_and_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int) -> torch.Tensor:
    """The crop at ``offsets`` (B, 2) int64 (row, column in [0, 2·padding]) of x (B, C, H, W) zero-padded by
    ``padding``, flipped horizontally where ``flips`` (B,) bool: differentiable in x (gathers)."""
    batch, channels, height, width = x.shape
    offsets, flips = offsets.to(x.device), flips.to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = offsets[:, 0:1] + torch.arange(height, device=x.device)  # (B, H)
    columns = torch.arange(width, device=x.device).expand(batch, width)
    columns = offsets[:, 1:2] + torch.where(flips[:, None], width - 1 - columns, columns)  # (B, W)
    rows = rows[:, None, :, None].expand(batch, channels, height, padded.shape[3])
    cropped_rows = padded.gather(2, rows)  # (B, C, H, W + 2p)
    columns = columns[:, None, None, :].expand(batch, channels, height, width)
    return cropped_rows.gather(3, columns)


def pgd_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: PGDConfig,
    generator: torch.Generator | None = None,
    *,
    minimise: bool = False,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """L∞ PGD on the cross-entropy of ``model`` around x: maximised (untargeted attack, the default) or
    minimised towards ``y`` (``minimise=True``: a targeted attack when y are target classes, or the
    error-minimising noise of unlearnable examples when y are the true labels).

    The model runs in eval mode during the attack (batch-norm running statistics, no statistics update), as in
    most PyTorch adversarial-training code, and is restored to its previous mode afterwards. Each step is
    x ← Π(x ± step·sign(∇ₓ CE)), Π projecting onto the eps ball around x and then onto [0, 1].

    Args:
        model: classifier on the device of x.
        x: float (B, C, H, W) in [0, 1].
        y: int64 (B,) labels, or float (B, num_classes) class probabilities.
        config: radius, step size and number of steps.
        generator: CPU generator for the random start (the global RNG if None).
        minimise: descend the cross-entropy instead of ascending it.
        start: where to start, float (B, C, H, W), projected first (e.g. the previous iteration's x + δ);
            overrides ``config.random_start``.

    Returns:
        x_adv: float (B, C, H, W), detached, with |x_adv − x| ≤ eps and values in [0, 1].
    """
    x = x.detach()
    lower, upper = (x - config.eps).clamp(min=0), (x + config.eps).clamp(max=1)
    direction = -1.0 if minimise else 1.0
    if start is not None:
        x_adv = torch.min(torch.max(start.detach().to(x.dtype), lower), upper)
    elif config.random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x_adv = torch.min(torch.max(x + (2 * noise - 1) * config.eps, lower), upper)
    else:
        x_adv = x.clone()
    with eval_mode(model):
        for _ in range(config.steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), y, reduction="sum")
            (gradient,) = torch.autograd.grad(loss, x_adv)
            x_adv = torch.min(torch.max(x_adv.detach() + direction * config.step * gradient.sign(), lower), upper)
    return x_adv


def _hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """int64 (B,) labels from labels (B,) or class probabilities (B, num_classes)."""
    return targets.argmax(dim=1) if targets.ndim == 2 else targets


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.SGD:
    """SGD with the recipe's learning rate, momentum and weight decay on every parameter of ``model``."""
    return torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: cosine from the recipe's lr to 0 over ``total_steps`` steps, or constant."""
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def train_one_epoch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    recipe: Recipe,
    generator: torch.Generator,
    adversarial: PGDConfig | None = None,
    device: Device = "cpu",
    batch_transform: BatchTransform | None = None,
    progress: bool = False,
    compute: Compute = Compute(),
    training_loss: TrainingLoss | None = None,
    epoch: int = 1,
) -> dict[str, float]:
    """One pass over (x, y) in a seeded random order, one optimiser and scheduler step per batch.

    Per batch: move to ``device`` → augment (if the recipe says so) → ``batch_transform`` → PGD examples
    replace the batch (if ``adversarial``) → a step on the cross-entropy, or on ``training_loss``.

    Args:
        model: on ``device``; left in train mode.
        x: float (N, C, H, W) in [0, 1]; y: int64 (N,).
        optimizer, scheduler: stepped once per batch (scheduler may be None).
        recipe: batch size and augmentation (its epochs and optimiser fields are not read here).
        generator: CPU generator for the shuffle, augmentation, batch transform and PGD start.
        adversarial: train on PGD examples made with this config (Madry adversarial training).
        device: where the model runs.
        batch_transform: optional per-batch defence or augmentation, see :data:`BatchTransform`.
        progress: show a tqdm bar over the batches.
        compute: memory format and autocast of the forward pass (PGD examples are made without autocast).
        training_loss: replaces the cross-entropy of the batch, see :data:`TrainingLoss`.
        epoch: this epoch's number (1-based), passed to ``training_loss``.

    Returns:
        {"loss": mean training loss (cross-entropy in nats by default), "accuracy": fraction in [0, 1]} over
        the training batches as the model saw them (augmented, transformed, adversarial; with a
        ``training_loss``, the logits it returns), accuracy against the argmax of the targets.
    """
    _check_images_labels(bare_model(model), x, y)
    model.train()
    loss_sum, correct = 0.0, 0
    order = torch.randperm(len(x), generator=generator)
    batches = tqdm(
        order.split(recipe.batch_size),
        total=math.ceil(len(x) / recipe.batch_size),
        leave=False,
        unit="batch",
        disable=not progress,
    )

    def forward(images: torch.Tensor) -> torch.Tensor:
        with compute.autocast(device):
            return model(images)

    for batch in batches:
        inputs, targets = compute.move(x[batch], device), compute.move(y[batch], device)
        if recipe.augment:
            inputs = augment_batch(inputs, generator, recipe.crop_padding)
        if batch_transform is not None:
            inputs, targets = batch_transform(inputs, targets, generator)
        if adversarial is not None:
            inputs = pgd_attack(bare_model(model), inputs, targets, adversarial, generator)
        if training_loss is None:
            with compute.autocast(device):  # the loss too: autocast computes cross-entropy in float32
                logits = model(inputs)
                loss = F.cross_entropy(logits, targets)
        else:  # the one place a defence changes the loss (ue_core.defences.training_loss)
            loss, logits = training_loss(forward, inputs, targets, generator, epoch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.item() * len(batch)
        correct += (logits.argmax(dim=1) == _hard_labels(targets)).sum().item()
    return {"loss": loss_sum / len(x), "accuracy": correct / len(x)}


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512, device: Device = "cpu",
    compute: Compute = Compute(),
) -> float:
    """Top-1 accuracy, a fraction in [0, 1], of ``model`` (on ``device``, run in eval mode) on x (N, C, H, W),
    y int64 (N,)."""
    _check_images_labels(model, x, y)
    correct = 0
    with eval_mode(model):
        for batch in torch.arange(len(x)).split(batch_size):
            with compute.autocast(device):
                logits = model(compute.move(x[batch], device))
            correct += (logits.argmax(dim=1) == y[batch].to(device)).sum().item()
    return correct / len(x)


def robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    pgd_config: PGDConfig,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    device: Device = "cpu",
) -> float:
    """Top-1 accuracy, a fraction in [0, 1], on PGD examples made against ``model`` itself (white box)."""
    _check_images_labels(model, x, y)
    correct = 0
    for batch in torch.arange(len(x)).split(batch_size):
        inputs, targets = x[batch].to(device), y[batch].to(device)
        x_adv = pgd_attack(model, inputs, targets, pgd_config, generator)
        with torch.no_grad(), eval_mode(model):
            correct += (model(x_adv).argmax(dim=1) == targets).sum().item()
    return correct / len(x)


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: Recipe,
    seed: int,
    adversarial: PGDConfig | None = None,
    eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: bool = False,
    device: Device = "cpu",
    batch_transform: BatchTransform | None = None,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
    compute: Compute = Compute(),
    training_loss: TrainingLoss | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` in place on (x, y) with ``recipe``: SGD and a per-step schedule made here, seeded.

    Args:
        model: moved to ``device``; its initial weights are the caller's (see ``build_model(seed=...)``).
        x: float (N, C, H, W) in [0, 1]; y: int64 (N,).
        recipe: epochs, optimiser, schedule, batch size, augmentation.
        seed: seeds the one CPU generator behind every random draw of the run.
        adversarial: PGD adversarial training with this config.
        eval_data: (x, y) evaluated after every epoch.
        progress: tqdm bars over epochs and batches.
        device: where the model runs.
        batch_transform: optional per-batch defence or augmentation, see :data:`BatchTransform`.
        on_epoch_end: called with each epoch's record (below) as soon as the epoch ends, e.g. to report it;
            it may add keys to the record. Batch-norm recalibration comes after the last call.
        compute: memory format and autocast of the model's passes (the model is converted in place).
        training_loss: replaces every batch's cross-entropy, called with the epoch (e.g. UEraser's largest
            loss over augmented copies, see :data:`TrainingLoss` and :func:`ue_core.defences.training_loss`).

    ``model`` may be wrapped in DistributedDataParallel (one process per rank, each with its own x, y and
    seed): optimiser steps go through the wrapper, attacks, evaluation and recalibration use the bare module.

    Returns:
        One dict per epoch: epoch (1-based), loss, accuracy (training, see :func:`train_one_epoch`),
        lr (after the epoch's last step), seconds (wall time), and eval_accuracy if ``eval_data`` is given.
    """
    module = bare_model(model)
    _check_images_labels(module, x, y)
    if eval_data is not None:
        _check_images_labels(module, *eval_data)
    compute.prepare(model.to(device))
    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe, recipe.epochs * math.ceil(len(x) / recipe.batch_size))
    history: list[dict[str, float]] = []
    epochs = tqdm(range(1, recipe.epochs + 1), unit="epoch", disable=not progress)
    for epoch in epochs:
        start = time.perf_counter()
        record: dict[str, float] = {"epoch": epoch}
        record |= train_one_epoch(
            model,
            x,
            y,
            optimizer,
            scheduler,
            recipe,
            generator,
            adversarial=adversarial,
            device=device,
            batch_transform=batch_transform,
            progress=progress,
            compute=compute,
            training_loss=training_loss,
            epoch=epoch,
        )
        record["lr"] = optimizer.param_groups[0]["lr"]
        if eval_data is not None:
            record["eval_accuracy"] = evaluate(module, *eval_data, device=device, compute=compute)
        record["seconds"] = time.perf_counter() - start
        if on_epoch_end is not None:
            on_epoch_end(record)
        history.append(record)
        epochs.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
    if recipe.recalibrate_bn and adversarial is None:
        transform = None
        if batch_transform is not None:
            transform_generator = torch.Generator().manual_seed(seed)
            transform = lambda images, labels: batch_transform(images, labels, transform_generator)[0]
        recalibrate_batch_norm(module, x, y, recipe.batch_size, device, transform, compute)
    return history


@torch.no_grad()
def recalibrate_batch_norm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 256,
    device: Device = "cpu",
    transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    compute: Compute = Compute(),
) -> None:
    """Reset every batch-norm layer's running statistics to their average over (x, y) in batches.

    x: float (N, C, H, W) in [0, 1]; ``transform(images, labels) -> images`` is applied per batch first.
    The model's mode and the layers' momenta are restored afterwards.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches below
    was_training = model.training
    model.train()
    for batch in torch.arange(len(x)).split(batch_size):
        images = compute.move(x[batch], device)
        with compute.autocast(device):
            model(images if transform is None else transform(images, y[batch].to(device)))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.train(was_training)


@torch.no_grad()
def compute_features(
    model: Classifier,
    x: torch.Tensor,
    batch_size: int = 256,
    device: Device = "cpu",
    transform: RowTransform | None = None,
    compute: Compute = Compute(),
) -> torch.Tensor:
    """Penultimate features φ(x), or φ(t(x)) with a per-row ``transform`` t, (N, feature_dim) of x's dtype on
    the device of x, with the model in eval mode.

    Args:
        model: on ``device``.
        x: float (N, C, H, W) in [0, 1].
        transform: called as transform(batch images, their row positions in x) → images of the same shape.
    """
    check_images(x)
    with eval_mode(model):
        features = []
        for batch in torch.arange(len(x)).split(batch_size):
            inputs = compute.move(x[batch], device)
            with compute.autocast(device):
                batch_features = model.features(inputs if transform is None else transform(inputs, batch))
            features.append(batch_features.to(x.device, x.dtype))
        return torch.cat(features)


def feature_accuracy(model: Classifier, features: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy, a fraction in [0, 1], of ``model``'s head on penultimate features (N, feature_dim) of
    labels y int64 (N,): ``evaluate(model, x, y)`` without a second forward pass when the features
    ``compute_features(model, x)`` are at hand."""
    if features.ndim != 2 or features.shape != (len(y), model.feature_dim):
        raise InvalidInputError(
            f"features must be (N, {model.feature_dim}) for {len(y)} labels, got {tuple(features.shape)}"
        )
    with torch.no_grad():
        logits = model.head(features.to(model.head.weight.device))
    return (logits.argmax(dim=1).cpu() == y.cpu()).sum().item() / len(y)


def feature_vjp(
    model: Classifier,
    x: torch.Tensor,
    grad_features: torch.Tensor,
    batch_size: int = 128,
    device: Device = "cpu",
    transform: RowTransform | None = None,
    compute: Compute = Compute(),
) -> torch.Tensor:
    """Vector-Jacobian product J_φ(x)ᵀ g of the penultimate features, per image, with the model in eval mode
    (of x ↦ φ(t(x)) with a per-row ``transform`` t, as in :func:`compute_features`).

    Turns a gradient with respect to the features into a gradient with respect to the pixels: row i of the
    result is ∂⟨φ(x_i), g_i⟩/∂x_i. The parameters' ``.grad`` is not touched.

    Args:
        model: on ``device``.
        x: float (N, C, H, W) in [0, 1].
        grad_features: g, float (N, feature_dim).
        transform: as in :func:`compute_features`; differentiable in its images.

    Returns:
        float (N, C, H, W) on the device of x, in units of the features' gradient per unit of pixel value.
    """
    check_images(x)
    if not isinstance(grad_features, torch.Tensor) or grad_features.shape != (len(x), model.feature_dim):
        raise InvalidInputError(
            f"grad_features: must have shape ({len(x)}, {model.feature_dim}), got "
            f"{tuple(getattr(grad_features, 'shape', ()))}"
        )
    pixel_gradients = []
    with eval_mode(model):
        for batch in torch.arange(len(x)).split(batch_size):
            inputs = compute.move(x[batch].detach(), device).requires_grad_(True)
            with compute.autocast(device):
                features = model.features(inputs if transform is None else transform(inputs, batch))
            (gradient,) = torch.autograd.grad(features.to(x.dtype), inputs, grad_outputs=grad_features[batch].to(device))
            pixel_gradients.append(gradient.to(x.device))
    return torch.cat(pixel_gradients)
