"""A 3x3 guidance sweep (one batched UNet call per step) against 9 separate edits on the same model.

    python bench/bench_sweep.py                  # tiny model and full SD 1.5 architecture at 256x256
    python bench/bench_sweep.py --only tiny --runs 5

Both sides produce the same 9 images (the script checks the max difference). Median of alternating runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import tiny_models  # noqa: E402
from bench_engine import full_sd15_components  # noqa: E402

from ipx2p_core import SamplerSettings  # noqa: E402
from ipx2p_core.families import SD15  # noqa: E402
from ipx2p_core.models import _finish  # noqa: E402
from ipx2p_core.pipeline import edit, guidance_sweep  # noqa: E402

TEXTS, IMAGES = [5.0, 7.5, 10.0], [1.0, 1.5, 2.0]


def case(name, comps, image, steps, runs, device):
    for key in ("unet", "vae", "text_encoder"):
        comps[key] = comps[key].to(device).eval()
    model = _finish(SD15, comps["unet"], comps["vae"], (comps["text_encoder"],), (comps["tokenizer"],),
                    SD15.scheduler_config(), torch.float32, device, name, False, {})
    s = SamplerSettings(steps=steps, seed=0)

    def grid():
        return guidance_sweep(model, image, "make it winter", TEXTS, IMAGES, settings=s).images

    def separate():
        return torch.cat([edit(model, image, "make it winter", settings=s.with_(text_guidance=t, image_guidance=g))
                          .images for t in TEXTS for g in IMAGES])

    diff = float((grid() - separate()).abs().max())
    times = {"sweep": [], "separate": []}
    for _ in range(runs):
        for label, fn in (("sweep", grid), ("separate", separate)):
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[label].append(time.perf_counter() - t0)
    a, b = statistics.median(times["sweep"]), statistics.median(times["separate"])
    print(f"{name:<22} steps {steps:>3}  sweep {a:8.3f} s  9 edits {b:8.3f} s  ratio {a / b:.3f}  max|Δ| {diff:.1e}",
          flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["tiny", "full"], default=None)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny-steps", type=int, default=20)
    ap.add_argument("--full-steps", type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, runs {args.runs} (median)")
    rng = np.random.RandomState(0)
    if args.only in (None, "tiny"):
        img = Image.fromarray(rng.randint(0, 255, (64, 64, 3), dtype=np.uint8))
        case("tiny SD", tiny_models.tiny_sd_components(), img, args.tiny_steps, args.runs, device)
    if args.only in (None, "full"):
        img = Image.fromarray(rng.randint(0, 255, (256, 256, 3), dtype=np.uint8))
        case("SD 1.5 full, 256²", full_sd15_components(device), img, args.full_steps, args.runs, device)


if __name__ == "__main__":
    main()
