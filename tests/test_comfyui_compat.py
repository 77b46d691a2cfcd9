"""Compatibility with a real ComfyUI: the pack loads, /object_info lists our nodes, and every example workflow queued
through ComfyUI's /prompt gives the same PNGs as our runner.

Runs only when IPX2P_COMFYUI_DIR points at a ComfyUI checkout. Its interpreter is found in the checkout's venv
(venv/ or .venv/), or named by IPX2P_COMFYUI_PYTHON; that environment also needs this pack's requirements. Our runner side runs with that same interpreter, so both
sides use the same torch build and the comparison can be exact.

    IPX2P_COMFYUI_DIR=~/ComfyUI pytest tests/test_comfyui_compat.py
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from examples_helpers import EXAMPLES, ROOT, build_models_dir, copy_inputs, load_example, tiny_overrides

COMFY_DIR = os.environ.get("IPX2P_COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFY_DIR, reason="set IPX2P_COMFYUI_DIR to a ComfyUI checkout to run")
# where ComfyUI's installs keep their environment: a venv made in the checkout, or the portable build's embedded one
VENV_PYTHONS = ("venv/bin/python", ".venv/bin/python", "venv/Scripts/python.exe", ".venv/Scripts/python.exe",
                "../python_embeded/python.exe")


def comfy_python(comfy_dir: str | None, explicit: str | None) -> str:
    """ComfyUI's interpreter: IPX2P_COMFYUI_PYTHON, else the venv inside the checkout; else an error naming both."""
    if explicit:
        return explicit
    for rel in VENV_PYTHONS:
        candidate = Path(comfy_dir or ".") / rel
        if candidate.is_file():
            return str(candidate)
    raise RuntimeError(f"No Python environment found for ComfyUI in {comfy_dir} (looked for "
                       f"{', '.join(VENV_PYTHONS)}); set IPX2P_COMFYUI_PYTHON to the interpreter that runs ComfyUI.")


COMFY_PYTHON = comfy_python(COMFY_DIR, os.environ.get("IPX2P_COMFYUI_PYTHON")) if COMFY_DIR else sys.executable

# Runs our runner inside ComfyUI's Python: the nodes folder is imported under its installed name, ipx2p_nodes.
RUNNER_SCRIPT = r"""
import importlib.util, json, sys
from pathlib import Path
root = Path(sys.argv[1]); job = json.loads(Path(sys.argv[2]).read_text())
sys.path.insert(0, str(root))
spec = importlib.util.spec_from_file_location("ipx2p_nodes", root / "nodes" / "__init__.py",
                                              submodule_search_locations=[str(root / "nodes")])
module = importlib.util.module_from_spec(spec); sys.modules["ipx2p_nodes"] = module; spec.loader.exec_module(module)
from ipx2p_standalone.host import StandaloneHost
from ipx2p_standalone.runner import Runner
runner = Runner(output_dir=job["output"], input_dir=job["input"], temp_dir=job["temp"],
                host=StandaloneHost(models_dir=job["models"], device="cpu"))
results = {}
for name, (prompt, extra) in job["prompts"].items():
    r = runner.run(prompt, extra_pnginfo=extra)
    results[name] = {"ok": r.ok, "error": r.error_text() if not r.ok else "", "files": [str(f) for f in r.files]}
print(json.dumps(results))
"""


