"""The studio application: configuration, shared state, the aiohttp app, and ways to run it.

    from ipx2p_standalone.studio import StudioConfig, StudioServer, create_app, run_studio

    app = create_app(StudioConfig(models_dir="models"))          # an aiohttp Application (for aiohttp's test client)
    with StudioServer(models_dir="models", port=0) as server:    # a real server in a background thread
        print(server.url)                                        # http://127.0.0.1:<free port>
    run_studio(StudioConfig(port=8188))                          # what `ipx2p studio` does (blocks)
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import importlib.resources
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
import weakref
from pathlib import Path

from aiohttp import web

from .bounds import MAX_LOG_BYTES, MAX_LOG_ENTRY_CHARS, clip_text
from .files import Files
from .events import Hub
from .prompt_queue import PromptQueue, Worker
from .routes import Api, add_api_routes
from ipx2p_core.atomic_files import remove_leftovers, remove_stale_temp_folders
from ipx2p_core.paths import within

from .security import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_UPLOAD_MB, is_loopback, origin_middleware
from .userdata import UserData

log = logging.getLogger(__name__)

PACK_NAME = "comfyui-ipx2p"  # the folder name the pack has in ComfyUI's custom_nodes: extensions, templates
FRONTEND_PACKAGE = "comfyui-frontend-package"
FRONTEND_VERSION = "1.58.1"  # the frontend whose backend contract this server implements
# Feature flags the frontend reads from /features (and the websocket's feature_flags) that turn on Comfy.org cloud
# features: hub publishing, user secrets, deploy to cloud, the asset API, model upload, ComfyUI-Manager v4, the agent
# panel. The frontend defaults them to off too; the studio says so explicitly, so a frontend whose default changes
# still shows none of them (their routes are in routes.DELIBERATELY_UNSUPPORTED).
CLOUD_FEATURES_OFF = {
    "assets": False, "user_secrets_enabled": False, "deploy_to_cloud": False, "comfyhub_upload_enabled": False,
    "comfyhub_profile_gate_enabled": False, "model_upload_button_enabled": False, "private_models_enabled": False,
    "asset_deletion_enabled": False, "extension.manager.supports_v4": False, "show_signin_button": False,
    "onboarding_survey_enabled": False, "onboarding_tour_enabled": False, "linear_toggle_enabled": False,
    "agent-in-app-experience": False, "partner_node_token": False, "sso_enabled": False, "local_web_sso": False,
}
REPO_ROOT = Path(__file__).resolve().parents[2]
STUDIO_KEY = web.AppKey("ipx2p_studio", object)


def packaged_folder(name: str) -> Path:
    """The pack's ``web`` or ``example_workflows`` folder: inside the installed studio package in a wheel, the
    repository's folder in an editable install (pyproject.toml maps the package names to them)."""
    return Path(str(importlib.resources.files(f"{__package__}.{name}")))
def studio_home() -> Path:
    """The studio's working folder: $IPX2P_STUDIO_HOME, else the per-user data folder platformdirs would give
    (``$XDG_DATA_HOME`` or ~/.local/share on Linux, ~/Library/Application Support on macOS, %LOCALAPPDATA% on
    Windows) + ``ipx2p/studio``. Written out (eight lines) rather than adding platformdirs for it."""
    if os.environ.get("IPX2P_STUDIO_HOME"):
        return Path(os.environ["IPX2P_STUDIO_HOME"]).expanduser().absolute()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base.expanduser().absolute() / "ipx2p" / "studio"


class StudioError(RuntimeError):
    """The studio cannot start (frontend package missing, folder unusable); the message says what to do."""


@dataclasses.dataclass
class StudioConfig:
    host: str = "127.0.0.1"
    port: int = 8188
    models_dir: str | os.PathLike | None = None  # None: $IPX2P_MODELS or ./models
    # None: input/, output/ and user/ under studio_home() (a per-user data folder), never the current folder, so
    # starting the studio inside a checkout leaves it clean
    output_dir: str | os.PathLike | None = None
    input_dir: str | os.PathLike | None = None
    user_dir: str | os.PathLike | None = None
    temp_dir: str | os.PathLike | None = None  # None: a fresh temporary folder, removed at exit
    device: str | None = None
    compile_models: bool = False  # fast mode for every model loaded (--compile)
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    previews: bool = True
    web_dir: str | os.PathLike | None = None  # None: the pack's web/ folder
    examples_dir: str | os.PathLike | None = None  # None: the pack's example_workflows/ folder
    frontend_dir: str | os.PathLike | None = None  # None: comfyui-frontend-package's static/ folder
    node_classes: dict | None = None  # None: this pack's nodes (plus LoadImage, SaveImage, PreviewImage)
    display_names: dict | None = None


