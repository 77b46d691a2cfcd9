"""Issue 12 without a ComfyUI checkout: what the pack does inside ComfyUI, against small fakes of ComfyUI's modules
(test_comfyui_compat.py checks the same against the real one when IPX2P_COMFYUI_DIR is set)."""

from __future__ import annotations

import sys

import pytest

from test_comfyui_compat import VENV_PYTHONS, comfy_python


# ------------------------------------------------------------------------------------- finding ComfyUI's python


def test_comfy_python_is_the_checkouts_venv_or_the_named_one(tmp_path):
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").write_text("")
    assert comfy_python(str(tmp_path), None) == str(tmp_path / ".venv" / "bin" / "python")
    assert comfy_python(str(tmp_path), sys.executable) == sys.executable


def test_comfy_python_missing_names_the_variable(tmp_path):
    with pytest.raises(RuntimeError) as err:
        comfy_python(str(tmp_path), None)
    assert str(err.value) == (f"No Python environment found for ComfyUI in {tmp_path} (looked for "
                              f"{', '.join(VENV_PYTHONS)}); set IPX2P_COMFYUI_PYTHON to the interpreter that runs "
                              "ComfyUI.")


# ------------------------------------------------------------------------------------------ memory (issue 12.1)


@pytest.fixture()
def fake_comfy(monkeypatch, tmp_path, tiny_sd):
    """ComfyUI's folder_paths and model management, as far as the ComfyHost uses them: LoadedModel keeps only a
    weak reference to the patcher, as comfy/model_management.py does."""
    import os
    import types
    import weakref

    import torch

    from ipx2p_nodes.comfy_host import ComfyHost
    from ipx2p_nodes.host import get_host, set_host

    previous = get_host()  # before the fake folder_paths exists: else the default host would be a ComfyHost
    models = tmp_path / "models"
    (models / "diffusers").mkdir(parents=True)
    os.symlink(tiny_sd["folder"], models / "diffusers" / "tiny-sd")
    folder_paths = types.ModuleType("folder_paths")
    folder_paths.get_folder_paths = lambda kind: [str(models / kind)]
    folder_paths.get_filename_list = lambda kind: []
    folder_paths.get_full_path = lambda kind, name: None
    mm = types.ModuleType("comfy.model_management")
    mm.loaded = []  # weak references, as ComfyUI's LoadedModel holds
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.load_models_gpu = lambda patchers, force_full_load=False: mm.loaded.extend(weakref.ref(p) for p in patchers)

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device):
            self.model, self.load_device, self.offload_device = model, load_device, offload_device

    patcher_mod = types.ModuleType("comfy.model_patcher")
    patcher_mod.ModelPatcher = ModelPatcher
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.model_patcher = mm, patcher_mod
    for name, mod in (("folder_paths", folder_paths), ("comfy", comfy), ("comfy.model_management", mm),
                      ("comfy.model_patcher", patcher_mod)):
        monkeypatch.setitem(sys.modules, name, mod)
    set_host(ComfyHost())
    yield mm
    set_host(previous)


def test_inside_comfyui_a_loaded_model_is_owned_by_its_model_management(fake_comfy):
    import gc
    import weakref

    import ipx2p_nodes
    from ipx2p_core import MODEL_CACHE

    MODEL_CACHE.clear()
    (model,) = ipx2p_nodes.NODE_CLASS_MAPPINGS["IPX2PLoadModel"]().load("[diffusers] tiny-sd", "auto", "fp32", "cpu")
    # registered on the CPU too, with every module of the model, and nothing kept in the engine's cache
    (patcher,) = [ref() for ref in fake_comfy.loaded]
    assert patcher.load_device.type == "cpu" and patcher.offload_device.type == "cpu"
    assert patcher.model.unet is model.unet and patcher.model.vae is model.vae
    assert list(patcher.model.text_encoders) == list(model.text_encoders)
    assert len(MODEL_CACHE) == 0
    # every node's prepare() finds the same patcher (ComfyUI compares LoadedModels by patcher identity)
    ipx2p_nodes.common.prepare(model)
    assert fake_comfy.loaded[1]() is patcher
    # when ComfyUI drops its node outputs (/free with free_memory) and collects, the weights go
    unet = weakref.ref(model.unet)
    del model, patcher
    gc.collect()
    assert unet() is None and [ref() for ref in fake_comfy.loaded] == [None, None]


