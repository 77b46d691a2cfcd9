"""Defaults have one home (ipx2p_core.defaults): the same settings give the same pixels through the engine, the CLI,
the one-node Edit Image and the staged nodes. Only the step count and the instruction are given; everything else
(seed, guidance, scheduler, resize keep, restore size, mask grow and feather, dtype, device) is each side's default.
The photo is 44 px wide, so "keep" samples at 40 px and restore_size matters; a mask exercises grow and feather."""

from __future__ import annotations

import os

import ipx2p_nodes
import numpy as np
import pytest
import torch
from ipx2p_nodes.host import get_host, set_host
from PIL import Image

from ipx2p_core import SamplerSettings, defaults, images_to_pil, load_model
from ipx2p_core.pipeline import edit
from ipx2p_standalone.cli import main
from ipx2p_standalone.host import StandaloneHost
from ipx2p_standalone.runner import Runner
from ipx2p_standalone.workflow import input_types, widget_default, widget_kind

STEPS = 3
INSTRUCTION = "make it winter"


@pytest.fixture()
def files(tmp_path, photo, tiny_sd):
    """The photo, an RGBA mask (transparent = edit, as ComfyUI's LoadImage and the CLI read it) and a models folder."""
    photo.save(tmp_path / "photo.png")
    rgba = np.zeros((32, 44, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[6:22, 8:30, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "mask.png")
    (tmp_path / "models" / "diffusers").mkdir(parents=True)
    os.symlink(tiny_sd["folder"], tmp_path / "models" / "diffusers" / "tiny-sd")
    return tmp_path


def widget_defaults(class_type: str) -> dict:
    """Every widget input of a node at its INPUT_TYPES default, as the frontend fills a new node."""
    spec = input_types(ipx2p_nodes.NODE_CLASS_MAPPINGS[class_type])
    return {name: widget_default(s) for name, s in {**spec["required"], **spec["optional"]}.items()
            if widget_kind(s) is not None}


def node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": {**widget_defaults(class_type), **inputs}}


def test_engine_cli_one_node_and_staged_nodes_agree_on_defaults(files, photo, tiny_sd):
    model = load_model(tiny_sd["folder"], dtype=defaults.dtype_for(defaults.DTYPE, "cpu"), device="cpu")
    mask = Image.open(files / "mask.png")
    engine = edit(model, photo, INSTRUCTION, settings=SamplerSettings(steps=STEPS), mask=mask).images
    assert engine.shape == (1, 32, 44, 3)  # restore_size on: back at the photo's size

    out = files / "cli.png"
    assert main(["edit", str(files / "photo.png"), INSTRUCTION, "-m", str(tiny_sd["folder"]), "-o", str(out),
                 "--steps", str(STEPS), "--mask", str(files / "mask.png"), "-q"]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(images_to_pil(engine)[0]))

    prompt = {
        "1": node("IPX2PLoadModel", model_name="[diffusers] tiny-sd"),
        "2": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "mask.png"}},  # output 1: the MASK (1 - alpha)
        "4": node("IPX2PEditImage", model=["1", 0], image=["2", 0], mask=["3", 1], instruction=INSTRUCTION,
                  steps=STEPS),
        "5": node("IPX2PEncodeInstruction", model=["1", 0], instruction=INSTRUCTION),
        "6": node("IPX2PEncodeImage", model=["1", 0], image=["2", 0], mask=["3", 1]),
        "7": node("IPX2PSampler", model=["1", 0], conditioning=["5", 0], image_latents=["6", 0], steps=STEPS),
        "8": node("IPX2PDecode", model=["1", 0], latent=["7", 0]),
    }
    previous = get_host()
    runner = Runner(input_dir=files, output_dir=files / "out", temp_dir=files / "temp",
                    host=StandaloneHost(models_dir=files / "models", device="cpu"))
    try:
        result = runner.run(prompt, outputs=["4", "8"]).raise_for_error()
    finally:
        set_host(previous)
    assert torch.equal(result.output("4"), engine)
    assert torch.equal(result.output("8"), engine)


def test_node_widgets_show_the_engine_defaults():
    edit_node = widget_defaults("IPX2PEditImage")
    assert (edit_node["steps"], edit_node["text_guidance"], edit_node["image_guidance"], edit_node["seed"],
            edit_node["scheduler"]) == (defaults.STEPS, defaults.TEXT_GUIDANCE, defaults.IMAGE_GUIDANCE,
                                        defaults.SEED, defaults.SCHEDULER)
    assert (edit_node["mask_grow"], edit_node["mask_feather"], edit_node["restore_size"], edit_node["resize"]) == \
        (defaults.MASK_GROW, defaults.MASK_FEATHER, defaults.RESTORE_SIZE, defaults.RESIZE)
    sweep = widget_defaults("IPX2PGuidanceSweep")
    assert (sweep["text_guidances"], sweep["image_guidances"], sweep["max_batch"]) == \
        ("5, 7.5, 10", "1, 1.5, 2", defaults.SWEEP_MAX_BATCH)
    assert widget_defaults("IPX2PDecode")["restore_size"] is defaults.RESTORE_SIZE is True
    assert defaults.MASK_FEATHER == 8


@pytest.mark.parametrize("device,dtype", [("cpu", "fp32"), ("cuda", "fp16"), ("mps", "fp16")])
def test_auto_precision(device, dtype):
    assert defaults.dtype_for("auto", device) == dtype
    assert defaults.dtype_for("bf16", device) == "bf16"
