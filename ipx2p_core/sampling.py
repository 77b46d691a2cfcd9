"""The denoising loop: schedulers by name, dual guidance with pass pruning, step callbacks and cancellation."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, replace
from typing import Callable, Protocol

import torch

from . import defaults
from .errors import Cancelled, IP2PError
from .guidance import IMAGE, TEXT, UNCOND, GuidancePlan, plan_guidance
from .image import ImageLatents
from .models import IP2PModel
from .schedulers import make_scheduler
from .text import Conditioning

MAX_SEED = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class SamplerSettings:
    """Everything that decides a sampling run besides the model and its inputs. Defaults live in ``defaults``."""

    steps: int = defaults.STEPS
    text_guidance: float = defaults.TEXT_GUIDANCE
    image_guidance: float = defaults.IMAGE_GUIDANCE
    scheduler: str | None = defaults.SCHEDULER
    seed: int = defaults.SEED
    images_per_instruction: int = 1
    eta: float = 0.0
    guidance_rescale: float = 0.0
    denoising_end: float | None = None
    diffusers_gate: bool = False

    def with_(self, **changes) -> "SamplerSettings":
        return replace(self, **changes)


@dataclass(frozen=True, eq=False)
class Latents:
    """Sampled latents in diffusers' (scaled) space, with the sizes needed to decode them back."""

    samples: torch.Tensor
    original_size: tuple[int, int]
    size: tuple[int, int]
    family: str
    settings: SamplerSettings | None = None


class StepCallback(Protocol):
    def __call__(self, step: int, total: int, latents: torch.Tensor) -> None: ...


def validate_settings(s: SamplerSettings) -> GuidancePlan:
    if not isinstance(s.steps, int) or isinstance(s.steps, bool) or s.steps < 1:
        raise IP2PError(f"Steps must be a whole number of at least 1, got {s.steps!r}.")
    if s.steps > 1000:
        raise IP2PError(f"Steps must be at most 1000 (the model's training schedule), got {s.steps}.")
    if not isinstance(s.images_per_instruction, int) or s.images_per_instruction < 1:
        raise IP2PError(f"Images per instruction must be at least 1, got {s.images_per_instruction!r}.")
    if not isinstance(s.seed, int) or not 0 <= s.seed <= MAX_SEED:
        raise IP2PError(f"Seed must be a whole number from 0 to {MAX_SEED}, got {s.seed!r}.")
    if not (isinstance(s.eta, (int, float)) and 0.0 <= s.eta <= 1.0):
        raise IP2PError(f"eta must be between 0 and 1, got {s.eta!r}.")
    if s.denoising_end is not None and not (0.0 < float(s.denoising_end) <= 1.0):
        raise IP2PError(f"Denoising end must be in (0, 1], got {s.denoising_end!r}.")
    return plan_guidance(s.text_guidance, s.image_guidance, s.guidance_rescale, s.diffusers_gate)


def cpu_generator(seed: int) -> torch.Generator:
    """Noise always comes from a CPU generator, so a seed gives the same picture on every device."""
    # torch seeds are signed 64-bit internally; fold the unsigned ComfyUI range onto it deterministically.
    return torch.Generator("cpu").manual_seed(seed if seed < 2**63 else seed - 2**64)


