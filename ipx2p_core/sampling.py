"""The denoising loop: schedulers by name, dual guidance with pass pruning, step callbacks and cancellation.

One loop serves a single edit and a guidance sweep: a sweep's cells (pairs of guidance scales) share the UNet call
of every step, while each keeps its own scheduler, noise and guidance, so a cell equals the single run with its
settings. Edit strength, masked (regional) edits and an image-guidance schedule are options of the same loop.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, replace
from typing import Callable, Protocol, Sequence

import torch

from . import adapters, defaults
from .errors import Cancelled, IP2PError
from .families import TEXT_TIME
from .guidance import IMAGE, TEXT, UNCOND, GuidancePlan, check_scale, plan_guidance
from .image import ImageLatents
from .masks import EditRegion
from .models import IP2PModel
from .schedulers import make_scheduler
from .text import Conditioning

MAX_SEED = defaults.MAX_SEED
PASS_ORDER = (TEXT, IMAGE, UNCOND)
# Largest sweep batch on the CPU. Bigger batches only add cache misses there: measured on 2 cores, a 3 x 3 sweep on
# the tiny test model (64 px) takes 4.85 s in chunks of 9 rows, 5.88 s in one batch of 24, 6.14 s as 9 edits.
CPU_SWEEP_ROWS = 12


@dataclass(frozen=True)
class SamplerSettings:
    """Everything that decides a sampling run besides the model and its inputs. Defaults live in ``defaults``.

    ``strength`` < 1 starts from the input's latents noised to that level instead of pure noise (structure is
    kept); 1 is the standard edit. ``image_guidance_end`` makes image guidance change linearly from
    ``image_guidance`` at the first step to this value at the last.

    ``seeds`` gives every output row its own generator (starting noise and the per-step noise of ancestral/SDE
    schedulers), so a row in a batch gets the noise it would get alone with ``seed=seeds[k]``; ``seed`` is then
    unused. Without it one generator seeded with ``seed`` serves the whole batch (diffusers' single generator).
    """

    steps: int = defaults.STEPS
    text_guidance: float = defaults.TEXT_GUIDANCE
    image_guidance: float = defaults.IMAGE_GUIDANCE
    scheduler: str | None = defaults.SCHEDULER
    seed: int = defaults.SEED
    images_per_instruction: int = defaults.IMAGES_PER_INSTRUCTION
    eta: float = defaults.ETA
    guidance_rescale: float = defaults.GUIDANCE_RESCALE
    denoising_end: float | None = None
    diffusers_gate: bool = False
    strength: float = defaults.STRENGTH
    image_guidance_end: float | None = defaults.IMAGE_GUIDANCE_END
    seeds: tuple[int, ...] | None = None

    def with_(self, **changes) -> "SamplerSettings":
        return replace(self, **changes)


@dataclass(frozen=True, eq=False)
class Latents:
    """Sampled latents in diffusers' (scaled) space, with what decoding needs: sizes and the edit region."""

    samples: torch.Tensor
    original_size: tuple[int, int]
    size: tuple[int, int]
    family: str
    settings: SamplerSettings | None = None
    region: EditRegion | None = None


class StepCallback(Protocol):
    def __call__(self, step: int, total: int, latents: torch.Tensor) -> None: ...


def validate_settings(s: SamplerSettings) -> GuidancePlan:
    if not isinstance(s.steps, int) or isinstance(s.steps, bool) or s.steps < 1:
        raise IP2PError(f"Steps must be a whole number of at least 1, got {s.steps!r}.")
    if s.steps > defaults.MAX_STEPS:
        raise IP2PError(f"Steps must be at most {defaults.MAX_STEPS} (the model's training schedule), got {s.steps}.")
    if not isinstance(s.images_per_instruction, int) or s.images_per_instruction < 1:
        raise IP2PError(f"Images per instruction must be at least 1, got {s.images_per_instruction!r}.")
    if not isinstance(s.seed, int) or not 0 <= s.seed <= MAX_SEED:
        raise IP2PError(f"Seed must be a whole number from 0 to {MAX_SEED}, got {s.seed!r}.")
    if s.seeds is not None:
        if not isinstance(s.seeds, tuple) or not s.seeds:
            raise IP2PError(f"Seeds must be a non-empty tuple of whole numbers (one per output row), got {s.seeds!r}.")
        for seed in s.seeds:
            if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
                raise IP2PError(f"Each of seeds must be a whole number from 0 to {MAX_SEED}, got {seed!r}.")
    if not (isinstance(s.eta, (int, float)) and 0.0 <= s.eta <= 1.0):
        raise IP2PError(f"eta must be between 0 and 1, got {s.eta!r}.")
    if s.denoising_end is not None and not (0.0 < float(s.denoising_end) <= 1.0):
        raise IP2PError(f"Denoising end must be in (0, 1], got {s.denoising_end!r}.")
    if not isinstance(s.strength, (int, float)) or math.isnan(s.strength) or not 0.0 < s.strength <= 1.0:
        raise IP2PError(f"Edit strength must be in (0, 1] (1 = a full edit from noise), got {s.strength!r}.")
    if s.image_guidance_end is not None:
        check_scale(s.image_guidance_end, "Image guidance end")
    return plan_guidance(s.text_guidance, s.image_guidance, s.guidance_rescale, s.diffusers_gate)


def cpu_generator(seed: int) -> torch.Generator:
    """Noise always comes from a CPU generator, so a seed gives the same picture on every device."""
    # torch seeds are signed 64-bit internally; fold the unsigned ComfyUI range onto it deterministically.
    return torch.Generator("cpu").manual_seed(seed if seed < 2**63 else seed - 2**64)


def _generators(s: SamplerSettings, batch: int) -> torch.Generator | list[torch.Generator]:
    """One generator for the batch, or (``seeds``) one per output row, as diffusers' pipelines accept."""
    if s.seeds is None:
        return cpu_generator(s.seed)
    if len(s.seeds) != batch:
        raise IP2PError(f"Got {len(s.seeds)} seeds for {batch} output rows; give one seed per output row "
                        "(pairs x images per instruction).")
    return [cpu_generator(seed) for seed in s.seeds]



@dataclass(frozen=True)
class _Rows:
    """The batch rows of a run: instruction k goes with image k (a single one of either is shared by all), and each
    pair gives ``per`` consecutive rows (images per instruction)."""

    count: int
    prompt_index: torch.Tensor
    image_index: torch.Tensor
    per: int

    @classmethod
    def pair(cls, cond: Conditioning, image: ImageLatents, per: int) -> "_Rows":
        p, i = cond.batch_size, image.batch_size
        if p != i and p != 1 and i != 1:
            raise IP2PError(f"Got {p} instructions and {i} images; give one of either, or the same number of both.")
        n = max(p, i)
        idx_p = torch.arange(n) if p == n else torch.zeros(n, dtype=torch.long)
        idx_i = torch.arange(n) if i == n else torch.zeros(n, dtype=torch.long)
        return cls(n * per, idx_p, idx_i, per)

    def of_prompts(self, t: torch.Tensor) -> torch.Tensor:
        return t[self.prompt_index.to(t.device)].repeat_interleave(self.per, dim=0)

    def of_images(self, t: torch.Tensor) -> torch.Tensor:
        return t[self.image_index.to(t.device)].repeat_interleave(self.per, dim=0)


def _timesteps(scheduler, steps: int, denoising_end: float | None, strength: float, device, edm: bool) -> torch.Tensor:
    scheduler.set_timesteps(steps, device=device)
    timesteps = scheduler.timesteps
    if strength < 1.0:
        # As diffusers' img2img: skip the noisiest part of the schedule.
        order = getattr(scheduler, "order", 1)
        t_start = steps - min(int(steps * strength), steps)
        if t_start >= steps:
            raise IP2PError(f"Edit strength {strength} leaves no step out of {steps}; raise strength or steps.")
        timesteps = timesteps[t_start * order :]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start * order)
    if denoising_end is not None and 0 < denoising_end < 1:
        if not edm:
            cutoff = int(round(scheduler.config.num_train_timesteps * (1 - denoising_end)))
            keep = int((timesteps >= cutoff).sum())
        else:  # EDM timesteps are log-sigmas, not 0..999: cut by the fraction of steps instead
            keep = max(1, int(round(len(timesteps) * denoising_end)))
        timesteps = timesteps[:keep]
    return timesteps


