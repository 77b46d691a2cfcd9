"""Edit Image: the whole edit in one node."""

from __future__ import annotations

from ._engine import core
from .common import (
    CATEGORY,
    MODEL,
    NO_IMAGE_GUIDANCE_END,
    advanced_sampler_inputs,
    defaults,
    mask_inputs,
    prepare,
    resize_inputs,
    resize_policy,
    restore_size_input,
    run_on_host,
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
                **restore_size_input(),
                **advanced_sampler_inputs(),
            },
            "optional": {**mask_inputs(), **strength_inputs()},
        }

    def edit(self, model, image, instruction, negative, seed, steps, scheduler, text_guidance, image_guidance,
             resize=defaults.RESIZE, size=defaults.FIT_SIZE, width=defaults.EXACT_SIZE[0],
             height=defaults.EXACT_SIZE[1], restore_size=defaults.RESTORE_SIZE,
             guidance_rescale=defaults.GUIDANCE_RESCALE, images_per_instruction=defaults.IMAGES_PER_INSTRUCTION,
             mask=None, mask_grow=defaults.MASK_GROW, mask_feather=defaults.MASK_FEATHER,
             strength=defaults.STRENGTH, image_guidance_end=NO_IMAGE_GUIDANCE_END):
        prepare(model)
        settings = settings_from(seed, steps, scheduler, text_guidance, image_guidance, guidance_rescale,
                                 images_per_instruction, strength, image_guidance_end)
        result = run_on_host(
            core.pipeline.edit, model, image, instruction, negative=negative or None, settings=settings,
            resize=resize_policy(resize, size, width, height), restore_size=bool(restore_size), mask=mask,
            mask_grow=int(mask_grow), mask_feather=int(mask_feather),
        )
        return (result.images,)
