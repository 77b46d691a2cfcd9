"""Image stages: conversion of any input image to RGB, the resize policy, VAE encode/decode, latent previews.

Arithmetic mirrors diffusers' ``VaeImageProcessor`` (uint8 → /255 → 2x−1, Lanczos resize in PIL, ``latent_dist.mode()``)
so that the same picture gives bit-identical latents; the differences are deliberate and documented: RGBA, palette,
16-bit and greyscale inputs are converted to RGB first (diffusers reads a 4-channel RGBA image as latents).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from . import defaults
from .errors import IP2PError
from .families import FamilySpec, get_family
from .masks import EditRegion, composite, latent_mask, process_mask
from .models import IP2PModel

MAX_SIDE = 8192  # beyond this the UNet's attention and the VAE need more memory than any single GPU has
AUTO_TILE_PIXELS = 2048 * 2048  # above this many pixels the VAE runs tiled unless told otherwise


# ------------------------------------------------------------------------------------------------------ resize policy


@dataclass(frozen=True)
class ResizePolicy:
    """How the input image becomes the size the model works at.

    - ``keep``: the input size floored to a multiple of the VAE factor (8), stretched slightly, as diffusers does.
    - ``fit:N``: longest side about N, both sides multiples of 64, aspect kept by a centre crop (the original repo).
    - ``WxH``: exactly W×H (floored to the VAE factor), stretched.
    """

    mode: str = "keep"
    size: int = 0
    width: int = 0
    height: int = 0

    @classmethod
    def parse(cls, text: "str | ResizePolicy | None") -> "ResizePolicy":
        if isinstance(text, ResizePolicy):
            return text
        s = (text or "keep").strip().lower()
        if s == "keep":
            return cls("keep")
        if m := re.fullmatch(r"fit:(\d+)", s):
            n = int(m.group(1))
            if not 64 <= n <= MAX_SIDE:
                raise IP2PError(f"Resize 'fit:{n}': the size must be between 64 and {MAX_SIDE} pixels.")
            return cls("fit", size=n)
        if m := re.fullmatch(r"(\d+)\s*[x×]\s*(\d+)", s):
            w, h = int(m.group(1)), int(m.group(2))
            if not (8 <= w <= MAX_SIDE and 8 <= h <= MAX_SIDE):
                raise IP2PError(f"Resize '{text}': width and height must be between 8 and {MAX_SIDE} pixels.")
            return cls("exact", width=w, height=h)
        raise IP2PError(f"Unknown resize policy {text!r}; use 'keep', 'fit:N' (e.g. fit:512) or 'WxH' (e.g. 768x512).")

    def __str__(self) -> str:
        return {"keep": "keep", "fit": f"fit:{self.size}", "exact": f"{self.width}x{self.height}"}[self.mode]

    def target(self, width: int, height: int, multiple: int) -> tuple[int, int, bool]:
        """(width, height, crop) for an input of width × height."""
        if self.mode == "keep":
            w, h = width - width % multiple, height - height % multiple
            return w, h, False
        if self.mode == "exact":
            return self.width - self.width % multiple, self.height - self.height % multiple, False
        factor = self.size / max(width, height)
        short_factor = math.ceil(min(width, height) * factor / 64) * 64 / min(width, height)
        w, h = int((width * short_factor) // 64) * 64, int((height * short_factor) // 64) * 64
        if max(w, h) > self.size + 63:
            # Very elongated inputs: the original formula's rounding-up of the short side would blow the long side
            # far past N. Keep the long side at N instead; the short side is at least 64 and cropped to fit.
            w, h = (max(64, int(v * factor) // 64 * 64) for v in (width, height))
        return w, h, True


# --------------------------------------------------------------------------------------------------- input handling


def pil_to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any PIL image as float32 RGB in 0..1 (H, W, 3). 16-bit and float modes keep their precision."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / peak, 0, 1).astype(np.float32)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        arr = arr / 255.0 if arr.max() > 1.0 else arr
        return np.repeat(np.clip(arr, 0, 1)[..., None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")  # alpha is dropped, as ComfyUI's LoadImage does; masks carry regions
    return np.asarray(img).astype(np.float32) / 255.0


def to_image_batch(image) -> torch.Tensor:
    """PIL image(s), numpy HWC or a ComfyUI IMAGE tensor [B,H,W,C] → float32 [B,H,W,3] in 0..1 on the CPU."""
    if isinstance(image, Image.Image):
        return torch.from_numpy(pil_to_rgb_array(image))[None]
    if isinstance(image, (list, tuple)):
        if not image:
            raise IP2PError("No input image was given.")
        batch = [to_image_batch(i) for i in image]
        sizes = {tuple(b.shape[1:3]) for b in batch}
        if len(sizes) > 1:
            raise IP2PError(f"Images in one batch must have the same size, got {sorted(sizes)}; resize them first.")
        return torch.cat(batch)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        elif arr.dtype == np.uint16:
            arr = arr.astype(np.float32) / 65535.0
        image = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if not isinstance(image, torch.Tensor):
        raise IP2PError(f"Unsupported image type {type(image).__name__}; give a PIL image, array or IMAGE tensor.")
    t = image.detach().to("cpu", torch.float32)
    if t.ndim == 2:
        t = t[None, ..., None]
    elif t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        raise IP2PError(f"An image tensor must be [B,H,W,C]; got shape {tuple(image.shape)}.")
    channels = t.shape[-1]
    if channels == 1:
        t = t.expand(-1, -1, -1, 3)
    elif channels == 4:
        t = t[..., :3]
    elif channels != 3:
        raise IP2PError(f"An image needs 1, 3 or 4 channels (last axis); got shape {tuple(image.shape)}.")
    if torch.isnan(t).any():
        raise IP2PError("The input image contains NaN values.")
    return t.clamp(0, 1).contiguous()


def _is_uint8_exact(t: torch.Tensor) -> bool:
    scaled = t * 255.0
    return bool(torch.equal(scaled.round() / 255.0, t))


def _resize_batch(images: torch.Tensor, width: int, height: int, crop: bool) -> torch.Tensor:
    """Lanczos resize in PIL. 8-bit pictures go through uint8 RGB exactly as diffusers does; others keep floats."""
    if images.shape[2] == width and images.shape[1] == height:
        return images
    out = []
    method = Image.Resampling.LANCZOS
    for img in images:
        if _is_uint8_exact(img):
            pil = Image.fromarray((img.numpy() * 255.0).round().astype(np.uint8))
            pil = ImageOps.fit(pil, (width, height), method=method) if crop else pil.resize((width, height), method)
            out.append(torch.from_numpy(np.asarray(pil).astype(np.float32) / 255.0))
        else:
            chans = []
            for c in range(3):
                pil = Image.fromarray(img[..., c].numpy(), mode="F")
                pil = ImageOps.fit(pil, (width, height), method=method) if crop else pil.resize((width, height), method)
                chans.append(torch.from_numpy(np.array(pil, dtype=np.float32)))
            out.append(torch.stack(chans, dim=-1).clamp(0, 1))
    return torch.stack(out)


def prepare_images(image, policy: "ResizePolicy | str | None", multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Convert and resize; returns ([B,H,W,3] 0..1 at the working size, (orig_height, orig_width))."""
    batch = to_image_batch(image)
    _, h, w, _ = batch.shape
    if h == 0 or w == 0:
        raise IP2PError(f"The input image is empty ({w}×{h} pixels).")
    tw, th, crop = ResizePolicy.parse(policy).target(w, h, multiple)
    if tw < multiple or th < multiple:
        raise IP2PError(f"The input image is {w}×{h} pixels; at least {multiple}×{multiple} is needed.")
    if max(tw, th) > MAX_SIDE:
        raise IP2PError(
            f"The image would be processed at {tw}×{th} pixels; the largest side allowed is {MAX_SIDE}. "
            "Use a resize policy such as fit:1024 (CLI: --resize fit:1024)."
        )
    return _resize_batch(batch, tw, th, crop), (h, w)


