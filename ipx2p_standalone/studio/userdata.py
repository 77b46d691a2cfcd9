"""``/users``, ``/settings`` and ``/userdata``: the frontend's settings and saved workflows, kept on disk.

One user ("default", as ComfyUI without ``--multi-user``); files live in ``<user dir>/default/``: settings in
``comfy.settings.json``, workflows in ``workflows/``, the frontend's other files beside them. Names come URL-encoded
(``workflows%2Fa.json``); as ComfyUI, a name still holding ``%`` after routing is decoded once more. Every name is
checked with :func:`ipx2p_core.paths.contained_path`; writes go to a temporary file first and replace the target at once.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.parse
from pathlib import Path

from aiohttp import web

from ipx2p_core.paths import contained_path, within

from .bounds import BadRequest, read_json
from .security import ATOMIC_TMP_PREFIX, write_atomic

log = logging.getLogger(__name__)

USER = "default"
SETTINGS_FILE = "comfy.settings.json"


def _flag(request: web.Request, name: str, default: str) -> bool:
    return request.query.get(name, default).lower() == "true"


class UserData:
    def __init__(self, user_dir: Path):
        self.user_dir = Path(user_dir)
        self.root = self.user_dir / USER

    # ------------------------------------------------------------------------------------------------ paths

    def path(self, name: str | None, allow_root: bool = False) -> Path | None:
        if name is None:
            return None
        if "%" in name:
            name = urllib.parse.unquote(name)
        return contained_path(self.root, name, allow_root=allow_root)

    def info(self, path: Path, relative_to: Path) -> dict:
        st = path.stat()
        return {"path": path.relative_to(relative_to.resolve()).as_posix(), "size": st.st_size,
                "modified": st.st_mtime, "created": st.st_ctime}

    def _answer(self, request: web.Request, path: Path) -> web.Response:
        if _flag(request, "full_info", "false"):
            return web.json_response(self.info(path, self.root))
        return web.json_response(path.relative_to(self.root.resolve()).as_posix())

    # ------------------------------------------------------------------------------------------------ /users

    async def get_users(self, request: web.Request) -> web.Response:
        return web.json_response({"storage": "server", "migrated": self.root.is_dir()})

    async def post_users(self, request: web.Request) -> web.Response:
        return web.json_response({"error": "This studio has a single user; it does not create users."}, status=400)

    # ------------------------------------------------------------------------------------------------ /settings

    def load_settings(self) -> dict:
        path = self.root / SETTINGS_FILE
        if not path.is_file():
            return {}
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
            return value if isinstance(value, dict) else {}
        except (OSError, ValueError) as exc:
            log.error("The settings file %s is unreadable (%s); starting from defaults", path, exc)
            return {}

    def save_settings(self, settings: dict) -> None:
        write_atomic(self.root / SETTINGS_FILE, json.dumps(settings, indent=4).encode("utf-8"))

    async def get_settings(self, request: web.Request) -> web.Response:
        return web.json_response(self.load_settings())

    async def get_setting(self, request: web.Request) -> web.Response:
        return web.json_response(self.load_settings().get(request.match_info["id"]))

    async def post_settings(self, request: web.Request) -> web.Response:
        try:
            new = await read_json(request)
        except BadRequest as exc:
            return web.Response(status=exc.status, text=f"expected a JSON object: {exc}\n")
        if not isinstance(new, dict):
            return web.Response(status=400, text="expected a JSON object of setting id → value\n")
        self.save_settings({**self.load_settings(), **new})
        return web.Response(status=200)

    async def post_setting(self, request: web.Request) -> web.Response:
        setting_id = request.match_info["id"]
        try:
            value = await read_json(request)
        except BadRequest as exc:
            return web.Response(status=exc.status, text=f"expected a JSON value: {exc}\n")
        settings = self.load_settings()
        settings[setting_id] = value
        self.save_settings(settings)
        return web.Response(status=200)

    # ------------------------------------------------------------------------------------------------ /userdata

    async def list(self, request: web.Request) -> web.Response:
        directory = request.query.get("dir", "")
        if not directory:
            return web.Response(status=400, text="dir is required\n")
        base = self.path(directory, allow_root=True)
        if base is None:
            return web.Response(status=403, text="invalid directory\n")
        if not base.is_dir():
            return web.Response(status=404, text="directory not found\n")
        recurse = _flag(request, "recurse", "")
        full_info = _flag(request, "full_info", "")
        split = _flag(request, "split", "")
        root = self.root.resolve()
        results = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if name.startswith(ATOMIC_TMP_PREFIX) or not path.is_file() or not within(root, path):
                    continue  # half-written files, and links that lead out of the user's folder
                if full_info:
                    results.append(self.info(path, base))
                else:
                    rel = path.relative_to(base).as_posix()
                    results.append([rel, *rel.split("/")] if split else rel)
            if not recurse:
                break
        return web.json_response(results)

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        path = self.path(request.match_info.get("file"))
        if path is None:
            return web.Response(status=403, text="invalid file name\n")
        if not path.is_file():
            return web.Response(status=404, text="not found\n")
        import mimetypes

        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if content_type in ("text/html", "application/xhtml+xml", "image/svg+xml"):
            content_type = "text/plain"
        return web.FileResponse(path, headers={"Content-Type": content_type, "X-Content-Type-Options": "nosniff"})

    async def post_file(self, request: web.Request) -> web.Response:
        path = self.path(request.match_info.get("file"))
        if path is None:
            return web.Response(status=403, text="invalid file name\n")
        if path.is_dir():
            return web.Response(status=400, text="that name is a folder\n")
        if request.query.get("overwrite", "true") == "false" and path.exists():
            return web.Response(status=409, text="File already exists\n")
        body = await request.read()
        try:
            write_atomic(path, body)
        except OSError as exc:
            log.warning("Could not save %s: %s", path, exc)
            return web.Response(status=400, text=f"could not save the file ({exc.strerror})\n")
        return self._answer(request, path)

    async def delete_file(self, request: web.Request) -> web.Response:
        path = self.path(request.match_info.get("file"))
        if path is None:
            return web.Response(status=403, text="invalid file name\n")
        if not path.is_file():
            return web.Response(status=404, text="not found\n")
        path.unlink()
        return web.Response(status=204)

    async def move_file(self, request: web.Request) -> web.Response:
        source = self.path(request.match_info.get("file"))
        dest = self.path(request.match_info.get("dest"))
        if source is None or dest is None:
            return web.Response(status=403, text="invalid file name\n")
        if not source.is_file():
            return web.Response(status=404, text="not found\n")
        if request.query.get("overwrite", "true") == "false" and dest.exists():
            return web.Response(status=409, text="File already exists\n")
        if dest.is_dir():
            return web.Response(status=400, text="the destination is a folder\n")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, dest)
        return self._answer(request, dest)

    async def list_v2(self, request: web.Request) -> web.Response:
        """``/v2/userdata?path=``: files and folders under a folder, folders first (ComfyUI's newer listing)."""
        rel = request.query.get("path", "")
        root = self.root.resolve() if self.root.exists() else self.root
        base = self.path(rel) if rel else root
        if base is None:
            return web.Response(status=400, text="invalid path\n")
        if not base.exists():
            return web.json_response([]) if not rel else web.Response(status=404, text="not found\n")
        if not base.is_dir():
            return web.Response(status=400, text="not a folder\n")
        results = []
        for dirpath, dirnames, filenames in os.walk(base):
            for name in dirnames:
                path = Path(dirpath) / name
                results.append({"name": name, "path": path.relative_to(root).as_posix(), "type": "directory"})
            for name in filenames:
                path = Path(dirpath) / name
                if name.startswith(ATOMIC_TMP_PREFIX) or not within(root, path):
                    continue
                entry = {"name": name, "path": path.relative_to(root).as_posix(), "type": "file"}
                try:
                    st = path.stat()
                    entry.update(size=st.st_size, modified=st.st_mtime)
                except OSError:
                    pass
                results.append(entry)
        results.sort(key=lambda e: (e["type"] != "directory", e["name"].lower()))
        return web.json_response(results)
