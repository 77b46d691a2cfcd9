"""The websocket side of the studio: who is connected, what they can receive, and one ordered outbox.

Messages are ``{"type": event, "data": {...}}`` JSON texts, sent to one client (``sid``) or to everyone
(``sid=None``), plus binary preview frames. Anything may queue a message (``send`` on the event loop,
``send_threadsafe`` from the worker thread); one publisher task sends them in the order they were queued, so
a client sees a run's events in the order the runner produced them.

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


@dataclass
class Client:
    ws: web.WebSocketResponse
    feature_flags: dict = field(default_factory=dict)

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
    def __init__(self, server_features: dict):
        self.server_features = server_features
        self.clients: dict[str, Client] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._outbox: asyncio.Queue | None = None
        self._publisher: asyncio.Task | None = None

    # ------------------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._outbox = asyncio.Queue()
        self._publisher = asyncio.create_task(self._publish(), name="ipx2p-studio-publisher")

    async def close(self) -> None:
        if self._publisher is not None:
            self._publisher.cancel()
            try:
                await self._publisher
            except asyncio.CancelledError:
                pass
            self._publisher = None
        for client in list(self.clients.values()):
            try:
                await client.ws.close(code=1001, message=b"server shutting down")
            except Exception:  # noqa: BLE001
                pass
        self.clients.clear()

    # ------------------------------------------------------------------------------------------------ sending

    def send(self, event: str, data, sid: str | None = None) -> None:
        """Queue a JSON message (call on the event loop)."""
        if self._outbox is not None:
            self._outbox.put_nowait(("json", event, data, sid))

    def send_threadsafe(self, event: str, data, sid: str | None = None) -> None:
        """Queue a JSON message from another thread (the worker)."""
        if self.loop is not None and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self.send, event, data, sid)
            except RuntimeError:  # the loop stopped between the check and the call
                pass

    def send_preview_threadsafe(self, preview: Preview, sid: str | None) -> None:
        if self.loop is not None and not self.loop.is_closed() and self._outbox is not None:
            try:
                self.loop.call_soon_threadsafe(self._outbox.put_nowait, ("preview", None, preview, sid))
            except RuntimeError:
                pass

    async def _publish(self) -> None:
        while True:
            kind, event, data, sid = await self._outbox.get()
            targets = list(self.clients.items()) if sid is None else \
                ([(sid, self.clients[sid])] if sid in self.clients else [])
            for target_sid, client in targets:
                try:
                    if kind == "json":
                        await client.ws.send_str(json.dumps({"type": event, "data": data}))
                    else:
                        await client.ws.send_bytes(preview_frame(data, client.wants_metadata))
                except Exception as exc:  # noqa: BLE001 - a closed or broken socket must not stop the others
                    log.debug("Could not send %s to client %s: %s", event or "preview", target_sid, exc)

    # ------------------------------------------------------------------------------------------------ the socket

    async def handle(self, request: web.Request, welcome) -> web.WebSocketResponse:
        """Serve one websocket. ``welcome(sid)`` gives the messages to send right after connecting."""
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        sid = request.query.get("clientId", "")
        if not sid or len(sid) > 200:
            import uuid

            sid = uuid.uuid4().hex
        client = Client(ws)
        self.clients[sid] = client  # a reconnecting client replaces its old socket
        try:
            for event, data in welcome(sid):
                await ws.send_str(json.dumps({"type": event, "data": data}))
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
                            await ws.send_str(json.dumps({"type": "feature_flags", "data": self.server_features}))
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
        return ws
