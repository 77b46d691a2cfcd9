"""The studio in a real browser: Debian's chromium, headless, driven by Playwright for Python.

The official ComfyUI frontend boots against our server with no console errors; our nodes are in the node library;
an example workflow opens from the template browser and runs on the tiny model with progress and an output image;
the before/after comparison and the guidance pad (web/) render and change values, in the classic canvas and in
Modern Node Design (Nodes 2.0); a saved workflow opens again after the server restarts; a subgraph made in the UI
runs. The pinned frontend is comfyui-frontend-package 1.58.1 (tests/test_comfyui_web.py covers ComfyUI's 1.27.10). Waits are on selectors and on the app's state (``window.app``), never on fixed sleeps.

Needs /usr/bin/chromium (``apt-get install chromium``; .ci/run installs it). Playwright never downloads a browser
here. ``IPX2P_STUDIO_SCREENSHOT=docs/studio.png`` also saves the README's screenshot.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ipx2p_nodes
from ipx2p_core import defaults
from ipx2p_nodes.host import get_host, set_host
from ipx2p_standalone.studio import PACK_NAME, StudioServer

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1700, "height": 1000}
TIMEOUT_MS = 60_000
EXAMPLE = "ipx2p_sd15_edit_image"  # nodes: 1 Load Model, 2 Load Image, 3 Edit Image, 4 Save Image, 5 Note
EDIT, SAVE = 3, 4
PAD = "ipx2p_guidance_pad"

# Console errors the frontend logs against ComfyUI itself: files that are optional and absent (404; 1.58 also lists a
# `subgraphs` folder, without the slash 1.27.10 used), and 1.27.10's own bug on every boot where
# "Comfy.Canvas.NavigationMode"'s onChange sets a setting that is not registered yet (checked against ComfyUI 0.3.64;
# tests/test_comfyui_web.py uses the same list). 1.58.1 boots against the studio with none but the 404s. Everything
# else fails the tests.
OPTIONAL_404 = {"/api/userdata/user.css", "/user.css", "/api/userdata/comfy.templates.json",
                "/api/userdata/workflows/.index.json"}  # the last: workflow bookmarks, none yet
OPTIONAL_404_LISTINGS = {"workflows", "subgraphs/", "subgraphs"}  # GET /api/userdata?dir=... before it exists
FRONTEND_SETTING_BUG = "Cannot read properties of undefined (reading 'id')"

APP_READY = """() => !!(window.app && app.graph && app.canvas && app.extensionManager
    && window.LiteGraph && LiteGraph.registered_node_types['IPX2PEditImage'])"""


# ------------------------------------------------------------------------------------------------ the browser


class Browser:
    """One chromium with a new empty profile, the console of every page it opens, offline but for the studio."""

    def __init__(self, playwright, profile: Path):
        self.entries: list[dict] = []
        self.context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, viewport=VIEWPORT)
        self.context.set_default_timeout(TIMEOUT_MS)
        # The frontend asks api.comfy.org for release notes (as it does in ComfyUI); the tests stay offline.
        self.context.route(lambda url: urllib.parse.urlsplit(url).hostname not in ("127.0.0.1", "localhost"),
                           lambda route: route.fulfill(status=200, content_type="application/json", body="[]"))

    def open(self, url: str):
        page = self.context.new_page()
        page.on("console", lambda m: m.type == "error" and self.entries.append(
            {"kind": "console", "text": m.text, "url": m.location.get("url", "")}))
        page.on("pageerror", lambda e: self.entries.append(
            {"kind": "pageerror", "text": str(e), "stack": getattr(e, "stack", "") or ""}))
        page.goto(url)
        page.wait_for_function(APP_READY)
        return page

    def unexpected_errors(self) -> list[dict]:
        return [e for e in self.entries if not known_error(e)]

    def close(self):
        self.context.close()


def known_error(entry: dict, optional_404: set[str] = OPTIONAL_404) -> bool:
    """Whether a console entry is one the frontend logs by itself (see above), with ``optional_404`` the absent
    optional files of this server."""
    if entry["kind"] == "console" and entry["text"].startswith(
            "Failed to load resource: the server responded with a status of 404"):
        url = urllib.parse.urlsplit(entry["url"])
        if urllib.parse.unquote(url.path) in optional_404:
            return True
        return url.path == "/api/userdata" and urllib.parse.parse_qs(url.query).get("dir", [""])[0] in \
            OPTIONAL_404_LISTINGS
    return entry["kind"] == "pageerror" and entry["text"] == FRONTEND_SETTING_BUG and "addSetting" in entry["stack"]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_sd):
    root = tmp_path_factory.mktemp("browser")
    d = {k: root / k for k in ("models", "input", "output", "user", "temp", "profile")}
    (d["models"] / "diffusers").mkdir(parents=True)
    os.symlink(tiny_sd["folder"], d["models"] / "diffusers" / "tiny-sd")
    # One preference, as a user would have saved it: no minimap over the canvas (and the screenshot). Set in the
    # page instead, the frontend 1.27.10 logs an error of its own when the minimap goes away.
    (d["user"] / "default").mkdir(parents=True)
    (d["user"] / "default" / "comfy.settings.json").write_text(json.dumps({"Comfy.Minimap.Visible": False}))
    return d


def start_studio(folders) -> StudioServer:
    return StudioServer(models_dir=folders["models"], input_dir=folders["input"], output_dir=folders["output"],
                        user_dir=folders["user"], temp_dir=folders["temp"], device="cpu").start()


@pytest.fixture(scope="module")
def studio(folders):
    previous = get_host()
    holder = {"server": start_studio(folders)}
    yield holder
    holder["server"].stop()
    set_host(previous)


@pytest.fixture(scope="module")
def browser(folders):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = Browser(p, folders["profile"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def page(browser, studio):
    """The studio's page, booted once for the module (a first visit: the template browser opens by itself)."""
    started = time.monotonic()
    pg = browser.open(studio["server"].url)
    pg.boot_seconds = time.monotonic() - started
    return pg


