"""Build subgraph workflows in the official ComfyUI frontend itself, and record what its ``graphToPrompt`` queues.

    .venv/bin/python tools/build_subgraph_fixtures.py

Boots the studio (tiny random model, no download) with the installed comfyui-frontend-package, opens the shipped
examples in headless chromium, turns parts of them into subgraphs with the frontend's own ``convertToSubgraph``
(nesting, several instances, promoted widgets, bypassed/muted nodes), and writes for each case
tests/data/subgraphs/<case>.json = {frontend, workflow (as the frontend saves it), output (its API prompt)}.
tests/test_subgraphs.py checks that ``ui_to_api`` gives the same prompt. Also writes the subgraph example
example_workflows/ipx2p_sd15_subgraph.json (+ thumbnail). Needs /usr/bin/chromium and Playwright.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import sys
import tempfile
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tools"))

import build_example_workflows as bew  # noqa: E402

FIXTURES = ROOT / "tests" / "data" / "subgraphs"
EXAMPLE = "ipx2p_sd15_subgraph"
TEMPLATE = {"title": "SD 1.5 \u00b7 stages in a subgraph",
            "description": "The staged SD 1.5 edit with its four stages packed into one subgraph node."}

# Each case: the example it starts from, and JavaScript run in the page with g (the graph), node(id), sub(ids[,
# graph]) (the frontend's convertToSubgraph on those nodes; returns the new subgraph node), app and LiteGraph.
CASES = {
    "staged_subgraph": ("ipx2p_sd15_staged", """
        const n = sub([3, 4, 5]); n.widgets.find(w => w.name === 'seed').value = 1234; return n.id;"""),
    "nested": ("ipx2p_sd15_staged", """
        const a = sub([3, 4, 5]); const b = sub([a.id, 6]); return [a.id, b.id];"""),
    "instances": ("ipx2p_sd15_edit_image", """
        const s = sub([3]); s.widgets.find(w => w.name === 'seed').value = 7;
        const t = LiteGraph.createNode(s.type); g.add(t); t.pos = [s.pos[0], s.pos[1] + 400];
        node(1).connect(0, t, 0); node(2).connect(0, t, 1);
        const p = LiteGraph.createNode('PreviewImage'); g.add(p); t.connect(0, p, 0);
        t.widgets.find(w => w.name === 'seed').value = 8; return [s.id, t.id];"""),
    "bypassed_subgraph": ("ipx2p_sd15_edit_image", "const s = sub([3]); s.mode = 4; return s.id;"),
    "muted_subgraph": ("ipx2p_sd15_edit_image", "const s = sub([3]); s.mode = 2; return s.id;"),
    "bypass_inside": ("ipx2p_sd15_staged", """
        const s = sub([3, 4, 5, 6]); s.subgraph.nodes.find(n => n.type === 'IPX2PEncodeImage').mode = 4;
        return s.id;"""),
    "mute_inside": ("ipx2p_sd15_staged", """
        const s = sub([3, 4, 5, 6]); s.subgraph.nodes.find(n => n.type === 'IPX2PEncodeInstruction').mode = 2;
        return s.id;"""),
    "nested_bypass": ("ipx2p_sd15_edit_image", """
        const a = sub([3]); const b = sub([a.id, 4]);
        b.subgraph.nodes.find(n => n.id === a.id).mode = 4; return [a.id, b.id];"""),
    "nested_instances_bypass": ("ipx2p_sd15_staged", """
        const a = sub([4, 5]); const b = sub([3, a.id, 6]);
        const c = LiteGraph.createNode(b.type); g.add(c); c.pos = [b.pos[0], b.pos[1] + 400];
        node(1).connect(0, c, 0); node(2).connect(0, c, 1);
        const p = LiteGraph.createNode('PreviewImage'); g.add(p); c.connect(0, p, 0);
        c.subgraph.nodes.find(n => n.type === 'IPX2PDecode').mode = 4; return [a.id, b.id, c.id];"""),
}
EXAMPLE_CASE = ("ipx2p_sd15_staged", """
    const s = sub([3, 4, 5, 6]); s.subgraph.name = 'Edit (staged)'; s.title = 'Edit (staged)';
    node(7).widgets.find(w => w.name === 'filename_prefix').value = 'ipx2p_subgraph';
    node(8).widgets[0].value = NOTE; return s.id;""")
NOTE = ("The staged edit packed into a subgraph: open it (the icon on its title) to see and change the stages; its "
        "seed is promoted to the subgraph node. Runs headless too: ipx2p run this.json.\n\n" + bew.WHERE_SD15 +
        "\n\n" + bew.INPUTS_NOTE)

BUILD = r"""async ([wf, code]) => {
  await app.loadGraphData(wf);
  const g = app.graph;
  const node = (id) => g.getNodeById(id);
  const sub = (ids, graph = g) => graph.convertToSubgraph(new Set(ids.map(i => graph.getNodeById(i)))).node;
  const made = await (new Function('g', 'node', 'sub', 'app', 'LiteGraph', 'return (async () => {' + code + '})()'))(
      g, node, sub, app, LiteGraph);
  const r = await app.graphToPrompt();
  return {made, workflow: r.workflow, output: r.output};
}"""


def start_studio(root: Path, **config):
    import tiny_models

    from ipx2p_standalone.studio import StudioServer

    d = {k: root / k for k in ("models", "input", "output", "user", "temp", "profile")}
    for p in d.values():
        p.mkdir(parents=True, exist_ok=True)
    tiny_models.save_diffusers_folder(tiny_models.tiny_sd_components(), d["models"] / "diffusers" / "tiny-sd",
                                      sdxl=False)
    (d["user"] / "default").mkdir(parents=True, exist_ok=True)
    (d["user"] / "default" / "comfy.settings.json").write_text(json.dumps({"Comfy.Minimap.Visible": False}))
    server = StudioServer(models_dir=d["models"], input_dir=d["input"], output_dir=d["output"], user_dir=d["user"],
                          temp_dir=d["temp"], device="cpu", **config).start()
    return server, d["profile"]


def launch_browser(p, profile):
    """Headless chromium (Playwright ``p``) with its own profile; requests off this machine get an empty answer."""
    ctx = p.chromium.launch_persistent_context(
        str(profile), executable_path="/usr/bin/chromium", headless=True,
        args=["--headless", "--no-sandbox", "--disable-gpu"], viewport={"width": 1700, "height": 1000})
    ctx.route(lambda url: urllib.parse.urlsplit(url).hostname not in ("127.0.0.1", "localhost"),
              lambda route: route.fulfill(status=200, content_type="application/json", body="[]"))
    return ctx


def open_studio_page(ctx, server, timeout_ms: int = 120_000):
    """A page on the studio, once the frontend has registered this pack's nodes."""
    page = ctx.new_page()
    page.goto(server.url)
    page.wait_for_function("() => !!(window.app && app.graph && window.LiteGraph "
                           "&& LiteGraph.registered_node_types['IPX2PEditImage'])", timeout=timeout_ms)
    return page


