"""Running row chunks on this machine: in this process (one worker), or in N worker processes (standard library
``concurrent.futures`` with spawned processes; one GPU each where there are several, torch threads split)."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Iterable, Iterator

from .tasks import JobSpec, RowTask


def quiet_libraries() -> None:
    """Workers print nothing of their own: no library progress bars or warnings (results carry the errors)."""
    from ..cli import _no_library_progress_bars, _quiet_libraries

    _no_library_progress_bars()
    _quiet_libraries()


def make_worker(spec: JobSpec):
    if spec.mode == "workflow":
        from .workflow_worker import WorkflowWorker

        return WorkflowWorker(spec)
    from .edit_worker import EditWorker

    return EditWorker(spec)


def run_in_process(worker, chunks: Iterable[list[RowTask]]) -> Iterator[list[dict]]:
    for chunk in chunks:
        yield worker.run(chunk)


# ------------------------------------------------------------------------------------------------ worker processes

_WORKER = None


def _init_process(spec: JobSpec, slots, threads: int) -> None:
    """In a fresh (spawned) process, before torch touches a GPU: pick this worker's GPU and thread count."""
    gpu = slots.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    import torch

    torch.set_num_threads(threads)  # N processes x all cores each would oversubscribe the CPU
    quiet_libraries()
    global _WORKER
    _WORKER = make_worker(spec)


def _run_chunk(tasks: list[dict]) -> list[dict]:
    return _WORKER.run([RowTask.from_dict(t) for t in tasks])


def run_in_processes(spec: JobSpec, chunks: list[list[RowTask]], workers: int,
                     gpus: list[str] | None) -> Iterator[list[dict]]:
    """Yield each chunk's records as it finishes. ``gpus``: device ids to share out (worker k gets gpus[k % n])."""
    ctx = multiprocessing.get_context("spawn")  # fork after torch has started threads can deadlock
    slots = ctx.Queue()
    for k in range(workers):
        slots.put(gpus[k % len(gpus)] if gpus else None)
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_process,
                               initargs=(spec, slots, threads))
    try:
        pending = {pool.submit(_run_chunk, [t.to_dict() for t in chunk]) for chunk in chunks}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
