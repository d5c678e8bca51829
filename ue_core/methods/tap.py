"""Targeted adversarial poisoning (TAP), the class-targeted adversarial-example baseline.

Paper: "Adversarial Examples Make Strong Poisons", Fowl, Goldblum, Chiang, Geiping, Czaja, Goldstein,
NeurIPS 2021. A model trained on the clean data crafts, for every image, a targeted adversarial example
towards the next class; a victim trained on them learns features that point to the wrong class.

    model ← trained on the clean images (``epochs`` of the ``recipe``)
    target t = (y + 1) mod C                                             (a fixed class permutation)
    δ ← PGD minimising CE(model(x + δ), t) from δ = 0: ``steps`` signed steps of ``step_size``,
        projected to the L∞ ball of radius ε and to [0, 1]

Defaults: ResNet-18 crafting model with the standard recipe, 250 steps, ε = 8/255. The authors optimise with
signed Adam and differentiable augmentation; plain signed PGD with the same budget and step count is what
this baseline runs (simpler, and stated). L∞ only. Shapes: images and δ float (N, C, H, W) in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ue_core.data.dataset import ImageDataset
from ue_core.errors import InvalidInputError
from ue_core.methods.base import ProtectionMethod, ProtectionResult
from ue_core.models import MODEL_NAMES, build_model
from ue_core.pga import Budget
from ue_core.training import PGDConfig, Recipe, evaluate, fit, pgd_attack, recipe


@dataclass(frozen=True)
class TAPConfig:
    """Targeted adversarial poisoning.

    Attributes:
        model: the crafting network, a name from ue_core.models.MODEL_NAMES.
        epochs, recipe, lr, batch_size: how it is trained on the clean images (ue_core.training.recipe).
        steps, step_size: PGD steps towards the target class and their size in [0, 1] pixel units.
        seed: seeds the model's weights and its training.
    """

    model: str = "resnet18"
    epochs: int = 30
    recipe: str = "standard"
    lr: float = 0.1
    batch_size: int = 128
    steps: int = 250
    step_size: float = 1 / 255
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in MODEL_NAMES:
            raise InvalidInputError(f"tap model: unknown {self.model!r}; expected one of {', '.join(MODEL_NAMES)}")
        if self.steps < 1:
            raise InvalidInputError(f"tap steps: must be >= 1, got {self.steps}")
        if not self.step_size > 0:
            raise InvalidInputError(f"tap step_size: must be > 0, got {self.step_size}")
        self.training_recipe()  # validates recipe name, epochs, lr and batch size

    def training_recipe(self) -> Recipe:
        """The crafting model's training recipe."""
        return recipe(self.recipe, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size)


def target_classes(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The class each image is pushed towards: (y + 1) mod C, int64 (N,)."""
    return (labels + 1) % num_classes


class TargetedAdversarialPoisoning(ProtectionMethod):
    """Class-targeted adversarial examples of a clean-trained model. See the module docstring."""

    name = "tap"
    norms = ("linf",)

    def __init__(self, budget: Budget, config: TAPConfig, device: str = "cpu") -> None:
        """``budget`` gives eps (L∞ only); ``config`` the crafting model and the PGD; the model runs on
        ``device`` (images and δ stay on the CPU, batches move)."""
        super().__init__(budget, device)
        self.config = config

    def perturb(self, dataset: ImageDataset, progress: bool = False) -> ProtectionResult:
        """Train the crafting model, then attack every batch. Summary: clean_train_accuracy (the crafting
        model on the clean images) and target_rate (the fraction of x + δ it assigns to the target class)."""
        if dataset.num_classes < 2:
            raise InvalidInputError("tap needs at least 2 classes to choose a target class")
        config = self.config
        images, labels = dataset.tensors()
        model = build_model(config.model, dataset.num_classes, in_channels=images.shape[1],
                            image_size=images.shape[-1], seed=config.seed)
        fit(model, images, labels, config.training_recipe(), seed=config.seed, progress=progress, device=self.device)
        targets = target_classes(labels, dataset.num_classes)
        attack = PGDConfig(eps=self.budget.eps, step=config.step_size, steps=config.steps, random_start=False)
        delta = torch.empty_like(images)
        batches = torch.arange(len(images)).split(config.batch_size)
        for batch in tqdm(batches, desc="TAP batches", disable=not progress):
            x = images[batch].to(self.device)
            delta[batch] = (pgd_attack(model, x, targets[batch].to(self.device), attack, minimise=True) - x).cpu()
        summary = {
            "clean_train_accuracy": evaluate(model, images, labels, config.batch_size, self.device),
            "target_rate": evaluate(model, images + delta, targets, config.batch_size, self.device),
        }
        return ProtectionResult(release=dataset, delta=delta, summary=summary, surrogate=model)
