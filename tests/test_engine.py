"""Engine behaviour beyond parity: pass pruning, pairing, callbacks, cancellation, text and image handling, cache."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ipx2p_core import (
    Cancelled,
    SamplerSettings,
    decode_latents,
    encode_image,
    encode_instruction,
    latents_to_preview,
    load_model,
    sample,
)
from ipx2p_core import sampling as sampling_mod
from ipx2p_core.guidance import IMAGE, TEXT, UNCOND, GuidancePlan, plan_guidance
from ipx2p_core.image import to_image_batch
from ipx2p_core.models import ModelCache
from ipx2p_core.text import PromptTruncatedWarning


@pytest.fixture(scope="module")
def sd(tiny_sd):
    return load_model(tiny_sd["folder"], cache=None)


@pytest.fixture(scope="module")
def xl(tiny_sdxl):
    return load_model(tiny_sdxl["folder"], cache=None)


def _unet_batches(model):
    sizes = []
    handle = model.unet.register_forward_pre_hook(lambda m, args: sizes.append(int(args[0].shape[0])))
    return sizes, handle


# ---------------------------------------------------------------------------------------------------- pass pruning


@pytest.mark.parametrize("g_text,g_image,passes", [(7.5, 1.5, 3), (7.5, 1.0, 2), (1.0, 1.0, 1), (1.0, 1.5, 3)])
def test_unet_passes_per_step(sd, photo, g_text, g_image, passes):
    sizes, handle = _unet_batches(sd)
    try:
        sample(sd, encode_instruction(sd, "x"), encode_image(sd, photo),
               SamplerSettings(steps=3, text_guidance=g_text, image_guidance=g_image, images_per_instruction=2))
    finally:
        handle.remove()
    assert sizes == [2 * passes] * 3


@pytest.mark.parametrize("g_text,g_image", [(7.5, 1.0), (1.0, 1.0)])
def test_pruned_equals_unpruned_formula(sd, photo, monkeypatch, g_text, g_image):
    cond, img = encode_instruction(sd, "make it winter"), encode_image(sd, photo)
    settings = SamplerSettings(steps=4, text_guidance=g_text, image_guidance=g_image, seed=5)
    pruned = sample(sd, cond, img, settings).samples
    monkeypatch.setattr(sampling_mod, "plan_guidance",
                        lambda t, i, r=0.0, gate=False: GuidancePlan((TEXT, IMAGE, UNCOND), t, i, r))
    full = sample(sd, cond, img, settings).samples
    # Same formula, different float rounding order: equal to within float32 noise on latents of magnitude ~10
    assert float((pruned - full).abs().max()) <= 1e-4
    assert float((decode_latents(sd, pruned) - decode_latents(sd, full)).abs().max()) <= 1e-4


def test_plan_guidance_table():
    assert plan_guidance(7.5, 1.5).passes == (TEXT, IMAGE, UNCOND)
    assert plan_guidance(7.5, 1.0).passes == (TEXT, IMAGE)
    assert plan_guidance(1.0, 1.0).passes == (TEXT,)
    assert plan_guidance(0.0, 2.0).passes == (TEXT, IMAGE, UNCOND)
    assert plan_guidance(0.8, 1.5, diffusers_gate=True).passes == (TEXT,)


# ------------------------------------------------------------------------------------------------- batches, pairing


def test_instruction_k_is_paired_with_image_k(sd, photo):
    """2 instructions x 2 images x 2 images each: rows are (p1,i1),(p1,i1),(p2,i2),(p2,i2) — not diffusers' p1/i2."""
    other = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    s = SamplerSettings(steps=3, scheduler="euler", images_per_instruction=2)
    cond = encode_instruction(sd, ["make it winter", "make it a statue"])
    imgs = encode_image(sd, [photo, other])
    noise = torch.randn((4, 4, *imgs.latents.shape[-2:]), generator=torch.Generator().manual_seed(0))
    both = sample(sd, cond, imgs, s, noise=noise).samples
    first = sample(sd, encode_instruction(sd, "make it winter"), encode_image(sd, photo), s, noise=noise[:2]).samples
    second = sample(sd, encode_instruction(sd, "make it a statue"), encode_image(sd, other), s, noise=noise[2:]).samples
    pix = lambda lat: decode_latents(sd, lat)  # noqa: E731
    assert float((pix(both[:2]) - pix(first)).abs().max()) <= 1e-4
    assert float((pix(both[2:]) - pix(second)).abs().max()) <= 1e-4
    crossed = sample(sd, encode_instruction(sd, "make it a statue"), encode_image(sd, photo), s, noise=noise[2:]).samples
    assert float((pix(both[2:]) - pix(crossed)).abs().max()) > 1e-2  # diffusers' pairing would give this one


def test_one_instruction_many_images_and_many_instructions_one_image(sd, photo):
    s = SamplerSettings(steps=1)
    out = sample(sd, encode_instruction(sd, "x"), encode_image(sd, [photo, photo, photo]), s)
    assert out.samples.shape[0] == 3
    out = sample(sd, encode_instruction(sd, ["a", "b"]), encode_image(sd, photo), s)
    assert out.samples.shape[0] == 2


