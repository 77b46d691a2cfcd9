"""Dual-Guidance Sampler."""

from __future__ import annotations

from ._engine import core
from .common import (
    CATEGORY,
    CONDITIONING,
    IMAGE_LATENTS,
    MODEL,
    NO_IMAGE_GUIDANCE_END,
    advanced_sampler_inputs,
    defaults,
    prepare,
    run_on_host,
    sampler_inputs,
    settings_from,
    strength_inputs,
)
from .latent import to_comfy_latent


class IPX2PSampler:
    DESCRIPTION = ("Edit with dual guidance: text guidance follows the instruction, image guidance stays close to "
                   "the input. With image guidance 1.0 one UNet pass per step is skipped (same result).")
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The edited latents (ComfyUI LATENT layout); decode them with Decode.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "The model (with any LoRAs/embeddings) to sample with."}),
                "conditioning": (CONDITIONING, {"tooltip": "From Encode Instruction."}),
                "image_latents": (IMAGE_LATENTS, {"tooltip": "From Encode Image."}),
                **sampler_inputs(),
                **advanced_sampler_inputs(),
            },
            "optional": strength_inputs(),
        }

    def sample(self, model, conditioning, image_latents, seed, steps, scheduler, text_guidance, image_guidance,
               guidance_rescale=defaults.GUIDANCE_RESCALE, images_per_instruction=defaults.IMAGES_PER_INSTRUCTION,
               strength=defaults.STRENGTH, image_guidance_end=NO_IMAGE_GUIDANCE_END):
        prepare(model)
        settings = settings_from(seed, steps, scheduler, text_guidance, image_guidance, guidance_rescale,
                                 images_per_instruction, strength, image_guidance_end)
        latents = run_on_host(core.sample, model, conditioning, image_latents, settings)
        return (to_comfy_latent(model, latents),)
