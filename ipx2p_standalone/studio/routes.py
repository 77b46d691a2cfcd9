"""The HTTP API the ComfyUI frontend speaks (ComfyUI 0.3.64's routes), each served with and without ``/api``.

Handlers are thin: the queue and worker live in :mod:`.prompt_queue`, files in :mod:`.files` and :mod:`.userdata`,
the websocket in :mod:`.events`. Anything slow (validation, ``INPUT_TYPES`` walking model folders, image conversion)
runs in a thread so the event loop keeps serving the page and the socket.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import platform
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from ipx2p_core.paths import contained_path

from . import jobs
from .bounds import MAX_JSON_BODY_BYTES, BadRequest, long_text_inputs, parse_json, read_body, read_json

if TYPE_CHECKING:
    from .app import Studio

log = logging.getLogger(__name__)

MODEL_KINDS = ("checkpoints", "diffusers", "loras", "embeddings")
PREVIEW_SUFFIXES = (".webp", ".png", ".jpg", ".jpeg", ".preview.png", ".preview.jpg", ".preview.webp")


# Routes the pinned frontend (1.58.1) can call that the studio answers with 404 on purpose. The README lists them;
# tests/test_studio_frontend_routes.py checks that every other route the frontend bundle calls is served.
_CLOUD = "a Comfy.org cloud feature, off through the /features flag "
DELIBERATELY_UNSUPPORTED = {
    "/api/assets": "the asset API (assets stored and tagged by the server); " + _CLOUD + "`assets`: the frontend "
                   "lists models from /experiment/models instead",
    "/api/assets/*": "the asset API, as above",
    "/api/jobs/*/assets": "a job's outputs as assets: asked only by the asset API, as above; /jobs/{id} gives them",
    "/api/tasks/*": "the asset API's background tasks (downloads, exports), as above",
    "/api/agent/*": "the in-app agent panel: " + _CLOUD + "`agent-in-app-experience` (and no `agent` feature)",
    "/api/auth/*": "single sign-on to a Comfy.org workspace: " + _CLOUD + "`sso_enabled`",
    "/oauth/*": "OAuth consent pages of the Comfy.org cloud build",
    "/api/user": "the signed-in Comfy.org cloud user; the studio has no accounts (its users are /users)",
    "/api/hub/*": "ComfyHub publishing and profiles: " + _CLOUD + "`comfyhub_upload_enabled`",
    "/api/workflows/published/*": "shared (published) workflows of ComfyHub, as above",
    "/api/userdata/*/publish": "publishing a saved workflow to ComfyHub, as above",
    "/api/secrets": "user secrets (API keys kept by the server): " + _CLOUD + "`user_secrets_enabled`",
    "/api/secrets/*": "user secrets, as above",
    "/api/providers": "partner-node providers a workspace allows: " + _CLOUD + "`partner_node_governance_enabled`; "
                      "the studio has no partner (API) nodes",
    "/api/workspace/*": "workspace policies of the Comfy.org cloud, as above",
    "/api/deploy/*": "deploying a workflow to Comfy.org: " + _CLOUD + "`deploy_to_cloud`",
    "/api/viewvideo": "video previews of video node packs; the studio has no video nodes",
    "/api/v2/manager/*": "ComfyUI-Manager's API (a separate pack, not part of ComfyUI itself); installing node packs "
                         "is not what the studio is for",
    "/api/v2/customnode/*": "ComfyUI-Manager's API, as above",
    "/docs/*": "documentation pages of ComfyUI's core nodes (the comfyui-embedded-docs package); the studio has "
               "none of those nodes, and the frontend shows the node's description instead",
}


def _error(kind: str, message: str, details: str = "") -> dict:
    return {"type": kind, "message": message, "details": details, "extra_info": {}}


def _prompt_error(kind: str, message: str, details: str = "", status: int = 400) -> web.Response:
    return web.json_response({"error": _error(kind, message, details), "node_errors": {}}, status=status)


def _duplicate_id(prompt_id: str) -> web.Response:
    return _prompt_error("duplicate_prompt_id", "A prompt with this prompt_id was already queued",
                         f"prompt_id {prompt_id!r} is in the queue or the history; send a new id or none")


async def _json_body(request: web.Request, default=None):
    """The request's JSON body; ``default`` when empty; 400 when it is not JSON or too deep, 413 when too large."""
    try:
        return await read_json(request, default)
    except BadRequest as exc:
        raise (web.HTTPRequestEntityTooLarge if exc.status == 413 else web.HTTPBadRequest)(
            text=f"{exc}\n", **({"max_size": MAX_JSON_BODY_BYTES, "actual_size": request.content_length or 0}
                                if exc.status == 413 else {})) from None


def _int_query(request: web.Request, name: str, default=None):
    value = request.query.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer\n") from None


class Api:
    def __init__(self, studio: "Studio"):
        self.studio = studio

    async def _in_thread(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))

    # ------------------------------------------------------------------------------------------------ websocket

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        studio = self.studio

        def welcome(sid: str):
            yield "status", {"status": studio.queue.status(), "sid": sid}
            worker = studio.worker
            if worker.current_client == sid and worker.last_node_id is not None:
                yield "executing", {"node": worker.last_node_id}

        return await studio.hub.handle(request, welcome)

    # ------------------------------------------------------------------------------------------------ nodes

    def object_info_sync(self, class_type: str | None = None) -> dict:
        runner = self.studio.validator
        names = [class_type] if class_type is not None else list(runner.node_classes)
        info: dict = {}
        for name in names:
            if name not in runner.node_classes:
                continue
            try:
                entry = runner.object_info(name)[name]
            except Exception:  # noqa: BLE001 - one broken node must not hide the others
                log.exception("object_info failed for node %s", name)
                continue
            entry["python_module"] = self.studio.python_module(runner.node_classes[name], entry["python_module"])
            info[name] = entry
        return info

    async def object_info(self, request: web.Request) -> web.Response:
        return web.json_response(await self._in_thread(self.object_info_sync))

    async def object_info_node(self, request: web.Request) -> web.Response:
        return web.json_response(await self._in_thread(self.object_info_sync, request.match_info["node_class"]))

    async def embeddings(self, request: web.Request) -> web.Response:
        names = await self._in_thread(self.studio.host.list_models, "embeddings")
        return web.json_response([os.path.splitext(n)[0] for n in names])

    # ------------------------------------------------------------------------------------------------ prompts

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self.studio.queue.status())

    async def post_prompt(self, request: web.Request) -> web.Response:
        studio = self.studio
        try:
            body = parse_json(await read_body(request))
        except BadRequest as exc:
            if exc.status == 413:
                return _prompt_error("request_too_large", "The request body is too large", str(exc), status=413)
            return _prompt_error("invalid_json", "The request body is not JSON", str(exc))
        if not isinstance(body, dict):
            return _prompt_error("invalid_prompt", "The request body must be a JSON object")
        if "prompt" not in body:
            return _prompt_error("no_prompt", "No prompt provided", "No prompt provided")
        prompt = body["prompt"]
        if not isinstance(prompt, dict):
            return _prompt_error("invalid_prompt", "The prompt must be a JSON object of node id → node",
                                 f"got {type(prompt).__name__}")
        targets = body.get("partial_execution_targets")
        if targets is not None and (not isinstance(targets, list)
                                    or not all(isinstance(t, (str, int)) and not isinstance(t, bool)
                                               for t in targets)):
            return _prompt_error("invalid_prompt", "partial_execution_targets must be a list of node ids")
        extra_data = body.get("extra_data")
        extra_data = dict(extra_data) if isinstance(extra_data, dict) else {}
        if "client_id" in body:
            extra_data["client_id"] = str(body["client_id"]) if body["client_id"] else ""
        extra_pnginfo = extra_data.get("extra_pnginfo")
        if extra_pnginfo is not None and not isinstance(extra_pnginfo, dict):
            return _prompt_error("invalid_prompt", "extra_data.extra_pnginfo must be a JSON object")
        if "number" in body:
            try:
                number = float(body["number"])
                if not math.isfinite(number):
                    raise ValueError
            except (TypeError, ValueError, OverflowError):
                return _prompt_error("invalid_prompt", "number must be a finite number")
        else:
            number = studio.queue.next_number(front=bool(body.get("front")))
        prompt_id = body.get("prompt_id") or str(uuid.uuid4())
        if not isinstance(prompt_id, str) or len(prompt_id) > 200:
            return _prompt_error("invalid_prompt", "prompt_id must be a string of at most 200 characters",
                                 f"got {type(prompt_id).__name__} of length {len(str(prompt_id)):,}")
        if studio.queue.knows(prompt_id):
            return _duplicate_id(prompt_id)
        too_long = long_text_inputs(prompt)
        if too_long:
            details = "; ".join(e["details"] for info in too_long.values() for e in info["errors"])
            return web.json_response({"error": _error("prompt_outputs_failed_validation",
                                                      "Prompt outputs failed validation", details),
                                      "node_errors": too_long}, status=400)

        checked = await self._in_thread(studio.validator.validate, prompt, extra_pnginfo=extra_pnginfo,
                                        outputs=targets, allow_partial=True)
        if not checked.ok:
            error = checked.error or _error("invalid_prompt", "The prompt is not valid")
            log.warning("Invalid prompt: %s", checked.text())
            return web.json_response({"error": error, "node_errors": checked.node_errors}, status=400)
        try:
            studio.queue.put(number, prompt_id, prompt, extra_data, checked.outputs)
        except KeyError:  # the same id sent twice at once: the first one was queued while this one was validated
            return _duplicate_id(prompt_id)
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": checked.node_errors})

    # ------------------------------------------------------------------------------------------------ queue

    async def get_queue(self, request: web.Request) -> web.Response:
        return web.json_response(self.studio.queue.snapshot())

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await _json_body(request, {})
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="expected {clear: true} or {delete: [prompt ids]}\n")
        if body.get("clear"):
            self.studio.queue.clear()
        if "delete" in body:
            if not isinstance(body["delete"], list):
                raise web.HTTPBadRequest(text="delete must be a list of prompt ids\n")
            self.studio.queue.delete(body["delete"])
        return web.Response(status=200)

    async def interrupt(self, request: web.Request) -> web.Response:
        body = await _json_body(request, {})  # a body that is not JSON interrupts nothing: 400 says why
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        if not prompt_id:
            self.studio.runner.interrupt()
        elif not self.studio.queue.interrupt_if_running(str(prompt_id), self.studio.runner.interrupt):
            log.info("Prompt %s is not running; nothing interrupted", str(prompt_id)[:200])
        return web.Response(status=200)

    async def free(self, request: web.Request) -> web.Response:
        body = await _json_body(request, {})
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="expected {unload_models: bool, free_memory: bool}\n")
        for name in ("unload_models", "free_memory"):
            if body.get(name):
                self.studio.queue.set_flag(name, True)
        return web.Response(status=200)

    # ------------------------------------------------------------------------------------------------ jobs

    async def list_jobs(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(jobs.list_jobs(self.studio.queue, request.query))
        except jobs.JobQueryError as exc:
            return web.json_response({"error": str(exc)}, status=400)

    async def get_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        job = jobs.find_job(self.studio.queue, job_id)
        if job is None:
            return web.json_response({"error": f"no job {job_id!r} in the queue or the history"}, status=404)
        return web.json_response(job)

    def _cancel(self, job_ids: list[str]) -> list[str]:
        """Pending jobs leave the queue; the running one is interrupted. Finished or unknown ids are not cancelled."""
        queue, cancelled = self.studio.queue, []
        snapshot = queue.jobs_snapshot()
        pending = {i.prompt_id for i in snapshot["pending"]}
        running = queue.running_id()
        to_delete = [j for j in job_ids if j in pending]
        if to_delete:
            queue.delete(to_delete)
            cancelled += to_delete
        if running is not None and running in job_ids:
            self.studio.runner.interrupt()
            cancelled.append(running)
        return cancelled

    async def cancel_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        if jobs.find_job(self.studio.queue, job_id) is None:
            return web.json_response({"error": f"no job {job_id!r} in the queue or the history"}, status=404)
        return web.json_response({"cancelled": self._cancel([job_id])})

    async def cancel_jobs(self, request: web.Request) -> web.Response:
        body = await _json_body(request, {})
        ids = body.get("job_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not 1 <= len(ids) <= 100 or not all(isinstance(i, str) for i in ids):
            return web.json_response({"error": "expected {job_ids: [1 to 100 job id strings]}"}, status=400)
        return web.json_response({"cancelled": self._cancel(ids)})

    # ------------------------------------------------------------------------------------------------ subgraphs

    async def global_subgraphs(self, request: web.Request) -> web.Response:
        return web.json_response({})  # blueprints that node packs ship (a subgraphs/ folder); this pack has none

    async def global_subgraph(self, request: web.Request) -> web.Response:
        return web.json_response({"error": f"no global subgraph {request.match_info['subgraph_id']!r}"}, status=404)

    async def node_replacements(self, request: web.Request) -> web.Response:
        return web.json_response({})  # old node type -> replacements; no node of this pack has been replaced

    # ------------------------------------------------------------------------------------------------ history

    async def get_history(self, request: web.Request) -> web.Response:
        max_items = _int_query(request, "max_items")
        offset = _int_query(request, "offset", -1)
        return web.json_response(self.studio.queue.get_history(max_items=max_items, offset=offset))

    async def get_history_item(self, request: web.Request) -> web.Response:
        return web.json_response(self.studio.queue.get_history(prompt_id=request.match_info["prompt_id"]))

    async def post_history(self, request: web.Request) -> web.Response:
        body = await _json_body(request, {})
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="expected {clear: true} or {delete: [prompt ids]}\n")
        if body.get("clear"):
            self.studio.queue.clear_history()
        if "delete" in body:
            if not isinstance(body["delete"], list):
                raise web.HTTPBadRequest(text="delete must be a list of prompt ids\n")
            self.studio.queue.delete_history(body["delete"])
        return web.Response(status=200)

    # ------------------------------------------------------------------------------------------------ system

    def system_stats_sync(self) -> dict:
        from importlib import metadata

        ram_total = ram_free = 0
        try:
            import psutil

            vm = psutil.virtual_memory()
            ram_total, ram_free = vm.total, vm.available
        except ImportError:
            try:
                pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
                ram_total = ram_free = pages
            except (ValueError, OSError, AttributeError):
                pass
        try:
            import torch

            torch_version = torch.__version__
        except ImportError:  # pragma: no cover
            torch = None
            torch_version = ""
        devices = []
        device = self.studio.host.device()
        if torch is not None and torch.cuda.is_available() and (device == "auto" or device.startswith("cuda")):
            index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
            free, total = torch.cuda.mem_get_info(index)
            devices.append({"name": f"cuda:{index} {torch.cuda.get_device_name(index)}", "type": "cuda",
                            "index": index, "vram_total": total, "vram_free": free,
                            "torch_vram_total": torch.cuda.memory_reserved(index),
                            "torch_vram_free": torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)})
        else:
            devices.append({"name": "cpu", "type": "cpu", "index": 0, "vram_total": ram_total,
                            "vram_free": ram_free, "torch_vram_total": ram_total, "torch_vram_free": ram_free})
        try:
            version = metadata.version("comfyui-ipx2p")
        except metadata.PackageNotFoundError:
            version = "0"
        return {
            "system": {
                "os": os.name,
                "python_version": sys.version,
                "embedded_python": False,
                "comfyui_version": f"ipx2p-studio {version}",
                "required_frontend_version": self.studio.frontend_version or "",
                "pytorch_version": torch_version,
                "argv": list(sys.argv),
                "ram_total": ram_total,
                "ram_free": ram_free,
                "platform": platform.platform(),
            },
            "devices": devices,
        }

    async def system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(await self._in_thread(self.system_stats_sync))

    async def features(self, request: web.Request) -> web.Response:
        return web.json_response(self.studio.server_features)

    async def extensions(self, request: web.Request) -> web.Response:
        return web.json_response(self.studio.extension_urls())

    async def workflow_templates(self, request: web.Request) -> web.Response:
        return web.json_response(self.studio.template_names())

    async def core_templates(self, request: web.Request) -> web.Response:
        return web.json_response(self.studio.template_index())

    async def core_template_file(self, request: web.Request) -> web.StreamResponse:
        path = self.studio.template_file(request.match_info["file"])
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def core_template_logos(self, request: web.Request) -> web.Response:
        return web.json_response({})  # logos of ComfyUI's own template gallery, which the studio does not ship

    async def i18n(self, request: web.Request) -> web.Response:
        return web.json_response({})  # the pack ships no translations; the frontend has its own built in

    # ------------------------------------------------------------------------------------------------ models

    def _kind(self, request: web.Request) -> str:
        kind = request.match_info["folder"]
        if kind not in MODEL_KINDS:
            raise web.HTTPNotFound(text=f"unknown model folder {kind!r}; known: {', '.join(MODEL_KINDS)}\n")
        return kind

    async def model_kinds(self, request: web.Request) -> web.Response:
        return web.json_response(list(MODEL_KINDS))

    async def model_names(self, request: web.Request) -> web.Response:
        return web.json_response(await self._in_thread(self.studio.host.list_models, self._kind(request)))

    async def experiment_models(self, request: web.Request) -> web.Response:
        host = self.studio.host
        return web.json_response([{"name": k, "folders": [str(p) for p in host.model_dirs(k)]} for k in MODEL_KINDS])

    def _model_files(self, kind: str) -> list[dict]:
        host = self.studio.host
        roots = host.model_dirs(kind)
        out = []
        for name in host.list_models(kind):
            for index, root in enumerate(roots):
                path = Path(root) / name
                if path.exists():
                    st = path.stat()
                    out.append({"name": name, "pathIndex": index, "modified": st.st_mtime, "created": st.st_ctime,
                                "size": st.st_size})
                    break
        return out

    async def experiment_model_files(self, request: web.Request) -> web.Response:
        return web.json_response(await self._in_thread(self._model_files, self._kind(request)))

    async def model_preview(self, request: web.Request) -> web.Response:
        kind = self._kind(request)
        roots = self.studio.host.model_dirs(kind)
        try:
            root = roots[int(request.match_info["path_index"])]
        except (ValueError, IndexError):
            raise web.HTTPNotFound() from None
        stem = os.path.splitext(request.match_info["filename"])[0]

        def find() -> bytes | None:
            from .security import open_checked_image

            for suffix in PREVIEW_SUFFIXES:
                path = contained_path(root, stem + suffix)
                if path is not None and path.is_file():
                    import io

                    with open_checked_image(path, self.studio.config.max_image_pixels) as img:
                        buf = io.BytesIO()
                        img.convert("RGBA").save(buf, format="WEBP")
                        return buf.getvalue()
            return None

        try:
            body = await self._in_thread(find)
        except Exception:  # noqa: BLE001 - a broken preview is just no preview
            body = None
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(body=body, content_type="image/webp")

    async def view_metadata(self, request: web.Request) -> web.Response:
        kind = request.match_info["folder_name"]
        name = request.query.get("filename", "")
        if kind not in MODEL_KINDS or not name.endswith(".safetensors"):
            raise web.HTTPNotFound()
        path = self.studio.host.resolve_model(kind, name)
        if path is None or not path.is_file():
            raise web.HTTPNotFound()

        def header() -> dict | None:
            with open(path, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                if size <= 0 or size > 8 * 1024 * 1024:
                    return None
                return json.loads(f.read(size)).get("__metadata__")

        try:
            meta = await self._in_thread(header)
        except (OSError, ValueError):
            meta = None
        if meta is None:
            raise web.HTTPNotFound()
        return web.json_response(meta)

    # ------------------------------------------------------------------------------------------------ internal

    async def internal_logs(self, request: web.Request) -> web.Response:
        return web.json_response("".join(f"{e['t']} - {e['m']}" for e in self.studio.logs.entries()))

    async def internal_logs_raw(self, request: web.Request) -> web.Response:
        return web.json_response({"entries": self.studio.logs.entries(), "size": {"cols": 120, "rows": 30}})

    async def internal_logs_subscribe(self, request: web.Request) -> web.Response:
        body = await _json_body(request, {})
        if not isinstance(body, dict):
            raise web.HTTPBadRequest()
        self.studio.logs.subscribe(str(body.get("clientId") or ""), bool(body.get("enabled")))
        return web.Response(status=200)

    async def internal_folder_paths(self, request: web.Request) -> web.Response:
        host = self.studio.host
        paths = {k: [str(p) for p in host.model_dirs(k)] for k in MODEL_KINDS}
        paths.update({k: [str(v)] for k, v in self.studio.folders.items()})
        return web.json_response(paths)

    async def internal_files(self, request: web.Request) -> web.Response:
        kind = request.match_info["directory_type"]
        folder = self.studio.folders.get(kind)
        if folder is None:
            return web.json_response({"error": "Invalid directory type"}, status=400)
        entries = [e for e in os.scandir(folder) if e.is_file()] if folder.is_dir() else []
        entries.sort(key=lambda e: -e.stat().st_mtime)
        return web.json_response([e.name for e in entries])


def add_api_routes(app: web.Application, api: Api, studio: "Studio") -> None:
    """Every API route at ``/x`` and at ``/api/x`` (as ComfyUI), then ``/internal/*`` (no ``/api``)."""
    files, userdata = studio.files, studio.userdata
    table = [
        ("GET", "/ws", api.websocket),
        ("GET", "/object_info", api.object_info),
        ("GET", "/object_info/{node_class}", api.object_info_node),
        ("GET", "/embeddings", api.embeddings),
        ("GET", "/prompt", api.get_prompt),
        ("POST", "/prompt", api.post_prompt),
        ("GET", "/queue", api.get_queue),
        ("POST", "/queue", api.post_queue),
        ("GET", "/history", api.get_history),
        ("GET", "/history/{prompt_id}", api.get_history_item),
        ("POST", "/history", api.post_history),
        ("POST", "/interrupt", api.interrupt),
        ("POST", "/free", api.free),
        ("GET", "/jobs", api.list_jobs),
        ("POST", "/jobs/cancel", api.cancel_jobs),
        ("GET", "/jobs/{job_id}", api.get_job),
        ("POST", "/jobs/{job_id}/cancel", api.cancel_job),
        ("GET", "/global_subgraphs", api.global_subgraphs),
        ("GET", "/global_subgraphs/{subgraph_id}", api.global_subgraph),
        ("GET", "/node_replacements", api.node_replacements),
        ("GET", "/view", files.view),
        ("POST", "/upload/image", files.upload_image),
        ("POST", "/upload/mask", files.upload_mask),
        ("GET", "/view_metadata/{folder_name}", api.view_metadata),
        ("GET", "/system_stats", api.system_stats),
        ("GET", "/features", api.features),
        ("GET", "/extensions", api.extensions),
        ("GET", "/workflow_templates", api.workflow_templates),
        ("GET", "/i18n", api.i18n),
        ("GET", "/models", api.model_kinds),
        ("GET", "/models/{folder}", api.model_names),
        ("GET", "/experiment/models", api.experiment_models),
        ("GET", "/experiment/models/{folder}", api.experiment_model_files),
        ("GET", "/experiment/models/preview/{folder}/{path_index}/{filename:.*}", api.model_preview),
        ("GET", "/users", userdata.get_users),
        ("POST", "/users", userdata.post_users),
        ("GET", "/settings", userdata.get_settings),
        ("POST", "/settings", userdata.post_settings),
        ("GET", "/settings/{id}", userdata.get_setting),
        ("POST", "/settings/{id}", userdata.post_setting),
        ("GET", "/userdata", userdata.list),
        ("GET", "/v2/userdata", userdata.list_v2),
        ("GET", "/userdata/{file}", userdata.get_file),
        ("POST", "/userdata/{file}", userdata.post_file),
        ("DELETE", "/userdata/{file}", userdata.delete_file),
        ("POST", "/userdata/{file}/move/{dest}", userdata.move_file),
    ]
    for prefix in ("/api", ""):
        for method, path, handler in table:
            app.router.add_route(method, prefix + path, handler)
    internal = [
        ("GET", "/internal/logs", api.internal_logs),
        ("GET", "/internal/logs/raw", api.internal_logs_raw),
        ("PATCH", "/internal/logs/subscribe", api.internal_logs_subscribe),
        ("GET", "/internal/folder_paths", api.internal_folder_paths),
        ("GET", "/internal/files/{directory_type}", api.internal_files),
    ]
    for method, path, handler in internal:
        app.router.add_route(method, path, handler)
    app.router.add_get("/templates/index.json", api.core_templates)
    app.router.add_get("/templates/index_logo.json", api.core_template_logos)
    app.router.add_get("/templates/{file:.+}", api.core_template_file)  # the examples' files (see template_index)
