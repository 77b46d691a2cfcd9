"""The official frontend in chromium and ``ui_to_api`` queue the same prompt for subgraph workflows.

Each case of tools/build_subgraph_fixtures.py is built again in the studio's frontend (the shipped example opened,
parts turned into subgraphs by the frontend's own ``convertToSubgraph``, nested, instanced, promoted widgets set,
nodes bypassed or muted); the frontend's ``app.graphToPrompt()`` gives the workflow and its prompt, and
``ui_to_api`` on that workflow must give the same ``output`` (ids, class_type, inputs, _meta). The fixture saved
for the case must still hold the same prompt (its ids are the same; the frontend made it the same way). Legacy
group-node workflows (tests/data/group_nodes) are opened in the live frontend the same way.
Needs /usr/bin/chromium (see tests/test_browser.py).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from examples_helpers import load_example
from test_browser import CHROMIUM, Browser, start_studio
from test_subgraphs import CASES, SUBGRAPH_EXAMPLE, as_json, load_case

from ipx2p_nodes.host import get_host, set_host
from ipx2p_standalone.group_nodes import migrate_group_nodes
from ipx2p_standalone.workflow import ui_to_api

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from build_group_node_fixtures import CURRENT as LOAD_AND_QUEUE  # noqa: E402
from build_subgraph_fixtures import BUILD, CASES as BUILDS, EXAMPLE_CASE, NOTE  # noqa: E402
from test_group_nodes import CASES as GROUP_CASES, intended, load_case as load_group_case  # noqa: E402


@pytest.fixture(scope="module")
def page(tmp_path_factory, tiny_sd):
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("subgraphs_browser")
    d = {k: root / k for k in ("models", "input", "output", "user", "temp", "profile")}
    (d["models"] / "diffusers").mkdir(parents=True)
    os.symlink(tiny_sd["folder"], d["models"] / "diffusers" / "tiny-sd")
    (d["user"] / "default").mkdir(parents=True)
    (d["user"] / "default" / "comfy.settings.json").write_text(json.dumps({"Comfy.Minimap.Visible": False}))
    previous = get_host()
    server = start_studio(d)
    try:
        with sync_playwright() as p:
            browser = Browser(p, d["profile"])
            try:
                pg = browser.open(server.url)
                yield pg
            finally:
                browser.close()
    finally:
        server.stop()
        set_host(previous)


@pytest.mark.parametrize("case", CASES)
def test_frontend_and_ui_to_api_queue_the_same_prompt(page, case):
    example, code = BUILDS[case]
    made = page.evaluate(BUILD, [load_example(example), code])
    classes, names = _node_classes()
    assert as_json(ui_to_api(made["workflow"], classes, names).prompt) == made["output"]
    assert made["output"] == load_case(case)["output"]


def test_subgraph_example_queues_the_same_prompt(page):
    example, code = EXAMPLE_CASE
    made = page.evaluate(BUILD, [load_example(example), f"const NOTE = {json.dumps(NOTE)};" + code])
    classes, names = _node_classes()
    assert sorted(made["output"]) == ["1", "2", "7", "9:3", "9:4", "9:5", "9:6"]
    assert as_json(ui_to_api(made["workflow"], classes, names).prompt) == made["output"]
    shipped = load_example(SUBGRAPH_EXAMPLE)
    assert as_json(ui_to_api(shipped, classes, names).prompt) == made["output"]


@pytest.mark.parametrize("case", GROUP_CASES)
def test_legacy_group_nodes_queue_what_the_frontend_queues(page, case):
    """A group-node workflow (made in frontend 1.27.10) opened in the live frontend, which migrates its group nodes
    to subgraphs: ``ui_to_api`` gives the prompt it queues (with the saved values); and the workflow
    ``migrate_group_nodes`` writes opens in the frontend as a subgraph workflow that queues exactly that prompt."""
    data = load_group_case(case)
    classes, names = _node_classes()
    got = page.evaluate(LOAD_AND_QUEUE, [data["workflow"]])
    assert got["errors"] == []
    assert got["output"] == data["output"]
    # the same ids, links and titles; widget values as the group node showed them (where the frontend's newer
    # widget order reads them wrongly, see tests/test_group_nodes.py)
    assert as_json(ui_to_api(data["workflow"], classes, names).prompt) == intended(data)
    migrated = page.evaluate(LOAD_AND_QUEUE, [migrate_group_nodes(data["workflow"], classes)])
    assert migrated["errors"] == [] and migrated["output"] == intended(data)


def _node_classes():
    """The node classes and display names the studio and ``ipx2p run`` convert with."""
    from ipx2p_standalone.runner import Runner

    r = Runner()
    return r.node_classes, r.display_names
