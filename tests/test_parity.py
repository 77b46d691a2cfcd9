"""Pixel parity with diffusers' StableDiffusion(XL)InstructPix2PixPipeline (0.42.x), fp32 on the CPU.

Same components, seed and settings must give the same images within 1e-4 (max abs difference on 0..1 floats).
"""

from __future__ import annotations

import pytest
import torch

from ipx2p_core import load_model

from parity_helpers import max_diff, run_diffusers, run_engine

TOL = 1e-4
SD_SCHEDULERS = ["euler_a", "euler", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "unipc", "lms", "heun", "pndm"]
XL_SCHEDULERS = ["euler_a", "euler", "ddim", "dpmpp_2m_karras", "unipc"]
# (text, image) guidance: unpruned; image = 1 (pruned to 2 passes); both 1 (1 pass, text guidance <= 1)
PAIRS = [(7.5, 1.5), (6.0, 1.0), (1.0, 1.0)]


def _check(models, fx, photo, loader_key, diffusers_gate=False, **kw):
    model = models(fx, loader_key)
    ref = run_diffusers(fx["folder"], fx["family"], photo, "make it winter", **kw)
    ours = run_engine(model, photo, "make it winter", diffusers_gate=diffusers_gate, **kw)
    diff = max_diff(ref, ours)
    assert diff <= TOL, f"max abs diff {diff:.3g} > {TOL}"
    return diff


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(fx, how):
        key = (str(fx["folder"]), how)
        if key not in cache:
            if how == "folder":
                cache[key] = load_model(fx["folder"], cache=None)
            else:
                cache[key] = load_model(fx["file"], config=fx["config"], cache=None)
        return cache[key]

    return get


@pytest.mark.parametrize("scheduler", SD_SCHEDULERS)
@pytest.mark.parametrize("g_text,g_image", PAIRS)
def test_sd_folder_schedulers_and_guidance(models, tiny_sd, photo, scheduler, g_text, g_image):
    _check(models, tiny_sd, photo, "folder", steps=3, g_text=g_text, g_image=g_image, scheduler=scheduler, seed=3)


@pytest.mark.parametrize("scheduler", XL_SCHEDULERS)
@pytest.mark.parametrize("g_text,g_image", PAIRS)
def test_sdxl_folder_schedulers_and_guidance(models, tiny_sdxl, photo, scheduler, g_text, g_image):
    _check(models, tiny_sdxl, photo, "folder", steps=3, g_text=g_text, g_image=g_image, scheduler=scheduler, seed=5)


@pytest.mark.parametrize("g_text,g_image", PAIRS)
def test_cosxl_edm_euler(models, tiny_cosxl, photo, g_text, g_image):
    _check(models, tiny_cosxl, photo, "folder", steps=3, g_text=g_text, g_image=g_image, scheduler="edm_euler", seed=1)


@pytest.mark.parametrize("fixture", ["tiny_sd", "tiny_sdxl", "tiny_cosxl"])
def test_single_file_loading_matches_diffusers_folder(models, request, photo, fixture):
    fx = request.getfixturevalue(fixture)
    sched = "edm_euler" if fx["family"] == "cosxl" else "euler_a"
    _check(models, fx, photo, "file", steps=3, g_text=7.5, g_image=1.5, scheduler=sched, seed=11)


@pytest.mark.parametrize("fixture", ["tiny_sd", "tiny_sdxl"])
def test_negative_instruction_and_two_images(models, request, photo, fixture):
    fx = request.getfixturevalue(fixture)
    _check(models, fx, photo, "folder", steps=3, g_text=7.5, g_image=1.5, scheduler="euler_a", seed=2,
           negative="blurry, low quality", n=2)


def test_sdxl_guidance_rescale_and_denoising_end(models, tiny_sdxl, photo):
    _check(models, tiny_sdxl, photo, "folder", steps=4, g_text=5.0, g_image=1.5, scheduler="euler", seed=4,
           guidance_rescale=0.7, denoising_end=0.6)


def test_ddim_eta(models, tiny_sd, photo):
    _check(models, tiny_sd, photo, "folder", steps=3, g_text=7.5, g_image=1.5, scheduler="ddim", seed=4, eta=0.5)


@pytest.mark.parametrize("g_text,g_image", [(0.8, 1.5), (3.0, 0.5)])
def test_text_guidance_below_one_with_diffusers_gate(models, tiny_sd, photo, g_text, g_image):
    """diffusers drops guidance unless text > 1 and image >= 1; ``diffusers_gate`` reproduces that exactly."""
    _check(models, tiny_sd, photo, "folder", steps=3, g_text=g_text, g_image=g_image, scheduler="euler_a", seed=8,
           diffusers_gate=True)


def test_text_guidance_below_one_applies_formula_by_default(models, tiny_sd, photo):
    """Without the gate the formula is honoured: text 0.8 / image 1.5 differs from diffusers' unguided output."""
    model = models(tiny_sd, "folder")
    gated = run_engine(model, photo, "make it winter", steps=3, g_text=0.8, g_image=1.5, scheduler="euler_a", seed=8,
                       diffusers_gate=True)
    formula = run_engine(model, photo, "make it winter", steps=3, g_text=0.8, g_image=1.5, scheduler="euler_a", seed=8)
    assert max_diff(gated, formula) > 1e-3


@pytest.mark.slow
def test_full_size_sd15_unet_architecture(tmp_path_factory, photo):
    """The real SD 1.5 UNet (860M parameters, random weights) at 256x256, 2 steps."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    import tiny_models
    from ipx2p_core.families import SD15
    from ipx2p_core.models import _finish
    from ipx2p_core.schedulers import make_scheduler

    from parity_helpers import run_engine as engine

    comps = tiny_models.tiny_sd_components(full_size_unet=True)
    comps["vae"] = _eight_x_vae()
    model = _finish(SD15, comps["unet"], comps["vae"], (comps["text_encoder"],), (comps["tokenizer"],),
                    SD15.scheduler_config(), torch.float32, torch.device("cpu"), "memory", False, {})
    image = photo.resize((256, 256))
    comps["scheduler"] = make_scheduler("euler_a", SD15.scheduler_config())
    pipe = StableDiffusionInstructPix2PixPipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe("make it winter", image=image, num_inference_steps=2, guidance_scale=7.5, image_guidance_scale=1.5,
               generator=torch.Generator("cpu").manual_seed(0), output_type="np").images
    ours = engine(model, image, "make it winter", steps=2, g_text=7.5, g_image=1.5, scheduler="euler_a", seed=0)
    assert ours.shape == (1, 256, 256, 3)
    assert max_diff(ref, ours) <= TOL


def _eight_x_vae():
    """A small VAE with the real downsampling factor (8), so 256px images give SD's 32x32 latents."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=[16, 16, 32, 32],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
    )
