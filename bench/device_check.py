"""GPU checks (run on a CUDA machine): device independence of seeds, parity on CUDA, half precision sanity.

    python bench/device_check.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import tiny_models  # noqa: E402

from ipx2p_core import SamplerSettings, load_model  # noqa: E402
from ipx2p_core.pipeline import edit  # noqa: E402


def main():
    dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"  # "cpu" only to dry-run this script
    print("device:", torch.cuda.get_device_name(0) if dev == "cuda" else dev, "torch", torch.__version__)
    tmp = Path(tempfile.mkdtemp())
    rng = np.random.RandomState(0)
    img = Image.fromarray(rng.randint(0, 255, (48, 64, 3), dtype=np.uint8))
    sd_dir = tiny_models.save_diffusers_folder(tiny_models.tiny_sd_components(), tmp / "sd", sdxl=False)
    xl_dir = tiny_models.save_diffusers_folder(tiny_models.tiny_sdxl_components(), tmp / "xl", sdxl=True)
    from parity_helpers import diffusers_pipeline, max_diff, run_diffusers, run_engine

    s = dict(steps=4, g_text=7.5, g_image=1.5, scheduler="euler_a", seed=3)
    for name, folder, family in (("SD", sd_dir, "sd15"), ("SDXL", xl_dir, "sdxl")):
        cpu = load_model(folder, device="cpu", cache=None)
        gpu = load_model(folder, device=dev, cache=None)
        a = run_engine(cpu, img, "make it winter", **s)
        b = run_engine(gpu, img, "make it winter", **s)
        print(f"{name}: same seed, CPU vs CUDA engine output max|diff| = {max_diff(a, b):.2e}")
        pipe = diffusers_pipeline(folder, family)
        pipe.to(dev)
        ref = run_diffusers(folder, family, img, "make it winter", **s)
        print(f"{name}: CUDA engine vs CUDA diffusers max|diff| = {max_diff(ref, b):.2e}")
        for dtype in ("fp16", "bf16"):
            half = load_model(folder, device=dev, dtype=dtype, cache=None)
            out = edit(half, img, "make it winter", settings=SamplerSettings(steps=4, seed=3)).images
            print(f"{name} {dtype}: finite={bool(torch.isfinite(out).all())} vae={half.vae_dtype} "
                  f"max|diff| vs fp32 = {float((out.numpy() - b).__abs__().max()):.2e}")
            torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
            pipe.to(dev, torch_dtype)  # diffusers upcasts a force_upcast VAE itself where it must
            ref_half = run_diffusers(folder, family, img, "make it winter", **s)
            ours_half = run_engine(half, img, "make it winter", **s)
            print(f"{name} {dtype}: engine vs diffusers, both {dtype} on {dev}: max|diff| = "
                  f"{max_diff(ref_half, ours_half):.2e}")
            pipe.to(dev, torch.float32)
        pipe.to("cpu")


if __name__ == "__main__":
    main()
