"""ipx2p_core: the InstructPix2Pix engine. Pure functions over small frozen dataclasses; no ComfyUI, no HTTP.

    model = load_model("instruct-pix2pix-00-22000.safetensors")
    cond = encode_instruction(model, "make it winter")
    image = encode_image(model, pil_image, resize="fit:512")
    latents = sample(model, cond, image, SamplerSettings(seed=1))
    pixels = decode_latents(model, latents.samples)          # [B, H, W, 3] float in 0..1
"""

from . import defaults, families
from .adapters import apply_embedding, apply_lora, save_lora_stack, save_merged_model
from .errors import Cancelled, IP2PError
from .families import Family, FamilySpec, family_names, get_family
from .guidance import plan_guidance
from .image import ImageLatents, ResizePolicy, decode_latents, encode_image, images_to_pil, latents_to_preview
from .models import MODEL_CACHE, IP2PModel, load_model
from .pipeline import EditResult, edit, edit_chain, guidance_sweep
from .saving import save_lora_file, save_merged
from .sampling import Latents, SamplerSettings, sample, sweep
from .schedulers import SCHEDULERS, scheduler_names
from .text import Conditioning, encode_instruction

__all__ = [
    "defaults",
    "Cancelled",
    "IP2PError",
    "plan_guidance",
    "ImageLatents",
    "ResizePolicy",
    "decode_latents",
    "encode_image",
    "images_to_pil",
    "latents_to_preview",
    "MODEL_CACHE",
    "families",
    "Family",
    "FamilySpec",
    "family_names",
    "get_family",
    "IP2PModel",
    "load_model",
    "EditResult",
    "edit",
    "edit_chain",
    "guidance_sweep",
    "sweep",
    "Latents",
    "SamplerSettings",
    "sample",
    "SCHEDULERS",
    "scheduler_names",
    "Conditioning",
    "encode_instruction",
    "apply_lora",
    "apply_embedding",
    "save_lora_stack",
    "save_merged_model",
    "save_lora_file",
    "save_merged",
]