def frontend_static(explicit=None) -> tuple[Path, str | None]:
    """The frontend's static folder and the installed package's version."""
    if explicit is not None:
        path = Path(explicit)
        if not (path / "index.html").is_file():
            raise StudioError(f"{path} has no index.html; pass the frontend package's static/ folder")
        return path, None
    try:
        import importlib.resources
        from importlib import metadata

        static = Path(str(importlib.resources.files("comfyui_frontend_package") / "static"))
        version = metadata.version(FRONTEND_PACKAGE)
    except (ImportError, ModuleNotFoundError, Exception) as exc:  # noqa: BLE001
        raise StudioError(
            f"The ComfyUI frontend is not installed ({type(exc).__name__}: {exc}). Install the studio extra: "
            f"pip install -e \".[studio]\" (it pins {FRONTEND_PACKAGE}=={FRONTEND_VERSION})."
        ) from None
    if not (static / "index.html").is_file():
        raise StudioError(f"{FRONTEND_PACKAGE} is installed but {static} has no index.html; reinstall it")
    if version != FRONTEND_VERSION:
        log.warning("%s %s is installed; the studio implements the backend of %s. Some features may not work: "
                    "pip install %s==%s", FRONTEND_PACKAGE, version, FRONTEND_VERSION, FRONTEND_PACKAGE,
                    FRONTEND_VERSION)
    return static, version


class LogBuffer(logging.Handler):
    """The last log lines, for the frontend's log panel (``/internal/logs``), pushed to subscribed clients.

    Bounded in bytes, not lines: each line is clipped to ``MAX_LOG_ENTRY_CHARS`` and the oldest lines go once all
    together pass ``max_bytes`` (15 prompts refused for a 4 MB instruction once made 500 lines weigh 61 MB)."""

    def __init__(self, hub: Hub, max_bytes: int = MAX_LOG_BYTES, max_entry_chars: int = MAX_LOG_ENTRY_CHARS):
        super().__init__(level=logging.INFO)
        self.hub = hub
        self.max_bytes = max_bytes
        self.max_entry_chars = max_entry_chars
        self._entries: collections.deque = collections.deque()
        self._sizes: collections.deque = collections.deque()
        self.bytes = 0
        self._lock_entries = threading.Lock()
        self._subscribers: set[str] = set()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = {"t": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created)),
                     "m": clip_text(self.format(record), self.max_entry_chars) + "\n"}
            size = len(entry["m"].encode("utf-8", "replace")) + len(entry["t"])
            with self._lock_entries:
                self._entries.append(entry)
                self._sizes.append(size)
                self.bytes += size
                while self.bytes > self.max_bytes and len(self._entries) > 1:
                    self._entries.popleft()
                    self.bytes -= self._sizes.popleft()
            for sid in list(self._subscribers):
                self.hub.send_threadsafe("logs", {"entries": [entry], "size": {"cols": 120, "rows": 30}}, sid)
        except Exception:  # noqa: BLE001 - logging must never raise
            pass

    def entries(self) -> list[dict]:
        with self._lock_entries:
            return list(self._entries)

    def subscribe(self, sid: str, enabled: bool) -> None:
        (self._subscribers.add if enabled else self._subscribers.discard)(sid)


