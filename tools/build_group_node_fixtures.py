"""Build legacy group-node workflows in an old frontend, and record what the current frontend queues for them.

    .venv/bin/python tools/build_group_node_fixtures.py --legacy-frontend DIR

Group nodes (``extra.groupNodes``, node types ``workflow>NAME``) were the frontend's way to pack nodes before
subgraphs; only frontends before 1.3x can make them. DIR is the ``static/`` folder of such a
comfyui-frontend-package (ComfyUI 0.3.64 ships 1.27.10: ``pip download comfyui-frontend-package==1.27.10`` and unpack
it, or point at a ComfyUI venv's site-packages/comfyui_frontend_package/static).

1. A studio on the legacy frontend opens the shipped examples in headless chromium and turns nodes into group nodes
   with that frontend's own "Convert selected nodes to group node" command; the workflow it saves is kept.
2. A studio on the installed (current) frontend loads each saved workflow (which migrates group nodes to
   subgraphs) and records its ``graphToPrompt``.

Writes tests/data/group_nodes/<case>.json = {made_in, frontend, workflow (legacy, as saved), output (the current
frontend's API prompt), legacy_output (the prompt the legacy frontend queued for it)}. tests/test_group_nodes.py
checks that ``ui_to_api`` gives the current frontend's prompt, with the values the legacy one queued.
Needs /usr/bin/chromium and Playwright.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tools"))

from build_subgraph_fixtures import launch_browser, open_studio_page, start_studio  # noqa: E402

FIXTURES = ROOT / "tests" / "data" / "group_nodes"

# Each case: the example it starts from, then steps. ("group", NAME, [node ids]) selects those nodes and runs the
# legacy frontend's convert command, naming the group NAME; ("js", CODE) runs CODE in the page with g, node(id),
# group(NAME) (the first node of that group type), app and LiteGraph.
CASES = {
    "group_stages": ("ipx2p_sd15_staged", [
        ("group", "Stages", [3, 4, 5]),
        ("js", "const s = group('Stages'); s.widgets.find(w => w.name === 'seed').value = 1234;"
               "s.widgets.find(w => w.name === 'text_guidance').value = 9;"),
    ]),
    "group_two_instances": ("ipx2p_sd15_staged", [
        ("group", "Edit", [3, 4, 5, 6]),
        ("js", """
            const s = group('Edit'); s.widgets.find(w => w.name === 'seed').value = 7;
            const t = LiteGraph.createNode(s.type); g.add(t); t.pos = [s.pos[0], s.pos[1] + 500];
            node(1).connect(0, t, 0); node(2).connect(0, t, 1);
            const p = LiteGraph.createNode('PreviewImage'); g.add(p); t.connect(0, p, 0);
            t.widgets.find(w => w.name === 'seed').value = 8;
            t.widgets.find(w => w.name === 'instruction').value = 'make it autumn';"""),
    ]),
    "group_one_node_kinds": ("ipx2p_sd15_edit_image", [
        ("group", "Whole", [3, 4]),
        ("js", "const s = group('Whole'); s.widgets.find(w => w.name === 'filename_prefix').value = 'grouped';"),
    ]),
    "group_bypassed": ("ipx2p_sd15_staged", [
        ("group", "Prompt", [3, 4]),
        ("js", "group('Prompt').mode = 4;"),
    ]),
    "group_muted_inside": ("ipx2p_sd15_staged", [
        ("js", "node(6).mode = 2;"),
        ("group", "Tail", [5, 6]),
    ]),
}

LEGACY_STEP = r"""async ([code]) => {
  const g = app.graph;
  const node = (id) => g.getNodeById(id);
  const group = (name) => g.nodes.find(n => n.type === 'workflow>' + name || n.type === 'workflow/' + name);
  await (new Function('g', 'node', 'group', 'app', 'LiteGraph', 'return (async () => {' + code + '})()'))(
      g, node, group, app, LiteGraph);
}"""

SELECT = r"""([ids]) => {
  app.canvas.deselectAll();
  app.canvas.selectNodes(ids.map(i => app.graph.getNodeById(i)));
  app.extensionManager.command.execute('Comfy.GroupNode.ConvertSelectedNodesToGroupNode');
}"""

CURRENT = r"""async ([wf]) => {
  const errors = [];
  const orig = console.error;
  const text = (x) => (x && x.stack) ? String(x) + ' @ ' + x.stack.split('\n').slice(1, 4).join(' | ') : String(x);
  console.error = (...a) => { errors.push(a.map(text).join(' ')); orig(...a); };
  try {
    await app.loadGraphData(wf);
    const r = await app.graphToPrompt();
    return {output: r.output, workflow: r.workflow, errors};
  } finally { console.error = orig; }
}"""


def make_legacy(p, legacy_dir: Path) -> tuple[dict, str]:
    server, profile = start_studio(Path(tempfile.mkdtemp(prefix="ipx2p-groupnodes-legacy-")),
                                   frontend_dir=legacy_dir)
    infos = sorted(legacy_dir.parent.parent.glob("comfyui_frontend_package-*.dist-info"))
    version = infos[-1].name.removesuffix(".dist-info").split("-")[1] if infos else str(legacy_dir)
    try:
        ctx = launch_browser(p, profile)
        page = open_studio_page(ctx, server, timeout_ms=180_000)
        page.keyboard.press("Escape")  # the first-run template dialog
        made = {}
        for name, (example, steps) in CASES.items():
            wf = json.loads((ROOT / "example_workflows" / f"{example}.json").read_text())
            page.evaluate("async ([wf]) => { await app.loadGraphData(wf); }", [wf])
            for step in steps:
                if step[0] == "group":
                    _, gname, ids = step
                    page.evaluate(SELECT, [ids])
                    box = page.locator(".p-dialog", has_text="Create group node").locator("input").first
                    box.wait_for(timeout=20_000)
                    box.fill(gname)
                    box.press("Enter")
                    page.wait_for_function(
                        "(n) => app.graph.nodes.some(x => x.type === 'workflow>' + n)", arg=gname, timeout=20_000)
                else:
                    page.evaluate(LEGACY_STEP, [step[1]])
            made[name] = page.evaluate("async () => ({workflow: app.graph.serialize(), "
                                       "output: (await app.graphToPrompt()).output})")
            assert made[name]["workflow"].get("extra", {}).get("groupNodes"), f"{name}: no group node was made"
            print("made", name, "in", version, sorted(made[name]["workflow"]["extra"]["groupNodes"]))
        ctx.close()
        return made, version
    finally:
        server.stop()


def record_current(p, made: dict) -> dict:
    server, profile = start_studio(Path(tempfile.mkdtemp(prefix="ipx2p-groupnodes-current-")))
    try:
        ctx = launch_browser(p, profile)
        page = open_studio_page(ctx, server, timeout_ms=180_000)
        out = {}
        for name, legacy in made.items():
            got = page.evaluate(CURRENT, [legacy["workflow"]])
            if got["errors"]:
                raise SystemExit(f"{name}: the current frontend logged errors: {got['errors']}")
            out[name] = got
        ctx.close()
        return out
    finally:
        server.stop()


def main():
    from playwright.sync_api import sync_playwright

    from ipx2p_standalone.studio.security import write_atomic

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--legacy-frontend", required=True, type=Path,
                    help="static/ folder of a comfyui-frontend-package that can still make group nodes (1.27.10)")
    args = ap.parse_args()
    frontend = importlib.metadata.version("comfyui-frontend-package")
    FIXTURES.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        made, legacy_version = make_legacy(p, args.legacy_frontend)
        current = record_current(p, made)
    for name, legacy in made.items():
        data = {"made_in": legacy_version, "frontend": frontend, "made_from": CASES[name][0],
                "workflow": legacy["workflow"], "output": current[name]["output"], "legacy_output": legacy["output"]}
        write_atomic(FIXTURES / f"{name}.json", (json.dumps(data, indent=1) + "\n").encode())
        print("wrote", FIXTURES / f"{name}.json", "nodes", sorted(current[name]["output"]))


if __name__ == "__main__":
    main()