# ------------------------------------------------------------------------------------- example inputs (12.2)


def test_example_inputs_are_copied_without_replacing_the_users_files(tmp_path):
    from examples_helpers import EXAMPLES_DIR

    from ipx2p_nodes.comfy_host import copy_missing_files

    target = tmp_path / "input"
    target.mkdir()
    (target / "ipx2p_example.png").write_bytes(b"the user's own picture")
    copied = copy_missing_files(EXAMPLES_DIR / "input", target)
    assert copied == [target / "ipx2p_example_sky_mask.png"]
    assert (target / "ipx2p_example.png").read_bytes() == b"the user's own picture"
    assert copied[0].read_bytes() == (EXAMPLES_DIR / "input" / "ipx2p_example_sky_mask.png").read_bytes()
    assert sorted(p.name for p in target.iterdir()) == ["ipx2p_example.png", "ipx2p_example_sky_mask.png"]  # no temp
    assert copy_missing_files(EXAMPLES_DIR / "input", target) == []


def test_the_pack_copies_example_inputs_when_comfyui_loads_it(fake_comfy, tmp_path, monkeypatch):
    """ComfyUI loads the pack by path (spec_from_file_location with the folder as package); inside ComfyUI the
    pack's __init__ fills the input folder."""
    import importlib.util
    import sys as _sys

    from examples_helpers import EXAMPLES_DIR, ROOT

    input_dir = tmp_path / "comfy-input"
    monkeypatch.setattr(_sys.modules["folder_paths"], "get_input_directory", lambda: str(input_dir), raising=False)
    monkeypatch.setitem(_sys.modules, "comfy.model_management", fake_comfy)
    spec = importlib.util.spec_from_file_location("custom_nodes_x_comfyui_ipx2p", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    _sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:  # the pack's second copy (nodes, engine) goes again
        for name in [n for n in _sys.modules if n == spec.name or n.startswith(spec.name + ".")]:
            del _sys.modules[name]
    assert "IPX2PLoadModel" in module.NODE_CLASS_MAPPINGS
    assert sorted(p.name for p in input_dir.iterdir()) == sorted(p.name for p in (EXAMPLES_DIR / "input").iterdir())


# ------------------------------------------------------------------------------- native latent nodes (12.4)


class LatentUpscaleBy:
    """Test-only copy of ComfyUI's LatentUpscaleBy (nodes.py): scales "samples" and keeps the LATENT's other keys."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "upscale_method": (["nearest-exact", "bilinear"],),
                             "scale_by": ("FLOAT", {"default": 1.5, "min": 0.01, "max": 8.0, "step": 0.01})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "upscale"

    def upscale(self, samples, upscale_method, scale_by):
        import torch.nn.functional as F

        s = samples.copy()
        size = (round(samples["samples"].shape[-2] * scale_by), round(samples["samples"].shape[-1] * scale_by))
        s["samples"] = F.interpolate(samples["samples"], size=size, mode=upscale_method)
        return (s,)


def latent_upscale_prompt(scale_by: float, mask: bool) -> dict:
    """Load Model → Encode (masked sky or whole image, fit 64) → Sampler → LatentUpscaleBy → Decode (restore on)."""
    enc = {"model": ["1", 0], "image": ["2", 0], "resize": "fit", "size": 64, "width": 512, "height": 512}
    if mask:
        enc["mask"] = ["2", 1]
    return {
        "1": {"class_type": "IPX2PLoadModel", "inputs": {"model_name": "[diffusers] tiny-sd", "family": "auto",
                                                         "dtype": "fp32", "device": "cpu"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "ipx2p_example_sky_mask.png"}},
        "3": {"class_type": "IPX2PEncodeImage", "inputs": enc},
        "4": {"class_type": "IPX2PEncodeInstruction", "inputs": {"model": ["1", 0], "instruction": "make it winter",
                                                                 "negative": ""}},
        "5": {"class_type": "IPX2PSampler", "inputs": {
            "model": ["1", 0], "conditioning": ["4", 0], "image_latents": ["3", 0], "seed": 1, "steps": 2,
            "scheduler": "auto", "text_guidance": 7.5, "image_guidance": 1.5, "guidance_rescale": 0.0,
            "images_per_instruction": 1}},
        "6": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["5", 0], "upscale_method": "bilinear",
                                                          "scale_by": scale_by}},
        "7": {"class_type": "IPX2PDecode", "inputs": {"model": ["1", 0], "latent": ["6", 0], "restore_size": True}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "up"}},
    }


@pytest.fixture()
def latent_runner(tmp_path, tiny_sd):
    import os

    from examples_helpers import copy_inputs

    from ipx2p_nodes.host import get_host, set_host
    from ipx2p_standalone.host import StandaloneHost
    from ipx2p_standalone.runner import Runner, default_node_classes

    (tmp_path / "models" / "diffusers").mkdir(parents=True)
    os.symlink(tiny_sd["folder"], tmp_path / "models" / "diffusers" / "tiny-sd")
    classes, names = default_node_classes()
    previous = get_host()
    runner = Runner({**classes, "LatentUpscaleBy": LatentUpscaleBy}, output_dir=tmp_path / "out",
                    input_dir=copy_inputs(tmp_path / "in"), temp_dir=tmp_path / "temp", display_names=names,
                    host=StandaloneHost(models_dir=tmp_path / "models", device="cpu"))
    yield runner
    set_host(previous)


@pytest.mark.parametrize("mask", [False, True], ids=["whole", "masked"])
def test_restore_follows_a_latent_upscaled_after_the_sampler(latent_runner, mask):
    """The example photo is 512x384, sampled at fit 64 (the tiny VAE halves: 32x24 latents). ×1.5 latents decode
    to 1.5 × the input's size (restore scales with the latent); ×1 restores the input's size; a masked edit's
    mask follows the latent, and the sky-less part is the input resized to 768x576."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from examples_helpers import EXAMPLES_DIR

    sizes = {}
    for scale in (1.0, 1.5):
        result = latent_runner.run(latent_upscale_prompt(scale, mask))
        assert result.ok, result.error_text()
        (saved,) = result.files
        sizes[scale] = Image.open(saved).size
        if mask and scale == 1.5:
            source = Image.open(EXAMPLES_DIR / "input" / "ipx2p_example_sky_mask.png")
            keep = np.asarray(source.getchannel("A")) == 255  # opaque = keep (LoadImage's mask is 1 - alpha)
            src = torch.from_numpy(np.asarray(source.convert("RGB")).astype(np.float32) / 255)[None].permute(0, 3, 1, 2)
            resized = F.interpolate(src, size=(576, 768), mode="bicubic", align_corners=False, antialias=True)
            resized = resized.clamp(0, 1).permute(0, 2, 3, 1)[0].mul(255).round().numpy()
            keep_big = F.interpolate(torch.from_numpy(keep.astype(np.float32))[None, None], size=(576, 768),
                                     mode="bilinear", align_corners=False, antialias=True)[0, 0].numpy() == 1
            out = np.asarray(Image.open(saved).convert("RGB")).astype(np.float32)
            assert keep_big.sum() > 0.3 * keep_big.size
            assert np.abs(out[keep_big] - resized[keep_big]).max() <= 1.0  # the input there, up to 8-bit rounding
    assert sizes == {1.0: (512, 384), 1.5: (768, 576)}
