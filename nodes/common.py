"""Pieces every node shares: type names, widget specs read from the engine's defaults, and the host bridge."""

from __future__ import annotations

from ._engine import core
from .host import get_host

CATEGORY = "InstructPix2Pix"

# Custom link types (ComfyUI connects only equal type strings).
MODEL = "IPX2P_MODEL"
CONDITIONING = "IPX2P_CONDITIONING"
IMAGE_LATENTS = "IPX2P_IMAGE_LATENTS"

defaults = core.defaults
SCHEDULER_CHOICES = [defaults.SCHEDULER, *core.SCHEDULERS]
RESIZE_MODES = ["keep", "fit", "exact"]
NO_IMAGE_GUIDANCE_END = -1.0  # the widget's value for "constant" (defaults.IMAGE_GUIDANCE_END is None)


def sampler_inputs() -> dict:
    """The sampling widgets, in the order the Sampler and the one-node Edit show them."""
    return {
        "seed": ("INT", {"default": defaults.SEED, "min": 0, "max": defaults.MAX_SEED, "control_after_generate": True,
                         "tooltip": "Random seed. The same seed, settings and inputs give the same edit on any device."}),
        "steps": ("INT", {"default": defaults.STEPS, "min": 1, "max": defaults.MAX_STEPS,
                          "tooltip": "Denoising steps. 20-50 is usually enough; InstructPix2Pix's default is 100."}),
        "scheduler": (SCHEDULER_CHOICES, {"default": defaults.SCHEDULER,
                                          "tooltip": "Sampler. auto = Euler ancestral (EDM Euler for CosXL Edit)."}),
        "text_guidance": ("FLOAT", {"default": defaults.TEXT_GUIDANCE, "min": 0.0, "max": 30.0, "step": 0.1,
                                    "round": 0.01,
                                    "tooltip": "How strongly to follow the instruction. Higher = stronger edit."}),
        "image_guidance": ("FLOAT", {"default": defaults.IMAGE_GUIDANCE, "min": 0.0, "max": 10.0, "step": 0.05,
                                     "round": 0.01,
                                     "tooltip": "How closely to keep the input image. Higher = more faithful, "
                                                "weaker edit. 1.0 is fastest (one UNet pass fewer)."}),
    }


def advanced_sampler_inputs() -> dict:
    return {
        "guidance_rescale": ("FLOAT", {"default": defaults.GUIDANCE_RESCALE, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "Rescale guided noise to counter over-saturation at high text "
                                                  "guidance (0 = off, 0.7 is common)."}),
        "images_per_instruction": ("INT", {"default": defaults.IMAGES_PER_INSTRUCTION, "min": 1, "max": 64,
                                           "tooltip": "How many different edits (different noise) to make of each "
                                                      "image."}),
    }


def mask_inputs() -> dict:
    return {
        "mask": ("MASK", {"tooltip": "Optional: edit only where the mask is white (1). Outside it the result keeps "
                                     "the input's pixels exactly. A mask of another size is stretched to the image."}),
        "mask_grow": ("INT", {"default": defaults.MASK_GROW, "min": -256, "max": 256, "step": 1,
                              "tooltip": "Grow (positive) or shrink (negative) the mask by this many pixels."}),
        "mask_feather": ("INT", {"default": defaults.MASK_FEATHER, "min": 0, "max": 256, "step": 1,
                                 "tooltip": "Soften the mask's edge over this many pixels, inside the mask only."}),
    }


def strength_inputs() -> dict:
    return {
        "strength": ("FLOAT", {"default": defaults.STRENGTH, "min": 0.01, "max": 1.0, "step": 0.01,
                               "tooltip": "Edit strength: 1 = full edit from noise; lower starts from the input's "
                                          "own latents and keeps more of its structure."}),
        "image_guidance_end": ("FLOAT", {"default": NO_IMAGE_GUIDANCE_END, "min": NO_IMAGE_GUIDANCE_END, "max": 10.0, "step": 0.05,
                                         "tooltip": "Image guidance at the last step, changing linearly from "
                                                    "image_guidance at the first; -1 = constant."}),
    }


