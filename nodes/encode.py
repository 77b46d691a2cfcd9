"""Encode Instruction and Encode Image."""

from __future__ import annotations

from ._engine import core
from .common import (
    CATEGORY,
    CONDITIONING,
    IMAGE_LATENTS,
    MODEL,
    defaults,
    mask_inputs,
    prepare,
    resize_inputs,
    resize_policy,
)


class IPX2PEncodeInstruction:
    DESCRIPTION = ("Encode an edit instruction ('make it winter') and an optional negative instruction with the "
                   "model's text encoder(s). Instructions longer than 77 tokens are truncated with a warning.")
    CATEGORY = f"{CATEGORY}/conditioning"
    RETURN_TYPES = (CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("The encoded instruction for the sampler.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "The model whose text encoder(s) to use (with its LoRAs/embeddings)."}),
                "instruction": ("STRING", {"multiline": True, "default": "make it winter", "dynamicPrompts": True,
                                           "tooltip": "What to change, as an instruction: 'turn him into a statue', "
                                                      "'make it look like a watercolor'."}),
                "negative": ("STRING", {"multiline": True, "default": "", "dynamicPrompts": True,
                                        "tooltip": "What to avoid (optional). Empty = none."}),
            },
            "optional": {
                "instruction_2": ("STRING", {"multiline": True, "default": "",
                                             "tooltip": "SDXL only: a different text for the second (OpenCLIP) "
                                                        "encoder. Empty = same as instruction."}),
            },
        }

    def encode(self, model, instruction, negative="", instruction_2=""):
        prepare(model)
        cond = core.encode_instruction(model, instruction, negative or None, instruction_2=instruction_2 or None)
        return (cond,)


class IPX2PEncodeImage:
    DESCRIPTION = ("Encode the image to edit with the model's VAE, at the size chosen by the resize policy. The "
                   "original size is kept so Decode can restore it. With a mask, only the masked region is edited: "
                   "outside it the output keeps the input's pixels exactly.")
    CATEGORY = f"{CATEGORY}/conditioning"
    RETURN_TYPES = (IMAGE_LATENTS,)
    RETURN_NAMES = ("image_latents",)
    OUTPUT_TOOLTIPS = ("The input image as latents, for the sampler.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "The model whose VAE encodes the image."}),
                "image": ("IMAGE", {"tooltip": "The image(s) to edit, e.g. from Load Image."}),
                **resize_inputs(),
            },
            "optional": mask_inputs(),
        }

    def encode(self, model, image, resize=defaults.RESIZE, size=defaults.FIT_SIZE, width=defaults.EXACT_SIZE[0],
               height=defaults.EXACT_SIZE[1], mask=None, mask_grow=defaults.MASK_GROW,
               mask_feather=defaults.MASK_FEATHER):
        prepare(model)
        return (core.encode_image(model, image, resize_policy(resize, size, width, height), mask=mask,
                                  mask_grow=int(mask_grow), mask_feather=int(mask_feather)),)
