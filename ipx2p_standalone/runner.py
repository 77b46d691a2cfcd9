"""A headless executor of ComfyUI workflows for any V1 node classes; the one engine behind ``ipx2p run`` and the studio.

    runner = Runner(output_dir="out", input_dir="photos", host=StandaloneHost("models"))
    result = runner.run(json.load(open("edit.json")), overrides={"7.text_guidance": 9.0})
    result.status, result.executed, result.cached, result.outputs, result.files

What it does, following ComfyUI's executor (``execution.py``) without importing it:

* Accepts API prompts, UI workflows (converted as the frontend converts them, see :mod:`.workflow`) and
  ``/prompt`` request bodies (``{"prompt": ..., "extra_data": {"extra_pnginfo": ...}}``).
* Validates before running anything, per node, with ComfyUI's error shapes (``node_errors``): unknown node types,
  missing required inputs, links to missing nodes or slots, link type mismatches, values that do not convert, are
  below ``min`` / above ``max`` or not in a combo's list, and ``VALIDATE_INPUTS`` failures (a missing model file, an
  image file that is not an image). Only nodes that output nodes need are validated and run.
* Runs nodes in dependency order, each input as a list (``INPUT_IS_LIST`` / ``OUTPUT_IS_LIST`` semantics), with hidden
  inputs ``UNIQUE_ID``, ``PROMPT``, ``EXTRA_PNGINFO`` and ``DYNPROMPT``; one node object per node id, kept across runs.
* Caches outputs across runs: a node's key is its class, its ``IS_CHANGED`` value, its constant inputs and the keys of
  the nodes it links from, so changing a guidance value re-runs only the sampler and what follows it. Outputs of nodes
  no longer in the prompt are dropped (ComfyUI's classic cache), unless ``cache_size`` keeps some more.
* Reports ComfyUI's websocket events to ``on_event(name, data)``: ``execution_start``, ``execution_cached``,
  ``executing``, ``progress_state``, ``progress``, ``executed``, ``execution_success`` / ``execution_error`` /
  ``execution_interrupted`` — plus ``preview`` ``{node, display_node, prompt_id, image: PIL.Image}`` for latent
  previews, which a server turns into binary preview frames. The queue-level ``status`` and the closing
  ``executing {node: None}`` belong to whoever runs the queue (the studio), as in ComfyUI's ``main.py``.
* Never raises for a bad workflow or a failing node: :class:`RunResult` carries ``status`` ("success", "error",
  "interrupted" or "invalid"), ``error`` and ``node_errors``; ``result.raise_for_error()`` turns them into
  :class:`WorkflowError`.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import inspect
import logging
import math
import sys
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ipx2p_core.atomic_files import private_temp_folder, remove_leftovers
from ipx2p_core.errors import Cancelled
from ipx2p_nodes.host import set_host

from .builtin_nodes import BUILTIN_DISPLAY_NAMES, Folders, make_builtin_nodes
from .host import StandaloneHost
from .workflow import (
    Conversion,
    OverrideError,
    WorkflowFormatError,
    apply_overrides,
    combo_options,
    id_sort_key,
    input_types,
    is_api_prompt,
    is_link,
    is_ui_workflow,
    spec_options,
    spec_type,
    ui_to_api,
)

log = logging.getLogger(__name__)

EventCallback = Callable[[str, dict], None]


class WorkflowError(Exception):
    """A workflow that could not run or a node that failed; ``error`` and ``node_errors`` as in ComfyUI."""

    def __init__(self, error: dict | None, node_errors: dict | None = None, status: str = "invalid"):
        self.error = error or {}
        self.node_errors = node_errors or {}
        self.status = status
        super().__init__(format_errors(self.error, self.node_errors))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _full_type_name(cls) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _format_value(x):
    if x is None or isinstance(x, (int, float, bool, str)):
        return x
    return str(x)


def _error(kind: str, message: str, details: str = "", **extra) -> dict:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _accepted(fn) -> tuple[list[str], bool]:
    """(keyword names a callable takes, whether it takes **kwargs); for a bound classmethod, without ``cls``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return [], True
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


def _types_compatible(received, expected) -> bool:
    """ComfyUI's link check: equal types, or comma-separated lists sharing a type; ``*`` matches anything; a combo
    input accepts a COMBO (or wildcard) output."""
    if isinstance(expected, (list, tuple)):
        return isinstance(received, (list, tuple)) or received in ("COMBO", "*")
    if not received != expected:  # noqa: SIM202 - honours custom __ne__ "any type" strings, as ComfyUI does
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    if "*" in (received, expected):
        return True
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in expected.split(",")})


_SOCKET_FREE_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "*")


def _convert(kind, val):
    """A widget value converted to its input's type, as ComfyUI converts it (raises ValueError/TypeError)."""
    if kind == "INT":
        if isinstance(val, float) and not val.is_integer():
            raise ValueError(f"{val} is not a whole number")
        return int(val)
    if kind == "FLOAT":
        val = float(val)
        if math.isnan(val):
            raise ValueError("NaN")
        return val
    if kind == "STRING":
        return str(val)
    if kind == "BOOLEAN":
        return {"true": True, "false": False}.get(val.lower(), bool(val)) if isinstance(val, str) else bool(val)
    return val


def _check_constant(inputs: dict, name: str, spec, range_checks: bool) -> dict | None:
    """A constant input: unwrap ``{"__value__": ...}``, refuse constants for socket types, convert the value in
    place, then check ``min``, ``max`` and a combo's options (unless the node judges them itself)."""
    kind, opts = spec_type(spec), spec_options(spec)
    val = inputs[name]
    if isinstance(val, dict) and "__value__" in val:
        val = inputs[name] = val["__value__"]
    if isinstance(kind, str) and kind not in _SOCKET_FREE_TYPES and "," not in kind and combo_options(spec) is None:
        # ComfyUI would hand the constant to the node; a socket type needs a link
        return _error("bad_linked_input", f"Input must be linked to a {kind} output",
                      f"{name} got the constant {_format_value(val)!r}", input_name=name,
                      received_value=_format_value(val))
    try:
        val = inputs[name] = _convert(kind, val)
    except (TypeError, ValueError, OverflowError) as exc:
        return _error("invalid_input_type", f"Failed to convert an input value to a {kind} value",
                      f"{name}, {val}, {exc}", input_name=name, received_value=_format_value(val),
                      exception_message=str(exc))
    if not range_checks:
        return None
    if "min" in opts and isinstance(val, (int, float)) and val < opts["min"]:
        return _error("value_smaller_than_min", f"Value {val} smaller than min of {opts['min']}", name,
                      input_name=name, received_value=val)
    if "max" in opts and isinstance(val, (int, float)) and val > opts["max"]:
        return _error("value_bigger_than_max", f"Value {val} bigger than max of {opts['max']}", name,
                      input_name=name, received_value=val)
    options = combo_options(spec)
    if options is not None and val not in options:
        listing = f"(list of length {len(options)})" if len(options) > 20 else str(options)
        return _error("value_not_in_list", "Value not in list", f"{name}: '{val}' not in {listing}",
                      input_name=name, received_value=val)
    return None


