"""The feature pass and the ascent pass of every round, on a pool of actors started once per job: one per GPU,
else one per CPU node, each mapping the state blocks its node holds with ue_core's steps on its device
(resources.actor_device: CUDA when Ray gave it a GPU share). The state stays on the host; chunks of a block
move to the device and results come back. Each result row carries ``on_gpu`` (1.0 on CUDA), which the
round's history records per pass.

A pool for the job, not a Ray Data ``map_batches`` actor pool per pass: Ray Data starts new actor processes
for every execution, and an actor's start (a Ray worker, ``import torch``, the surrogate; a CUDA context on
a GPU) and the execution's own start cost 5–6 s a pass at N = 12,000 here, more than the feature pass
itself (bench/README.md). Ray Data still reads, lays out and writes the state (pipelines.ray_engine.state);
the pool maps its materialised blocks one to one, so a round hands on the same blocks it was given, each
block's rows in order, and every result depends on a block's rows alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray
import torch
from ray.data.block import BlockAccessor
from ray.data.dataset import MaterializedDataset

from pipelines.ray_engine.resources import Resources, actor_device, on_gpu
from pipelines.ray_engine.state import (
    MOMENT_COLUMNS,
    Rows,
    concat_rows,
    images_and_delta,
    load_model,
    sorted_by_index,
    state_columns,
)
from pipelines.ray_utils import Shared, unwrap
from ue_core.config import from_dict, to_dict
from ue_core.methods.beo import BEOConfig, pixel_step, step_views
from ue_core.models import Classifier
from ue_core.pga import Budget, PixelState
from ue_core.training import compute_features

CHUNK_BATCHES = 16
"""A block is mapped in chunks of this many batches (``beo.batch_size`` rows each), which bounds an actor's
memory whatever the block's size; batches start at a chunk's first row, so the chunking changes no result."""


@ray.remote
class PassActor:
    """One actor of the job's pool: maps whole state blocks (Arrow tables) with the round's surrogate, which
    it loads once per round (the first call that names it)."""

    def __init__(self, beo: dict[str, Any], budget: dict[str, Any], threads: int) -> None:
        torch.set_num_threads(threads)
        self.device = actor_device()
        self.config = from_dict(BEOConfig, beo)
        self.budget = from_dict(Budget, budget, "budget")
        self.columns = state_columns(self.config.pga)
        self.surrogate: tuple[str, Classifier] | None = None

    def _model(self, surrogate: Shared) -> Classifier:
        key = surrogate.ref.hex()
        if self.surrogate is None or self.surrogate[0] != key:
            model = self.config.compute.prepare(load_model(surrogate.get()).to(self.device))
            self.surrogate = (key, model)
        return self.surrogate[1]

    def _chunks(self, block: Any) -> list[Rows]:
        rows = BlockAccessor.for_block(block).to_batch_format("numpy")
        size = CHUNK_BATCHES * self.config.batch_size
        return [{name: values[start:start + size] for name, values in rows.items()}
                for start in range(0, len(rows["index"]), size)]

    def features(self, block: Any, surrogate: Shared, round_index: int, step: int, view: int) -> Rows:
        """Penultimate features φ(v(x + δ)) of the block's rows under view ``view`` of the step
        (ue_core.methods.beo.step_views; the images as they are without ``beo.augment``): index, label,
        features (n, D), on_gpu, and under ``estimator.anchors: clean`` also φ(v(x)), the clean copies'."""
        model, config = self._model(surrogate), self.config
        anchored = config.estimator.anchors == "clean"
        parts = []
        for rows in self._chunks(block):
            x, delta = images_and_delta(rows)
            transform = step_views(config, rows["index"], round_index, step)[view]
            options = {"batch_size": config.batch_size, "transform": transform, "device": self.device,
                       "compute": config.compute}
            part = {"index": rows["index"], "label": rows["label"],
                    "features": compute_features(model, x + delta, **options).numpy(),
                    "on_gpu": np.full(len(x), on_gpu(self.device))}
            if anchored:
                part["anchors"] = compute_features(model, x, **options).numpy()
            parts.append(part)
        return concat_rows(parts)

    @ray.method(num_returns=2)
    def ascent(
        self, block: Any, surrogate: Shared, round_index: int, step: int, gradients: list[Shared]
    ) -> tuple[Any, Rows]:
        """One PGA step for each row of the block (ue_core.methods.beo.pixel_step) within the job's budget,
        given per view of the step the feature gradient of every row of the dataset: (index sorted (N,),
        ∂objective/∂z / s (N, D)). Returns the block's new state rows (the same rows in the same order) and
        per row: index, |δ|'s max and mean, on_gpu."""
        model, config = self._model(surrogate), self.config
        every = [gradient.get() for gradient in gradients]
        adam = config.pga.update == "adam"
        blocks, summaries = [], []
        for rows in self._chunks(block):
            x, delta = images_and_delta(rows)
            views = step_views(config, rows["index"], round_index, step)
            feature_gradients = [torch.from_numpy(g[np.searchsorted(index, rows["index"])]) for index, g in every]
            # the sign and L2 rules never read the moments, which the state then does not hold (state_columns)
            exp_avg, exp_avg_sq = (
                (torch.from_numpy(np.ascontiguousarray(rows[name])) for name in MOMENT_COLUMNS)
                if adam
                else (torch.zeros(()).expand_as(delta),) * 2
            )
            state = PixelState(delta, exp_avg, exp_avg_sq, torch.from_numpy(rows["steps"].astype(np.int64)))
            state = pixel_step(model, x, state, feature_gradients, views, self.budget, config.pga,
                               config.batch_size, self.device, config.compute)
            new = {"delta": state.delta.numpy(), "steps": state.steps.numpy()}
            if adam:
                new |= {"exp_avg": state.exp_avg.numpy(), "exp_avg_sq": state.exp_avg_sq.numpy()}
            blocks.append({name: new[name] if name in new else rows[name] for name in self.columns})
            size = state.delta.abs().flatten(1)
            summaries.append({"index": rows["index"], "delta_abs_max": size.max(1).values.numpy(),
                              "delta_abs_mean": size.mean(1).numpy(), "on_gpu": np.full(len(x), on_gpu(self.device))})
        return BlockAccessor.batch_to_block(concat_rows(blocks)), concat_rows(summaries)