# ------------------------------------------------------------------------------------------------------ VAE stages


@dataclass(frozen=True, eq=False)
class ImageLatents:
    """The input image(s) as VAE latents (mode of the posterior, unscaled), plus the sizes needed to decode back.

    ``latents`` is exactly what diffusers' pipelines compute; ``model_latents`` applies the family's scaling
    (CosXL Edit expects latents multiplied by the VAE scaling factor).
    """

    latents: torch.Tensor
    scale: float
    original_size: tuple[int, int]
    size: tuple[int, int]
    family: str
    region: "EditRegion | None" = None  # set when a mask limits the edit to a region

    @property
    def model_latents(self) -> torch.Tensor:
        return self.latents * self.scale if self.scale != 1.0 else self.latents

    @property
    def batch_size(self) -> int:
        return int(self.latents.shape[0])


def _use_tiling(tiled: bool | None, pixels: int) -> bool:
    return pixels > AUTO_TILE_PIXELS if tiled is None else bool(tiled)


def encode_image(
    model: IP2PModel,
    image,
    resize: "ResizePolicy | str | None" = defaults.RESIZE,
    *,
    mask=None,
    mask_grow: int = defaults.MASK_GROW,
    mask_feather: int = defaults.MASK_FEATHER,
    tiled: bool | None = None,
) -> ImageLatents:
    """Encode input image(s) for editing. ``tiled=None`` tiles the VAE automatically above 4 megapixels.

    ``mask`` (1 = edit, 0 = keep; any size, stretched to the image with a warning) limits the edit to a region:
    ``mask_grow`` dilates (or, negative, erodes) it by that many pixels, ``mask_feather`` softens its edge inwards.
    """
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    pixels, original = prepare_images(image, resize, model.vae_scale_factor)
    region = None
    if mask is not None:
        region = _edit_region(image, pixels, original, mask, mask_grow, mask_feather, resize, model.vae_scale_factor)
    x = (pixels.permute(0, 3, 1, 2) * 2.0 - 1.0).to(model.device, model.vae_dtype)
    with torch.inference_mode():
        if _use_tiling(tiled, x.shape[-1] * x.shape[-2]):
            moments = model.vae._tiled_encode(x)
        else:
            moments = model.vae._encode(x)
        latents = DiagonalGaussianDistribution(moments).mode().to(model.dtype)
    return ImageLatents(
        latents=latents,
        scale=model.image_latent_scale,
        original_size=original,
        size=(int(x.shape[-2]), int(x.shape[-1])),
        family=model.family.name,
        region=region,
    )


