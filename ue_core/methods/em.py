"""Error-minimising noise (EM), the sample-wise min-min baseline.

Paper: "Unlearnable Examples: Making Personal Data Unexploitable", Huang, Ma, Erfani, Bailey, Wang, ICLR 2021.
The noise makes every image *too easy*: δ minimises the loss of a model that is itself trained on x + δ, so a
victim learns the noise instead of the image. It is the method BEO's paper compares against under mixing.

    δ ← U(−ε, ε); model fresh; optimiser SGD(lr, momentum 0.9, weight decay 5e-4), kept for the whole run
    repeat (at most ``max_iterations`` times):
        ``train_steps`` optimiser steps on clip(x + δ) (mini-batches of a reshuffled order, no augmentation)
        for every batch: δ ← PGD minimising CE(model(x + δ), y) from the current δ
                         (``pgd_steps`` signed steps of ``step_size``, projected to the L∞ ball and [0, 1])
        stop once the model's accuracy on x + δ ≥ 1 − ``stop_error``

Defaults are the authors' sample-wise CIFAR-10 setting (ResNet-18, 10 train steps, 20 PGD steps of 0.8/255,
ε = 8/255, stop at 99% accuracy). L∞ only, as in the paper. Shapes: images and δ float (N, C, H, W) in
[0, 1] pixel units.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ue_core.data.dataset import ImageDataset
from ue_core.errors import InvalidInputError
from ue_core.methods.base import ProtectionMethod, ProtectionResult
from ue_core.models import MODEL_NAMES, build_model
from ue_core.pga import Budget
from ue_core.training import PGDConfig, evaluate, make_optimizer, pgd_attack, recipe


@dataclass(frozen=True)
class EMConfig:
    """Error-minimising noise (sample-wise).

    Attributes:
        model: the noise generator's network, a name from ue_core.models.MODEL_NAMES.
        lr, batch_size: its SGD learning rate (constant, momentum 0.9, weight decay 5e-4) and batch size.
        train_steps: optimiser steps on x + δ between two noise updates.
        pgd_steps, step_size: PGD steps per noise update and their size in [0, 1] pixel units.
        stop_error: stop when the model's error on x + δ falls below this fraction.
        max_iterations: stop after this many (train, noise update) iterations in any case.
        seed: seeds the initial noise, the model's weights and the batch order.
    """

    model: str = "resnet18"
    lr: float = 0.1
    batch_size: int = 128
    train_steps: int = 10
    pgd_steps: int = 20
    step_size: float = 0.8 / 255
    stop_error: float = 0.01
    max_iterations: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in MODEL_NAMES:
            raise InvalidInputError(f"em model: unknown {self.model!r}; expected one of {', '.join(MODEL_NAMES)}")
        for name in ("batch_size", "train_steps", "pgd_steps", "max_iterations"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"em {name}: must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or not self.step_size > 0:
            raise InvalidInputError(f"em lr and step_size: must be > 0, got {self.lr} and {self.step_size}")
        if not 0 <= self.stop_error < 1:
            raise InvalidInputError(f"em stop_error: must be in [0, 1), got {self.stop_error}")


class ErrorMinimisingNoise(ProtectionMethod):
    """Sample-wise error-minimising noise (min-min). See the module docstring."""

    name = "em"
    norms = ("linf",)

    def __init__(self, budget: Budget, config: EMConfig, device: str = "cpu") -> None:
        """``budget`` gives eps (L∞ only); ``config`` the generator's training and PGD; the model runs on
        ``device`` (images and δ stay on the CPU, batches move)."""
        super().__init__(budget, device)
        self.config = config

    def perturb(self, dataset: ImageDataset, progress: bool = False) -> ProtectionResult:
        """Alternate training and noise updates; the history has one record per iteration: iteration,
        train_loss (mean over its train steps), accuracy_on_protected (the model on x + δ after the noise
        update, the stopping criterion), delta_mean_abs, delta_max_abs, seconds. Summary: iterations and
        final_accuracy_on_protected."""
        config, eps = self.config, self.budget.eps
        images, labels = dataset.tensors()
        generator = torch.Generator().manual_seed(config.seed)
        delta = (torch.rand(images.shape, generator=generator) * 2 - 1) * eps
        delta = (images + delta).clamp(0, 1) - images
        model = build_model(config.model, dataset.num_classes, in_channels=images.shape[1],
                            image_size=images.shape[-1], seed=config.seed).to(self.device)
        optimizer = make_optimizer(model, recipe("plain", lr=config.lr, batch_size=config.batch_size))
        batches = _endless_batches(len(images), config.batch_size, generator)
        attack = PGDConfig(eps=eps, step=config.step_size, steps=config.pgd_steps, random_start=False)
        history: list[dict[str, float]] = []
        iterations = tqdm(range(1, config.max_iterations + 1), desc="EM iterations", disable=not progress)
        for iteration in iterations:
            started = time.perf_counter()
            model.train()
            losses = []
            for _ in range(config.train_steps):
                batch = next(batches)
                inputs, targets = (images[batch] + delta[batch]).to(self.device), labels[batch].to(self.device)
                loss = F.cross_entropy(model(inputs), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            for batch in torch.arange(len(images)).split(config.batch_size):
                x, start = images[batch].to(self.device), (images[batch] + delta[batch]).to(self.device)
                x_adv = pgd_attack(model, x, labels[batch].to(self.device), attack, minimise=True, start=start)
                delta[batch] = (x_adv - x).cpu()
            accuracy = evaluate(model, images + delta, labels, batch_size=config.batch_size, device=self.device)
            history.append({
                "iteration": iteration,
                "train_loss": sum(losses) / len(losses),
                "accuracy_on_protected": accuracy,
                "delta_mean_abs": float(delta.abs().mean()),
                "delta_max_abs": float(delta.abs().max()),
                "seconds": time.perf_counter() - started,
            })
            iterations.set_postfix(accuracy=f"{accuracy:.4f}")
            if accuracy >= 1 - config.stop_error:
                break
        summary = {"iterations": float(len(history)),
                   "final_accuracy_on_protected": history[-1]["accuracy_on_protected"]}
        return ProtectionResult(release=dataset, delta=delta, history=history, summary=summary, surrogate=model)


def _endless_batches(count: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches (int64) of a fresh random order of ``count`` rows each pass, forever."""
    while True:
        yield from torch.randperm(count, generator=generator).split(batch_size)
