"""Guidance Sweep and Instruction Chain: many edits from one node."""

from __future__ import annotations

import torch

from ._engine import core, number_lists
from .common import (
    CATEGORY,
    MODEL,
    defaults,
    prepare,
    resize_inputs,
    resize_policy,
    restore_size_input,
    run_on_host,
    sampler_inputs,
    settings_from,
)


def _sweep_sampler_inputs() -> dict:
    inputs = sampler_inputs()
    del inputs["text_guidance"], inputs["image_guidance"]
    return inputs


class IPX2PGuidanceSweep:
    DESCRIPTION = ("Try several text and image guidance values at once: every pair is edited with the same seed "
                   "(one batched UNet call per step) and laid out on a labelled contact sheet.")
    CATEGORY = f"{CATEGORY}/explore"
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("images", "contact_sheet")
    OUTPUT_TOOLTIPS = ("Every edit, text guidance varying slowest.", "All edits in a grid with their guidance values.")
    FUNCTION = "sweep"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "From Load Model."}),
                "image": ("IMAGE", {"tooltip": "The image to edit."}),
                "instruction": ("STRING", {"multiline": True, "default": "make it winter",
                                           "tooltip": "What to change."}),
                "negative": ("STRING", {"multiline": True, "default": "", "tooltip": "What to avoid (optional)."}),
                "text_guidances": ("STRING", {
                    "default": number_lists.format_number_list(defaults.SWEEP_TEXT_GUIDANCES),
                    "tooltip": "Text guidance values, comma separated (grid columns, across)."}),
                "image_guidances": ("STRING", {
                    "default": number_lists.format_number_list(defaults.SWEEP_IMAGE_GUIDANCES),
                    "tooltip": "Image guidance values, comma separated (grid rows, down)."}),
                **_sweep_sampler_inputs(),
                **resize_inputs(),
                **restore_size_input("results"),
                "max_batch": ("INT", {"default": defaults.SWEEP_MAX_BATCH, "min": 3, "max": 4096,
                                      "tooltip": "Largest UNet batch (edits x passes) per call; lower it if memory "
                                                 "runs out. Never changes the results."}),
            }
        }

    def sweep(self, model, image, instruction, negative, text_guidances, image_guidances, seed, steps, scheduler,
              resize=defaults.RESIZE, size=defaults.FIT_SIZE, width=defaults.EXACT_SIZE[0],
              height=defaults.EXACT_SIZE[1], restore_size=defaults.RESTORE_SIZE, max_batch=defaults.SWEEP_MAX_BATCH):
        prepare(model)
        texts = number_lists.parse_number_list(text_guidances, "Text guidances")
        imgs = number_lists.parse_number_list(image_guidances, "Image guidances")
        # every cell sets its own guidance pair; the settings' pair is only the engine's default
        settings = settings_from(seed, steps, scheduler, defaults.TEXT_GUIDANCE, defaults.IMAGE_GUIDANCE)
        result = run_on_host(
            core.pipeline.guidance_sweep, model, image, instruction, texts, imgs, negative=negative or None,
            settings=settings, resize=resize_policy(resize, size, width, height), restore_size=bool(restore_size),
            max_rows=int(max_batch),
        )
        return (result.images, result.sheet)


class IPX2PInstructionChain:
    DESCRIPTION = ("Apply several instructions one after another (one per line), each result the next input. "
                   "Returns the final image and every intermediate step.")
    CATEGORY = f"{CATEGORY}/explore"
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("final", "steps")
    OUTPUT_TOOLTIPS = ("The image after the last instruction.", "The result of every instruction, in order.")
    FUNCTION = "chain"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "From Load Model."}),
                "image": ("IMAGE", {"tooltip": "The image to start from (one image)."}),
                "instructions": ("STRING", {"multiline": True, "default": "make it winter\nadd a snowman",
                                            "tooltip": "One instruction per line, applied in order."}),
                "negative": ("STRING", {"multiline": True, "default": "", "tooltip": "What to avoid (optional)."}),
                **sampler_inputs(),
                **resize_inputs(),
            }
        }

    def chain(self, model, image, instructions, negative, seed, steps, scheduler, text_guidance, image_guidance,
              resize=defaults.RESIZE, size=defaults.FIT_SIZE, width=defaults.EXACT_SIZE[0],
              height=defaults.EXACT_SIZE[1]):
        prepare(model)
        settings = settings_from(seed, steps, scheduler, text_guidance, image_guidance)
        results = run_on_host(
            core.pipeline.edit_chain, model, image, instructions.splitlines(), negative=negative or None,
            settings=settings, resize=resize_policy(resize, size, width, height), restore_size=True,
        )
        # restore_size keeps every step at the input's size, so the steps stack into one batch
        return (results[-1].images, torch.cat([r.images for r in results]))
