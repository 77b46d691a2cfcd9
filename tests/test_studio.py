"""The studio server without a browser: the websocket protocol of a run (real nodes, tiny model), interrupt, a
failing node, FIFO queueing, history, validation errors, user data across restarts, templates and extensions."""

from __future__ import annotations

import io
import json
import os
import threading

import aiohttp
import pytest
from dummy_nodes import NODES, Slow
from PIL import Image
from studio_helpers import connect, finished, queue, read_until, run

from ipx2p_nodes.host import get_host, set_host
from ipx2p_standalone.cli import build_parser
from ipx2p_standalone.studio import PACK_NAME, StudioServer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_INPUTS = sorted(os.listdir(os.path.join(REPO, "example_workflows", "input")))


@pytest.fixture()
def dirs(tmp_path):
    d = {k: tmp_path / k for k in ("models", "input", "output", "user", "temp")}
    return d


def server_for(dirs, **kw):
    return StudioServer(models_dir=dirs["models"], input_dir=dirs["input"], output_dir=dirs["output"],
                        user_dir=dirs["user"], temp_dir=dirs["temp"], device="cpu", **kw)


@pytest.fixture()
def dummy(dirs):
    """A studio over the small test nodes (Number, Add, Show, Fail, Slow, ...)."""
    previous = get_host()
    Slow.on_step = None
    with server_for(dirs, node_classes=NODES) as server:
        yield server
    Slow.on_step = None
    set_host(previous)


@pytest.fixture()
def studio(dirs, tiny_sd):
    """A studio over our real nodes, with the tiny SD model as models/diffusers/tiny-sd."""
    (dirs["models"] / "diffusers").mkdir(parents=True)
    os.symlink(tiny_sd["folder"], dirs["models"] / "diffusers" / "tiny-sd")
    previous = get_host()
    with server_for(dirs) as server:
        yield server
    set_host(previous)


def staged_example(server, steps=3):
    """The shipped staged example converted to an API prompt (as the frontend does), on the tiny model."""
    with open(os.path.join(REPO, "example_workflows", "ipx2p_sd15_staged.json")) as f:
        workflow = json.load(f)
    prompt = server.studio.validator.prepare(workflow).prompt
    prompt["1"]["inputs"].update(model_name="[diffusers] tiny-sd", device="cpu", dtype="fp32")
    prompt["4"]["inputs"].update(resize="fit", size=64)
    prompt["5"]["inputs"]["steps"] = steps
    return workflow, prompt


def chain(label="out", value=3.0):
    return {
        "1": {"class_type": "Number", "inputs": {"value": value}},
        "2": {"class_type": "Number", "inputs": {"value": 4.0}},
        "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
        "5": {"class_type": "Show", "inputs": {"value": ["3", 0], "label": label}},
    }


def slow_chain(label, steps=3):
    return {
        "1": {"class_type": "Number", "inputs": {"value": 1.0}},
        "2": {"class_type": "Slow", "inputs": {"x": ["1", 0], "steps": steps}},
        "3": {"class_type": "Show", "inputs": {"value": ["2", 0], "label": label}},
    }


# ---------------------------------------------------------------------------------------------- a real run


