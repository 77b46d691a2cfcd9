"""The model-family table: every per-family fact has one home, and a new family is one row plus its config folder."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_models
from ipx2p_core import (
    IP2PError,
    SamplerSettings,
    apply_lora,
    edit,
    encode_instruction,
    family_names,
    get_family,
    latents_to_preview,
    load_model,
    save_merged_model,
)
from ipx2p_core.families import COSXL, SD15, SDXL, FamilySpec, detect_family, register, unregister
from ipx2p_core.ldm_layout import save_single_file
from ipx2p_core.models import WeightFacts
from ipx2p_core.schedulers import SCHEDULERS, is_edm_config

# ---------------------------------------------------------------------------------------------- the built-in rows


@pytest.mark.parametrize("family", [SD15, SDXL, COSXL])
def test_builtin_rows_agree_with_their_config_folders(family):
    import diffusers.loaders

    index = json.loads((family.config_dir / "model_index.json").read_text())
    assert index["_class_name"] == family.pipeline_class
    assert index.get("force_zeros_for_empty_prompt", False) is family.force_zeros_for_empty_prompt
    for spec in family.text_encoders:
        assert index[spec.folder] == ["transformers", spec.model_class]
        assert index[spec.tokenizer_folder] == ["transformers", "CLIPTokenizer"]
    assert is_edm_config(family.scheduler_config()) is family.edm is SCHEDULERS[family.default_scheduler].edm
    assert hasattr(diffusers.loaders, family.lora_loader)
    assert family.scheduler_config() is not family.scheduler_config()  # a fresh copy each time: loaders edit it


def test_detection_rules_newest_row_first():
    sd = WeightFacts(in_channels=8, context_dim=768, xl=False, edm=False)
    xl = WeightFacts(in_channels=8, context_dim=2048, xl=True, edm=False)
    cos = WeightFacts(in_channels=8, context_dim=2048, xl=True, edm=True)
    assert (detect_family(sd), detect_family(xl), detect_family(cos)) == (SD15, SDXL, COSXL)
    assert sd.family is SD15 and cos.family is COSXL  # CosXL is an SDXL UNet too: the later, narrower row wins
    assert family_names()[:3] == ["sd15", "sdxl", "cosxl"]


def test_preview_factors_come_from_the_row():
    lat = torch.zeros(1, 4, 2, 2)
    sd_rgb = np.asarray(latents_to_preview(lat, "sd15")[0])
    xl_rgb = np.asarray(latents_to_preview(lat, COSXL)[0])
    # zero latents show the row's bias: 0 for SD 1.5, (0.1084, -0.0175, -0.0011) for the SDXL VAE
    assert sd_rgb[0, 0].tolist() == [128, 128, 128]
    assert xl_rgb[0, 0].tolist() == [round((0.1084 + 1) / 2 * 255), round((-0.0175 + 1) / 2 * 255),
                                     round((-0.0011 + 1) / 2 * 255)]


def test_registry_errors():
    with pytest.raises(IP2PError, match=r"Unknown model family 'sd3'; use auto, sd15, sdxl, cosxl"):
        get_family("sd3")
    with pytest.raises(ValueError, match="'sdxl' is already registered"):
        register(SDXL)
    with pytest.raises(ValueError, match=r"config folder .*nowhere has no unet/config.json"):
        register(replace(SD15, name="nowhere", config_dir=SD15.config_dir / "nowhere"))
    with pytest.raises(ValueError, match="unknown text recipe 'bag_of_words'"):
        register(replace(SD15, name="bow", text_recipe="bag_of_words"))
    with pytest.raises(ValueError, match="default scheduler 'edm_euler' is not a discrete-timestep scheduler"):
        register(replace(SD15, name="mixed", default_scheduler="edm_euler"))
    assert not {"nowhere", "bow", "mixed"} & set(family_names())


# ------------------------------------------------------------------------------------ a new family is one row


WIDTH = 48  # the new family's text width: the tiny SD 1.5 test model has 32


@pytest.fixture(scope="module")
def wide_family(tmp_path_factory):
    """A family told apart from SD 1.5 by its 48-wide text encoder: one row (its own label, detection rule, default
    scheduler and config folder; everything else as SD 1.5) and a config folder, registered for this module only.
    Its model is saved as a diffusers folder and as a single file."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    root = tmp_path_factory.mktemp("wide_family")
    torch.manual_seed(0)
    comps = tiny_models.tiny_sd_components()
    comps["unet"] = UNet2DConditionModel(**{**tiny_models.TINY_UNET, "cross_attention_dim": WIDTH})
    comps["vae"] = AutoencoderKL(**tiny_models.TINY_VAE)
    comps["text_encoder"] = CLIPTextModel(tiny_models.tiny_clip_config(WIDTH))
    folder = tiny_models.save_diffusers_folder(comps, root / "diffusers", sdxl=False)
    configs = root / "configs"  # the family's config folder: the diffusers folder without weights
    shutil.copytree(folder, configs, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))

    spec = register(replace(
        SD15, name="sd15wide", label="SD 1.5 wide-text test family", config_dir=configs,
        detect=lambda facts: not facts.xl and facts.context_dim == WIDTH, default_scheduler="ddim", fit_size=320,
    ))
    try:
        file = save_single_file(root / "wide.safetensors", comps["unet"], comps["vae"], (comps["text_encoder"],),
                                "sd15wide")
        yield {"spec": spec, "folder": folder, "file": file, "configs": configs}
    finally:
        unregister("sd15wide")


