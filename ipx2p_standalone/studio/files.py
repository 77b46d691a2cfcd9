"""``/view``, ``/upload/image`` and ``/upload/mask``: images in and out of the input, output and temp folders.

Every name that arrives from a request goes through :func:`ipx2p_core.paths.contained_path` (no ``..``, no absolute or
drive-letter paths, backslashes are separators, symlinks may not lead out of the folder). Uploads must be images
within the pixel limit; their bytes are stored as sent (a PNG keeps its embedded workflow).
"""

from __future__ import annotations

import hashlib
import io
import logging
import mimetypes
import os
from pathlib import Path

from aiohttp import web

from ipx2p_core.paths import contained_path

from ..builtin_nodes import split_annotation
from .bounds import BadRequest, parse_json
from .security import ImageRejected, check_image_bytes, open_checked_image, safe_filename, write_atomic

log = logging.getLogger(__name__)

FOLDER_TYPES = ("input", "output", "temp")
# Shown inline these could run script on our origin: always sent as downloads.
UNSAFE_TYPES = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript",
                "application/javascript", "text/css", "image/svg+xml", "text/xml", "application/xml"}


def _bad(text: str, status: int = 400) -> web.Response:
    return web.Response(status=status, text=text + "\n")


class Files:
    def __init__(self, folders: dict[str, Path], max_image_pixels: int):
        self.folders = folders
        self.max_image_pixels = max_image_pixels

    def folder(self, kind: str | None) -> Path | None:
        return self.folders.get(kind or "input")

    # ------------------------------------------------------------------------------------------------ /view

    async def view(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        if "filename" not in query:
            return _bad("filename is required", 404)
        name, kind = split_annotation(query["filename"])
        if kind is None:
            kind = query.get("type", "output")
        base = self.folders.get(kind)
        if base is None:
            return _bad(f"type must be one of {', '.join(FOLDER_TYPES)}")
        if query.get("subfolder") and contained_path(base, query["subfolder"], allow_root=True) is None:
            return _bad("subfolder is outside the folder", 403)
        path = contained_path(base, query.get("subfolder"), name)
        if path is None:
            return _bad("invalid file name")
        if not path.is_file():
            return _bad("not found", 404)
        filename = path.name.replace('"', "")
        disposition = {"Content-Disposition": f'filename="{filename}"'}
        channel = query.get("channel", "")
        try:
            if "preview" in query:
                return await self._converted(path, query["preview"], channel, disposition)
            if channel in ("rgb", "a"):
                return await self._channel(path, channel, disposition)
        except ImageRejected as exc:
            return _bad(str(exc), exc.status)
        except OSError as exc:
            return _bad(f"cannot convert {filename}: {exc}", 415)
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if content_type in UNSAFE_TYPES:
            content_type = "application/octet-stream"
        return web.FileResponse(path, headers={**disposition, "Content-Type": content_type,
                                               "X-Content-Type-Options": "nosniff"})

    async def _converted(self, path: Path, preview: str, channel: str, headers) -> web.Response:
        """``preview=webp;90`` / ``jpeg;80``: a re-encoded copy (webp whenever the alpha channel is wanted)."""
        parts = preview.split(";")
        fmt = parts[0].lower()
        if fmt not in ("webp", "jpeg") or "a" in channel:
            fmt = "webp"
        # isdigit() is true for '²' and other digits int() refuses: only ASCII digits are a quality
        quality = int(parts[-1]) if parts[-1].isascii() and parts[-1].isdigit() else 90
        quality = max(1, min(quality, 100))

        def convert() -> bytes:
            with open_checked_image(path, self.max_image_pixels) as img:
                img.load()
                out = img
                if fmt == "jpeg" or channel == "rgb":
                    out = img.convert("RGB")
                elif out.mode not in ("RGB", "RGBA", "L", "LA"):
                    out = img.convert("RGBA")
                buf = io.BytesIO()
                out.save(buf, format=fmt.upper(), quality=quality)
                return buf.getvalue()

        import asyncio

        body = await asyncio.get_running_loop().run_in_executor(None, convert)
        return web.Response(body=body, content_type=f"image/{fmt}", headers=headers)

    async def _channel(self, path: Path, channel: str, headers) -> web.Response:
        """``channel=rgb``: the colours as PNG; ``channel=a``: the alpha as the alpha of a black PNG."""
        from PIL import Image

        def convert() -> bytes:
            with open_checked_image(path, self.max_image_pixels) as img:
                img.load()
                if channel == "rgb":
                    out = img.convert("RGB")
                else:
                    alpha = img.convert("RGBA").getchannel("A") if "A" in img.getbands() or \
                        "transparency" in img.info else Image.new("L", img.size, 255)
                    out = Image.new("RGBA", img.size, (0, 0, 0, 0))
                    out.putalpha(alpha)
                buf = io.BytesIO()
                out.save(buf, format="PNG")
                return buf.getvalue()

        import asyncio

        body = await asyncio.get_running_loop().run_in_executor(None, convert)
        return web.Response(body=body, content_type="image/png", headers=headers)

    # ------------------------------------------------------------------------------------------------ uploads

    async def upload_image(self, request: web.Request) -> web.Response:
        return await self._upload(request, mask=False)

    async def upload_mask(self, request: web.Request) -> web.Response:
        return await self._upload(request, mask=True)

    async def _upload(self, request: web.Request, mask: bool) -> web.Response:
        try:
            post = await request.post()
        except web.HTTPRequestEntityTooLarge:
            raise
        except Exception as exc:  # noqa: BLE001 - not multipart, broken body
            return _bad(f"expected a multipart form with an 'image' file ({exc})")
        image = post.get("image")
        if image is None or not hasattr(image, "file"):
            return _bad("expected a multipart form with an 'image' file")
        kind = str(post.get("type") or "input")
        base = self.folders.get(kind)
        if base is None:
            return _bad(f"type must be one of {', '.join(FOLDER_TYPES)}")
        filename = safe_filename(image.filename)
        if filename is None:
            return _bad(f"invalid file name {image.filename!r}")
        subfolder = str(post.get("subfolder") or "")
        folder = contained_path(base, subfolder, allow_root=True)
        if folder is None:
            return _bad("subfolder is outside the folder", 403)
        data = image.file.read()
        try:
            check_image_bytes(data, self.max_image_pixels, filename)
            if mask:
                data = self._composite_mask(post, data)
        except ImageRejected as exc:
            return _bad(str(exc), exc.status)

        overwrite = str(post.get("overwrite") or "").lower() in ("true", "1")
        stem, suffix = os.path.splitext(filename)
        candidate, i = filename, 1
        while True:
            target = contained_path(base, subfolder, candidate)
            if target is None or target.parent != folder:  # e.g. a symlink named like the file, leading out
                return _bad("invalid file name")
            if not target.exists() or overwrite:
                break
            if target.is_file() and hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest():
                break  # the same file again: reuse it
            candidate = f"{stem} ({i}){suffix}"
            i += 1
        if target.exists() and not target.is_file():
            return _bad(f"{candidate} is a folder", 409)
        if not target.exists() or overwrite:
            write_atomic(folder / candidate, data)  # replaces a symlink of that name rather than writing through
        return web.json_response({"name": candidate, "subfolder": subfolder, "type": kind})

    def _composite_mask(self, post, mask_bytes: bytes) -> bytes:
        """The original image (``original_ref``) with the uploaded mask's alpha as its alpha channel, as PNG."""
        from PIL import Image
        from PIL.PngImagePlugin import PngInfo

        shape = "original_ref must be JSON {filename: string, subfolder?: string, type?: input|output|temp}"
        raw = post.get("original_ref") or ""
        try:
            ref = parse_json(raw) if isinstance(raw, str) else None
        except BadRequest:
            ref = None
        if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str) \
                or not isinstance(ref.get("subfolder") or "", str) or not isinstance(ref.get("type") or "", str):
            raise ImageRejected(shape)
        name, kind = split_annotation(ref["filename"])
        base = self.folders.get(kind or ref.get("type") or "output")
        if base is None:
            raise ImageRejected("original_ref has an unknown type")
        original = contained_path(base, ref.get("subfolder") or "", name)
        if original is None:
            raise ImageRejected("original_ref points outside the folders", 403)
        if not original.is_file():
            raise ImageRejected(f"original image {name} not found", 404)
        with open_checked_image(original, self.max_image_pixels) as orig:
            info = PngInfo()
            for key, value in (getattr(orig, "text", None) or {}).items():
                info.add_text(key, value)
            rgba = orig.convert("RGBA")
        with Image.open(io.BytesIO(mask_bytes)) as m:
            alpha = m.convert("RGBA").getchannel("A")
        if alpha.size != rgba.size:
            alpha = alpha.resize(rgba.size, Image.Resampling.BILINEAR)
        rgba.putalpha(alpha)
        buf = io.BytesIO()
        rgba.save(buf, format="PNG", pnginfo=info, compress_level=4)
        return buf.getvalue()
