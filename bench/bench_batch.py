"""Throughput of ``ipx2p batch`` against a plain loop of single diffusers edits, on identical rows, in one run.

    python bench/bench_batch.py                  # CPU: tiny model, 32 rows; loop vs batch size 1 and 4 vs Ray x2
    python bench/bench_batch.py --gpu            # CUDA: random-weight full SD 1.5, 512x512 fp16, batch 1 / 4 / 8
    OUT=/some/dir python bench/bench_batch.py --gpu   # also writes $OUT/bench_batch.json
    python bench/bench_batch.py --gpu --device cpu --size 64 --rows 2 --steps 1   # dry run of the GPU mode

Every side edits the same rows (image k with instruction k and seed 1000 + k, same scheduler, steps, guidance) and
writes one PNG per row. The diffusers side is what a user would script: the pipeline loaded once, then one call and
one ``save`` per row. ``ipx2p batch`` runs in this process through its CLI entry (``main``); its model is loaded by
an untimed one-row warm-up job first, as the pipeline is loaded before its loop. Ray (when installed and asked for)
runs on a local Ray started before timing; its time includes starting the actors and loading one model in each.
Ratio = rows/s of the side / rows/s of the diffusers loop. The last column is the largest difference (uint8 levels)
between the side's PNGs and the diffusers loop's: the same seeds give the same pictures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import tiny_models as testing  # noqa: E402

INSTRUCTIONS = ("make it winter", "turn it into a watercolour", "add fireworks", "make it a statue")
SEED = 1000


def tiny_model(root: Path) -> Path:
    return testing.save_diffusers_folder(testing.tiny_sd_components(), root / "tiny-sd", sdxl=False)


def full_sd15_fp16(root: Path, device: str) -> Path:
    """SD 1.5's real UNet, VAE and CLIP-L architectures (shipped configs), random weights, saved in fp16."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ipx2p_core.families import get_family
    from ipx2p_core.schedulers import make_scheduler

    cfg = get_family("sd15").config_dir
    torch.manual_seed(0)
    with torch.device(device):  # random init of 1 B parameters is seconds on the GPU, a minute on the CPU
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(cfg / "unet")))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(cfg / "vae")))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(str(cfg / "text_encoder")))
    comps = dict(unet=unet.half(), vae=vae.half(), text_encoder=te.half(), tokenizer=testing._tokenizer(),
                 scheduler=make_scheduler("euler_a", get_family("sd15").scheduler_config()), safety_checker=None,
                 feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    return testing.save_diffusers_folder(comps, root / "sd15-random", sdxl=False)


def make_rows(root: Path, n: int, size: int) -> Path:
    """n photos and a manifest pairing photo k with instruction k % 4 (seeds: --seed 1000 + row)."""
    rng = np.random.RandomState(0)
    photos = root / "photos"
    photos.mkdir(parents=True)
    y, x = np.mgrid[0:size, 0:size]
    rows = []
    for k in range(n):
        base = np.stack([x * (k + 1) % 256, y * 3 % 256, (x + y + 7 * k) % 256], -1).astype(np.float64)
        arr = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(photos / f"p{k:03d}.png")
        rows.append({"image": f"photos/p{k:03d}.png", "instruction": INSTRUCTIONS[k % len(INSTRUCTIONS)]})
    manifest = root / "rows.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "instruction"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def read_rows(manifest: Path) -> list[dict]:
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def diffusers_loop(model: Path, manifest: Path, out: Path, steps: int, device: str, dtype) -> float:
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(model), dtype=dtype,
                                                                   safety_checker=None, requires_safety_checker=False)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    out.mkdir(parents=True)
    rows = read_rows(manifest)

    def one(k, row):
        image = Image.open(manifest.parent / row["image"]).convert("RGB")
        result = pipe(row["instruction"], image=image, num_inference_steps=steps, guidance_scale=7.5,
                      image_guidance_scale=1.5, generator=torch.Generator("cpu").manual_seed(SEED + k))
        result.images[0].save(out / f"{Path(row['image']).stem}.png")

    one(0, rows[0])  # warm-up (kernels, allocator), as the batch side's warm-up job
    reset_peak(device)
    t0 = time.perf_counter()
    for k, row in enumerate(rows):
        one(k, row)
    sync(device)
    seconds = time.perf_counter() - t0
    peak = peak_gib(device)
    pipe.to("cpu")  # leave the GPU to the batch side
    return seconds, peak