class PassPool:
    """The job's pass actors (Resources.pass_nodes: one per GPU, else one per CPU node, pinned to its node) and
    how a round's blocks are shared out: each block to an actor on a node that holds it, the least busy one
    (ties: the first), else to the least busy actor."""

    def __init__(self, config: BEOConfig, budget: Budget, resources: Resources) -> None:
        beo, limits = to_dict(config), to_dict(budget)
        self.nodes = resources.pass_nodes
        self.actors = [
            PassActor.options(**resources.pass_actor_options(node)).remote(beo, limits, resources.pass_threads)
            for node in self.nodes
        ]

    def _assign(self, blocks: list[ray.ObjectRef]) -> list[Any]:
        locations = ray.experimental.get_object_locations(blocks)
        busy = [0] * len(self.actors)
        chosen = []
        for block in blocks:
            holders = set(locations.get(block, {}).get("node_ids", []))
            local = [i for i, node in enumerate(self.nodes) if node in holders]
            actor = min(local or range(len(self.actors)), key=lambda i: busy[i])
            busy[actor] += 1
            chosen.append(self.actors[actor])
        return chosen

    def features(self, state: MaterializedDataset, surrogate: Shared, round_index: int, step: int,
                 view: int) -> Rows:
        """PassActor.features over every block of ``state``, rows sorted by index."""
        blocks = state.to_arrow_refs()
        calls = [actor.features.remote(block, surrogate, round_index, step, view)
                 for actor, block in zip(self._assign(blocks), blocks, strict=True)]
        return sorted_by_index(concat_rows(unwrap(calls)))

    def ascent(self, state: MaterializedDataset, surrogate: Shared, round_index: int, step: int,
               gradients: list[Shared]) -> tuple[MaterializedDataset, Rows]:
        """PassActor.ascent over every block of ``state``: the new state (block for block) and the per-row
        summaries sorted by index."""
        blocks = state.to_arrow_refs()
        calls = [actor.ascent.remote(block, surrogate, round_index, step, gradients)
                 for actor, block in zip(self._assign(blocks), blocks, strict=True)]
        summaries = sorted_by_index(concat_rows(unwrap([summary for _, summary in calls])))
        return ray.data.from_arrow_refs([new for new, _ in calls]), summaries

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
