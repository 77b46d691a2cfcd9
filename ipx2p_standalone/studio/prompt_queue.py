"""The prompt queue, its history, and the one worker thread that runs prompts through the runner.

ComfyUI's semantics: items are ordered by ``number`` (first in, first out; ``front`` puts an item ahead of the
rest), ``GET /queue`` lists ``[number, prompt_id, prompt, extra_data, outputs_to_execute]``, history keeps each
finished prompt's outputs, status and status messages, and every change to the queue is broadcast as a ``status``
message. Run events go to the client that queued the prompt.

The worker is the only thread that calls :meth:`Runner.run`, so there is one execution engine and one cache, exactly
as ``ipx2p run`` uses it.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from .bounds import MAX_HISTORY_BYTES, bounded_extra_data, json_size
from .events import Hub, encode_preview

log = logging.getLogger(__name__)

MAX_HISTORY = 10000  # entries; MAX_HISTORY_BYTES bounds their size together
# Never kept: the frontend sends these for Comfy.org API nodes, which the studio does not have.
SENSITIVE_EXTRA_DATA = ("auth_token_comfy_org", "api_key_comfy_org")


@dataclass(order=True)
class QueueItem:
    number: float
    seq: int
    prompt_id: str = field(compare=False)
    prompt: dict = field(compare=False)
    extra_data: dict = field(compare=False)
    outputs: list = field(compare=False)

    def as_list(self) -> list:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


class PromptQueue:
    def __init__(self, hub: Hub):
        self.hub = hub
        self._mutex = threading.RLock()
        self._not_empty = threading.Condition(self._mutex)
        self._pending: list[QueueItem] = []
        self._seq = itertools.count()
        self.running: QueueItem | None = None
        self.history: OrderedDict[str, dict] = OrderedDict()
        self._history_sizes: dict[str, int] = {}  # bytes of each entry as JSON
        self.history_bytes = 0
        self.max_history_bytes = MAX_HISTORY_BYTES
        self.flags: dict = {}
        self.number = 0
        self.closed = False

    # ------------------------------------------------------------------------------------------------ status

    def remaining(self) -> int:
        with self._mutex:
            return len(self._pending) + (1 if self.running is not None else 0)

    def status(self) -> dict:
        return {"exec_info": {"queue_remaining": self.remaining()}}

    def _broadcast_status(self, threadsafe: bool) -> None:
        data = {"status": self.status()}
        if threadsafe:
            self.hub.send_threadsafe("status", data)
        else:
            self.hub.send("status", data)

    # ------------------------------------------------------------------------------------------------ queue

    def next_number(self, front: bool = False) -> int:
        with self._mutex:
            number = self.number
            self.number += 1
            return -number if front else number

    def knows(self, prompt_id: str) -> bool:
        """Whether ``prompt_id`` is pending, running or in the history (a client's id must be new)."""
        with self._mutex:
            return (prompt_id in self.history or (self.running is not None and self.running.prompt_id == prompt_id)
                    or any(i.prompt_id == prompt_id for i in self._pending))

    def put(self, number: float, prompt_id: str, prompt: dict, extra_data: dict, outputs: list) -> QueueItem:
        """Queue an item; raises KeyError when ``prompt_id`` is already pending, running or in the history."""
        extra = {k: v for k, v in (extra_data or {}).items() if k not in SENSITIVE_EXTRA_DATA}
        extra["create_time"] = int(time.time() * 1000)  # as ComfyUI: the server's clock; the jobs API sorts by it
        item = QueueItem(number, next(self._seq), prompt_id, prompt, extra, list(outputs))
        with self._mutex:
            if self.knows(prompt_id):
                raise KeyError(prompt_id)
            heapq.heappush(self._pending, item)
            self._not_empty.notify_all()
        self._broadcast_status(threadsafe=False)
        return item

    def take(self, timeout: float) -> QueueItem | None:
        """The next item (now running), or None after ``timeout`` / when closed or flags need handling."""
        with self._not_empty:
            if not self._pending and not self.closed and not self.flags:
                self._not_empty.wait(timeout)
            if self.closed or not self._pending:
                return None
            item = heapq.heappop(self._pending)
            self.running = item
        self._broadcast_status(threadsafe=True)
        return item

    def done(self, item: QueueItem, entry: dict) -> None:
        size = json_size(entry)  # measured outside the lock: a big workflow takes milliseconds
        with self._mutex:
            self.running = None
            self._forget(item.prompt_id)
            while self.history and (len(self.history) >= MAX_HISTORY
                                    or self.history_bytes + size > self.max_history_bytes):
                self._forget(next(iter(self.history)))
            self.history[item.prompt_id] = entry
            self._history_sizes[item.prompt_id] = size
            self.history_bytes += size
        self._broadcast_status(threadsafe=True)

    def _forget(self, prompt_id: str) -> None:
        """Drop one history entry (call with the mutex held)."""
        if self.history.pop(prompt_id, None) is not None:
            self.history_bytes -= self._history_sizes.pop(prompt_id, 0)

    def snapshot(self) -> dict:
        with self._mutex:
            running = [self.running.as_list()] if self.running is not None else []
            pending = [i.as_list() for i in sorted(self._pending)]
        return {"queue_running": running, "queue_pending": pending}

    def jobs_snapshot(self) -> dict:
        """The running item, the pending ones (in run order) and the history, for the jobs API (.jobs)."""
        with self._mutex:
            return {"running": [self.running] if self.running is not None else [],
                    "pending": sorted(self._pending), "history": dict(self.history)}

    def clear(self) -> None:
        with self._mutex:
            self._pending = []
        self._broadcast_status(threadsafe=False)

    def delete(self, prompt_ids) -> None:
        ids = {str(p) for p in prompt_ids}
        with self._mutex:
            self._pending = [i for i in self._pending if i.prompt_id not in ids]
            heapq.heapify(self._pending)
        self._broadcast_status(threadsafe=False)

    def running_id(self) -> str | None:
        with self._mutex:
            return self.running.prompt_id if self.running is not None else None

    def interrupt_if_running(self, prompt_id: str, interrupt) -> bool:
        """Call ``interrupt()`` only while ``prompt_id`` runs. The check and the call hold the queue's lock, which
        the worker needs to move to the next item, so a late interrupt can never stop the prompt after it."""
        with self._mutex:
            if self.running is None or self.running.prompt_id != prompt_id:
                return False
            interrupt()
            return True

    def set_flag(self, name: str, value) -> None:
        with self._not_empty:
            self.flags[name] = value
            self._not_empty.notify_all()

    def take_flags(self) -> dict:
        with self._mutex:
            flags, self.flags = self.flags, {}
            return flags

    def close(self) -> None:
        with self._not_empty:
            self.closed = True
            self._not_empty.notify_all()

    # ------------------------------------------------------------------------------------------------ history

    def get_history(self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1) -> dict:
        with self._mutex:
            if prompt_id is not None:
                entry = self.history.get(prompt_id)
                return {prompt_id: copy.deepcopy(entry)} if entry is not None else {}
            keys = list(self.history)
            if offset < 0 and max_items is not None:
                offset = len(keys) - max_items
            keys = keys[max(offset, 0):]
            if max_items is not None:
                keys = keys[:max(max_items, 0)]
            return {k: self.history[k] for k in keys}

    def clear_history(self) -> None:
        with self._mutex:
            self.history.clear()
            self._history_sizes.clear()
            self.history_bytes = 0

    def delete_history(self, prompt_ids) -> None:
        with self._mutex:
            for p in prompt_ids:
                self._forget(str(p))


class Worker(threading.Thread):
    """Takes items from the queue one at a time and runs them; handles ``/free`` requests between items."""

    def __init__(self, queue: PromptQueue, runner, hub: Hub, previews: bool = True):
        super().__init__(name="ipx2p-studio-worker", daemon=True)
        self.queue = queue
        self.runner = runner
        self.hub = hub
        self.previews = previews
        self.current_client: str | None = None
        self.last_node_id: str | None = None

    def stop(self, timeout: float = 10.0) -> None:
        self.queue.close()
        if self.queue.running_id() is not None:
            self.runner.interrupt()
        self.join(timeout)

    def run(self) -> None:
        while not self.queue.closed:
            try:
                item = self.queue.take(timeout=1.0)
                if item is not None:
                    self._run_item(item)
                self._handle_flags()
            except Exception:  # noqa: BLE001 - the worker must outlive any bug in one run
                log.exception("The studio worker hit an unexpected error; it keeps going")

    # ------------------------------------------------------------------------------------------------ one run

    def _run_item(self, item: QueueItem) -> None:
        sid = item.extra_data.get("client_id") or None
        self.current_client, self.last_node_id = sid, None
        started = time.perf_counter()

        def on_event(event: str, data: dict) -> None:
            if event == "preview":
                if self.previews and sid is not None:
                    node = data.get("node")
                    meta = {"node_id": node, "prompt_id": item.prompt_id, "display_node_id": data.get("display_node", node),
                            "parent_node_id": None, "real_node_id": node}
                    self.hub.send_preview_threadsafe(encode_preview(data["image"], meta), sid)
                return
            if event == "executing":
                self.last_node_id = data.get("node")
            if sid is not None:
                self.hub.send_threadsafe(event, data, sid)
            elif event == "execution_interrupted":  # ComfyUI broadcasts it when nobody owns the prompt
                self.hub.send_threadsafe(event, data, None)

        extra_pnginfo = item.extra_data.get("extra_pnginfo")
        try:
            result = self.runner.run(item.prompt, extra_pnginfo=extra_pnginfo, on_event=on_event,
                                     prompt_id=item.prompt_id, outputs=item.outputs or None, allow_partial=True)
            status, outputs, messages = result.status, result.outputs, list(result.messages)
            if status == "invalid":
                # The graph was valid when queued, but something changed (a file was removed): report it as an
                # execution error on the first failing node so the page shows what is wrong.
                messages += self._report_invalid(item, result, on_event)
        except Exception as exc:  # noqa: BLE001 - a runner bug becomes an error message, not a dead worker
            log.exception("Running prompt %s failed", item.prompt_id)
            status, outputs = "error", {}
            payload = {"prompt_id": item.prompt_id, "node_id": None, "node_type": None, "executed": [],
                       "exception_message": f"{exc}\n", "exception_type": type(exc).__qualname__, "traceback": [],
                       "current_inputs": {}, "current_outputs": [], "timestamp": int(time.time() * 1000)}
            on_event("execution_error", payload)
            messages = [("execution_error", payload)]
        meta = {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in outputs}
        number, prompt_id, prompt, extra_data, outputs_to_run = item.as_list()
        entry = {
            # extra_data holds the UI workflow: kept whole when it fits, so "load from history" works
            "prompt": [number, prompt_id, prompt, bounded_extra_data(extra_data), outputs_to_run],
            "outputs": outputs,
            "status": {"status_str": "success" if status == "success" else "error",
                       "completed": status == "success", "messages": [list(m) for m in messages]},
            "meta": meta,
        }
        self.queue.done(item, entry)
        if sid is not None:
            self.hub.send_threadsafe("executing", {"node": None, "prompt_id": item.prompt_id}, sid)
        self.current_client, self.last_node_id = None, None
        log.info("Prompt %s: %s in %.2f s", item.prompt_id, status, time.perf_counter() - started)

    def _report_invalid(self, item: QueueItem, result, on_event) -> list:
        now = int(time.time() * 1000)
        node_id = next(iter(result.node_errors), None)
        node_type = (result.node_errors.get(node_id) or {}).get("class_type") if node_id is not None else None
        start = {"prompt_id": item.prompt_id, "timestamp": now}
        payload = {"prompt_id": item.prompt_id, "node_id": node_id, "node_type": node_type, "executed": [],
                   "exception_message": result.error_text() + "\n", "exception_type": "ValidationError",
                   "traceback": [], "current_inputs": {}, "current_outputs": [], "timestamp": now}
        on_event("execution_start", start)
        on_event("execution_error", payload)
        return [("execution_start", start), ("execution_error", payload)]

    # ------------------------------------------------------------------------------------------------ /free

    def _handle_flags(self) -> None:
        flags = self.queue.take_flags()
        if not flags:
            return
        free_memory = bool(flags.get("free_memory"))
        if flags.get("unload_models", free_memory) or free_memory:
            # Loaded models live in the runner's cached outputs (the Load Model node's output) and in the engine's
            # model cache: dropping the first here and the second through the host releases them.
            self.runner.clear_cache()
            self.runner.host.free_memory()
            log.info("Freed memory (unload_models=%s, free_memory=%s)", flags.get("unload_models"), free_memory)
