"""Issue 11, the studio's request side: huge instructions answered at once with a clear error and no memory kept,
deeply nested JSON and odd parameters answered with 400 (never 500), a duplicate prompt_id refused, history and the
log buffer bounded in bytes."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time

import aiohttp
import pytest
from dummy_nodes import NODES
from PIL import Image
from studio_helpers import connect, finished, queue, read_until, rss, run, studio_in

from ipx2p_standalone.studio.app import LogBuffer
from ipx2p_standalone.studio.bounds import (MAX_EXTRA_DATA_BYTES, MAX_JSON_BODY_BYTES, MAX_JSON_DEPTH,
                                            MAX_TEXT_INPUT_CHARS, BadRequest, bounded_extra_data, parse_json)

MB = 1024 * 1024


@pytest.fixture()
def dummy(tmp_path):
    with studio_in(tmp_path, node_classes=NODES) as server:
        yield server


@pytest.fixture()
def pack(tmp_path):
    """A studio over this pack's real nodes (no model needed: the requests here are refused before loading one)."""
    with studio_in(tmp_path) as server:
        yield server


def chain(label="out"):
    return {"1": {"class_type": "Number", "inputs": {"value": 3.0}},
            "2": {"class_type": "Number", "inputs": {"value": 4.0}},
            "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
            "5": {"class_type": "Show", "inputs": {"value": ["3", 0], "label": label}}}


def edit_prompt(instruction: str) -> dict:
    """Load Model → Edit Image → Preview with ``instruction``: what the frontend queues for a one-node edit."""
    return {"1": {"class_type": "IPX2PLoadModel", "inputs": {"model_name": "[diffusers] none"}},
            "2": {"class_type": "LoadImage", "inputs": {"image": "none.png"}},
            "3": {"class_type": "IPX2PEditImage", "inputs": {"model": ["1", 0], "image": ["2", 0],
                                                              "instruction": instruction}},
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}


# ---------------------------------------------------------------------------------------------- point 1


def test_huge_instructions_are_refused_within_a_second_and_memory_returns(pack):
    """50 MB and 5 MB are over the body cap (413); 1 MB is under it and refused by the text-input check (400,
    naming the node, the input and the limit). Nothing is queued, nothing stays in memory."""

    async def post(s, size):
        body = json.dumps({"prompt": edit_prompt("x" * size), "client_id": "c1"}).encode()
        started = time.perf_counter()
        async with s.post(pack.url + "/api/prompt", data=body,
                          headers={"Content-Type": "application/json"}) as r:
            answer = r.status, await r.json()
        del body
        return answer, time.perf_counter() - started

    async def scenario():
        async with aiohttp.ClientSession() as s:
            await post(s, 10)  # warm up the route, the validator and the allocator before measuring
            before = rss()
            out = {size: await post(s, size) for size in (50 * MB, 5 * MB, 1 * MB)}
            async with s.get(pack.url + "/api/queue") as r:
                q = await r.json()
            async with s.get(pack.url + "/api/history") as r:
                history = await r.json()
            return before, out, q, history

    before, out, q, history = run(scenario())
    after = rss()
    for size, ((status, body), seconds) in out.items():
        print(f"instruction of {size / MB:.0f} MB: {status} in {seconds:.3f} s")
        assert seconds < 1.0, (size, seconds)
    for size in (50 * MB, 5 * MB):
        (status, body), _ = out[size]
        assert status == 413 and body["error"]["type"] == "request_too_large"
        assert f"limit of {MAX_JSON_BODY_BYTES:,}" in body["error"]["details"]
    (status, body), _ = out[1 * MB]
    assert status == 400 and body["error"]["type"] == "prompt_outputs_failed_validation"
    (err,) = body["node_errors"]["3"]["errors"]
    assert body["node_errors"]["3"]["class_type"] == "IPX2PEditImage"
    assert err["type"] == "value_too_long" and err["extra_info"]["input_name"] == "instruction"
    assert err["details"] == (f"instruction of node 3 (IPX2PEditImage) is {MB:,} characters long, more than the "
                              f"limit of {MAX_TEXT_INPUT_CHARS:,}")
    assert q == {"queue_running": [], "queue_pending": []} and history == {}
    print(f"RSS before {before / MB:.1f} MB, after {after / MB:.1f} MB")
    assert after - before < 50 * MB


def test_a_chunked_body_over_the_cap_is_refused_without_reading_it_whole(dummy):
    async def chunks():
        yield b'{"prompt": {"1": {"class_type": "Show", "inputs": {"label": "'
        for _ in range(MAX_JSON_BODY_BYTES // MB + 2):
            yield b"x" * MB
        yield b'"}}}}'

    async def scenario():
        async with aiohttp.ClientSession() as s:
            async with s.post(dummy.url + "/api/prompt", data=chunks()) as r:
                return r.status, await r.json()

    status, body = run(scenario())
    assert status == 413 and body["error"]["type"] == "request_too_large"
    assert body["error"]["details"] == f"the request body is more than the limit of {MAX_JSON_BODY_BYTES:,} bytes " \
                                       f"for /api/prompt"


# ---------------------------------------------------------------------------------------------- point 7


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_parse_json_refuses_deep_nesting_with_a_clear_error():
    assert parse_json(nested(MAX_JSON_DEPTH)) is not None
    for depth in (MAX_JSON_DEPTH + 1, 5000, 200_000):
        with pytest.raises(BadRequest, match=f"nested more than {MAX_JSON_DEPTH} levels deep"):
            parse_json(nested(depth))
    with pytest.raises(BadRequest, match="not JSON"):
        parse_json(b"\xff\xfe")


JSON_ROUTES = ["/api/prompt", "/api/queue", "/api/history", "/api/settings", "/api/settings/Comfy.Some",
               "/api/free", "/api/interrupt", "/prompt", "/settings"]


def test_deeply_nested_json_is_a_400_with_a_message_on_every_json_route(dummy):
    async def scenario():
        out = []
        async with aiohttp.ClientSession() as s:
            for path in JSON_ROUTES:
                for depth in (MAX_JSON_DEPTH + 1, 100_000):
                    async with s.post(dummy.url + path, data=nested(depth)) as r:
                        out.append((path, depth, r.status, await r.text()))
            async with s.patch(dummy.url + "/internal/logs/subscribe", data=nested(100_000)) as r:
                out.append(("/internal/logs/subscribe", 100_000, r.status, await r.text()))
            async with s.get(dummy.url + "/api/system_stats") as r:
                stats = r.status
        return out, stats

    out, stats = run(scenario())
    for path, depth, status, text in out:
        assert status == 400, (path, depth, status, text)
        assert f"nested more than {MAX_JSON_DEPTH} levels deep" in text, (path, text)
    assert stats == 200


def test_view_with_an_odd_preview_quality_and_mask_with_a_bad_original_ref_are_400_or_served(dummy, tmp_path):
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "output" / "a.png")
    buf = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 0, 128)).save(buf, format="PNG")

    async def scenario():
        out = {}
        async with aiohttp.ClientSession() as s:
            for preview in ("webp;²", "webp;٣", "jpeg;", "webp;99999999999999999999"):
                async with s.get(dummy.url + "/api/view", params={"filename": "a.png", "preview": preview}) as r:
                    out[preview] = (r.status, r.content_type)
            for ref in ({"filename": "a.png", "type": ["output"]}, {"filename": "a.png", "type": {"a": 1}},
                        {"filename": "a.png", "subfolder": 3}, "[" * 5000):
                form = aiohttp.FormData()
                form.add_field("image", buf.getvalue(), filename="mask.png", content_type="image/png")
                form.add_field("original_ref", ref if isinstance(ref, str) else json.dumps(ref))
                async with s.post(dummy.url + "/api/upload/mask", data=form) as r:
                    out[str(ref)[:40]] = (r.status, await r.text())
        return out

    out = run(scenario())
    assert out["webp;²"] == (200, "image/webp") and out["webp;٣"] == (200, "image/webp")
    assert out["jpeg;"] == (200, "image/jpeg") and out["webp;99999999999999999999"] == (200, "image/webp")
    masks = [v for k, v in out.items() if not k.startswith(("webp", "jpeg"))]
    assert len(masks) == 4
    for status, text in masks:
        assert status == 400 and text.startswith("original_ref must be JSON {filename: string"), (status, text)


