"""The pack's frontend extensions (web/) inside a real ComfyUI, in Debian's chromium driven by Playwright.

test_browser.py checks them in our studio; this checks them where users run them: ComfyUI serves web/ under
/extensions/comfyui-ipx2p/, runs the nodes itself and serves the Compare node's files from its own temp folder. The
page boots with no console errors but ComfyUI's own; our three extensions are registered; the guidance pad sits on
the guidance nodes and dragging it sets both numbers; the Edit Image example, loaded with app.loadGraphData and pointed
at the tiny model, runs from the queue button with a Compare node that shows before/after from /view?type=temp; and
the first-graph fallback leaves ComfyUI's own default graph alone (its nodes exist there).

Runs only when IPX2P_COMFYUI_DIR points at a ComfyUI checkout (IPX2P_COMFYUI_PYTHON: its interpreter, with this
pack's requirements; see test_comfyui_compat.py, whose server fixture this reuses) and /usr/bin/chromium exists.

    IPX2P_COMFYUI_DIR=~/ComfyUI IPX2P_COMFYUI_PYTHON=~/ComfyUI/venv/bin/python pytest tests/test_comfyui_web.py
"""

from __future__ import annotations

import json
import os
import urllib.parse

import pytest
from PIL import Image

from examples_helpers import EXAMPLES_DIR, TINY_MODEL_FOR, load_example
from test_browser import CHROMIUM, PAD, Browser, drag, known_error, redraw, widget_value
from test_comfyui_compat import COMFY_DIR, comfy  # noqa: F401  (comfy: ComfyUI --cpu with the pack, tiny models)

pytestmark = [
    pytest.mark.skipif(not COMFY_DIR, reason="set IPX2P_COMFYUI_DIR to a ComfyUI checkout to run"),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
]

EXTENSIONS = {"comfyui-ipx2p.GuidancePad", "comfyui-ipx2p.Compare", "comfyui-ipx2p.DefaultWorkflow"}
EXAMPLE = "ipx2p_sd15_edit_image"  # nodes: 1 Load Model, 2 Load Image, 3 Edit Image, 4 Save Image, 5 Note
LOAD, SAVE = 1, 4

# The console errors that ComfyUI 0.3.64 with frontend 1.27.10 logs on every boot by itself: the same list, in a
# browser with a new profile, with --disable-all-custom-nodes as with this pack (checked on a live server).
#  - 404s for files and folders that are optional and absent: the user's stylesheet (asked for at two addresses), the
#    user's template list, and the listings of the workflows/ and subgraphs/ user folders before anything is saved;
#  - the frontend's own bug: "Comfy.Canvas.NavigationMode"'s onChange sets a setting that is not registered yet
#    (a TypeError thrown from addSetting).
# Everything else fails the tests.
COMFY_OWN_404 = {"/user.css", "/api/userdata/user.css", "/api/userdata/comfy.templates.json"}


def unexpected_errors(browser: Browser) -> list[dict]:
    return [e for e in browser.entries if not known_error(e, COMFY_OWN_404)]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = Browser(p, tmp_path_factory.mktemp("comfy_profile"))
        # the pack's own warnings ("[ipx2p] ...": an image that did not load, a failed callback) fail the tests too
        b.context.on("console", lambda m: m.type == "warning" and "[ipx2p]" in m.text and b.entries.append(
            {"kind": "ipx2p-warning", "text": m.text, "url": m.location.get("url", "")}))
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def page(comfy, browser):
    """ComfyUI's page for a returning user (the first-visit tutorial is done) with nothing to restore: the frontend
    loads its built-in default graph on boot. No minimap, as in test_browser.py (it would sit over the canvas)."""
    settings = comfy["base"] / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}))
    pg = browser.open(comfy["url"])
    pg.wait_for_function("() => app.extensionManager.workflow.activeWorkflow != null && app.graph.nodes.length > 0")
    return pg


def show_node(page, node_id, x=200, y=120, scale=0.8):
    """Scroll and zoom the canvas so that the node's top left corner is at (x, y) on the canvas."""
    page.evaluate("""([id, x, y, scale]) => {
        const n = app.graph.getNodeById(id);
        app.canvas.ds.scale = scale;
        app.canvas.ds.offset = [x / scale - n.pos[0], y / scale - n.pos[1]];
        app.canvas.setDirty(true, true);
    }""", [node_id, x, y, scale])
    redraw(page)


# ------------------------------------------------------------------------------------------------ tests


