"""Pieces every node shares: type names, widget specs read from the engine's defaults, and the progress bridge."""

from __future__ import annotations

from ._engine import core
from .host import get_host

CATEGORY = "InstructPix2Pix"

# Custom link types (ComfyUI connects only equal type strings).
MODEL = "IPX2P_MODEL"
CONDITIONING = "IPX2P_CONDITIONING"
IMAGE_LATENTS = "IPX2P_IMAGE_LATENTS"

defaults = core.defaults
SCHEDULER_CHOICES = ["auto", *core.SCHEDULERS]
RESIZE_MODES = ["keep", "fit", "exact"]
MAX_SEED = 0xFFFFFFFFFFFFFFFF


def sampler_inputs() -> dict:
    """The sampling widgets, in the order the Sampler and the one-node Edit show them."""
    return {
        "seed": ("INT", {"default": defaults.SEED, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                         "tooltip": "Random seed. The same seed, settings and inputs give the same edit on any device."}),
        "steps": ("INT", {"default": defaults.STEPS, "min": 1, "max": 1000,
                          "tooltip": "Denoising steps. 20-50 is usually enough; InstructPix2Pix's default is 100."}),
        "scheduler": (SCHEDULER_CHOICES, {"default": "auto",
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
        "guidance_rescale": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "Rescale guided noise to counter over-saturation at high text "
                                                  "guidance (0 = off, 0.7 is common)."}),
        "images_per_instruction": ("INT", {"default": 1, "min": 1, "max": 64,
                                           "tooltip": "How many different edits (different noise) to make of each "
                                                      "image."}),
    }


def mask_inputs() -> dict:
    return {
        "mask": ("MASK", {"tooltip": "Optional: edit only where the mask is white (1). Outside it the result keeps "
                                     "the input's pixels exactly. A mask of another size is stretched to the image."}),
        "mask_grow": ("INT", {"default": 0, "min": -256, "max": 256, "step": 1,
                              "tooltip": "Grow (positive) or shrink (negative) the mask by this many pixels."}),
        "mask_feather": ("INT", {"default": 8, "min": 0, "max": 256, "step": 1,
                                 "tooltip": "Soften the mask's edge over this many pixels, inside the mask only."}),
    }


def strength_inputs() -> dict:
    return {
        "strength": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                               "tooltip": "Edit strength: 1 = full edit from noise; lower starts from the input's "
                                          "own latents and keeps more of its structure."}),
        "image_guidance_end": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 10.0, "step": 0.05,
                                         "tooltip": "Image guidance at the last step, changing linearly from "
                                                    "image_guidance at the first; -1 = constant."}),
    }


def _fit_sizes() -> str:
    """'512 for SD 1.5 InstructPix2Pix, 768 for ...', from the family table."""
    return ", ".join(f"{f.fit_size} for {f.label}" for f in map(core.get_family, core.family_names()))


def resize_inputs() -> dict:
    return {
        "resize": (RESIZE_MODES, {"default": "keep",
                                  "tooltip": "keep: the input size (rounded down to a multiple of 8). fit: longest "
                                             "side about 'size', multiples of 64, centre-cropped (the original "
                                             "InstructPix2Pix rule). exact: width x height."}),
        "size": ("INT", {"default": 512, "min": 64, "max": 8192, "step": 64,
                         "tooltip": f"Longest side for resize = fit (the size each family was trained at: "
                                    f"{_fit_sizes()})."}),
        "width": ("INT", {"default": 512, "min": 8, "max": 8192, "step": 8, "tooltip": "Width for resize = exact."}),
        "height": ("INT", {"default": 512, "min": 8, "max": 8192, "step": 8, "tooltip": "Height for resize = exact."}),
    }


def resize_policy(resize: str, size: int, width: int, height: int) -> "core.ResizePolicy":
    if resize == "fit":
        return core.ResizePolicy.parse(f"fit:{size}")
    if resize == "exact":
        return core.ResizePolicy.parse(f"{width}x{height}")
    return core.ResizePolicy.parse("keep")


def settings_from(seed, steps, scheduler, text_guidance, image_guidance, guidance_rescale=0.0,
                  images_per_instruction=1, strength=1.0, image_guidance_end=-1.0) -> "core.SamplerSettings":
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


def parse_scale_list(text: str, name: str) -> list[float]:
    """'5, 7.5, 10' → [5.0, 7.5, 10.0] (commas, spaces or semicolons)."""
    items = [t for t in str(text).replace(";", ",").replace(" ", ",").split(",") if t.strip()]
    try:
        return [float(t) for t in items]
    except ValueError:
        raise core.IP2PError(f"{name} must be numbers separated by commas, e.g. '5, 7.5, 10'; got {text!r}.") from None


def host_progress(family: str):
    """A step callback that drives the host's progress bar and, when the host shows them, latent previews."""
    host = get_host()
    show_previews = host.previews_enabled()

    def callback(step: int, total: int, latents) -> None:
        preview = core.latents_to_preview(latents[:1], family)[0] if show_previews else None
        host.progress(step, total, preview)

    return callback


def host_cancel():
    host = get_host()
    return host.interrupted


def prepare(model) -> None:
    """Let the host make room for (and re-load) the model's weights before heavy work."""
    get_host().prepare_memory(model)