def main():
    from playwright.sync_api import sync_playwright

    from ipx2p_standalone.studio.security import write_atomic

    frontend = importlib.metadata.version("comfyui-frontend-package")
    server, profile = start_studio(Path(tempfile.mkdtemp(prefix="ipx2p-subgraphs-")))
    FIXTURES.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            ctx = launch_browser(p, profile)
            page = open_studio_page(ctx, server)
            for name, (example, code) in CASES.items():
                wf = json.loads((ROOT / "example_workflows" / f"{example}.json").read_text())
                got = page.evaluate(BUILD, [wf, code])
                data = {"frontend": frontend, "made_from": example, "workflow": got["workflow"],
                        "output": got["output"]}
                write_atomic(FIXTURES / f"{name}.json", (json.dumps(data, indent=1) + "\n").encode())
                print("wrote", FIXTURES / f"{name}.json", "nodes", sorted(got["output"]))
            example, code = EXAMPLE_CASE
            code = f"const NOTE = {json.dumps(NOTE)};" + code
            wf = json.loads((ROOT / "example_workflows" / f"{example}.json").read_text())
            got = page.evaluate(BUILD, [wf, code])
            out = ROOT / "example_workflows" / f"{EXAMPLE}.json"
            got["workflow"].setdefault("extra", {})["ipx2p_template"] = dict(TEMPLATE)  # the studio's dialog shows it
            # the frontend draws Load Model taller than our builder's box (its widgets at its own row height): move
            # the column under it down so no node covers another (tests/test_example_workflows.py)
            for n in got["workflow"]["nodes"]:
                if n["type"] in ("LoadImage", "Note"):
                    n["pos"][1] += 30
            write_atomic(out, (json.dumps(got["workflow"], indent=1) + "\n").encode())
            jpg = io.BytesIO()
            bew.thumbnail(bew.example_photo(), "SD 1.5 · stages in a subgraph", "make it winter").save(
                jpg, "JPEG", quality=88)
            write_atomic(out.with_suffix(".jpg"), jpg.getvalue())
            print("wrote", out)
            ctx.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