def _step_kwargs(scheduler, generator, eta) -> dict:
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


def _image_guidance_at(s: SamplerSettings, k: int, n: int) -> float:
    if s.image_guidance_end is None or n <= 1:
        return float(s.image_guidance)
    return float(s.image_guidance) + (float(s.image_guidance_end) - float(s.image_guidance)) * k / (n - 1)


def _step_plans(s: SamplerSettings, base: GuidancePlan, n: int) -> list[GuidancePlan]:
    """The guidance plan of each step: constant, or with the image scale on its linear schedule."""
    if s.image_guidance_end is None:
        return [base] * n
    plans = [plan_guidance(s.text_guidance, _image_guidance_at(s, k, n), s.guidance_rescale, s.diffusers_gate)
             for k in range(n)]
    widest = max(plans, key=lambda p: len(p.passes)).passes  # one set of UNet passes for the whole run
    return [replace(p, passes=widest) for p in plans]


@dataclass
class _Cell:
    """One guidance setting's own state: scheduler, generator, noise, latents, plans."""

    settings: SamplerSettings
    scheduler: object
    generator: torch.Generator | list[torch.Generator]
    noise: torch.Tensor
    latents: torch.Tensor
    plans: list
    step_kwargs: dict

    @classmethod
    def prepare(cls, model: IP2PModel, s: SamplerSettings, base: GuidancePlan, init: torch.Tensor, shape: tuple,
                noise: torch.Tensor | None) -> tuple["_Cell", torch.Tensor]:
        """The cell at its first step, and its timesteps: a fresh scheduler, seeded noise (or the caller's), and
        the starting latents (pure noise, or the input's latents noised to the first step for strength < 1)."""
        from diffusers.utils.torch_utils import randn_tensor

        device, dtype = model.device, model.dtype
        scheduler = make_scheduler(s.scheduler, model.scheduler_config, auto=model.family.default_scheduler)
        timesteps = _timesteps(scheduler, s.steps, s.denoising_end, s.strength, device, model.is_edm)
        generator = _generators(s, shape[0])
        cell_noise = (randn_tensor(shape, generator=generator, device=device, dtype=dtype) if noise is None
                      else noise.to(device, dtype))
        if s.strength < 1.0:
            latents = scheduler.add_noise(init, cell_noise, timesteps[:1].repeat(shape[0]))
        else:
            latents = cell_noise * scheduler.init_noise_sigma
        plans = _step_plans(s, base, len(timesteps))
        cell = cls(s, scheduler, generator, cell_noise, latents, plans, _step_kwargs(scheduler, generator, s.eta))
        return cell, timesteps

    def step(self, predictions: dict, i: int, t, region: "_KeptRegion | None") -> None:
        """Guide this cell's noise predictions (one per pass) and advance its scheduler by step ``i``."""
        eps = self.plans[i].apply(predictions)
        latents = self.scheduler.step(eps, t, self.latents, **self.step_kwargs, return_dict=False)[0]
        self.latents = latents if region is None else region.keep(self, latents, i)