DIALOG = "[data-testid=dialog-overlay], .p-dialog-mask"  # 1.58's dialogs, and PrimeVue's


def close_dialogs(page):
    for _ in range(3):
        if not page.locator(DIALOG).count():
            return
        page.keyboard.press("Escape")
        page.locator(DIALOG).first.wait_for(state="detached")


def to_screen(page, node_id, x, y):
    """Page coordinates of a point given in a node's own coordinates."""
    return page.evaluate("""([id, x, y]) => {
        const n = app.graph.getNodeById(id);
        const [cx, cy] = app.canvas.ds.convertOffsetToCanvas([n.pos[0] + x, n.pos[1] + y]);
        const r = app.canvas.canvas.getBoundingClientRect();
        return [r.left + cx, r.top + cy];
    }""", [node_id, x, y])


def drag(page, node_id, start, end, steps=8):
    page.mouse.move(*to_screen(page, node_id, *start))
    page.mouse.down()
    page.mouse.move(*to_screen(page, node_id, *end), steps=steps)
    page.mouse.up()


def widget_value(page, node_id, name):
    return page.evaluate("([id, name]) => app.graph.getNodeById(id).widgets.find(w => w.name === name).value",
                         [node_id, name])


def redraw(page):
    page.evaluate("() => { app.canvas.setDirty(true, true); app.canvas.draw(true, true); }")


