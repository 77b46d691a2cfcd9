"""Run diffusers' own IP2P pipelines and our engine on identical inputs, for parity tests and benchmarks."""

from __future__ import annotations

import numpy as np
import torch

from ipx2p_core import SamplerSettings, decode_latents, encode_image, encode_instruction, sample
from ipx2p_core.schedulers import make_scheduler

_PIPES: dict = {}


def diffusers_pipeline(folder, family: str):
    """diffusers' pipeline for a saved tiny model (cached per folder)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionXLInstructPix2PixPipeline

    key = str(folder)
    if key not in _PIPES:
        if family == "sd15":
            pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(folder, safety_checker=None)
        else:
            pipe = StableDiffusionXLInstructPix2PixPipeline.from_pretrained(folder, add_watermarker=False)
            pipe.is_cosxl_edit = family == "cosxl"
        pipe.set_progress_bar_config(disable=True)
        pipe.base_scheduler_config = dict(pipe.scheduler.config)  # as saved; never the last run's options
        _PIPES[key] = pipe
    return _PIPES[key]


def run_diffusers(folder, family, image, instruction, *, steps, g_text, g_image, scheduler, seed, negative=None,
                  n=1, guidance_rescale=0.0, denoising_end=None, eta=0.0):
    pipe = diffusers_pipeline(folder, family)
    pipe.scheduler = make_scheduler(scheduler, pipe.base_scheduler_config)
    kwargs = dict(
        prompt=instruction,
        image=image,
        num_inference_steps=steps,
        guidance_scale=g_text,
        image_guidance_scale=g_image,
        negative_prompt=negative,
        num_images_per_prompt=n,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
        eta=eta,
    )
    if family != "sd15":
        w, h = image.size
        kwargs.update(height=h - h % 2, width=w - w % 2, guidance_rescale=guidance_rescale, denoising_end=denoising_end)
    return pipe(**kwargs).images


def run_engine(model, image, instruction, *, steps, g_text, g_image, scheduler, seed, negative=None, n=1,
               guidance_rescale=0.0, denoising_end=None, eta=0.0, diffusers_gate=False):
    settings = SamplerSettings(
        steps=steps,
        text_guidance=g_text,
        image_guidance=g_image,
        scheduler=scheduler,
        seed=seed,
        images_per_instruction=n,
        guidance_rescale=guidance_rescale,
        denoising_end=denoising_end,
        eta=eta,
        diffusers_gate=diffusers_gate,
    )
    cond = encode_instruction(model, instruction, negative)
    latents = sample(model, cond, encode_image(model, image), settings)
    return decode_latents(model, latents.samples).numpy()


def max_diff(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())
