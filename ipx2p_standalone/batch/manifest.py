"""Reading what a batch runs over: a folder of images, a CSV or a JSONL manifest, as raw rows.

Rows are numbered from 0 (the first data line), so a one-row batch with ``--seed S`` is ``ipx2p edit --seed S``.
A row that cannot be read (a JSONL line that is not a JSON object, a CSV line with too many cells) becomes a row
with an error: it fails alone. A manifest that cannot be read at all, or names unknown columns, is a ``ManifestError``
(a bad command: exit status 2 before any work starts).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

# Columns of an edit manifest (the issue's list); with --workflow, NODE_ID.INPUT columns are allowed as well.
EDIT_COLUMNS = ("image", "instruction", "mask", "negative", "seed", "steps", "text_guidance", "image_guidance",
                "scheduler", "strength", "resize", "output")
WORKFLOW_COLUMNS = ("image", "instruction", "seed", "output")
MANIFEST_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class ManifestError(ValueError):
    """The manifest as a whole is unusable (missing, unreadable, empty, unknown columns)."""


@dataclass
class RawRow:
    index: int
    values: dict  # column -> value; empty cells and JSON nulls are left out (they mean "the command's default")
    where: str  # "photos.csv line 5", for messages
    error: str | None = None


@dataclass
class Manifest:
    rows: list[RawRow]
    base_dir: Path  # image, mask paths are relative to this folder
    kind: str  # "folder" | "csv" | "jsonl"
    source: Path
    columns: list[str] = field(default_factory=list)


def image_files(folder: Path) -> list[Path]:
    """The images directly inside ``folder`` (not in subfolders), by name; hidden files are skipped."""
    known = {ext.lower() for ext in Image.registered_extensions()}
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in known)


def is_node_column(name: str) -> bool:
    node, sep, inp = name.partition(".")
    return bool(sep and node and inp)


def check_columns(columns: list[str], workflow: bool, source: Path) -> None:
    """Unknown columns are an error naming them and the known ones."""
    known = WORKFLOW_COLUMNS if workflow else EDIT_COLUMNS
    unknown = [c for c in columns if c not in known and not (workflow and is_node_column(c))]
    if unknown:
        extra = " and NODE_ID.INPUT columns (e.g. 7.text_guidance)" if workflow else ""
        hint = "" if workflow else " (per-node inputs such as 7.text_guidance need --workflow)" \
            if any(is_node_column(c) for c in unknown) else ""
        raise ManifestError(f"{source}: unknown column{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(repr(c) for c in unknown)}{hint}; the known columns are "
                            f"{', '.join(known)}{extra}.")


def read_manifest(path: str | Path, *, workflow: bool = False) -> Manifest:
    """A folder (one row per image), a .csv (header row) or a .jsonl (one JSON object per line)."""
    source = Path(path).expanduser()
    if source.is_dir():
        files = image_files(source)
        if not files:
            raise ManifestError(f"{source} holds no image files (looked for "
                                f"{', '.join(sorted({'.png', '.jpg', '.jpeg', '.webp'}))} and other image types).")
        rows = [RawRow(i, {"image": p.name}, f"{source.name}/{p.name}") for i, p in enumerate(files)]
        return Manifest(rows, source.absolute(), "folder", source, ["image"])
    kind = MANIFEST_SUFFIXES.get(source.suffix.lower())
    if kind is None:
        raise ManifestError(f"{source}: give a folder of images or a manifest ending in .csv or .jsonl.")
    try:
        text = source.read_text(encoding="utf-8-sig")  # -sig: spreadsheets write a byte-order mark
    except FileNotFoundError:
        raise ManifestError(f"Manifest not found: {source} (looked for {source.absolute()}).") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"Cannot read the manifest {source}: {exc}") from None
    rows, columns = (_read_csv if kind == "csv" else _read_jsonl)(text, source)
    check_columns(columns, workflow, source)
    if not rows:
        raise ManifestError(f"{source} has no rows.")
    return Manifest(rows, source.absolute().parent, kind, source, columns)


def _read_csv(text: str, source: Path) -> tuple[list[RawRow], list[str]]:
    reader = csv.reader(io.StringIO(text, newline=""))  # quoted cells may hold line breaks
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise ManifestError(f"{source} is empty; its first line must name the columns (image,instruction,...).")
    columns = [h.strip() for h in header]
    if len(set(columns)) != len(columns) or "" in columns:
        raise ManifestError(f"{source}: the header {header!r} has empty or repeated column names.")
    rows: list[RawRow] = []
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue  # blank lines
        where = f"{source.name} line {reader.line_num}"
        error = None
        if len(cells) > len(columns):
            error = f"{where} has {len(cells)} cells but the header names {len(columns)} columns."
        values = {c: v for c, v in zip(columns, cells) if v.strip() != ""}
        rows.append(RawRow(len(rows), values, where, error))
    return rows, columns


def _read_jsonl(text: str, source: Path) -> tuple[list[RawRow], list[str]]:
    rows: list[RawRow] = []
    columns: list[str] = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{source.name} line {line}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            rows.append(RawRow(len(rows), {}, where, f"{where} is not valid JSON ({exc.msg} at column {exc.colno})."))
            continue
        if not isinstance(obj, dict):
            rows.append(RawRow(len(rows), {}, where,
                               f"{where} must be a JSON object like {{\"image\": ..., \"instruction\": ...}}, "
                               f"got {type(obj).__name__}."))
            continue
        for key in obj:
            if key not in columns:
                columns.append(key)
        rows.append(RawRow(len(rows), {k: v for k, v in obj.items() if v is not None and v != ""}, where))
    return rows, columns
