"""Tiny random-weight InstructPix2Pix models for tests and benchmarks (bench scripts put tests/ on sys.path).

Nothing here downloads anything: weights come from fixed seeds, the tokenizer from the CLIP BPE files shipped in
``configs/clip_tokenizer``. The shapes follow diffusers' own fast tests for the IP2P pipelines (8-channel UNet,
2-level VAE with scale factor 2), with one change: the SDXL-like model's second text encoder is wider than the
first, as in real SDXL, so the two encoders are never interchangeable by shape.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ipx2p_core.configs import CLIP_TOKENIZER_DIR

# Real SD 1.5 UNet configuration (timbrooks/instruct-pix2pix), used by the full-size parity test and benchmark.
SD15_UNET_FULL = dict(
    sample_size=64,
    in_channels=8,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
)

TINY_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=2,
    sample_size=32,
    in_channels=8,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
)

TINY_SDXL_UNET = dict(
    TINY_UNET,
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    transformer_layers_per_block=(1, 2),
    projection_class_embeddings_input_dim=6 * 8 + 40,  # six time ids of width 8 + pooled width of text encoder 2
    cross_attention_dim=32 + 40,  # both encoders' hidden states, concatenated
)

TINY_VAE = dict(
    block_out_channels=[32, 64],
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
    up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
    latent_channels=4,
)

CLIP_VOCAB_SIZE = 49408


def tiny_clip_config(hidden_size: int = 32, projection_dim: int | None = None, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=CLIP_VOCAB_SIZE - 2,
        eos_token_id=CLIP_VOCAB_SIZE - 1,
        pad_token_id=CLIP_VOCAB_SIZE - 1,
        hidden_size=hidden_size,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=CLIP_VOCAB_SIZE,
        max_position_embeddings=77,
        projection_dim=projection_dim or hidden_size,
        **extra,
    )


def write_clip_tokenizer(directory: str | Path, pad_token: str = "<|endoftext|>") -> Path:
    """Write a complete CLIP tokenizer folder (vocab, merges, config) that ``CLIPTokenizer.from_pretrained`` reads."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(CLIP_TOKENIZER_DIR / name, directory / name)
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return directory


def _seeded(seed: int, build):
    torch.manual_seed(seed)
    return build()


def tiny_sd_components(full_size_unet: bool = False, scheduler: str = "euler_a") -> dict:
    """Components of an SD-1.5-like IP2P model, as the keyword arguments of diffusers' pipeline constructor."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet_config = dict(SD15_UNET_FULL) if full_size_unet else dict(TINY_UNET)
    if full_size_unet:
        # A full-size UNet still reads tiny text states: only the width of the context changes.
        unet_config["cross_attention_dim"] = 32
    unet = _seeded(0, lambda: UNet2DConditionModel(**unet_config))
    vae = _seeded(0, lambda: AutoencoderKL(**TINY_VAE))
    text_encoder = _seeded(0, lambda: CLIPTextModel(tiny_clip_config()))
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_tokenizer(),
        scheduler=default_scheduler("sd15", scheduler),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def tiny_sdxl_components(scheduler: str = "euler_a", cosxl: bool = False) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet = _seeded(0, lambda: UNet2DConditionModel(**TINY_SDXL_UNET))
    vae = _seeded(0, lambda: AutoencoderKL(**TINY_VAE, sample_size=128, scaling_factor=0.13025, force_upcast=True))
    text_encoder = _seeded(0, lambda: CLIPTextModel(tiny_clip_config(32, hidden_act="gelu")))
    text_encoder_2 = _seeded(
        0, lambda: CLIPTextModelWithProjection(tiny_clip_config(40, projection_dim=40, hidden_act="gelu"))
    )
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=_tokenizer(),
        tokenizer_2=_tokenizer(pad_token="!"),
        scheduler=default_scheduler("cosxl" if cosxl else "sdxl", "edm_euler" if cosxl else scheduler),
    )


def default_scheduler(family: str, name: str):
    from ipx2p_core.families import get_family
    from ipx2p_core.schedulers import make_scheduler

    return make_scheduler(name, get_family(family).scheduler_config())


_TOKENIZER_CACHE: dict[str, object] = {}


def _tokenizer(pad_token: str = "<|endoftext|>"):
    from transformers import CLIPTokenizer

    if pad_token not in _TOKENIZER_CACHE:
        _TOKENIZER_CACHE[pad_token] = CLIPTokenizer(
            str(CLIP_TOKENIZER_DIR / "vocab.json"),
            str(CLIP_TOKENIZER_DIR / "merges.txt"),
            pad_token=pad_token,
            model_max_length=77,
        )
    return _TOKENIZER_CACHE[pad_token]


def save_diffusers_folder(components: dict, directory: str | Path, sdxl: bool, cosxl: bool = False) -> Path:
    """Save components as a diffusers folder (model_index.json + one subfolder each), as diffusers itself does."""
    from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionXLInstructPix2PixPipeline

    directory = Path(directory)
    cls = StableDiffusionXLInstructPix2PixPipeline if sdxl else StableDiffusionInstructPix2PixPipeline
    pipe = cls(**components)
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory
