"""Shared fixtures: tiny random-weight IP2P models saved as diffusers folders and as original-layout single files."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


def _build(tmp_path_factory, name, sdxl=False, cosxl=False):
    import tiny_models

    root = tmp_path_factory.mktemp(name)
    comps = tiny_models.tiny_sdxl_components(cosxl=cosxl) if sdxl else tiny_models.tiny_sd_components()
    folder = tiny_models.save_diffusers_folder(comps, root / "diffusers", sdxl=sdxl)
    return root, comps, folder


def _single_file(root, comps, family):
    from ipx2p_core.ldm_layout import save_single_file

    encoders = (comps["text_encoder"], comps["text_encoder_2"]) if "text_encoder_2" in comps else (comps["text_encoder"],)
    path = root / f"{family}.safetensors"
    save_single_file(path, comps["unet"], comps["vae"], encoders, family)
    return path


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    """dict(folder=diffusers folder, file=single .safetensors, config=folder to use as the single file's config)."""
    root, comps, folder = _build(tmp_path_factory, "tiny_sd")
    return {"folder": folder, "file": _single_file(root, comps, "sd15"), "config": folder, "family": "sd15"}


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    root, comps, folder = _build(tmp_path_factory, "tiny_sdxl", sdxl=True)
    return {"folder": folder, "file": _single_file(root, comps, "sdxl"), "config": folder, "family": "sdxl"}


@pytest.fixture(scope="session")
def tiny_cosxl(tmp_path_factory):
    root, comps, folder = _build(tmp_path_factory, "tiny_cosxl", sdxl=True, cosxl=True)
    return {"folder": folder, "file": _single_file(root, comps, "cosxl"), "config": folder, "family": "cosxl"}


@pytest.fixture(scope="session")
def photo():
    """A deterministic 40x32 RGB 'photo' with smooth gradients and noise (not a multiple of 8 in width: 44)."""
    rng = np.random.RandomState(0)
    y, x = np.mgrid[0:32, 0:44]
    base = np.stack([x * 5, y * 7, (x + y) * 3], axis=-1).astype(np.float64)
    arr = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


@pytest.fixture(autouse=True)
def _quiet_known_warnings():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


@pytest.fixture()
def runner(tmp_path):
    """A runner over the small dummy nodes of dummy_nodes.py (test_example_workflows.py has its own ``runner``)."""
    from dummy_nodes import CALLS, NODES, Slow

    from ipx2p_nodes.host import get_host, set_host
    from ipx2p_standalone.host import StandaloneHost
    from ipx2p_standalone.runner import Runner

    CALLS.clear()
    previous = get_host()
    host = StandaloneHost(models_dir=tmp_path / "models", device="cpu")
    r = Runner(NODES, output_dir=tmp_path / "out", input_dir=tmp_path / "in", temp_dir=tmp_path / "temp", host=host)
    (tmp_path / "in").mkdir()
    yield r
    Slow.on_step = None
    set_host(previous)


# The quick subset: `pytest -m "not slow"` leaves out the files below and tests marked @pytest.mark.slow; plain
# `pytest` (and .ci/run) still runs everything. These files are the ones that spend minutes on 2 CPU cores: diffusers
# side by side with the engine for every scheduler and family (parity), a real chromium driving the frontend
# (browser, subgraphs_browser), a local Ray cluster (batch_ray), inductor compiles (fast), a wheel built and installed
# in a fresh venv (wheel), a 200-prompt soak (studio_soak), and end-to-end runs of every example workflow, batch job
# and studio prompt on the tiny models.
SLOW_FILES = {"test_parity.py", "test_browser.py", "test_subgraphs_browser.py", "test_batch_ray.py", "test_batch.py",
              "test_batch_workflow.py", "test_example_workflows.py", "test_per_row_seeds.py", "test_studio.py",
              "test_fast.py", "test_wheel.py", "test_studio_soak.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)
