"""Bad inputs: each gives one clear IP2PError (what was wrong, the value, what would be right) and the process
stays usable afterwards."""

from __future__ import annotations

import math
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from ipx2p_core import IP2PError, SamplerSettings, encode_image, encode_instruction, load_model, sample
from ipx2p_core.pipeline import edit


@pytest.fixture(scope="module")
def sd_model(tiny_sd):
    return load_model(tiny_sd["folder"], cache=None)


@pytest.fixture(scope="module")
def four_channel(tmp_path_factory):
    """An ordinary text-to-image (4-channel) model, as a diffusers folder and as a single file."""
    from diffusers import UNet2DConditionModel

    import tiny_models
    from ipx2p_core.ldm_layout import save_single_file

    comps = tiny_models.tiny_sd_components()
    torch.manual_seed(0)
    comps["unet"] = UNet2DConditionModel(**{**tiny_models.TINY_UNET, "in_channels": 4})
    root = tmp_path_factory.mktemp("four_channel")
    folder = tiny_models.save_diffusers_folder(comps, root / "folder", sdxl=False)
    file = save_single_file(root / "t2i.safetensors", comps["unet"], comps["vae"], (comps["text_encoder"],), "sd15")
    return folder, file


@pytest.mark.parametrize("which", [0, 1])
def test_four_channel_model_is_rejected(four_channel, which):
    with pytest.raises(IP2PError, match=r"not an InstructPix2Pix model: its UNet takes 4 input channels.*needs 8"):
        load_model(four_channel[which], cache=None, config=four_channel[0])


def test_truncated_single_file(tiny_sd, tmp_path):
    bad = tmp_path / "truncated.safetensors"
    data = tiny_sd["file"].read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(IP2PError, match=r"truncated or corrupt"):
        load_model(bad, cache=None, config=tiny_sd["config"])


def test_corrupt_single_file(tmp_path):
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(np.random.RandomState(0).bytes(4096))
    with pytest.raises(IP2PError, match=r"Could not read .*garbage.safetensors"):
        load_model(bad, cache=None)


def test_truncated_folder_weights(tiny_sd, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_sd["folder"], folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])
    with pytest.raises(IP2PError, match=r"truncated|corrupt|Could not load unet"):
        load_model(folder, cache=None)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.makedirs, (str(self.marker),))


def test_unsafe_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "payload_ran"
    bad = tmp_path / "model.ckpt"
    with open(bad, "wb") as f:
        pickle.dump({"state_dict": {"x": _Payload(marker)}}, f)
    with pytest.raises(IP2PError, match=r"Refusing to load .*model.ckpt.*arbitrary code.*safetensors"):
        load_model(bad, cache=None)
    assert not marker.exists()


def test_torch_pickle_with_tensors_only_loads_as_checkpoint_check(tiny_sd, tmp_path):
    """A .ckpt holding only tensors passes the safe unpickler and reaches family detection."""
    from safetensors.torch import load_file

    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(tiny_sd["file"]))}, ckpt)
    model = load_model(ckpt, cache=None, config=tiny_sd["config"])
    assert model.family.value == "sd15"


def test_missing_path_says_where_it_looked(tmp_path):
    with pytest.raises(IP2PError, match=rf"Model not found: .*looked for {tmp_path}/nope.safetensors"):
        load_model(tmp_path / "nope.safetensors")


def test_folder_without_model_index(tmp_path):
    with pytest.raises(IP2PError, match=r"without model_index.json"):
        load_model(tmp_path)


