"""The diffusers-layout config folders shipped in ``ipx2p_core/configs`` describe the real architectures.

Every model is built from the shipped configs on the meta device (no memory, no weights, no network) and its
parameter count is compared with the count of the real released model. Reference counts:

* SD 1.5 UNet, 4 input channels: 859,520,964 -- the example output in diffusers' own ``ModelMixin.num_parameters``
  docstring (``UNet2DConditionModel.from_pretrained("stable-diffusion-v1-5/...", subfolder="unet")``).
* SDXL base 1.0 UNet, 4 input channels: 2,567,463,684 -- the widely reported count of the
  stabilityai/stable-diffusion-xl-base-1.0 UNet (e.g. diffusers DreamBooth-SDXL training logs).
* InstructPix2Pix widens only ``conv_in`` from 4 to 8 input channels (the extra weights are zero-initialised in
  diffusers' train_instruct_pix2pix*.py); the bias and everything else are unchanged, so the 8-channel count is the
  4-channel count + 4 * 320 * 3 * 3 = +11,520.
* CLIP ViT-L/14 text model (SD 1.5 text_encoder, SDXL text_encoder): 123,060,480.
* OpenCLIP ViT-bigG/14 text model with its 1280x1280 projection (SDXL text_encoder_2, CLIPTextModelWithProjection):
  694,659,840.
* SD/SDXL KL-f8 VAE (both have the same architecture; only scaling_factor differs): 83,653,863.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ipx2p_core.configs import CLIP_TOKENIZER_DIR, CONFIGS_DIR

FAMILIES = ("sd15", "sdxl", "cosxl")
XL_FAMILIES = ("sdxl", "cosxl")

CONV_IN_EXTRA = 4 * 320 * 3 * 3  # 4 extra input channels of a 3x3 conv with 320 outputs
SD15_UNET_4CH = 859_520_964
SDXL_UNET_4CH = 2_567_463_684
CLIP_L_TEXT = 123_060_480
CLIP_BIGG_TEXT_WITH_PROJECTION = 694_659_840
KL_F8_VAE = 83_653_863

UNET_PARAMS = {
    "sd15": SD15_UNET_4CH + CONV_IN_EXTRA,  # 859,532,484
    "sdxl": SDXL_UNET_4CH + CONV_IN_EXTRA,  # 2,567,475,204
    "cosxl": SDXL_UNET_4CH + CONV_IN_EXTRA,
}

PROMPT = "a photo of a cat"
PROMPT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]  # <|startoftext|> a photo of a cat <|endoftext|>


def _json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _empty():
    from accelerate import init_empty_weights

    return init_empty_weights(include_buffers=False)


# ------------------------------------------------------------------------------------------------------ layout


@pytest.mark.parametrize("family", FAMILIES)
def test_folder_layout(family):
    root = CONFIGS_DIR / family
    expected = [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json",
    ]
    if family in XL_FAMILIES:
        expected += [
            "text_encoder_2/config.json",
            "tokenizer_2/tokenizer_config.json",
            "tokenizer_2/special_tokens_map.json",
        ]
    for rel in expected:
        assert (root / rel).is_file(), f"{family}/{rel} is missing"
    # Configs only: no weights and no per-family copies of the BPE files (those live in clip_tokenizer/).
    shipped = {p.name for p in root.rglob("*") if p.is_file()}
    assert not shipped & {"vocab.json", "merges.txt"}
    assert not [n for n in shipped if n.endswith((".safetensors", ".bin", ".ckpt", ".pt"))]


@pytest.mark.parametrize("family", FAMILIES)
def test_model_index_matches_folders(family):
    index = _json(CONFIGS_DIR / family / "model_index.json")
    xl = family in XL_FAMILIES
    assert index["_class_name"] == (
        "StableDiffusionXLInstructPix2PixPipeline" if xl else "StableDiffusionInstructPix2PixPipeline"
    )
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    sched = _json(CONFIGS_DIR / family / "scheduler" / "scheduler_config.json")
    assert index["scheduler"] == ["diffusers", sched["_class_name"]]
    if xl:
        assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
        assert index["tokenizer_2"] == ["transformers", "CLIPTokenizer"]
        assert index["force_zeros_for_empty_prompt"] is True
    assert index.get("is_cosxl_edit", False) is (family == "cosxl")


# ------------------------------------------------------------------------------------------------------ models


@pytest.mark.parametrize("family", FAMILIES)
def test_unet_parameter_count(family):
    from diffusers import UNet2DConditionModel

    config = UNet2DConditionModel.load_config(str(CONFIGS_DIR / family / "unet"))
    with _empty():
        unet = UNet2DConditionModel.from_config(config)
    assert unet.conv_in.in_channels == 8
    assert unet.conv_in.weight.device.type == "meta"
    assert _count(unet) == UNET_PARAMS[family]
    if family == "sd15":
        assert list(unet.config.block_out_channels) == [320, 640, 1280, 1280]
        assert unet.config.cross_attention_dim == 768
        assert unet.config.attention_head_dim == 8
        assert unet.config.sample_size == 64  # 512 px
    else:
        assert list(unet.config.block_out_channels) == [320, 640, 1280]
        assert list(unet.config.attention_head_dim) == [5, 10, 20]
        assert list(unet.config.transformer_layers_per_block) == [1, 2, 10]
        assert unet.config.cross_attention_dim == 2048
        assert unet.config.addition_embed_type == "text_time"
        assert unet.config.addition_time_embed_dim == 256
        # 6 size/crop time ids * 256 + the 1280-wide pooled bigG embedding
        assert unet.config.projection_class_embeddings_input_dim == 6 * 256 + 1280 == 2816
        assert unet.config.use_linear_projection is True
        assert unet.config.sample_size == 128  # 1024 px (SDXL base); see the report for sdxl-instructpix2pix-768


@pytest.mark.parametrize("family", FAMILIES)
def test_vae_parameter_count(family):
    from diffusers import AutoencoderKL

    config = AutoencoderKL.load_config(str(CONFIGS_DIR / family / "vae"))
    with _empty():
        vae = AutoencoderKL.from_config(config)
    assert _count(vae) == KL_F8_VAE
    assert vae.config.latent_channels == 4
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8
    if family == "sd15":
        assert vae.config.scaling_factor == 0.18215
    else:
        assert vae.config.scaling_factor == 0.13025
        assert vae.config.force_upcast is True  # the original SDXL VAE overflows in fp16


@pytest.mark.parametrize("family", FAMILIES)
def test_text_encoder_parameter_count(family):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig.from_pretrained(str(CONFIGS_DIR / family / "text_encoder"))
    assert config.model_type == "clip_text_model"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 12)
    assert (config.intermediate_size, config.hidden_act, config.vocab_size) == (3072, "quick_gelu", 49408)
    with _empty():
        model = CLIPTextModel(config)
    assert _count(model) == CLIP_L_TEXT


@pytest.mark.parametrize("family", XL_FAMILIES)
def test_text_encoder_2_parameter_count(family):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig.from_pretrained(str(CONFIGS_DIR / family / "text_encoder_2"))
    assert config.model_type == "clip_text_model"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (1280, 32, 20)
    assert (config.intermediate_size, config.hidden_act, config.projection_dim) == (5120, "gelu", 1280)
    with _empty():
        model = CLIPTextModelWithProjection(config)
    assert _count(model) == CLIP_BIGG_TEXT_WITH_PROJECTION


def test_legacy_eos_token_id_pools_at_the_first_end_of_text():
    """The real text-encoder configs keep the legacy ``eos_token_id: 2``: transformers then pools at argmax(input_ids),
    i.e. the first 49407 (<|endoftext|>, the largest id). That is the right token for both padding styles
    (pad = 49407 for tokenizer, pad = 0 "!" for tokenizer_2) as long as no token id above 49407 is added."""
    from transformers import CLIPTextConfig, CLIPTextModel

    shipped = CLIPTextConfig.from_pretrained(str(CONFIGS_DIR / "sd15" / "text_encoder"))
    assert shipped.eos_token_id == 2
    tiny = CLIPTextConfig(
        vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, eos_token_id=shipped.eos_token_id,
    )
    torch.manual_seed(0)
    model = CLIPTextModel(tiny).eval()
    eos_at = len(PROMPT_IDS) - 1
    for pad in (49407, 0):
        ids = torch.tensor([PROMPT_IDS + [pad] * (77 - len(PROMPT_IDS))])
        with torch.no_grad():
            out = model(ids)
        torch.testing.assert_close(out.pooler_output[0], out.last_hidden_state[0, eos_at])


# ------------------------------------------------------------------------------------------------------ tokenizers


def _tokenizer(family: str, sub: str, tmp_path: Path):
    """A CLIPTokenizer from the shipped BPE files plus the family's tokenizer_config.json/special_tokens_map.json."""
    from transformers import CLIPTokenizer

    folder = tmp_path / f"{family}-{sub}"
    folder.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(CLIP_TOKENIZER_DIR / name, folder / name)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(CONFIGS_DIR / family / sub / name, folder / name)
    return CLIPTokenizer.from_pretrained(str(folder))


def test_bang_is_token_zero():
    vocab = _json(CLIP_TOKENIZER_DIR / "vocab.json")
    assert len(vocab) == 49408
    assert vocab["!"] == 0
    assert vocab["<|startoftext|>"] == 49406
    assert vocab["<|endoftext|>"] == 49407


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_pads_with_end_of_text(family, tmp_path):
    tok = _tokenizer(family, "tokenizer", tmp_path)
    assert tok.model_max_length == 77
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407)
    ids = tok(PROMPT, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    assert ids == PROMPT_IDS + [49407] * (77 - len(PROMPT_IDS))


@pytest.mark.parametrize("family", XL_FAMILIES)
def test_tokenizer_2_pads_with_bang(family, tmp_path):
    tok = _tokenizer(family, "tokenizer_2", tmp_path)
    assert tok.model_max_length == 77
    assert tok.pad_token == "!"
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 0)
    ids = tok(PROMPT, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    assert ids == PROMPT_IDS + [0] * (77 - len(PROMPT_IDS))