def _describe(err: dict) -> str:
    """One validation error as a short sentence (without the node)."""
    extra = err.get("extra_info") or {}
    name = extra.get("input_name")
    kind = err.get("type")
    message = err.get("message", "error")
    details = str(err.get("details") or "")
    if kind == "bad_override":
        return message
    if kind == "invalid_prompt" and extra.get("class_type") is not None:
        return f"unknown node type {extra['class_type']!r} (not one of the nodes this runner has)"
    if kind == "custom_validation_failed":
        text = details[len(name) + 3:] if name and details.startswith(f"{name} - ") else (details or message)
    elif kind == "value_not_in_list" and name:
        value = extra.get("received_value")
        listing = details.split(" not in ", 1)[1] if " not in " in details else ""
        text = f"{value!r} is not one of {listing}" if listing else message
    elif kind == "return_type_mismatch" and name:
        text = f"linked to an output of type {extra.get('received_type')}, which does not fit this input"
        if "input_type(" in details:
            text = f"linked to an output of type {extra.get('received_type')}, needs " + \
                details.rsplit("input_type(", 1)[1].rstrip(")")
    elif kind in ("required_input_missing",) and name:
        text = "required input is missing (link it or give it a value)"
    elif details and details != name:
        text = f"{message}: {details}" if not name or not details.startswith(name) else \
            f"{message}{details[len(name):]}" if details[len(name):].startswith((",", ":")) else f"{message} ({details})"
    else:
        text = message
    return f"input '{name}': {text}" if name else text


def format_errors(error: dict | None, node_errors: dict | None, prompt: dict | None = None) -> str:
    """Human-readable lines: one per problem, naming the node id, its class (and title) and the input."""
    lines: list[str] = []
    for node_id in sorted(node_errors or {}, key=id_sort_key):
        info = node_errors[node_id]
        cls = info.get("class_type", "?")
        title = ((prompt or {}).get(node_id) or {}).get("_meta", {}).get("title")
        where = f"node {node_id} ({cls}{', ' + repr(title) if title and title != cls else ''})"
        for err in info.get("errors", []):
            lines.append(f"{where}: {_describe(err)}")
    if error and not lines:
        if error.get("node_id") is not None and "exception_message" in error:
            lines.append(f"node {error['node_id']} ({error.get('node_type')}): {error.get('exception_type')}: "
                         f"{str(error.get('exception_message', '')).strip()}")
        elif "exception_message" in error:
            lines.append(str(error.get("exception_message", "")).strip())
        else:
            det = error.get("details")
            lines.append((error.get("message") or "error") + (f": {det}" if det else ""))
    return "\n".join(lines) or "unknown error"


class DynPrompt:
    """The part of ComfyUI's DynamicPrompt that nodes asking for the hidden ``DYNPROMPT`` input use."""

    def __init__(self, prompt: dict):
        self.original_prompt = prompt

    def get_node(self, node_id):
        return self.original_prompt[node_id]

    def has_node(self, node_id) -> bool:
        return node_id in self.original_prompt

    def all_node_ids(self) -> set:
        return set(self.original_prompt)

    def get_original_prompt(self) -> dict:
        return self.original_prompt

    def get_real_node_id(self, node_id):
        return node_id

    def get_display_node_id(self, node_id):
        return node_id

    def get_parent_node_id(self, node_id):
        return None


@dataclass
class Validation:
    """What :meth:`Runner.validate` found. ``ok``: at least one output node is valid (and, unless partial runs are
    allowed, no node has errors)."""

    ok: bool
    prompt: dict | None = None
    workflow: dict | None = None
    extra_pnginfo: dict | None = None
    outputs: list[str] = field(default_factory=list)  # the valid output nodes
    error: dict | None = None
    node_errors: dict = field(default_factory=dict)
    conversion: Conversion | None = None

    def text(self) -> str:
        return format_errors(self.error, self.node_errors, self.prompt)


@dataclass
class RunResult:
    prompt_id: str
    status: str  # "success" | "error" | "interrupted" | "invalid"
    prompt: dict | None = None  # the API prompt that ran (values converted as validation converts them)
    workflow: dict | None = None  # the UI workflow, when one was given
    outputs: dict[str, dict] = field(default_factory=dict)  # node id → UI output ({"images": [...]}), as history
    values: dict[str, list] = field(default_factory=dict)  # node id → output slots, each a list (ComfyUI layout)
    executed: list[str] = field(default_factory=list)  # node ids run this time, in order
    cached: list[str] = field(default_factory=list)  # node ids whose outputs came from the cache
    error: dict | None = None  # validation error, or the execution_error / execution_interrupted payload
    node_errors: dict = field(default_factory=dict)
    messages: list[tuple[str, dict]] = field(default_factory=list)  # status messages, as ComfyUI's history keeps
    timings: dict[str, float] = field(default_factory=dict)  # node id → seconds
    folders: Folders | None = None

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def output(self, node_id, slot: int = 0, index: int | None = 0):
        """A node's output value: ``index`` into the slot's list (ComfyUI keeps one entry per call), or the list."""
        values = self.values[str(node_id)][slot]
        return values if index is None else values[index]

    @property
    def files(self) -> list[Path]:
        paths: list[Path] = []
        if self.folders is None:
            return paths
        for node_id in sorted(self.outputs, key=id_sort_key):
            for item in self.outputs[node_id].get("images", []) or []:
                if isinstance(item, dict) and item.get("type") in ("output", "temp", "input"):
                    paths.append(self.folders.base(item["type"]) / (item.get("subfolder") or "") / item["filename"])
        return paths

    def error_text(self) -> str:
        return format_errors(self.error, self.node_errors, self.prompt)

    def raise_for_error(self) -> "RunResult":
        if not self.ok:
            raise WorkflowError(self.error, self.node_errors, self.status)
        return self


