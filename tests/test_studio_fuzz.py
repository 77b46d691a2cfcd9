"""Property-based fuzzing (hypothesis) of every JSON route of the studio and of the UI → API workflow converter:
no input yields a 500 or an uncaught exception, and the server still answers afterwards (issue 11, point 7).

The example counts keep CI time bounded (under a minute on one idle core: 800 requests, 800 workflows); set IPX2P_FUZZ_EXAMPLES to run more.
Each test prints how many cases it ran and the status codes it saw."""

from __future__ import annotations

import collections
import http.client
import json
import logging
import os
import time
import urllib.parse

import pytest
from dummy_nodes import NODES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from studio_helpers import studio_in

from ipx2p_standalone.runner import Runner
from ipx2p_standalone.workflow import WorkflowFormatError, ui_to_api

ROUTE_EXAMPLES = int(os.environ.get("IPX2P_FUZZ_EXAMPLES", "800"))
CONVERTER_EXAMPLES = int(os.environ.get("IPX2P_FUZZ_EXAMPLES", "800"))
FUZZ = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck), derandomize=True)

# ---------------------------------------------------------------------------------------------- strategies

text = st.text(max_size=12)
json_leaf = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False) | text
             | st.sampled_from(["", "..", "../secret", "%2e%2e", "\x00", "a" * 300, "NaN", "1e999", "-1"]))
json_any = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(text, c, max_size=4),
                        max_leaves=16)
node_types = st.sampled_from([n for n in NODES if n != "Slow"] + ["LoadImage", "PreviewImage", "SaveImage",
                                                                   "Nope", "Reroute", "PrimitiveNode"])
input_names = st.sampled_from(["value", "a", "b", "x", "label", "images", "image", "text", "seed", "width", "color",
                               "factor", "filename_prefix"]) | text
node_ids = st.sampled_from(["1", "2", "3", "5"]) | st.integers(0, 6) | text
link_or_value = st.tuples(node_ids, st.integers(-1, 3)).map(list) | json_any
api_prompt = st.dictionaries(node_ids.map(str), st.fixed_dictionaries(
    {"class_type": node_types | json_any, "inputs": st.dictionaries(input_names, link_or_value, max_size=4)
     | json_any}), max_size=5)

slot = st.fixed_dictionaries(
    {"name": input_names, "type": st.sampled_from(["NUMBER", "IMAGE", "*", "STRING", ""]) | json_any,
     "link": st.none() | st.integers(0, 6) | json_any},
    optional={"widget": st.fixed_dictionaries({"name": text}) | json_any})
ui_node = st.fixed_dictionaries(
    {"id": st.integers(0, 6) | json_any, "type": node_types | json_any},
    optional={"inputs": st.lists(slot, max_size=3) | json_any,
              "outputs": st.lists(st.fixed_dictionaries({"name": text, "type": st.sampled_from(["NUMBER", "IMAGE"]),
                                                         "links": st.lists(st.integers(0, 6), max_size=2)}),
                                  max_size=2) | json_any,
              "widgets_values": st.lists(json_leaf, max_size=4) | json_any,
              "mode": st.sampled_from([0, 2, 4]) | json_any, "title": json_any,
              "properties": st.fixed_dictionaries({"Node name for S&R": text}) | json_any})
ui_link = (st.lists(st.integers(0, 6), min_size=5, max_size=5).map(lambda v: v + ["NUMBER"])
           | st.lists(json_any, max_size=7)
           | st.fixed_dictionaries({"id": st.integers(0, 6), "origin_id": st.integers(0, 6),
                                    "origin_slot": st.integers(0, 2), "target_id": st.integers(0, 6),
                                    "target_slot": st.integers(0, 2), "type": st.just("NUMBER")})
           | st.dictionaries(text, json_any, max_size=4))
ui_workflow = st.fixed_dictionaries(
    {"nodes": st.lists(ui_node, max_size=5)},
    optional={"links": st.lists(ui_link, max_size=5) | json_any, "extra": json_any, "definitions": json_any,
              "version": json_any, "groups": json_any})

prompt_body = st.fixed_dictionaries(
    {"prompt": api_prompt | ui_workflow | json_any},
    optional={"client_id": json_any, "prompt_id": json_any, "number": json_any, "front": json_any,
              "extra_data": st.fixed_dictionaries({}, optional={"extra_pnginfo": json_any, "client_id": json_any})
              | json_any, "partial_execution_targets": st.lists(node_ids, max_size=3) | json_any})
