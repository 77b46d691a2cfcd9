"""LoRA branches: the cost of switching a branch's LoRA on and off versus loading the model, and peak memory with
three LoRA branches versus one plain model.

    python bench/bench_adapters.py                # the SD 1.5 architecture (random weights), 128x128, 2 steps
    python bench/bench_adapters.py --size tiny    # the tiny test model (seconds)

The model is written once as a single .safetensors file (fp16 on disk) in a temporary folder; "load" is
``load_model(path, cache=None)`` from that file (page cache warm: the best case for loading). Three random rank-16
kohya-format LoRAs (UNet attention + text encoder) are applied as three branches of the one loaded model.

* inject: the first ``apply_lora`` of a file (read, convert, inject as a peft adapter into the shared modules);
* switch: ``adapters.active(handle)`` going from one branch to another (set_adapter + set_scale on every LoRA
  layer, or disabling them for the base branch): what a branch pays when another branch ran last;
* peak memory: the same method as bench_engine.py (RSS above the starting level, sampled every 2 ms, on CPU;
  torch.cuda.max_memory_allocated above the starting allocation on CUDA), each scenario in a fresh process:
  "one model" = load + one edit; "three LoRA branches" = load + three LoRAs + one edit on each branch and the base.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import adapter_files as af  # noqa: E402
import tiny_models  # noqa: E402
from bench_engine import PeakMemory  # noqa: E402

from ipx2p_core import SamplerSettings, adapters, apply_lora, load_model  # noqa: E402
from ipx2p_core.ldm_layout import save_single_file  # noqa: E402
from ipx2p_core.pipeline import edit  # noqa: E402


def build_model_file(size: str, folder: Path) -> tuple[Path, Path | None]:
    """(model file, config folder or None) for the chosen size, written with random weights."""
    if size == "tiny":
        comps = tiny_models.tiny_sd_components()
        cfg = tiny_models.save_diffusers_folder(comps, folder / "tiny_cfg", sdxl=False)
    else:
        from bench_engine import full_sd15_components

        comps = full_sd15_components(torch.device("cpu"))
        cfg = None
    for key in ("unet", "vae", "text_encoder"):
        comps[key] = comps[key].to(torch.float16)
    path = save_single_file(folder / f"{size}.safetensors", comps["unet"], comps["vae"], (comps["text_encoder"],), "sd15")
    return path, cfg


def write_loras(model, folder: Path, rank: int) -> list[Path]:
    return [af.write(af.to_kohya(af.random_lora(model, rank=rank, seed=i, scale=0.05, alpha=rank / 2), False),
                     folder / f"lora_{i}.safetensors") for i in range(3)]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def scenario(args) -> dict:
    """Run in a fresh process: peak memory of 'one' model or 'three' LoRA branches."""
    device = torch.device(args.device)
    image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (args.res, args.res, 3), dtype=np.uint8))
    settings = SamplerSettings(steps=args.steps, seed=0)
    loras = [Path(p) for p in args.loras.split(",")] if args.loras else []
    with PeakMemory(device) as pm:
        model = load_model(args.model, config=args.config, dtype=args.dtype, device=device, cache=None)
        branches = [model] + [apply_lora(model, p, 0.8, 0.8) for p in (loras if args.scenario == "three" else [])]
        for h in branches:
            edit(h, image, "make it winter", settings=settings)
        sync(device)
    return {"peak": pm.used, "branches": len(branches)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "full"], default="full")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="fp32 (CPU default) or fp16 (CUDA default)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--res", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--switches", type=int, default=30)
    ap.add_argument("--scenario", choices=["one", "three"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--loras", help=argparse.SUPPRESS)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    device = torch.device(args.device)
    args.dtype = args.dtype or ("fp16" if device.type == "cuda" else "fp32")
    if args.scenario:
        print(json.dumps(scenario(args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        path, cfg = build_model_file(args.size, tmp)
        print(f"built {path.name} ({path.stat().st_size / 2**20:.0f} MiB on disk) in {time.perf_counter() - t0:.1f}s",
              file=sys.stderr)
        load_times = []
        for _ in range(2):
            t0 = time.perf_counter()
            model = load_model(path, config=cfg, dtype=args.dtype, device=device, cache=None)
            sync(device)
            load_times.append(time.perf_counter() - t0)
        loras = write_loras(model, tmp, args.rank)
        lora_mib = sum(p.stat().st_size for p in loras) / 3 / 2**20

        inject_times, branches = [], [model]
        for p in loras:
            t0 = time.perf_counter()
            branches.append(apply_lora(model, p, 0.8, 0.8))
            sync(device)
            inject_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        apply_lora(model, loras[0], 0.5, 0.5)  # cached: only a new handle
        cached = time.perf_counter() - t0

        switch = []  # base -> A -> B -> C -> base ...: every step is a real switch
        for i in range(args.switches):
            h = branches[i % len(branches)]
            t0 = time.perf_counter()
            with adapters.active(h):
                sync(device)
            switch.append(time.perf_counter() - t0)
        same = []
        for _ in range(args.switches):  # the same branch again: nothing to switch
            t0 = time.perf_counter()
            with adapters.active(branches[-1]):
                pass
            same.append(time.perf_counter() - t0)
        same = statistics.median(same)

        image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (args.res, args.res, 3), dtype=np.uint8))
        settings = SamplerSettings(steps=args.steps, seed=0)
        edit_times = {}
        for name, h in (("base", branches[0]), ("LoRA", branches[1])):
            edit(h, image, "make it winter", settings=settings)  # warm-up
            runs = []
            for _ in range(2):
                t0 = time.perf_counter()
                edit(h, image, "make it winter", settings=settings)
                sync(device)
                runs.append(time.perf_counter() - t0)
            edit_times[name] = statistics.median(runs)
        n_layers = sum(len(v) for v in adapters.state_of(model).layers.values())
        unet_mib = sum(p.numel() * p.element_size() for p in model.unet.parameters()) / 2**20
        te_mib = sum(p.numel() * p.element_size() for p in model.text_encoders[0].parameters()) / 2**20
        del model, branches

        mem = {}
        for which in ("one", "three"):
            cmd = [sys.executable, __file__, "--scenario", which, "--model", str(path), "--device", args.device,
                   "--dtype", args.dtype, "--res", str(args.res), "--steps", str(args.steps),
                   "--loras", ",".join(map(str, loras))]
            if cfg:
                cmd += ["--config", str(cfg)]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if out.returncode:
                raise SystemExit(out.stderr[-2000:])
            mem[which] = json.loads(out.stdout.strip().splitlines()[-1])["peak"] / 2**20

    load = statistics.median(load_times)
    sw = statistics.median(switch)
    print(f"device: {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'}), dtype {args.dtype}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"model: {'tiny SD' if args.size == 'tiny' else 'SD 1.5 architecture'} (UNet {unet_mib:.0f} MiB, text "
          f"encoder {te_mib:.0f} MiB in {args.dtype}); 3 LoRAs rank {args.rank}, {lora_mib:.1f} MiB each, "
          f"{n_layers} LoRA layers in the shared modules")
    print(f"{'load model (from file, warm cache)':<44} {load * 1000:>10.1f} ms")
    print(f"{'inject a LoRA (first apply_lora of a file)':<44} {statistics.median(inject_times) * 1000:>10.1f} ms")
    print(f"{'apply_lora again (cached injection)':<44} {cached * 1000:>10.3f} ms")
    print(f"{'switch branch LoRA on/off (median of %d)' % args.switches:<44} {sw * 1000:>10.3f} ms"
          f"   = {sw / load:.2e} x load")
    print(f"{'re-activate the same branch':<44} {same * 1000:>10.3f} ms")
    print(f"{'edit, base branch (%d steps, %d px)' % (args.steps, args.res):<44} {edit_times['base'] * 1000:>10.1f} ms")
    print(f"{'edit, LoRA branch':<44} {edit_times['LoRA'] * 1000:>10.1f} ms")
    print(f"{'peak memory: one model, one edit':<44} {mem['one']:>10.1f} MiB")
    print(f"{'peak memory: three LoRA branches + base':<44} {mem['three']:>10.1f} MiB   = {mem['three'] / mem['one']:.3f}"
          f" x one model (a UNet + text encoder copy per branch would add {3 * (unet_mib + te_mib):.0f} MiB)")


if __name__ == "__main__":
    main()
