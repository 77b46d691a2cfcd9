"""The websocket side of the studio: who is connected, what they can receive, and an ordered outbox per client.

Messages are ``{"type": event, "data": {...}}`` JSON texts, sent to one client (``sid``) or to everyone
(``sid=None``), plus binary preview frames. Anything may queue a message (``send`` on the event loop,
``send_threadsafe`` from the worker thread); each client's sender task sends its messages in the order they were
queued, so a client sees a run's events in the order the runner produced them, and one client that stops reading
never delays the others (see :class:`Hub`).

Binary preview frames start with a big-endian u32 event type: 4 (``PREVIEW_IMAGE_WITH_METADATA``: u32 length of a
JSON metadata object, the JSON, then the image bytes) for clients that said ``supports_preview_metadata`` in their
``feature_flags`` message, else 1 (``PREVIEW_IMAGE``: u32 image format, 1 = JPEG, then the bytes).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import struct
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

log = logging.getLogger(__name__)

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
JPEG = 1
PREVIEW_MAX_SIZE = 512
# A client's socket must take each message within SEND_TIMEOUT_S; previews (512 px JPEGs, about 30-60 kB) are
# skipped once PREVIEW_BACKLOG_BYTES wait for it, and it is dropped once MAX_BACKLOG_BYTES wait: a page that keeps up
# never has more than a few kB waiting.
SEND_TIMEOUT_S = 10.0
PREVIEW_BACKLOG_BYTES = 1024 * 1024
MAX_BACKLOG_BYTES = 8 * 1024 * 1024
DROPPED_KEPT = 100


def _abort(client: "Client") -> None:
    transport = client.transport
    if transport is not None and not transport.is_closing():
        transport.abort()


@dataclass
class Client:
    """One socket, and what waits to be sent on it: its own outbox and sender task, so a client that stops reading
    only ever delays itself."""

    ws: web.WebSocketResponse
    transport: object = None  # the TCP transport, aborted when the client is dropped
    feature_flags: dict = field(default_factory=dict)
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    backlog_bytes: int = 0  # bytes queued in outbox, not yet handed to the socket
    skipped_previews: int = 0
    sender: asyncio.Task | None = None

    @property
    def wants_metadata(self) -> bool:
        return self.feature_flags.get("supports_preview_metadata") is True


@dataclass
class Preview:
    """A JPEG preview and the metadata a type-4 frame carries."""

    jpeg: bytes
    metadata: dict


def encode_preview(image, metadata: dict, max_size: int = PREVIEW_MAX_SIZE) -> Preview:
    """A PIL image → JPEG bytes (at most ``max_size`` on a side), done off the event loop by the caller."""
    from PIL import ImageOps

    if max_size and max(image.size) > max_size:
        image = ImageOps.contain(image, (max_size, max_size))
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=95)
    return Preview(buf.getvalue(), {**metadata, "image_type": "image/jpeg"})


def preview_frame(preview: Preview, with_metadata: bool) -> bytes:
    if with_metadata:
        meta = json.dumps(preview.metadata).encode("utf-8")
        return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + preview.jpeg
    return struct.pack(">II", PREVIEW_IMAGE, JPEG) + preview.jpeg


class Hub:
    """Who is connected, and the fan-out: every message is encoded once and put in each target client's outbox.

    Each client has its own sender task, a bounded backlog and a send timeout. A client whose backlog passes
    ``preview_backlog`` bytes loses previews (never other events); one whose backlog passes ``max_backlog`` bytes,
    or whose socket does not take a message within ``send_timeout`` seconds, is dropped (its connection aborted; the
    frontend reconnects and asks for the queue again). The others never wait for it.
    """

    def __init__(self, server_features: dict, send_timeout: float = SEND_TIMEOUT_S,
                 max_backlog: int = MAX_BACKLOG_BYTES, preview_backlog: int = PREVIEW_BACKLOG_BYTES):
        self.server_features = server_features
        self.send_timeout = send_timeout
        self.max_backlog = max_backlog
        self.preview_backlog = preview_backlog
        self.clients: dict[str, Client] = {}
        self.dropped: list[tuple[str, str]] = []  # (sid, why), the most recent DROPPED_KEPT
        self.loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()

    async def close(self) -> None:
        for client in list(self.clients.values()):
            if client.sender is not None:
                client.sender.cancel()
            try:  # a client that stopped reading cannot hold the shutdown up
                await asyncio.wait_for(client.ws.close(code=1001, message=b"server shutting down"), 1.0)
            except Exception:  # noqa: BLE001 - including the timeout
                _abort(client)
        self.clients.clear()

    # ------------------------------------------------------------------------------------------------ sending

    def send(self, event: str, data, sid: str | None = None) -> None:
        """Queue a JSON message for one client or (``sid=None``) everyone. Call on the event loop."""
        text = json.dumps({"type": event, "data": data}, default=str)
        for target_sid, client in self._targets(sid):
            self._enqueue(target_sid, client, text, preview=False)

    def send_threadsafe(self, event: str, data, sid: str | None = None) -> None:
        """Queue a JSON message from another thread (the worker)."""
        self._call_soon(self.send, event, data, sid)

    def send_preview(self, preview: Preview, sid: str | None) -> None:
        frames: dict[bool, bytes] = {}
        for target_sid, client in self._targets(sid):
            wants = client.wants_metadata
            if wants not in frames:
                frames[wants] = preview_frame(preview, wants)
            self._enqueue(target_sid, client, frames[wants], preview=True)

    def send_preview_threadsafe(self, preview: Preview, sid: str | None) -> None:
        self._call_soon(self.send_preview, preview, sid)

    def _call_soon(self, fn, *args) -> None:
        # call_soon_threadsafe keeps the worker's order: events and previews reach each outbox as they were made
        if self.loop is not None and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop stopped between the check and the call
                pass

    def _targets(self, sid: str | None) -> list[tuple[str, Client]]:
        if sid is None:
            return list(self.clients.items())
        client = self.clients.get(sid)
        return [(sid, client)] if client is not None else []

    def _enqueue(self, sid: str, client: Client, frame: str | bytes, preview: bool) -> None:
        size = len(frame)
        if preview and client.backlog_bytes + size > self.preview_backlog:
            client.skipped_previews += 1
            return
        if client.backlog_bytes + size > self.max_backlog:
            self.drop(sid, client, f"{client.backlog_bytes + size:,} bytes waiting, more than {self.max_backlog:,}")
            return
        client.backlog_bytes += size
        client.outbox.put_nowait(frame)

    async def _send_loop(self, sid: str, client: Client) -> None:
        while True:
            frame = await client.outbox.get()
            client.backlog_bytes -= len(frame)
            send = client.ws.send_str(frame) if isinstance(frame, str) else client.ws.send_bytes(frame)
            try:
                await asyncio.wait_for(send, self.send_timeout)
            except asyncio.TimeoutError:
                self.drop(sid, client, f"a message was not taken within {self.send_timeout:g} s")
                return
            except Exception as exc:  # noqa: BLE001 - a closed or broken socket: its handler removes it
                log.debug("Could not send to client %s: %s", sid, exc)
                return

    def drop(self, sid: str, client: Client, why: str) -> None:
        """Disconnect a client that fell behind; everyone else goes on."""
        log.warning("Dropped websocket client %s: %s", sid, why)
        self.dropped = (self.dropped + [(sid, why)])[-DROPPED_KEPT:]
        if self.clients.get(sid) is client:
            del self.clients[sid]
        if client.sender is not None and client.sender is not asyncio.current_task():
            client.sender.cancel()
        _abort(client)

    # ------------------------------------------------------------------------------------------------ the socket

    async def handle(self, request: web.Request, welcome) -> web.WebSocketResponse:
        """Serve one websocket. ``welcome(sid)`` gives the messages to send right after connecting."""
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        sid = request.query.get("clientId", "")
        if not sid or len(sid) > 200:
            import uuid

            sid = uuid.uuid4().hex
        client = Client(ws, transport=request.transport)
        old = self.clients.get(sid)
        if old is not None and old.sender is not None:  # a reconnecting client replaces its old socket
            old.sender.cancel()
        self.clients[sid] = client
        # no await between registering and queueing the welcome: it is the first thing the client receives
        for event, data in welcome(sid):
            self._enqueue(sid, client, json.dumps({"type": event, "data": data}), preview=False)
        client.sender = asyncio.create_task(self._send_loop(sid, client), name=f"ipx2p-studio-ws-{sid[:40]}")
        try:
            first = True
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    try:
                        message = json.loads(msg.data)
                        if not isinstance(message, dict):
                            raise ValueError("a websocket message must be a JSON object")
                        if first and message.get("type") == "feature_flags":
                            flags = message.get("data")
                            client.feature_flags = dict(flags) if isinstance(flags, dict) else {}
                            self.send("feature_flags", self.server_features, sid)
                        else:
                            log.debug("Ignored websocket message %r from %s", message.get("type"), sid)
                    except Exception as exc:  # noqa: BLE001 - a malformed message never stops the server
                        log.warning("Ignored a malformed websocket message from %s: %s", sid, exc)
                    first = False
                elif msg.type == WSMsgType.ERROR:
                    log.warning("Websocket of client %s closed with %s", sid, ws.exception())
                # binary messages from clients mean nothing to us: ignored
        except Exception as exc:  # noqa: BLE001
            log.warning("Websocket of client %s failed: %s", sid, exc)
        finally:
            if self.clients.get(sid) is client:
                del self.clients[sid]
            client.sender.cancel()
        return ws
