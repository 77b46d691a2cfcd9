"""How much work and memory one request, one client or one buffer may cost the studio, and the checks that say no.

Each limit is generous for what the ComfyUI frontend sends (its largest requests are /prompt bodies that carry the UI
workflow, tens to a few hundred kB) and small enough that a hostile or broken client cannot pin the machine:

* request bodies of the JSON routes are capped (uploads keep their own ``--max-upload-mb`` limit);
* JSON nesting is capped before anything walks the document (json.loads, deepcopy and json.dumps recurse: about
  1,000 levels raise RecursionError, which used to become a 500);
* a text input of a node is capped before the prompt is queued (the engine caps instructions itself; this stops
  megabytes of text from ever reaching a node, the history or the log);
* history entries and the log buffer are bounded in bytes, not in items.
"""

from __future__ import annotations

import json

from aiohttp import web

MAX_JSON_BODY_BYTES = 4 * 1024 * 1024  # /prompt and the other JSON routes; a 5 MB instruction is refused here
MAX_JSON_DEPTH = 100  # a UI workflow with nested subgraphs is about 15 levels deep
MAX_TEXT_INPUT_CHARS = 100_000  # one string input of one node (the engine caps instructions lower, at its own limit)
MAX_EXTRA_DATA_BYTES = 1024 * 1024  # a history entry's extra_data (the UI workflow is kept for "load from history")
MAX_HISTORY_BYTES = 256 * 1024 * 1024  # all history entries together; the oldest go first
MAX_LOG_BYTES = 1024 * 1024  # the log panel's buffer
MAX_LOG_ENTRY_CHARS = 16 * 1024  # one log line in that buffer (longer ones keep their start and say how long)


class BadRequest(ValueError):
    """A request the studio refuses; ``status`` is 400 or 413 and the message says what was wrong."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


async def read_body(request: web.Request, limit: int = MAX_JSON_BODY_BYTES) -> bytes:
    """The request body, refused with 413 as soon as it is larger than ``limit`` (never read whole first)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BadRequest(f"the request body is {declared:,} bytes, more than the limit of {limit:,} for "
                         f"{request.path}", status=413)
    chunks, size = [], 0
    while True:
        chunk = await request.content.read(64 * 1024)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"the request body is more than the limit of {limit:,} bytes for {request.path}",
                             status=413)
        chunks.append(chunk)


def json_depth_problem(value, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why ``value`` is nested too deeply (a sentence), or None. Walks without recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            return f"the JSON is nested more than {max_depth} levels deep"
        stack.extend((child, depth + 1) for child in children)
    return None


def parse_json(raw: bytes | str, max_depth: int = MAX_JSON_DEPTH):
    """``json.loads`` that raises BadRequest (never RecursionError or UnicodeDecodeError) for what is not usable JSON."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise BadRequest(f"the JSON is nested more than {max_depth} levels deep") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise BadRequest(f"the request body is not JSON: {exc}") from None
    problem = json_depth_problem(value, max_depth)
    if problem is not None:
        raise BadRequest(problem)
    return value


async def read_json(request: web.Request, default=None, limit: int = MAX_JSON_BODY_BYTES):
    """The request's JSON body (``default`` when empty), bounded in size and depth; raises BadRequest."""
    raw = await read_body(request, limit)
    if not raw.strip():
        return default
    return parse_json(raw)


def long_text_inputs(prompt: dict, limit: int = MAX_TEXT_INPUT_CHARS) -> dict:
    """``node_errors`` (ComfyUI's shape) for every node input that is a string longer than ``limit``; {} if none."""
    node_errors: dict = {}
    for node_id, node in prompt.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            continue
        for name, value in inputs.items():
            if isinstance(value, str) and len(value) > limit:
                class_type = node.get("class_type")
                message = (f"{name} of node {node_id} ({class_type}) is {len(value):,} characters long, more than "
                           f"the limit of {limit:,}")
                info = node_errors.setdefault(str(node_id), {"errors": [], "dependent_outputs": [],
                                                             "class_type": class_type})
                info["errors"].append({"type": "value_too_long", "message": "Value too long", "details": message,
                                       "extra_info": {"input_name": name, "length": len(value), "limit": limit}})
    return node_errors


def json_size(value) -> int:
    """Bytes of ``value`` as compact JSON (what a history entry costs to keep and to send)."""
    try:
        return len(json.dumps(value, separators=(",", ":"), default=str))
    except (TypeError, ValueError, RecursionError):
        return MAX_HISTORY_BYTES  # cannot be measured: treat as huge, so it is the first to go


def bounded_extra_data(extra_data: dict, limit: int = MAX_EXTRA_DATA_BYTES) -> dict:
    """``extra_data`` as history keeps it: whole when it fits ``limit``; else without its largest keys, with
    ``"ipx2p_truncated"`` naming the keys left out (the run itself still gets everything)."""
    if json_size(extra_data) <= limit:
        return extra_data
    kept = dict(extra_data)
    dropped = []
    for key in sorted(kept, key=lambda k: json_size(kept[k]), reverse=True):
        if json_size(kept) <= limit:
            break
        if key == "client_id":
            continue
        del kept[key]
        dropped.append(key)
    kept["ipx2p_truncated"] = sorted(dropped)
    return kept


def clip_text(text: str, limit: int = MAX_LOG_ENTRY_CHARS) -> str:
    """``text`` if short enough, else its start and how much was cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"... [{len(text) - limit:,} more characters not kept]"


def error_response(exc: BadRequest) -> web.Response:
    return web.Response(status=exc.status, text=str(exc) + "\n")