def test_lora_file_given_as_model(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "style.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}, str(path))
    with pytest.raises(IP2PError, match=r"not a Stable Diffusion checkpoint.*looks like a LoRA"):
        load_model(path, cache=None)


def test_sdxl_file_forced_as_sd(tiny_sdxl):
    with pytest.raises(IP2PError, match=r"forced to load as SD 1.5 InstructPix2Pix, but its weights are SDXL"):
        load_model(tiny_sdxl["file"], family="sd15", cache=None, config=tiny_sdxl["config"])


def test_sd_folder_forced_as_sdxl(tiny_sd):
    with pytest.raises(IP2PError, match=r"forced to load as SDXL InstructPix2Pix, but its weights are SD 1.5"):
        load_model(tiny_sd["folder"], family="sdxl", cache=None)


@pytest.mark.parametrize("size", [(0, 0), (0, 16), (20000, 16)])
def test_bad_image_sizes(sd_model, size):
    img = Image.new("RGB", size)
    expected = r"empty" if 0 in size else r"20000.* largest side allowed is 8192.*fit:1024"
    with pytest.raises(IP2PError, match=expected):
        encode_image(sd_model, img)


def test_huge_image_with_fit_policy_is_fine(sd_model):
    img = Image.new("RGB", (4000, 64), (120, 30, 200))
    latents = encode_image(sd_model, img, "fit:256")
    assert latents.size == (64, 256)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("text_guidance", math.nan, r"Text guidance must be a finite number"),
        ("image_guidance", float("inf"), r"Image guidance must be a finite number"),
        ("text_guidance", -1.0, r"Text guidance must be 0 or more, got -1.0"),
        ("image_guidance", -0.5, r"Image guidance must be 0 or more, got -0.5"),
        ("steps", 0, r"Steps must be a whole number of at least 1, got 0"),
        ("steps", -3, r"at least 1, got -3"),
        ("scheduler", "euler_b", r"Unknown scheduler 'euler_b'. Choose one of: euler_a, euler"),
        ("scheduler", "edm_euler", r"does not fit a SD 1.5 / SDXL"),
        ("guidance_rescale", 1.5, r"Guidance rescale must be between 0 and 1"),
        ("seed", -1, r"Seed must be a whole number from 0"),
        ("images_per_instruction", 0, r"Images per instruction must be at least 1"),
    ],
)
def test_bad_settings(sd_model, photo, field, value, message):
    cond = encode_instruction(sd_model, "make it winter")
    img = encode_image(sd_model, photo)
    with pytest.raises(IP2PError, match=message):
        sample(sd_model, cond, img, SamplerSettings(**{"steps": 2, field: value}))


def test_bad_resize_policy(sd_model, photo):
    with pytest.raises(IP2PError, match=r"Unknown resize policy 'big'"):
        encode_image(sd_model, photo, "big")


def test_mismatched_batches(sd_model, photo):
    cond = encode_instruction(sd_model, ["a", "b", "c"])
    img = encode_image(sd_model, [photo, photo])
    with pytest.raises(IP2PError, match=r"3 instructions and 2 images"):
        sample(sd_model, cond, img, SamplerSettings(steps=1))


def test_inputs_from_another_family(sd_model, tiny_sdxl, photo):
    xl = load_model(tiny_sdxl["folder"], cache=None)
    with pytest.raises(IP2PError, match=r"encoded for another model family"):
        sample(sd_model, encode_instruction(xl, "x"), encode_image(sd_model, photo), SamplerSettings(steps=1))


def test_process_stays_usable_after_errors(sd_model, tiny_sd, photo, tmp_path):
    settings = SamplerSettings(steps=2, seed=9)
    before = edit(sd_model, photo, "make it winter", settings=settings).images
    for bad in (
        lambda: load_model(tmp_path / "missing"),
        lambda: sample(sd_model, encode_instruction(sd_model, "x"), encode_image(sd_model, photo),
                       SamplerSettings(steps=0)),
        lambda: encode_image(sd_model, Image.new("RGB", (0, 0))),
        lambda: load_model(tiny_sd["folder"], family="sdxl", cache=None),
    ):
        with pytest.raises(IP2PError):
            bad()
    after = edit(sd_model, photo, "make it winter", settings=settings).images
    assert torch.equal(before, after)