@pytest.fixture(scope="module")
def edited(page, studio, folders):
    """The example opened from the template browser, pointed at the tiny model, with a Compare node added, run."""
    close_dialogs(page)
    page.click(".templates-tab-button")
    page.locator("[data-testid=template-workflows-content]").wait_for()
    card = page.locator(f"[data-testid=template-workflow-{EXAMPLE}]")
    if not card.is_visible():  # the gallery opens on "All Templates": pick our pack's group
        page.get_by_text(PACK_NAME, exact=True).first.click()
    card.click()
    page.wait_for_function("() => app.graph.nodes.some(n => n.type === 'IPX2PEditImage')")
    page.locator("[data-testid=template-workflows-content]").wait_for(state="detached")
    loaded = page.evaluate("() => app.graph.nodes.map(n => n.type)")

    # What a user does next: pick the model they have (here the tiny one) and, for speed, a small size and 3 steps.
    # The Compare node shows the edit over the input.
    compare_id = page.evaluate("""() => {
        const g = app.graph;
        const set = (id, name, v) => { g.getNodeById(id).widgets.find(w => w.name === name).value = v; };
        set(1, 'model_name', '[diffusers] tiny-sd'); set(1, 'device', 'cpu');
        set(3, 'steps', 3); set(3, 'resize', 'fit'); set(3, 'size', 64);
        const c = LiteGraph.createNode('IPX2PCompare');
        g.add(c);
        c.pos = [1220, 60]; c.size = [420, 420];
        g.getNodeById(2).connect(0, c, 0);
        g.getNodeById(3).connect(0, c, 1);
        app.canvas.ds.scale = 0.82; app.canvas.ds.offset = [30, 30];
        window.__ipx2p = {titles: [], events: []};
        for (const type of ['execution_start', 'progress', 'executed', 'execution_success', 'execution_error'])
            comfyAPI.api.api.addEventListener(type, (e) => window.__ipx2p.events.push([type, e.detail]));
        new MutationObserver(() => window.__ipx2p.titles.push(document.title))
            .observe(document.querySelector('title'), {childList: true, characterData: true, subtree: true});
        app.canvas.setDirty(true, true);
        return c.id;
    }""")

    started = time.monotonic()
    page.click("[data-testid=queue-button]")
    page.wait_for_function("""(id) => {
        if (window.__ipx2p.events.some(([type]) => type === 'execution_error')) return true;
        const save = app.graph.getNodeById(4), cmp = app.graph.getNodeById(id);
        const view = cmp.widgets.find(w => w.name === 'ipx2p_compare');
        return save.imgs?.[0]?.complete && save.imgs[0].naturalWidth > 0 && view.ready();
    }""", arg=compare_id, timeout=120_000)
    run_seconds = time.monotonic() - started
    errors = page.evaluate("() => window.__ipx2p.events.filter(([type]) => type === 'execution_error')")
    assert not errors, errors
    redraw(page)
    state = page.evaluate("() => window.__ipx2p")
    shot = folders["temp"].parent / "studio.png"
    page.screenshot(path=str(shot))
    target = os.environ.get("IPX2P_STUDIO_SCREENSHOT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
    return {"loaded": loaded, "compare": compare_id, "titles": state["titles"], "events": state["events"],
            "run_seconds": run_seconds}


# ------------------------------------------------------------------------------------------------ tests


def test_page_boots_without_console_errors(page, browser, studio):
    assert page.boot_seconds < 60
    names = page.evaluate("() => app.extensions.map(e => e.name)")
    assert {"comfyui-ipx2p.GuidancePad", "comfyui-ipx2p.Compare", "comfyui-ipx2p.DefaultWorkflow"} <= set(names)
    page.locator("[data-testid=queue-button]").wait_for(state="attached")
    assert browser.unexpected_errors() == []


def test_our_nodes_are_in_the_node_library(page, browser):
    close_dialogs(page)
    page.click("[data-testid=node-library-tab-button]")
    search = page.locator("input[placeholder='Search Nodes...']")
    search.wait_for()
    search.fill("IP2P")
    for display_name in ipx2p_nodes.NODE_DISPLAY_NAME_MAPPINGS.values():
        page.get_by_text(display_name, exact=True).first.wait_for()
    page.click("[data-testid=node-library-tab-button]")  # close the panel again
    assert browser.unexpected_errors() == []


def test_example_from_template_browser_runs_with_progress_and_output(page, browser, edited, folders):
    assert edited["loaded"] == ["IPX2PLoadModel", "LoadImage", "IPX2PEditImage", "SaveImage", "Note"]
    assert edited["run_seconds"] < 120
    kinds = [k for k, _ in edited["events"]]
    assert kinds[0] == "execution_start" and kinds[-1] == "execution_success", kinds
    progress = [d for k, d in edited["events"] if k == "progress"]
    assert [(p["value"], p["max"]) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    # the page shows progress: the tab title counts the running node's steps ("[run %][node %] name" in 1.58;
    # title updates can coalesce, so not every step shows)
    shown = {int(m) for t in edited["titles"] for m in re.findall(r"\[(\d+)%\] IPX2PEditImage", t)}
    assert shown & {33, 67, 100}, edited["titles"]
    # the output image is shown on Save Image and was written to the output folder
    shown = page.evaluate("() => { const img = app.graph.getNodeById(4).imgs[0]; "
                          "return [img.src, img.naturalWidth, img.naturalHeight]; }")
    src = urllib.parse.urlsplit(shown[0])
    query = urllib.parse.parse_qs(src.query)
    assert src.path == "/api/view" and query["type"] == ["output"]
    assert (folders["output"] / query["filename"][0]).is_file()
    assert shown[1:] == [512, 384]  # the example photo's size (restore_size)
    # and while it sampled, the node showed live previews
    assert page.evaluate("() => app.graph.getNodeById(3).imgs?.length > 0")
    assert browser.unexpected_errors() == []


def screen_image(page, node_id, rect):
    """What the page shows inside ``rect`` (node coordinates), as a PIL image."""
    x0, y0 = to_screen(page, node_id, rect["x"], rect["y"])
    x1, y1 = to_screen(page, node_id, rect["x"] + rect["w"], rect["y"] + rect["h"])
    png = page.screenshot(clip={"x": x0 + 1, "y": y0 + 1, "width": x1 - x0 - 2, "height": y1 - y0 - 2})
    return Image.open(io.BytesIO(png)).convert("RGB")


def mean_colour(image, box):
    """Mean RGB of the part of ``image`` given as fractions (left, top, right, bottom)."""
    w, h = image.size
    crop = image.crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)))
    return np.asarray(crop, dtype=np.float64).reshape(-1, 3).mean(axis=0)