queue_body = st.fixed_dictionaries({}, optional={"clear": json_any, "delete": st.lists(text, max_size=3) | json_any})
free_body = st.fixed_dictionaries({}, optional={"unload_models": json_any, "free_memory": json_any})
body = json_any.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=64) | st.sampled_from(
    [b"", b"{", b"[" * 3000, b"\xff\xfe", b'{"a": ' * 200, b"null", b"1e999999", b"NaN"])


def encoded(strategy):
    return strategy.map(lambda v: json.dumps(v).encode())


segment = text | st.sampled_from(["..", "%2e%2e", "a/b", "comfy.settings.json", "workflows%2Fx.json"])
query = st.dictionaries(st.sampled_from(["filename", "type", "subfolder", "preview", "channel", "max_items",
                                         "offset", "dir", "path", "recurse", "full_info", "split", "overwrite"]),
                        text | st.sampled_from(["webp;²", "jpeg;0", "a", "output", "../..", "-1", "99999999999999"]),
                        max_size=4)

POSTS = {  # path → body strategy
    "/api/prompt": encoded(prompt_body) | body,
    "/api/queue": encoded(queue_body) | body,
    "/api/history": encoded(queue_body) | body,
    "/api/free": encoded(free_body) | body,
    "/api/interrupt": encoded(st.fixed_dictionaries({}, optional={"prompt_id": json_any})) | body,
    "/api/settings": body,
    "/api/users": body,
}
GETS = ["/api/view", "/api/history", "/api/queue", "/api/prompt", "/api/userdata", "/api/v2/userdata",
        "/internal/logs", "/internal/logs/raw", "/api/embeddings", "/api/system_stats"]
GETS_WITH_SEGMENT = ["/api/history/{}", "/api/object_info/{}", "/api/models/{}", "/api/experiment/models/{}",
                     "/api/view_metadata/{}", "/internal/files/{}", "/api/settings/{}", "/api/userdata/{}"]


def quoted(seg: str) -> str:
    return urllib.parse.quote(seg, safe="%") or "x"


request = st.one_of(
    *[st.tuples(st.just("POST"), st.just(path), strategy) for path, strategy in POSTS.items()],
    st.tuples(st.just("POST"), segment.map(lambda s: f"/api/settings/{quoted(s)}"), body),
    st.tuples(st.just("POST"), segment.map(lambda s: f"/api/userdata/{quoted(s)}"), st.binary(max_size=32)),
    st.tuples(st.just("POST"), st.tuples(segment, segment).map(
        lambda p: f"/api/userdata/{quoted(p[0])}/move/{quoted(p[1])}"), st.just(b"")),
    st.tuples(st.just("DELETE"), segment.map(lambda s: f"/api/userdata/{quoted(s)}"), st.just(b"")),
    st.tuples(st.just("PATCH"), st.just("/internal/logs/subscribe"),
              encoded(st.fixed_dictionaries({}, optional={"clientId": json_any, "enabled": json_any})) | body),
    st.tuples(st.just("GET"), st.tuples(st.sampled_from(GETS), query).map(
        lambda p: p[0] + ("?" + urllib.parse.urlencode(p[1]) if p[1] else "")), st.just(b"")),
    st.tuples(st.just("GET"), st.tuples(st.sampled_from(GETS_WITH_SEGMENT), segment, query).map(
        lambda p: p[0].format(quoted(p[1])) + ("?" + urllib.parse.urlencode(p[2]) if p[2] else "")),
        st.just(b"")),
)

# ---------------------------------------------------------------------------------------------- the tests


@pytest.fixture()
def dummy(tmp_path):
    with studio_in(tmp_path, node_classes=NODES) as server:
        yield server


