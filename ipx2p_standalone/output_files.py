"""Where ``ipx2p edit`` / ``sweep`` / ``chain`` write, checked before the model loads, and how each format carries the
settings.

* The extension picks the format: ``.png`` (text chunks ``ipx2p`` = JSON settings and A1111-style ``parameters``),
  ``.jpg``/``.jpeg`` and ``.webp`` (quality 95; the same JSON in EXIF UserComment, ``ASCII`` charset, JSON with
  non-ASCII escaped, as EXIF readers expect). Any other extension is refused.
* Outputs replace existing files of the same name (through a temp file and a rename), but never an input image or
  mask unless ``--overwrite`` is given.
* The folder must be writable: a real temp file is created and removed there, because permission bits say nothing
  for root or on a read-only file system. Temp files a killed run left there are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from ipx2p_core.atomic_files import TEMP_PREFIX, remove_leftovers, save_image_atomic
from ipx2p_core.errors import IP2PError

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
LOSSY_QUALITY = 95  # JPEG and WebP: visually lossless at a quarter of the PNG's size
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286


def output_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise IP2PError(f"Output {path}: unknown image extension {path.suffix or '(none)'!r}; use .png, .jpg, .jpeg "
                        "or .webp.")
    return fmt


def check_outputs(paths: list[Path], inputs: list[str | None], overwrite: bool) -> None:
    """Refuse, before any work: an unknown extension, an output that is an input (unless ``overwrite``), a folder
    in the way, or a folder that cannot be written."""
    sources = [Path(p).resolve() for p in inputs if p]
    checked: set[Path] = set()
    for path in paths:
        output_format(path)
        target = path.resolve()
        if not overwrite and any(target == src or (src.exists() and target.exists() and os.path.samefile(target, src))
                                 for src in sources):
            raise IP2PError(f"Output {path} is an input image; it would be replaced by the edit. Choose another "
                            "-o, or give --overwrite to replace it.")
        if target.is_dir():
            raise IP2PError(f"Output {path} is a folder; give a file name such as {path / 'edited.png'}.")
        folder = _nearest_existing(target.parent)
        if folder in checked:
            continue
        checked.add(folder)
        if not folder.is_dir():
            raise IP2PError(f"Cannot write {path}: {folder} is a file, not a folder.")
        try:
            fd, probe = tempfile.mkstemp(dir=folder, prefix=f"{TEMP_PREFIX}{os.getpid()}-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise IP2PError(f"Cannot write {path}: the folder {folder} is not writable ({exc.strerror or exc}).") \
                from None
        remove_leftovers(folder, depth=0)  # temp files of a run that was killed mid-write


def _nearest_existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def save_output(image, path: Path, metadata: dict) -> None:
    """Write ``image`` in the format ``path``'s extension names, with the settings, atomically."""
    from .edit_commands import png_info

    fmt = output_format(path)
    if fmt == "PNG":
        save_image_atomic(image, path, format="PNG", pnginfo=png_info(metadata))
        return
    from PIL import Image

    exif = Image.Exif()
    exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = b"ASCII\0\0\0" + json.dumps(metadata).encode("ascii")
    save_image_atomic(image, path, format=fmt, exif=exif, quality=LOSSY_QUALITY)


def read_settings(path: str | os.PathLike) -> dict | None:
    """The settings an ``ipx2p`` output carries (PNG text chunk or EXIF UserComment), or None."""
    from PIL import Image

    with Image.open(path) as img:
        text = (getattr(img, "text", None) or {}).get("ipx2p")
        if text is None:
            comment = img.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
            if isinstance(comment, bytes) and comment.startswith(b"ASCII\0\0\0"):
                text = comment[8:].decode("ascii", "replace")
    if text is None:
        return None
    with contextlib.suppress(ValueError):
        return json.loads(text)
    return None