def test_compare_shows_edit_over_input_and_slider_drags(page, browser, edited, folders):
    cid = edited["compare"]
    view = page.evaluate("""(id) => { const w = app.graph.getNodeById(id).widgets.find(w => w.name === 'ipx2p_compare');
        return {pairs: w.pairs.length, split: w.split, rect: w.imageRect,
                before: w.pairs[0].before.src, after: w.pairs[0].after.src}; }""", cid)
    assert view["pairs"] == 1 and view["split"] == 0.5 and view["rect"]["w"] > 100
    assert "_before.png" in view["before"] and "_after.png" in view["after"] and "type=temp" in view["after"]
    r = view["rect"]
    middle = r["y"] + r["h"] / 2
    drag(page, cid, (r["x"] + r["w"] * 0.5, middle), (r["x"] + r["w"] * 0.2, middle))
    split = page.evaluate("(id) => app.graph.getNodeById(id).widgets.find(w => w.name === 'ipx2p_compare').split", cid)
    assert split == pytest.approx(0.2, abs=0.02)
    page.mouse.click(*to_screen(page, cid, r["x"] + r["w"] * 0.9, middle))  # a click moves the divider too
    split = page.evaluate("(id) => app.graph.getNodeById(id).widgets.find(w => w.name === 'ipx2p_compare').split", cid)
    assert split == pytest.approx(0.9, abs=0.02)
    # the pixels follow the divider: left of it the input, right of it the edit
    redraw(page)
    shown = screen_image(page, cid, r)
    before = Image.open(REPO / "example_workflows" / "input" / "ipx2p_example.png").convert("RGB")
    after = Image.open(folders["temp"] / urllib.parse.parse_qs(urllib.parse.urlsplit(view["after"]).query)
                       ["filename"][0]).convert("RGB")
    for box, source in (((0.3, 0.3, 0.6, 0.45), before), ((0.92, 0.3, 0.99, 0.9), after),
                        ((0.1, 0.6, 0.6, 0.95), before)):
        assert mean_colour(shown, box) == pytest.approx(mean_colour(source, box), abs=12), box
    assert browser.unexpected_errors() == []


def pad_state(page):
    return page.evaluate("""([id, pad]) => { const w = app.graph.getNodeById(id).widgets.find(w => w.name === pad);
        return {rect: w.last, point: w.point()}; }""", [EDIT, PAD])


