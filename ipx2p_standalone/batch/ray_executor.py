"""Running row chunks on a Ray cluster with Ray Data: the rows become a dataset, ``map_batches`` hands them to a pool
of actors that each load the model once (one GPU per actor where the cluster has GPUs), the actors write images to
the output folder (shared storage on a real cluster) and return one record per row, which the driver streams into
``results.jsonl`` as they arrive. Ray schedules, retries and restarts; nothing here is a home-made scheduler.
"""

from __future__ import annotations

import json
import logging
from typing import Iterator

import numpy as np

from .tasks import JobSpec, RowTask

RAY_EXTRA_HINT = 'pip install -e ".[ray]"'


class RayUnavailable(RuntimeError):
    pass


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is part of the extra (ray[data])
    except ImportError:
        raise RayUnavailable(f"--ray needs Ray Data, which is not installed here. Install the extra: "
                             f"{RAY_EXTRA_HINT}") from None
    return ray


class RayBatchWorker:
    """A Ray Data actor: one worker (model or runner) for its lifetime; a batch of JSON tasks in, records out."""

    def __init__(self, spec: JobSpec, threads: int | None = None):
        from .local import make_worker, quiet_libraries

        quiet_libraries()
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.worker = make_worker(spec)
        self.worker.load()  # once per actor, before its first rows

    def __call__(self, batch: dict) -> dict:
        tasks = [RowTask.from_dict(json.loads(t)) for t in batch["task"]]
        records = self.worker.run(tasks)
        return {"record": np.array([json.dumps(r) for r in records], dtype=object)}


def connect(address: str | None, quiet: bool):
    """Join the cluster at ``address`` (or RAY_ADDRESS), or start a local Ray; reuse a session already started in
    this process. Returns (ray, whether we started it)."""
    ray = import_ray()
    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its progress lines; the driver shows its own bar
    if ray.is_initialized():
        return ray, False
    ray.init(address=address or None, include_dashboard=False, log_to_driver=not quiet,
             logging_level=logging.WARNING)
    return ray, True


def cluster_gpus(ray) -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def run_on_ray(ray, spec: JobSpec, tasks: list[RowTask], workers: int, use_gpus: bool) -> Iterator[list[dict]]:
    """Yield records as Ray Data produces them (in any order)."""
    from ray.data import ActorPoolStrategy, DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False  # the driver shows one bar with done / skipped / failed
    context.enable_operator_progress_bars = False
    resources: dict = {"num_gpus": 1} if use_gpus else {"num_cpus": _cpus_per_worker(ray, workers)}
    threads = None if use_gpus else int(resources["num_cpus"])
    dataset = ray.data.from_items([{"task": json.dumps(t.to_dict())} for t in tasks])
    records = dataset.map_batches(
        RayBatchWorker, fn_constructor_kwargs={"spec": spec, "threads": threads}, batch_size=spec.batch_size,
        batch_format="numpy", compute=ActorPoolStrategy(size=workers), **resources)
    for batch in records.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
        yield [json.loads(r) for r in batch["record"]]


def _cpus_per_worker(ray, workers: int) -> int:
    """The cluster's CPUs shared out between the actors, but no more than the largest node has."""
    total = int(ray.cluster_resources().get("CPU", 1))
    largest = max((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), default=total)
    return max(1, min(largest, total // max(1, workers)))