def test_run_event_order_previews_outputs_history_and_cache(studio):
    workflow, prompt = staged_example(studio)

    async def scenario():
        async with aiohttp.ClientSession() as s:
            ws = await connect(s, studio, "client-a")
            other = await connect(s, studio, "client-b")  # sees status broadcasts only
            pid = await queue(s, studio, prompt, "client-a",
                              extra_data={"extra_pnginfo": {"workflow": workflow}, "auth_token_comfy_org": "secret"})
            events = await read_until(ws, finished(pid))
            seen_by_other = await read_until(other, lambda k, d: k == "status"
                                             and d["status"]["exec_info"]["queue_remaining"] == 0)
            async with s.get(f"{studio.url}/api/history/{pid}") as r:
                history = await r.json()
            image = events_of(events, "executed")[0]["output"]["images"][0]
            async with s.get(studio.url + "/api/view", params=image) as r:
                assert r.status == 200 and r.content_type == "image/png"
                png = Image.open(io.BytesIO(await r.read()))
            async with s.get(studio.url + "/api/view", params={**image, "preview": "webp;90"}) as r:
                assert r.status == 200 and r.content_type == "image/webp"
            # the same graph again with only a guidance value changed: the loaders and encoders come from the cache
            prompt["5"]["inputs"]["text_guidance"] = 5.0
            pid2 = await queue(s, studio, prompt, "client-a")
            again = await read_until(ws, finished(pid2))
            await ws.close()
            await other.close()
            return pid, events, seen_by_other, history, png, again

    pid, events, seen_by_other, history, png, again = run(scenario())

    names = [k for k, _ in events]
    assert names[:4] == ["status", "status", "execution_start", "execution_cached"]
    assert [e[1]["status"]["exec_info"]["queue_remaining"] for e in events[:2]] == [1, 1]
    assert events[3][1] == {**events[3][1], "nodes": [], "prompt_id": pid}
    assert names[-3:] == ["execution_success", "status", "executing"]
    assert events[-2][1]["status"]["exec_info"]["queue_remaining"] == 0
    assert events[-1][1] == {"node": None, "prompt_id": pid}
    executing = [d["node"] for k, d in events if k == "executing" and d["node"] is not None]
    assert sorted(executing) == ["1", "2", "3", "4", "5", "6", "7"]
    assert executing.index("5") < executing.index("6") < executing.index("7")
    assert executing.index("1") < executing.index("3") and executing.index("2") < executing.index("4")
    # every node: executing, then progress_state with it running ... progress_state with it finished
    for node in executing:
        i = names.index("executing", [j for j, (k, d) in enumerate(events) if k == "executing"
                                      and d["node"] == node][0])
        assert events[i + 1][0] == "progress_state" and events[i + 1][1]["nodes"][node]["state"] == "running"
        done = [d for k, d in events[i:] if k == "progress_state" and d["nodes"].get(node, {}).get("state")
                == "finished"]
        assert done, node
    # the sampler: progress 1..3 of 3, each after its progress_state, with a type-4 preview frame
    progress = [(d["value"], d["max"]) for k, d in events if k == "progress" and d["node"] == "5"]
    assert progress == [(1, 3), (2, 3), (3, 3)]
    assert all(d["prompt_id"] == pid for k, d in events if k == "progress")
    frames = [d for k, d in events if k == "binary"]
    assert len(frames) == 3 and all(f[0] == 4 for f in frames)
    meta = frames[0][1]
    assert meta == {"node_id": "5", "prompt_id": pid, "display_node_id": "5", "parent_node_id": None,
                    "real_node_id": "5", "image_type": "image/jpeg"}
    assert Image.open(io.BytesIO(frames[0][2])).format == "JPEG"
    first_progress = names.index("progress")
    assert "binary" in names[first_progress:first_progress + 3]
    # the output
    (executed,) = events_of(events, "executed")
    assert executed["node"] == "7" and executed["display_node"] == "7" and executed["prompt_id"] == pid
    (image,) = executed["output"]["images"]
    assert image["type"] == "output" and image["filename"].startswith("ipx2p_")
    assert png.size == (512, 384)  # restore_size: back to the example photo's size
    assert json.loads(png.text["workflow"]) == workflow and json.loads(png.text["prompt"])["5"]["class_type"] == \
        "IPX2PSampler"
    # other clients get the queue status, never another client's run events
    assert {k for k, _ in seen_by_other} == {"status"}
    # history
    entry = history[pid]
    number, hid, hprompt, extra, outputs = entry["prompt"]
    assert hid == pid and hprompt == prompt | {"5": hprompt["5"]} and outputs == ["7"]
    assert extra["client_id"] == "client-a" and "auth_token_comfy_org" not in extra
    assert entry["outputs"] == {"7": executed["output"]}
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    assert entry["meta"]["7"]["node_id"] == "7"
    # second run: cached loaders and encoders, only sampler, decode and save ran
    cached = events_of(again, "execution_cached")[0]["nodes"]
    assert cached == ["1", "2", "3", "4"]
    assert [d["node"] for k, d in again if k == "executing" and d["node"]] == ["5", "6", "7"]


def events_of(events, kind):
    return [d for k, d in events if k == kind]