class _Errors(logging.Handler):
    """Uncaught exceptions: aiohttp's error records (an exception escaped a handler) and any record with a traceback
    (the studio's worker logs a runner bug that way). An unreadable settings file is logged as an error without a
    traceback: the fuzzer can write one through /userdata, and the studio then starts from defaults, as it should."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.records: list[str] = []

    def emit(self, record):
        if record.exc_info or record.name.startswith("aiohttp"):
            self.records.append(f"{record.name}: {record.getMessage()[:300]}")


def test_no_request_to_any_route_yields_a_500(dummy):
    statuses: collections.Counter = collections.Counter()
    failures: list = []
    errors = _Errors()
    loggers = [logging.getLogger(n) for n in ("aiohttp", "ipx2p_standalone.studio")]
    for logger in loggers:
        logger.addHandler(errors)
    conn = http.client.HTTPConnection("127.0.0.1", dummy.port, timeout=30)

    @settings(FUZZ, max_examples=ROUTE_EXAMPLES)
    @given(request)
    def fuzz(req):
        nonlocal conn
        method, path, data = req
        try:
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
        except (http.client.HTTPException, OSError):  # the server closed a kept-alive connection: one retry
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", dummy.port, timeout=30)
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
        statuses[response.status] += 1
        if response.status >= 500:
            failures.append((method, path, data[:200], response.status))
        assert response.status < 500, (method, path, data[:200])

    started = time.perf_counter()
    try:
        fuzz()
    finally:
        for logger in loggers:
            logger.removeHandler(errors)
    conn.request("GET", "/api/system_stats")
    alive = conn.getresponse()
    alive.read()
    conn.close()
    print(f"route fuzzing: {sum(statuses.values())} requests in {time.perf_counter() - started:.1f} s, "
          f"statuses {dict(sorted(statuses.items()))}")
    assert failures == [] and errors.records == []
    assert alive.status == 200
    assert sum(statuses.values()) >= ROUTE_EXAMPLES and statuses[200] > 0 and statuses[400] > 0


def test_the_workflow_converter_and_prepare_never_raise_anything_unexpected():
    runner = Runner(node_classes=NODES)
    outcomes: collections.Counter = collections.Counter()

    @settings(FUZZ, max_examples=CONVERTER_EXAMPLES)
    @given(ui_workflow | api_prompt | json_any)
    def fuzz(workflow):
        try:
            ui_to_api(workflow, NODES)
            outcomes["converted"] += 1
        except WorkflowFormatError as exc:
            assert str(exc).endswith((".", "again.")), str(exc)
            outcomes["refused"] += 1
        checked = runner.validate(workflow)  # documented never to raise
        outcomes["valid" if checked.ok else "invalid"] += 1
        assert checked.ok or isinstance(checked.error, dict) and checked.error.get("message"), checked.error

    started = time.perf_counter()
    fuzz()
    print(f"converter fuzzing: {CONVERTER_EXAMPLES} workflows in {time.perf_counter() - started:.1f} s, "
          f"{dict(outcomes)}")
    assert outcomes["converted"] > 0 and outcomes["refused"] > 0 and outcomes["invalid"] > 0


@pytest.mark.parametrize("workflow, message", [
    ({"nodes": [], "extra": "x"}, "'extra' must be an object, not str 'x'."),
    ({"nodes": [], "extra": {"groupNodes": [1]}}, "'extra.groupNodes' must be an object, not list '[1]'."),
    ({"nodes": [], "links": 3}, "'links' must be a list, not int '3'."),
    ({"nodes": [], "links": [[1, 2, [0], 3, 0, "NUMBER"]]},
     "Link 0 must be [id, from node, from slot, to node, to slot, type] with integer slots, not list "
     "\"[1, 2, [0], 3, 0, 'NUMBER']\"."),
    ({"nodes": ["Show"]}, "Node 0 in 'nodes' must be an object, not str 'Show'."),
    ({"nodes": [{"id": 1, "type": {"a": 1}}]},
     "Node 0's id and type must be strings or numbers, not list \"[1, {'a': 1}]\"."),
    ({"nodes": [{"id": 1, "type": "Show", "inputs": "value"}]}, "Node 1's 'inputs' must be a list, not str 'value'."),
    ({"nodes": [{"id": 1, "type": "Show", "inputs": ["value"]}]},
     "Node 1's input or output must be an object {name, type, link}, not str 'value'."),
    ({"nodes": [{"id": 1, "type": "PrimitiveNode", "widgets_values": {"v": 1}}]},
     "Node 1's 'widgets_values' must be a list, not dict \"{'v': 1}\"."),
])
def test_a_ui_workflow_of_the_wrong_shape_is_refused_naming_the_part(workflow, message):
    with pytest.raises(WorkflowFormatError) as err:
        ui_to_api(workflow, NODES)
    assert str(err.value) == message
