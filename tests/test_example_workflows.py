"""Every shipped example workflow runs end to end through the runner (model names mapped to tiny models)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

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
