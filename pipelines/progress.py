"""Progress lines: one plain line per protect round, per victim epoch and per sweep trial.

    protect round 3/10: bayes_error=0.8774 surrogate_train_accuracy=0.9100 seconds=16.3
    victim mixed epoch 4/10: train_loss=0.5123 train_accuracy=0.8012 test_accuracy=0.7800 epoch_seconds=3.2
    victim mixed done: final_test_accuracy=0.7880 best_test_accuracy=0.7900
    sweep trial 5/32 mixed beo eps=8/255 ratio=0.5 small_cnn none: final_test_accuracy=0.7965 ...

The driver process prints them (Ray's worker logs are not forwarded to it, so a line printed in a worker
would reach no job log), to stderr, flushed, through tqdm so that they sit above any progress bar: a terminal,
`ue submit`, `ray job logs` and a KubeRay job's log all show them, and stdout keeps only the command's
results. They are printed with and without ``--no-progress``, which hides the bars only. The figures are
named as the MLflow metrics are, so ``grep 'protect round'`` and the run's metrics read alike.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

from tqdm.auto import tqdm

ROUND_FIGURES = ("bayes_error", "surrogate_train_accuracy", "surrogate_test_accuracy", "probe_mixed_accuracy",
                 "probe_clean_only_accuracy")
"""What a protect round line shows, of the round's last record, when present."""
EPOCH_FIGURES = ("train_loss", "train_accuracy", "test_accuracy", "epoch_seconds")
"""What a victim epoch line shows, of rank 0's report, when present."""
FINAL_FIGURES = ("final_test_accuracy", "best_test_accuracy", "final_robust_accuracy")
"""What a victim's last line and a sweep trial's line show, when present."""


def figure(key: str, value: Any) -> str:
    """``key=value``: seconds with one decimal, other floats with four, anything else as it is."""
    if isinstance(value, float):
        return f"{key}={value:.1f}" if "seconds" in key else f"{key}={value:.4f}"
    return f"{key}={value}"


def progress_line(what: str, figures: Mapping[str, Any], keys: tuple[str, ...] | None = None) -> str:
    """"WHAT: k1=v1 k2=v2": the figures named in ``keys`` that are present (all of them without ``keys``)."""
    shown = [figure(k, figures[k]) for k in (keys if keys is not None else tuple(figures)) if k in figures]
    return f"{what}: {' '.join(shown)}"


def emit(line: str) -> None:
    """Print one progress line to stderr, above any tqdm bar, flushed."""
    tqdm.write(line, file=sys.stderr)
    sys.stderr.flush()


class RoundLines:
    """Prints ``protect round k/N: …`` after each BEO round (either engine), with the seconds since the
    previous line, or since this object was made for the first."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.last = time.perf_counter()

    def __call__(self, records: list[dict[str, float]]) -> None:
        """``records``: one round's history records (one per step); the line shows the last one's figures."""
        now = time.perf_counter()
        figures = {**{k: records[-1][k] for k in ROUND_FIGURES if k in records[-1]}, "seconds": now - self.last}
        self.last = now
        emit(progress_line(f"protect round {int(records[-1]['round']) + 1}/{self.rounds}", figures))


class EpochLines:
    """Prints ``victim LABEL epoch k/N: …`` for each epoch report of a victim (rank 0's, with its test
    accuracy; ``epoch k`` when ``epochs`` is None) and ``victim LABEL done: …`` for its final report."""

    def __init__(self, label: str, epochs: int | None) -> None:
        self.label = label
        self.epochs = epochs

    def __call__(self, report: Mapping[str, Any]) -> None:
        if "final_test_accuracy" in report:
            emit(progress_line(f"victim {self.label} done", report, FINAL_FIGURES))
        elif "train_loss" in report:
            total = "" if self.epochs is None else f"/{self.epochs}"
            emit(progress_line(f"victim {self.label} epoch {int(report['epoch'])}{total}", report, EPOCH_FIGURES))
