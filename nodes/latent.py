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
    """(scaled latents for the engine, original size or None, edit region or None)."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise core.IP2PError("Expected a LATENT (a dict with 'samples').")
    samples = latent["samples"] * float(model.vae.config.scaling_factor)
    info = latent.get("ipx2p") or {}
    return samples, info.get("original_size"), info.get("region")
