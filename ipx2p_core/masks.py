"""Masks for regional edits: conversion, grow/shrink, inward feathering, and the final pixel composite.

Convention (ComfyUI's): 1 = edit here, 0 = keep. The composite guarantees that wherever the processed mask is 0
the output pixels are the input pixels, bit for bit. Feathering softens the mask only inwards, so the region the user
marked as "keep" (after grow/shrink) is never touched.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import IP2PError


class MaskResizedWarning(UserWarning):
    """The mask's size differed from the image's; it was resized to fit."""


@dataclass(frozen=True, eq=False)
class EditRegion:
    """Everything the sampler and the decoder need to keep the unmasked area intact."""

    pixel_mask: torch.Tensor  # [B, H, W] at the working size, 0..1
    latent_mask: torch.Tensor  # [B, 1, h, w] at the latent size, 0..1
    pixels: torch.Tensor  # [B, H, W, 3] the input at the working size
    source_mask: torch.Tensor  # [B, H0, W0] at the input's original size
    source_pixels: torch.Tensor  # [B, H0, W0, 3] the original input


def to_mask_batch(mask) -> torch.Tensor:
    """PIL image, numpy array or MASK tensor ([H,W] / [B,H,W] / [B,H,W,1]) → float32 [B,H,W] in 0..1."""
    if isinstance(mask, Image.Image):
        if "A" in mask.getbands() and mask.mode != "L":
            arr = 1.0 - np.asarray(mask.getchannel("A"), dtype=np.float32) / 255.0  # transparent = edit
        else:
            arr = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
        mask = torch.from_numpy(arr.copy())
    elif isinstance(mask, np.ndarray):
        arr = mask.astype(np.float32)
        mask = torch.from_numpy(arr / 255.0 if arr.max() > 1.0 else arr)
    if not isinstance(mask, torch.Tensor):
        raise IP2PError(f"Unsupported mask type {type(mask).__name__}; give a MASK tensor, array or greyscale image.")
    m = mask.detach().to("cpu", torch.float32)
    if m.ndim == 4 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise IP2PError(f"A mask must be [H,W] or [B,H,W]; got shape {tuple(mask.shape)}.")
    if torch.isnan(m).any():
        raise IP2PError("The mask contains NaN values.")
    return m.clamp(0, 1)


def fit_mask(mask: torch.Tensor, height: int, width: int, batch: int) -> torch.Tensor:
    """Resize a mask to the image's size (with a warning when it had another size) and match the batch."""
    if mask.shape[0] not in (1, batch):
        raise IP2PError(f"Got {mask.shape[0]} masks for {batch} images; give one mask or one per image.")
    if tuple(mask.shape[1:]) != (height, width):
        warnings.warn(
            f"Mask is {mask.shape[2]}x{mask.shape[1]} but the image is {width}x{height}; the mask was stretched to "
            "the image's size.",
            MaskResizedWarning,
            stacklevel=3,
        )
        mask = F.interpolate(mask[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    return mask.expand(batch, -1, -1).contiguous() if mask.shape[0] != batch else mask


def grow(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Dilate (pixels > 0) or erode (pixels < 0) by a square of the given radius."""
    if pixels == 0:
        return mask
    k = 2 * abs(pixels) + 1
    m = mask[:, None]
    if pixels > 0:
        return F.max_pool2d(m, k, stride=1, padding=abs(pixels))[:, 0]
    return -F.max_pool2d(-m, k, stride=1, padding=abs(pixels))[:, 0]


def feather_inward(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Soften the mask's edge over ``pixels`` inside the mask; outside stays exactly 0."""
    if pixels <= 0:
        return mask
    sigma = pixels / 2.0
    radius = pixels
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    m = mask[:, None]
    m = F.conv2d(F.pad(m, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    m = F.conv2d(F.pad(m, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    # A blurred hard edge is ~0.5 on the edge: stretching 0.5..1 to 0..1 moves the whole ramp inside the mask;
    # the min() keeps every pixel outside at exactly 0.
    ramp = ((m[:, 0] - 0.5) * 2.0).clamp(0, 1)
    return torch.minimum(mask, ramp)


def process_mask(mask, height: int, width: int, batch: int, grow_px: int = 0, feather_px: int = 0) -> torch.Tensor:
    """User mask → [B,H,W] at the image's original size, grown/shrunk, then feathered inwards."""
    if not isinstance(grow_px, int) or not isinstance(feather_px, int) or feather_px < 0:
        raise IP2PError(f"Mask grow must be a whole number and feather 0 or more, got {grow_px!r}, {feather_px!r}.")
    m = fit_mask(to_mask_batch(mask), height, width, batch)
    return feather_inward(grow(m, grow_px).clamp(0, 1), feather_px)


def latent_mask(pixel_mask: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Area-average the working-size mask down to latent resolution: [B,1,h,w]."""
    return F.adaptive_avg_pool2d(pixel_mask[:, None], latent_hw)


def _resize_pixels(images: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[1:3]) == tuple(hw):
        return images
    bchw = images.permute(0, 3, 1, 2)
    return F.interpolate(bchw, size=hw, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1) \
        .permute(0, 2, 3, 1).contiguous()


def _resize_mask(mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(mask.shape[1:3]) == tuple(hw):
        return mask
    return F.interpolate(mask[:, None], size=hw, mode="bilinear", align_corners=False, antialias=True)[:, 0].clamp(0, 1)


def resize_region(region: EditRegion, working_hw: tuple[int, int], source_hw: tuple[int, int]) -> EditRegion:
    """The region for latents whose size changed after sampling (e.g. ComfyUI's LatentUpscaleBy): the mask and the
    input follow to the new working size and the new restore size, so the composite keeps working there. Outside
    the mask the output is then the input resized to that size."""
    return EditRegion(
        pixel_mask=_resize_mask(region.pixel_mask, working_hw),
        latent_mask=region.latent_mask,
        pixels=_resize_pixels(region.pixels, working_hw),
        source_mask=_resize_mask(region.source_mask, source_hw),
        source_pixels=_resize_pixels(region.source_pixels, source_hw),
    )


def composite(edited: torch.Tensor, original: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mask·edited + (1−mask)·original, computed so that mask == 0 gives ``original`` exactly."""
    m = mask[..., None].to(edited)
    out = original + m * (edited - original)
    return torch.where(m == 0, original, out)
