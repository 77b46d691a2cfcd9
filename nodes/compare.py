"""Compare: show an edit over its input with a before/after slider (the slider is web/ipx2p_compare.js)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from ._engine import atomic_files
from .common import CATEGORY
from .host import get_host

MAX_PAIRS = 64  # images written per side; a bigger batch shows its first 64


def _save(images, folder: Path, stem: str, side: str) -> list[dict]:
    out = []
    for i, image in enumerate(images[:MAX_PAIRS]):
        pixels = np.clip(255.0 * image.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
        name = f"{stem}_{i:05}_{side}.png"
        atomic_files.save_image_atomic(Image.fromarray(pixels[..., :3] if pixels.ndim == 3 else pixels), folder / name,
                                       format="PNG", compress_level=1)
        out.append({"filename": name, "subfolder": "", "type": "temp"})
    return out


class IPX2PCompare:
    DESCRIPTION = ("Before/after: shows the edited image over the input; drag across it to move the divider. "
                   "With a batch, each edit is paired with the input of the same index (or the first input).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    OUTPUT_TOOLTIPS = ()
    FUNCTION = "compare"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "before": ("IMAGE", {"tooltip": "The input image (e.g. from Load Image)."}),
                "after": ("IMAGE", {"tooltip": "The edited image (e.g. from Edit Image or Decode)."}),
            }
        }

    def compare(self, before, after):
        folder = get_host().temp_dir()
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"ipx2p_compare_{uuid.uuid4().hex[:12]}"
        return {"ui": {"ipx2p_before": _save(before, folder, stem, "before"),
                       "ipx2p_after": _save(after, folder, stem, "after")}}