def test_page_boots_with_our_extensions_and_no_errors_of_ours(page, browser):
    names = page.evaluate("() => app.extensions.map(e => e.name)")
    assert EXTENSIONS <= set(names)
    # served by ComfyUI from the pack's WEB_DIRECTORY
    scripts = page.evaluate("async () => (await (await fetch('/extensions')).json())")
    assert {f"/extensions/comfyui-ipx2p/{f}" for f in
            ("ipx2p_compare.js", "ipx2p_guidance_pad.js", "ipx2p_default_workflow.js")} <= set(scripts)
    assert unexpected_errors(browser) == []


def test_default_workflow_extension_leaves_comfyuis_default_graph(page, browser):
    # ComfyUI has the default graph's nodes, so the graph loaded on boot is the frontend's own, not our example
    types = page.evaluate("() => app.graph.nodes.map(n => n.type)")
    assert {"CheckpointLoaderSimple", "KSampler", "CLIPTextEncode", "VAEDecode", "SaveImage"} <= set(types)
    assert not [t for t in types if t.startswith("IPX2P")]
    # and loading it again (what "Load Default" does) keeps it too, though our hook sees it and decides
    seen, types = page.evaluate("""async () => {
        const ext = app.extensions.find(e => e.name === 'comfyui-ipx2p.DefaultWorkflow');
        const hook = ext.beforeConfigureGraph;
        let seen = null;
        ext.beforeConfigureGraph = async function (graphData, ...rest) {
            seen = graphData.nodes.map(n => n.type);
            return await hook.call(this, graphData, ...rest);
        };
        try { await app.loadGraphData(); } finally { ext.beforeConfigureGraph = hook; }
        return [seen, app.graph.nodes.map(n => n.type)];
    }""")
    assert seen is not None and {"CheckpointLoaderSimple", "KSampler"} <= set(seen)
    assert sorted(types) == sorted(seen)
    assert page.locator(".p-dialog-mask").count() == 0
    assert unexpected_errors(browser) == []


def test_guidance_pad_on_a_new_edit_image_node_drags_both_values(page, browser):
    last = page.evaluate("""() => Object.fromEntries(['IPX2PSampler', 'IPX2PEditImage', 'IPX2PGuidanceSweep']
        .map(t => [t, LiteGraph.createNode(t).widgets.map(w => w.name).pop()]))""")
    assert last == {"IPX2PSampler": PAD, "IPX2PEditImage": PAD, "IPX2PGuidanceSweep": "max_batch"}

    # a node added to the graph, away from the default graph, in view
    nid = page.evaluate("""() => { const n = LiteGraph.createNode('IPX2PEditImage'); n.pos = [0, 1400];
        app.graph.add(n); return n.id; }""")
    show_node(page, nid)
    state = page.evaluate("""([id, pad]) => { const w = app.graph.getNodeById(id).widgets.find(w => w.name === pad);
        return {rect: w.last, point: w.point()}; }""", [nid, PAD])
    r = state["rect"]
    assert r and r["w"] > 200 and r["h"] > 80
    assert (widget_value(page, nid, "text_guidance"), widget_value(page, nid, "image_guidance")) == (7.5, 1.5)

    target = (r["x"] + r["w"] * 12 / 15, r["y"] + r["h"] * (1 - 2.5 / 4))
    drag(page, nid, tuple(state["point"]), target)
    assert widget_value(page, nid, "text_guidance") == pytest.approx(12.0, abs=0.15)
    assert widget_value(page, nid, "image_guidance") == pytest.approx(2.5, abs=0.1)
    # what ComfyUI gets queued carries the two numbers and nothing of the pad
    inputs = page.evaluate("async (id) => (await app.graphToPrompt()).output[String(id)].inputs", nid)
    assert inputs["text_guidance"] == widget_value(page, nid, "text_guidance") and PAD not in inputs
    page.evaluate("(id) => app.graph.remove(app.graph.getNodeById(id))", nid)
    assert unexpected_errors(browser) == []