def test_guidance_pad_drags_both_values_and_stays_in_sync(page, browser, edited):
    # on both nodes with the two guidance widgets, last (so widgets_values keep their positions), and not elsewhere
    last = page.evaluate("""() => Object.fromEntries(['IPX2PSampler', 'IPX2PEditImage', 'IPX2PGuidanceSweep']
        .map(t => [t, LiteGraph.createNode(t).widgets.map(w => w.name).pop()]))""")
    assert last == {"IPX2PSampler": PAD, "IPX2PEditImage": PAD, "IPX2PGuidanceSweep": "max_batch"}
    redraw(page)
    state = pad_state(page)
    r = state["rect"]
    assert r and r["w"] > 200 and r["h"] > 80
    # the point starts at the example's values (7.5, 1.5)
    assert state["point"][0] == pytest.approx(r["x"] + r["w"] * 7.5 / 15)
    assert state["point"][1] == pytest.approx(r["y"] + r["h"] * (1 - 1.5 / 4))

    # drag it right (stronger edit) and up (keep more of the input): both number widgets follow
    target = (r["x"] + r["w"] * 12 / 15, r["y"] + r["h"] * (1 - 2.5 / 4))
    drag(page, EDIT, tuple(state["point"]), target)
    text, image = widget_value(page, EDIT, "text_guidance"), widget_value(page, EDIT, "image_guidance")
    assert text == pytest.approx(12.0, abs=0.15) and image == pytest.approx(2.5, abs=0.1)
    assert round(text * 10) == pytest.approx(text * 10) and round(image * 20) == pytest.approx(image * 20)

    # the other way: the number widget's arrow moves the point
    w = page.evaluate("""(id) => { const n = app.graph.getNodeById(id); const w = n.widgets.find(w => w.name ===
        'text_guidance'); return {y: w.y, width: n.size[0]}; }""", EDIT)
    page.mouse.click(*to_screen(page, EDIT, w["width"] - 22, w["y"] + 10))
    assert widget_value(page, EDIT, "text_guidance") == pytest.approx(text + 0.1)
    redraw(page)
    assert pad_state(page)["point"][0] == pytest.approx(r["x"] + r["w"] * (text + 0.1) / 15)

    # the context menu copies a pair from a Guidance Sweep node in the graph
    title = to_screen(page, EDIT, 60, -15)
    sweep = page.evaluate("""() => { const s = LiteGraph.createNode('IPX2PGuidanceSweep'); app.graph.add(s);
        s.pos = [820, 700]; s.widgets.find(w => w.name === 'text_guidances').value = '4, 6';
        s.widgets.find(w => w.name === 'image_guidances').value = '1.25; 2'; return s.id; }""")
    page.mouse.click(*title, button="right")
    page.locator(".litecontextmenu .litemenu-entry", has_text="Guidance from sweep").click()
    entries = page.locator(".litecontextmenu").last.locator(".litemenu-entry")
    assert entries.all_inner_texts() == ["text 4 · image 1.25", "text 4 · image 2", "text 6 · image 1.25",
                                         "text 6 · image 2"]
    entries.filter(has_text="text 6 · image 1.25").click()
    assert widget_value(page, EDIT, "text_guidance") == 6.0
    assert widget_value(page, EDIT, "image_guidance") == 1.25
    page.evaluate("(id) => app.graph.remove(app.graph.getNodeById(id))", sweep)

    # and its presets set both at once; the defaults among them (and the pad's ring) come from the node's
    # definition in /object_info, which the server reads from the engine's defaults
    assert page.evaluate("(id) => app.graph.getNodeById(id).ipx2pGuidanceDefaults", EDIT) == \
        {"text": defaults.TEXT_GUIDANCE, "image": defaults.IMAGE_GUIDANCE}
    page.mouse.click(*title, button="right")
    page.locator(".litecontextmenu .litemenu-entry", has_text="Guidance preset").click()
    presets = page.locator(".litecontextmenu").last.locator(".litemenu-entry").all_inner_texts()
    assert f"Defaults (InstructPix2Pix) (text {defaults.TEXT_GUIDANCE:g}, image {defaults.IMAGE_GUIDANCE:g})" in presets
    page.locator(".litecontextmenu .litemenu-entry", has_text="Strong").click()
    assert widget_value(page, EDIT, "text_guidance") == 10.0
    assert widget_value(page, EDIT, "image_guidance") == 1.2

    # what is queued carries the two numbers and nothing from the pad; the workflow keeps only the numbers too
    prompt = page.evaluate("async () => (await app.graphToPrompt()).output['3'].inputs")
    assert prompt["text_guidance"] == 10.0 and prompt["image_guidance"] == 1.2 and PAD not in prompt
    values = page.evaluate("() => app.graph.getNodeById(3).serialize().widgets_values")
    assert len(values) == 19 and values[6:8] == [10.0, 1.2]
    assert browser.unexpected_errors() == []


def vue_widget_canvas(page, node_id, name):
    """The canvas Nodes 2.0 gives a canvas-drawn widget (WidgetLegacy), inside the node's DOM element."""
    return page.locator(f"[data-node-id='{node_id}'] [data-widget-name='{name}'] canvas").first


