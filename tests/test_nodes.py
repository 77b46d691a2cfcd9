"""The node classes called directly (as ComfyUI calls them): schemas, staged vs one-node equality, LATENT layout,
progress and interrupt through the host seam."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import ipx2p_nodes
from ipx2p_nodes.host import get_host, set_host
from ipx2p_standalone.host import StandaloneHost


@pytest.fixture()
def host(tmp_path, tiny_sd, tiny_sdxl):
    models = tmp_path / "models"
    (models / "diffusers").mkdir(parents=True)
    (models / "checkpoints").mkdir()
    os.symlink(tiny_sd["folder"], models / "diffusers" / "tiny-sd")
    os.symlink(tiny_sdxl["folder"], models / "diffusers" / "tiny-sdxl")
    h = StandaloneHost(models_dir=models, device="cpu")
    previous = get_host()
    set_host(h)
    yield h
    set_host(previous)


def _image(photo):
    return torch.from_numpy(np.asarray(photo).astype(np.float32) / 255.0)[None]


def node(name):
    return ipx2p_nodes.NODE_CLASS_MAPPINGS[name]()


def test_every_node_has_category_tooltips_and_function(host):
    for name, cls in ipx2p_nodes.NODE_CLASS_MAPPINGS.items():
        assert name.startswith("IPX2P") and cls.CATEGORY.startswith("InstructPix2Pix")
        assert name in ipx2p_nodes.NODE_DISPLAY_NAME_MAPPINGS and cls.DESCRIPTION
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for input_name, (kind, *opts) in spec.get(section, {}).items():
                assert opts and opts[0].get("tooltip"), f"{name}.{input_name} has no tooltip"
        assert hasattr(cls, cls.FUNCTION) and len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS)


def test_model_list_comes_from_host_folders(host):
    choices = ipx2p_nodes.NODE_CLASS_MAPPINGS["IPX2PLoadModel"].INPUT_TYPES()["required"]["model_name"][0]
    assert choices == ["[diffusers] tiny-sd", "[diffusers] tiny-sdxl"]
    assert ipx2p_nodes.NODE_CLASS_MAPPINGS["IPX2PLoadModel"].VALIDATE_INPUTS(model_name="nope.safetensors") \
        .startswith(f"Model 'nope.safetensors' not found (looked in checkpoints: {host.models_dir / 'checkpoints'}; "
                    f"diffusers: {host.models_dir / 'diffusers'}). Available: '[diffusers] tiny-sd', "
                    "'[diffusers] tiny-sdxl'.")


@pytest.mark.parametrize("model_name", ["[diffusers] tiny-sd", "[diffusers] tiny-sdxl"])
def test_staged_nodes_equal_one_node_edit(host, photo, model_name):
    (model,) = node("IPX2PLoadModel").load(model_name, "auto", "auto", "auto")
    image = _image(photo)
    sampler = dict(seed=7, steps=3, scheduler="auto", text_guidance=7.5, image_guidance=1.5)
    (cond,) = node("IPX2PEncodeInstruction").encode(model, "make it winter", "blurry")
    (lat,) = node("IPX2PEncodeImage").encode(model, image, "fit", 64, 512, 512)
    (latent,) = node("IPX2PSampler").sample(model, cond, lat, **sampler)
    (staged,) = node("IPX2PDecode").decode(model, latent, True)
    (one,) = node("IPX2PEditImage").edit(model, image, "make it winter", "blurry", **sampler, resize="fit", size=64,
                                         restore_size=True)
    assert staged.shape == one.shape == (1, 32, 44, 3) and staged.dtype == torch.float32
    assert torch.equal(staged, one)
    # LATENT follows ComfyUI's layout: unscaled VAE latents at the working size
    assert latent["samples"].shape == (1, 4, 32, 32) and latent["ipx2p"]["original_size"] == (32, 44)


def test_sampler_reports_progress_and_previews_and_stops_on_interrupt(host, photo):
    (model,) = node("IPX2PLoadModel").load("[diffusers] tiny-sd", "auto", "fp32", "cpu")
    (cond,) = node("IPX2PEncodeInstruction").encode(model, "x", "")
    (lat,) = node("IPX2PEncodeImage").encode(model, _image(photo), "keep", 512, 512, 512)
    seen = []
    host.progress_callback = lambda step, total, preview: seen.append((step, total, preview))
    node("IPX2PSampler").sample(model, cond, lat, seed=1, steps=3, scheduler="euler", text_guidance=5.0,
                                image_guidance=1.5)
    assert [(s, t) for s, t, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    assert seen[0][2].mode == "RGB"  # a latent preview each step
    host.progress_callback = lambda step, total, preview: host.interrupt() if step == 1 else None
    from ipx2p_core import Cancelled

    with pytest.raises(Cancelled):
        node("IPX2PSampler").sample(model, cond, lat, seed=1, steps=3, scheduler="euler", text_guidance=5.0,
                                    image_guidance=1.5)
    host.clear_interrupt()


def test_comfy_host_hands_gpu_models_to_comfyui_memory_management(monkeypatch, tiny_sd):
    """Inside ComfyUI every model (on the CPU too, issue 12) is wrapped once in a ModelPatcher and loaded through
    load_models_gpu before each node's work, so ComfyUI can evict it ("Unload models", POST /free). ComfyUI itself
    is faked here; the real behaviour is covered by tests/test_comfyui_compat.py."""
    import sys
    import types

    from ipx2p_core import load_model
    from ipx2p_nodes.comfy_host import ComfyHost

    loaded = []

    class FakePatcher:
        def __init__(self, model, load_device, offload_device):
            self.model, self.load_device, self.offload_device = model, load_device, offload_device

    mm = types.SimpleNamespace(load_models_gpu=lambda ps, force_full_load: loaded.append((ps, force_full_load)),
                               unet_offload_device=lambda: "cpu")
    comfy = types.ModuleType("comfy")
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.model_management", mm)
    monkeypatch.setitem(sys.modules, "comfy.model_patcher", types.SimpleNamespace(ModelPatcher=FakePatcher))
    comfy.model_management, comfy.model_patcher = mm, sys.modules["comfy.model_patcher"]

    host = ComfyHost()
    model = load_model(tiny_sd["folder"], cache=None)
    host.prepare_memory(model)
    ((cpu_patcher,), full) = loaded.pop()
    assert full is True and cpu_patcher.load_device == cpu_patcher.offload_device == torch.device("cpu")
    base = load_model(tiny_sd["folder"], cache=None)  # other modules: a model loaded onto a GPU
    gpu_like = type(base)(**{**base.__dict__, "device": torch.device("cuda")})
    host.prepare_memory(gpu_like)
    host.prepare_memory(gpu_like)
    (first, full), (second, _) = loaded
    assert full is True and first[0] is second[0] and first[0] is not cpu_patcher  # one patcher per base model
    holder = first[0].model
    assert holder.unet is base.unet and holder.vae is base.vae and list(holder.text_encoders) == [base.text_encoders[0]]
    assert first[0].load_device == torch.device("cuda") and first[0].offload_device == "cpu"


def _fake_comfyui(monkeypatch, tmp_path):
    """Just enough of ComfyUI for ComfyHost: the interrupt flag and its exception (the same semantics as
    comfy.model_management: the throwing accessor clears the flag), a ProgressBar whose hook records steps, and
    folder_paths' temp folder."""
    import sys
    import types

    class InterruptProcessingException(Exception):
        pass

    state = {"flag": False, "steps": [], "loads": []}

    def throw_exception_if_processing_interrupted():
        if state["flag"]:
            state["flag"] = False
            raise InterruptProcessingException()

    mm = types.SimpleNamespace(InterruptProcessingException=InterruptProcessingException,
                               processing_interrupted=lambda: state["flag"],
                               throw_exception_if_processing_interrupted=throw_exception_if_processing_interrupted,
                               get_torch_device=lambda: torch.device("cpu"),
                               unet_offload_device=lambda: torch.device("cpu"),
                               load_models_gpu=lambda patchers, force_full_load: state["loads"].append(patchers))

    class ProgressBar:
        def __init__(self, total):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            state["steps"].append(value)
            if value == 1:
                state["flag"] = True  # the user presses Cancel during the first step

    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.utils = mm, types.SimpleNamespace(ProgressBar=ProgressBar)
    comfy.model_patcher = types.SimpleNamespace(ModelPatcher=lambda model, load_device, offload_device: model)
    monkeypatch.setitem(sys.modules, "comfy.model_patcher", comfy.model_patcher)
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.model_management", mm)
    monkeypatch.setitem(sys.modules, "comfy.utils", comfy.utils)
    monkeypatch.setitem(sys.modules, "folder_paths",
                        types.SimpleNamespace(get_temp_directory=lambda: str(tmp_path / "comfy-temp")))
    return state, InterruptProcessingException


