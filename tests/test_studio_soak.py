"""Soak (issue 11, point 10): 200 small prompts from 8 websocket clients at once, with interrupts and deletes mixed
in. Every prompt runs exactly once, or is reported deleted (never started, not in the history) or interrupted
(execution_interrupted, no output); prompts run in the order they were queued; memory comes back. Bounded in time:
the small test nodes run in milliseconds, so the whole soak takes seconds. Prints its figures."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from dummy_nodes import NODES, Slow
from studio_helpers import connect, decode, rss, run, studio_in


CLIENTS = 8
PER_CLIENT = 25
MB = 1024 * 1024


@pytest.fixture()
def dummy(tmp_path):
    Slow.on_step = lambda i: time.sleep(0.01)  # a slow prompt takes 0.2 s unless interrupted
    try:
        with studio_in(tmp_path, node_classes=NODES) as server:
            yield server
    finally:
        Slow.on_step = None


def plan(n: int) -> str:
    """What prompt number ``n`` of the soak is: a quick chain, a slow one run through, a slow one interrupted while
    it runs, or a quick one deleted right after it was queued (it may already have run: then it ran once)."""
    if n % 8 == 3:
        return "interrupt"
    if n % 8 == 6:
        return "slow"
    if n % 7 == 5:
        return "delete"
    return "quick"


def prompt_for(n: int, kind: str) -> dict:
    label = f"p{n}"
    if kind in ("slow", "interrupt"):
        return {"1": {"class_type": "Number", "inputs": {"value": float(n % 50)}},
                "2": {"class_type": "Slow", "inputs": {"x": ["1", 0], "steps": 20}},
                "3": {"class_type": "Show", "inputs": {"value": ["2", 0], "label": label}}}
    return {"1": {"class_type": "Number", "inputs": {"value": float(n % 50)}},
            "2": {"class_type": "Number", "inputs": {"value": 1.0}},
            "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
            "5": {"class_type": "Show", "inputs": {"value": ["3", 0], "label": label}}}


def test_soak_200_prompts_from_8_clients_with_interrupts_and_deletes(dummy):
    url = dummy.url
    queued: dict[str, dict] = {}  # prompt id → {n, kind, number, client}
    events: dict[str, list] = {f"c{k}": [] for k in range(CLIENTS)}
    to_interrupt: set[str] = set()
    interrupted_sent: set[str] = set()

    async def reader(s, sid, ws):
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return
            kind, data = decode(msg)
            events[sid].append((kind, data))
            pid = data.get("prompt_id") if isinstance(data, dict) else None
            if kind == "progress" and pid in to_interrupt and pid not in interrupted_sent:
                interrupted_sent.add(pid)
                async with s.post(url + "/api/interrupt", json={"prompt_id": pid}) as r:
                    assert r.status == 200

    async def client(s, k):
        sid = f"c{k}"
        for i in range(PER_CLIENT):
            n = i * CLIENTS + k
            kind = plan(n)
            async with s.post(url + "/api/prompt", json={"prompt": prompt_for(n, kind), "client_id": sid}) as r:
                body = await r.json()
                assert r.status == 200, body
            pid = body["prompt_id"]
            queued[pid] = {"n": n, "kind": kind, "number": body["number"], "client": sid}
            if kind == "interrupt":
                to_interrupt.add(pid)
            if kind == "delete":
                async with s.post(url + "/api/queue", json={"delete": [pid]}) as r:
                    assert r.status == 200
            await asyncio.sleep(0)

    async def scenario():
        async with aiohttp.ClientSession() as s:
            # warm up (first imports, first run) before measuring memory
            ws = await connect(s, dummy, "warm")
            async with s.post(url + "/api/prompt", json={"prompt": prompt_for(-1, "quick"), "client_id": "warm"}):
                pass
            await asyncio.sleep(0.5)
            await ws.close()
            async with s.post(url + "/api/history", json={"clear": True}):
                pass
            before = rss()
            started = time.perf_counter()
            sockets = [await connect(s, dummy, f"c{k}") for k in range(CLIENTS)]
            readers = [asyncio.create_task(reader(s, f"c{k}", ws)) for k, ws in enumerate(sockets)]
            await asyncio.gather(*(client(s, k) for k in range(CLIENTS)))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                async with s.get(url + "/api/prompt") as r:
                    if (await r.json())["exec_info"]["queue_remaining"] == 0:
                        break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # the last events reach the sockets
            took = time.perf_counter() - started
            async with s.get(url + "/api/history") as r:
                history = await r.json()
            for ws in sockets:
                await ws.close()
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            return before, took, history

    before, took, history = run(scenario())
    after = rss()

    assert len(queued) == CLIENTS * PER_CLIENT
    by_kind = {"ran": 0, "deleted": 0, "interrupted": 0}
    for pid, q in queued.items():
        mine = events[q["client"]]
        starts = [d for k, d in mine if k == "execution_start" and d["prompt_id"] == pid]
        executed = [d for k, d in mine if k == "executed" and d["prompt_id"] == pid]
        stopped = [d for k, d in mine if k == "execution_interrupted" and d["prompt_id"] == pid]
        assert len(starts) <= 1, (pid, q)
        if q["kind"] == "delete" and not starts:
            assert pid not in history and not executed, (pid, q)
            by_kind["deleted"] += 1
        elif stopped:
            assert q["kind"] == "interrupt" and len(stopped) == 1 and not executed, (pid, q)
            assert history[pid]["status"]["messages"][-1][0] == "execution_interrupted"
            by_kind["interrupted"] += 1
        else:
            # an interrupt that arrived after the last step finds nothing running: the prompt simply finished
            assert len(starts) == 1 and [e["output"]["text"] for e in executed] == [[f"p{q['n']}=" + (
                f"{float(q['n'] % 50)}" if q["kind"] in ("slow", "interrupt") else f"{float(q['n'] % 50) + 1.0}")]]
            assert history[pid]["status"]["status_str"] == "success", (pid, q)
            by_kind["ran"] += 1
    # one worker, first in first out: history (in the order prompts finished) is in queue-number order
    numbers = [queued[pid]["number"] for pid in history]
    assert numbers == sorted(numbers) and set(history) <= set(queued)
    for sid, mine in events.items():
        started = [queued[d["prompt_id"]]["number"] for k, d in mine if k == "execution_start"]
        assert started == sorted(started), sid
    print(f"soak: {len(queued)} prompts from {CLIENTS} clients in {took:.1f} s: {by_kind['ran']} ran once, "
          f"{by_kind['deleted']} deleted before running, {by_kind['interrupted']} interrupted; "
          f"RSS before {before / MB:.1f} MB, after {after / MB:.1f} MB ({(after - before) / MB:+.1f} MB)")
    assert sum(by_kind.values()) == len(queued)
    assert by_kind["deleted"] > 0 and by_kind["interrupted"] > 0
    assert after - before < 30 * MB