@dataclass
class _Entry:
    outputs: list  # one list per output slot
    ui: dict | None


class _Unique:
    """A cache-key part that equals nothing else (IS_CHANGED returned NaN, or a value we cannot fingerprint)."""

    __slots__ = ()


def _freeze(value):
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return ("float", value) if not math.isnan(value) else _Unique()
    if isinstance(value, dict):
        return ("dict", tuple(sorted(((str(k), _freeze(v)) for k, v in value.items()), key=lambda kv: kv[0])))
    if isinstance(value, (list, tuple)):
        return ("list", tuple(_freeze(v) for v in value))
    return _Unique()


def _digest(parts) -> str | None:
    """A stable key for a frozen structure, or None when it holds a _Unique (never cache)."""
    out = []

    def walk(x):
        if isinstance(x, _Unique):
            raise ValueError
        if isinstance(x, tuple):
            out.append("(")
            for y in x:
                walk(y)
                out.append(",")
            out.append(")")
        else:
            out.append(repr(x))

    try:
        walk(parts)
    except ValueError:
        return None
    return hashlib.sha256("".join(out).encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class _Plan:
    needed: list[str]  # every node the outputs need
    keys: dict[str, str | None]  # cache key per needed node (None: never cached)
    order: list[str]  # run order: each node after the nodes it links from


class _RunEvents:
    """One run's reports to ``on_event`` in ComfyUI's websocket shapes, with the per-node progress state.

    Status messages (start, cached, success, error, interrupted) are also kept in ``result.messages`` with a
    timestamp, as ComfyUI's history keeps them. A listener that raises is logged and never breaks the run.
    """

    def __init__(self, result: RunResult, on_event: EventCallback | None, host):
        self.result, self.on_event, self.host = result, on_event, host
        self.prompt_id = result.prompt_id
        self.states: dict[str, dict] = {}  # node id → {"value", "max", "state"}
        self.current_node: str | None = None

    def emit(self, event: str, data: dict, status_message: bool = False) -> dict:
        if status_message:
            data = {**data, "timestamp": _now_ms()}
            self.result.messages.append((event, data))
        if self.on_event is not None:
            try:
                self.on_event(event, data)
            except Exception:  # noqa: BLE001 - a listener's bug must not break the run
                log.exception("on_event listener failed for %s", event)
        return data

    def started(self, cached: list[str]) -> None:
        self.emit("execution_start", {"prompt_id": self.prompt_id}, status_message=True)
        self.emit("execution_cached", {"nodes": list(cached), "prompt_id": self.prompt_id}, status_message=True)

    def _send_states(self) -> None:
        nodes = {nid: {"value": st["value"], "max": st["max"], "state": st["state"], "node_id": nid,
                       "prompt_id": self.prompt_id, "display_node_id": nid, "parent_node_id": None,
                       "real_node_id": nid} for nid, st in self.states.items()}
        self.emit("progress_state", {"prompt_id": self.prompt_id, "nodes": nodes})

    def node_started(self, n: str) -> None:
        self.current_node = n
        self.states[n] = {"value": 0, "max": 1, "state": "running"}
        self.emit("executing", {"node": n, "display_node": n, "prompt_id": self.prompt_id})
        self._send_states()

    def progress(self, value, total, preview=None) -> None:
        """The host's progress callback: a step of the running node (and its latent preview, if any)."""
        if self.host.cancelled():
            raise Cancelled("Interrupted during progress update")
        node = self.current_node
        if node is None:
            return
        self.states[node] = {"value": value, "max": total, "state": "running"}
        self._send_states()
        self.emit("progress", {"value": int(value), "max": int(total), "prompt_id": self.prompt_id, "node": node})
        if preview is not None:
            self.emit("preview", {"node": node, "display_node": node, "prompt_id": self.prompt_id, "image": preview})

    def node_finished(self, n: str, ui: dict) -> None:
        if ui:
            self.emit("executed", {"node": n, "display_node": n, "output": ui, "prompt_id": self.prompt_id})
        top = self.states[n]["max"]
        self.states[n] = {"value": top, "max": top, "state": "finished"}
        self._send_states()

    def failed(self, n: str, class_type: str, exc: Exception, input_data: dict | None) -> None:
        self.states[n] = {**self.states.get(n, {"value": 0, "max": 1}), "state": "error"}
        self._send_states()
        executed = self.result.executed
        payload = {
            "prompt_id": self.prompt_id, "node_id": n, "node_type": class_type, "executed": list(executed),
            "exception_message": f"{exc}\n", "exception_type": _full_type_name(type(exc)),
            "traceback": traceback.format_tb(exc.__traceback__),
            "current_inputs": {k: [_format_value(x) for x in vals] for k, vals in (input_data or {}).items()},
            "current_outputs": list(self.result.cached),
        }
        log.error("Node %s (%s) failed: %s", n, class_type, exc)
        self.result.status = "error"
        self.result.error = self.emit("execution_error", payload, status_message=True)

    def interrupted(self, n: str, class_type: str, exc: BaseException) -> None:
        log.info("Processing interrupted at node %s (%s): %s", n, class_type, exc)
        self.result.status = "interrupted"
        self.result.error = self.emit("execution_interrupted", {
            "prompt_id": self.prompt_id, "node_id": n, "node_type": class_type,
            "executed": list(self.result.executed)}, status_message=True)


def default_node_classes() -> tuple[dict, dict]:
    """Our nodes (``ipx2p_nodes.NODE_CLASS_MAPPINGS``) and their display names."""
    import ipx2p_nodes

    return dict(ipx2p_nodes.NODE_CLASS_MAPPINGS), dict(getattr(ipx2p_nodes, "NODE_DISPLAY_NAME_MAPPINGS", {}))


class Runner:
    """Runs ComfyUI workflows headlessly. One runner keeps its cache and node objects across :meth:`run` calls.

    ``node_classes``: ``{class_type: class}``; None = our nodes. LoadImage, SaveImage and PreviewImage (standalone,
    bound to this runner's folders) are added unless ``include_builtins`` is false or the mapping has its own.
    ``host``: the :class:`~ipx2p_standalone.host.StandaloneHost` the nodes see (model folders, progress,
    cancellation), installed with ``set_host`` for every run. Its temp folder is the runner's: a host without one
    is lent ``temp_dir`` (or a new temporary folder), and a runner without ``temp_dir`` uses the host's.
    """

    def __init__(self, node_classes: dict | None = None, output_dir=None, input_dir=None, temp_dir=None,
                 host: StandaloneHost | None = None, *, display_names: dict | None = None,
                 include_builtins: bool = True, cache_size: int = 0, png_metadata: bool = True):
        if node_classes is None:
            node_classes, names = default_node_classes()
            display_names = {**names, **(display_names or {})}
        self.host = host if host is not None else StandaloneHost()
        self.folders = Folders(
            input=Path(input_dir if input_dir is not None else "input").expanduser().absolute(),
            output=Path(output_dir if output_dir is not None else "output").expanduser().absolute(),
            temp=self._shared_temp_folder(temp_dir),
            png_metadata=png_metadata,
        )
        remove_leftovers(self.folders.output)  # temp files of a SaveImage that was killed mid-write
        self.node_classes: dict[str, type] = {}
        self.display_names: dict[str, str] = dict(display_names or {})
        if include_builtins:
            for name, cls in make_builtin_nodes(self.folders).items():
                self.node_classes[name] = cls
                self.display_names.setdefault(name, BUILTIN_DISPLAY_NAMES[name])
        self.node_classes.update(node_classes)
        self.cache_size = max(0, int(cache_size))
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._objects: dict[tuple[str, str], object] = {}
        self._uncached: dict[str, _Entry] = {}  # this run's outputs that have no cache key
        self.current_prompt: dict | None = None  # the API prompt being executed (None between runs)
        self._local = threading.local()  # per thread: INPUT_TYPES() per class for the duration of one call
        self._lock = threading.RLock()

    def _shared_temp_folder(self, temp_dir) -> Path:
        """One temp folder for PreviewImage (the runner's) and display nodes such as Compare (the host's)."""
        own = self.host.temp_folder
        temp = Path(temp_dir).expanduser().absolute() if temp_dir is not None else own
        if temp is None:
            temp = private_temp_folder()  # removed at exit; a killed run's is removed by the next start
        if own is None:
            self.host.temp_folder = temp
        elif own != temp:
            raise ValueError(f"The runner's temp_dir {temp} differs from its host's temp folder {own}; give one "
                             "(or give both the same folder).")
        return temp

    def _spec(self, cls) -> dict:
        """``INPUT_TYPES()`` (sections filled in), read once per class per validate/run: model lists walk folders."""
        specs = getattr(self._local, "specs", None)
        if specs is None:
            specs = self._local.specs = {}
        spec = specs.get(cls)
        if spec is None:
            spec = specs[cls] = input_types(cls)
        return spec

    # ------------------------------------------------------------------------------------------------ public API

    def interrupt(self) -> None:
        """Stop the current run at the next node boundary or sampling step (``execution_interrupted``)."""
        self.host.interrupt()

    def clear_cache(self) -> None:
        """Forget cached outputs and node objects (ComfyUI's "free memory")."""
        with self._lock:
            self._cache.clear()
            self._objects.clear()

    def object_info(self, class_type: str | None = None) -> dict:
        """``/object_info`` entries built from the node classes, in ComfyUI's V1 layout."""
        set_host(self.host)
        names = [class_type] if class_type is not None else list(self.node_classes)
        info = {}
        for name in names:
            cls = self.node_classes.get(name)
            if cls is None:
                continue
            raw = cls.INPUT_TYPES()
            entry = {
                "input": raw,
                "input_order": {k: list(v.keys()) for k, v in raw.items()},
                "output": list(cls.RETURN_TYPES),
                "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES))),
                "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
                "name": name,
                "display_name": self.display_names.get(name, name),
                "description": getattr(cls, "DESCRIPTION", ""),
                "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
                "category": getattr(cls, "CATEGORY", "sd"),
                "output_node": getattr(cls, "OUTPUT_NODE", False) is True,
            }
            if hasattr(cls, "OUTPUT_TOOLTIPS"):
                entry["output_tooltips"] = list(cls.OUTPUT_TOOLTIPS)
            if getattr(cls, "DEPRECATED", False):
                entry["deprecated"] = True
            if getattr(cls, "EXPERIMENTAL", False):
                entry["experimental"] = True
            info[name] = entry
        return info

    def prepare(self, workflow: dict, overrides=None, extra_pnginfo=None) -> Validation:
        """Turn any accepted workflow shape into an API prompt (a fresh copy) with overrides applied. Never raises."""
        set_host(self.host)
        self._local.specs = {}
        conversion = None
        ui = None
        prompt: dict | None = None
        try:
            if isinstance(workflow, dict) and isinstance(workflow.get("prompt"), dict) \
                    and not is_api_prompt(workflow):  # a /prompt request body
                extra = (workflow.get("extra_data") or {}).get("extra_pnginfo")
                extra_pnginfo = extra_pnginfo if extra_pnginfo is not None else extra
                workflow = workflow["prompt"]
            if is_ui_workflow(workflow):
                conversion = ui_to_api(workflow, self.node_classes, self.display_names)
                prompt, ui = conversion.prompt, conversion.workflow
            elif is_api_prompt(workflow):
                prompt = copy.deepcopy(workflow)
                prompt = {str(k): v for k, v in prompt.items()}
            elif isinstance(workflow, dict) and not workflow:
                return Validation(False, error=_error("prompt_no_outputs", "Prompt has no outputs",
                                                      "the workflow is empty"))
            else:
                bad = next((k for k, v in (workflow.items() if isinstance(workflow, dict) else [])
                            if not isinstance(v, dict) or "class_type" not in v), None)
                if bad is not None:
                    return Validation(False, error=_error(
                        "invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                        f"Node ID '#{bad}'"))
                return Validation(False, error=_error(
                    "invalid_prompt", "Not a ComfyUI workflow",
                    "expected an API prompt ({id: {class_type, inputs}}) or a UI workflow (nodes, links)"))
            for node_id, entry in prompt.items():
                entry.setdefault("inputs", {})
                if not isinstance(entry["inputs"], dict):
                    return Validation(False, error=_error("invalid_prompt", "Node inputs must be an object",
                                                          f"Node ID '#{node_id}'"))
            if overrides:
                apply_overrides(prompt, overrides, self.node_classes, conversion)
        except OverrideError as exc:
            node_errors = {}
            if prompt is not None and exc.node_id in prompt:
                node_errors[exc.node_id] = {
                    "errors": [_error("bad_override", str(exc), exc.input_name or "", input_name=exc.input_name)],
                    "dependent_outputs": [], "class_type": prompt[exc.node_id].get("class_type")}
            return Validation(False, prompt=prompt, workflow=ui, error=_error("bad_override", str(exc)),
                              node_errors=node_errors)
        except WorkflowFormatError as exc:
            return Validation(False, error=_error("invalid_prompt", str(exc)))
        except Exception as exc:  # noqa: BLE001 - malformed JSON of any shape is an error, not a crash
            return Validation(False, error=_error("invalid_prompt", "Cannot read the workflow",
                                                  f"{type(exc).__name__}: {exc}"))
        if extra_pnginfo is None and ui is not None:
            extra_pnginfo = {"workflow": ui}
        return Validation(True, prompt=prompt, workflow=ui, extra_pnginfo=extra_pnginfo, conversion=conversion)

    def validate(self, workflow: dict, *, overrides=None, extra_pnginfo=None, outputs=None,
                 allow_partial: bool = False) -> Validation:
        """Check a workflow as ComfyUI's ``/prompt`` does, without running anything. Never raises. Safe to call
        from another thread while a run is in progress (it touches no cache)."""
        prepared = self.prepare(workflow, overrides, extra_pnginfo)
        if not prepared.ok:
            return prepared
        try:
            self._validate_prompt(prepared, outputs, allow_partial)
        except Exception as exc:  # noqa: BLE001 - the runner never crashes on bad input
            prepared.ok = False
            prepared.error = _error("exception_during_validation", "Exception when validating the prompt",
                                    str(exc), exception_type=_full_type_name(type(exc)),
                                    traceback=traceback.format_exc())
        return prepared

    def run(self, workflow: dict, *, overrides: dict[str, Any] | None = None, extra_pnginfo: dict | None = None,
            on_event: EventCallback | None = None, prompt_id: str | None = None, outputs=None,
            allow_partial: bool = False) -> RunResult:
        """Validate and execute. ``outputs``: node ids to run (default: every output node). With
        ``allow_partial``, valid outputs run even when others have errors (ComfyUI's behaviour)."""
        prompt_id = prompt_id or str(uuid.uuid4())
        with self._lock:
            checked = self.validate(workflow, overrides=overrides, extra_pnginfo=extra_pnginfo, outputs=outputs,
                                    allow_partial=allow_partial)
            result = RunResult(prompt_id=prompt_id, status="invalid", prompt=checked.prompt,
                               workflow=checked.workflow, error=checked.error, node_errors=checked.node_errors,
                               folders=self.folders)
            if not checked.ok:
                return result
            try:
                self._execute(checked, result, on_event)
            except Exception as exc:  # noqa: BLE001 - a bug outside any node still gives a result, not a crash
                log.exception("The runner failed outside a node")
                result.status = "error"
                result.error = {"prompt_id": prompt_id, "node_id": None, "node_type": None,
                                "executed": list(result.executed), "exception_message": f"{exc}\n",
                                "exception_type": _full_type_name(type(exc)),
                                "traceback": traceback.format_tb(sys.exc_info()[2]), "current_inputs": {},
                                "current_outputs": []}
            return result

    # ------------------------------------------------------------------------------------------------ validation

    def _validate_prompt(self, v: Validation, targets, allow_partial: bool) -> None:
        prompt = v.prompt
        node_errors: dict[str, dict] = {}
        for node_id, entry in prompt.items():
            class_type = entry.get("class_type")
            if class_type not in self.node_classes:
                node_errors[node_id] = {
                    "errors": [_error("invalid_prompt", f"Cannot execute because node {class_type} does not exist.",
                                      f"Node ID '#{node_id}'", class_type=class_type)],
                    "dependent_outputs": [], "class_type": class_type}
        if node_errors:
            unknown = sorted({e["class_type"] for e in node_errors.values()}, key=str)
            v.ok, v.node_errors = False, node_errors
            v.error = _error("invalid_prompt", f"Cannot execute because node {', '.join(map(str, unknown))} "
                             f"does not exist.", ", ".join(f"Node ID '#{n}'" for n in sorted(node_errors,
                                                                                             key=id_sort_key)))
            return

        if targets is not None:
            targets = [str(t) for t in targets]
            missing = [t for t in targets if t not in prompt]
            if missing:
                v.ok = False
                v.error = _error("invalid_prompt", "Requested output nodes are not in the prompt", ", ".join(missing))
                return
            outputs = targets
        else:
            outputs = [n for n in prompt if getattr(self.node_classes[prompt[n]["class_type"]], "OUTPUT_NODE", False)
                       is True]
        outputs = sorted(outputs, key=id_sort_key)
        if not outputs:
            v.ok = False
            v.error = _error("prompt_no_outputs", "Prompt has no outputs",
                             "add an output node such as Save Image or Preview Image")
            return

        validated: dict[str, tuple[bool, list]] = {}
        good, failed = [], []
        for o in outputs:
            ok = self._validate_node(prompt, o, validated, v.extra_pnginfo, ())
            (good if ok else failed).append(o)
        for o in failed:
            for node_id in self._ancestry(prompt, o):
                valid, reasons = validated.get(node_id, (True, []))
                if not valid and reasons:
                    info = node_errors.setdefault(node_id, {"errors": reasons, "dependent_outputs": [],
                                                            "class_type": prompt[node_id]["class_type"]})
                    info["dependent_outputs"].append(o)
        v.node_errors = node_errors
        v.outputs = good
        if not good or (node_errors and not allow_partial):
            v.ok = False
            lines = [f"{r['message']}: {r['details']}" for o in failed for n in self._ancestry(prompt, o)
                     for r in validated.get(n, (True, []))[1]]
            v.error = _error("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                             "\n".join(dict.fromkeys(lines)))

    @staticmethod
    def _ancestry(prompt: dict, node_id: str) -> list[str]:
        seen: list[str] = []
        stack = [node_id]
        while stack:
            n = stack.pop()
            if n in seen or n not in prompt:
                continue
            seen.append(n)
            for value in prompt[n].get("inputs", {}).values():
                if is_link(value):
                    stack.append(str(value[0]))
        return seen

    def _validate_node(self, prompt, node_id, validated, extra_pnginfo, path) -> bool:
        """Check one node as ComfyUI's ``validate_inputs`` does, and (depth first) every node it links from.

        ``validated`` keeps ``(ok, errors)`` per node id; ``path`` is the chain of nodes being checked (a link back
        into it is a cycle). Steps: read the input spec, check each linked input (1) and each constant (2), then
        ask the node's own ``VALIDATE_INPUTS`` (3).
        """
        if node_id in validated:
            return validated[node_id][0]
        validated[node_id] = (True, [])  # provisional; a cycle back here is reported by the node that closes it
        path = path + (node_id,)
        entry = prompt[node_id]
        cls = self.node_classes[entry["class_type"]]
        try:
            spec = self._spec(cls)
        except Exception as exc:  # noqa: BLE001
            validated[node_id] = (False, [_error("exception_during_validation", "Exception when validating node",
                                                 f"INPUT_TYPES failed: {exc}", exception_type=_full_type_name(type(exc)),
                                                 traceback=traceback.format_exc())])
            return False
        custom = getattr(cls, "VALIDATE_INPUTS", None)
        custom_args, custom_kwargs = _accepted(custom) if custom is not None else ([], False)
        inputs = entry["inputs"]
        errors: list[dict] = []
        upstream_ok = True
        received_types: dict[str, Any] = {}

        for section in ("required", "optional"):
            for name, s in spec[section].items():
                if name not in inputs:
                    if section == "required":
                        errors.append(_error("required_input_missing", "Required input is missing", name,
                                             input_name=name))
                    continue
                if isinstance(inputs[name], list):  # 1. a link
                    error = self._check_link(prompt, inputs, name, s, path, received_types,
                                             check_type="input_types" not in custom_args)
                    if error is not None:
                        errors.append(error)
                    elif not self._validate_node(prompt, inputs[name][0], validated, extra_pnginfo, path):
                        upstream_ok = False
                    continue
                # 2. a constant; the node's own VALIDATE_INPUTS judges the values it names (ComfyUI skips its checks)
                error = _check_constant(inputs, name, s, range_checks=not (name in custom_args or custom_kwargs))
                if error is not None:
                    errors.append(error)

        if custom is not None and (custom_args or custom_kwargs):  # 3. the node's VALIDATE_INPUTS
            error = self._call_validate_inputs(custom, custom_args, custom_kwargs, spec, node_id, prompt,
                                               extra_pnginfo, received_types)
            if error is not None:
                errors.append(error)

        ok = upstream_ok and not errors
        validated[node_id] = (ok, errors)
        return ok

    def _check_link(self, prompt, inputs, name, spec, path, received_types, check_type: bool) -> dict | None:
        """A linked input: a well-formed ``[node_id, slot]`` to an existing output of a fitting type. Normalises
        the node id to a string and records the output's type in ``received_types``; returns an error or None."""
        val = inputs[name]
        if not is_link(val):
            return _error("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                          name, input_name=name, received_value=val)
        src = str(val[0])
        inputs[name] = val = [src, val[1]]
        if src not in prompt:
            return _error("linked_node_missing", "Linked node does not exist",
                          f"{name} is linked to node {src}, which is not in the workflow", input_name=name,
                          linked_node=val)
        if src in path:
            return _error("dependency_cycle", "Dependency cycle detected", f"{name} links back to node {src}",
                          input_name=name, linked_node=val)
        returns = tuple(getattr(self.node_classes[prompt[src]["class_type"]], "RETURN_TYPES", ()))
        if not 0 <= val[1] < len(returns):
            return _error("bad_linked_input", "Linked output does not exist",
                          f"{name} uses output {val[1]} of node {src} ({prompt[src]['class_type']}), which has "
                          f"{len(returns)} output(s)", input_name=name, linked_node=val)
        received = received_types[name] = returns[val[1]]
        kind = spec_type(spec)
        if check_type and not _types_compatible(received, kind):
            expected = "COMBO" if isinstance(kind, list) else kind
            return _error("return_type_mismatch", "Return type mismatch between linked nodes",
                          f"{name}, received_type({received}) mismatch input_type({expected})", input_name=name,
                          received_type=received, linked_node=val)
        return None

    def _call_validate_inputs(self, fn, fn_args, fn_kwargs, spec, node_id, prompt, extra_pnginfo,
                              received_types) -> dict | None:
        """Call the node's ``VALIDATE_INPUTS`` with the constants it names (None for linked values, which are not
        known before running, as ComfyUI passes), hidden inputs and ``input_types``; returns an error or None."""
        inputs = prompt[node_id]["inputs"]
        kwargs = {name: (None if is_link(val) else val) for name, val in inputs.items()
                  if name in fn_args or fn_kwargs}
        for hname, hkind in spec["hidden"].items():
            if hname in fn_args or (fn_kwargs and hname not in kwargs):
                kwargs[hname] = self._hidden_value(hkind, node_id, prompt, extra_pnginfo)
        if "input_types" in fn_args:
            kwargs["input_types"] = received_types
        if not fn_kwargs:
            kwargs = {k: v for k, v in kwargs.items() if k in fn_args}
        try:
            ret = fn(**kwargs)
            if inspect.iscoroutine(ret):
                ret = asyncio.run(ret)
        except Exception as exc:  # noqa: BLE001
            return _error("exception_during_validation", "Exception when validating node", str(exc),
                          exception_type=_full_type_name(type(exc)), traceback=traceback.format_tb(sys.exc_info()[2]))
        if ret is True:
            return None
        first = next((a for a in fn_args if a in inputs), None)
        details = first or ""
        if ret is not False:
            details = f"{details} - {ret}" if details else str(ret)
        return _error("custom_validation_failed", "Custom validation failed for node", details, input_name=first)

    @staticmethod
    def _hidden_value(kind, node_id, prompt, extra_pnginfo):
        if kind == "PROMPT":
            return prompt
        if kind == "EXTRA_PNGINFO":
            return extra_pnginfo
        if kind == "UNIQUE_ID":
            return node_id
        if kind == "DYNPROMPT":
            return DynPrompt(prompt)
        return None

    # ------------------------------------------------------------------------------------------------ execution

    def _is_changed(self, prompt, node_id, extra_pnginfo):
        entry = prompt[node_id]
        cls = self.node_classes[entry["class_type"]]
        fn = getattr(cls, "IS_CHANGED", None)
        if fn is None:
            return False
        spec = self._spec(cls)
        kwargs = {k: (None if is_link(v) else v) for k, v in entry["inputs"].items()
                  if k in spec["required"] or k in spec["optional"]}
        for hname, hkind in spec["hidden"].items():
            kwargs[hname] = self._hidden_value(hkind, node_id, prompt, extra_pnginfo)
        try:
            names, varkw = _accepted(fn)
            if not varkw:
                kwargs = {k: v for k, v in kwargs.items() if k in names}
            value = fn(**kwargs)
            if inspect.iscoroutine(value):
                value = asyncio.run(value)
            entry["is_changed"] = [value]  # ComfyUI records it in the prompt, so it shows in saved PNGs too
            return value
        except Exception as exc:  # noqa: BLE001 - as ComfyUI: warn, and always re-run the node
            log.warning("IS_CHANGED of node %s (%s) failed: %s", node_id, entry["class_type"], exc)
            entry["is_changed"] = float("nan")
            return float("nan")

    def _signatures(self, prompt, node_ids, extra_pnginfo) -> dict[str, str | None]:
        keys: dict[str, str | None] = {}

        def key(node_id: str) -> str | None:
            if node_id in keys:
                return keys[node_id]
            entry = prompt[node_id]
            cls = self.node_classes[entry["class_type"]]
            changed = _freeze(self._is_changed(prompt, node_id, extra_pnginfo))
            parts: list = [entry["class_type"], changed]
            hidden = self._spec(cls)["hidden"]
            if getattr(cls, "NOT_IDEMPOTENT", False) or "UNIQUE_ID" in hidden.values():
                parts.append(("id", node_id))
            uncacheable = False
            for name in sorted(entry["inputs"]):
                value = entry["inputs"][name]
                if is_link(value):
                    up = key(str(value[0]))
                    if up is None:
                        uncacheable = True
                    parts.append((name, ("link", up, value[1])))
                else:
                    parts.append((name, _freeze(value)))
            k = None if uncacheable else _digest(tuple(parts))
            keys[node_id] = k
            return k

        for n in node_ids:
            key(n)
        return keys

    def _execute(self, v: Validation, result: RunResult, on_event) -> None:
        """Run the nodes the valid outputs need, in dependency order, reusing cached outputs.

        1. plan: the needed nodes, their cache keys and an order; 2. forget cache entries this prompt does not use;
        3. announce the start and the cached nodes; 4. run (or replay) each node in order, stopping at the first
        failure or cancellation; 5. collect every needed node's outputs into the result.
        """
        prompt = v.prompt
        set_host(self.host)
        self.host.clear_interrupt()
        self.current_prompt = prompt
        plan = self._plan(v)  # 1
        self._forget_unused(prompt, plan)  # 2
        events = _RunEvents(result, on_event, self.host)
        result.cached = sorted((n for n in plan.needed if self._is_cached(plan, n)), key=id_sort_key)
        events.started(result.cached)  # 3
        previous_callback = self.host.progress_callback
        self.host.progress_callback = events.progress
        try:
            for n in plan.order:  # 4
                if self._is_cached(plan, n):
                    self._replay(n, plan, v, events)
                elif not self._run_node(n, plan, v, events, result):
                    return
            result.status = "success"
            events.emit("execution_success", {"prompt_id": result.prompt_id}, status_message=True)
        finally:
            self.host.progress_callback = previous_callback
            self.host.clear_interrupt()
            self.current_prompt = None
            self._collect(result, plan.needed, plan.keys)  # 5
            self._uncached.clear()

    def _plan(self, v: Validation) -> "_Plan":
        """Every node the outputs need, their cache keys, and an order in which each node follows its inputs
        (inputs of cached nodes are not visited: a cached node needs nothing run)."""
        prompt = v.prompt
        needed: list[str] = []
        for o in v.outputs:
            for n in self._ancestry(prompt, o):
                if n not in needed:
                    needed.append(n)
        plan = _Plan(needed, self._signatures(prompt, needed, v.extra_pnginfo), [])
        visiting: set[str] = set()

        def visit(n: str) -> None:
            if n in plan.order or n in visiting:
                return
            visiting.add(n)
            if not self._is_cached(plan, n):
                spec = self._spec(self.node_classes[prompt[n]["class_type"]])
                names = [*spec["required"], *spec["optional"]]
                names += [k for k in prompt[n]["inputs"] if k not in names]
                for name in names:
                    value = prompt[n]["inputs"].get(name)
                    if is_link(value):
                        visit(str(value[0]))
            visiting.discard(n)
            plan.order.append(n)

        for o in v.outputs:
            visit(o)
        return plan

    def _forget_unused(self, prompt: dict, plan: "_Plan") -> None:
        """ComfyUI's classic cache: keep what this prompt uses (plus ``cache_size`` most recent others), and node
        objects only for node ids that still have the same class."""
        used = {k for k in plan.keys.values() if k is not None}
        others = [k for k in self._cache if k not in used]
        for k in others[: max(0, len(others) - self.cache_size)]:
            del self._cache[k]
        for obj_key in [k for k in self._objects if k[0] not in prompt or prompt[k[0]]["class_type"] != k[1]]:
            del self._objects[obj_key]

    def _is_cached(self, plan: "_Plan", n: str) -> bool:
        return plan.keys.get(n) is not None and plan.keys[n] in self._cache

    def _replay(self, n: str, plan: "_Plan", v: Validation, events: "_RunEvents") -> None:
        """A cached node: mark it recently used; an output node shows its cached UI again."""
        cached_entry = self._cache[plan.keys[n]]
        self._cache.move_to_end(plan.keys[n])
        if cached_entry.ui and n in v.outputs:
            events.emit("executed", {"node": n, "display_node": n, "output": cached_entry.ui,
                                     "prompt_id": events.prompt_id})

    def _run_node(self, n: str, plan: "_Plan", v: Validation, events: "_RunEvents", result: RunResult) -> bool:
        """Run one node and store its outputs. False when the run ends here (the node failed or was cancelled)."""
        class_type = v.prompt[n]["class_type"]
        input_data = None
        try:
            self._stop_if_cancelled("before the node started")
            events.node_started(n)
            started = time.perf_counter()
            input_data = self._gather_inputs(v.prompt, n, plan.keys, v.extra_pnginfo)
            outputs, ui = self._call(n, class_type, input_data)
            result.timings[n] = time.perf_counter() - started
        except (Cancelled, KeyboardInterrupt) as exc:
            events.interrupted(n, class_type, exc)
            return False
        except Exception as exc:  # noqa: BLE001 - a failing node becomes a per-node execution error
            if self.host.cancelled():  # a node that stops on cancel in its own way
                events.interrupted(n, class_type, exc)
            else:
                events.failed(n, class_type, exc, input_data)
            return False
        finally:
            events.current_node = None
        stored = _Entry(outputs, ui or None)
        entry_key = plan.keys.get(n)
        if entry_key is not None:
            self._cache[entry_key] = stored
            self._cache.move_to_end(entry_key)
        else:
            self._uncached[n] = stored
        result.executed.append(n)
        events.node_finished(n, ui)
        return True

    def _stop_if_cancelled(self, when: str) -> None:
        if self.host.cancelled():
            raise Cancelled(f"Interrupted {when}")

    def _entry(self, n: str, keys) -> _Entry | None:
        k = keys.get(n)
        if k is not None and k in self._cache:
            return self._cache[k]
        return self._uncached.get(n)

    def _collect(self, result: RunResult, needed, keys) -> None:
        for n in needed:
            e = self._entry(n, keys)
            if e is None:
                continue
            result.values[n] = e.outputs
            if e.ui:
                result.outputs[n] = e.ui

    def _gather_inputs(self, prompt, node_id, keys, extra_pnginfo) -> dict[str, list]:
        entry = prompt[node_id]
        cls = self.node_classes[entry["class_type"]]
        spec = self._spec(cls)
        data: dict[str, list] = {}
        for name, value in entry["inputs"].items():
            if is_link(value):
                src = self._entry(str(value[0]), keys)
                if src is None or value[1] >= len(src.outputs):
                    raise RuntimeError(f"Input {name!r} of node {node_id}: node {value[0]} produced no output "
                                       f"{value[1]}")
                data[name] = src.outputs[value[1]]
            elif name in spec["required"] or name in spec["optional"] or name in spec["hidden"]:
                data[name] = [value]
        for hname, hkind in spec["hidden"].items():
            data[hname] = [self._hidden_value(hkind, node_id, prompt, extra_pnginfo)]
        return data

    def _call(self, node_id: str, class_type: str, data: dict[str, list]) -> tuple[list, dict]:
        """Call the node's FUNCTION (one object per node id, kept across runs) under inference mode: once with the
        lists (``INPUT_IS_LIST``), else once per list index, shorter lists repeating their last item."""
        cls = self.node_classes[class_type]
        obj = self._objects.get((node_id, class_type))
        if obj is None:
            obj = cls()
            self._objects[(node_id, class_type)] = obj
        func = getattr(obj, cls.FUNCTION)
        accepted, varkw = _accepted(func)
        if not varkw:  # a link into an input the node no longer declares would only raise a TypeError
            data = {k: v for k, v in data.items() if k in accepted}

        def call(kwargs):
            self._stop_if_cancelled("before the node started")
            out = func(**kwargs)
            if inspect.iscoroutine(out):
                out = asyncio.run(out)
            return out

        try:
            import torch

            guard = torch.inference_mode()
        except ImportError:  # pragma: no cover
            import contextlib

            guard = contextlib.nullcontext()
        with guard:
            if getattr(cls, "INPUT_IS_LIST", False):
                returns = [call(data)]
            elif not data:
                returns = [call({})]
            else:
                count = max(len(vals) for vals in data.values())
                returns = [call({k: vals[i if len(vals) > i else -1] for k, vals in data.items()})
                           for i in range(count)]

        return _merge_returns(cls, class_type, returns)


def _merge_returns(cls, class_type: str, returns: list) -> tuple[list, dict]:
    """What the node's calls returned → (one list per output slot, the merged UI dict), as ComfyUI merges them:
    a tuple per call, or a dict with "result" and/or "ui"; ``OUTPUT_IS_LIST`` slots are concatenated."""
    n_out = len(getattr(cls, "RETURN_TYPES", ()))
    results, uis = [], []
    for r in returns:
        if isinstance(r, dict):
            if "ui" in r:
                uis.append(r["ui"])
            if "expand" in r:
                raise NotImplementedError(f"{class_type} expands into a sub-graph, which the standalone runner "
                                          "does not support")
            if "result" in r:
                results.append(tuple(r["result"]))
        elif r is None:
            results.append(tuple([None] * n_out))
        elif isinstance(r, (tuple, list)):
            results.append(tuple(r))
        else:
            raise TypeError(f"{class_type}.{cls.FUNCTION} returned {type(r).__name__}; expected a tuple of "
                            f"{n_out} output(s) or a dict with 'ui'/'result'")
    outputs: list[list] = []
    if results:
        width = len(results[0])
        is_list = list(getattr(cls, "OUTPUT_IS_LIST", [False] * width))
        is_list += [False] * (width - len(is_list))
        for i in range(width):
            if is_list[i]:
                merged: list = []
                for r in results:
                    merged.extend(r[i])
                outputs.append(merged)
            else:
                outputs.append([r[i] for r in results])
    ui: dict = {}
    if uis:
        ui = {k: [y for u in uis for y in u.get(k, [])] for k in uis[0]}
    return outputs, ui