def test_interrupt_mid_sampling(studio):
    _, prompt = staged_example(studio, steps=50)
    host = studio.studio.host
    original = host.progress
    waited = threading.Event()

    def progress(step, total, preview=None):
        original(step, total, preview)
        if step == 2:  # hold the sampler here until the interrupt has arrived
            waited.set()
            assert host._interrupt.wait(30)

    host.progress = progress

    async def scenario():
        async with aiohttp.ClientSession() as s:
            ws = await connect(s, studio, "c1", metadata=False)
            pid = await queue(s, studio, prompt, "c1")
            events = await read_until(ws, lambda k, d: k == "progress" and d["value"] == 2)
            async with s.post(studio.url + "/api/interrupt", json={"prompt_id": pid}) as r:
                assert r.status == 200
            events += await read_until(ws, finished(pid))
            async with s.get(f"{studio.url}/api/history/{pid}") as r:
                history = await r.json()
            await ws.close()
            return pid, events, history

    pid, events, history = run(scenario())
    names = [k for k, _ in events]
    assert "execution_success" not in names and "executed" not in names
    (stopped,) = events_of(events, "execution_interrupted")
    assert stopped["node_id"] == "5" and stopped["node_type"] == "IPX2PSampler" and stopped["prompt_id"] == pid
    assert sorted(stopped["executed"]) == ["1", "2", "3", "4"]
    assert max(d["value"] for d in events_of(events, "progress")) == 2
    assert names[-2:] == ["status", "executing"]
    # this client did not ask for metadata: previews come as type-1 JPEG frames
    frames = [d for k, d in events if k == "binary"]
    assert frames and all(f[0] == 1 and f[1] == 1 for f in frames)
    status = history[pid]["status"]
    assert status["status_str"] == "error" and status["completed"] is False
    assert status["messages"][-1][0] == "execution_interrupted"


# ---------------------------------------------------------------------------------------------- queue semantics


def test_failing_node_reports_execution_error(dummy):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1.0}},
              "2": {"class_type": "Fail", "inputs": {"x": ["1", 0]}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0], "label": "x"}}}

    async def scenario():
        async with aiohttp.ClientSession() as s:
            ws = await connect(s, dummy, "c1")
            pid = await queue(s, dummy, prompt, "c1")
            events = await read_until(ws, finished(pid))
            async with s.get(f"{dummy.url}/api/history/{pid}") as r:
                history = await r.json()
            # the server goes on: the next prompt runs
            pid2 = await queue(s, dummy, chain(), "c1")
            events2 = await read_until(ws, finished(pid2))
            await ws.close()
            return pid, events, history, events2

    pid, events, history, events2 = run(scenario())
    names = [k for k, _ in events]
    assert "execution_success" not in names
    (error,) = events_of(events, "execution_error")
    assert error["node_id"] == "2" and error["node_type"] == "Fail" and error["prompt_id"] == pid
    assert "cannot handle 1.0" in error["exception_message"] and error["exception_type"] == "ValueError"
    assert error["traceback"] and error["executed"] == ["1"] and error["current_inputs"] == {"x": [1.0]}
    error_state = [d["nodes"]["2"]["state"] for k, d in events if k == "progress_state" and "2" in d["nodes"]]
    assert error_state[-1] == "error"
    assert names[-2:] == ["status", "executing"]
    assert history[pid]["status"]["status_str"] == "error"
    assert history[pid]["status"]["messages"][-1][0] == "execution_error"
    assert events_of(events2, "executed")[0]["output"] == {"text": ["out=7.0"]}


