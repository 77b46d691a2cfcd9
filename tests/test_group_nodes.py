"""Legacy group nodes (``extra.groupNodes``) in the UI → API converter, the runner and ``ipx2p run``.

The fixtures in tests/data/group_nodes were made in frontend 1.27.10 (its own "Convert selected nodes to group node"
on the shipped examples) and hold what the current frontend (1.58.1) queues after it migrates them to subgraphs and
what 1.27.10 itself queued (tools/build_group_node_fixtures.py); ``ui_to_api`` must give the current frontend's
prompt with the values the group node showed. tests/test_subgraphs_browser.py
checks the same against the live frontend in chromium.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from examples_helpers import copy_inputs, tiny_overrides
from PIL import Image
from test_subgraphs import as_json, runner  # noqa: F401 - the module's runner fixture

from ipx2p_standalone.cli import main
from ipx2p_standalone.group_nodes import group_layout, migrate_group_nodes
from ipx2p_standalone.workflow import id_sort_key, is_link, ui_to_api

FIXTURES = Path(__file__).parent / "data" / "group_nodes"
CASES = sorted(p.stem for p in FIXTURES.glob("*.json"))


def load_case(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def test_fixtures_cover_the_cases():
    assert set(CASES) == {"group_stages", "group_two_instances", "group_one_node_kinds", "group_bypassed",
                          "group_muted_inside"}
    for case in CASES:
        data = load_case(case)
        assert (data["made_in"], data["frontend"]) == ("1.27.10", "1.58.1")
        assert data["workflow"]["extra"]["groupNodes"]  # made as a legacy group node


def intended(data: dict) -> dict:
    """The current frontend's prompt (ids, links, titles) with the widget values the legacy frontend queued for the
    same nodes (paired by class and order): 1.58.1 reads a group's values in a newer widget order than the one they
    were saved in, which differs for inner nodes with ten or more inputs (see ipx2p_standalone/group_nodes.py)."""
    out = copy.deepcopy(data["output"])
    legacy = data["legacy_output"]
    for cls in {v["class_type"] for v in out.values()}:
        ours = sorted((k for k, v in out.items() if v["class_type"] == cls), key=id_sort_key)
        theirs = sorted((k for k, v in legacy.items() if v["class_type"] == cls), key=id_sort_key)
        assert len(ours) == len(theirs), cls
        for a, b in zip(ours, theirs):
            out[a]["inputs"].update({k: v for k, v in legacy[b]["inputs"].items() if not is_link(v)})
    return out


@pytest.mark.parametrize("case", CASES)
def test_ui_to_api_equals_the_current_frontends_prompt_with_the_saved_values(runner, case):  # noqa: F811
    data = load_case(case)
    got = ui_to_api(data["workflow"], runner.node_classes, runner.display_names).prompt
    # ids (new subgraph node : new inner ids), class_type, links and _meta as the current frontend queues them
    assert as_json(got) == intended(data)
    if case != "group_bypassed":  # a sampler or one-node edit (10+ inputs) inside: 1.58.1 scrambles their values
        node = next(k for k, v in data["output"].items() if v["class_type"] in ("IPX2PSampler", "IPX2PEditImage"))
        assert data["output"][node]["inputs"] != as_json(got)[node]["inputs"]
        assert got[node]["inputs"]["scheduler"] == "auto" and data["output"][node]["inputs"]["scheduler"] != "auto"
    else:  # only nodes with fewer than ten inputs inside: the current frontend agrees value for value
        assert as_json(got) == data["output"]


def test_values_ids_and_links_follow_the_frontend(runner):  # noqa: F811
    def prompt(case):
        return ui_to_api(load_case(case)["workflow"], runner.node_classes, runner.display_names).prompt

    p = prompt("group_stages")  # 3, 4, 5 grouped as "Stages"; the group's seed 1234 and text guidance 9
    sampler = next(v for k, v in p.items() if v["class_type"] == "IPX2PSampler")
    assert (sampler["inputs"]["seed"], sampler["inputs"]["text_guidance"]) == (1234, 9)
    decode = next(v for v in p.values() if v["class_type"] == "IPX2PDecode")
    assert decode["inputs"]["latent"][0] == next(k for k, v in p.items() if v["class_type"] == "IPX2PSampler")
    assert all(":" in k for k, v in p.items() if v["class_type"] in ("IPX2PSampler", "IPX2PEncodeImage"))
    p = prompt("group_two_instances")  # two instances: seeds 7 and 8, the second one's own instruction
    seeds = sorted(v["inputs"]["seed"] for v in p.values() if v["class_type"] == "IPX2PSampler")
    texts = sorted(v["inputs"]["instruction"] for v in p.values() if v["class_type"] == "IPX2PEncodeInstruction")
    assert seeds == [7, 8] and texts == ["make it autumn", "make it winter"]
    p = prompt("group_muted_inside")  # the decode node was muted before grouping: it stays muted inside
    assert not any(v["class_type"] == "IPX2PDecode" for v in p.values())


def test_legacy_separator_and_reopened_migration(runner):  # noqa: F811
    data = load_case("group_stages")
    old = copy.deepcopy(data["workflow"])  # files before frontend 1.2.63 name the type workflow/NAME
    for n in old["nodes"]:
        n["type"] = n["type"].replace("workflow>", "workflow/")
    assert as_json(ui_to_api(old, runner.node_classes, runner.display_names).prompt) == intended(data)
    # the migrated workflow is an ordinary subgraph workflow: converting it again gives the same prompt
    migrated = migrate_group_nodes(data["workflow"], runner.node_classes)
    assert "groupNodes" not in migrated["extra"] and migrated["definitions"]["subgraphs"]
    assert as_json(ui_to_api(migrated, runner.node_classes, runner.display_names).prompt) == intended(data)


def test_group_layout_matches_what_the_group_shows(runner):  # noqa: F811
    data = load_case("group_stages")["workflow"]["extra"]["groupNodes"]["Stages"]
    layout = group_layout("Stages", data, runner.node_classes)
    types = [n["type"] for n in data["nodes"]]
    # sockets: the model (into three nodes) and the image come from outside; the widgets are the three nodes'
    assert sorted((types[i], name) for i, name in layout.inputs.values() if name in ("model", "image")) == [
        ("IPX2PEncodeImage", "image"), ("IPX2PEncodeImage", "model"), ("IPX2PEncodeInstruction", "model"),
        ("IPX2PSampler", "model")]
    assert [(types[i], s) for i, s in layout.outputs.values()] == [("IPX2PSampler", 0)]
    assert {"seed", "text_guidance", "instruction"} <= {w.name for w in layout.widgets}


def test_cli_runs_a_group_node_workflow(runner, tmp_path, capsys):  # noqa: F811
    wf = load_case("group_stages")["workflow"]
    path = tmp_path / "grouped.json"
    path.write_text(json.dumps(wf))
    out = tmp_path / "out"
    migrated = migrate_group_nodes(wf, runner.node_classes)  # the ids the runner gives the group's nodes
    sets = [a for k, v in tiny_overrides(migrated).items() for a in ("--set", f"{k}={v}")]
    args = ["run", str(path), "--output-dir", str(out), "--input-dir", str(copy_inputs(tmp_path / "in")),
            "--models", str(runner.models_dir), "--temp-dir", str(tmp_path / "t"), *sets]
    assert main(args) == 0, capsys.readouterr().err
    png = out / "ipx2p_00001_.png"
    assert capsys.readouterr().out.split() == [str(png)]
    prompt = json.loads(Image.open(png).text["prompt"])
    assert next(v for v in prompt.values() if v["class_type"] == "IPX2PSampler")["inputs"]["seed"] == 1234
