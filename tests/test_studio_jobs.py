"""The jobs API the 1.58 frontend's queue and history panels read (/jobs, /jobs/{id}, cancel), in the shapes of its
zod schemas, and the subgraph-blueprint and node-replacement stubs."""

from __future__ import annotations

import threading

import aiohttp
import pytest
from dummy_nodes import NODES, Slow
from studio_helpers import connect, finished, queue, read_until, run

from ipx2p_nodes.host import get_host, set_host
from ipx2p_standalone.studio import StudioServer
from ipx2p_standalone.studio.app import CLOUD_FEATURES_OFF

LIST_KEYS = {"id", "status", "create_time", "execution_start_time", "execution_end_time", "preview_output",
             "outputs_count", "previewable_outputs_count", "execution_error", "workflow_id"}


@pytest.fixture()
def dummy(tmp_path):
    previous = get_host()
    Slow.on_step = None
    with StudioServer(models_dir=tmp_path / "models", input_dir=tmp_path / "input", output_dir=tmp_path / "output",
                      user_dir=tmp_path / "user", temp_dir=tmp_path / "temp", device="cpu",
                      node_classes=NODES) as server:
        yield server
    Slow.on_step = None
    set_host(previous)


def chain(label: str, value: float = 3.0) -> dict:
    return {"1": {"class_type": "Number", "inputs": {"value": value}},
            "5": {"class_type": "Show", "inputs": {"value": ["1", 0], "label": label}}}


def slow_chain(label: str) -> dict:
    return {"1": {"class_type": "Number", "inputs": {"value": 1.0}},
            "2": {"class_type": "Slow", "inputs": {"x": ["1", 0], "steps": 3}},
            "3": {"class_type": "Show", "inputs": {"value": ["2", 0], "label": label}}}


def failing() -> dict:
    return {"1": {"class_type": "Number", "inputs": {"value": 2.0}},
            "2": {"class_type": "Fail", "inputs": {"x": ["1", 0]}},
            "3": {"class_type": "Show", "inputs": {"value": ["2", 0], "label": "never"}}}


async def get(s, server, path, **params):
    async with s.get(server.url + path, params=params) as r:
        return r.status, await r.json()


async def post(s, server, path, body):
    async with s.post(server.url + path, json=body) as r:
        return r.status, await r.json()


def test_jobs_list_detail_cancel_and_history(dummy):
    gate = threading.Event()
    Slow.on_step = lambda i: gate.wait(30)
    workflow = {"id": "wf-1", "nodes": [], "links": []}

    async def scenario():
        out = {}
        async with aiohttp.ClientSession() as s:
            ws = await connect(s, dummy, "c1")
            running = await queue(s, dummy, slow_chain("slow"), "c1",
                                  extra_data={"extra_pnginfo": {"workflow": workflow}})
            await read_until(ws, lambda k, d: k == "executing" and d["node"] == "2")
            doomed = await queue(s, dummy, chain("doomed"), "c1")
            ok = await queue(s, dummy, chain("ok"), "c1")
            bad = await queue(s, dummy, failing(), "c1")
            out["queued"] = await get(s, dummy, "/api/jobs", status="in_progress,pending")
            out["pending_detail"] = await get(s, dummy, f"/api/jobs/{ok}")
            out["cancel_one"] = await post(s, dummy, f"/api/jobs/{doomed}/cancel", {})
            out["cancel_running"] = await post(s, dummy, "/api/jobs/cancel", {"job_ids": [running, "nope"]})
            gate.set()
            await read_until(ws, finished(bad))
            out["history"] = await get(s, dummy, "/api/jobs", status="completed,failed,cancelled")
            out["page"] = await get(s, dummy, "/api/jobs", limit="1", offset="1", sort_order="asc")
            out["by_workflow"] = await get(s, dummy, "/jobs", workflow_id="wf-1")
            out["detail"] = await get(s, dummy, f"/api/jobs/{ok}")
            out["missing"] = await get(s, dummy, "/api/jobs/nope")
            out["cancel_done"] = await post(s, dummy, f"/api/jobs/{ok}/cancel", {})
            await ws.close()
        return (running, doomed, ok, bad), out

    (running, doomed, ok, bad), out = run(scenario())

    status, queued = out["queued"]
    assert status == 200
    assert {j["id"]: j["status"] for j in queued["jobs"]} == {running: "in_progress", doomed: "pending",
                                                               ok: "pending", bad: "pending"}
    assert all(set(j) == LIST_KEYS for j in queued["jobs"])
    assert queued["pagination"] == {"offset": 0, "limit": 200, "total": 4, "has_more": False}
    running_job = next(j for j in queued["jobs"] if j["id"] == running)
    assert running_job["workflow_id"] == "wf-1" and isinstance(running_job["create_time"], int)

    status, detail = out["pending_detail"]
    assert status == 200 and detail["status"] == "pending"
    assert detail["workflow"]["prompt"] == chain("ok") and detail["outputs"] == {}

    assert out["cancel_one"] == (200, {"cancelled": [doomed]})
    assert out["cancel_running"] == (200, {"cancelled": [running]})  # an unknown id is simply not cancelled

    status, history = out["history"]
    jobs = {j["id"]: j for j in history["jobs"]}
    assert set(jobs) == {running, ok, bad}  # the cancelled pending job never ran: it left the queue
    assert jobs[running]["status"] == "cancelled" and jobs[ok]["status"] == "completed"
    assert jobs[bad]["status"] == "failed"
    error = jobs[bad]["execution_error"]
    assert error["node_id"] == "2" and error["node_type"] == "Fail"
    assert error["exception_message"].startswith("cannot handle 2.0")
    assert jobs[ok]["outputs_count"] == 1 and jobs[ok]["previewable_outputs_count"] == 0
    assert jobs[ok]["preview_output"] is None  # text is not previewable
    assert jobs[ok]["execution_start_time"] <= jobs[ok]["execution_end_time"]
    times = [j["create_time"] for j in history["jobs"]]
    assert times == sorted(times, reverse=True)  # newest first, as the history panel shows them

    status, page = out["page"]
    assert page["pagination"] == {"offset": 1, "limit": 1, "total": 3, "has_more": True}
    assert out["by_workflow"][1]["jobs"][0]["id"] == running and out["by_workflow"][1]["pagination"]["total"] == 1

    status, detail = out["detail"]
    assert detail["status"] == "completed" and detail["outputs"] == {"5": {"text": ["ok=3.0"]}}
    assert detail["workflow"]["prompt"] == chain("ok")
    assert detail["execution_status"]["status_str"] == "success"
    assert out["missing"] == (404, {"error": "no job 'nope' in the queue or the history"})
    assert out["cancel_done"] == (200, {"cancelled": []})  # finished: nothing to cancel


