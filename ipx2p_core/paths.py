"""Names that arrive from users (widgets, URLs, uploads, workflow files) turned into paths inside one folder.

One rule set for every caller (model folders, LoadImage's annotated names, the studio's files and user data):
refused are NUL bytes, absolute paths, drive letters (``C:``) and ``..`` segments; a backslash counts as a separator
(as it would on Windows), and empty or ``.`` segments are dropped. What differs between callers is symlinks, so it
is a parameter: a model folder follows links placed inside it (users link big models in from other disks), while
the studio's folders resolve them and refuse a link that leads out of the folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_DRIVE = re.compile(r"^[A-Za-z]:")


def split_user_path(*parts: str | None) -> list[str] | None:
    """The segments of a user-supplied relative path (parts joined with '/'), or None when it could escape."""
    segments: list[str] = []
    for part in parts:
        if not part:
            continue
        if not isinstance(part, str) or "\x00" in part:
            return None
        text = part.replace("\\", "/")
        if text.startswith("/") or _DRIVE.match(text):
            return None
        for seg in text.split("/"):
            if seg in ("", "."):
                continue
            if seg == ".." or _DRIVE.match(seg):
                return None
            segments.append(seg)
    return segments


def within(root: Path, path: Path) -> bool:
    """Whether ``path`` (symlinks resolved) is ``root`` or inside it."""
    root = Path(root).resolve()
    path = Path(path).resolve()
    return path == root or path.is_relative_to(root)


def contained_path(root: str | os.PathLike, *parts: str | None, follow_links: bool = False,
                   allow_root: bool = False) -> Path | None:
    """``root/parts...`` when the name is safe, else None.

    ``follow_links=False`` resolves every symlink and refuses a result outside ``root`` (the returned path is the
    resolved one). ``follow_links=True`` keeps the path as written under ``root``: the name itself cannot climb out,
    and a symlink inside the folder is followed wherever it points. ``allow_root`` accepts an empty name (``root``).
    """
    segments = split_user_path(*parts)
    if segments is None or (not segments and not allow_root):
        return None
    if follow_links:
        return Path(root).joinpath(*segments)
    base = Path(root).resolve()
    candidate = base.joinpath(*segments).resolve()
    if candidate != base and not candidate.is_relative_to(base):
        return None
    return candidate
