"""A batch worker for edit rows: the model loaded once, rows grouped into UNet batches, one PNG per row.

Each row is checked and encoded on its own (image, mask, instruction; repeated instructions are encoded once), so a
bad row fails alone. Rows that share settings and working size are then sampled together, ``batch_size`` at a time:
the engine pairs instruction k with image k and gives row k its own seed (``SamplerSettings.seeds``), so a row's
result does not depend on which rows share its batch. Everything a row produces is written by ``write_atomic``.
"""

from __future__ import annotations

import io
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import torch

from ipx2p_core import IP2PError, SamplerSettings
from ipx2p_core.atomic_files import write_atomic
from ipx2p_core.image import ImageLatents
from ipx2p_core.masks import EditRegion
from ipx2p_core.text import Conditioning

from .journal import utc_now, worker_name
from .tasks import JobSpec, RowTask

TEXT_CACHE_SIZE = 256  # distinct (instruction, negative) encodings kept; an SDXL pair is about 0.6 MB in fp16


def row_record(task: RowTask, status: str, *, outputs=(), sha256=(), error: str | None = None,
               seconds: float = 0.0, settings: dict | None = None) -> dict:
    """One line of results.jsonl."""
    return {
        "row": task.row, "key": task.key, "status": status, "inputs": task.inputs,
        "outputs": list(outputs), "sha256": list(sha256), "error": error, "seconds": round(seconds, 3),
        "settings": settings if settings is not None else task.settings, "worker": worker_name(),
        "finished": utc_now(),
    }


def mark_compile(spec: JobSpec, records: list[dict]) -> list[dict]:
    """With --compile, each record's settings say so (``"compile": true``; the PNGs of rows that ran compiled
    carry ``"compiled": true`` in their metadata)."""
    if spec.compile:
        for record in records:
            record["settings"] = {**record["settings"], "compile": True}
    return records


