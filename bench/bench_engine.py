"""Wall time and peak memory of the engine vs diffusers' InstructPix2Pix pipeline, on identical work.

    python bench/bench_engine.py                 # tiny model and full SD 1.5 architecture at 256x256
    python bench/bench_engine.py --only tiny --runs 5
    python bench/bench_engine.py --compile       # fast mode: compiled vs diffusers vs eager, 10 steps (fast_bench.py)

Both sides get the same weights, image, instruction, seed, scheduler and steps. diffusers runs stock modules (a copy
of the UNet taken before the engine's loader adds its CPU speed-ups, ipx2p_core/speedups.py), as a diffusers user
would have them; the engine runs the modules as its loader leaves them. Runs alternate (engine, diffusers,
engine, ...) in one process after a warm-up, and the median of each is reported. Ratio = engine / diffusers.
Peak memory is measured in one extra run per side: the process's resident-set peak above its level before the
run (CPU; sampled every 2 ms), or torch.cuda.max_memory_allocated on a GPU.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import tiny_models  # noqa: E402

from ipx2p_core import SamplerSettings  # noqa: E402
from ipx2p_core.families import SD15  # noqa: E402
from ipx2p_core.models import _finish  # noqa: E402
from ipx2p_core.pipeline import edit  # noqa: E402
from ipx2p_core.schedulers import make_scheduler  # noqa: E402


class PeakMemory:
    """Peak memory above the starting level during a block (RSS on CPU, allocator peak on CUDA)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base = self._rss()
        self.peak = self.base
        self._stop = threading.Event()

        def watch():
            while not self._stop.is_set():
                self.peak = max(self.peak, self._rss())
                time.sleep(0.002)

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())
        self.used = self.peak - self.base


def full_sd15_components(device):
    """SD 1.5's real UNet, VAE and CLIP-L architectures (shipped configs) with random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = SD15.config_dir
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(cfg / "unet")))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(cfg / "vae")))
    te = CLIPTextModel(CLIPTextConfig.from_pretrained(str(cfg / "text_encoder")))
    return dict(unet=unet, vae=vae, text_encoder=te, tokenizer=tiny_models._tokenizer(), safety_checker=None,
                feature_extractor=None, image_encoder=None, requires_safety_checker=False)


def bench_case(name, comps, image, steps, runs, device, pairs):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    for key in ("unet", "vae", "text_encoder"):
        comps[key] = comps[key].to(device).eval()
    base = SD15.scheduler_config()
    stock_unet = copy.deepcopy(comps["unet"])  # before _finish installs the engine's speed-ups on its own modules
    model = _finish(SD15, comps["unet"], comps["vae"], (comps["text_encoder"],), (comps["tokenizer"],),
                    base, torch.float32, device, name, False, {})
    pipe = StableDiffusionInstructPix2PixPipeline(**{**comps, "unet": stock_unet,
                                                      "scheduler": make_scheduler("euler_a", base)})
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for g_text, g_image in pairs:
        settings = SamplerSettings(steps=steps, text_guidance=g_text, image_guidance=g_image, seed=0)

        def ours():
            return edit(model, image, "make it winter", settings=settings).images.numpy()

        def theirs():
            pipe.scheduler = make_scheduler("euler_a", base)
            return pipe("make it winter", image=image, num_inference_steps=steps, guidance_scale=g_text,
                        image_guidance_scale=g_image, generator=torch.Generator("cpu").manual_seed(0),
                        output_type="np").images

        diff = float(np.abs(ours() - theirs()).max())  # warm-up, and the parity check for this exact work
        sides = (("engine", ours), ("diffusers", theirs))
        times = {"engine": [], "diffusers": []}
        for _ in range(runs):  # timing runs alternate, with no memory sampler competing for the GIL
            for label, fn in sides:
                t0 = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[label].append(time.perf_counter() - t0)
        mem = {}
        for label, fn in sides:  # then one separate run each for peak memory
            with PeakMemory(device) as pm:
                fn()
            mem[label] = pm.used
        e, d = statistics.median(times["engine"]), statistics.median(times["diffusers"])
        rows.append((name, f"{g_text}/{g_image}", steps, e, d, e / d, mem["engine"], mem["diffusers"], diff))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["tiny", "full"], default=None)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny-steps", type=int, default=20)
    ap.add_argument("--full-steps", type=int, default=10)
    ap.add_argument("--compile", action="store_true",
                    help="fast mode: engine compiled vs diffusers vs engine eager, per-step times, compile time and "
                         "the model-cost limit (both models at --full-steps steps)")
    args = ap.parse_args()
    device = torch.device(args.device)
    pairs = [(7.5, 1.5), (7.5, 1.0)]
    rng = np.random.RandomState(0)
    if args.compile:
        from fast_bench import compile_case, print_rows

        rows = []
        if args.only in (None, "tiny"):
            img = Image.fromarray(rng.randint(0, 255, (64, 64, 3), dtype=np.uint8))
            rows += compile_case("tiny SD", tiny_models.tiny_sd_components(), img, args.full_steps, args.runs, device,
                                 pairs)
        if args.only in (None, "full"):
            img = Image.fromarray(rng.randint(0, 255, (256, 256, 3), dtype=np.uint8))
            rows += compile_case("SD 1.5 full, 256²", full_sd15_components(device), img, args.full_steps,
                                 args.runs, device, pairs)
        print_rows(rows, device, args.runs)
        return
    rows = []
    if args.only in (None, "tiny"):
        img = Image.fromarray(rng.randint(0, 255, (64, 64, 3), dtype=np.uint8))
        rows += bench_case("tiny SD", tiny_models.tiny_sd_components(), img, args.tiny_steps, args.runs, device, pairs)
    if args.only in (None, "full"):
        img = Image.fromarray(rng.randint(0, 255, (256, 256, 3), dtype=np.uint8))
        rows += bench_case("SD 1.5 full, 256²", full_sd15_components(device), img, args.full_steps, args.runs,
                           device, pairs)
    mb = 1024 * 1024
    print(f"device: {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, runs {args.runs} (median)")
    print(f"{'model':<20} {'g_text/g_img':>12} {'steps':>5} {'engine s':>9} {'diffusers s':>11} {'ratio':>6} "
          f"{'engine MiB':>10} {'diffusers MiB':>13} {'max|Δ|':>9}")
    for name, pair, steps, e, d, r, me, md, diff in rows:
        print(f"{name:<20} {pair:>12} {steps:>5} {e:>9.3f} {d:>11.3f} {r:>6.3f} {me / mb:>10.1f} {md / mb:>13.1f} "
              f"{diff:>9.2e}")


if __name__ == "__main__":
    main()