def test_seed_reproducible_and_distinct(sd, photo):
    cond, img = encode_instruction(sd, "x"), encode_image(sd, photo)
    a = sample(sd, cond, img, SamplerSettings(steps=2, seed=1)).samples
    b = sample(sd, cond, img, SamplerSettings(steps=2, seed=1)).samples
    c = sample(sd, cond, img, SamplerSettings(steps=2, seed=2)).samples
    assert torch.equal(a, b) and not torch.equal(a, c)
    big = sample(sd, cond, img, SamplerSettings(steps=1, seed=2**64 - 1)).samples
    assert torch.isfinite(big).all()


# ------------------------------------------------------------------------------------------ callbacks, cancellation


@pytest.mark.parametrize("scheduler,steps", [("euler_a", 4), ("heun", 4), ("dpmpp_2m", 3)])
def test_step_callback(sd, photo, scheduler, steps):
    seen = []
    out = sample(sd, encode_instruction(sd, "x"), encode_image(sd, photo),
                 SamplerSettings(steps=steps, scheduler=scheduler),
                 callback=lambda step, total, lat: seen.append((step, total, tuple(lat.shape))))
    assert [s for s, _, _ in seen] == list(range(1, steps + 1))
    assert {t for _, t, _ in seen} == {steps}
    assert seen[-1][2] == tuple(out.samples.shape)


def test_cancel_between_steps_leaves_nothing_half_done(sd, photo):
    cond, img = encode_instruction(sd, "x"), encode_image(sd, photo)
    settings = SamplerSettings(steps=5, seed=3)
    reference = sample(sd, cond, img, settings).samples
    weights_before = {k: v.clone() for k, v in sd.unet.state_dict().items()}
    steps_seen = []
    with pytest.raises(Cancelled, match=r"before step 3 of 5"):
        sample(sd, cond, img, settings, callback=lambda s, t, l: steps_seen.append(s), cancel=lambda: len(steps_seen) >= 2)
    assert steps_seen == [1, 2]
    assert all(torch.equal(v, sd.unet.state_dict()[k]) for k, v in weights_before.items())
    assert torch.equal(sample(sd, cond, img, settings).samples, reference)


# ---------------------------------------------------------------------------------------------------------- text


def test_long_instruction_is_truncated_with_a_warning(sd):
    long = "make the sky purple and " * 20
    with pytest.warns(PromptTruncatedWarning, match=r"longer than 77 tokens .* Dropped: '"):
        cond = encode_instruction(sd, long)
    words = long.split()
    head = " ".join(words[:60])
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptTruncatedWarning)
        exact = encode_instruction(sd, " ".join(words[:75]))  # 75 tokens + BOS/EOS fit exactly
    assert cond.embeds.shape == (1, 77, 32) and exact.embeds.shape == (1, 77, 32)
    assert head  # the policy: first 75 tokens kept, the rest dropped, as in diffusers


def test_different_instructions_differ(sd):
    a = encode_instruction(sd, "make it winter").embeds
    b = encode_instruction(sd, "make it summer").embeds
    assert float((a - b).abs().max()) > 1e-3


def test_sdxl_empty_negative_is_zeros_and_text_negative_is_encoded(xl):
    cond = encode_instruction(xl, "make it winter")
    assert cond.embeds.shape == (1, 77, 72) and cond.pooled.shape == (1, 40)
    assert torch.count_nonzero(cond.negative_embeds) == 0 and torch.count_nonzero(cond.negative_pooled) == 0
    neg = encode_instruction(xl, "make it winter", "blurry")
    assert torch.count_nonzero(neg.negative_embeds) > 0


# --------------------------------------------------------------------------------------------------------- images


def test_image_modes_are_converted_correctly(sd):
    rgb = Image.new("RGB", (16, 16), (200, 100, 50))
    rgba = Image.new("RGBA", (16, 16), (200, 100, 50, 0))
    grey = Image.new("L", (16, 16), 128)
    pal = rgb.convert("P")
    sixteen = Image.fromarray(np.full((16, 16), 32768, dtype=np.uint16))  # opens as I;16: half grey, not white
    assert torch.equal(to_image_batch(rgba), to_image_batch(rgb))
    assert torch.allclose(to_image_batch(grey), torch.full((1, 16, 16, 3), 128 / 255))
    assert to_image_batch(pal).shape == (1, 16, 16, 3)
    half = to_image_batch(sixteen)
    assert abs(float(half.mean()) - 0.5) < 1e-3
    lat_rgba = encode_image(sd, rgba).latents
    assert lat_rgba.shape == (1, 4, 8, 8)  # an RGBA image is a picture, not latents (diffusers issue #9225)


def test_tensor_input_equals_pil_input(sd, photo):
    tensor = torch.from_numpy(np.asarray(photo).astype(np.float32) / 255.0)[None]
    assert torch.equal(encode_image(sd, tensor).latents, encode_image(sd, photo).latents)