def test_inside_comfyui_a_cancel_is_comfyuis_own_interrupt(monkeypatch, host, photo, tmp_path):
    """The engine raises Cancelled when host.cancelled() turns true; ComfyHost turns it into ComfyUI's
    InterruptProcessingException (so ComfyUI reports "interrupted", not an error) and clears the flag."""
    from ipx2p_nodes.comfy_host import ComfyHost

    (model,) = node("IPX2PLoadModel").load("[diffusers] tiny-sd", "auto", "fp32", "cpu")
    (cond,) = node("IPX2PEncodeInstruction").encode(model, "x", "")
    (lat,) = node("IPX2PEncodeImage").encode(model, _image(photo), "keep", 512, 512, 512)
    state, interrupt = _fake_comfyui(monkeypatch, tmp_path)
    set_host(ComfyHost())
    with pytest.raises(interrupt) as stopped:
        node("IPX2PSampler").sample(model, cond, lat, seed=1, steps=3, scheduler="euler", text_guidance=5.0,
                                    image_guidance=1.5)
    from ipx2p_core import Cancelled

    assert isinstance(stopped.value.__cause__, Cancelled)
    assert state["steps"] == [1] and state["flag"] is False  # stopped before step 2; the flag is consumed
    assert len(state["loads"]) == 1  # the sampler handed the model to ComfyUI's model management first
    assert get_host().temp_dir() == tmp_path / "comfy-temp"  # Compare's folder inside ComfyUI