@dataclass(frozen=True)
class _KeptRegion:
    """A masked edit: outside the mask, the latents are the input's, noised to the level of the next step."""

    init: torch.Tensor  # the input's latents (scaled), one row per batch row
    keep_mask: torch.Tensor  # 1 where the input is kept
    timesteps: torch.Tensor

    def keep(self, cell: _Cell, latents: torch.Tensor, i: int) -> torch.Tensor:
        if i + 1 < len(self.timesteps):
            t_next = self.timesteps[i + 1 : i + 2].repeat(latents.shape[0])
            target = cell.scheduler.add_noise(self.init, cell.noise, t_next)
        else:
            target = self.init
        return latents * (1.0 - self.keep_mask) + target * self.keep_mask


@dataclass
class _UNetBatch:
    """The UNet's input for all cells of a run: one segment of rows per (cell, pass) that the cell needs,
    pass-major. A single edit is (instruction, image), (negative, image), (negative, no image); in a sweep, cells
    with image guidance 1 bring no rows of the last pass."""

    segments: list[tuple[int, str]]  # (cell, pass) per segment
    rows_per_segment: int
    latent_channels: int
    inputs: torch.Tensor  # reused every step: noisy latents in the first channels, image latents after them
    text_states: torch.Tensor
    added: dict | None  # the family's added conditioning (SDXL: pooled text + time ids), one row per input row

    @classmethod
    def build(cls, model: IP2PModel, cond: Conditioning, image: ImageLatents, rows: _Rows,
              cells: list[_Cell]) -> "_UNetBatch":
        device, dtype = model.device, model.dtype
        segments = [(c, p) for p in PASS_ORDER for c, cell in enumerate(cells) if p in cell.plans[0].passes]
        embeds = {TEXT: rows.of_prompts(cond.embeds), IMAGE: rows.of_prompts(cond.negative_embeds)}
        embeds[UNCOND] = embeds[IMAGE]
        img = rows.of_images(image.model_latents).to(device, dtype)
        img_by_pass = {TEXT: img, IMAGE: img, UNCOND: torch.zeros_like(img)}
        text_states = torch.cat([embeds[p] for _, p in segments]).to(device, dtype)
        added = _added_conditioning(model, cond, image, rows, [p for _, p in segments])
        channels = model.latent_channels
        inputs = torch.empty((len(segments) * rows.count, channels + img.shape[1], *img.shape[-2:]),
                             device=device, dtype=dtype)
        inputs[:, channels:] = torch.cat([img_by_pass[p] for _, p in segments])
        return cls(segments, rows.count, channels, inputs, text_states, added)

    def segment(self, k: int) -> slice:
        return slice(k * self.rows_per_segment, (k + 1) * self.rows_per_segment)

    def predict(self, model: IP2PModel, cells: list[_Cell], t) -> list[dict[str, torch.Tensor]]:
        """Every cell's noise predictions at step ``t``, by pass."""
        # Scaling is per-sample and identical across passes: scale once, then copy into each pass's rows.
        scaled = [cell.scheduler.scale_model_input(cell.latents, t) for cell in cells]
        for k, (c, _) in enumerate(self.segments):
            self.inputs[self.segment(k), : self.latent_channels] = scaled[c]
        predictions: list[dict[str, torch.Tensor]] = [{} for _ in cells]
        if len(cells) > 1 and all(torch.equal(scaled[0], x) for x in scaled[1:]):
            # A sweep's first step: every cell starts from the same latents (same seed), so the rows of one
            # segment per pass serve all cells.
            first: dict[str, int] = {}  # pass -> its first segment
            for k, (_, p) in enumerate(self.segments):
                first.setdefault(p, k)
            shared = torch.cat([torch.arange(self.segment(k).start, self.segment(k).stop) for k in first.values()])
            shared = shared.to(model.device)
            added = None if self.added is None else {key: v[shared] for key, v in self.added.items()}
            noise_pred = model.unet(self.inputs[shared], t, encoder_hidden_states=self.text_states[shared],
                                    added_cond_kwargs=added, return_dict=False)[0]
            by_pass = dict(zip(first, noise_pred.split(self.rows_per_segment)))
            for c, p in self.segments:
                predictions[c][p] = by_pass[p]
        else:
            noise_pred = model.unet(self.inputs, t, encoder_hidden_states=self.text_states,
                                    added_cond_kwargs=self.added, return_dict=False)[0]
            for k, (c, p) in enumerate(self.segments):
                predictions[c][p] = noise_pred[self.segment(k)]
        return predictions