def test_a_bad_interrupt_body_is_a_400_and_interrupts_nothing(dummy):
    async def scenario():
        async with aiohttp.ClientSession() as s:
            async with s.post(dummy.url + "/api/interrupt", data=b"{bad") as r:
                return r.status, await r.text()

    status, text = run(scenario())
    assert status == 400 and text.startswith("the request body is not JSON")


# ---------------------------------------------------------------------------------------------- point 8


def test_a_duplicate_prompt_id_is_refused_and_history_keeps_the_first(dummy):
    async def scenario():
        async with aiohttp.ClientSession() as s:
            ws = await connect(s, dummy, "c1")
            pid = await queue(s, dummy, chain("first"), "c1", prompt_id="mine")
            await read_until(ws, finished(pid))
            async with s.post(dummy.url + "/api/prompt", json={"prompt": chain("second"), "client_id": "c1",
                                                               "prompt_id": "mine"}) as r:
                duplicate = r.status, await r.json()
            async with s.post(dummy.url + "/api/prompt", json={"prompt": chain(), "prompt_id": {"a": 1}}) as r:
                not_text = r.status, await r.json()
            async with s.get(dummy.url + "/api/history/mine") as r:
                history = await r.json()
            await ws.close()
            return pid, duplicate, not_text, history

    pid, (status, body), not_text, history = run(scenario())
    assert pid == "mine"
    assert status == 400 and body["error"]["type"] == "duplicate_prompt_id"
    assert body["error"]["details"] == "prompt_id 'mine' is in the queue or the history; send a new id or none"
    assert not_text[0] == 400 and "prompt_id must be a string" in not_text[1]["error"]["message"]
    assert history["mine"]["outputs"]["5"] == {"text": ["first=7.0"]}


def test_history_keeps_a_bounded_extra_data_and_a_bounded_total(dummy):
    big = {"workflow": {"nodes": [], "blob": "w" * (2 * MB)}}
    dummy.studio.queue.max_history_bytes = 64 * 1024

    async def scenario():
        async with aiohttp.ClientSession() as s:
            ws = await connect(s, dummy, "c1")
            first = await queue(s, dummy, chain("big"), "c1", extra_data={"extra_pnginfo": big, "keep": 1})
            await read_until(ws, finished(first))
            async with s.get(dummy.url + "/api/history/" + first) as r:
                entry = (await r.json())[first]
            pids = []
            for i in range(60):
                pids.append(await queue(s, dummy, chain(f"n{i}" + "p" * 2000), "c1"))
            await read_until(ws, finished(pids[-1]))
            async with s.get(dummy.url + "/api/history") as r:
                history = await r.json()
            await ws.close()
            return first, entry, pids, history

    first, entry, pids, history = run(scenario())
    extra = entry["prompt"][3]
    assert isinstance(extra.pop("create_time"), int)  # the server's own stamp (the jobs API sorts by it)
    assert extra == {"keep": 1, "client_id": "c1", "ipx2p_truncated": ["extra_pnginfo"]}
    assert entry["outputs"]["5"] == {"text": ["big=7.0"]}
    queue_ = dummy.studio.queue
    print(f"history: {len(history)} entries, {queue_.history_bytes:,} bytes (bound {queue_.max_history_bytes:,})")
    assert queue_.history_bytes <= queue_.max_history_bytes
    assert first not in history and list(history) == pids[-len(history):] and 10 < len(history) < 60
    assert queue_.history_bytes == sum(len(json.dumps(e, separators=(",", ":"))) for e in history.values())


def test_bounded_extra_data_keeps_what_fits():
    small = {"extra_pnginfo": {"workflow": {"nodes": [1, 2]}}, "client_id": "c"}
    assert bounded_extra_data(small) is small
    huge = {"extra_pnginfo": {"workflow": "w" * MAX_EXTRA_DATA_BYTES}, "other": "o" * 10, "client_id": "c"}
    assert bounded_extra_data(huge) == {"other": "o" * 10, "client_id": "c", "ipx2p_truncated": ["extra_pnginfo"]}


class _NoHub:
    def send_threadsafe(self, *args):
        pass