def _pair(cond: Conditioning, image: ImageLatents) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Instruction k goes with image k; a single instruction or a single image is shared by all."""
    p, i = cond.batch_size, image.batch_size
    if p != i and p != 1 and i != 1:
        raise IP2PError(f"Got {p} instructions and {i} images; give one of either, or the same number of both.")
    n = max(p, i)
    idx_p = torch.arange(n) if p == n else torch.zeros(n, dtype=torch.long)
    idx_i = torch.arange(n) if i == n else torch.zeros(n, dtype=torch.long)
    return n, idx_p, idx_i


def _timesteps(scheduler, steps: int, denoising_end: float | None, device) -> torch.Tensor:
    scheduler.set_timesteps(steps, device=device)
    timesteps = scheduler.timesteps
    if denoising_end is not None and 0 < denoising_end < 1:
        if not type(scheduler).__name__.startswith("EDM"):
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
    plan = validate_settings(settings)
    if cond.family != model.family.value or image.family != model.family.value:
        raise IP2PError(
            f"Inputs were encoded for another model family (instruction: {cond.family}, image: {image.family}, "
            f"model: {model.family.value}); encode them with this model."
        )
    device, dtype = model.device, model.dtype
    n_pairs, idx_p, idx_i = _pair(cond, image)
    per = settings.images_per_instruction
    batch = n_pairs * per
    rep = lambda t, idx: t[idx.to(t.device)].repeat_interleave(per, dim=0)  # noqa: E731

    embeds = {TEXT: rep(cond.embeds, idx_p), IMAGE: rep(cond.negative_embeds, idx_p)}
    embeds[UNCOND] = embeds[IMAGE]
    img = rep(image.model_latents, idx_i).to(device, dtype)
    img_by_pass = {TEXT: img, IMAGE: img, UNCOND: torch.zeros_like(img)}
    prompt_embeds = torch.cat([embeds[p] for p in plan.passes]).to(device, dtype)
    image_cond = torch.cat([img_by_pass[p] for p in plan.passes])
    added = None
    if model.family.is_xl:
        pooled = {TEXT: rep(cond.pooled, idx_p), IMAGE: rep(cond.negative_pooled, idx_p)}
        pooled[UNCOND] = pooled[IMAGE]
        h, w = image.size
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=dtype, device=device)
        added = {
            "text_embeds": torch.cat([pooled[p] for p in plan.passes]).to(device, dtype),
            "time_ids": time_ids.repeat(batch * len(plan.passes), 1),
        }
        _check_time_embedding(model, added)

    scheduler = make_scheduler(settings.scheduler, model.scheduler_config)
    timesteps = _timesteps(scheduler, settings.steps, settings.denoising_end, device)
    generator = cpu_generator(settings.seed)
    from diffusers.utils.torch_utils import randn_tensor

    h_lat, w_lat = image.latents.shape[-2:]
    shape = (batch, model.latent_channels, h_lat, w_lat)
    if noise is None:
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    elif tuple(noise.shape) != shape:
        raise IP2PError(f"Starting noise has shape {tuple(noise.shape)}; this run needs {shape}.")
    else:
        latents = noise.to(device, dtype)
    latents = latents * scheduler.init_noise_sigma
    step_kwargs = _step_kwargs(scheduler, generator, settings.eta)

    n_pass = len(plan.passes)
    # One input buffer reused every step: noisy latents in the first channels, image latents after them.
    unet_in = torch.empty((batch * n_pass, model.latent_channels + img.shape[1], h_lat, w_lat), device=device, dtype=dtype)
    unet_in[:, model.latent_channels :] = image_cond
    order = getattr(scheduler, "order", 1)
    total = math.ceil(len(timesteps) / order) if order > 1 else len(timesteps)
    done = 0
    with torch.inference_mode():
        for i, t in enumerate(timesteps):
            if cancel is not None and cancel():
                raise Cancelled(f"Sampling cancelled before step {done + 1} of {total}.")
            # Scaling is per-sample and identical across passes: scale once, then copy into each pass's slice.
            scaled = scheduler.scale_model_input(latents, t)
            for k in range(n_pass):
                unet_in[k * batch : (k + 1) * batch, : model.latent_channels] = scaled
            noise_pred = model.unet(
                unet_in, t, encoder_hidden_states=prompt_embeds, added_cond_kwargs=added, return_dict=False
            )[0]
            eps = plan.combine(noise_pred)
            latents = scheduler.step(eps, t, latents, **step_kwargs, return_dict=False)[0]
            if i == len(timesteps) - 1 or (i + 1) % order == 0:
                done += 1
                if callback is not None:
                    callback(done, total, latents)
    return Latents(
        samples=latents,
        original_size=image.original_size,
        size=image.size,
        family=model.family.value,
        settings=settings,
    )


def _check_time_embedding(model: IP2PModel, added: dict) -> None:
    unet = model.unet
    expected = unet.add_embedding.linear_1.in_features
    got = unet.config.addition_time_embed_dim * added["time_ids"].shape[1] + added["text_embeds"].shape[1]
    if expected != got:
        raise IP2PError(
            f"The UNet expects an added embedding of width {expected} but the text encoders give {got}; "
            "the UNet and text encoders come from different models."
        )
