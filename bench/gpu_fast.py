"""Fast mode on a GPU: it/s of diffusers, the engine eager and the engine compiled (per torch.compile mode).

    python bench/gpu_fast.py                    # SD 1.5 512² and SDXL 1024², fp16, 30 steps; about 8 minutes
    python bench/gpu_fast.py --budget-s 300     # stop starting new compiles after 300 s
    OUT=/some/folder python bench/gpu_fast.py   # also writes OUT/gpu_fast.json (rewritten after every row)
    python bench/gpu_fast.py --dry-run          # the same steps on the CPU with the tiny test models (checks the script)

Random weights from the shipped configs (ipx2p_core/configs/sd15, sdxl): no hub, no downloads. Needs torch with
CUDA, diffusers, transformers, accelerate and this repository; nothing else. Per model, in one process:

1. diffusers' IP2P pipeline (stock modules, its own copy) and the engine eager (its loader's modules), alternating;
2. per torch.compile mode (default, max-autotune-no-cudagraphs, reduce-overhead; highest value first so a short
   budget still measures the likely choice): a fresh copy of the UNet, ``fast.make_fast`` with that mode
   (``IPX2P_COMPILE_MODE``; compile time = the warm-up at load), one warm-up edit at the real size, then timed
   edits. Dynamo is reset between modes, so each mode compiles from scratch (inductor's on-disk cache is a
   fresh temporary folder: every compile here is a first compile).

it/s = 1 / median interval between step callbacks, each callback after a torch.cuda.synchronize() (the same for
every side). The whole edit's wall time is printed too. Outputs are compared with diffusers (engine eager) and with
the engine eager (compiled): max and mean |Δ| of 0..1 pixels; fp16 rounding over 30 steps with random weights
moves pixels by up to a few 1e-2, so "ok" = mean |Δ| <= 1e-2.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tiny_models, for --dry-run

MODES = ("max-autotune-no-cudagraphs", "default", "reduce-overhead")
OK_MEAN = 1e-2


def build(family: str, device, tiny: bool = False):
    """Random-weight components of the real architecture, made on the GPU (fast), as diffusers' pipeline args."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from ipx2p_core.families import get_family
    from ipx2p_core.models import shipped_tokenizer

    if tiny:
        import tiny_models

        comps = tiny_models.tiny_sdxl_components() if family == "sdxl" else tiny_models.tiny_sd_components()
        return {k: comps[k] for k in ("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
                if k in comps}
    cfg = get_family(family).config_dir
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(cfg / "unet")))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(cfg / "vae")))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(str(cfg / "text_encoder")))
        comps = dict(unet=unet, vae=vae, text_encoder=te, tokenizer=shipped_tokenizer())
        if family == "sdxl":
            comps["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(str(cfg / "text_encoder_2")))
            comps["tokenizer_2"] = shipped_tokenizer("!")
    for k, m in comps.items():
        if isinstance(m, torch.nn.Module):
            m.eval().requires_grad_(False)
    return comps


def engine_model(family, comps, unet, device, dtype):
    from ipx2p_core.families import get_family
    from ipx2p_core.models import _finish

    encoders = (comps["text_encoder"],) + ((comps["text_encoder_2"],) if family == "sdxl" else ())
    tokenizers = (comps["tokenizer"],) + ((comps["tokenizer_2"],) if family == "sdxl" else ())
    spec = get_family(family)
    return _finish(spec, unet, comps["vae"], encoders, tokenizers, spec.scheduler_config(), dtype, device,
                   f"random {family}", spec.force_zeros_for_empty_prompt, {})


def diffusers_pipe(family, comps, device, dtype):
    from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionXLInstructPix2PixPipeline

    from ipx2p_core.families import get_family
    from ipx2p_core.schedulers import make_scheduler

    own = {k: copy.deepcopy(v) if isinstance(v, torch.nn.Module) else v for k, v in comps.items()}
    scheduler = make_scheduler("auto", get_family(family).scheduler_config(), get_family(family).default_scheduler)
    if family == "sd15":
        pipe = StableDiffusionInstructPix2PixPipeline(**own, scheduler=scheduler, safety_checker=None,
                                                      feature_extractor=None, requires_safety_checker=False)
    else:
        pipe = StableDiffusionXLInstructPix2PixPipeline(**own, scheduler=scheduler, add_watermarker=False)
    pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Clock:
    def __init__(self):
        self.stamps = []

    def tick(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())

    def engine(self, step, total, latents):
        self.tick()

    def diffusers(self, pipe, step, timestep, kwargs):
        self.tick()
        return kwargs

    def its(self) -> float:
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
        return 1.0 / statistics.median(gaps)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_case(family, size, steps, runs, device, deadline, rows, write, dtype=torch.float16, modes=MODES,
             tiny=False):
    from PIL import Image

    from ipx2p_core import SamplerSettings, fast
    from ipx2p_core.families import get_family
    from ipx2p_core.pipeline import edit
    from ipx2p_core.schedulers import make_scheduler

    name = f"{'SD 1.5' if family == 'sd15' else 'SDXL'}{' tiny' if tiny else ''} {size}² " \
           f"{str(dtype).replace('torch.float', 'fp')}"
    t0 = time.perf_counter()
    comps = build(family, device, tiny)
    pipe = diffusers_pipe(family, comps, device, dtype)
    stock_unet = copy.deepcopy(comps["unet"])  # kept uncompiled for the mode copies
    eager = engine_model(family, comps, comps["unet"], device, dtype)
    print(f"{name}: built in {time.perf_counter() - t0:.0f} s", flush=True)
    image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (size, size, 3), dtype=np.uint8))
    instruction, settings = "make it winter", SamplerSettings(steps=steps, seed=0)
    sched_config = get_family(family).scheduler_config()

    def engine_run(model):
        clock = Clock()
        t = time.perf_counter()
        out = edit(model, image, instruction, settings=settings, callback=clock.engine).images.numpy()
        _sync()
        return out, clock.its(), time.perf_counter() - t

    import inspect

    def diffusers_run():
        clock = Clock()
        if "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:
            step_callback = {"callback_on_step_end": clock.diffusers}
        else:  # the SDXL IP2P pipeline has only the older per-step callback
            step_callback = {"callback": lambda *_: clock.tick(), "callback_steps": 1}
        pipe.scheduler = make_scheduler("auto", sched_config, get_family(family).default_scheduler)
        t = time.perf_counter()
        out = pipe(instruction, image=image, num_inference_steps=steps, guidance_scale=settings.text_guidance,
                   image_guidance_scale=settings.image_guidance, generator=torch.Generator("cpu").manual_seed(0),
                   output_type="np", **step_callback).images
        _sync()
        return out, clock.its(), time.perf_counter() - t

    def measure(label, fn, compile_s=None, ref=None, ref_label=""):
        out = fn()[0]  # warm-up
        its, walls = [], []
        for _ in range(runs):
            _, i, w = fn()
            its.append(i)
            walls.append(w)
        row = dict(model=name, side=label, its=statistics.median(its), edit_s=statistics.median(walls),
                   compile_s=compile_s, steps=steps, vs=ref_label)
        if ref is not None:
            d = np.abs(out.astype(np.float64) - ref.astype(np.float64))
            row.update(max_diff=float(d.max()), mean_diff=float(d.mean()), ok=bool(d.mean() <= OK_MEAN))
        rows.append(row)
        write()
        print(f"  {label:<34} {row['its']:7.2f} it/s  edit {row['edit_s']:6.2f} s"
              + (f"  compile {compile_s:6.1f} s" if compile_s is not None else "")
              + (f"  vs {ref_label}: max|Δ| {row['max_diff']:.3f} mean|Δ| {row['mean_diff']:.4f}" if ref is not None
                 else ""), flush=True)
        return out

    ref = measure("diffusers", diffusers_run)
    eager_out = measure("engine eager", lambda: engine_run(eager), ref=ref, ref_label="diffusers")
    for mode in modes:
        left = deadline - time.perf_counter()
        if left < (240 if family == "sdxl" and not tiny else 150):
            print(f"  {'engine compiled ' + mode:<34} skipped: {left:.0f} s of the budget left", flush=True)
            rows.append(dict(model=name, side=f"engine compiled {mode}", skipped=True))
            write()
            continue
        torch._dynamo.reset()
        os.environ[fast.MODE_ENV] = mode
        unet = copy.deepcopy(stock_unet)
        model = engine_model(family, comps, unet, device, dtype)
        t = time.perf_counter()
        fast.make_fast(model)
        compile_s = time.perf_counter() - t
        if not model.compiled:
            rows.append(dict(model=name, side=f"engine compiled {mode}", failed=fast.compiled_forward(model.unet).failed))
            write()
            continue
        measure(f"engine compiled {mode}", lambda: engine_run(model), compile_s=compile_s, ref=eager_out,
                ref_label="engine eager")
        del model, unet  # (the shared VAE decoder keeps this mode's compile until the next mode replaces it)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    os.environ.pop(fast.MODE_ENV, None)
    del pipe, eager, comps, stock_unet
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def print_table(rows) -> None:
    print(f"\n{'model':<16} {'side':<38} {'it/s':>7} {'x diffusers':>11} {'edit s':>7} {'compile s':>9} "
          f"{'max|Δ|':>7} {'mean|Δ|':>8} ok")
    base = {r["model"]: r["its"] for r in rows if r.get("side") == "diffusers"}
    for r in rows:
        if r.get("skipped") or r.get("failed"):
            print(f"{r['model']:<16} {r['side']:<38} {'skipped (budget)' if r.get('skipped') else 'failed: ' + r['failed']}")
            continue
        compile_s = "" if r["compile_s"] is None else f"{r['compile_s']:.0f}"
        print(f"{r['model']:<16} {r['side']:<38} {r['its']:>7.2f} {r['its'] / base[r['model']]:>11.2f} "
              f"{r['edit_s']:>7.2f} {compile_s:>9} {r.get('max_diff', float('nan')):>7.3f} "
              f"{r.get('mean_diff', float('nan')):>8.4f} {r.get('ok', '')}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--budget-s", type=float, default=420,
                    help="no new compile starts after this many seconds (SDXL needs 240 s left, SD 1.5 150 s)")
    ap.add_argument("--only", choices=["sd15", "sdxl"], default=None)
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU, tiny test models, 64², fp32, 3 steps, 1 run, default mode only: checks this script")
    args = ap.parse_args()
    if args.dry_run:
        os.environ.setdefault("IPX2P_COMPILE_CACHE", tempfile.mkdtemp(prefix="ipx2p-compile-"))
        rows: list[dict] = []
        for family in ("sd15", "sdxl"):
            if args.only in (None, family):
                run_case(family, 64, 3, 1, torch.device("cpu"), time.perf_counter() + 3600, rows, lambda: None,
                         dtype=torch.float32, modes=("default",), tiny=True)
        print_table(rows)
        return
    if not torch.cuda.is_available():
        raise SystemExit("gpu_fast.py needs a CUDA GPU (bench/bench_engine.py --compile is the CPU benchmark).")
    os.environ.setdefault("IPX2P_COMPILE_CACHE", tempfile.mkdtemp(prefix="ipx2p-compile-"))
    device = torch.device("cuda")
    start = time.perf_counter()
    deadline = start + args.budget_s
    rows: list[dict] = []
    out_dir = os.environ.get("OUT")
    info = dict(gpu=torch.cuda.get_device_name(0), torch=torch.__version__, cuda=torch.version.cuda,
                date=time.strftime("%Y-%m-%d"))

    def write():
        from ipx2p_core.atomic_files import write_atomic

        if not out_dir:
            return
        write_atomic(Path(out_dir) / "gpu_fast.json", json.dumps({**info, "rows": rows}, indent=1).encode())

    print(f"{info['gpu']}, torch {info['torch']} (CUDA {info['cuda']}), {args.steps} steps, runs {args.runs}",
          flush=True)
    cases = [("sd15", 512), ("sdxl", 1024)]
    for family, size in cases:
        if args.only in (None, family):
            run_case(family, size, args.steps, args.runs, device, deadline, rows, write)
    print_table(rows)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
