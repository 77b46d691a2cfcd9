"""Masked edits, edit strength, guidance sweeps, instruction chains and image-guidance schedules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import ipx2p_core.sampling as sampling_mod
from ipx2p_core import IP2PError, SamplerSettings, encode_image, encode_instruction, load_model, sample
from ipx2p_core.image import images_to_pil
from ipx2p_core.masks import MaskResizedWarning
from ipx2p_core.pipeline import edit, edit_chain, guidance_sweep


@pytest.fixture(scope="module")
def sd(tiny_sd):
    return load_model(tiny_sd["folder"], cache=None)


def _u8(images):
    return np.stack([np.asarray(p) for p in images_to_pil(images)]).astype(np.int16)


def _box_mask(h, w, box):
    m = torch.zeros(1, h, w)
    y0, y1, x0, x1 = box
    m[:, y0:y1, x0:x1] = 1
    return m


# ------------------------------------------------------------------------------------------------------ masked edits


@pytest.mark.parametrize(
    "resize,restore,grow,feather",
    [("keep", False, 0, 0), ("keep", False, 3, 4), ("fit:64", True, 0, 6), ("fit:64", False, -2, 2)],
)
def test_pixels_outside_the_mask_are_the_input(sd, photo, resize, restore, grow, feather):
    mask = _box_mask(32, 44, (8, 24, 10, 30))
    s = SamplerSettings(steps=3, seed=4)
    out = edit(sd, photo, "make it winter", settings=s, resize=resize, restore_size=restore, mask=mask,
               mask_grow=grow, mask_feather=feather)
    region = out.latents.region
    if tuple(out.images.shape[1:3]) == (32, 44):
        src, m = region.source_pixels, region.source_mask
    else:
        src, m = region.pixels, region.pixel_mask
    outside = (m == 0)[0].numpy()
    diff = np.abs(_u8(out.images)[0] - _u8(src)[0])
    assert outside.sum() > 100 and diff[outside].max() == 0  # exact in uint8
    assert diff[(m > 0.5)[0].numpy()].max() > 0  # the masked region was edited


def test_mask_blends_latents_every_step(sd, photo):
    """Inside the loop the unmasked latents track the input, so the decoded seam needs no repair."""
    mask = _box_mask(32, 44, (0, 32, 0, 22))  # left half
    lat = encode_image(sd, photo, mask=mask)
    out = sample(sd, encode_instruction(sd, "x"), lat, SamplerSettings(steps=3))
    keep = (lat.region.latent_mask == 0).expand_as(out.samples)
    target = lat.latents * sd.vae.config.scaling_factor
    assert torch.allclose(out.samples[keep], target[keep])


def test_mask_of_another_size_is_stretched_with_a_note(sd, photo):
    small = _box_mask(16, 22, (4, 12, 5, 15))
    with pytest.warns(MaskResizedWarning, match=r"Mask is 22x16 but the image is 44x32; the mask was stretched"):
        lat = encode_image(sd, photo, mask=small)
    assert lat.region.source_mask.shape == (1, 32, 44)


def test_mask_from_an_image_with_alpha(sd, photo):
    rgba = photo.convert("RGBA")
    alpha = np.full((32, 44), 255, np.uint8)
    alpha[8:20, 8:20] = 0  # transparent = edit, as ComfyUI's LoadImage mask
    rgba.putalpha(Image.fromarray(alpha))
    # no feather (the default softens the edge by 8 px), so the mask's own values show
    lat = encode_image(sd, photo, mask=rgba, mask_feather=0)
    assert float(lat.region.source_mask[0, 10, 10]) == 1.0 and float(lat.region.source_mask[0, 0, 0]) == 0.0


@pytest.mark.parametrize("bad,message", [
    (torch.full((1, 8, 8), float("nan")), "NaN"),
    (torch.zeros(3, 32, 44), "3 masks for 1 images"),
    ("mask.png", "Unsupported mask type str"),
])
def test_bad_masks(sd, photo, bad, message):
    with pytest.raises(IP2PError, match=message):
        encode_image(sd, photo, mask=bad)


# ---------------------------------------------------------------------------------------------------- edit strength


def test_strength_one_is_the_standard_edit_exactly(sd, photo):
    cond, img = encode_instruction(sd, "make it winter"), encode_image(sd, photo)
    base = sample(sd, cond, img, SamplerSettings(steps=4, seed=2)).samples
    one = sample(sd, cond, img, SamplerSettings(steps=4, seed=2, strength=1.0)).samples
    assert torch.equal(base, one)


@pytest.mark.parametrize("scheduler", ["euler_a", "ddim", "dpmpp_2m"])
def test_lower_strength_starts_from_the_noised_input(sd, photo, scheduler):
    """Strength s runs the last int(steps*s) steps, from the input's latents noised to that level: the starting
    point depends on the picture at s < 1, and is pure noise (independent of the picture) at s = 1."""
    cond = encode_instruction(sd, "x")
    other = photo.transpose(Image.Transpose.ROTATE_180)

    def first_input(picture, strength):
        inputs = []
        handle = sd.unet.register_forward_pre_hook(lambda m, a: inputs.append(a[0][:1, :4].clone()))
        try:
            sample(sd, cond, encode_image(sd, picture),
                   SamplerSettings(steps=10, seed=2, scheduler=scheduler, strength=strength))
        finally:
            handle.remove()
        assert len(inputs) == round(10 * strength)
        return inputs[0]

    assert torch.equal(first_input(photo, 1.0), first_input(other, 1.0))
    assert float((first_input(photo, 0.3) - first_input(other, 0.3)).abs().max()) > 1e-4


@pytest.mark.parametrize("value", [0.0, -0.5, 1.5, float("nan")])
def test_strength_outside_range(sd, photo, value):
    with pytest.raises(IP2PError, match=r"Edit strength must be in \(0, 1\]"):
        sample(sd, encode_instruction(sd, "x"), encode_image(sd, photo), SamplerSettings(steps=2, strength=value))


def test_strength_too_low_for_the_steps(sd, photo):
    with pytest.raises(IP2PError, match=r"leaves no step out of 4"):
        sample(sd, encode_instruction(sd, "x"), encode_image(sd, photo), SamplerSettings(steps=4, strength=0.1))


# ------------------------------------------------------------------------------------------------- guidance sweeps


# all cells in one batch; the CPU's default chunks; chunks of 2 cells
@pytest.mark.parametrize("max_rows,cpu_rows", [(None, 4096), (None, 12), (7, 12)])
def test_sweep_cells_equal_single_runs(sd, photo, monkeypatch, max_rows, cpu_rows):
    monkeypatch.setattr(sampling_mod, "CPU_SWEEP_ROWS", cpu_rows)
    s = SamplerSettings(steps=3, seed=6, scheduler="euler_a")
    texts, imgs = [3.0, 7.5], [1.0, 1.5, 2.0]
    result = guidance_sweep(sd, photo, "make it winter", texts, imgs, settings=s, max_rows=max_rows)
    assert result.images.shape == (6, 32, 44, 3) and result.cells[1] == (3.0, 1.5)
    for k, (t, g) in enumerate(result.cells):
        single = edit(sd, photo, "make it winter", settings=s.with_(text_guidance=t, image_guidance=g)).images
        assert float((result.images[k] - single[0]).abs().max()) <= 1e-4, (t, g)
    assert result.sheet.shape[0] == 1 and result.sheet.shape[-1] == 3 and result.sheet.shape[2] > 3 * 44


@pytest.mark.parametrize("family", ["sdxl", "cosxl"])
def test_sdxl_sweep_cells_equal_single_runs(tiny_sdxl, tiny_cosxl, photo, monkeypatch, family):
    model = load_model((tiny_sdxl if family == "sdxl" else tiny_cosxl)["folder"], cache=None)
    monkeypatch.setattr(sampling_mod, "CPU_SWEEP_ROWS", 4096)  # all cells in one batch (pooled text per row)
    s = SamplerSettings(steps=3, seed=2)
    result = guidance_sweep(model, photo, "make it winter", [1.0, 5.0], [1.0, 1.5], settings=s, negative="blurry")
    for k, (t, g) in enumerate(result.cells):
        single = edit(model, photo, "make it winter", negative="blurry",
                      settings=s.with_(text_guidance=t, image_guidance=g)).images
        assert float((result.images[k] - single[0]).abs().max()) <= 1e-4, (t, g)


@pytest.mark.parametrize("cpu_rows,expected", [
    # one UNet call per step for all 9 cells: 6 cells x 3 passes + 3 cells with image guidance 1, which need 2;
    # at the first step all cells have the same latents, so one row per pass serves them all
    (4096, [3, 24, 24]),
    # on the CPU, batches of at most 12 rows, in equal chunks: 3 cells (one text value) x 3 steps, three times
    (12, [3, 8, 8] * 3),
])
def test_sweep_uses_one_unet_call_per_step(sd, photo, monkeypatch, cpu_rows, expected):
    monkeypatch.setattr(sampling_mod, "CPU_SWEEP_ROWS", cpu_rows)
    calls = []
    handle = sd.unet.register_forward_pre_hook(lambda m, a: calls.append(int(a[0].shape[0])))
    try:
        guidance_sweep(sd, photo, "x", [5, 7.5, 10], [1, 1.5, 2], settings=SamplerSettings(steps=3))
    finally:
        handle.remove()
    assert calls == expected


@pytest.mark.parametrize("texts,imgs", [([], [1.0]), ([7.5], [])])
def test_empty_sweep_lists(sd, photo, texts, imgs):
    with pytest.raises(IP2PError, match=r"needs at least one text guidance and one image guidance value"):
        guidance_sweep(sd, photo, "x", texts, imgs, settings=SamplerSettings(steps=1))


# ------------------------------------------------------------------------------------------------ instruction chains


def test_chain_of_one_equals_a_single_edit(sd, photo):
    s = SamplerSettings(steps=3, seed=1)
    (only,) = edit_chain(sd, photo, ["make it winter"], settings=s)
    assert torch.equal(only.images, edit(sd, photo, "make it winter", settings=s).images)


def test_chain_feeds_each_result_forward(sd, photo):
    s = SamplerSettings(steps=2, seed=1)
    first, second = edit_chain(sd, photo, ["make it winter", "", "add a snowman"], settings=s)  # blank lines skipped
    assert torch.equal(second.images, edit(sd, first.images, "add a snowman", settings=s).images)


@pytest.mark.parametrize("instructions", [[], ["", "  "]])
def test_empty_chain(sd, photo, instructions):
    with pytest.raises(IP2PError, match=r"needs at least one non-empty instruction"):
        edit_chain(sd, photo, instructions, settings=SamplerSettings(steps=1))


# ---------------------------------------------------------------------------------------- image-guidance schedule


def test_image_guidance_schedule(sd, photo):
    cond, img = encode_instruction(sd, "x"), encode_image(sd, photo)
    s = SamplerSettings(steps=4, seed=3, image_guidance=1.5)
    constant = sample(sd, cond, img, s).samples
    flat = sample(sd, cond, img, s.with_(image_guidance_end=1.5)).samples
    ramp = sample(sd, cond, img, s.with_(image_guidance_end=1.0)).samples
    assert torch.equal(constant, flat)
    assert float((ramp - constant).abs().max()) > 1e-3
    with pytest.raises(IP2PError, match=r"Image guidance end must be 0 or more"):
        sample(sd, cond, img, s.with_(image_guidance_end=-2.0))
