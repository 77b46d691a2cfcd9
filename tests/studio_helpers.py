"""Helpers for the studio tests: a server in a background thread, an aiohttp client session, websocket reading."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct

import aiohttp


def run(coro):
    return asyncio.run(coro)


def ws_url(server, client_id: str = "") -> str:
    return server.url.replace("http://", "ws://") + "/ws" + (f"?clientId={client_id}" if client_id else "")


async def connect(session: aiohttp.ClientSession, server, client_id: str, metadata: bool = True):
    """A websocket that has read the welcome (status with sid) and negotiated feature flags."""
    ws = await session.ws_connect(ws_url(server, client_id))
    welcome = await ws.receive_json(timeout=10)
    assert welcome["type"] == "status" and welcome["data"]["sid"] == client_id
    await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": metadata}})
    flags = await ws.receive_json(timeout=10)
    assert flags["type"] == "feature_flags" and flags["data"]["supports_preview_metadata"] is True
    return ws


def decode(msg):
    """(type, data) for JSON messages; ("binary", (event type, metadata or image type, image bytes)) for frames."""
    if msg.type == aiohttp.WSMsgType.TEXT:
        m = json.loads(msg.data)
        return m["type"], m["data"]
    if msg.type == aiohttp.WSMsgType.BINARY:
        event, = struct.unpack(">I", msg.data[:4])
        if event == 4:
            length, = struct.unpack(">I", msg.data[4:8])
            meta = json.loads(msg.data[8:8 + length])
            return "binary", (4, meta, msg.data[8 + length:])
        image_type, = struct.unpack(">I", msg.data[4:8])
        return "binary", (event, image_type, msg.data[8:])
    raise AssertionError(f"unexpected websocket message {msg.type}: {msg.data!r}")


async def read_until(ws, done, timeout: float = 120.0) -> list:
    """Messages until ``done(kind, data)`` is true for one (included)."""
    out = []

    async def loop():
        while True:
            msg = await ws.receive()
            kind, data = decode(msg)
            out.append((kind, data))
            if done(kind, data):
                return

    await asyncio.wait_for(loop(), timeout)
    return out


def finished(prompt_id):
    """The last message of a prompt, as ComfyUI's main loop sends it: executing {node: null}."""
    return lambda kind, data: kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id


async def queue(session, server, prompt, client_id, **extra):
    async with session.post(server.url + "/api/prompt", json={"prompt": prompt, "client_id": client_id,
                                                              **extra}) as r:
        body = await r.json()
        assert r.status == 200, body
        return body["prompt_id"]


@contextlib.contextmanager
def studio_in(tmp_path, **kw):
    """A studio on a free port over folders in ``tmp_path`` (``node_classes=NODES`` for the small test nodes);
    the nodes' host is put back afterwards."""
    from ipx2p_nodes.host import get_host, set_host
    from ipx2p_standalone.studio import StudioServer

    d = {k: tmp_path / k for k in ("models", "input", "output", "user", "temp")}
    previous = get_host()
    try:
        with StudioServer(models_dir=d["models"], input_dir=d["input"], output_dir=d["output"], user_dir=d["user"],
                          temp_dir=d["temp"], device="cpu", **kw) as server:
            yield server
    finally:
        set_host(previous)


def rss() -> int:
    """This process's resident memory (the studio of these tests runs in it), after a garbage collection and with
    glibc's freed heap pages handed back (else freed request buffers count as long as the allocator keeps them)."""
    import ctypes
    import ctypes.util
    import gc

    import psutil

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS as it is
        pass
    return psutil.Process().memory_info().rss