def _text_time(model: IP2PModel, cond: Conditioning, image: ImageLatents, rows: _Rows, passes: list[str]) -> dict:
    """SDXL's added conditioning: the pooled text embedding of each row and six time ids (original size, crop
    top-left, target size: the working size, no crop)."""
    device, dtype = model.device, model.dtype
    pooled = {TEXT: rows.of_prompts(cond.pooled), IMAGE: rows.of_prompts(cond.negative_pooled)}
    pooled[UNCOND] = pooled[IMAGE]
    h, w = image.size
    time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=dtype, device=device)
    added = {
        "text_embeds": torch.cat([pooled[p] for p in passes]).to(device, dtype),
        "time_ids": time_ids.repeat(len(passes) * rows.count, 1),
    }
    _check_time_embedding(model, added)
    return added


_ADDED_CONDITIONING = {TEXT_TIME: _text_time}  # FamilySpec.added_conditioning -> how to build it


def _added_conditioning(model, cond, image, rows, passes) -> dict | None:
    kind = model.family.added_conditioning
    return None if kind is None else _ADDED_CONDITIONING[kind](model, cond, image, rows, passes)


def _check_inputs(model: IP2PModel, cond: Conditioning, image: ImageLatents,
                  cells_settings: Sequence[SamplerSettings]) -> list[GuidancePlan]:
    if cond.family != model.family.name or image.family != model.family.name:
        raise IP2PError(
            f"Inputs were encoded for another model family (instruction: {cond.family}, image: {image.family}, "
            f"model: {model.family.name}); encode them with this model."
        )
    return [validate_settings(s) for s in cells_settings]