@pytest.mark.parametrize(
    "policy,size,expected",
    [
        ("keep", (45, 33), (32, 44)),  # floored to the VAE factor (2 for the tiny VAE; 8 for real ones)
        ("fit:128", (640, 480), (128, 128)),  # the original repo rounds the short side up to 64 multiples
        ("fit:512", (640, 480), (384, 512)),
        ("96x64", (45, 33), (64, 96)),
    ],
)
def test_resize_policies(sd, policy, size, expected):
    img = Image.new("RGB", size, (10, 200, 30))
    lat = encode_image(sd, img, policy)
    assert lat.size == expected and lat.original_size == (size[1], size[0])


def test_restore_size_and_decode_range(sd):
    img = Image.new("RGB", (45, 33), (10, 200, 30))
    lat = encode_image(sd, img, "fit:128")
    out = sample(sd, encode_instruction(sd, "x"), lat, SamplerSettings(steps=1))
    restored = decode_latents(sd, out.samples, restore_size=out.original_size)
    plain = decode_latents(sd, out.samples)
    assert restored.shape == (1, 33, 45, 3) and plain.shape == (1, 128, 128, 3)
    assert restored.dtype == torch.float32 and 0 <= float(restored.min()) and float(restored.max()) <= 1


def test_tiled_vae_for_large_images(sd):
    img = Image.fromarray(np.random.RandomState(1).randint(0, 255, (96, 128, 3), dtype=np.uint8))
    tiled = encode_image(sd, img, tiled=True)  # the tiny VAE's tiles are 32 px
    plain = encode_image(sd, img, tiled=False)
    assert tiled.latents.shape == plain.latents.shape == (1, 4, 48, 64)
    assert torch.isfinite(tiled.latents).all()
    assert not torch.equal(tiled.latents, plain.latents)  # the tiled path really ran
    decoded = decode_latents(sd, plain.latents, tiled=True)
    assert decoded.shape == (1, 96, 128, 3) and torch.isfinite(decoded).all()


def test_latent_preview(sd, photo):
    lat = encode_image(sd, photo).latents
    previews = latents_to_preview(lat, "sd15")
    assert len(previews) == 1 and previews[0].mode == "RGB" and previews[0].size == (22 * 8, 16 * 8)
    assert latents_to_preview(torch.zeros(2, 4, 128, 128), "sdxl", max_size=256)[1].size == (256, 256)


# ----------------------------------------------------------------------------------------------- dtypes and cache


def test_cache_keyed_by_path_mtime_and_dtype(tiny_sd):
    cache = ModelCache(max_entries=3)
    a = load_model(tiny_sd["folder"], cache=cache)
    assert load_model(tiny_sd["folder"], cache=cache) is a
    b = load_model(tiny_sd["folder"], dtype="bf16", cache=cache)
    assert b is not a and b.dtype == torch.bfloat16
    index = tiny_sd["folder"] / "model_index.json"
    st = index.stat()
    os.utime(index, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert load_model(tiny_sd["folder"], cache=cache) is not a
    assert len(cache) == 3 and cache.clear() == 3


def test_fp16_single_file_load_logs_nothing_from_diffusers(tiny_sd):
    """diffusers 0.42 logs "modules that should be kept in float32: []" on every dtype cast of a model; not ours."""
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    diffusers_log = logging.getLogger("diffusers")  # diffusers' loggers do not propagate to the root
    diffusers_log.addHandler(handler)
    try:
        model = load_model(tiny_sd["file"], dtype="fp16", config=tiny_sd["config"], cache=None)
    finally:
        diffusers_log.removeHandler(handler)
    assert model.unet.dtype == torch.float16
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []


def test_half_precision_keeps_upcast_vae_in_fp32(tiny_sdxl, photo):
    model = load_model(tiny_sdxl["folder"], dtype="fp16", cache=None)
    assert model.unet.dtype == torch.float16 and model.vae_dtype == torch.float32  # force_upcast
    bf = load_model(tiny_sdxl["folder"], dtype="bf16", cache=None)
    out = sample(bf, encode_instruction(bf, "x"), encode_image(bf, photo), SamplerSettings(steps=2))
    images = decode_latents(bf, out.samples)
    assert torch.isfinite(images).all()


def test_single_file_detects_families(tiny_sd, tiny_sdxl, tiny_cosxl):
    assert load_model(tiny_sd["file"], config=tiny_sd["config"], cache=None).family.value == "sd15"
    assert load_model(tiny_sdxl["file"], config=tiny_sdxl["config"], cache=None).family.value == "sdxl"
    cos = load_model(tiny_cosxl["file"], config=tiny_cosxl["config"], cache=None)
    assert cos.family.value == "cosxl" and cos.image_latent_scale == pytest.approx(0.13025)
    assert cos.scheduler_config["sigma_max"] == pytest.approx(120.0) and cos.is_edm