def test_two_prompts_run_in_order_and_queue_edits(dummy):
    gate = threading.Event()
    Slow.on_step = lambda i: gate.wait(30)

    async def scenario():
        async with aiohttp.ClientSession() as s:
            ws = await connect(s, dummy, "c1")
            first = await queue(s, dummy, slow_chain("first"), "c1")
            events = await read_until(ws, lambda k, d: k == "executing" and d["node"] == "2")
            second = await queue(s, dummy, chain("second"), "c1")
            third = await queue(s, dummy, chain("third"), "c1")
            front = await queue(s, dummy, chain("front"), "c1", front=True)
            async with s.get(dummy.url + "/api/queue") as r:
                q = await r.json()
            async with s.get(dummy.url + "/api/prompt") as r:
                remaining = (await r.json())["exec_info"]["queue_remaining"]
            async with s.post(dummy.url + "/api/queue", json={"delete": [third]}) as r:
                assert r.status == 200
            async with s.get(dummy.url + "/api/queue") as r:
                after_delete = await r.json()
            gate.set()
            events += await read_until(ws, finished(second))
            async with s.get(dummy.url + "/api/history") as r:
                history = await r.json()
            async with s.get(dummy.url + "/api/history", params={"max_items": "1"}) as r:
                last = await r.json()
            await ws.close()
            return first, second, third, front, q, remaining, after_delete, events, history, last

    first, second, third, front, q, remaining, after_delete, events, history, last = run(scenario())
    assert [item[1] for item in q["queue_running"]] == [first]
    assert [item[1] for item in q["queue_pending"]] == [front, second, third]  # front=True goes first
    assert q["queue_pending"][0][0] < 0 and len(q["queue_pending"][1]) == 5
    assert remaining == 4
    assert [item[1] for item in after_delete["queue_pending"]] == [front, second]
    order = [d["prompt_id"] for k, d in events if k == "execution_start"]
    assert order == [first, front, second]
    successes = [d["prompt_id"] for k, d in events if k == "execution_success"]
    assert successes == [first, front, second]
    assert list(history) == [first, front, second] and third not in history
    assert list(last) == [second]


def test_queue_clear_history_delete_and_free(dummy):
    gate = threading.Event()
    Slow.on_step = lambda i: gate.wait(30)

    async def scenario():
        async with aiohttp.ClientSession() as s:
            ws = await connect(s, dummy, "c1")
            first = await queue(s, dummy, slow_chain("first"), "c1")
            await read_until(ws, lambda k, d: k == "executing" and d["node"] == "2")
            await queue(s, dummy, chain("a"), "c1")
            await queue(s, dummy, chain("b"), "c1")
            async with s.post(dummy.url + "/api/queue", json={"clear": True}) as r:
                assert r.status == 200
            async with s.get(dummy.url + "/queue") as r:  # the same route without /api
                cleared = await r.json()
            gate.set()
            await read_until(ws, finished(first))
            async with s.post(dummy.url + "/api/free", json={"unload_models": True, "free_memory": True}) as r:
                assert r.status == 200
            async with s.post(dummy.url + "/api/history", json={"delete": [first]}) as r:
                assert r.status == 200
            async with s.get(dummy.url + "/api/history") as r:
                history = await r.json()
            pid = await queue(s, dummy, chain("after free"), "c1")  # the cache was dropped: everything runs
            events = await read_until(ws, finished(pid))
            await ws.close()
            return cleared, history, events

    cleared, history, events = run(scenario())
    assert cleared["queue_pending"] == [] and len(cleared["queue_running"]) == 1
    assert history == {}
    assert events_of(events, "execution_cached")[0]["nodes"] == []


def test_validation_errors_are_400_with_node_errors(dummy):
    async def post(s, body, raw=None):
        kw = {"data": raw} if raw is not None else {"json": body}
        async with s.post(dummy.url + "/api/prompt", **kw) as r:
            return r.status, await r.json()

    async def scenario():
        async with aiohttp.ClientSession() as s:
            out = {}
            bad = chain()
            bad["1"]["inputs"]["value"] = 1000.0
            out["range"] = await post(s, {"prompt": bad})
            unknown = chain()
            unknown["9"] = {"class_type": "NoSuchNode", "inputs": {}}
            out["unknown"] = await post(s, {"prompt": unknown})
            out["no_prompt"] = await post(s, {"client_id": "x"})
            out["not_json"] = await post(s, None, raw=b"{not json")
            out["not_object"] = await post(s, {"prompt": [1, 2]})
            out["no_outputs"] = await post(s, {"prompt": {"1": {"class_type": "Number", "inputs": {"value": 1}}}})
            out["missing_link"] = await post(s, {"prompt": {"5": {"class_type": "Show",
                                                                  "inputs": {"value": ["8", 0], "label": "x"}}}})
            async with s.get(dummy.url + "/api/queue") as r:
                out["queue"] = await r.json()
            return out

    out = run(scenario())
    status, body = out["range"]
    assert status == 400
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert set(body["error"]) == {"type", "message", "details", "extra_info"}
    (err,) = body["node_errors"]["1"]["errors"]
    assert err["type"] == "value_bigger_than_max" and err["extra_info"]["input_name"] == "value"
    assert body["node_errors"]["1"]["class_type"] == "Number" and body["node_errors"]["1"]["dependent_outputs"] == ["5"]
    status, body = out["unknown"]
    assert status == 400 and body["error"]["type"] == "invalid_prompt" and "NoSuchNode" in body["error"]["message"]
    assert out["no_prompt"] == (400, {"error": {"type": "no_prompt", "message": "No prompt provided",
                                                "details": "No prompt provided", "extra_info": {}},
                                      "node_errors": {}})
    assert out["not_json"][0] == 400 and out["not_json"][1]["error"]["type"] == "invalid_json"
    assert out["not_object"][0] == 400
    assert out["no_outputs"][0] == 400 and out["no_outputs"][1]["error"]["type"] == "prompt_no_outputs"
    status, body = out["missing_link"]
    assert status == 400 and body["node_errors"]["5"]["errors"][0]["type"] == "linked_node_missing"
    assert out["queue"] == {"queue_running": [], "queue_pending": []}