def test_jobs_preview_output_of_an_image(dummy):
    queue_ = dummy.studio.queue
    item = queue_.put(0, "p1", {}, {}, [])
    queue_.take(0)
    image = {"filename": "a.png", "subfolder": "", "type": "output"}
    queue_.done(item, {"prompt": item.as_list(), "outputs": {"9": {"images": [image, image]}, "3": {"text": ["x"]}},
                       "status": {"status_str": "success", "completed": True, "messages": []}, "meta": {}})
    from ipx2p_standalone.studio.jobs import list_jobs

    (job,) = list_jobs(queue_, {})["jobs"]
    assert job["preview_output"] == {**image, "nodeId": "9", "mediaType": "images"}
    assert (job["outputs_count"], job["previewable_outputs_count"]) == (3, 2)


@pytest.mark.parametrize("query, message", [
    ({"status": "done"}, "status 'done' is not a job status; use any of pending, in_progress, completed, failed, "
                         "cancelled"),
    ({"limit": "0"}, "limit must be an integer >= 1, got '0'"),
    ({"offset": "-1"}, "offset must be an integer >= 0, got '-1'"),
    ({"limit": "many"}, "limit must be an integer >= 1, got 'many'"),
    ({"sort_by": "name"}, "sort_by must be one of created_at, execution_duration, got 'name'"),
    ({"sort_order": "up"}, "sort_order must be asc or desc, got 'up'"),
])
def test_bad_jobs_queries_are_400_with_the_reason(dummy, query, message):
    async def scenario():
        async with aiohttp.ClientSession() as s:
            return await get(s, dummy, "/api/jobs", **query)

    assert run(scenario()) == (400, {"error": message})


@pytest.mark.parametrize("body", [{}, {"job_ids": []}, {"job_ids": "a"}, {"job_ids": [1]},
                                  {"job_ids": ["a"] * 101}])
def test_bad_cancel_bodies_are_400(dummy, body):
    async def scenario():
        async with aiohttp.ClientSession() as s:
            return await post(s, dummy, "/api/jobs/cancel", body)

    assert run(scenario()) == (400, {"error": "expected {job_ids: [1 to 100 job id strings]}"})


def test_subgraph_blueprints_node_replacements_and_cloud_flags(dummy):
    async def scenario():
        async with aiohttp.ClientSession() as s:
            return (await get(s, dummy, "/api/global_subgraphs"), await get(s, dummy, "/api/global_subgraphs/x"),
                    await get(s, dummy, "/node_replacements"), await get(s, dummy, "/api/features"))

    blueprints, one, replacements, (status, features) = run(scenario())
    assert blueprints == (200, {}) and replacements == (200, {})
    assert one == (404, {"error": "no global subgraph 'x'"})
    assert status == 200 and features["supports_preview_metadata"] is True and features["node_replacements"] is True
    for flag in ("assets", "user_secrets_enabled", "deploy_to_cloud", "comfyhub_upload_enabled",
                 "agent-in-app-experience", "extension.manager.supports_v4"):
        assert features[flag] is False, flag
    assert all(features[k] is False for k in CLOUD_FEATURES_OFF)