def _fit_sizes() -> str:
    """'512 for SD 1.5 InstructPix2Pix, 768 for ...', from the family table."""
    return ", ".join(f"{f.fit_size} for {f.label}" for f in map(core.get_family, core.family_names()))


def resize_inputs() -> dict:
    return {
        "resize": (RESIZE_MODES, {"default": defaults.RESIZE,
                                  "tooltip": "keep: the input size (rounded down to a multiple of 8). fit: longest "
                                             "side about 'size', multiples of 64, centre-cropped (the original "
                                             "InstructPix2Pix rule). exact: width x height."}),
        "size": ("INT", {"default": defaults.FIT_SIZE, "min": 64, "max": 8192, "step": 64,
                         "tooltip": f"Longest side for resize = fit (the size each family was trained at: "
                                    f"{_fit_sizes()})."}),
        "width": ("INT", {"default": defaults.EXACT_SIZE[0], "min": 8, "max": 8192, "step": 8, "tooltip": "Width for resize = exact."}),
        "height": ("INT", {"default": defaults.EXACT_SIZE[1], "min": 8, "max": 8192, "step": 8, "tooltip": "Height for resize = exact."}),
    }


def resize_policy(resize: str, size: int, width: int, height: int) -> "core.ResizePolicy":
    if resize == "fit":
        return core.ResizePolicy.parse(f"fit:{size}")
    if resize == "exact":
        return core.ResizePolicy.parse(f"{width}x{height}")
    return core.ResizePolicy.parse("keep")


def restore_size_input(what: str = "result") -> dict:
    return {"restore_size": ("BOOLEAN", {"default": defaults.RESTORE_SIZE, "label_on": "original size",
                                         "label_off": "as sampled",
                                         "tooltip": f"Return the {what} at the input's original size (when the resize "
                                                    "policy changed it)."})}


def settings_from(seed, steps, scheduler, text_guidance, image_guidance,
                  guidance_rescale=defaults.GUIDANCE_RESCALE, images_per_instruction=defaults.IMAGES_PER_INSTRUCTION,
                  strength=defaults.STRENGTH, image_guidance_end=NO_IMAGE_GUIDANCE_END) -> "core.SamplerSettings":
    return core.SamplerSettings(
        steps=int(steps),
        text_guidance=float(text_guidance),
        image_guidance=float(image_guidance),
        scheduler=scheduler,
        seed=int(seed),
        images_per_instruction=int(images_per_instruction),
        guidance_rescale=float(guidance_rescale),
        strength=float(strength),
        image_guidance_end=None if float(image_guidance_end) < 0 else float(image_guidance_end),
    )


def run_on_host(entry, model, *args, **kwargs):
    """Call an engine entry point (model first) with the host's progress bar, previews and cancellation.

    The engine raises ``Cancelled`` when ``host.cancelled()`` turns true; the host re-raises it in the shape its
    executor reports as an interruption (ComfyUI's own exception inside ComfyUI).
    """
    host = get_host()
    try:
        return entry(model, *args, callback=host_progress(model.family.value), cancel=host.cancelled, **kwargs)
    except core.Cancelled as exc:
        host.raise_cancelled(exc)


def host_progress(family: str):
    """A step callback that drives the host's progress bar and, when the host shows them, latent previews."""
    host = get_host()
    show_previews = host.previews_enabled()

    def callback(step: int, total: int, latents) -> None:
        preview = core.latents_to_preview(latents[:1], family)[0] if show_previews else None
        host.progress(step, total, preview)

    return callback


def prepare(model) -> None:
    """Let the host make room for (and re-load) the model's weights before heavy work."""
    get_host().prepare_memory(model)
