"""A batch worker for ``--workflow`` rows: one headless Runner per worker, each row a run with its overrides.

The runner's cache carries what rows share from one row to the next (the model loader, and any node whose inputs
did not change), so rows 2..N only run what differs. Save Image writes into a private staging folder; the row's
files are then renamed into the output folder under the row's output name, so a killed job leaves no half file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path, PurePosixPath

from .edit_worker import mark_compile, row_record
from .journal import STAGING_PREFIX, worker_name
from .tasks import JobSpec, RowTask


def output_names(output: str, count: int) -> list[str]:
    """The row's output name, or name_1 .. name_N when the workflow saves several images."""
    if count == 1:
        return [output]
    p = PurePosixPath(output)
    return [p.with_name(f"{p.stem}_{i + 1}{p.suffix}").as_posix() for i in range(count)]


class WorkflowWorker:
    def __init__(self, spec: JobSpec):
        self.spec = spec
        self.runner = None
        self.staging: Path | None = None

    def load(self):
        if self.runner is None:
            from ..host import StandaloneHost

            from ..runner import Runner

            # Private folders next to the outputs (same file system: outputs are renamed, not copied); the
            # driver removes them when the job ends, or the next run does after a kill.
            name = f"{STAGING_PREFIX}{worker_name().replace(':', '-')}"
            self.staging = Path(self.spec.out_dir) / name
            temp = Path(self.spec.out_dir) / f"{name}-temp"  # Preview Image files, never outputs
            for folder in (self.staging, temp):
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
            host = StandaloneHost(models_dir=self.spec.models_dir, device=self.spec.device)
            host.previews = False  # nobody watches the latents of a batch
            host.compile_models = self.spec.compile  # every Load Model node compiles (--compile)
            self.runner = Runner(output_dir=self.staging, input_dir=self.spec.input_root, temp_dir=temp, host=host)
        return self.runner

    def run(self, tasks: list[RowTask]) -> list[dict]:
        runner = self.load()
        return mark_compile(self.spec, [self._run_row(runner, task) for task in tasks])

    def _run_row(self, runner, task: RowTask) -> dict:
        started = time.perf_counter()
        result = runner.run(self.spec.workflow, overrides={**self.spec.overrides, **task.overrides})
        seconds = time.perf_counter() - started
        if not result.ok:
            text = " ".join(result.error_text().split())
            return row_record(task, "failed", error=f"{task.where}: {text}", seconds=seconds)
        files = [p for p in result.files if Path(p).is_relative_to(self.staging)]
        if not files:
            return row_record(task, "failed", error=f"{task.where}: the workflow saved no image (it needs a Save "
                              "Image node).", seconds=seconds)
        out = Path(self.spec.out_dir)
        names, digests = output_names(task.output, len(files)), []
        try:
            for src, name in zip(files, names):
                digests.append(hashlib.sha256(Path(src).read_bytes()).hexdigest())
                target = out / name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, target)  # same file system: a rename, never half a file
        except OSError as exc:
            return row_record(task, "failed", error=f"{task.where}: cannot write {task.output} in {out} "
                              f"({exc.strerror or exc}).", seconds=seconds)
        return row_record(task, "done", outputs=names, sha256=digests, seconds=time.perf_counter() - started)