def ipx2p_batch(model: Path, manifest: Path, out: Path, steps: int, device: str, dtype: str, *extra) -> float:
    from ipx2p_standalone.cli import main

    argv = ["batch", str(manifest), "-m", str(model), "--out", str(out), "--steps", str(steps), "--device", device,
            "--dtype", dtype, "--seed", str(SEED), "-q", *map(str, extra)]
    reset_peak(device)
    t0 = time.perf_counter()
    code = main(argv)
    sync(device)
    seconds = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"ipx2p batch exited with {code}: {' '.join(argv)}")
    return seconds, peak_gib(device)


def max_level_diff(a: Path, b: Path) -> int:
    worst = 0
    for p in sorted(a.glob("*.png")):
        x = np.asarray(Image.open(p).convert("RGB")).astype(np.int16)
        y = np.asarray(Image.open(b / p.name).convert("RGB")).astype(np.int16)
        worst = max(worst, int(np.abs(x - y).max()))
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="CUDA mode: full SD 1.5 (random weights), 512x512, fp16")
    ap.add_argument("--rows", type=int, default=None, help="rows (default: 32 on CPU, 24 on the GPU)")
    ap.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray side")
    ap.add_argument("--device", default=None, help="override the device (e.g. --gpu --device cpu to dry-run it)")
    ap.add_argument("--size", type=int, default=None, help="image side (default: 512 with --gpu, else 64)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    root = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)  # the GPU mode's model alone is 1.7 GB


def run(args, root: Path) -> None:
    device = args.device or ("cuda" if args.gpu else "cpu")
    rows_n, steps = args.rows or (24 if args.gpu else 32), args.steps
    t0 = time.perf_counter()
    model = full_sd15_fp16(root, device) if args.gpu else tiny_model(root)
    build_seconds = time.perf_counter() - t0
    size = args.size or (512 if args.gpu else 64)
    manifest = make_rows(root, rows_n, size)
    dtype, torch_dtype = ("fp16", torch.float16) if args.gpu else ("fp32", torch.float32)

    results = []
    loop_s, peak = diffusers_loop(model, manifest, root / "diffusers", steps, device, torch_dtype)
    results.append({"side": "diffusers loop", "batch_size": 1, "workers": 1, "seconds": loop_s, "peak_gib": peak})

    warm = root / "warm.csv"
    warm.write_text("image,instruction\n" + read_rows(manifest)[0]["image"] + ",warm up\n")
    ipx2p_batch(model, warm, root / "warm", steps, device, dtype, "--batch-size", 1)  # loads the model (cached)
    for bs in ((1, 4, 8) if args.gpu else (1, 4)):
        out = root / f"batch-bs{bs}"
        seconds, peak = ipx2p_batch(model, manifest, out, steps, device, dtype, "--batch-size", bs)
        results.append({"side": "ipx2p batch", "batch_size": bs, "workers": 1, "seconds": seconds, "out": out,
                        "peak_gib": peak})

    if not args.gpu and not args.no_ray:
        try:
            import ray
        except ImportError:
            print("ray is not installed: the Ray side is skipped (pip install -e \".[ray]\")")
        else:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            out = root / "ray"
            seconds, _ = ipx2p_batch(model, manifest, out, steps, device, dtype, "--ray", "--workers", 2)
            results.append({"side": "ipx2p batch --ray", "batch_size": 1, "workers": 2, "seconds": seconds,
                            "out": out})
            ray.shutdown()

    loop_rate = rows_n / loop_s
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    kind = "full SD 1.5 (random weights)" if args.gpu else "tiny SD"
    print(f"{kind}, {size}x{size} {dtype}, {rows_n} rows, "
          f"{steps} steps, euler_a; {name}, torch {torch.__version__} (model built in {build_seconds:.0f} s)")
    print(f"{'side':<20} {'batch':>5} {'workers':>7} {'seconds':>8} {'rows/s':>7} {'ratio':>6} {'max|Δ| vs loop':>14}"
          f"{' peak GiB' if device == 'cuda' else ''}")
    for r in results:
        r["rows_per_s"] = rows_n / r["seconds"]
        r["ratio"] = r["rows_per_s"] / loop_rate
        r["max_level_diff"] = max_level_diff(root / "diffusers", r["out"]) if "out" in r else 0
        peak = f" {r['peak_gib']:>8.2f}" if r.get("peak_gib") is not None else ""
        print(f"{r['side']:<20} {r['batch_size']:>5} {r['workers']:>7} {r['seconds']:>8.2f} {r['rows_per_s']:>7.2f} "
              f"{r['ratio']:>6.2f} {r['max_level_diff']:>14}{peak}")
    if os.environ.get("OUT"):
        report = {"device": name, "torch": torch.__version__, "rows": rows_n, "steps": steps, "gpu": args.gpu,
                  "results": [{k: v for k, v in r.items() if k != "out"} for r in results]}
        target = Path(os.environ["OUT"]) / "bench_batch.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(report, indent=2))
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
