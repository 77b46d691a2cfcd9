"""Start-up cost of fast mode: loading with ``fast=True`` in a first process (empty compile cache) and a second one.

    python bench/fast_start.py                  # tiny SD and the full SD 1.5 architecture (random weights)
    python bench/fast_start.py --only tiny

Each measurement is a fresh Python process (what a user starting the CLI or the studio pays): build the model,
then time ``ipx2p_core.fast.make_fast`` (the compile, done at load by a warm-up call) and one 256² (tiny: 64²) UNet
call after it. Both processes share one new cache folder; the first finds it empty.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(which: str) -> dict:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_models
    import torch

    from ipx2p_core import fast
    from ipx2p_core.families import SD15
    from ipx2p_core.models import _finish

    if which == "tiny":
        comps, size = tiny_models.tiny_sd_components(), 64
    else:
        from bench_engine import full_sd15_components

        comps, size = full_sd15_components("cpu"), 256
    model = _finish(SD15, comps["unet"], comps["vae"], (comps["text_encoder"],), (comps["tokenizer"],),
                    SD15.scheduler_config(), torch.float32, torch.device("cpu"), which, False, {})
    t0 = time.perf_counter()
    fast.make_fast(model)
    compile_s = time.perf_counter() - t0
    f = model.vae_scale_factor
    x = torch.randn(3, 8, size // f, size // f)
    ctx = torch.randn(3, 77, model.unet.config.cross_attention_dim)
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.unet(x, torch.tensor(500.0), encoder_hidden_states=ctx, added_cond_kwargs=None, return_dict=False)
        first_call_s = time.perf_counter() - t0
    fwd = fast.compiled_forward(model.unet)
    return dict(compile_s=compile_s, first_call_s=first_call_s, compiles=fwd.compiles, failed=fwd.failed)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["tiny", "full"], default=None)
    ap.add_argument("--child", choices=["tiny", "full"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child)))
        return
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, date {time.strftime('%Y-%m-%d')}")
    for which in ("tiny", "full"):
        if args.only not in (None, which):
            continue
        cache = tempfile.mkdtemp(prefix="ipx2p-compile-start-")
        env = {**os.environ, "IPX2P_COMPILE_CACHE": cache}
        env.pop("TORCHINDUCTOR_CACHE_DIR", None)
        for n in ("first", "second"):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "--child", which], env=env, capture_output=True,
                                 text=True, check=True).stdout
            total = time.perf_counter() - t0
            r = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
            print(f"{which:>4} {n:>6} process: compile at load {r['compile_s']:6.1f} s, then a UNet call "
                  f"{r['first_call_s']:5.2f} s (process total {total:5.1f} s, compiles {r['compiles']}"
                  f"{', FAILED: ' + r['failed'] if r['failed'] else ''}); cache {cache}", flush=True)


if __name__ == "__main__":
    main()
