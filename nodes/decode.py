"""Decode."""

from __future__ import annotations

from ._engine import core
from .common import CATEGORY, MODEL, defaults, prepare, restore_size_input
from .latent import from_comfy_latent


class IPX2PDecode:
    DESCRIPTION = "Decode edited latents to images with the model's VAE, optionally back at the input's size."
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The edited image(s), ready for Save Image or Preview Image.",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "The model whose VAE decodes the latents."}),
                "latent": ("LATENT", {"tooltip": "From the Dual-Guidance Sampler (or any LATENT of this model)."}),
                **restore_size_input(),
            }
        }

    def decode(self, model, latent, restore_size=defaults.RESTORE_SIZE):
        prepare(model)
        samples, original, region = from_comfy_latent(model, latent)
        return (core.decode_latents(model, samples, restore_size=original if restore_size else None,
                                    region=region),)