class Studio:
    """Everything one studio server holds: folders, the host the nodes see, the runner, queue, worker and sockets."""

    def __init__(self, config: StudioConfig):
        from ..host import StandaloneHost
        from ..runner import Runner

        self.config = config
        self.frontend_dir, self.frontend_version = frontend_static(config.frontend_dir)
        self.web_dir = Path(config.web_dir) if config.web_dir is not None else packaged_folder("web")
        self.examples_dir = Path(config.examples_dir) if config.examples_dir is not None \
            else packaged_folder("example_workflows")

        self._own_temp = config.temp_dir is None
        if self._own_temp:
            remove_stale_temp_folders()  # those of studios that were killed
        temp = Path(tempfile.mkdtemp(prefix=f"ipx2p-studio-temp-{os.getpid()}-")) if self._own_temp \
            else Path(config.temp_dir)
        # our own temporary folder goes when the server stops, or with this object if it never ran
        self._remove_temp = weakref.finalize(self, shutil.rmtree, temp, True) if self._own_temp else None
        def folder(given, name: str) -> Path:
            return Path(given if given is not None else studio_home() / name).expanduser().absolute()

        self.folders = {
            "input": folder(config.input_dir, "input"),
            "output": folder(config.output_dir, "output"),
            "temp": temp.expanduser().absolute(),
        }
        self.user_dir = folder(config.user_dir, "user")
        for folder in (*self.folders.values(), self.user_dir):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StudioError(f"Cannot create the folder {folder}: {exc.strerror}") from None
        for folder in (self.folders["input"], self.user_dir):
            remove_leftovers(folder)  # uploads and saved workflows of a studio killed mid-write
        self._copy_example_inputs()

        self.max_upload = int(config.max_upload_mb * 1024 * 1024)
        self.server_features = {"supports_preview_metadata": True, "max_upload_size": self.max_upload,
                                **CLOUD_FEATURES_OFF, "node_replacements": True}
        self.host = StandaloneHost(models_dir=config.models_dir, device=config.device, temp_dir=self.folders["temp"])
        self.host.previews = config.previews
        self.host.compile_models = config.compile_models
        runner_args = dict(node_classes=config.node_classes, display_names=config.display_names,
                           output_dir=self.folders["output"], input_dir=self.folders["input"], host=self.host)
        # The worker's runner executes; a second runner over the same classes, folders and host answers validation
        # and object_info, because Runner.validate waits for a running prompt to finish (one lock per runner).
        self.runner = Runner(**runner_args)
        self.validator = Runner(**runner_args)
        self.hub = Hub(self.server_features)
        self.queue = PromptQueue(self.hub)
        self.worker = Worker(self.queue, self.runner, self.hub, previews=config.previews)
        self.files = Files(self.folders, config.max_image_pixels)
        self.userdata = UserData(self.user_dir)
        self.logs = LogBuffer(self.hub)

    # ------------------------------------------------------------------------------------------------ the pack

    def _copy_example_inputs(self) -> None:
        """The example workflows' LoadImage names files in example_workflows/input: make them loadable."""
        source = self.examples_dir / "input"
        if not source.is_dir():
            return
        for f in sorted(source.iterdir()):
            target = self.folders["input"] / f.name
            if f.is_file() and not target.exists():
                try:
                    shutil.copy2(f, target)
                except OSError as exc:
                    log.warning("Could not copy the example input %s to %s: %s", f.name, target, exc)

    def python_module(self, cls, default: str) -> str:
        """ComfyUI names a custom node's module ``custom_nodes.<pack>``; the frontend shows the pack from it."""
        if cls.__module__.split(".")[0] == "ipx2p_nodes":
            return f"custom_nodes.{PACK_NAME}"
        return default

    def extension_urls(self) -> list[str]:
        if not self.web_dir.is_dir():
            return []
        urls = []
        for path in sorted(self.web_dir.rglob("*.js")):
            rel = path.relative_to(self.web_dir)
            if any(part.startswith(".") or part == "node_modules" for part in rel.parts):
                continue
            if not within(self.web_dir, path):
                continue
            urls.append(f"/extensions/{urllib.parse.quote(PACK_NAME)}/{urllib.parse.quote(rel.as_posix())}")
        return urls

    def example_names(self) -> list[str]:
        if not self.examples_dir.is_dir():
            return []
        return sorted(p.stem for p in self.examples_dir.glob("*.json") if p.is_file())

    def template_names(self) -> dict:
        """``/workflow_templates``: empty here. The pinned frontend shows a custom-node template with its file name
        as title and description, so the studio lists the examples in ``/templates/index.json`` instead, where
        each has the title and one-line description its workflow carries (``extra.ipx2p_template``). Inside
        ComfyUI, ComfyUI lists them the custom-node way."""
        return {}

    def template_index(self) -> list[dict]:
        """``/templates/index.json``: the examples as one category of the template dialog."""
        templates = []
        for name in self.example_names():
            try:
                info = json.loads((self.examples_dir / f"{name}.json").read_text(encoding="utf-8"))
                info = info.get("extra", {}).get("ipx2p_template", {})
            except (OSError, ValueError, AttributeError):
                info = {}
            templates.append({"name": name, "title": info.get("title", name),
                              "description": info.get("description", ""), "mediaType": "image",
                              "mediaSubtype": "jpg"})
        if not templates:
            return []
        return [{"moduleName": "default", "title": PACK_NAME, "type": "image", "templates": templates}]

    def template_file(self, file: str) -> Path | None:
        """``/templates/NAME.json`` and the thumbnail ``/templates/NAME-1.jpg`` of an example, else None."""
        stem, suffix = os.path.splitext(file)
        if suffix == ".jpg" and stem.endswith("-1"):
            stem = stem[:-2]
        if suffix not in (".json", ".jpg") or stem not in self.example_names():
            return None
        path = self.examples_dir / f"{stem}{suffix}"
        return path if path.is_file() else None

    # ------------------------------------------------------------------------------------------------ lifecycle

    async def startup(self, app: web.Application) -> None:
        await self.hub.start()
        logging.getLogger().addHandler(self.logs)
        self.worker.start()

    async def cleanup(self, app: web.Application) -> None:
        if self.worker.is_alive():
            await asyncio.get_running_loop().run_in_executor(None, self.worker.stop)
        await self.hub.close()
        logging.getLogger().removeHandler(self.logs)
        if self._remove_temp is not None:
            self._remove_temp()