def test_the_log_buffer_is_bounded_in_bytes_and_clips_long_lines():
    buffer = LogBuffer(_NoHub(), max_bytes=64 * 1024, max_entry_chars=1000)
    logger = logging.getLogger("ipx2p-test-log-buffer")
    logger.addHandler(buffer)
    logger.setLevel(logging.INFO)
    try:
        for i in range(15):
            logger.warning("Invalid prompt %d: %s", i, "x" * (4 * MB))
        logger.info("the last line")
    finally:
        logger.removeHandler(buffer)
    entries = buffer.entries()
    total = sum(len(e["m"].encode()) + len(e["t"]) for e in entries)
    print(f"log buffer: {len(entries)} entries, {total:,} bytes")
    assert buffer.bytes == total <= 64 * 1024
    assert entries[-1]["m"] == "INFO ipx2p-test-log-buffer: the last line\n"
    assert entries[-2]["m"].startswith("WARNING ipx2p-test-log-buffer: Invalid prompt 14: xxx")
    assert entries[-2]["m"].endswith(f"... [{4 * MB + 50 - 1000:,} more characters not kept]\n")


# ---------------------------------------------------------------------------------------------- point 2


def stalled_socket(server, client_id: str):
    """A websocket client that completes the handshake and then never reads: a tiny receive window, so the
    server's buffers toward it fill after a few MB at most."""
    import base64
    import os
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    handshake = b""
    while b"\r\n\r\n" not in handshake:
        handshake += sock.recv(1)  # only the response head: the rest (the welcome) is never read
    assert handshake.startswith(b"HTTP/1.1 101"), handshake
    return sock


@pytest.mark.parametrize("limit", ["backlog", "send_timeout"])
def test_a_client_that_never_reads_is_dropped_and_never_delays_the_others(dummy, limit):
    hub = dummy.studio.hub
    if limit == "send_timeout":  # a backlog too large to hit: the send timeout must catch it
        hub.max_backlog, hub.send_timeout = 1 << 40, 1.0
    blob = "x" * MB

    async def scenario():
        async with aiohttp.ClientSession() as s:
            ws = await connect(s, dummy, "normal")
            sock = stalled_socket(dummy, "stalled")
            deadline = time.monotonic() + 10
            while "stalled" not in hub.clients and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            # 40 MB for the stalled client, queued the way the worker queues events; then a run for the normal one
            for i in range(40):
                hub.send_threadsafe("flood", {"i": i, "blob": blob}, "stalled")
            started = time.monotonic()
            pids = [await queue(s, dummy, chain(f"run{i}"), "normal") for i in range(3)]
            events = await read_until(ws, finished(pids[-1]), timeout=30)
            took = time.monotonic() - started
            while "stalled" in hub.clients and time.monotonic() < deadline + 20:
                await asyncio.sleep(0.05)
            await ws.close()
            sock.close()
            return pids, events, took

    pids, events, took = run(scenario())
    print(f"{limit}: the normal client's 3 runs took {took:.2f} s; dropped: {hub.dropped}")
    assert took < 5.0
    assert [d["prompt_id"] for k, d in events if k == "execution_success"] == pids
    executed = [d["output"]["text"] for k, d in events if k == "executed"]
    assert executed == [["run0=7.0"], ["run1=7.0"], ["run2=7.0"]]
    assert "stalled" not in hub.clients
    (sid, why), = [d for d in hub.dropped if d[0] == "stalled"]
    if limit == "backlog":
        assert why.endswith(f"more than {8 * MB:,}")
    else:
        assert why == "a message was not taken within 1 s"


def test_a_client_that_falls_behind_loses_previews_first_never_other_events():
    from ipx2p_standalone.studio.events import Client, Hub, Preview

    async def scenario():
        hub = Hub({}, preview_backlog=100_000, max_backlog=1_000_000)
        await hub.start()
        client = Client(ws=None)
        hub.clients["c"] = client  # no sender task: nothing is taken from its outbox, as with a stalled socket
        for i in range(10):
            hub.send_preview(Preview(b"j" * 30_000, {"node_id": "1"}), "c")
            hub.send("progress", {"value": i, "max": 10}, "c")
        hub.send("executed", {"node": "5", "output": {"text": ["done"]}}, "c")
        frames = []
        while not client.outbox.empty():
            frames.append(client.outbox.get_nowait())
        return client, frames

    client, frames = run(scenario())
    texts = [json.loads(f)["type"] for f in frames if isinstance(f, str)]
    assert texts == ["progress"] * 10 + ["executed"]
    assert sum(isinstance(f, bytes) for f in frames) == 3 and client.skipped_previews == 7
