"""Model families as data: one row per family holding everything that differs between SD 1.5, SDXL and CosXL Edit.

Every stage reads the row of its model (``model.family``): the loaders (detection, config folder, text encoders,
scheduler config), text encoding (recipe), sampling (added conditioning), image encoding (latent scale), previews,
LoRA loading and export (diffusers loader mixin, pipeline class), single-file layout (key prefixes, extra keys).
Adding a family is one ``register(FamilySpec(...))`` (or ``register(replace(SD15, name=..., ...))`` for a family
that differs from one in a few facts) plus its diffusers-layout config folder, as ComfyUI's
``comfy/supported_models.py`` holds one class per model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .configs import CONFIGS_DIR
from .errors import IP2PError
from .schedulers import SCHEDULERS

if TYPE_CHECKING:  # pragma: no cover
    from .models import WeightFacts

# Text recipes (how instructions become UNet conditioning; text.py implements them):
LAST_STATE = "last_state"  # one CLIP-L encoder, its last hidden state (after the final layer norm)
PENULTIMATE_POOLED = "penultimate_pooled"  # every encoder's penultimate hidden state, concatenated, + the pooled
#                                            text embedding of the projection encoder (SDXL)

# Added conditioning the UNet takes besides the text states (diffusers' ``addition_embed_type`` names):
TEXT_TIME = "text_time"  # SDXL: pooled text embedding + six size/crop "time ids"

# Single-file text-encoder layouts (ldm_layout.py converts them):
CLIP = "clip"  # Hugging Face CLIP key names under ``<prefix>text_model.``
OPEN_CLIP = "open_clip"  # OpenCLIP (``transformer.resblocks.N``, fused q/k/v) under ``<prefix>``


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder of a family: its place in a diffusers folder and in a single-file checkpoint."""

    folder: str  # diffusers subfolder, also the LoRA component name: text_encoder, text_encoder_2
    tokenizer_folder: str  # tokenizer, tokenizer_2
    model_class: str  # transformers class: CLIPTextModel, CLIPTextModelWithProjection
    pad_token: str  # the tokenizer's pad token where the config folder does not name one
    ldm_prefix: str  # key prefix in single files
    ldm_layout: str  # CLIP or OPEN_CLIP


@dataclass(frozen=True, eq=False)
class FamilySpec:
    """Everything that differs per model family. Rows are singletons: compare them with ``is``."""

    name: str  # the id users type (--family, the loader node): sd15
    label: str  # what messages call it: SD 1.5 InstructPix2Pix
    architecture: str  # the base model it is built on; LoRA checks name it, and a forced family must match it
    config_dir: Path  # diffusers-layout configs (no weights) for building a model from a single file
    detect: Callable[["WeightFacts"], bool]  # does a UNet with these facts belong to this family?
    text_encoders: tuple[TextEncoderSpec, ...]
    text_recipe: str  # LAST_STATE or PENULTIMATE_POOLED
    added_conditioning: str | None  # None or TEXT_TIME
    image_latents_scaled: bool  # image latents times the VAE scaling factor (CosXL Edit was trained on those)
    edm: bool  # continuous-sigma (EDM) model: only EDM schedulers fit
    default_scheduler: str  # what scheduler "auto" means (a name in schedulers.SCHEDULERS)
    fit_size: int  # the longest side the model was trained at (the size to use with resize fit:N)
    preview_factors: tuple  # (4x3 latent->RGB matrix, RGB bias) for cheap step previews
    lora_loader: str  # diffusers.loaders mixin that converts and injects LoRA files
    pipeline_class: str  # model_index.json class of the diffusers pipeline, for exported folders
    force_zeros_for_empty_prompt: bool  # default when a folder does not say; True: no negative = zero embeddings
    model_index_extra: Mapping[str, Any] = field(default_factory=dict)  # more model_index.json entries on export
    ldm_extra: Mapping[str, float] = field(default_factory=dict)  # scalar keys single files of this family carry

    @property
    def value(self) -> str:
        """The name, for callers of the former ``Family`` enum (``model.family.value``)."""
        return self.name

    def scheduler_config(self) -> dict:
        """A fresh copy of the family's own scheduler config (betas, prediction type, sigma range)."""
        with open(self.config_dir / "scheduler" / "scheduler_config.json", encoding="utf-8") as f:
            return json.load(f)

    def __repr__(self) -> str:
        return f"FamilySpec({self.name!r})"


# --------------------------------------------------------------------------------------------------------- registry

_FAMILIES: dict[str, FamilySpec] = {}