@web.middleware
async def cache_headers(request: web.Request, handler):
    """Scripts, styles and JSON are revalidated on every load, so edited extensions show up at once."""
    response = await handler(request)
    if request.path.endswith((".js", ".css", ".json")) or request.path in ("/", "/index.html"):
        response.headers.setdefault("Cache-Control", "no-cache")
    return response


def create_app(config: StudioConfig | None = None, **overrides) -> web.Application:
    """The studio as an aiohttp application. ``overrides`` replace fields of ``config`` (or of the defaults)."""
    config = dataclasses.replace(config or StudioConfig(), **overrides)
    studio = Studio(config)
    loopback_only = is_loopback(config.host) if config.host else False
    app = web.Application(client_max_size=studio.max_upload,
                          middlewares=[origin_middleware(loopback_only), cache_headers])
    app[STUDIO_KEY] = studio
    add_api_routes(app, Api(studio), studio)
    if studio.web_dir.is_dir():
        app.router.add_static(f"/extensions/{PACK_NAME}", studio.web_dir)
    if studio.examples_dir.is_dir():
        for prefix in ("/api", ""):
            app.router.add_static(f"{prefix}/workflow_templates/{PACK_NAME}", studio.examples_dir)

    index = studio.frontend_dir / "index.html"

    async def root(request: web.Request) -> web.FileResponse:
        return web.FileResponse(index, headers={"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"})

    app.router.add_get("/", root)
    app.router.add_static("/", studio.frontend_dir)
    app.on_startup.append(studio.startup)
    app.on_cleanup.append(studio.cleanup)
    return app


def studio_of(app: web.Application) -> Studio:
    return app[STUDIO_KEY]


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else ("localhost" if host == "::" else host)
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def exposure_warning(host: str) -> str | None:
    if host and is_loopback(host):
        return None
    return (f"WARNING: the studio listens on {host or 'every interface'}, so other machines can reach it. It has no "
            "login: anyone who can connect can run workflows on this machine and read and write its input, output "
            "and user folders. Use --host 127.0.0.1 (the default) unless this network is yours alone.")


def run_studio(config: StudioConfig | None = None, *, out=None, **overrides) -> None:
    """Serve until interrupted (Ctrl-C), printing where to open the page. What ``ipx2p studio`` calls."""
    import sys

    out = out or sys.stderr
    config = dataclasses.replace(config or StudioConfig(), **overrides)
    app = create_app(config)
    studio = studio_of(app)
    warning = exposure_warning(config.host)
    if warning:
        print(warning, file=out, flush=True)

    async def serve() -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=True)
        await runner.setup()
        try:
            site = web.TCPSite(runner, config.host or None, config.port)
            await site.start()
            port = runner.addresses[0][1] if runner.addresses else config.port
            print(f"ipx2p studio (ComfyUI frontend {studio.frontend_version or '?'}) is running.\n"
                  f"  Open {_url(config.host, port)} in your browser. Ctrl-C stops it.\n"
                  f"  models: {studio.host.models_dir.absolute()}\n"
                  f"  input:  {studio.folders['input']}\n"
                  f"  output: {studio.folders['output']}\n"
                  f"  user:   {studio.user_dir}", file=out, flush=True)
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(serve())
    except (KeyboardInterrupt, web.GracefulExit):
        pass


class StudioServer:
    """A studio served from a background thread, for tests and browser automation.

        with StudioServer(models_dir=tmp / "models", port=0) as server:
            requests.get(server.url + "/api/object_info")

    ``port=0`` (the default here) picks a free port; ``server.port`` and ``server.url`` tell which.
    """

    def __init__(self, config: StudioConfig | None = None, **overrides):
        overrides.setdefault("port", 0)
        self.config = dataclasses.replace(config or StudioConfig(), **overrides)
        self.app = create_app(self.config)
        self.studio = studio_of(self.app)
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return _url(self.config.host, self.port)

    def start(self, timeout: float = 60.0) -> "StudioServer":
        self._thread = threading.Thread(target=self._serve, name="ipx2p-studio-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise StudioError("the studio did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.config.host, self.config.port)
            loop.run_until_complete(site.start())
            self.port = runner.addresses[0][1]
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            loop.run_until_complete(runner.cleanup())
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    def __enter__(self) -> "StudioServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
