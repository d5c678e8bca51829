"""How a model's passes run on an accelerator: channels-last memory, bf16 autocast, pinned host copies.

Both options are off by default (and gain nothing on a CPU); :func:`ue_core.training.fit`, ``evaluate``,
``compute_features`` and ``feature_vjp`` take a :class:`Compute`, and so do BEO's surrogate, feature and
ascent passes (config key ``beo.compute``) and the victims (``victim.compute``).

What changes numerically:
    channels_last: the memory layout of the images and the convolution weights (N, H, W, C in memory). The
        kernels chosen may sum in another order, so results agree with the default up to float32 rounding
        (about 1e-6 relative per pass; training amplifies it like any change of summation order), and max
        pooling may break ties between equal inputs at another position, which moves a pixel gradient
        within its pooling window (measured: under 1% of the pixels of a small CNN's VJP).
    bf16: convolutions and matrix products inside the model run in bfloat16 (torch.autocast: 8 bits of
        mantissa), the rest — losses, batch-norm statistics, the optimiser, and everything outside the model:
        the Bayes-error estimator, the ascent step, projection and quantisation — stays float32 (float64 where
        it was). Measured on a small CNN: features within 3% of float32 (relative norm of the difference),
        pixel gradients at cosine similarity 0.98 with float32's; a run is no longer bit-identical across
        devices. Features and gradients are returned in the dtype of the images (float32).

Host-to-device copies of batches use pinned memory and ``non_blocking`` when the device is CUDA (always: it
changes no number), so a batch's copy overlaps the previous batch's kernels.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Compute:
    """channels_last: images and weights in channels-last memory format; bf16: autocast the model's passes
    to bfloat16 (see the module docstring for what each changes)."""

    channels_last: bool = False
    bf16: bool = False

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def prepare(self, model: nn.Module) -> nn.Module:
        """``model`` with its 4-D weights in this memory format (in place, returned for chaining)."""
        return model.to(memory_format=self.memory_format) if self.channels_last else model

    def autocast(self, device: torch.device | str) -> AbstractContextManager:
        """The autocast context for the model's forward passes on ``device`` (disabled unless bf16)."""
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=self.bf16)

    def move(self, batch: torch.Tensor, device: torch.device | str) -> torch.Tensor:
        """A host batch on ``device``: pinned and non-blocking to CUDA, images (4-D) in this memory format."""
        device = torch.device(device)
        if device.type == "cuda" and batch.device.type == "cpu":
            batch = batch.pin_memory().to(device, non_blocking=True)
        else:
            batch = batch.to(device)
        if self.channels_last and batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