MALFORMED = [
    {"prompt": {"1": "not a node"}},
    {"prompt": {"1": {"class_type": ["list"], "inputs": {}}}},
    {"prompt": {"1": {"class_type": "Show", "inputs": "x"}}},
    {"prompt": {"1": {"class_type": "Show", "inputs": {"value": ["1", 0], "label": "loop"}}}},
    {"prompt": {"1": {"class_type": "Show", "inputs": {"value": [None, None, None], "label": {}}}}},
    {"prompt": {"1": {"class_type": "Show", "inputs": {"value": ["2", 99], "label": 1}},
                "2": {"class_type": "Number", "inputs": {"value": "abc"}}}},
    {"prompt": {}},
    {"prompt": None},
    {"prompt": chain(), "number": "NaN"},
    {"prompt": chain(), "partial_execution_targets": "5"},
    {"prompt": chain(), "partial_execution_targets": ["77"]},
    {"prompt": chain(), "extra_data": {"extra_pnginfo": "x"}},
]


def test_malformed_prompts_are_refused_and_the_server_goes_on(dummy):
    async def scenario():
        async with aiohttp.ClientSession() as s:
            statuses = []
            for body in MALFORMED:
                async with s.post(dummy.url + "/api/prompt", data=json.dumps(body)) as r:
                    statuses.append((r.status, await r.json()))
            for raw in (b"", b"[]", b"null", b"\xff\xfe", b'{"prompt": {"1": ' * 50):
                async with s.post(dummy.url + "/api/prompt", data=raw) as r:
                    statuses.append((r.status, await r.json()))
            for path, raw in (("/api/queue", b"[1]"), ("/api/history", b"nope"), ("/api/free", b"3"),
                              ("/api/settings", b"[1]"), ("/api/interrupt", b"{bad")):
                async with s.post(dummy.url + path, data=raw) as r:
                    statuses.append((r.status, path))
            ws = await connect(s, dummy, "c1")
            pid = await queue(s, dummy, chain(), "c1")
            events = await read_until(ws, finished(pid))
            await ws.close()
            return statuses, events

    statuses, events = run(scenario())
    for status, body in statuses[:-5]:
        assert status == 400 and set(body) == {"error", "node_errors"}, body
    assert [s for s, _ in statuses[-5:]] == [400, 400, 400, 400, 400]  # interrupt too: a bad body interrupts nothing
    assert events_of(events, "execution_success")


def test_a_prompt_whose_input_vanished_before_it_ran_reports_an_error(dummy, dirs):
    Image.new("RGB", (8, 8), (1, 2, 3)).save(dirs["input"] / "gone.png")
    gate = threading.Event()
    Slow.on_step = lambda i: gate.wait(30)
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "gone.png"}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}

    async def scenario():
        async with aiohttp.ClientSession() as s:
            ws = await connect(s, dummy, "c1")
            first = await queue(s, dummy, slow_chain("first"), "c1")
            await read_until(ws, lambda k, d: k == "executing" and d["node"] == "2")
            pid = await queue(s, dummy, prompt, "c1")
            (dirs["input"] / "gone.png").unlink()
            gate.set()
            await read_until(ws, finished(first))
            events = await read_until(ws, finished(pid))
            await ws.close()
            return events

    events = run(scenario())
    (error,) = events_of(events, "execution_error")
    assert error["node_id"] == "1" and error["node_type"] == "LoadImage"
    assert "gone.png" in error["exception_message"]