def test_extensions_in_modern_node_design(page, browser, edited):
    """Nodes 2.0 (setting Comfy.VueNodes.Enabled): nodes are DOM elements and each canvas-drawn widget gets a canvas of
    its own, drawn through widget.draw and redrawn through triggerDraw. The pad and the comparison draw there and
    take drags there, and the number widgets and the pad stay in sync."""
    page.evaluate("async () => await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', true)")
    try:
        pad = vue_widget_canvas(page, EDIT, PAD)
        pad.wait_for()
        page.wait_for_function("""([id, pad]) => !!app.graph.getNodeById(id).widgets.find(w => w.name === pad)
            .triggerDraw""", arg=[EDIT, PAD])
        r = page.evaluate("""([id, pad]) => app.graph.getNodeById(id).widgets.find(w => w.name === pad).last""",
                          [EDIT, PAD])
        box = pad.bounding_box()
        width = page.evaluate("([id, pad]) => app.graph.getNodeById(id).widgets.find(w => w.name === pad).width",
                              [EDIT, PAD])
        assert r and box and width > 200 and box["height"] > 80
        k = box["width"] / width  # the canvas zoom scales the DOM nodes too

        def at(text, image):
            return box["x"] + (r["x"] + r["w"] * text / 15) * k, box["y"] + (r["y"] + r["h"] * (1 - image / 4)) * k

        start = at(7.5, 1.5)  # drag from the defaults to text 3, image 3.5
        page.evaluate("""([id]) => { const ws = app.graph.getNodeById(id).widgets;
            ws.find(w => w.name === 'text_guidance').value = 7.5; ws.find(w => w.name === 'image_guidance').value = 1.5;
            ws.find(w => w.name === 'ipx2p_guidance_pad').triggerDraw(); }""", [EDIT])
        page.mouse.move(*start)
        page.mouse.down()
        page.mouse.move(*at(3, 3.5), steps=8)
        page.mouse.up()
        assert widget_value(page, EDIT, "text_guidance") == pytest.approx(3.0, abs=0.15)
        assert widget_value(page, EDIT, "image_guidance") == pytest.approx(3.5, abs=0.1)

        # the comparison shows the last run's pair in its canvas and its divider follows a drag
        cmp = vue_widget_canvas(page, edited["compare"], "ipx2p_compare")
        cmp.wait_for()
        page.evaluate("""(id) => app.graph.getNodeById(id).widgets.find(w => w.name === 'ipx2p_compare')
            .triggerDraw?.()""", edited["compare"])
        rect = page.evaluate("""(id) => app.graph.getNodeById(id).widgets.find(w => w.name === 'ipx2p_compare')
            .imageRect""", edited["compare"])
        cbox = cmp.bounding_box()
        ck = cbox["width"] / page.evaluate("""(id) => app.graph.getNodeById(id).widgets
            .find(w => w.name === 'ipx2p_compare').width""", edited["compare"])
        assert rect and rect["w"] > 100
        middle = cbox["y"] + (rect["y"] + rect["h"] / 2) * ck
        page.mouse.move(cbox["x"] + (rect["x"] + rect["w"] * 0.5) * ck, middle)
        page.mouse.down()
        page.mouse.move(cbox["x"] + (rect["x"] + rect["w"] * 0.3) * ck, middle, steps=6)
        page.mouse.up()
        split = page.evaluate("""(id) => app.graph.getNodeById(id).widgets.find(w => w.name === 'ipx2p_compare')
            .split""", edited["compare"])
        assert split == pytest.approx(0.3, abs=0.03)

        # the node's context menu (Nodes 2.0 draws its own, from the same extension hook) sets a preset
        page.locator(f"[data-node-id='{EDIT}']").first.click(button="right", position={"x": 60, "y": 12})
        page.get_by_role("menuitem", name="Guidance preset").first.hover()
        page.get_by_role("menuitem", name="Strong").first.click()
        assert widget_value(page, EDIT, "text_guidance") == 10.0
        assert widget_value(page, EDIT, "image_guidance") == 1.2
    finally:
        page.evaluate("async () => await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', false)")
    assert browser.unexpected_errors() == []


