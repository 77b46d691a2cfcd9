"""Subgraphs in the UI → API converter, the runner, ``ipx2p run`` and ``ipx2p batch --workflow``.

The fixtures in tests/data/subgraphs were made in the official frontend (tools/build_subgraph_fixtures.py: the
frontend's own convertToSubgraph on the shipped examples) and hold its ``graphToPrompt`` output; ``ui_to_api`` must
give the same prompt. tests/test_subgraphs_browser.py checks the same against the live frontend in chromium.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
from examples_helpers import EXAMPLES_DIR, copy_inputs, load_example, tiny_overrides
from PIL import Image

from ipx2p_nodes.host import get_host, set_host
from ipx2p_standalone.cli import main
from ipx2p_standalone.host import StandaloneHost
from ipx2p_standalone.runner import Runner, format_errors
from ipx2p_standalone.workflow import WorkflowFormatError, ui_to_api

FIXTURES = Path(__file__).parent / "data" / "subgraphs"
CASES = sorted(p.stem for p in FIXTURES.glob("*.json"))
SUBGRAPH_EXAMPLE = "ipx2p_sd15_subgraph"  # 1 Load Model, 2 Load Image, 7 Save, 8 Note, 9 subgraph of 3, 4, 5, 6


def load_case(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def as_json(prompt: dict) -> dict:
    return json.loads(json.dumps(prompt))


@pytest.fixture(scope="module")
def runner(tmp_path_factory, tiny_sd):
    root = tmp_path_factory.mktemp("subgraphs")
    (root / "models" / "diffusers").mkdir(parents=True)
    os.symlink(tiny_sd["folder"], root / "models" / "diffusers" / "tiny-sd")
    previous = get_host()
    r = Runner(output_dir=root / "out", input_dir=copy_inputs(root / "in"), temp_dir=root / "temp",
               host=StandaloneHost(models_dir=root / "models", device="cpu"))
    r.models_dir = root / "models"
    yield r
    set_host(previous)


def test_fixtures_cover_the_cases():
    assert set(CASES) == {"staged_subgraph", "nested", "instances", "bypassed_subgraph", "muted_subgraph",
                          "bypass_inside", "mute_inside", "nested_bypass", "nested_instances_bypass"}
    assert {load_case(c)["frontend"] for c in CASES} == {"1.58.1"}


@pytest.mark.parametrize("case", CASES)
def test_ui_to_api_equals_the_frontends_graph_to_prompt(runner, case):
    data = load_case(case)
    got = ui_to_api(data["workflow"], runner.node_classes, runner.display_names).prompt
    assert as_json(got) == data["output"]  # class_type, inputs and _meta of every node, ids included


def test_ids_links_and_promoted_widgets_follow_the_frontend(runner):
    def prompt(case):
        return ui_to_api(load_case(case)["workflow"], runner.node_classes, runner.display_names).prompt

    p = prompt("staged_subgraph")  # 3, 4, 5 in subgraph node 9; its seed widget set to 1234 on the subgraph node
    assert sorted(p) == ["1", "2", "6", "7", "9:3", "9:4", "9:5"]
    assert p["9:5"]["inputs"]["seed"] == 1234 and p["9:5"]["inputs"]["conditioning"] == ["9:3", 0]
    assert p["9:4"]["inputs"]["image"] == ["2", 0] and p["6"]["inputs"]["latent"] == ["9:5", 0]
    p = prompt("nested")  # 9 (3, 4, 5) inside 10 with 6
    assert sorted(p) == ["1", "10:6", "10:9:3", "10:9:4", "10:9:5", "2", "7"]
    assert p["7"]["inputs"]["images"] == ["10:6", 0] and p["10:6"]["inputs"]["latent"] == ["10:9:5", 0]
    p = prompt("instances")  # two instances (6, 7) of one subgraph, seeds 7 and 8 on the subgraph nodes
    assert (p["6:3"]["inputs"]["seed"], p["7:3"]["inputs"]["seed"]) == (7, 8)
    assert p["8"]["inputs"]["images"] == ["7:3", 0]
    assert prompt("bypassed_subgraph")["4"]["inputs"]["images"] == ["2", 0]  # passes the IMAGE through
    assert "images" not in prompt("muted_subgraph")["4"]["inputs"]
    p = prompt("bypass_inside")  # Encode Image bypassed inside: no IPX2P_IMAGE_LATENTS input to pass through
    assert "9:4" not in p and "image_latents" not in p["9:5"]["inputs"]


def _staged_subgraph_workflow():
    return copy.deepcopy(load_case("staged_subgraph")["workflow"])


def test_promoted_values_by_position_when_the_file_has_no_names(runner):
    wf = _staged_subgraph_workflow()
    host = next(n for n in wf["nodes"] if n["id"] == 9)
    host.pop("widgets_values_named", None)
    host["widgets_values"] = [99]
    assert ui_to_api(wf, runner.node_classes).prompt["9:5"]["inputs"]["seed"] == 99
    host["widgets_values"] = []  # no value stored: the inner widget's own value
    assert ui_to_api(wf, runner.node_classes).prompt["9:5"]["inputs"]["seed"] == 0


def test_broken_subgraphs_are_clear_errors(runner):
    wf = _staged_subgraph_workflow()
    sg = wf["definitions"]["subgraphs"][0]
    sg["nodes"].append({"id": 20, "type": sg["id"], "mode": 0, "inputs": [], "outputs": []})
    with pytest.raises(WorkflowFormatError) as caught:
        ui_to_api(wf, runner.node_classes)
    assert str(caught.value) == ("Subgraph 'New Subgraph' contains itself (through node 9:20); a subgraph cannot be "
                                 "nested in itself.")
    wf = _staged_subgraph_workflow()
    sg = wf["definitions"]["subgraphs"][0]
    out_link = next(lk for lk in sg["links"] if lk["target_id"] == -20)
    out_link.update(origin_id=-10, origin_slot=0)
    with pytest.raises(WorkflowFormatError) as caught:
        ui_to_api(wf, runner.node_classes)
    assert str(caught.value) == ("Output 0 of subgraph 'New Subgraph' (node 9) is linked straight to one of its "
                                 "inputs; the frontend cannot queue that either. Put a node between them or link "
                                 "around the subgraph.")


def test_runner_names_nested_nodes_in_progress_and_errors(runner):
    wf = load_example(SUBGRAPH_EXAMPLE)
    events = []
    result = runner.run(wf, overrides=tiny_overrides(wf), on_event=lambda e, d: events.append((e, d)))
    assert result.ok, result.error_text()
    executing = [d["node"] for e, d in events if e == "executing" and d.get("node")]
    assert executing.index("9:3") < executing.index("9:5") < executing.index("9:6") < executing.index("7")
    assert {d["node"] for e, d in events if e == "progress"} == {"9:5"}
    assert {d["node"] for e, d in events if e == "executed"} == {"7"}

    bad = runner.run(wf, overrides={**tiny_overrides(wf), "9:5.steps": 0})
    assert bad.status == "invalid" and set(bad.node_errors) == {"9:5"}
    assert "node 9:5 (IPX2PSampler, 'Dual-Guidance Sampler (IP2P)'): input 'steps': Value 0 smaller than min of 1" \
        in format_errors(bad.error, bad.node_errors, bad.prompt)


def _tiny_sets(wf) -> list[str]:
    return [a for k, v in tiny_overrides(wf).items() for a in ("--set", f"{k}={v}")]


def test_cli_run_runs_a_subgraph_workflow(runner, tmp_path, capsys):
    wf = load_example(SUBGRAPH_EXAMPLE)
    out = tmp_path / "out"
    args = ["run", str(EXAMPLES_DIR / f"{SUBGRAPH_EXAMPLE}.json"), "--output-dir", str(out), "--input-dir",
            str(copy_inputs(tmp_path / "in")), "--models", str(runner.models_dir), "--temp-dir", str(tmp_path / "t"),
            *_tiny_sets(wf), "--set", "9:5.seed=5"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.out.split() == [str(out / "ipx2p_subgraph_00001_.png")]
    assert "running #9:5 Dual-Guidance Sampler (IP2P) [IPX2PSampler]" in captured.err
    assert json.loads(Image.open(out / "ipx2p_subgraph_00001_.png").text["prompt"])["9:5"]["inputs"]["seed"] == 5

    assert main(args + ["--set", "9:5.steps=0"]) == 2
    assert "node 9:5 (IPX2PSampler, 'Dual-Guidance Sampler (IP2P)'): input 'steps': Value 0 smaller than min of 1" \
        in capsys.readouterr().err


def test_batch_workflow_runs_a_subgraph_workflow(runner, photo, tmp_path, capsys):
    from batch_helpers import by_row, make_photos, results, write_csv

    wf = load_example(SUBGRAPH_EXAMPLE)
    make_photos(tmp_path / "in", photo, 2)
    manifest = write_csv(tmp_path / "in" / "rows.csv", [
        {"image": "p0.png", "instruction": "make it winter"},
        {"image": "p1.png", "instruction": "add snow", "9:5.text_guidance": "9"},
    ])
    out = tmp_path / "out"
    code = main(["batch", str(manifest), "--workflow", str(EXAMPLES_DIR / f"{SUBGRAPH_EXAMPLE}.json"), "--models",
                 str(runner.models_dir), "--out", str(out), *_tiny_sets(wf), "--seed", "10"])
    assert code == 0, capsys.readouterr().err
    rows = by_row(results(out))
    assert [rows[k]["status"] for k in range(2)] == ["done", "done"]
    assert [rows[k]["outputs"] for k in range(2)] == [["p0.png"], ["p1.png"]]
    prompt = json.loads(Image.open(out / "p1.png").text["prompt"])
    assert prompt["9:3"]["inputs"]["instruction"] == "add snow" and prompt["9:5"]["inputs"]["text_guidance"] == 9.0
    assert prompt["9:5"]["inputs"]["seed"] == 11  # --seed 10, row 2
