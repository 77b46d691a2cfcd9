"""Every shipped example workflow runs end to end through the runner (model names mapped to tiny models)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import ipx2p_nodes
from examples_helpers import EXAMPLES, build_models_dir, copy_inputs, load_example, tiny_overrides
from ipx2p_nodes.host import get_host, set_host
from ipx2p_standalone.host import StandaloneHost
from ipx2p_standalone.runner import Runner

EXPECTED = {  # example -> (output prefix, number of images, size of the first (w, h))
    "ipx2p_sd15_staged": ("ipx2p", 1, (512, 384)),
    "ipx2p_sd15_edit_image": ("ipx2p_edit", 1, (512, 384)),
    "ipx2p_sd15_subgraph": ("ipx2p_subgraph", 1, (512, 384)),
    "ipx2p_sdxl_edit": ("ipx2p_sdxl", 1, (512, 384)),
    "ipx2p_cosxl_edit": ("ipx2p_cosxl", 1, (512, 384)),
    "ipx2p_lora_embedding": ("ipx2p_lora", 1, (512, 384)),
    "ipx2p_masked_edit": ("ipx2p_masked", 1, (512, 384)),
    "ipx2p_guidance_sweep": ("ipx2p_sweep", 1, None),
}


@pytest.fixture(scope="module")
def runner(tmp_path_factory, tiny_sd, tiny_sdxl, tiny_cosxl):
    root = tmp_path_factory.mktemp("examples")
    models = build_models_dir(root, tiny_sd, tiny_sdxl, tiny_cosxl)
    previous = get_host()
    r = Runner(output_dir=root / "out", input_dir=copy_inputs(root / "in"), temp_dir=root / "temp",
               host=StandaloneHost(models_dir=models, device="cpu"))
    yield r
    set_host(previous)


def test_every_example_is_listed_and_has_a_thumbnail():
    from examples_helpers import EXAMPLES_DIR

    assert set(EXAMPLES) == set(EXPECTED)
    for name in EXAMPLES:
        assert (EXAMPLES_DIR / f"{name}.jpg").is_file()
        wf = load_example(name)
        notes = [n for n in wf["nodes"] if n["type"] == "Note"]
        assert notes and "models/" in notes[0]["widgets_values"][0]  # says where the model goes
        assert "copied into ComfyUI's input folder when the pack loads" in notes[0]["widgets_values"][0]


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_end_to_end(runner, name):
    wf = load_example(name)
    result = runner.run(wf, overrides=tiny_overrides(wf), extra_pnginfo={"workflow": wf})
    assert result.ok, result.error_text()
    prefix, count, size = EXPECTED[name]
    saved = [p for p in result.files if p.name.startswith(prefix + "_")]
    assert len(saved) == count
    img = Image.open(saved[0])
    if size:
        assert img.size == size  # restore_size brings the result back to the input's size
    else:  # the sweep's contact sheet: 3 x 3 cells
        assert img.size[0] > 3 * 64 and img.size[1] > 3 * 32
    assert json.loads(img.text["workflow"])["nodes"]  # dropping the PNG into ComfyUI restores the graph
    assert set(json.loads(img.text["prompt"])) == set(result.prompt)


def test_staged_and_one_node_examples_give_identical_pixels(runner):
    out = {}
    for name in ("ipx2p_sd15_staged", "ipx2p_sd15_edit_image", "ipx2p_sd15_subgraph"):
        wf = load_example(name)
        result = runner.run(wf, overrides=tiny_overrides(wf))
        assert result.ok, result.error_text()
        out[name] = np.asarray(Image.open(result.files[0]))
    assert np.array_equal(out["ipx2p_sd15_staged"], out["ipx2p_sd15_edit_image"])
    assert np.array_equal(out["ipx2p_sd15_staged"], out["ipx2p_sd15_subgraph"])  # the stages packed in a subgraph


def test_masked_example_keeps_everything_outside_the_sky(runner):
    wf = load_example("ipx2p_masked_edit")
    result = runner.run(wf, overrides=tiny_overrides(wf))
    assert result.ok, result.error_text()
    edited = np.asarray(Image.open(result.files[0]).convert("RGB")).astype(int)
    source = Image.open(runner.folders.input / "ipx2p_example_sky_mask.png")
    keep = np.asarray(source.getchannel("A")) == 255
    original = np.asarray(source.convert("RGB")).astype(int)
    assert np.abs(edited - original)[keep].max() == 0
    assert np.abs(edited - original)[~keep].max() > 0


def _staged_prompt(runner, **load_inputs):
    from ipx2p_standalone.workflow import apply_overrides, ui_to_api

    wf = load_example("ipx2p_sd15_staged")
    conv = ui_to_api(wf, runner.node_classes, ipx2p_nodes.NODE_DISPLAY_NAME_MAPPINGS)
    apply_overrides(conv.prompt, tiny_overrides(wf), runner.node_classes, conv)
    (load_id,) = [i for i, n in conv.prompt.items() if n["class_type"] == "IPX2PLoadModel"]
    conv.prompt[load_id]["inputs"].update(load_inputs)
    return conv.prompt, load_id


def test_load_model_validation_leaves_its_other_inputs_to_the_host(runner):
    """VALIDATE_INPUTS names only model_name, so the host still checks dtype, device and family (issue 12.3)."""
    prompt, load_id = _staged_prompt(runner, dtype="fp64")
    result = runner.run(prompt)
    assert list(result.node_errors) == [load_id]
    (err,) = result.node_errors[load_id]["errors"]
    assert err["type"] == "value_not_in_list"
    assert err["details"] == "dtype: 'fp64' not in ['auto', 'fp32', 'fp16', 'bf16']"


def test_a_missing_model_is_one_error(runner):
    prompt, load_id = _staged_prompt(runner, model_name="nope.safetensors")
    result = runner.run(prompt)
    assert list(result.node_errors) == [load_id]
    (err,) = result.node_errors[load_id]["errors"]
    assert err["type"] == "custom_validation_failed"
    assert err["details"].startswith("model_name - Model 'nope.safetensors' not found (looked in checkpoints: ")


TITLE_HEIGHT = 30  # LiteGraph draws a node's title bar above its pos; size is the body below it
WIDGET_ROW = 24  # a widget's height plus its gap in the frontend (LiteGraph: 20 + 4)


def _rect(node) -> tuple[float, float, float, float]:
    x, y = node["pos"]
    w, h = node["size"]
    return x, y - TITLE_HEIGHT, x + w, y + h


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_nodes_do_not_overlap(name):
    """Issue 12.2: no node covers another (the SD 1.5 staged example's Note hid Encode Image's widgets)."""
    nodes = load_example(name)["nodes"]
    for node in nodes:  # each body is at least tall enough for its widgets and sockets
        rows = len(node.get("widgets_values", [])) + max(len(node["inputs"]), len(node["outputs"]))
        assert node["size"][1] >= rows * WIDGET_ROW * 0.75, (node["type"], node["size"])
    overlaps = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            ax0, ay0, ax1, ay1 = _rect(a)
            bx0, by0, bx1, by1 = _rect(b)
            if ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1:
                overlaps.append((a["id"], a["type"], b["id"], b["type"]))
    assert overlaps == []