# A test-only custom node pack (written into the temp ComfyUI base folder, never shipped): routes that look at our
# models from inside the ComfyUI process. /memory_probe/watch keeps weak references to the UNets of the models
# ComfyUI's model management holds; /memory_probe/alive says how many are still alive, and the process's RSS.
MEMORY_PROBE = r"""
import gc, weakref
import psutil
from aiohttp import web
import comfy.model_management as mm
import server

NODE_CLASS_MAPPINGS = {}
WATCHED = []


def _rss():
    return psutil.Process().memory_info().rss


@server.PromptServer.instance.routes.get("/memory_probe/watch")
async def watch(request):
    WATCHED.clear()
    nbytes = 0
    for loaded in mm.current_loaded_models:
        holder = getattr(loaded.model, "model", None)
        if holder is not None and hasattr(holder, "unet"):
            WATCHED.append(weakref.ref(holder.unet))
            nbytes += sum(t.numel() * t.element_size() for t in holder.state_dict().values())
    return web.json_response({"watched": len(WATCHED), "bytes": nbytes, "rss": _rss()})


@server.PromptServer.instance.routes.get("/memory_probe/alive")
async def alive(request):
    return web.json_response({"alive": sum(ref() is not None for ref in WATCHED), "rss": _rss(),
                              "loaded": len(mm.current_loaded_models)})
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _post(url: str, body: dict):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        body = r.read()
        return json.loads(body) if body else None


def _post_error(url: str, body: dict) -> tuple[int, dict]:
    """POST that is expected to fail: (HTTP status, JSON body)."""
    try:
        _post(url, body)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    pytest.fail(f"{url} accepted {body}")


def _run(comfy, prompt: dict, timeout: float = 600) -> dict:
    """Queue an API prompt in ComfyUI and wait for its history entry; returns the entry."""
    queued = _post(comfy["url"] + "/prompt", {"prompt": prompt, "client_id": "compat"})
    assert not queued.get("node_errors"), queued
    pid, deadline = queued["prompt_id"], time.time() + timeout
    while True:
        history = _get(f"{comfy['url']}/history/{pid}")
        if pid in history and history[pid]["status"].get("completed") is not None:
            return history[pid]
        assert time.time() < deadline, "the prompt timed out in ComfyUI"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def comfy(tmp_path_factory, tiny_sd, tiny_sdxl, tiny_cosxl):
    base = tmp_path_factory.mktemp("comfy_base")
    build_models_dir(base, tiny_sd, tiny_sdxl, tiny_cosxl)
    (base / "custom_nodes").mkdir()
    os.symlink(ROOT, base / "custom_nodes" / "comfyui-ipx2p")
    (base / "custom_nodes" / "memory_probe").mkdir()
    (base / "custom_nodes" / "memory_probe" / "__init__.py").write_text(MEMORY_PROBE)
    copy_inputs(base / "input")
    port = _free_port()
    log = open(base / "comfyui.log", "w")
    proc = subprocess.Popen(
        [COMFY_PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory",
         str(base), "--preview-method", "auto", "--disable-auto-launch"],
        cwd=COMFY_DIR, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            _get(url + "/system_stats")
            break
        except (urllib.error.URLError, ConnectionError, OSError):
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"ComfyUI did not start; see {base / 'comfyui.log'}")
            time.sleep(1)
    yield {"url": url, "base": base, "log": base / "comfyui.log"}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_pack_loads_without_warnings(comfy):
    text = comfy["log"].read_text()
    assert "comfyui-ipx2p" in text  # listed among the custom nodes' import times
    lines = [line for line in text.splitlines() if "ipx2p" in line.lower()]
    assert not [line for line in lines if "IMPORT FAILED" in line or "Traceback" in line or "Warning" in line]


def test_object_info_lists_every_node_with_its_inputs(comfy):
    import ipx2p_nodes

    info = _get(comfy["url"] + "/object_info")
    for name, cls in ipx2p_nodes.NODE_CLASS_MAPPINGS.items():
        assert name in info, name
        ours = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            assert list(info[name]["input"].get(section, {})) == list(ours.get(section, {})), (name, section)
        assert info[name]["output"] == list(cls.RETURN_TYPES)
        assert info[name]["display_name"] == ipx2p_nodes.NODE_DISPLAY_NAME_MAPPINGS[name]


def test_examples_give_the_same_pngs_in_comfyui_and_in_our_runner(comfy, tmp_path):
    from ipx2p_standalone.workflow import apply_overrides, ui_to_api

    import ipx2p_nodes
    from ipx2p_standalone.runner import Runner

    classes = Runner(input_dir=comfy["base"] / "input", output_dir=tmp_path / "unused").node_classes
    prompts = {}
    for name in EXAMPLES:
        wf = load_example(name)
        conv = ui_to_api(wf, classes, ipx2p_nodes.NODE_DISPLAY_NAME_MAPPINGS)
        apply_overrides(conv.prompt, tiny_overrides(wf), classes, conv)
        prompts[name] = (conv.prompt, {"workflow": conv.workflow})

    # ComfyUI side
    comfy_files: dict[str, list[Path]] = {}
    for name, (prompt, extra) in prompts.items():
        queued = _post(comfy["url"] + "/prompt", {"prompt": prompt, "client_id": "compat",
                                                  "extra_data": {"extra_pnginfo": extra}})
        assert not queued.get("node_errors"), queued
        pid, deadline = queued["prompt_id"], time.time() + 600
        while True:
            history = _get(f"{comfy['url']}/history/{pid}")
            if pid in history and history[pid]["status"].get("completed") is not None:
                entry = history[pid]
                if entry["status"]["status_str"] != "success" and entry["status"].get("completed") is False:
                    pytest.fail(f"{name} failed in ComfyUI: {entry['status']}")
                if entry["status"]["status_str"] in ("success", "error"):
                    break
            assert time.time() < deadline, f"{name} timed out in ComfyUI"
            time.sleep(0.5)
        assert entry["status"]["status_str"] == "success", (name, entry["status"])
        comfy_files[name] = [comfy["base"] / "output" / img["subfolder"] / img["filename"]
                             for out in entry["outputs"].values() for img in out.get("images", [])
                             if img.get("type") == "output"]

    # Our runner, in ComfyUI's Python
    job = {"output": str(tmp_path / "out"), "input": str(comfy["base"] / "input"), "temp": str(tmp_path / "temp"),
           "models": str(comfy["base"] / "models"), "prompts": prompts}
    (tmp_path / "job.json").write_text(json.dumps(job))
    done = subprocess.run([COMFY_PYTHON, "-c", RUNNER_SCRIPT, str(ROOT), str(tmp_path / "job.json")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    ours = json.loads(done.stdout.strip().splitlines()[-1])

    for name in EXAMPLES:
        assert ours[name]["ok"], ours[name]["error"]
        mine = sorted(Path(f) for f in ours[name]["files"] if Path(f).parent == tmp_path / "out")
        theirs = sorted(comfy_files[name])
        assert len(mine) == len(theirs) >= 1, name
        for a, b in zip(mine, theirs):
            ia, ib = Image.open(a), Image.open(b)
            assert np.array_equal(np.asarray(ia), np.asarray(ib)), f"{name}: {a.name} differs from ComfyUI's {b.name}"
            assert json.loads(ia.text["prompt"]) == json.loads(ib.text["prompt"])
            assert json.loads(ia.text["workflow"]) == json.loads(ib.text["workflow"])


def _edit_prompt(model_name: str, **load) -> dict:
    """Load Model → Edit Image (1 step, 64 px) → Preview Image, on the example photo."""
    return {
        "1": {"class_type": "IPX2PLoadModel",
              "inputs": {"model_name": model_name, "family": "auto", "dtype": "fp32", "device": "cpu", **load}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "ipx2p_example.png"}},
        "3": {"class_type": "IPX2PEditImage",
              "inputs": {"model": ["1", 0], "image": ["2", 0], "instruction": "make it winter", "negative": "",
                         "seed": 1, "steps": 1, "scheduler": "auto", "text_guidance": 7.5, "image_guidance": 1.5,
                         "resize": "fit", "size": 64, "width": 512, "height": 512, "restore_size": False,
                         "guidance_rescale": 0.0, "images_per_instruction": 1}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }


def test_free_releases_our_models_from_the_process(comfy, tmp_path):
    """Issue 12.1: a model loaded on the CPU is owned by ComfyUI's model management; POST /free (the frontend's
    "Free model and node cache": unload_models + free_memory) leaves no reference of ours, so its weights go and the
    process's memory drops by about the model's size."""
    import tiny_models

    from diffusers import UNet2DConditionModel

    # a model wide enough (about 90 MB) for the drop to stand out of the process's memory noise
    comps = tiny_models.tiny_sd_components()
    comps["unet"] = tiny_models._seeded(1, lambda: UNet2DConditionModel(**dict(tiny_models.TINY_UNET,
                                                                                block_out_channels=(128, 256))))
    tiny_models.save_diffusers_folder(comps, comfy["base"] / "models" / "diffusers" / "wide-sd", sdxl=False)

    entry = _run(comfy, _edit_prompt("[diffusers] wide-sd"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    watched = _get(comfy["url"] + "/memory_probe/watch")
    assert watched["watched"] >= 1 and watched["bytes"] > 80e6, watched
    _post(comfy["url"] + "/free", {"unload_models": True, "free_memory": True})
    deadline = time.time() + 60
    while (state := _get(comfy["url"] + "/memory_probe/alive"))["alive"] and time.time() < deadline:
        time.sleep(0.5)
    assert state["alive"] == 0 and state["loaded"] == 0, state
    deadline = time.time() + 20  # the pack hands the freed pages back to the OS just after the collection
    while watched["rss"] - state["rss"] < 0.5 * watched["bytes"] and time.time() < deadline:
        time.sleep(0.5)
        state = _get(comfy["url"] + "/memory_probe/alive")
    assert watched["rss"] - state["rss"] > 0.5 * watched["bytes"], (watched, state)


def test_prompt_validation_is_comfyuis_own_for_every_input_we_do_not_judge(comfy):
    """Issue 12.3: Load Model's VALIDATE_INPUTS names only model_name, so ComfyUI checks dtype itself (HTTP 400 at
    /prompt, not a failure at run time) and a missing model is one error."""
    status, body = _post_error(comfy["url"] + "/prompt", {"prompt": _edit_prompt("[diffusers] tiny-sd", dtype="fp64")})
    assert status == 400 and list(body["node_errors"]) == ["1"]
    (err,) = body["node_errors"]["1"]["errors"]
    assert err["type"] == "value_not_in_list" and "dtype: 'fp64' not in" in err["details"]

    status, body = _post_error(comfy["url"] + "/prompt", {"prompt": _edit_prompt("nope.safetensors")})
    assert status == 400 and list(body["node_errors"]) == ["1"]
    (err,) = body["node_errors"]["1"]["errors"]
    assert err["type"] == "custom_validation_failed"
    assert err["details"].startswith("model_name - Model 'nope.safetensors' not found (looked in checkpoints: ")


def test_comfyuis_latent_upscale_between_sampler_and_decode(comfy):
    """Issue 12.4 with ComfyUI's own LatentUpscaleBy: ×1.5 latents decode to 1.5 × the input (512x384 → 768x576),
    and a masked edit's mask follows the latent (test_comfyui_unit.py runs the same graph in our runner)."""
    from test_comfyui_unit import latent_upscale_prompt

    for mask in (False, True):
        entry = _run(comfy, latent_upscale_prompt(1.5, mask))
        assert entry["status"]["status_str"] == "success", entry["status"]
        (img,) = [i for out in entry["outputs"].values() for i in out.get("images", []) if i["type"] == "output"]
        assert Image.open(comfy["base"] / "output" / img["subfolder"] / img["filename"]).size == (768, 576)
