"""Diffusers -> original single-file layout: round trips through diffusers' own single-file converters.

Each export is converted back with ``diffusers.loaders.single_file_utils`` (the code ``from_single_file`` runs) and
must give back every tensor exactly. Full-size SD 1.5 / SDXL configs are checked on the meta device (no weights).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
    infer_diffusers_model_type,
    is_clip_sdxl_model,
    is_open_clip_sdxl_model,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from ipx2p_core import ldm_layout
from ipx2p_core.ldm_layout import (
    clip_l_to_ldm,
    open_clip_to_ldm,
    save_single_file,
    to_single_file_state_dict,
    unet_to_ldm,
    vae_to_ldm,
)
from tiny_models import SD15_UNET_FULL as SD15_UNET
from tiny_models import TINY_SDXL_UNET, TINY_UNET, TINY_VAE, tiny_clip_config


SDXL_UNET = dict(
    sample_size=128,
    in_channels=8,
    out_channels=4,
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(5, 10, 20),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    transformer_layers_per_block=(1, 2, 10),
    projection_class_embeddings_input_dim=2816,
    cross_attention_dim=2048,
)

SD_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    layers_per_block=2,
)


def _seeded(build, seed=0):
    torch.manual_seed(seed)
    return build()


def _on_meta(build):
    with torch.device("meta"):
        return build()


def _assert_same(got: dict, want: dict, what: str):
    assert set(got) == set(want), (
        f"{what}: missing {sorted(set(want) - set(got))[:10]}, unexpected {sorted(set(got) - set(want))[:10]}"
    )
    for key, value in want.items():
        assert got[key].shape == value.shape, f"{what}: {key} {tuple(got[key].shape)} != {tuple(value.shape)}"
        assert got[key].dtype == value.dtype, f"{what}: {key} dtype"
        if value.device.type != "meta":
            assert torch.equal(got[key], value), f"{what}: {key} differs"


def _without_text_model(sd: dict) -> dict:
    return {k.removeprefix("text_model."): v for k, v in sd.items()}


def _sd_models():
    unet = _seeded(lambda: UNet2DConditionModel(**TINY_UNET))
    vae = _seeded(lambda: AutoencoderKL(**TINY_VAE))
    te = _seeded(lambda: CLIPTextModel(tiny_clip_config()))
    return unet, vae, te


def _sdxl_models(projection_dim=40):
    unet = _seeded(lambda: UNet2DConditionModel(**TINY_SDXL_UNET))
    vae = _seeded(lambda: AutoencoderKL(**TINY_VAE, sample_size=128, scaling_factor=0.13025, force_upcast=True))
    te = _seeded(lambda: CLIPTextModel(tiny_clip_config(32, hidden_act="gelu")))
    te2 = _seeded(
        lambda: CLIPTextModelWithProjection(tiny_clip_config(40, projection_dim=projection_dim, hidden_act="gelu"))
    )
    return unet, vae, te, te2


def _check_unet_vae_round_trip(ckpt, unet, vae):
    _assert_same(convert_ldm_unet_checkpoint(ckpt, unet.config), unet.state_dict(), "unet")
    _assert_same(convert_ldm_vae_checkpoint(ckpt, vae.config), vae.state_dict(), "vae")


def test_sd15_round_trip_through_diffusers():
    unet, vae, te = _sd_models()
    ckpt = to_single_file_state_dict(unet, vae, (te,), "sd15")
    assert all(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) for k in ckpt)
    _check_unet_vae_round_trip(ckpt, unet, vae)
    # Flattened CLIPTextModel keys have no text_model. prefix; diffusers' converter yields text_model.* keys
    # and from_single_file strips them for flattened models.
    back = convert_ldm_clip_checkpoint(ckpt)
    assert all(k.startswith("text_model.") for k in back)
    _assert_same(_without_text_model(back), _without_text_model(te.state_dict()), "clip")

    assert ckpt["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == 8
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in ckpt
    assert not any("position_ids" in k for k in ckpt)
    # TINY_UNET: DownBlock2D, CrossAttnDownBlock2D / CrossAttnUpBlock2D, UpBlock2D, layers_per_block 2
    for key in (
        "input_blocks.3.0.op.weight",
        "input_blocks.4.1.proj_in.weight",
        "input_blocks.5.1.transformer_blocks.0.attn2.to_k.weight",
        "middle_block.1.transformer_blocks.0.attn1.to_q.weight",
        "middle_block.2.in_layers.0.weight",
        "output_blocks.2.2.conv.weight",
        "output_blocks.5.0.skip_connection.weight",
        "time_embed.0.weight",
        "out.2.weight",
    ):
        assert "model.diffusion_model." + key in ckpt, key
    assert ckpt["model.diffusion_model.input_blocks.4.1.proj_in.weight"].ndim == 4  # conv 1x1 projection
    assert ckpt["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    assert ckpt["first_stage_model.decoder.mid.attn_1.proj_out.weight"].shape == (64, 64, 1, 1)
    # decoder levels are numbered by resolution: up_blocks.0 (64 ch, with upsampler) is up.1
    assert ckpt["first_stage_model.decoder.up.1.block.0.conv1.weight"].shape[0] == 64
    assert "first_stage_model.decoder.up.1.upsample.conv.weight" in ckpt
    assert "first_stage_model.decoder.up.0.upsample.conv.weight" not in ckpt
    assert "first_stage_model.encoder.down.0.downsample.conv.weight" in ckpt
    assert infer_diffusers_model_type(ckpt) == "instruct-pix2pix"


@pytest.mark.parametrize("family", ["sdxl", "cosxl"])
def test_sdxl_round_trip_through_diffusers(family):
    unet, vae, te, te2 = _sdxl_models()
    ckpt = to_single_file_state_dict(unet, vae, (te, te2), family)
    _check_unet_vae_round_trip(ckpt, unet, vae)
    _assert_same(_without_text_model(convert_ldm_clip_checkpoint(ckpt)), _without_text_model(te.state_dict()), "clip")
    back2 = convert_open_clip_checkpoint(te2, ckpt, prefix="conditioner.embedders.1.model.")
    _assert_same(back2, te2.state_dict(), "open_clip")

    p = "model.diffusion_model."
    assert ckpt[p + "input_blocks.0.0.weight"].shape[1] == 8
    assert ckpt[p + "label_emb.0.0.weight"].shape == (unet.add_embedding.linear_1.weight.shape)
    assert p + "label_emb.0.2.bias" in ckpt
    assert ckpt[p + "input_blocks.4.1.proj_in.weight"].ndim == 2  # linear projection
    assert p + "input_blocks.5.1.transformer_blocks.1.ff.net.2.weight" in ckpt  # depth 2 in the second block
    assert p + "output_blocks.2.1.transformer_blocks.1.norm3.weight" in ckpt
    o = "conditioner.embedders.1.model."
    assert ckpt[o + "transformer.resblocks.0.attn.in_proj_weight"].shape == (120, 40)
    assert ckpt[o + "transformer.resblocks.4.attn.in_proj_bias"].shape == (120,)
    for key in ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection",
                "transformer.resblocks.0.ln_1.weight", "transformer.resblocks.0.mlp.c_fc.weight",
                "transformer.resblocks.0.mlp.c_proj.bias", "transformer.resblocks.0.attn.out_proj.weight"):
        assert o + key in ckpt, key
    assert torch.equal(ckpt[o + "text_projection"], te2.text_projection.weight.T)
    assert "conditioner.embedders.0.transformer.text_model.encoder.layers.4.mlp.fc2.bias" in ckpt
    assert not any(k.startswith("cond_stage_model.") for k in ckpt)
    if family == "cosxl":
        assert ckpt["edm_vpred.sigma_max"].item() == pytest.approx(120.0)
        assert ckpt["edm_vpred.sigma_min"].item() == pytest.approx(0.002)
        assert ckpt["edm_vpred.sigma_max"].ndim == 0
    else:
        assert not any(k.startswith("edm_vpred") for k in ckpt)


def test_open_clip_projection_is_transposed_when_not_square():
    *_, te2 = _sdxl_models(projection_dim=24)
    out = open_clip_to_ldm(te2.state_dict())
    assert out["conditioner.embedders.1.model.text_projection"].shape == (40, 24)
    back = convert_open_clip_checkpoint(te2, out, prefix="conditioner.embedders.1.model.")
    _assert_same(back, te2.state_dict(), "open_clip")
    with_scale = open_clip_to_ldm(te2.state_dict(), logit_scale=ldm_layout.OPEN_CLIP_LOGIT_SCALE)
    assert with_scale["conditioner.embedders.1.model.logit_scale"].item() == pytest.approx(4.6052, abs=1e-4)


def test_clip_l_accepts_wrapped_keys_and_skips_position_ids():
    _, _, te = _sd_models()
    flat = te.state_dict()
    wrapped = {"text_model." + k: v for k, v in flat.items()}
    wrapped["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    a = clip_l_to_ldm(flat, ldm_layout.SDXL_CLIP_L_PREFIX)
    b = clip_l_to_ldm(wrapped, ldm_layout.SDXL_CLIP_L_PREFIX)
    assert a.keys() == b.keys()
    assert all(k.startswith("conditioner.embedders.0.transformer.text_model.") for k in a)
    with pytest.raises(ValueError):
        clip_l_to_ldm({"something.else": torch.zeros(1)})


def test_unknown_keys_are_rejected():
    unet, vae, _ = _sd_models()
    sd = dict(unet.state_dict())
    sd["encoder_hid_proj.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="encoder_hid_proj"):
        unet_to_ldm(sd, unet.config)
    with pytest.raises(ValueError, match="layers_per_block"):
        unet_to_ldm(unet.state_dict(), {**unet.config, "layers_per_block": 3})
    vsd = dict(vae.state_dict())
    vsd["decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError):
        vae_to_ldm(vsd)
    with pytest.raises(ValueError):
        to_single_file_state_dict(unet, vae, (), "sd15")
    with pytest.raises(ValueError):
        to_single_file_state_dict(unet, vae, (object(),), "sd3")


def test_unet_variants_round_trip():
    """Per-block attention and depth patterns beyond the tiny test models."""
    variants = [
        dict(  # attention in every block, 1 layer per block, conv projection, 3 levels
            block_out_channels=(32, 32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16,
            attention_head_dim=4,
        ),
        dict(  # SDXL-like with attention in the last level and three layers per block
            block_out_channels=(32, 64, 64),
            layers_per_block=3,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1, 3),
            use_linear_projection=True,
            attention_head_dim=(2, 4, 4),
            cross_attention_dim=16,
        ),
    ]
    for config in variants:
        unet = _seeded(lambda: UNet2DConditionModel(sample_size=16, in_channels=8, out_channels=4, **config))
        ckpt = unet_to_ldm(unet.state_dict(), unet.config)
        _assert_same(convert_ldm_unet_checkpoint(ckpt, unet.config), unet.state_dict(), str(config))


def test_full_size_sd15_keys_on_meta():
    unet = _on_meta(lambda: UNet2DConditionModel(**SD15_UNET))
    vae = _on_meta(lambda: AutoencoderKL(**SD_VAE))
    te = _on_meta(lambda: CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072,
                                                      num_attention_heads=12, num_hidden_layers=12)))
    ckpt = to_single_file_state_dict(unet, vae, (te,), "sd15")
    _check_unet_vae_round_trip(ckpt, unet, vae)
    _assert_same(_without_text_model(convert_ldm_clip_checkpoint(ckpt)), _without_text_model(te.state_dict()), "clip")

    p = "model.diffusion_model."
    assert sum(k.startswith(p) for k in ckpt) == 686
    assert sum(k.startswith("first_stage_model.") for k in ckpt) == 248
    assert sum(k.startswith("cond_stage_model.") for k in ckpt) == 196
    assert tuple(ckpt[p + "input_blocks.0.0.weight"].shape) == (320, 8, 3, 3)
    for key, shape in {
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": (320, 320),
        "input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "input_blocks.9.0.op.weight": (1280, 1280, 3, 3),
        "input_blocks.11.0.out_layers.3.weight": (1280, 1280, 3, 3),
        "middle_block.1.proj_out.weight": (1280, 1280, 1, 1),
        "middle_block.2.emb_layers.1.weight": (1280, 1280),
        "output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        "output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
        "output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "time_embed.2.weight": (1280, 1280),
        "out.2.weight": (4, 320, 3, 3),
    }.items():
        assert tuple(ckpt[p + key].shape) == shape, key
    assert "model.diffusion_model.output_blocks.11.1.conv.weight" not in ckpt
    v = "first_stage_model."
    for key, shape in {
        "decoder.up.3.block.0.conv1.weight": (512, 512, 3, 3),
        "decoder.up.1.block.0.nin_shortcut.weight": (256, 512, 1, 1),
        "decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
        "decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3),
        "encoder.down.2.downsample.conv.weight": (512, 512, 3, 3),
        "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "encoder.mid.attn_1.norm.weight": (512,),
        "decoder.mid.block_2.conv2.weight": (512, 512, 3, 3),
        "encoder.norm_out.weight": (512,),
        "quant_conv.weight": (8, 8, 1, 1),
        "post_quant_conv.weight": (4, 4, 1, 1),
    }.items():
        assert tuple(ckpt[v + key].shape) == shape, key
    assert v + "decoder.up.0.upsample.conv.weight" not in ckpt
    assert v + "encoder.down.3.downsample.conv.weight" not in ckpt
    assert infer_diffusers_model_type(ckpt) == "instruct-pix2pix"


def test_full_size_sdxl_keys_on_meta():
    unet = _on_meta(lambda: UNet2DConditionModel(**SDXL_UNET))
    te2 = _on_meta(
        lambda: CLIPTextModelWithProjection(
            CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                           projection_dim=1280, hidden_act="gelu")
        )
    )
    ckpt = unet_to_ldm(unet.state_dict(), unet.config)
    _assert_same(convert_ldm_unet_checkpoint(ckpt, unet.config), unet.state_dict(), "unet")
    ckpt.update(open_clip_to_ldm(te2.state_dict()))
    _assert_same(convert_open_clip_checkpoint(te2, ckpt, prefix="conditioner.embedders.1.model."),
                 te2.state_dict(), "open_clip")

    p = "model.diffusion_model."
    assert sum(k.startswith(p) for k in ckpt) == 1680
    for key, shape in {
        "input_blocks.0.0.weight": (320, 8, 3, 3),
        "label_emb.0.0.weight": (1280, 2816),
        "label_emb.0.2.weight": (1280, 1280),
        "input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "input_blocks.4.1.proj_in.weight": (640, 640),
        "input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048),
        "input_blocks.8.1.transformer_blocks.9.ff.net.0.proj.weight": (10240, 1280),
        "middle_block.1.transformer_blocks.9.norm3.weight": (1280,),
        "output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.5.2.conv.weight": (640, 640, 3, 3),
        "output_blocks.8.0.skip_connection.weight": (320, 640, 1, 1),
    }.items():
        assert tuple(ckpt[p + key].shape) == shape, key
    assert p + "input_blocks.9.0.in_layers.0.weight" not in ckpt
    o = "conditioner.embedders.1.model."
    assert tuple(ckpt[o + "transformer.resblocks.0.attn.in_proj_weight"].shape) == (3840, 1280)
    assert o + "transformer.resblocks.31.mlp.c_proj.bias" in ckpt  # xl_base detection key family
    assert tuple(ckpt[o + "positional_embedding"].shape) == (77, 1280)
    assert tuple(ckpt[o + "text_projection"].shape) == (1280, 1280)
    assert sum(k.startswith(o) for k in ckpt) == 4 + 1 + 32 * 12
    assert infer_diffusers_model_type(ckpt) == "xl_base"


def test_save_single_file(tmp_path):
    from safetensors.torch import load_file

    unet, vae, te, te2 = _sdxl_models()
    path = save_single_file(tmp_path / "m.safetensors", unet, vae, (te, te2), "cosxl", metadata={"a": "b"})
    loaded = load_file(str(path))
    want = to_single_file_state_dict(unet, vae, (te, te2), "cosxl")
    assert loaded.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(loaded[key], value), key
    # (the tiny encoder has 5 layers, short of diffusers' xl_base detection key resblocks.9; see the meta test)
    assert is_clip_sdxl_model(loaded) and is_open_clip_sdxl_model(loaded)
    assert loaded["edm_vpred.sigma_max"].dtype == torch.float32
    # extra keys are written and win over converted ones
    extra = to_single_file_state_dict(unet, vae, (te, te2), "cosxl", extra={"edm_vpred.sigma_max": torch.tensor(80.0)})
    assert extra["edm_vpred.sigma_max"].item() == 80.0
