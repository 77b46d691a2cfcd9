"""Dual guidance (text + image) and the pass pruning that makes it cheaper without changing the result.

The UNet sees up to three conditions per image: (instruction, image), (negative, image), (negative, no image).
With ε_t, ε_i, ε_u their predictions:

    ε = ε_u + g_text·(ε_t − ε_i) + g_image·(ε_i − ε_u)

When g_image = 1 the ε_u terms cancel (ε = ε_i + g_text·(ε_t − ε_i)), so the third pass is skipped; when both scales
are 1, ε = ε_t and one pass suffices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import IP2PError

TEXT = "text"  # (instruction, image)
IMAGE = "image"  # (negative, image)
UNCOND = "uncond"  # (negative, zero image)


@dataclass(frozen=True)
class GuidancePlan:
    """Which conditions the UNet must evaluate for a pair of scales, in batch order."""

    passes: tuple[str, ...]
    text_scale: float
    image_scale: float
    rescale: float = 0.0

    def apply(self, chunks: dict) -> torch.Tensor:
        """Guided noise from the predictions of each pass (extra passes in ``chunks`` are ignored)."""
        eps_t = chunks[TEXT]
        if len(self.passes) == 1:
            return eps_t
        if len(self.passes) == 2:
            eps_i = chunks[IMAGE]
            eps = eps_i + self.text_scale * (eps_t - eps_i)
        else:
            eps_i, eps_u = chunks[IMAGE], chunks[UNCOND]
            eps = eps_u + self.text_scale * (eps_t - eps_i) + self.image_scale * (eps_i - eps_u)
        if self.rescale > 0:
            eps = rescale_noise_cfg(eps, eps_t, self.rescale)
        return eps


def check_scale(value: float, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise IP2PError(f"{name} must be a number, got {value!r}.") from None
    if math.isnan(v) or math.isinf(v):
        raise IP2PError(f"{name} must be a finite number, got {value!r}.")
    if v < 0:
        raise IP2PError(f"{name} must be 0 or more, got {v}. Typical values: text 7.5, image 1.5.")
    return v


def plan_guidance(text_scale: float, image_scale: float, rescale: float = 0.0, diffusers_gate: bool = False) -> GuidancePlan:
    """Pick the fewest UNet passes that compute the dual-guidance formula exactly.

    ``diffusers_gate`` reproduces diffusers' pipelines, which drop guidance entirely (one pass, ε_t) unless
    text_scale > 1 and image_scale ≥ 1.
    """
    g_t = check_scale(text_scale, "Text guidance")
    g_i = check_scale(image_scale, "Image guidance")
    r = check_scale(rescale, "Guidance rescale")
    if r > 1:
        raise IP2PError(f"Guidance rescale must be between 0 and 1, got {r}.")
    if diffusers_gate and not (g_t > 1.0 and g_i >= 1.0):
        return GuidancePlan((TEXT,), g_t, g_i)
    if g_i == 1.0 and g_t == 1.0:
        return GuidancePlan((TEXT,), g_t, g_i)
    if g_i == 1.0:
        return GuidancePlan((TEXT, IMAGE), g_t, g_i, r)
    return GuidancePlan((TEXT, IMAGE, UNCOND), g_t, g_i, r)


def rescale_noise_cfg(noise_cfg: torch.Tensor, noise_pred_text: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    """Rescale guided noise to the text prediction's std (Lin et al. 2023, §3.4), as diffusers' SDXL pipelines do."""
    dims = list(range(1, noise_pred_text.ndim))
    std_text = noise_pred_text.std(dim=dims, keepdim=True)
    std_cfg = noise_cfg.std(dim=dims, keepdim=True)
    rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg
