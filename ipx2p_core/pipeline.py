"""The whole edit in one call, composed from the stages (used by the CLI and the one-node Edit Image)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .image import ResizePolicy, decode_latents, encode_image
from .models import IP2PModel
from .sampling import Latents, SamplerSettings, StepCallback, sample
from .text import encode_instruction


@dataclass(frozen=True, eq=False)
class EditResult:
    images: torch.Tensor  # [B, H, W, 3] float32 in 0..1
    latents: Latents


def edit(
    model: IP2PModel,
    image,
    instruction: str | Sequence[str],
    *,
    negative: str | Sequence[str] | None = None,
    settings: SamplerSettings = SamplerSettings(),
    resize: ResizePolicy | str | None = "keep",
    restore_size: bool = False,
    tiled: bool | None = None,
    callback: StepCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> EditResult:
    """Edit ``image`` following ``instruction``: encode both, sample with dual guidance, decode."""
    cond = encode_instruction(model, instruction, negative)
    latents_in = encode_image(model, image, resize, tiled=tiled)
    latents = sample(model, cond, latents_in, settings, callback=callback, cancel=cancel)
    images = decode_latents(
        model, latents.samples, restore_size=latents.original_size if restore_size else None, tiled=tiled
    )
    return EditResult(images=images, latents=latents)