def _run(
    model: IP2PModel,
    cond: Conditioning,
    image: ImageLatents,
    cells_settings: Sequence[SamplerSettings],
    callback: StepCallback | None,
    cancel: Callable[[], bool] | None,
    noise: torch.Tensor | None,
) -> list[torch.Tensor]:
    """Denoise one or more cells (guidance settings that share everything else) with one UNet call per step."""
    # 1. Check the inputs and settings.
    bases = _check_inputs(model, cond, image, cells_settings)
    device, dtype = model.device, model.dtype

    # 2. Pair instructions with images: the rows of the batch.
    rows = _Rows.pair(cond, image, cells_settings[0].images_per_instruction)
    shape = (rows.count, model.latent_channels, *image.latents.shape[-2:])
    if noise is not None and tuple(noise.shape) != shape:
        raise IP2PError(f"Starting noise has shape {tuple(noise.shape)}; this run needs {shape}.")

    # 3. Prepare each cell: scheduler, timesteps, noise, starting latents, guidance per step.
    init = rows.of_images(image.latents).to(device, dtype) * float(model.vae.config.scaling_factor)
    prepared = [_Cell.prepare(model, s, base, init, shape, noise) for s, base in zip(cells_settings, bases)]
    cells = [cell for cell, _ in prepared]
    timesteps = prepared[-1][1]  # cells differ only in guidance: they share the schedule

    # 4. Build the UNet batch: every (cell, pass) segment's text states, image latents and added conditioning.
    unet_batch = _UNetBatch.build(model, cond, image, rows, cells)

    # 5. A masked edit keeps the input's latents outside the mask.
    region = None
    if image.region is not None:
        keep_mask = 1.0 - rows.of_images(image.region.latent_mask).to(device, dtype)
        region = _KeptRegion(init, keep_mask, timesteps)

    # 6. Denoise: one UNet call per step for all cells, then each cell's guidance and scheduler step; progress after
    #    every scheduler step (multi-order schedulers take several loop iterations per step), cancel before each.
    order = getattr(cells[0].scheduler, "order", 1)
    total = math.ceil(len(timesteps) / order) if order > 1 else len(timesteps)
    done = 0
    with adapters.active(model), torch.inference_mode():  # this handle's LoRAs, under the model's lock
        for i, t in enumerate(timesteps):
            if cancel is not None and cancel():
                raise Cancelled(f"Sampling cancelled before step {done + 1} of {total}.")
            for cell, predictions in zip(cells, unet_batch.predict(model, cells, t)):
                cell.step(predictions, i, t, region)
            if i == len(timesteps) - 1 or (i + 1) % order == 0:
                done += 1
                if callback is not None:
                    shown = cells[0].latents if len(cells) == 1 else torch.cat([c.latents for c in cells])
                    callback(done, total, shown)
    return [c.latents for c in cells]