def test_malformed_websocket_messages_never_stop_the_server(dummy):
    async def scenario():
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(dummy.url.replace("http", "ws") + "/ws?clientId=c1")
            assert (await ws.receive_json())["type"] == "status"
            for junk in ("not json", "[1, 2]", '"text"', "{}", '{"type": "feature_flags", "data": "x"}',
                         '{"type": "nonsense", "data": {"a": 1}}', "\x00" * 10):
                await ws.send_str(junk)
            await ws.send_bytes(b"\x00\x00\x00\x04garbage")
            pid = await queue(s, dummy, chain(), "c1")
            events = await read_until(ws, finished(pid))
            # a client that never sends feature_flags, and one without a client id
            anon = await s.ws_connect(dummy.url.replace("http", "ws") + "/ws")
            welcome = await anon.receive_json()
            await ws.close()
            await anon.close()
            async with s.get(dummy.url + "/api/system_stats") as r:
                stats = await r.json()
            return events, welcome, stats

    events, welcome, stats = run(scenario())
    assert events_of(events, "execution_success")
    assert len(welcome["data"]["sid"]) == 32 and welcome["data"]["status"]["exec_info"]["queue_remaining"] == 0
    assert stats["devices"][0]["type"] in ("cpu", "cuda") and "comfyui_version" in stats["system"]


# ---------------------------------------------------------------------------------------------- routes


def test_object_info_features_and_stubs(studio):
    async def scenario():
        async with aiohttp.ClientSession() as s:
            out = {}
            for path in ("/api/object_info", "/object_info", "/api/object_info/IPX2PSampler", "/api/features",
                         "/api/embeddings", "/api/i18n", "/api/experiment/models",
                         "/api/experiment/models/diffusers", "/internal/folder_paths", "/internal/logs",
                         "/internal/logs/raw", "/templates/index.json", "/api/users", "/api/models/diffusers",
                         "/api/object_info/Nope"):
                async with s.get(studio.url + path) as r:
                    assert r.status == 200, path
                    out[path] = await r.json()
            async with s.get(studio.url + "/api/experiment/models/nope") as r:
                out["bad kind"] = r.status
            async with s.get(studio.url + "/") as r:
                out["index"] = (r.status, r.content_type, (await r.text())[:15])
            return out

    out = run(scenario())
    info = out["/api/object_info"]
    assert out["/object_info"] == info
    assert {"IPX2PLoadModel", "IPX2PSampler", "IPX2PEditImage", "LoadImage", "SaveImage", "PreviewImage"} <= set(info)
    assert info["IPX2PSampler"]["python_module"] == f"custom_nodes.{PACK_NAME}"
    assert info["LoadImage"]["python_module"] == "nodes"
    assert "[diffusers] tiny-sd" in info["IPX2PLoadModel"]["input"]["required"]["model_name"][0]
    assert info["LoadImage"]["input"]["required"]["image"][0] == EXAMPLE_INPUTS  # copied at start
    assert list(out["/api/object_info/IPX2PSampler"]) == ["IPX2PSampler"] and out["/api/object_info/Nope"] == {}
    assert out["/api/features"]["supports_preview_metadata"] is True
    assert out["/api/features"]["max_upload_size"] == 100 * 1024 * 1024
    assert out["/api/embeddings"] == [] and out["/templates/index.json"][0]["title"] == PACK_NAME
    assert [f["name"] for f in out["/api/experiment/models"]] == ["checkpoints", "diffusers", "loras", "embeddings"]
    assert out["/api/experiment/models/diffusers"][0]["name"] == "tiny-sd"
    assert out["/api/models/diffusers"] == ["tiny-sd"]
    assert out["bad kind"] == 404
    assert out["/api/users"] == {"storage": "server", "migrated": False}
    assert out["index"] == (200, "text/html", "<!doctype html>")