def test_example_runs_in_comfyui_and_compare_shows_before_after(page, browser, comfy):
    example = load_example(EXAMPLE)
    tiny = TINY_MODEL_FOR[example["nodes"][0]["widgets_values"][0]]
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", example)
    assert page.evaluate("() => app.graph.nodes.map(n => n.type)") == \
        ["IPX2PLoadModel", "LoadImage", "IPX2PEditImage", "SaveImage", "Note"]
    # ComfyUI lists the tiny model among the loader's choices
    assert tiny in page.evaluate("(id) => app.graph.getNodeById(id).widgets.find(w => w.name === 'model_name')"
                                 ".options.values", LOAD)
    compare = page.evaluate("""([tiny]) => {
        const g = app.graph;
        const set = (id, name, v) => { g.getNodeById(id).widgets.find(w => w.name === name).value = v; };
        set(1, 'model_name', tiny); set(1, 'device', 'cpu');
        set(3, 'steps', 3); set(3, 'resize', 'fit'); set(3, 'size', 64);
        const c = LiteGraph.createNode('IPX2PCompare');
        g.add(c);
        c.pos = [1220, 60]; c.size = [420, 420];
        g.getNodeById(2).connect(0, c, 0);  // before: the Load Image
        g.getNodeById(3).connect(0, c, 1);  // after: the Edit Image
        app.canvas.ds.scale = 0.82; app.canvas.ds.offset = [30, 30];
        window.__ipx2p = [];
        for (const type of ['execution_start', 'executed', 'execution_success', 'execution_error'])
            comfyAPI.api.api.addEventListener(type, (e) => window.__ipx2p.push([type, e.detail]));
        app.canvas.setDirty(true, true);
        return c.id;
    }""", [tiny])
    assert page.evaluate("(id) => app.graph.getNodeById(id).widgets.map(w => w.name)", compare) == ["ipx2p_compare"]

    page.click("[data-testid=queue-button]")
    page.wait_for_function("""([save, id]) => {
        if (window.__ipx2p.some(([type]) => type === 'execution_error')) return true;
        const img = app.graph.getNodeById(save).imgs?.[0];
        const view = app.graph.getNodeById(id).widgets.find(w => w.name === 'ipx2p_compare');
        return img?.complete && img.naturalWidth > 0 && view.ready();
    }""", arg=[SAVE, compare], timeout=300_000)
    events = page.evaluate("() => window.__ipx2p")
    assert not [d for k, d in events if k == "execution_error"]
    assert [k for k, _ in events][-1] == "execution_success"

    # the output image: written by ComfyUI to its output folder and shown on Save Image
    shown = page.evaluate("(id) => { const img = app.graph.getNodeById(id).imgs[0]; "
                          "return [img.src, img.naturalWidth, img.naturalHeight]; }", SAVE)
    src = urllib.parse.urlsplit(shown[0])
    query = urllib.parse.parse_qs(src.query)
    assert src.path == "/api/view" and query["type"] == ["output"]
    written = comfy["base"] / "output" / query.get("subfolder", [""])[0] / query["filename"][0]
    assert written.is_file()
    photo = EXAMPLES_DIR / "input" / "ipx2p_example.png"
    assert shown[1:] == list(Image.open(written).size) == list(Image.open(photo).size)  # restore_size: the photo's

    # the Compare node's widget: one pair, both loaded from ComfyUI's temp folder through /view
    view = page.evaluate("""(id) => {
        const w = app.graph.getNodeById(id).widgets.find(w => w.name === 'ipx2p_compare');
        return {ready: w.ready(), pairs: w.pairs.length, before: w.pairs[0].before.src, after: w.pairs[0].after.src};
    }""", compare)
    assert view["ready"] and view["pairs"] == 1
    for key in ("before", "after"):
        url = urllib.parse.urlsplit(view[key])
        q = urllib.parse.parse_qs(url.query)
        assert url.path == "/api/view" and q["type"] == ["temp"], view[key]
        assert q["filename"][0].endswith(f"_{key}.png")
        assert (comfy["base"] / "temp" / q.get("subfolder", [""])[0] / q["filename"][0]).is_file()
    executed = [d for k, d in events if k == "executed" and str(d["node"]) == str(compare)]
    assert executed and {"ipx2p_before", "ipx2p_after"} <= set(executed[0]["output"])

    # and it draws: the divider follows a drag
    redraw(page)
    r = page.evaluate("(id) => app.graph.getNodeById(id).widgets.find(w => w.name === 'ipx2p_compare').imageRect",
                      compare)
    assert r and r["w"] > 100
    middle = r["y"] + r["h"] / 2
    drag(page, compare, (r["x"] + r["w"] * 0.5, middle), (r["x"] + r["w"] * 0.2, middle))
    split = page.evaluate("(id) => app.graph.getNodeById(id).widgets.find(w => w.name === 'ipx2p_compare').split",
                          compare)
    assert split == pytest.approx(0.2, abs=0.02)
    assert unexpected_errors(browser) == []
