"""Edit Image: the whole edit in one node."""

from __future__ import annotations

from ._engine import core
from .common import (
    CATEGORY,
    MODEL,
    advanced_sampler_inputs,
    host_cancel,
    host_progress,
    mask_inputs,
    prepare,
    resize_inputs,
    resize_policy,
    sampler_inputs,
    settings_from,
    strength_inputs,
)


class IPX2PEditImage:
    DESCRIPTION = ("Edit an image by instruction in one node: encode, sample with dual guidance, decode. Gives "
                   "the same pixels as the staged nodes with the same settings.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The edited image(s).",)
    FUNCTION = "edit"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "From Load Model (optionally through Apply LoRA / Apply Embedding)."}),
                "image": ("IMAGE", {"tooltip": "The image(s) to edit."}),
                "instruction": ("STRING", {"multiline": True, "default": "make it winter", "dynamicPrompts": True,
                                           "tooltip": "What to change, as an instruction."}),
                "negative": ("STRING", {"multiline": True, "default": "", "dynamicPrompts": True,
                                        "tooltip": "What to avoid (optional)."}),
                **sampler_inputs(),
                **resize_inputs(),
                "restore_size": ("BOOLEAN", {"default": True, "label_on": "original size", "label_off": "as sampled",
                                             "tooltip": "Return the result at the input's original size."}),
                **advanced_sampler_inputs(),
            },
            "optional": {**mask_inputs(), **strength_inputs()},
        }

    def edit(self, model, image, instruction, negative, seed, steps, scheduler, text_guidance, image_guidance,
             resize="keep", size=512, width=512, height=512, restore_size=True, guidance_rescale=0.0,
             images_per_instruction=1, mask=None, mask_grow=0, mask_feather=8, strength=1.0,
             image_guidance_end=-1.0):
        prepare(model)
        settings = settings_from(seed, steps, scheduler, text_guidance, image_guidance, guidance_rescale,
                                 images_per_instruction, strength, image_guidance_end)
        result = core.pipeline.edit(
            model, image, instruction, negative=negative or None, settings=settings,
            resize=resize_policy(resize, size, width, height), restore_size=restore_size, mask=mask,
            mask_grow=int(mask_grow), mask_feather=int(mask_feather),
            callback=host_progress(model.family.value), cancel=host_cancel(),
        )
        return (result.images,)
