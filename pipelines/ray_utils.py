"""The Ray helpers every command shares: joining a cluster, getting results, handing objects by reference."""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from typing import Any

import ray

from pipelines.storage import storage_env
from pipelines.tracking import is_node_local, tracking_uri
from ue_core.errors import InvalidInputError, UEError

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


def connect(address: str | None, progress: bool) -> None:
    """Join the cluster at ``address`` (or RAY_ADDRESS: a submitted job's driver joins its own cluster), or
    start a local Ray whose workers get the S3 settings of :func:`storage_env`; this process (the driver)
    returns large freed blocks to the system from then on (:func:`return_freed_memory`).

    The local Ray's workers keep libgomp's default OpenMP wait policy (spin briefly, then sleep): one torch
    process per node computes at a time here, and OMP_WAIT_POLICY=PASSIVE made the surrogate's training
    15–30% slower (bench/README.md). A cluster whose nodes share cores sets PASSIVE in its nodes' own
    environment (cluster/local/localcluster.py does).

    The driver computes with torch only in the finish (β̂ of the clean images and the release), when no pass
    runs: it uses every core it may run on (:func:`use_node_cores`).

    Nothing is pushed into a cluster's runtime environment: its nodes hold their credentials (instance
    profile, IRSA, node environment) and a submitted job's runtime env carries the rest; credentials in a
    runtime env would show in the dashboard and in error messages, and a second copy of a job's env var is a
    conflict that Ray refuses.
    """
    return_freed_memory()
    use_node_cores()
    if not ray.is_initialized():
        if address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(runtime_env={"env_vars": storage_env()}, include_dashboard=False, log_to_driver=False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # one line per dataset execution is noise here
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the same blocks in the same order on every run
    context.enable_progress_bars = progress


def use_node_cores() -> None:
    """Give this process's torch one thread per core it may run on.

    A job submitted through Ray's job API runs its driver as a child of the job's supervisor, an actor that
    reserves no CPU, so it inherits OMP_NUM_THREADS=1 and torch computes on one core: the finish of a
    100,000-image Tiny-ImageNet-shaped job took one core of two for its features (bench/README.md "Scale")."""
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))


def return_freed_memory(threshold: int = 1 << 20) -> None:
    """Make this process (a job's driver) hand large freed blocks back to the system: glibc serves
    allocations of at least ``threshold`` bytes from their own mappings, released when freed.

    glibc's default raises that threshold to the largest block freed so far (up to 32 MiB), after which the
    finish's per-batch arrays (a few MiB each) come from the heap, which fragments across Ray's threads and
    keeps what was freed: a 10,000-image Tiny-ImageNet-shaped finish peaked at 2.3 GB of driver memory, 1.2 GB
    with a fixed 1 MiB threshold, and ran faster (bench/README.md "Scale"). A no-op where libc is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, threshold)


def check_tracking_store(address: str | None, uri: str | None) -> None:
    """Refuse, before any work, a node-local MLflow store (sqlite:, file: or a path: pipelines.tracking.
    is_node_local) for a job on a Ray cluster with more than one alive node: workers on the other nodes
    would log into files of their own, or fail. Joins the cluster at ``address`` (or RAY_ADDRESS) to count
    its nodes; a local Ray, one node, is not started for this."""
    if not is_node_local(uri) or not (ray.is_initialized() or address or os.environ.get("RAY_ADDRESS")):
        return
    connect(address, progress=False)
    nodes = sum(bool(node["Alive"]) for node in ray.nodes())
    if nodes > 1:
        raise InvalidInputError(
            f"the MLflow store {tracking_uri(uri)} is files on one node, and this Ray cluster has {nodes} alive "
            "nodes: give --tracking-uri (or MLFLOW_TRACKING_URI) an MLflow server every node reaches, e.g. http://mlflow:5000"
        )


def unwrap(refs: Any) -> Any:
    """ray.get that re-raises a project error from a task as itself, so the user sees its one line."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, UEError):
            raise cause from None
        raise


@dataclass(frozen=True)
class Shared:
    """An object put in the object store once and handed to tasks, actors and Train workers by reference.

    Ray resolves an ObjectRef given as a top-level argument (a copy of the object in every call's
    arguments), not one held inside another object: wrapping it keeps it a reference until :meth:`get`.
    """

    ref: ray.ObjectRef

    @staticmethod
    def put(value: Any) -> Shared:
        return Shared(ray.put(value))

    def get(self) -> Any:
        return ray.get(self.ref)
