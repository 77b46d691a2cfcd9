"""Helpers for the batch tests: input photos, manifests, reading results.jsonl, comparing outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

STEPS = "2"  # few steps: the tests check bookkeeping and equality, not image quality


def make_photos(folder: Path, photo: Image.Image, n: int, prefix: str = "p") -> list[str]:
    """n distinct photos (the fixture photo shifted) named p0.png .. p{n-1}.png; returns the names."""
    folder.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(photo)
    names = []
    for k in range(n):
        name = f"{prefix}{k}.png"
        Image.fromarray(np.roll(arr, 3 * k, axis=1)).save(folder / name)
        names.append(name)
    return names


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    columns = columns or list(dict.fromkeys(c for r in rows for c in r))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow(r)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def results(out: Path) -> list[dict]:
    lines = (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def by_row(records: list[dict]) -> dict[int, dict]:
    """row -> its last record."""
    return {r["row"]: r for r in records}


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).astype(np.int16)


def max_level_diff(a: Path, b: Path) -> int:
    pa, pb = pixels(a), pixels(b)
    assert pa.shape == pb.shape, (a, b, pa.shape, pb.shape)
    return int(np.abs(pa - pb).max())


def visible_files(out: Path) -> list[str]:
    """Every file under the output folder, relative, sorted (temporaries included: they start with a dot)."""
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def interrupt_after(monkeypatch, n: int) -> list[int]:
    """Make the journal raise KeyboardInterrupt (Ctrl-C) right after its n-th line; returns the rows journaled."""
    from ipx2p_standalone.batch.journal import Journal

    real_append = Journal.append
    seen: list[int] = []

    def append_then_interrupt(self, record):
        real_append(self, record)
        seen.append(record["row"])
        if len(seen) == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(Journal, "append", append_then_interrupt)
    return seen
