"""The output folder's ``results.jsonl`` (one line per finished row, append-only) and crash-safe file writes.

A line is written with one ``write`` of the whole line on a file opened with ``O_APPEND``, then flushed to disk
(``fsync``): a killed job leaves whole lines only (at worst a torn last line, which reading skips and the next run
closes with a newline). Images go to a temporary name in their folder and are renamed into place, so a killed job
never leaves half an image under a real name; the temporaries it leaves are recognisable and removed by the next run.
One job at a time per output folder: the journal holds an exclusive lock (``flock``) while the job runs.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
from pathlib import Path

from ipx2p_core.atomic_files import is_temp_name

RESULTS_NAME = "results.jsonl"
STAGING_PREFIX = ".ipx2p-staging-"  # a workflow worker's private SaveImage folder


class JournalLocked(RuntimeError):
    """Another batch job is writing to the same output folder."""


def clean_leftovers(out_dir: Path) -> int:
    """Remove the temporaries and staging folders a killed run left in ``out_dir``; returns how many."""
    removed = 0
    for dirpath, dirnames, filenames in os.walk(out_dir):
        for d in [d for d in dirnames if d.startswith(STAGING_PREFIX)]:
            shutil.rmtree(Path(dirpath) / d, ignore_errors=True)
            dirnames.remove(d)
            removed += 1
        for f in filenames:
            if is_temp_name(f):  # the journal's lock says no live writer is using this folder
                try:
                    os.unlink(Path(dirpath) / f)
                    removed += 1
                except OSError:
                    pass
    return removed


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Journal:
    """``results.jsonl`` in an output folder: what earlier runs finished, and appending this run's rows."""

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / RESULTS_NAME
        self._fd: int | None = None

    def open(self) -> "Journal":
        """Create the folder and the file if needed and lock it; raises OSError when the folder is not writable."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            _lock(fd, self.out_dir)
            size = os.fstat(fd).st_size
            if size:
                with open(self.path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":  # a torn last line from a killed run: end it so it stays on its own
                        os.write(fd, b"\n")
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # also releases the lock
            self._fd = None

    def __enter__(self) -> "Journal":
        return self if self._fd is not None else self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def append(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n").encode("utf-8")
        assert self._fd is not None, "open() the journal first"
        os.write(self._fd, line)  # one write of the whole line (O_APPEND): never interleaved, never half a line
        os.fsync(self._fd)

    def records(self) -> list[dict]:
        """Every whole, valid line; torn or garbled lines are skipped."""
        if not self.path.exists():
            return []
        out = []
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("key"), str):
                    out.append(record)
        return out

    def latest(self) -> dict[str, dict]:
        """key -> the last record of that key (a failed row retried later is done)."""
        return {r["key"]: r for r in self.records()}


def _lock(fd: int, out_dir: Path) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one job per folder is then the user's rule
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise JournalLocked(f"Another ipx2p batch is writing to {out_dir}; wait for it to finish or use another "
                            "--out folder.") from None
    except OSError:  # some network file systems do not support flock; go on without the lock
        pass