def error_text(exc: BaseException) -> str:
    """One line: engine errors as they are, anything else with its type."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, (IP2PError, OSError)) and text else f"{type(exc).__name__}: {text}"


@dataclass
class _Prepared:
    task: RowTask
    cond: Conditioning
    latents: ImageLatents
    settings: SamplerSettings
    seconds: float  # time spent on this row alone (reading, encoding)


class EditWorker:
    """Runs chunks of edit rows with one model (loaded on first use, or by ``load()``)."""

    def __init__(self, spec: JobSpec):
        self.spec = spec
        self.model = None
        self._text: OrderedDict[tuple[str, str], Conditioning] = OrderedDict()

    def load(self):
        if self.model is None:
            from ..edit_commands import _load

            args = SimpleNamespace(model=self.spec.model, family=self.spec.family, dtype=self.spec.dtype,
                                   device=self.spec.device, config=self.spec.config, quiet=True,
                                   compile=self.spec.compile,
                                   lora=[f"{p}:{s}:{t}" for p, s, t in self.spec.loras],
                                   embedding=list(self.spec.embeddings))
            self.model = _load(args)
        return self.model

    def run(self, tasks: list[RowTask]) -> list[dict]:
        model = self.load()
        records, ready = [], []
        for task in tasks:
            started = time.perf_counter()
            try:
                ready.append(self._prepare(model, task, started))
            except Exception as exc:  # noqa: BLE001 - a bad row fails alone
                records.append(row_record(task, "failed", error=f"{task.where}: {error_text(exc)}",
                                          seconds=time.perf_counter() - started))
        for group in self._groups(ready):
            records += self._run_group(model, group)
        return mark_compile(self.spec, records)

    # ------------------------------------------------------------------------------------------------ one row

    def _prepare(self, model, task: RowTask, started: float) -> _Prepared:
        from ipx2p_core.image import encode_image, open_image
        from ipx2p_core.sampling import validate_settings
        from ipx2p_core.schedulers import resolve_scheduler_name

        settings = SamplerSettings(**task.settings)
        validate_settings(settings)
        resolve_scheduler_name(settings.scheduler, model.is_edm, model.family.default_scheduler)  # a sampler of the wrong kind fails this row only
        image = open_image(task.image)
        mask = None
        if task.mask:
            mask = open_image(task.mask)
            if mask.size != image.size:
                raise IP2PError(f"The mask {task.mask} is {mask.width}x{mask.height} pixels but its image is "
                                f"{image.width}x{image.height}; a mask must have its image's size.")
        cond = self._encode_text(model, task.instruction, task.negative)
        latents = encode_image(model, image, task.resize, mask=mask, mask_grow=self.spec.mask_grow,
                               mask_feather=self.spec.mask_feather)
        return _Prepared(task, cond, latents, settings, time.perf_counter() - started)

    def _encode_text(self, model, instruction: str, negative: str) -> Conditioning:
        from ipx2p_core import encode_instruction

        key = (instruction, negative)
        cond = self._text.get(key)
        if cond is None:
            cond = encode_instruction(model, instruction, negative or None)
            self._text[key] = cond
            while len(self._text) > TEXT_CACHE_SIZE:
                self._text.popitem(last=False)
        self._text.move_to_end(key)
        return cond

    # ---------------------------------------------------------------------------------------------- UNet batches

    def _groups(self, ready: list[_Prepared]) -> list[list[_Prepared]]:
        """Rows that can share UNet calls (same settings but the seed, same working size; same original size when
        a mask or --restore-size needs it), in chunks of at most batch_size, first-come order."""
        groups: dict[tuple, list[_Prepared]] = {}
        for p in ready:
            lat = p.latents
            original = lat.original_size if (lat.region is not None or self.spec.restore_size) else None
            key = (p.settings.with_(seed=0), tuple(lat.latents.shape[1:]), lat.region is not None, original)
            groups.setdefault(key, []).append(p)
        size = max(1, int(self.spec.batch_size))
        return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]

    def _run_group(self, model, group: list[_Prepared]) -> list[dict]:
        started = time.perf_counter()
        try:
            images = self._sample(model, group)
        except Exception as exc:  # noqa: BLE001 - the group's rows fail, the job goes on
            seconds = (time.perf_counter() - started) / len(group)
            return [row_record(p.task, "failed", error=f"{p.task.where}: {error_text(exc)}",
                               seconds=p.seconds + seconds) for p in group]
        shared = (time.perf_counter() - started) / len(group)
        return [self._write(model, p, img, p.seconds + shared) for p, img in zip(group, images)]

    def _sample(self, model, group: list[_Prepared]) -> torch.Tensor:
        """Pixels [B,H,W,3] of the group; on a GPU out of memory, the group is split in halves."""
        from ipx2p_core import decode_latents, sample

        try:
            first = group[0].settings
            seeds = tuple(p.settings.seed for p in group)
            settings = first if len(group) == 1 else first.with_(seeds=seeds)
            cond = concat_conditioning([p.cond for p in group])
            latents_in = concat_image_latents([p.latents for p in group])
            latents = sample(model, cond, latents_in, settings)
            restore = latents.original_size if self.spec.restore_size else None
            return decode_latents(model, latents.samples, restore_size=restore, region=latents.region)
        except torch.cuda.OutOfMemoryError:
            if len(group) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(group) // 2
            return torch.cat([self._sample(model, group[:half]), self._sample(model, group[half:])])

    def _write(self, model, p: _Prepared, pixels: torch.Tensor, seconds: float) -> dict:
        from ipx2p_core import images_to_pil

        from ..edit_commands import png_info, settings_metadata

        task = p.task
        args = SimpleNamespace(instruction=task.instruction, negative=task.negative, resize=task.resize,
                               dtype=_precision(model), mask=task.mask, image=task.image, config=self.spec.config,
                               restore_size=self.spec.restore_size, mask_grow=self.spec.mask_grow,
                               mask_feather=self.spec.mask_feather, **task.settings)
        meta = {**settings_metadata(args, model, task.settings["seed"]), "index": 0}
        buffer = io.BytesIO()
        images_to_pil(pixels[None])[0].save(buffer, format="PNG", pnginfo=png_info(meta))
        try:
            digest = write_atomic(Path(self.spec.out_dir) / task.output, buffer.getvalue())
        except OSError as exc:
            return row_record(task, "failed", error=f"{task.where}: cannot write {task.output} in "
                              f"{self.spec.out_dir} ({exc.strerror or exc}); on a cluster the output folder must "
                              "be shared storage every worker can write to.", seconds=seconds)
        return row_record(task, "done", outputs=[task.output], sha256=[digest], seconds=seconds)


# ------------------------------------------------------------------------------------------------- concatenation


def concat_conditioning(conds: list[Conditioning]) -> Conditioning:
    """Single-row encodings as one batch (row k = conds[k])."""
    if len(conds) == 1:
        return conds[0]

    def cat(name):
        return None if getattr(conds[0], name) is None else torch.cat([getattr(c, name) for c in conds])

    return replace(conds[0], embeds=cat("embeds"), negative_embeds=cat("negative_embeds"), pooled=cat("pooled"),
                   negative_pooled=cat("negative_pooled"),
                   instructions=tuple(i for c in conds for i in c.instructions),
                   negatives=tuple(n for c in conds for n in c.negatives))


def concat_image_latents(items: list[ImageLatents]) -> ImageLatents:
    """Single-image latents of one working size as one batch, masks (edit regions) included."""
    if len(items) == 1:
        return items[0]
    region = None
    if items[0].region is not None:
        region = EditRegion(**{name: torch.cat([getattr(i.region, name) for i in items])
                               for name in ("pixel_mask", "latent_mask", "pixels", "source_mask", "source_pixels")})
    return replace(items[0], latents=torch.cat([i.latents for i in items]), region=region)


def _precision(model) -> str:
    """The precision the model runs in (fp32/fp16/bf16), as ``ipx2p edit`` records it (not the asked-for "auto")."""
    from ipx2p_core.models import DTYPES

    return next(name for name, dtype in DTYPES.items() if dtype == model.dtype)