def test_templates_and_extensions(dirs, tmp_path):
    web = tmp_path / "web"
    (web / "sub").mkdir(parents=True)
    (web / "compare.js").write_text("export const x = 1;\n")
    (web / "sub" / "pad.js").write_text("export const y = 2;\n")
    (web / "style.css").write_text("a {}\n")
    previous = get_host()
    with server_for(dirs, node_classes=NODES, web_dir=web) as server:
        async def scenario():
            async with aiohttp.ClientSession() as s:
                out = {}
                async with s.get(server.url + "/api/workflow_templates") as r:
                    out["templates"] = await r.json()
                async with s.get(server.url + f"/api/workflow_templates/{PACK_NAME}/ipx2p_sd15_staged.json") as r:
                    out["json"] = (r.status, await r.json(content_type=None))
                async with s.get(server.url + f"/api/workflow_templates/{PACK_NAME}/ipx2p_sd15_staged.jpg") as r:
                    out["jpg"] = (r.status, r.content_type)
                async with s.get(server.url + f"/api/workflow_templates/{PACK_NAME}/..%2F..%2Fpyproject.toml") as r:
                    out["escape"] = r.status
                async with s.get(server.url + "/templates/index.json") as r:
                    out["index"] = await r.json()
                for name in ("ipx2p_sd15_staged.json", "ipx2p_sd15_staged-1.jpg", "pyproject.toml",
                             "..%2Fpyproject.toml", "nope.json"):
                    async with s.get(server.url + f"/templates/{name}") as r:
                        out[f"/templates/{name}"] = (r.status, r.content_type)
                async with s.get(server.url + "/api/extensions") as r:
                    out["extensions"] = await r.json()
                async with s.get(server.url + f"/extensions/{PACK_NAME}/sub/pad.js") as r:
                    out["js"] = (r.status, r.content_type, r.headers.get("Cache-Control"), await r.text())
                return out

        out = run(scenario())
    set_host(previous)
    examples = sorted(name[:-5] for name in os.listdir(os.path.join(REPO, "example_workflows"))
                      if name.endswith(".json"))
    assert {"ipx2p_sd15_staged", "ipx2p_sd15_edit_image", "ipx2p_sdxl_edit", "ipx2p_cosxl_edit"} <= set(examples)
    # the examples are listed in /templates/index.json, with the title and one-line description each carries
    # (the pinned frontend would show a /workflow_templates entry by its file name); their files stay served there
    assert out["templates"] == {}
    (category,) = out["index"]
    assert (category["moduleName"], category["title"]) == ("default", PACK_NAME)
    assert [t["name"] for t in category["templates"]] == examples
    for t in category["templates"]:
        with open(os.path.join(REPO, "example_workflows", f"{t['name']}.json")) as f:
            info = json.load(f)["extra"]["ipx2p_template"]
        assert (t["title"], t["description"], t["mediaSubtype"]) == (info["title"], info["description"], "jpg")
        assert t["title"] != t["name"] and 20 < len(t["description"]) < 120 and "\n" not in t["description"]
    staged = next(t for t in category["templates"] if t["name"] == "ipx2p_sd15_staged")
    assert staged["title"] == "SD 1.5 \u00b7 staged nodes"
    assert out["/templates/ipx2p_sd15_staged.json"] == (200, "application/json")
    assert out["/templates/ipx2p_sd15_staged-1.jpg"] == (200, "image/jpeg")
    assert [out[f"/templates/{n}"][0] for n in ("pyproject.toml", "..%2Fpyproject.toml", "nope.json")] == [404] * 3
    with open(os.path.join(REPO, "example_workflows", "ipx2p_sd15_staged.json")) as f:
        assert out["json"] == (200, json.load(f))
    assert out["jpg"] == (200, "image/jpeg")
    assert out["escape"] in (403, 404)
    assert out["extensions"] == [f"/extensions/{PACK_NAME}/compare.js", f"/extensions/{PACK_NAME}/sub/pad.js"]
    assert out["js"][0] == 200 and out["js"][1] in ("application/javascript", "text/javascript")
    assert out["js"][2] == "no-cache" and "y = 2" in out["js"][3]


# ---------------------------------------------------------------------------------------------- user data