def test_a_registered_family_loads_and_edits_through_the_entry_points(wide_family, photo):
    spec = wide_family["spec"]
    from_file = load_model(wide_family["file"], cache=None)
    from_folder = load_model(wide_family["folder"], cache=None)
    assert from_file.family is spec and from_folder.family is spec
    assert from_file.describe().startswith("SD 1.5 wide-text test family from ")
    assert encode_instruction(from_file, "x").family == "sd15wide"

    # The row's default scheduler is what "auto" means; the same weights forced to SD 1.5 with that scheduler named
    # give the same pixels, so nothing but the row decides.
    settings = SamplerSettings(steps=2, seed=3)
    ours = edit(from_file, photo, "make it winter", settings=settings)
    assert ours.images.shape == (1, 32, 44, 3)  # the tiny VAE works at a factor of 2
    as_sd15 = load_model(wide_family["file"], family="sd15", config=wide_family["configs"], cache=None)
    assert as_sd15.family is SD15
    theirs = edit(as_sd15, photo, "make it winter", settings=settings.with_(scheduler="ddim"))
    assert torch.equal(ours.images, theirs.images)
    default_sd15 = edit(as_sd15, photo, "make it winter", settings=settings)  # SD 1.5's auto: Euler ancestral
    assert float((default_sd15.images - ours.images).abs().max()) > 1e-3
    folder_edit = edit(from_folder, photo, "make it winter", settings=settings)
    assert float((folder_edit.images - ours.images).abs().max()) <= 1e-5

    with pytest.raises(IP2PError, match=r"forced to load as SDXL InstructPix2Pix, but its weights are SD 1.5 "
                                        r"wide-text test family"):
        load_model(wide_family["file"], family="sdxl", cache=None)


def test_a_registered_family_works_with_loras_exports_and_the_cli(wide_family, photo, tmp_path):
    import adapter_files as af

    from ipx2p_standalone.cli import build_parser, main

    model = load_model(wide_family["folder"], cache=None)
    lora = af.write(af.to_peft(af.random_lora(model, seed=1)), tmp_path / "lora.safetensors")
    with_lora = apply_lora(model, lora, 0.7)  # the row's LoRA loader
    exported = save_merged_model(with_lora, tmp_path / "merged")
    index = json.loads((exported / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInstructPix2PixPipeline" and "text_encoder_2" not in index
    reloaded = load_model(exported, cache=None)
    assert reloaded.family is wide_family["spec"]
    settings = SamplerSettings(steps=2, seed=5)
    a = edit(with_lora, photo, "make it winter", settings=settings).images
    b = edit(reloaded, photo, "make it winter", settings=settings).images
    assert float((a - b).abs().max()) <= 1e-4

    assert build_parser().parse_args(["edit", "in.png", "x", "-m", "m", "--family", "sd15wide"]).family == "sd15wide"
    src, out = tmp_path / "in.png", tmp_path / "out.png"
    photo.save(src)
    assert main(["edit", str(src), "make it winter", "-m", str(wide_family["file"]), "--family", "sd15wide",
                 "--steps", "2", "--seed", "3", "--device", "cpu", "-o", str(out), "-q"]) == 0
    engine = edit(load_model(wide_family["file"], cache=None), photo, "make it winter",
                  settings=SamplerSettings(steps=2, seed=3)).images
    png = np.asarray(Image.open(out)).astype(np.float32) / 255.0
    assert json.loads(Image.open(out).text["ipx2p"])["family"] == "sd15wide"
    assert float(np.abs(png - engine[0].numpy()).max()) <= 1 / 255 + 1e-6


def test_unregistering_gives_the_weights_back_to_sd15(wide_family):
    unregister("sd15wide")
    try:
        assert "sd15wide" not in family_names()
        assert load_model(wide_family["folder"], cache=None).family is SD15
    finally:
        register(wide_family["spec"])
    assert isinstance(get_family("sd15wide"), FamilySpec)
