"""What keeps the studio's files and queue to the person at the keyboard.

* User-supplied names (query parameters, multipart file names, URL segments) become paths inside one folder
  through :func:`ipx2p_core.paths.contained_path` (the one rule set the whole project uses: no ``..``, absolute or
  drive-letter paths, NUL bytes or backslash tricks), with symlinks resolved so that a link placed inside a folder
  cannot lead out of it. :func:`safe_filename` accepts plain upload file names only.
* :func:`origin_middleware` refuses requests a web page on another site makes to this server: when a request
  carries an ``Origin`` header, its host (and port, when both sides name one) must equal the ``Host`` header, as
  ComfyUI does for loopback hosts. We apply it to every host and also refuse ``Origin: null`` (sandboxed frames),
  which ComfyUI lets through. When the server listens only on loopback, the ``Host`` header must also name a
  loopback host, which defeats DNS rebinding (a foreign name that resolves to 127.0.0.1).
* :func:`check_image_bytes` opens an uploaded file as an image without decoding its pixels and refuses it when it
  is not an image or is larger than the pixel limit (a decompression bomb: a small file that decodes to gigabytes).
"""

from __future__ import annotations

import functools
import ipaddress
import io
import logging
import socket
import urllib.parse
from pathlib import Path

from aiohttp import web

from ipx2p_core import defaults
from ipx2p_core.atomic_files import TEMP_PREFIX, write_atomic  # noqa: F401 - re-exported for the studio
from ipx2p_core.errors import IP2PError
from ipx2p_core.image import check_image_pixels
from ipx2p_core.paths import split_user_path

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 100
DEFAULT_MAX_IMAGE_PIXELS = defaults.MAX_IMAGE_PIXELS  # over all frames: any photo, never a decompression bomb

def safe_filename(name: str | None) -> str | None:
    """An uploaded file's name if it is a plain file name (no folders, no tricks), else None."""
    if not name or not isinstance(name, str):
        return None
    # Also judged percent-decoded, so that no later decoding step can turn it into a path.
    for form in (name, urllib.parse.unquote(name)):
        segments = split_user_path(form)
        if segments is None or len(segments) != 1 or segments[0] != form:
            return None
    return name


# ---------------------------------------------------------------------------------------------- hosts and origins


@functools.lru_cache(maxsize=256)
def is_loopback(host: str | None) -> bool:
    """Whether a host name or address means this machine only (127.0.0.0/8, ::1, localhost, or a name that
    resolves to loopback addresses only)."""
    if not host:
        return False
    if is_loopback_name(host):
        return True
    host = host.strip("[]").lower()
    try:
        ipaddress.ip_address(host)
        return False  # an address that is not loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def is_loopback_name(host: str | None) -> bool:
    """Loopback by its spelling alone (no DNS): what a Host header may say when we listen on loopback only."""
    if not host:
        return False
    host = host.strip("[]").lower()
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost" or host.endswith(".localhost")


def _split_host(value: str) -> tuple[str | None, int | None]:
    try:
        parsed = urllib.parse.urlsplit("//" + value)
        return parsed.hostname, parsed.port
    except ValueError:
        return None, None


def origin_problem(host_header: str | None, origin_header: str | None, loopback_only: bool) -> str | None:
    """Why a request must be refused (a sentence), or None when it may proceed."""
    host_name, host_port = _split_host(host_header) if host_header else (None, None)
    if loopback_only and host_header is not None and not is_loopback_name(host_name):
        return (f"Host {host_header!r} is not a loopback name; this studio listens on loopback only "
                "(open it as http://127.0.0.1:PORT or http://localhost:PORT, or start it with --host)")
    if origin_header is None:
        return None
    if host_header is None:
        return None
    origin = origin_header.strip()
    if origin.lower() == "null":
        return "requests from an opaque origin (Origin: null) are refused"
    try:
        parsed = urllib.parse.urlsplit(origin)
        origin_name, origin_port = parsed.hostname, parsed.port
    except ValueError:
        return f"malformed Origin {origin_header!r}"
    if not origin_name or not host_name:
        return f"Origin {origin_header!r} does not match Host {host_header!r}"
    if origin_name.lower() != host_name.lower():
        return f"Origin {origin_header!r} does not match Host {host_header!r}"
    # As ComfyUI: ports are compared only when both sides name one (some browsers leave default ports out).
    if origin_port is not None and host_port is not None and origin_port != host_port:
        return f"Origin {origin_header!r} does not match Host {host_header!r}"
    return None


def origin_middleware(loopback_only: bool):
    @web.middleware
    async def check_origin(request: web.Request, handler):
        problem = origin_problem(request.headers.get("Host"), request.headers.get("Origin"), loopback_only)
        if problem is not None:
            log.warning("Refused %s %s: %s", request.method, request.path, problem)
            return web.Response(status=403, text=f"Forbidden: {problem}\n")
        return await handler(request)

    return check_origin


# ---------------------------------------------------------------------------------------------- images


class ImageRejected(ValueError):
    """An upload that is not an image or is too large; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def check_image_size(img, max_pixels: int, name: str = "image") -> None:
    """Every frame's pixels against the limit (the engine's one rule: headers only, nothing decoded)."""
    try:
        check_image_pixels(img, max_pixels, name)
    except IP2PError as exc:
        raise ImageRejected(str(exc), status=413) from None


def check_image_bytes(data: bytes, max_pixels: int, name: str = "image"):
    """Open ``data`` as an image (header only), refuse non-images and oversized ones; returns the format name."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            check_image_size(img, max_pixels, name)
            img.verify()
            return img.format
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"{name}: {exc}", status=413) from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for broken files
        raise ImageRejected(f"{name} is not a readable image ({type(exc).__name__}: {exc})") from None


def open_checked_image(path: Path, max_pixels: int):
    """``PIL.Image.open`` of a file in our folders, refusing decompression bombs before any pixel is decoded."""
    from PIL import Image

    img = Image.open(path)
    try:
        check_image_size(img, max_pixels, path.name)
    except ImageRejected:
        img.close()
        raise
    return img


# One crash-safe writer for the whole project (the engine side imports it without aiohttp).
ATOMIC_TMP_PREFIX = TEMP_PREFIX  # the temp files of write_atomic; listings skip them