def sample(
    model: IP2PModel,
    cond: Conditioning,
    image: ImageLatents,
    settings: SamplerSettings = SamplerSettings(),
    *,
    callback: StepCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    noise: torch.Tensor | None = None,
) -> Latents:
    """Run the dual-guidance denoising loop and return latents for ``decode_latents``.

    Output order: for each (instruction, image) pair, ``images_per_instruction`` consecutive samples.
    ``callback(step, total, latents)`` runs after every step; ``cancel()`` runs before every step and, if it returns
    true, sampling stops with ``Cancelled`` (nothing is modified: models and inputs are left as they were).
    ``noise`` replaces the seeded starting noise (unit variance, [batch, 4, h, w]), as diffusers' ``latents`` does.
    """
    (samples,) = _run(model, cond, image, [settings], callback, cancel, noise)
    return Latents(samples, image.original_size, image.size, model.family.name, settings, image.region)


@dataclass(frozen=True, eq=False)
class SweepResult:
    """A grid of edits: ``latents.samples`` holds the cells one after another (text guidance varies slowest)."""

    latents: Latents
    cells: tuple[tuple[float, float], ...]  # (text guidance, image guidance) per cell
    rows_per_cell: int


def sweep(
    model: IP2PModel,
    cond: Conditioning,
    image: ImageLatents,
    settings: SamplerSettings,
    text_guidances: Sequence[float],
    image_guidances: Sequence[float],
    *,
    max_rows: int | None = None,
    callback: StepCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> SweepResult:
    """Edit with every (text, image) guidance pair, same seed; one UNet call per step serves all cells (of a chunk).

    ``max_rows`` caps the UNet batch (cells x images x passes); cells beyond it run in further chunks of equal
    size. On the CPU the cap is at most ``CPU_SWEEP_ROWS``. On a GPU that runs out of memory the chunk is halved and
    retried. Chunking never changes a cell's result.
    """
    texts, imgs = list(text_guidances), list(image_guidances)
    if not texts or not imgs:
        raise IP2PError("A guidance sweep needs at least one text guidance and one image guidance value.")
    grid = [(check_scale(t, "Text guidance"), check_scale(g, "Image guidance")) for t in texts for g in imgs]
    cells = [settings.with_(text_guidance=t, image_guidance=g) for t, g in grid]
    rows_per_cell = _Rows.pair(cond, image, settings.images_per_instruction).count
    if model.device.type == "cpu":
        max_rows = min(CPU_SWEEP_ROWS, max_rows or CPU_SWEEP_ROWS)
    chunk = len(cells) if max_rows is None else max(1, int(max_rows) // max(1, 3 * rows_per_cell))
    chunk = math.ceil(len(cells) / math.ceil(len(cells) / chunk))  # equal chunks: 3 + 3 + 3, not 4 + 4 + 1
    outputs: list[torch.Tensor] = []
    start = 0
    while start < len(cells):
        part = cells[start : start + chunk]
        try:
            outputs += _run(model, cond, image, part, callback, cancel, None)
        except torch.cuda.OutOfMemoryError:
            if chunk == 1:
                raise
            chunk = max(1, chunk // 2)
            torch.cuda.empty_cache()
            continue
        start += len(part)
    latents = Latents(torch.cat(outputs), image.original_size, image.size, model.family.name, settings, image.region)
    return SweepResult(latents, tuple(grid), rows_per_cell)


def _check_time_embedding(model: IP2PModel, added: dict) -> None:
    unet = model.unet
    expected = unet.add_embedding.linear_1.in_features
    got = unet.config.addition_time_embed_dim * added["time_ids"].shape[1] + added["text_embeds"].shape[1]
    if expected != got:
        raise IP2PError(
            f"The UNet expects an added embedding of width {expected} but the text encoders give {got}; "
            "the UNet and text encoders come from different models."
        )
