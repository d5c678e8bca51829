"""A cheap efficacy probe along a protect run: does a small victim trained on the mixture learn less?

The surrogate's clean test accuracy is already the poison-only probe (it trains on the protected images
alone). The mixed probe adds what the product is for: every ``every`` rounds, the current δ is released
(quantised and checked exactly as the final release is), a small victim trains on the r-mixture of that
release with the clean images (ue_core.data.mixing, the evaluation protocol's draw), and its clean test
accuracy is recorded beside the clean-only reference (the same victim on the unprotected indices alone,
trained once per run). A probe is a trend line for choosing the horizon, not a result: `ue evaluate` is.
"""

from __future__ import annotations

from dataclasses import dataclass

from ue_core.data.dataset import ImageDataset
from ue_core.data.mixing import build_training_set
from ue_core.errors import InvalidInputError
from ue_core.models import MODEL_NAMES, build_model
from ue_core.training import evaluate, fit, recipe


@dataclass(frozen=True)
class ProbeConfig:
    """The mixed probe (off unless ``every`` > 0; it needs the job's test images).

    Attributes:
        every: probe after every ``every``-th round and after the last one (0: never).
        ratio: mixing ratio r of the probe's training set.
        model, width: the probe victim (width: small_cnn only; 64 is not the default surrogate).
        recipe, epochs, lr: how it trains.
        seed: seeds the mixing draw and the victim.
    """

    every: int = 0
    ratio: float = 0.5
    model: str = "small_cnn"
    width: int | None = 64
    recipe: str = "plain"
    epochs: int = 5
    lr: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.every < 0:
            raise InvalidInputError(f"probe every: must be >= 0 (0: off), got {self.every}")
        if not 0 < self.ratio < 1:
            raise InvalidInputError(f"probe ratio: must be in (0, 1), got {self.ratio}")
        if self.model not in MODEL_NAMES:
            raise InvalidInputError(f"probe model: unknown {self.model!r}; expected one of {', '.join(MODEL_NAMES)}")
        if self.width is not None and self.model != "small_cnn":
            raise InvalidInputError(f"probe width: only small_cnn has one, not {self.model!r} (set width: null)")
        recipe(self.recipe, epochs=self.epochs, lr=self.lr)  # names a bad recipe, epochs or lr

    def due(self, rounds_done: int, rounds: int) -> bool:
        """Whether the probe runs after ``rounds_done`` of ``rounds`` rounds."""
        return self.every > 0 and (rounds_done % self.every == 0 or rounds_done == rounds)


def victim_accuracy(train: ImageDataset, test: ImageDataset, config: ProbeConfig) -> float:
    """Clean test accuracy in [0, 1] of the probe victim trained on ``train``."""
    x, y = train.tensors()
    model = build_model(config.model, train.num_classes, in_channels=x.shape[1], image_size=x.shape[-1],
                        width=config.width, seed=config.seed)
    fit(model, x, y, recipe(config.recipe, epochs=config.epochs, lr=config.lr), seed=config.seed)
    return evaluate(model, *test.tensors())


def mixed_probe(clean: ImageDataset, release: ImageDataset, test: ImageDataset, config: ProbeConfig) -> float:
    """Test accuracy of the probe victim on the r-mixture of ``release`` (the same indices as ``clean``)."""
    train, _ = build_training_set(clean, release, "mixed", config.ratio, config.seed)
    return victim_accuracy(train, test, config)


def clean_only_probe(clean: ImageDataset, test: ImageDataset, config: ProbeConfig) -> float:
    """The reference: the probe victim on the indices the mixture leaves unprotected, alone."""
    train, _ = build_training_set(clean, clean, "clean-only", config.ratio, config.seed)
    return victim_accuracy(train, test, config)