def test_userdata_save_list_move_delete_and_reload_after_restart(dirs):
    workflow = {"last_node_id": 1, "nodes": [], "links": [], "version": 0.4}
    previous = get_host()

    async def first_session(server):
        async with aiohttp.ClientSession() as s:
            out = {}
            url = server.url + "/api/userdata/workflows%2Fmy%20edit.json"
            async with s.post(url, params={"overwrite": "false", "full_info": "true"}, json=workflow) as r:
                out["save"] = (r.status, await r.json())
            async with s.post(url, params={"overwrite": "false"}, json=workflow) as r:
                out["again"] = r.status  # 409: exists
            async with s.post(server.url + "/api/userdata/workflows%2Fother.json", data=b"{}") as r:
                out["plain"] = (r.status, await r.json())
            async with s.get(server.url + "/api/userdata", params={"dir": "workflows", "recurse": "true",
                                                                   "split": "false", "full_info": "true"}) as r:
                out["list"] = await r.json()
            async with s.get(server.url + "/api/userdata", params={"dir": "workflows", "split": "true"}) as r:
                out["split"] = await r.json()
            async with s.get(server.url + "/api/userdata", params={"dir": "nothing"}) as r:
                out["missing dir"] = r.status
            async with s.post(server.url + "/api/userdata/workflows%2Fmy%20edit.json/move/"
                                           "workflows%2Fsub%2Frenamed.json", params={"overwrite": "false"}) as r:
                out["move"] = (r.status, await r.json())
            async with s.post(server.url + "/api/userdata/workflows%2Fother.json/move/"
                                           "workflows%2Fsub%2Frenamed.json", params={"overwrite": "false"}) as r:
                out["move onto"] = r.status
            async with s.post(server.url + "/api/settings", json={"Comfy.ColorPalette": "light", "A.B": 1}) as r:
                out["settings"] = r.status
            async with s.post(server.url + "/api/settings/Comfy.Locale", json="fr") as r:
                out["setting"] = r.status
            return out

    async def second_session(server):
        async with aiohttp.ClientSession() as s:
            out = {}
            async with s.get(server.url + "/api/userdata/workflows%2Fsub%2Frenamed.json") as r:
                out["get"] = (r.status, await r.json(content_type=None))
            async with s.get(server.url + "/api/userdata", params={"dir": "workflows", "recurse": "true"}) as r:
                out["list"] = await r.json()
            async with s.get(server.url + "/api/settings") as r:
                out["settings"] = await r.json()
            async with s.get(server.url + "/api/settings/Comfy.Locale") as r:
                out["locale"] = await r.json()
            async with s.get(server.url + "/api/users") as r:
                out["users"] = await r.json()
            async with s.delete(server.url + "/api/userdata/workflows%2Fsub%2Frenamed.json") as r:
                out["delete"] = r.status
            async with s.get(server.url + "/api/userdata/workflows%2Fsub%2Frenamed.json") as r:
                out["gone"] = r.status
            async with s.delete(server.url + "/userdata/workflows%2Fsub%2Frenamed.json") as r:
                out["delete again"] = r.status
            return out

    with server_for(dirs, node_classes=NODES) as server:
        one = run(first_session(server))
    with server_for(dirs, node_classes=NODES) as server:
        two = run(second_session(server))
    set_host(previous)

    status, info = one["save"]
    assert status == 200 and info["path"] == "workflows/my edit.json" and info["size"] > 0
    assert set(info) == {"path", "size", "modified", "created"}
    assert one["again"] == 409
    assert one["plain"] == (200, "workflows/other.json")
    assert sorted(f["path"] for f in one["list"]) == ["my edit.json", "other.json"]
    assert sorted(one["split"]) == [["my edit.json", "my edit.json"], ["other.json", "other.json"]]
    assert one["missing dir"] == 404
    assert one["move"] == (200, "workflows/sub/renamed.json")
    assert one["move onto"] == 409
    assert one["settings"] == 200 and one["setting"] == 200
    assert two["get"] == (200, workflow)
    assert sorted(two["list"]) == ["other.json", "sub/renamed.json"]
    assert two["settings"] == {"Comfy.ColorPalette": "light", "A.B": 1, "Comfy.Locale": "fr"}
    assert two["locale"] == "fr" and two["users"] == {"storage": "server", "migrated": True}
    assert two["delete"] == 204 and two["gone"] == 404 and two["delete again"] == 404
    assert json.loads((dirs["user"] / "default" / "comfy.settings.json").read_text())["A.B"] == 1


def test_cli_has_studio_command():
    args = build_parser().parse_args(["studio", "--port", "0", "--models", "m", "--user-dir", "u"])
    assert args.command == "studio" and args.host == "127.0.0.1" and args.port == 0 and args.user_dir == "u"