def register(spec: FamilySpec) -> FamilySpec:
    """Add a row. Detection tries the newest row first, so a later row refines an earlier one (CosXL Edit is an
    SDXL UNet with an EDM schedule; a new SD-1.5-based family is an SD 1.5 UNet with something more)."""
    if spec.name in _FAMILIES or spec.name == "auto":
        raise ValueError(f"A model family named {spec.name!r} is already registered.")
    if spec.text_recipe not in (LAST_STATE, PENULTIMATE_POOLED) or spec.added_conditioning not in (None, TEXT_TIME):
        raise ValueError(f"Family {spec.name!r}: unknown text recipe {spec.text_recipe!r} or added conditioning "
                         f"{spec.added_conditioning!r}; see the constants at the top of families.py.")
    scheduler = SCHEDULERS.get(spec.default_scheduler)
    if scheduler is None or scheduler.edm != spec.edm:
        raise ValueError(f"Family {spec.name!r}: its default scheduler {spec.default_scheduler!r} is not a "
                         f"{'EDM' if spec.edm else 'discrete-timestep'} scheduler of schedulers.SCHEDULERS.")
    if not (spec.config_dir / "unet" / "config.json").is_file():
        raise ValueError(f"Family {spec.name!r}: its config folder {spec.config_dir} has no unet/config.json.")
    _FAMILIES[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _FAMILIES.pop(name, None)


def family_names() -> list[str]:
    return list(_FAMILIES)


def get_family(name: "str | FamilySpec") -> FamilySpec:
    if isinstance(name, FamilySpec):
        return name
    spec = _FAMILIES.get(str(name))
    if spec is None:
        raise IP2PError(f"Unknown model family {name!r}; use auto, {', '.join(_FAMILIES)}.")
    return spec


def detect_family(facts: "WeightFacts") -> FamilySpec | None:
    """The newest registered row whose rule accepts these weights, or None."""
    return next((spec for spec in reversed(_FAMILIES.values()) if spec.detect(facts)), None)


# ------------------------------------------------------------------------------------------------------ the rows

CLIP_L_SD = TextEncoderSpec("text_encoder", "tokenizer", "CLIPTextModel", "<|endoftext|>",
                            "cond_stage_model.transformer.", CLIP)
CLIP_L_XL = TextEncoderSpec("text_encoder", "tokenizer", "CLIPTextModel", "<|endoftext|>",
                            "conditioner.embedders.0.transformer.", CLIP)
OPEN_CLIP_BIGG_XL = TextEncoderSpec("text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection", "!",
                                    "conditioner.embedders.1.model.", OPEN_CLIP)

# Linear latent -> RGB approximations (least-squares fits of VAE decodes; widely used for sampler previews).
SD_PREVIEW = (
    ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177)),
    (0.0, 0.0, 0.0),
)
XL_PREVIEW = (
    ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188)),
    (0.1084, -0.0175, -0.0011),
)

SD15 = register(FamilySpec(
    name="sd15",
    label="SD 1.5 InstructPix2Pix",
    architecture="SD 1.5",
    config_dir=CONFIGS_DIR / "sd15",
    detect=lambda facts: not facts.xl,
    text_encoders=(CLIP_L_SD,),
    text_recipe=LAST_STATE,
    added_conditioning=None,
    image_latents_scaled=False,
    edm=False,
    default_scheduler="euler_a",
    fit_size=512,
    preview_factors=SD_PREVIEW,
    lora_loader="StableDiffusionLoraLoaderMixin",
    pipeline_class="StableDiffusionInstructPix2PixPipeline",
    force_zeros_for_empty_prompt=False,
    model_index_extra={"safety_checker": [None, None], "feature_extractor": [None, None],
                       "image_encoder": [None, None], "requires_safety_checker": False},
))

SDXL = register(FamilySpec(
    name="sdxl",
    label="SDXL InstructPix2Pix",
    architecture="SDXL",
    config_dir=CONFIGS_DIR / "sdxl",
    detect=lambda facts: facts.xl,
    text_encoders=(CLIP_L_XL, OPEN_CLIP_BIGG_XL),
    text_recipe=PENULTIMATE_POOLED,
    added_conditioning=TEXT_TIME,
    image_latents_scaled=False,
    edm=False,
    default_scheduler="euler_a",
    fit_size=768,
    preview_factors=XL_PREVIEW,
    lora_loader="StableDiffusionXLLoraLoaderMixin",
    pipeline_class="StableDiffusionXLInstructPix2PixPipeline",
    force_zeros_for_empty_prompt=True,
))

COSXL = register(replace(
    SDXL,
    name="cosxl",
    label="CosXL Edit",
    config_dir=CONFIGS_DIR / "cosxl",
    # diffusers' own single-file detection takes CosXL Edit for a 4-channel SDXL base: its EDM marker decides.
    detect=lambda facts: facts.xl and facts.edm,
    image_latents_scaled=True,
    edm=True,
    default_scheduler="edm_euler",
    fit_size=1024,
    # CosXL files carry their EDM sigma range as two scalars (ComfyUI reads them to pick the v-pred EDM sampler).
    ldm_extra={"edm_vpred.sigma_max": 120.0, "edm_vpred.sigma_min": 0.002},
))


class Family:
    """The built-in rows under the former enum's names (``Family.SD15``); the table is ``family_names()``."""

    SD15 = SD15
    SDXL = SDXL
    COSXL = COSXL