def _edit_region(image, pixels, original, mask, grow_px, feather_px, policy, factor) -> EditRegion:
    """The mask at the original size (for the final composite) and at the working size, through the same resize
    geometry as the picture (stretch, or crop-to-fit for fit:N)."""
    source = to_image_batch(image)
    batch, (h0, w0), (h, w) = pixels.shape[0], original, tuple(pixels.shape[1:3])
    source_mask = process_mask(mask, h0, w0, batch, grow_px, feather_px)
    pixel_mask = source_mask
    if (h, w) != (h0, w0):
        _, _, crop = ResizePolicy.parse(policy).target(w0, h0, factor)
        pixel_mask = _resize_masks(source_mask, w, h, crop)
    return EditRegion(
        pixel_mask=pixel_mask,
        latent_mask=latent_mask(pixel_mask, (h // factor, w // factor)),
        pixels=pixels,
        source_mask=source_mask,
        source_pixels=source,
    )


def _resize_masks(masks: torch.Tensor, width: int, height: int, crop: bool) -> torch.Tensor:
    out = []
    for m in masks:
        pil = Image.fromarray(m.numpy(), mode="F")
        method = Image.Resampling.BILINEAR  # no ringing: a hard 0 stays 0 away from the edge
        pil = ImageOps.fit(pil, (width, height), method=method) if crop else pil.resize((width, height), method)
        out.append(torch.from_numpy(np.array(pil, dtype=np.float32)).clamp(0, 1))
    return torch.stack(out)


def decode_latents(
    model: IP2PModel,
    latents: torch.Tensor,
    *,
    restore_size: tuple[int, int] | None = None,
    tiled: bool | None = None,
    region: EditRegion | None = None,
) -> torch.Tensor:
    """Latents (diffusers space, i.e. scaled) → float32 images [B,H,W,3] in 0..1 on the CPU.

    ``restore_size`` (height, width) resizes the result back to the input's original size. ``region`` (from a
    masked ``encode_image``) puts the input's pixels back wherever the mask is 0.
    """
    vae = model.vae
    z = latents.to(model.device, model.vae_dtype)
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        mean_t = torch.tensor(mean).view(1, -1, 1, 1).to(z)
        std_t = torch.tensor(std).view(1, -1, 1, 1).to(z)
        z = z * std_t / vae.config.scaling_factor + mean_t
    else:
        z = z / vae.config.scaling_factor
    with torch.inference_mode():
        pixels_area = z.shape[-1] * z.shape[-2] * model.vae_scale_factor**2
        out = vae.tiled_decode(z).sample if _use_tiling(tiled, pixels_area) else vae._decode(z).sample
    images = (out / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu()
    if restore_size is not None and tuple(restore_size) != tuple(images.shape[1:3]):
        images = _resize_batch(images, restore_size[1], restore_size[0], crop=False)
    if region is not None:
        images = _composite_region(images, region)
    return images


def _composite_region(images: torch.Tensor, region: EditRegion) -> torch.Tensor:
    """Put the input back outside the mask, at whichever size the images are (working or original)."""
    if tuple(images.shape[1:3]) == tuple(region.source_pixels.shape[1:3]):
        original, mask = region.source_pixels, region.source_mask
    elif tuple(images.shape[1:3]) == tuple(region.pixels.shape[1:3]):
        original, mask = region.pixels, region.pixel_mask
    else:
        raise IP2PError(f"Cannot apply the edit mask: images are {tuple(images.shape[1:3])}, the mask is for "
                        f"{tuple(region.pixels.shape[1:3])} or {tuple(region.source_pixels.shape[1:3])}.")
    n = images.shape[0] // original.shape[0]  # several edits per input: the input repeats for each
    return composite(images, original.repeat_interleave(n, 0), mask.repeat_interleave(n, 0))


# -------------------------------------------------------------------------------------------------- latent previews

def latents_to_preview(latents: torch.Tensor, family: "str | FamilySpec" = "sd15",
                       max_size: int = 512) -> list[Image.Image]:
    """A cheap RGB preview of (scaled) latents, one PIL image per batch item, at most ``max_size`` on a side."""
    factors, bias = get_family(family).preview_factors
    lat = latents[:, :4].detach().float().cpu()
    rgb = torch.einsum("bchw,cr->bhwr", lat, torch.tensor(factors)) + torch.tensor(bias)
    rgb = ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    previews = []
    for arr in rgb:
        img = Image.fromarray(arr)
        scale = min(8.0, max_size / max(img.width, img.height))  # latents are 1/8 of the picture's size
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        previews.append(img.resize(size, Image.Resampling.BILINEAR) if size != img.size else img)
    return previews


def images_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[B,H,W,3] floats in 0..1 → PIL images, rounding as diffusers does."""
    arr = (images.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def check_image_pixels(img: Image.Image, max_pixels: int = defaults.MAX_IMAGE_PIXELS, name: str = "image") -> int:
    """Count the pixels of every frame of an opened image (headers only: no pixel is decoded) and refuse a total
    over ``max_pixels``; returns the total. A multi-page TIFF with a small first page and huge later ones would
    otherwise pass a first-frame check and decode to gigabytes. The image is left at the frame it was at."""
    frames = getattr(img, "n_frames", 1)
    position, total = img.tell(), 0
    try:
        for index in range(frames):
            if index:
                img.seek(index)
            width, height = img.size
            total += width * height
            if total > max_pixels:
                what = f"is {width}x{height} = {total:,} pixels" if frames == 1 else \
                    f"has {frames} frames; frame {index + 1} is {width}x{height} and frames 1-{index + 1} hold {total:,} pixels"
                raise IP2PError(f"{name} {what}, more than the limit of {max_pixels:,} "
                                "(a decompression bomb, or simply too large to edit)")
    except EOFError:  # n_frames promised more frames than the file holds
        pass
    finally:
        if frames > 1:
            img.seek(position)
    return total


def open_image(path, max_pixels: int = defaults.MAX_IMAGE_PIXELS) -> Image.Image:
    """Open an image file for editing, upright (EXIF orientation applied), with clear errors. Every frame counts
    against ``max_pixels`` before any pixel is decoded."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise IP2PError(f"Image not found: {path} (looked for {p.resolve()}).")
    try:
        img = Image.open(p)
        check_image_pixels(img, max_pixels, str(p))
        img.load()
    except IP2PError:
        raise
    except Image.DecompressionBombError as exc:
        raise IP2PError(f"{p} is too large to open safely ({exc}).") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise IP2PError(f"{p} is not an image this program can read ({type(exc).__name__}: {exc}).") from None
    if img.width == 0 or img.height == 0:
        raise IP2PError(f"{p} is empty ({img.width}×{img.height} pixels).")
    return ImageOps.exif_transpose(img)


# labelled_grid layout, in pixels (tests read them to find each cell)
GRID_GAP = 4
GRID_TITLE_LINE = 20  # per title line
GRID_COLUMN_LABEL = 22  # the row of column labels
GRID_ROW_LABEL = 96  # the column of row labels


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def labelled_grid(images: Sequence[torch.Tensor] | torch.Tensor, columns: int, *, title: Sequence[str] = (),
                  column_labels: Sequence[str] = (), row_labels: Sequence[str] = (), corner: str = "",
                  max_cell: int = 384) -> torch.Tensor:
    """Images (row-major, each [H,W,3]) in a grid under a title, with a label over every column and beside every
    row; every cell is drawn at the first image's size (scaled to at most ``max_cell``). One IMAGE [1,H',W',3]."""
    from PIL import ImageDraw

    pils = [images_to_pil(img[None] if img.dim() == 3 else img)[0] for img in images]
    n = len(pils)
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    scale = min(1.0, max_cell / max(pils[0].size))
    cw, ch = max(1, round(pils[0].width * scale)), max(1, round(pils[0].height * scale))
    top = GRID_GAP + len(title) * GRID_TITLE_LINE + (GRID_COLUMN_LABEL if column_labels else 0)
    left = GRID_GAP + (GRID_ROW_LABEL if row_labels else 0)
    sheet = Image.new("RGB", (left + columns * (cw + GRID_GAP), top + rows * (ch + GRID_GAP)), (24, 24, 28))
    draw = ImageDraw.Draw(sheet)
    big, small = _font(16), _font(14)
    for i, line in enumerate(title):
        draw.text((GRID_GAP + 2, GRID_GAP + i * GRID_TITLE_LINE), line, fill=(240, 240, 240), font=big)
    label_y = GRID_GAP + len(title) * GRID_TITLE_LINE + 3
    if corner and (column_labels or row_labels):
        draw.text((GRID_GAP + 2, label_y), corner, fill=(150, 190, 255), font=small)
    for c, label in enumerate(column_labels[:columns]):
        draw.text((left + c * (cw + GRID_GAP) + 2, label_y), label, fill=(230, 230, 230), font=small)
    for r, label in enumerate(row_labels[:rows]):
        draw.text((GRID_GAP + 2, top + r * (ch + GRID_GAP) + ch // 2 - 8), label, fill=(230, 230, 230), font=small)
    for i, pil in enumerate(pils):
        r, c = divmod(i, columns)
        cell = pil if pil.size == (cw, ch) else pil.resize((cw, ch), Image.Resampling.LANCZOS)
        sheet.paste(cell, (left + c * (cw + GRID_GAP), top + r * (ch + GRID_GAP)))
    return torch.from_numpy(np.asarray(sheet).astype(np.float32) / 255.0)[None]


def grid_cell_origin(index: int, columns: int, cell_size: tuple[int, int], title_lines: int,
                     labelled: bool = True) -> tuple[int, int]:
    """(x, y) of cell ``index`` (row-major) in a :func:`labelled_grid` with labels on both axes."""
    r, c = divmod(index, columns)
    cw, ch = cell_size
    top = GRID_GAP + title_lines * GRID_TITLE_LINE + (GRID_COLUMN_LABEL if labelled else 0)
    left = GRID_GAP + (GRID_ROW_LABEL if labelled else 0)
    return left + c * (cw + GRID_GAP), top + r * (ch + GRID_GAP)