def test_saved_workflow_reloads_after_restart(page, browser, studio, folders, edited):
    """Runs last: it moves the module's page away and replaces the server."""
    page.evaluate("""() => { const ws = app.graph.getNodeById(3).widgets;
        ws.find(w => w.name === 'text_guidance').value = 9.3; ws.find(w => w.name === 'image_guidance').value = 1.85; }""")
    page.mouse.click(VIEWPORT["width"] - 60, VIEWPORT["height"] - 120)  # focus the canvas (an empty spot)
    page.keyboard.press("Control+s")
    name_box = page.locator("[role=dialog] input")
    name_box.wait_for()
    name_box.fill("my edit")
    with page.expect_response(lambda r: r.request.method == "POST" and "/api/userdata/workflows" in r.url) as saving:
        name_box.press("Enter")
    assert saving.value.status == 200
    page.wait_for_function("() => app.extensionManager.workflow.activeWorkflow?.filename === 'my edit'")
    saved = folders["user"] / "default" / "workflows" / "my edit.json"
    on_disk = json.loads(saved.read_text())
    assert {n["type"] for n in on_disk["nodes"]} >= {"IPX2PEditImage", "IPX2PCompare"}
    page.goto("about:blank")  # no reconnecting socket to the server that goes away

    studio["server"].stop()
    studio["server"] = start_studio(folders)  # a new server on the same folders, on a new port: a new origin, so
    fresh = browser.open(studio["server"].url)  # nothing comes back from the browser's own storage
    # A returning user with nothing to restore gets our example, not the frontend's default graph of missing nodes.
    fresh.wait_for_function("() => app.graph.nodes.some(n => n.type === 'IPX2PEditImage')")
    assert fresh.locator(DIALOG).count() == 0
    fresh.click("[data-testid=workflows-tab-button]")
    fresh.get_by_text(re.compile(r"^my edit(\.json)?$")).first.click()
    fresh.wait_for_function("() => app.extensionManager.workflow.activeWorkflow?.filename === 'my edit'")
    fresh.wait_for_function("() => app.graph.nodes.some(n => n.type === 'IPX2PCompare')")
    assert widget_value(fresh, EDIT, "text_guidance") == 9.3
    assert widget_value(fresh, EDIT, "image_guidance") == 1.85
    assert fresh.evaluate("() => app.graph.getNodeById(3).widgets.some(w => w.name === 'ipx2p_guidance_pad')")
    fresh.close()
    assert browser.unexpected_errors() == []


def test_subgraph_made_in_the_ui_runs(browser, studio, folders):
    """Runs after the restart: a fresh page on the new server opens the example; Edit Image is packed into a subgraph
    the way the UI's "Convert to Subgraph" does it, and the graph runs. The frontend's graphToPrompt flattens the
    subgraph into nodes with ids like "6:3", which the studio validates, runs and reports progress for."""
    pg = browser.open(studio["server"].url)
    try:
        pg.wait_for_function("() => app.graph.nodes.some(n => n.type === 'IPX2PEditImage')")
        close_dialogs(pg)
        pg.evaluate("""() => {
            const g = app.graph;
            const set = (id, name, v) => { g.getNodeById(id).widgets.find(w => w.name === name).value = v; };
            set(1, 'model_name', '[diffusers] tiny-sd'); set(1, 'device', 'cpu');
            set(3, 'steps', 2); set(3, 'resize', 'fit'); set(3, 'size', 64);
            const { node } = g.convertToSubgraph(new Set([g.getNodeById(3)]));
            window.__ipx2p = {subgraph: node.id, events: []};
            for (const type of ['progress', 'executed', 'execution_success', 'execution_error'])
                comfyAPI.api.api.addEventListener(type, (e) => window.__ipx2p.events.push([type, e.detail]));
        }""")
        sub = pg.evaluate("() => window.__ipx2p.subgraph")
        assert pg.evaluate("() => app.graph.nodes.map(n => n.type).includes('IPX2PEditImage')") is False
        prompt = pg.evaluate("async () => (await app.graphToPrompt()).output")
        assert prompt[f"{sub}:3"]["class_type"] == "IPX2PEditImage"
        assert prompt["4"]["inputs"]["images"] == [f"{sub}:3", 0]
        pg.click("[data-testid=queue-button]")
        pg.wait_for_function("""() => window.__ipx2p.events.some(([t]) => t === 'execution_success'
            || t === 'execution_error')""", timeout=120_000)
        events = pg.evaluate("() => window.__ipx2p.events")
        kinds = [k for k, _ in events]
        assert "execution_error" not in kinds, events
        assert [(d["value"], d["max"], d["node"]) for k, d in events if k == "progress"] == \
            [(1, 2, f"{sub}:3"), (2, 2, f"{sub}:3")]
        (saved,) = [d for k, d in events if k == "executed" and d["node"] == "4"]
        assert (folders["output"] / saved["output"]["images"][0]["filename"]).is_file()
    finally:
        pg.close()
    assert browser.unexpected_errors() == []
