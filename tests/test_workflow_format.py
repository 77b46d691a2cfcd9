"""Workflow formats: UI → API conversion as the ComfyUI frontend does it, overrides, and the files SaveImage /
PreviewImage / LoadImage read and write (PNG text chunks exactly as ComfyUI writes them)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from dummy_nodes import CALLS, NODES
from PIL import Image

from ipx2p_standalone.workflow import (
    WidgetSlot,
    WorkflowFormatError,
    map_widgets_values,
    parse_set_argument,
    ui_to_api,
    widget_layout,
)


def ui(nodes, links, version=0.4):
    """A UI workflow; links as (id, from, from_slot, to, to_slot, type)."""
    wf = {"last_node_id": max(n["id"] for n in nodes), "last_link_id": max([l[0] for l in links], default=0),
          "nodes": nodes, "groups": [], "config": {}, "extra": {"ds": {"scale": 1, "offset": [0, 0]}},
          "version": version}
    if version == 0.4:
        wf["links"] = [list(l) for l in links]
    else:
        wf["links"] = [{"id": l[0], "origin_id": l[1], "origin_slot": l[2], "target_id": l[3], "target_slot": l[4],
                        "type": l[5]} for l in links]
        wf["state"] = {"lastNodeId": wf.pop("last_node_id"), "lastLinkId": wf.pop("last_link_id"),
                       "lastGroupId": 0, "lastRerouteId": 0}
    return wf


def node(id, type, widgets=None, inputs=(), outputs=(), mode=0, title=None):
    n = {"id": id, "type": type, "pos": [0, 0], "size": [200, 100], "flags": {}, "order": id, "mode": mode,
         "inputs": [dict(i) for i in inputs], "outputs": [dict(o) for o in outputs],
         "properties": {"Node name for S&R": type}}
    if widgets is not None:
        n["widgets_values"] = widgets
    if title:
        n["title"] = title
    return n


def inp(name, type, link=None, widget=False):
    d = {"name": name, "type": type, "link": link}
    if widget:
        d["widget"] = {"name": name}
    return d


def out(name, type, links=(), slot=0):
    return {"name": name, "type": type, "links": list(links), "slot_index": slot}


# ---------------------------------------------------------------------------------------------- widgets_values


def test_widget_layout_counts_control_and_upload_values(runner):
    assert widget_layout(NODES["MakeImage"]) == [WidgetSlot("text"), WidgetSlot("seed"),
                                                 WidgetSlot("seed", "control"), WidgetSlot("width"),
                                                 WidgetSlot("color")]
    assert widget_layout(runner.node_classes["LoadImage"]) == [WidgetSlot("image"), WidgetSlot("image", "upload")]
    # socket-only inputs (NUMBER) have no widget; optional widgets follow required ones
    assert widget_layout(NODES["Scale"]) == [WidgetSlot("factor"), WidgetSlot("offset")]


def test_seed_control_value_is_skipped():
    # The frontend stores (text, seed, control_after_generate, width, combo)
    values, index, controls = map_widgets_values(NODES["MakeImage"], ["make it blue", 42, "fixed", 3, "green"])
    assert values == {"text": "make it blue", "seed": 42, "width": 3, "color": "green"}
    assert index == {"text": 0, "seed": 1, "width": 3, "color": 4}
    assert controls == {"seed": "fixed"}
    # an older file without the control value still maps; missing values take defaults
    values, _, controls = map_widgets_values(NODES["MakeImage"], ["t", 7, 5])
    assert values == {"text": "t", "seed": 7, "width": 5, "color": "red"} and controls == {}


def test_ui_to_api_basic_links_titles_and_control(runner):
    wf = ui([
        node(1, "MakeImage", ["hi", 1234, "randomize", 4, "blue"], outputs=[out("IMAGE", "IMAGE", [1])],
             title="My image"),
        node(2, "SaveImage", ["pre"], inputs=[inp("images", "IMAGE", 1)]),
        node(3, "Note", ["just a note"]),
        node(4, "MarkdownNote", ["# notes"]),
    ], [(1, 1, 0, 2, 0, "IMAGE")])
    conv = ui_to_api(wf, runner.node_classes, runner.display_names)
    assert conv.prompt == {
        "1": {"inputs": {"text": "hi", "seed": 1234, "width": 4, "color": "blue"}, "class_type": "MakeImage",
              "_meta": {"title": "My image"}},
        "2": {"inputs": {"filename_prefix": "pre", "images": ["1", 0]}, "class_type": "SaveImage",
              "_meta": {"title": "Save Image"}},
    }
    assert conv.controls == {("1", "seed"): "randomize"}
    assert conv.workflow == wf and conv.workflow is not wf


def test_schema_1_link_objects_convert_the_same(runner):
    nodes = [node(1, "MakeImage", ["hi", 5, "fixed", 4, "red"], outputs=[out("IMAGE", "IMAGE", [1])]),
             node(2, "PreviewImage", [], inputs=[inp("images", "IMAGE", 1)])]
    a = ui_to_api(ui(copy.deepcopy(nodes), [(1, 1, 0, 2, 0, "IMAGE")]), runner.node_classes).prompt
    b = ui_to_api(ui(copy.deepcopy(nodes), [(1, 1, 0, 2, 0, "IMAGE")], version=1), runner.node_classes).prompt
    assert a == b and a["2"]["inputs"] == {"images": ["1", 0]}


def test_load_image_upload_value_is_not_an_input(runner):
    wf = ui([node(1, "LoadImage", ["photo.png", "image"], outputs=[out("IMAGE", "IMAGE", [1]), out("MASK", "MASK")]),
             node(2, "PreviewImage", [], inputs=[inp("images", "IMAGE", 1)])], [(1, 1, 0, 2, 0, "IMAGE")])
    assert ui_to_api(wf, runner.node_classes).prompt["1"]["inputs"] == {"image": "photo.png"}


def test_reroute_passes_through(runner):
    wf = ui([
        node(1, "Number", [3.0], outputs=[out("NUMBER", "NUMBER", [1])]),
        node(2, "Reroute", None, inputs=[inp("", "*", 1)], outputs=[out("", "NUMBER", [2])]),
        node(3, "Reroute", None, inputs=[inp("", "*", 2)], outputs=[out("", "NUMBER", [3])]),
        node(4, "Show", ["x"], inputs=[inp("value", "NUMBER", 3)]),
    ], [(1, 1, 0, 2, 0, "NUMBER"), (2, 2, 0, 3, 0, "*"), (3, 3, 0, 4, 0, "NUMBER")])
    prompt = ui_to_api(wf, runner.node_classes).prompt
    assert set(prompt) == {"1", "4"} and prompt["4"]["inputs"]["value"] == ["1", 0]
    assert runner.run(wf).outputs["4"] == {"text": ["x=3.0"]}


def test_primitive_node_value_goes_into_converted_widgets(runner):
    # A PrimitiveNode drives the `seed` widget of two nodes (converted to inputs); its value wins over theirs.
    wf = ui([
        node(1, "PrimitiveNode", [777, "increment"], outputs=[out("INT", "INT", [1, 2])], title="seed"),
        node(2, "MakeImage", ["a", 1, "fixed", 4, "red"], inputs=[inp("seed", "INT", 1, widget=True)],
             outputs=[out("IMAGE", "IMAGE", [3])]),
        node(3, "MakeImage", ["b", 2, "fixed", 4, "green"], inputs=[inp("seed", "INT", 2, widget=True)],
             outputs=[out("IMAGE", "IMAGE", [4])]),
        node(4, "PreviewImage", [], inputs=[inp("images", "IMAGE", 3)]),
        node(5, "PreviewImage", [], inputs=[inp("images", "IMAGE", 4)]),
    ], [(1, 1, 0, 2, 0, "INT"), (2, 1, 0, 3, 0, "INT"), (3, 2, 0, 4, 0, "IMAGE"), (4, 3, 0, 5, 0, "IMAGE")])
    prompt = ui_to_api(wf, runner.node_classes).prompt
    assert "1" not in prompt
    assert prompt["2"]["inputs"]["seed"] == 777 and prompt["3"]["inputs"]["seed"] == 777


def test_converted_widget_linked_from_a_real_node_uses_the_link(runner):
    wf = ui([
        node(1, "Number", [2.5], outputs=[out("NUMBER", "NUMBER", [1])]),
        node(2, "Number", [4.0], inputs=[inp("value", "FLOAT", None, widget=True)],
             outputs=[out("NUMBER", "NUMBER", [2])]),
        node(3, "Scale", [3.0, 1], inputs=[inp("x", "NUMBER", 2), inp("factor", "FLOAT", None, widget=True)]),
        node(4, "Show", ["s"], inputs=[inp("value", "NUMBER", 3)]),
    ], [(1, 1, 0, 9, 0, "NUMBER"), (2, 2, 0, 3, 0, "NUMBER"), (3, 3, 0, 4, 0, "NUMBER")])
    prompt = ui_to_api(wf, runner.node_classes).prompt
    assert prompt["3"]["inputs"] == {"factor": 3.0, "offset": 1, "x": ["2", 0]}
    assert prompt["2"]["inputs"] == {"value": 4.0}  # an unconnected converted widget keeps its value


def test_bypassed_node_passes_matching_input_and_muted_node_is_dropped(runner):
    wf = ui([
        node(1, "MakeImage", ["a", 9, "fixed", 4, "red"], outputs=[out("IMAGE", "IMAGE", [1])]),
        node(2, "Invert", [], inputs=[inp("image", "IMAGE", 1), inp("mask", "MASK")],
             outputs=[out("IMAGE", "IMAGE", [2])], mode=4),
        node(3, "SaveImage", ["bypassed"], inputs=[inp("images", "IMAGE", 2)]),
        node(4, "SaveImage", ["muted"], inputs=[inp("images", "IMAGE", 3)], mode=2),
        node(5, "Invert", [], inputs=[inp("image", "IMAGE", 4)], outputs=[out("IMAGE", "IMAGE", [5])], mode=2),
        node(6, "PreviewImage", [], inputs=[inp("images", "IMAGE", 5)]),
    ], [(1, 1, 0, 2, 0, "IMAGE"), (2, 2, 0, 3, 0, "IMAGE"), (3, 1, 0, 4, 0, "IMAGE"), (4, 1, 0, 5, 0, "IMAGE"),
        (5, 5, 0, 6, 0, "IMAGE")])
    prompt = ui_to_api(wf, runner.node_classes).prompt
    assert set(prompt) == {"1", "3", "6"}
    assert prompt["3"]["inputs"]["images"] == ["1", 0]  # wired around the bypassed Invert
    assert "images" not in prompt["6"]["inputs"]  # its source is muted: the link is removed, as the frontend does
    result = runner.run(wf, allow_partial=True)
    assert result.ok and result.node_errors["6"]["errors"][0]["type"] == "required_input_missing"
    assert ("Invert", "") not in CALLS and result.executed == ["1", "3"]


def test_list_widget_values_are_wrapped_and_unwrapped(runner):
    class Listy:
        RETURN_TYPES = ("NUMBER",)
        FUNCTION = "f"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"data": ("STRING", {"default": ""})}}

        def f(self, data):
            return (float(len(data)),)

    classes = {**runner.node_classes, "Listy": Listy}
    wf = ui([node(1, "Listy", [[1, 2, 3]], outputs=[out("NUMBER", "NUMBER", [1])]),
             node(2, "Show", ["n"], inputs=[inp("value", "NUMBER", 1)])], [(1, 1, 0, 2, 0, "NUMBER")])
    assert ui_to_api(wf, classes).prompt["1"]["inputs"]["data"] == {"__value__": [1, 2, 3]}


def test_dynamic_prompts_and_filename_prefix_replacements(runner):
    import datetime
    import random

    from ipx2p_standalone.workflow import format_date, process_dynamic_prompt

    pick_last = lambda: 0.999  # noqa: E731
    assert process_dynamic_prompt("a {b|c|{d|e}} f // note\nx /* y */z \\{lit\\}", pick_last) == "a e f \nx z {lit}"
    assert process_dynamic_prompt("plain text", random.random) == "plain text"
    when = datetime.datetime(2025, 3, 7, 9, 5, 2)
    assert format_date("yyyy-MM-dd_hh-mm-ss yy M d", when) == "2025-03-07_09-05-02 25 3 7"

    wf = ui([node(1, "MakeImage", ["make it {winter|summer}", 5, "fixed", 4, "green"],
                  outputs=[out("IMAGE", "IMAGE", [1])], title="Maker"),
             node(2, "SaveImage", ["%Maker.color%/%MakeImage.width%_%date:yyyy%_%width%_%Nope.x%"],
                  inputs=[inp("images", "IMAGE", 1)])], [(1, 1, 0, 2, 0, "IMAGE")])
    prompt = ui_to_api(wf, runner.node_classes, rng=lambda: 0.0).prompt
    assert prompt["1"]["inputs"]["text"] == "make it winter"
    year = datetime.datetime.now().year
    assert prompt["2"]["inputs"]["filename_prefix"] == f"green/4_{year}_%width%_%Nope.x%"
    # API prompts are not rewritten (the frontend already did it)
    assert runner.run({"1": {"class_type": "MakeImage", "inputs": {"text": "{a|b}", "seed": 1, "width": 4,
                                                                  "color": "red"}},
                       "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}).prompt["1"][
        "inputs"]["text"] == "{a|b}"


def test_group_nodes_the_migration_cannot_convert_are_clear_errors(runner):
    # legacy group nodes become subgraphs (tests/test_group_nodes.py); what cannot be converted says why
    wf = ui([node(1, "MakeImage", ["a", 1, "fixed", 4, "red"]), node(2, "workflow>Pair", [])], [])
    cases = [
        ({}, "Node 2 is a group node (workflow>Pair), but the workflow has no 'extra.groupNodes.Pair' that says "
             "what it holds."),
        ({"Pair": {"nodes": [{"type": "Nope"}], "links": []}},
         "Group node 'Pair' holds a node of type 'Nope', which is not installed."),
        ({"Pair": {"nodes": [{"type": "PrimitiveNode"}], "links": []}},
         "Group node 'Pair' holds a PrimitiveNode, which the runner cannot unpack from a group node (the ComfyUI "
         "frontends misplace its value too). In ComfyUI, move it out of the group or ungroup the group node, check "
         "the values it feeds, and save the workflow again."),
    ]
    for groups, message in cases:
        wf["extra"]["groupNodes"] = groups
        with pytest.raises(WorkflowFormatError) as caught:
            ui_to_api(wf, runner.node_classes)
        assert str(caught.value) == message
        result = runner.run(wf)
        assert result.status == "invalid" and message in result.error["message"]
    # an empty group is dropped, as the frontend drops a group node it cannot convert
    wf["extra"]["groupNodes"] = {"Pair": {"nodes": [], "links": []}}
    assert list(ui_to_api(wf, runner.node_classes).prompt) == ["1"]


def test_unknown_ui_node_type_is_reported_per_node(runner):
    wf = ui([node(1, "MakeImage", ["a", 1, "fixed", 4, "red"], outputs=[out("IMAGE", "IMAGE", [1])]),
             node(2, "SomePackNode", [1, 2], inputs=[inp("image", "IMAGE", 1)])], [(1, 1, 0, 2, 0, "IMAGE")])
    result = runner.run(wf)
    assert result.status == "invalid"
    assert result.node_errors["2"]["class_type"] == "SomePackNode"
    assert "SomePackNode does not exist" in result.node_errors["2"]["errors"][0]["message"]


# ---------------------------------------------------------------------------------------------- overrides


def test_set_argument_parsing():
    assert parse_set_argument("7.text_guidance=9") == ("7.text_guidance", "9")
    assert parse_set_argument("3.instruction=a=b") == ("3.instruction", "a=b")
    for bad in ("7text=1", "7.text", ".x=1", "7.=1"):
        with pytest.raises(ValueError):
            parse_set_argument(bad)


def test_overrides_are_typed_and_patch_the_ui_workflow(runner):
    wf = ui([node(1, "MakeImage", ["hi", 5, "fixed", 4, "red"], outputs=[out("IMAGE", "IMAGE", [1])]),
             node(2, "SaveImage", ["pre"], inputs=[inp("images", "IMAGE", 1)])], [(1, 1, 0, 2, 0, "IMAGE")])
    result = runner.run(wf, overrides={"1.seed": "77", "1.width": "6", "1.color": "blue", "2.filename_prefix": "z"})
    assert result.ok
    assert result.prompt["1"]["inputs"] == {"text": "hi", "seed": 77, "width": 6, "color": "blue"}
    assert result.workflow["nodes"][0]["widgets_values"] == ["hi", 77, "fixed", 6, "blue"]
    assert wf["nodes"][0]["widgets_values"] == ["hi", 5, "fixed", 4, "red"]  # the caller's dict is untouched
    png = Image.open(result.files[0])
    assert json.loads(png.text["workflow"]) == result.workflow


# ---------------------------------------------------------------------------------------------- SaveImage / PNG


def _image_graph(prefix="ComfyUI"):
    return ui([node(1, "MakeImage", ["hi", 5, "fixed", 4, "green"], outputs=[out("IMAGE", "IMAGE", [1])]),
               node(2, "SaveImage", [prefix], inputs=[inp("images", "IMAGE", 1)]),
               node(3, "PreviewImage", [], inputs=[inp("images", "IMAGE", 2)])],
              [(1, 1, 0, 2, 0, "IMAGE"), (2, 1, 0, 3, 0, "IMAGE")])


def test_save_image_png_chunks_restore_the_graph(runner, tmp_path):
    wf = _image_graph()
    result = runner.run(wf)
    assert result.ok, result.error_text()
    assert result.outputs["2"] == {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]}
    path = tmp_path / "out" / "ComfyUI_00001_.png"
    png = Image.open(path)
    # ComfyUI writes json.dumps(prompt) and json.dumps(value) per extra_pnginfo key, in that order
    assert list(png.text) == ["prompt", "workflow"]
    assert png.text["prompt"] == json.dumps(result.prompt)
    assert png.text["workflow"] == json.dumps(wf)
    assert json.loads(png.text["prompt"]) == ui_to_api(wf, runner.node_classes, runner.display_names).prompt
    assert json.loads(png.text["workflow"]) == wf
    pixels = np.asarray(png)
    assert pixels.shape == (6, 4, 3) and (pixels[..., 1] == 5).all() and (pixels[..., 0] == 0).all()
    # PreviewImage: temp folder, random _temp_ prefix, type temp
    (preview,) = result.outputs["3"]["images"]
    assert preview["type"] == "temp" and preview["filename"].startswith("ComfyUI_temp_")
    assert (tmp_path / "temp" / preview["filename"]).is_file()
    assert result.files == [path, tmp_path / "temp" / preview["filename"]]


def test_save_image_counter_subfolder_and_batch(runner, tmp_path):
    (tmp_path / "out" / "shots").mkdir(parents=True)
    (tmp_path / "out" / "shots" / "edit_00007_.png").write_bytes(b"")
    (tmp_path / "out" / "shots" / "other_00042_.png").write_bytes(b"")
    prompt = {"1": {"class_type": "MakeImage", "inputs": {"text": "a", "seed": 1, "width": 4, "color": "red"}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "shots/edit"}}}
    r1 = runner.run(prompt)
    assert r1.outputs["2"]["images"][0] == {"filename": "edit_00008_.png", "subfolder": "shots", "type": "output"}
    prompt["1"]["inputs"]["seed"] = 2
    r2 = runner.run(prompt)
    assert r2.outputs["2"]["images"][0]["filename"] == "edit_00009_.png"
    # API prompt without extra_pnginfo: only the prompt chunk
    assert list(Image.open(r2.files[0]).text) == ["prompt"]
    prompt["2"]["inputs"]["filename_prefix"] = "../escape"
    bad = runner.run(prompt)
    assert bad.status == "error" and "outside the output folder" in bad.error["exception_message"]


def test_save_image_width_height_in_prefix(runner, tmp_path):
    prompt = {"1": {"class_type": "MakeImage", "inputs": {"text": "a", "seed": 1, "width": 5, "color": "red"}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "e_%width%x%height%"}}}
    result = runner.run(prompt, extra_pnginfo={"workflow": {"x": 1}, "note": "hi"})
    assert result.outputs["2"]["images"][0]["filename"] == "e_5x6_00001_.png"
    text = Image.open(result.files[0]).text
    assert list(text) == ["prompt", "workflow", "note"] and text["note"] == '"hi"'


# ---------------------------------------------------------------------------------------------- LoadImage


def _load(runner, name):
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": name}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    result = runner.run(prompt)
    return result


def test_load_image_rgb_rgba_exif_and_frames(runner, tmp_path):
    inp_dir = tmp_path / "in"
    rgb = np.random.RandomState(0).randint(0, 255, (6, 10, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(inp_dir / "rgb.png")
    result = _load(runner, "rgb.png")
    assert result.ok, result.error_text()
    image, mask = result.output("1", 0), result.output("1", 1)
    assert image.dtype == torch.float32 and image.shape == (1, 6, 10, 3)
    assert torch.allclose(image[0], torch.from_numpy(rgb.astype(np.float32) / 255.0))
    assert mask.shape == (1, 64, 64) and not mask.any()

    rgba = np.dstack([rgb, np.full((6, 10), 64, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(inp_dir / "rgba.png")
    mask = _load(runner, "rgba.png").output("1", 1)
    assert mask.shape == (1, 6, 10) and torch.allclose(mask, torch.full((1, 6, 10), 1 - 64 / 255))

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    Image.fromarray(rgb).save(inp_dir / "rotated.jpg", exif=exif)
    assert _load(runner, "rotated.jpg").output("1", 0).shape == (1, 10, 6, 3)

    frames = [Image.fromarray(np.full((6, 10, 3), v, np.uint8)) for v in (0, 120, 240)]
    frames[0].save(inp_dir / "anim.gif", save_all=True, append_images=frames[1:])
    assert _load(runner, "anim.gif").output("1", 0).shape == (3, 6, 10, 3)

    assert runner.node_classes["LoadImage"].INPUT_TYPES()["required"]["image"][0] == \
        ["anim.gif", "rgb.png", "rgba.png", "rotated.jpg"]


def test_load_image_annotations_and_folders(runner, tmp_path):
    (tmp_path / "out" / "sub").mkdir(parents=True)
    Image.new("RGB", (4, 4), "red").save(tmp_path / "out" / "sub" / "r.png")
    result = _load(runner, "sub/r.png [output]")
    assert result.ok and result.output("1", 0).shape == (1, 4, 4, 3)
    Image.new("RGB", (4, 4), "red").save(tmp_path / "secret.png")
    (tmp_path / "in" / "link.png").symlink_to(tmp_path / "secret.png")
    for name in ("../secret.png", str(tmp_path / "secret.png"), "..\\secret.png", "sub/../../secret.png [output]",
                 "link.png", "%2e%2e/secret.png"):
        bad = _load(runner, name)
        assert bad.status == "invalid", name
        assert bad.node_errors["1"]["errors"][0]["type"] == "custom_validation_failed"
