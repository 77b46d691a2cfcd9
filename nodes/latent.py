"""ComfyUI's LATENT layout ↔ the engine's latents.

ComfyUI keeps LATENT samples unscaled (raw VAE space) and scales them inside its samplers; diffusers-style engines
keep them scaled. LATENTs we emit follow ComfyUI's layout, plus an "ipx2p" entry with the sizes Decode needs.
"""

from __future__ import annotations

from ._engine import core


def to_comfy_latent(model, latents: "core.Latents") -> dict:
    scale = float(model.vae.config.scaling_factor)
    return {
        "samples": (latents.samples / scale).float().cpu(),
        "ipx2p": {"original_size": tuple(latents.original_size), "size": tuple(latents.size),
                  "family": latents.family, "region": latents.region},
    }


def from_comfy_latent(model, latent: dict):
    """(scaled latents for the engine, original size or None, edit region or None).

    Other nodes may change the LATENT's size after our sampler (ComfyUI's LatentUpscaleBy keeps our "ipx2p" entry
    and scales "samples"). The sizes then follow what the user asked: the original size is scaled by the latent's
    change (×1.5 latents restore to 1.5 × the input's size), and the edit region is resized along with it.
    """
    if not isinstance(latent, dict) or "samples" not in latent:
        raise core.IP2PError("Expected a LATENT (a dict with 'samples').")
    samples = latent["samples"] * float(model.vae.config.scaling_factor)
    info = latent.get("ipx2p") or {}
    original, region = info.get("original_size"), info.get("region")
    encoded = info.get("size")  # the working size (pixels) the sampler saw
    if encoded is None:
        return samples, original, region
    now = (samples.shape[-2] * model.vae_scale_factor, samples.shape[-1] * model.vae_scale_factor)
    if tuple(now) == tuple(encoded):
        return samples, original, region
    if original is not None:
        original = tuple(max(1, round(o * n / e)) for o, n, e in zip(original, now, encoded))
    if region is not None:
        region = core.masks.resize_region(region, now, original or now)
    return samples, original, region
