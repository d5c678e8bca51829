"""The evaluate job's config: the victim, the mixing arms and ratios, the defences."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipelines.config.files import read_yaml
from ue_core.compute import Compute
from ue_core.config import from_dict, set_dotted
from ue_core.data.mixing import MODES
from ue_core.defences import DefenceConfig
from ue_core.errors import InvalidInputError
from ue_core.models import MODEL_NAMES, Classifier, build_model
from ue_core.training import Recipe, recipe


@dataclass(frozen=True)
class VictimConfig:
    """The learner whose clean test accuracy measures how unlearnable a release is (docs/method.md §4).

    Attributes:
        model: one of ue_core.models.MODEL_NAMES (paper default: resnet18).
        width: base width of "small_cnn" (None: its default, 32, the surrogate's default; 64 makes a victim
            that is not the surrogate); an error for the other models.
        recipe: "standard" (SGD 0.1, cosine, crop + flip) or "plain" (no augmentation).
        epochs: training epochs (paper scale: 30 to 200).
        lr: peak learning rate (None: the recipe's).
        batch_size: global batch size, split evenly over the workers (None: the recipe's, 128).
        workers: Ray Train workers, one DDP process each (None: one per GPU, else 1: on CPUs a second
            process on the same node only splits the same cores).
        compute: channels-last memory and bf16 autocast for training and evaluation (ue_core.compute; off by
            default, for GPUs).
    """

    model: str = "resnet18"
    width: int | None = None
    recipe: str = "standard"
    epochs: int = 30
    lr: float | None = None
    batch_size: int | None = None
    workers: int | None = None
    compute: Compute = field(default_factory=Compute)

    def __post_init__(self) -> None:
        if self.model not in MODEL_NAMES:
            raise InvalidInputError(f"unknown victim {self.model!r}; expected one of {', '.join(MODEL_NAMES)}")
        if self.workers is not None and self.workers < 1:
            raise InvalidInputError(f"victim workers: must be >= 1, got {self.workers}")
        if self.width is not None and (self.model != "small_cnn" or self.width < 1):
            raise InvalidInputError(f"victim width: only small_cnn has one, >= 1; got {self.width} for {self.model}")
        self.to_recipe()  # validates recipe name, epochs, lr and batch size

    def build(self, num_classes: int, image_shape: tuple[int, int, int], seed: int | None = None) -> Classifier:
        """A fresh victim for images of ``image_shape`` (H, W, C)."""
        height, _, channels = image_shape
        return build_model(self.model, num_classes, in_channels=channels, image_size=height, width=self.width,
                           seed=seed)

    def to_recipe(self, workers: int = 1) -> Recipe:
        """The training recipe, with the per-worker batch size for ``workers`` DDP processes."""
        overrides: dict[str, Any] = {"epochs": self.epochs}
        if self.lr is not None:
            overrides["lr"] = self.lr
        if self.batch_size is not None:
            overrides["batch_size"] = self.batch_size
        full = recipe(self.recipe, **overrides)
        if full.batch_size % workers:
            raise InvalidInputError(
                f"victim batch_size {full.batch_size} does not split evenly over {workers} workers"
            )
        return recipe(self.recipe, **(overrides | {"batch_size": full.batch_size // workers}))


@dataclass(frozen=True)
class EvaluateConfig:
    """An evaluate job: which arms of the mixing protocol to train, with which victim and defence.

    Attributes:
        layout: the clean source's layout ("auto" to detect).
        test_subset: clean test images to evaluate on, class-balanced (None: the whole test split).
        ratio: probability in [0, 1] that a training index takes its protected version.
        modes: the arms to train (ue_core.data.mixing.MODES); the triple by default, "poison-only" on request.
        seed: seeds the mixing draw, the victim's initial weights and its training.
        robust_accuracy: also report the final test accuracy under the PGD attack of ``defence.pgd``.
        bayes_error_subset: β̂ of the clean images and of the release in the clean-all victim's feature space
            is measured on a class-balanced subset of at most this many indices (None: all; the exact
            estimator costs 2·N²·D multiply-adds).
        victim: model, recipe, epochs, workers.
        defence: training-time defences (ue_core.defences).
    """

    layout: str = "auto"
    test_subset: int | None = None
    ratio: float = 0.5
    modes: tuple[str, ...] = ("clean-all", "clean-only", "mixed")
    seed: int = 0
    robust_accuracy: bool = False
    bayes_error_subset: int | None = 5000
    victim: VictimConfig = field(default_factory=VictimConfig)
    defence: DefenceConfig = field(default_factory=DefenceConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "modes", tuple(self.modes))
        if not 0.0 <= self.ratio <= 1.0:  # also rejects NaN
            raise InvalidInputError(f"mixing ratio must be in [0, 1], got {self.ratio}")
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes or len(set(self.modes)) != len(self.modes):
            raise InvalidInputError(
                f"evaluate modes: expected distinct values from {', '.join(MODES)}, got {', '.join(self.modes)}"
            )
        if self.test_subset is not None and self.test_subset < 1:
            raise InvalidInputError(f"test_subset: must be >= 1 (or null for all), got {self.test_subset}")
        if self.bayes_error_subset is not None and self.bayes_error_subset < 2:
            raise InvalidInputError(
                f"bayes_error_subset: must be >= 2 (or null for all), got {self.bayes_error_subset}"
            )


def load_evaluate_config(config_file: str | None = None, overrides: dict[str, Any] | None = None) -> EvaluateConfig:
    """YAML file → dotted-key overrides (e.g. {"victim.epochs": 5}) → EvaluateConfig."""
    data = read_yaml(config_file) if config_file is not None else {}
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return from_dict(EvaluateConfig, data)