def test_both_hosts_implement_the_seam_and_the_standalone_one_frees_cached_models(host, tiny_sd, tmp_path):
    from ipx2p_core import MODEL_CACHE, load_model
    from ipx2p_nodes.comfy_host import ComfyHost
    from ipx2p_nodes.host import Host

    assert isinstance(host, Host) and isinstance(ComfyHost(), Host)
    load_model(tiny_sd["folder"])  # through the engine's model cache, as Load Model does
    assert len(MODEL_CACHE) >= 1
    host.free_memory()  # what the studio's "Unload models" (POST /free) calls
    assert len(MODEL_CACHE) == 0


def test_load_model_config_choice_builds_single_files_of_another_architecture(host, tiny_sd):
    """Issue 12.5: the tiny single file is not the released SD 1.5 architecture. Without a config the error names
    the node's own input (not a CLI flag); with its diffusers folder chosen as config it loads."""
    from ipx2p_core import IP2PError

    os.symlink(tiny_sd["file"], host.models_dir / "checkpoints" / "tiny.safetensors")
    spec = ipx2p_nodes.NODE_CLASS_MAPPINGS["IPX2PLoadModel"].INPUT_TYPES()
    assert spec["optional"]["config"][0] == ["auto", "[shipped] sd15", "[shipped] sdxl", "[shipped] cosxl",
                                             "[diffusers] tiny-sd", "[diffusers] tiny-sdxl"]
    with pytest.raises(IP2PError) as err:
        node("IPX2PLoadModel").load("tiny.safetensors", "auto", "fp32", "cpu")
    assert str(err.value).endswith("If this checkpoint has an unusual architecture, give a matching diffusers-layout "
                                   "config folder (choose it in Load Model's config input); otherwise the file is "
                                   "damaged.")
    assert "--config" not in str(err.value)
    (model,) = node("IPX2PLoadModel").load("tiny.safetensors", "auto", "fp32", "cpu", config="[diffusers] tiny-sd")
    assert model.meta["config"] == str(host.models_dir / "diffusers" / "tiny-sd") and model.family.name == "sd15"
    with pytest.raises(IP2PError) as err:
        node("IPX2PLoadModel").load("tiny.safetensors", "auto", "fp32", "cpu", config="[diffusers] gone")
    assert str(err.value).startswith("Config '[diffusers] gone' not found; choose auto, a shipped config or a "
                                     "diffusers folder from models/diffusers ([shipped] sd15, ")


def test_engine_errors_name_the_fix_as_each_host_does(tiny_sd, tmp_path, capsys, monkeypatch):
    """One engine error, three wordings: the Python argument, the CLI flag, the node's input."""
    from ipx2p_core import IP2PError, load_model
    from ipx2p_core.models import parse_device
    from ipx2p_nodes.loaders import NODE_OPTIONS
    from ipx2p_standalone.cli import CLI_OPTIONS, main

    with pytest.raises(IP2PError) as err:
        load_model(tiny_sd["file"], cache=None)
    assert "config folder (config=...); otherwise" in str(err.value)
    assert "config folder (--config DIR); otherwise" in str(err.value.phrased(CLI_OPTIONS))
    photo = tmp_path / "in.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(photo)
    assert main(["edit", str(photo), "x", "-m", str(tiny_sd["file"]), "-o", str(tmp_path / "o.png"), "-q"]) == 2
    assert "(--config DIR); otherwise the file is damaged." in capsys.readouterr().err

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(IP2PError) as err:
        parse_device("cuda")
    assert str(err.value) == ("Device 'cuda' was asked for, but this PyTorch build sees no CUDA GPU. Use "
                              "device='cpu'.")
    assert str(err.value.phrased(CLI_OPTIONS)).endswith("Use --device cpu.")
    assert str(err.value.phrased(NODE_OPTIONS)).endswith("Use cpu in Load Model's device input.")
    assert isinstance(err.value.phrased(NODE_OPTIONS), IP2PError)
