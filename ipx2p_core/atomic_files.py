"""Crash-safe file writes: every file the project writes goes to a temp file in its folder and is renamed into place.

A reader (a file browser, the studio's listing, the next batch run) therefore sees the old file or the complete new
one, never half a PNG, whatever kills the writer (Ctrl-C, ``kill -9``, a full disk). The rename also replaces a
symlink standing at the target name instead of writing through it.

Temp names start with :data:`TEMP_PREFIX` and carry the writer's process id (``.ipx2p-<pid>-<random><suffix>``), so a
later start can tell what a dead writer left behind (removed by :func:`remove_leftovers`) from what a live one is
still writing. Private temp folders (``<tmp>/ipx2p-temp-<pid>-*``) follow the same rule (:func:`private_temp_folder`,
:func:`remove_stale_temp_folders`).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

TEMP_PREFIX = ".ipx2p-"
TEMP_FOLDER_PREFIX = "ipx2p-temp-"
_TEMP_NAME = re.compile(r"^\.ipx2p-(\d+)-")
_TEMP_FOLDER_NAME = re.compile(r"^ipx2p-(?:studio-)?temp-(\d+)-")
# Tests only: seconds to sleep after writing half of the data, so a test can kill the writer mid-write.
_PAUSE_ENV = "IPX2P_TEST_PAUSE_MID_WRITE"

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of our temp names (listings skip them; outputs may not use them)."""
    return name.startswith(TEMP_PREFIX)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in ``path``'s folder; when the block ends normally it is flushed to disk and renamed to
    ``path``, otherwise it is removed. The temp name keeps the suffix, so tools that sniff names still work."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; when the block ends normally it is renamed to ``path``, otherwise it is
    removed. A folder that already exists with files in it is written into directly (as before): replacing it
    would delete whatever else the user keeps there."""
    path = Path(path)
    if path.is_dir() and any(path.iterdir()):
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{os.getpid()}-"))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        yield tmp
        if path.is_dir():
            path.rmdir()  # empty (checked above)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_atomic(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` through a temp file and a rename; returns the data's sha256 (hex)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pause = float(os.environ.get(_PAUSE_ENV) or 0)
        if pause:
            half = len(data) // 2
            f.write(data[:half])
            f.flush()
            time.sleep(pause)
            f.write(data[half:])
        else:
            f.write(data)
    return hashlib.sha256(data).hexdigest()


def save_image_atomic(image, path: str | os.PathLike, format: str | None = None, **params) -> str:
    """``PIL.Image.save`` through :func:`write_atomic` (encoded in memory first: a killed writer leaves no file)."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=format or _pil_format(Path(path)), **params)
    return write_atomic(path, buffer.getvalue())


def _pil_format(path: Path) -> str:
    from PIL import Image

    Image.init()
    fmt = Image.EXTENSION.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"No image format for the extension of {path}")
    return fmt


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's live process
    return True


def remove_leftovers(folder: str | os.PathLike, depth: int = 3) -> int:
    """Remove the temp files that writers which have ended left in ``folder`` and its subfolders down to ``depth``
    levels (0: the folder only; bounded because an output folder may be a big tree such as ``.``); returns how
    many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    top = len(folder.parts)
    for dirpath, dirs, files in os.walk(folder):
        for name in [d for d in dirs if _TEMP_NAME.match(d)]:  # an atomic_folder of an ended writer
            dirs.remove(name)
            if not _pid_alive(int(_TEMP_NAME.match(name).group(1))):
                shutil.rmtree(os.path.join(dirpath, name), ignore_errors=True)
                removed += 1
        if len(Path(dirpath).parts) - top >= depth:
            dirs.clear()
        for name in files:
            match = _TEMP_NAME.match(name)
            if match and not _pid_alive(int(match.group(1))):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
    return removed


def private_temp_folder(prefix: str = TEMP_FOLDER_PREFIX) -> Path:
    """A new temp folder of this process (its pid in the name), removed at exit; stale ones of ended processes are
    removed first."""
    remove_stale_temp_folders()
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def remove_stale_temp_folders(root: str | os.PathLike | None = None) -> int:
    """Remove ``ipx2p-temp-<pid>-*`` folders (and the studio's) whose process has ended; returns how many."""
    root = Path(root or tempfile.gettempdir())
    removed = 0
    try:
        names = os.listdir(root)
    except OSError:
        return 0
    for name in names:
        match = _TEMP_FOLDER_NAME.match(name)
        if not match or _pid_alive(int(match.group(1))):
            continue
        try:
            st = os.lstat(root / name)
        except OSError:
            continue
        if os.path.isdir(root / name) and not os.path.islink(root / name) and st.st_uid == os.getuid():
            shutil.rmtree(root / name, ignore_errors=True)  # only our own user's folders
            removed += 1
    return removed
