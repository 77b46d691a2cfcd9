"""Whole edits composed from the stages: one edit, an instruction chain, a guidance sweep with its contact sheet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from . import defaults
from .errors import IP2PError
from .image import ResizePolicy, decode_latents, encode_image, labelled_grid
from .models import IP2PModel
from .sampling import Latents, SamplerSettings, StepCallback, sample, sweep
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
    resize: ResizePolicy | str | None = defaults.RESIZE,
    restore_size: bool = defaults.RESTORE_SIZE,
    mask=None,
    mask_grow: int = defaults.MASK_GROW,
    mask_feather: int = defaults.MASK_FEATHER,
    tiled: bool | None = None,
    callback: StepCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> EditResult:
    """Edit ``image`` following ``instruction``: encode both, sample with dual guidance, decode.

    With ``mask`` (1 = edit) the pixels outside the mask are the input's, exactly. Unless ``restore_size`` is off,
    the result has the input's size. Defaults come from :mod:`.defaults`, as for the nodes and the CLI.
    """
    cond = encode_instruction(model, instruction, negative)
    latents_in = encode_image(model, image, resize, mask=mask, mask_grow=mask_grow, mask_feather=mask_feather,
                              tiled=tiled)
    latents = sample(model, cond, latents_in, settings, callback=callback, cancel=cancel)
    images = decode_latents(model, latents.samples, restore_size=latents.original_size if restore_size else None,
                            tiled=tiled, region=latents.region)
    return EditResult(images=images, latents=latents)


def edit_chain(
    model: IP2PModel,
    image,
    instructions: Sequence[str],
    *,
    negative: str | None = None,
    settings: SamplerSettings = SamplerSettings(),
    resize: ResizePolicy | str | None = defaults.RESIZE,
    restore_size: bool = defaults.RESTORE_SIZE,
    callback: StepCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> list[EditResult]:
    """Apply instructions one after another, each result the next input; returns every intermediate result.

    Every link uses the same settings and seed. A chain of one instruction is exactly ``edit``.
    """
    steps = [s for s in (instructions or []) if s and s.strip()]
    if not steps:
        raise IP2PError("An instruction chain needs at least one non-empty instruction.")
    if settings.images_per_instruction != 1:
        raise IP2PError("An instruction chain makes one image per link; set images per instruction to 1.")
    results, current = [], image
    for text in steps:
        result = edit(model, current, text, negative=negative, settings=settings, resize=resize,
                      restore_size=restore_size, callback=callback, cancel=cancel)
        results.append(result)
        current = result.images
    return results


@dataclass(frozen=True, eq=False)
class SweepImages:
    images: torch.Tensor  # [cells * rows, H, W, 3], cells in order (text guidance varies slowest)
    sheet: torch.Tensor  # [1, H', W', 3] labelled contact sheet of the first row of every cell
    cells: tuple[tuple[float, float], ...]


def guidance_sweep(
    model: IP2PModel,
    image,
    instruction: str,
    text_guidances: Sequence[float],
    image_guidances: Sequence[float],
    *,
    negative: str | None = None,
    settings: SamplerSettings = SamplerSettings(),
    resize: ResizePolicy | str | None = defaults.RESIZE,
    restore_size: bool = defaults.RESTORE_SIZE,
    max_rows: int | None = None,
    callback: StepCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> SweepImages:
    """Edit with every (text, image) guidance pair and the same seed, plus a labelled contact sheet."""
    cond = encode_instruction(model, instruction, negative)
    latents_in = encode_image(model, image, resize)
    result = sweep(model, cond, latents_in, settings, text_guidances, image_guidances, max_rows=max_rows,
                   callback=callback, cancel=cancel)
    restore = result.latents.original_size if restore_size else None
    images = decode_latents(model, result.latents.samples, restore_size=restore)
    firsts = images[:: result.rows_per_cell]
    texts, imgs = list(text_guidances), list(image_guidances)
    # cells run text-major; the sheet puts text guidance across and image guidance down
    grid = [firsts[ti * len(imgs) + gi] for gi in range(len(imgs)) for ti in range(len(texts))]
    sheet = labelled_grid(grid, columns=len(texts), title=sheet_title(model, instruction, settings),
                          column_labels=[f"text {t:g}" for t in texts],
                          row_labels=[f"image {g:g}" for g in imgs], corner="image \\ text")
    return SweepImages(images=images, sheet=sheet, cells=result.cells)


def sheet_title(model: IP2PModel, instruction: str, settings: SamplerSettings) -> list[str]:
    """The header of a sweep sheet or chain strip: what was asked, of which model, with which seed."""
    from pathlib import Path

    from .schedulers import resolve_scheduler_name

    scheduler = resolve_scheduler_name(settings.scheduler, model.is_edm, model.family.default_scheduler).name
    text = " ".join(str(instruction).split())
    return [f"\u201c{text[:120]}{'...' if len(text) > 120 else ''}\u201d",
            f"{Path(str(model.source)).name} \u00b7 seed {settings.seed} \u00b7 {settings.steps} steps "
            f"\u00b7 {scheduler}"]
