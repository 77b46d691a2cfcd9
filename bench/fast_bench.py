"""Fast mode side by side: engine compiled vs diffusers eager vs engine eager, and the model cost "limit".

Run through ``python bench/bench_engine.py --compile`` (options there). Per case, in one process:

- the same weights three ways: diffusers' pipeline on stock modules, the engine as its loader leaves them (eager,
  CPU speed-ups), and the engine in fast mode (``ipx2p_core.fast.make_fast`` on its own copy of the UNet; the
  compile, paid once, is timed separately). To hold two UNets in memory instead of three (full SD 1.5 fp32: 3.4 GB
  each, and the compiled one keeps a prepacked copy on the CPU), diffusers and the engine eager share one UNet: the
  engine's speed-ups (instance-level forwards, speedups.py) are installed for its runs only;
- a warm-up edit each (and the outputs' max pixel difference to diffusers), then ``runs`` rounds alternating
  compiled, diffusers, eager; per run the wall time and the steady-state time per step (median interval between
  step callbacks, so encoding, decoding and the first step's one-off work are left out);
- the limit: the stock UNet's forward at the run's batch x steps + text encoding + VAE encode + VAE decode, each
  timed alone in the same rounds: what an edit costs in model arithmetic with no loop around it. The same with the
  compiled UNet's forward is the compiled limit.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time

import numpy as np
import torch


def _median(values):
    return statistics.median(values) if values else float("nan")


def remove_speedups(module) -> None:
    for m in module.modules():
        m.__dict__.pop("forward", None)


@contextlib.contextmanager
def speedups_on(module):
    from ipx2p_core.speedups import install_speedups

    if module is None:
        yield
        return
    install_speedups(module)
    try:
        yield
    finally:
        remove_speedups(module)


class StepClock:
    """Timestamps of step callbacks; ``per_step`` = median interval (steady state)."""

    def __init__(self):
        self.stamps: list[float] = []

    def __call__(self, step, total, latents):  # the engine's step callback
        self.stamps.append(time.perf_counter())

    def diffusers_callback(self, pipe, step, timestep, callback_kwargs):
        self.stamps.append(time.perf_counter())
        return callback_kwargs

    @property
    def per_step(self) -> float:
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
        return _median(gaps)


def compile_case(name, comps, image, steps, runs, device, pairs):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from ipx2p_core import SamplerSettings, decode_latents, encode_image, encode_instruction, fast
    from ipx2p_core.families import SD15
    from ipx2p_core.models import _finish
    from ipx2p_core.pipeline import edit
    from ipx2p_core.schedulers import make_scheduler

    for key in ("unet", "vae", "text_encoder"):
        comps[key] = comps[key].to(device).eval().requires_grad_(False)
    base = SD15.scheduler_config()
    stock_unet = comps["unet"]
    compiled_unet = copy.deepcopy(stock_unet)
    finish = lambda unet: _finish(SD15, unet, comps["vae"], (comps["text_encoder"],),  # noqa: E731
                                  (comps["tokenizer"],), base, torch.float32, device, name, False, {})
    eager = finish(stock_unet)
    remove_speedups(stock_unet)  # back to stock; engine() puts them on for the engine's eager runs
    compiled = finish(compiled_unet)
    t0 = time.perf_counter()
    fast.make_fast(compiled)
    compile_s = time.perf_counter() - t0
    fwd = fast.compiled_forward(compiled.unet)
    if fwd.failed:
        raise SystemExit(f"compiling failed: {fwd.failed}")
    pipe = StableDiffusionInstructPix2PixPipeline(**{**comps, "unet": stock_unet,
                                                      "scheduler": make_scheduler("euler_a", base)})
    pipe.set_progress_bar_config(disable=True)
    instruction = "make it winter"
    rows = []
    for g_text, g_image in pairs:
        settings = SamplerSettings(steps=steps, text_guidance=g_text, image_guidance=g_image, seed=0)

        def engine(model):
            def run():
                clock = StepClock()
                with speedups_on(model.unet if model is eager else None):
                    out = edit(model, image, instruction, settings=settings, callback=clock).images.numpy()
                return out, clock
            return run

        def diffusers():
            clock = StepClock()
            pipe.scheduler = make_scheduler("euler_a", base)
            out = pipe(instruction, image=image, num_inference_steps=steps, guidance_scale=g_text,
                       image_guidance_scale=g_image, generator=torch.Generator("cpu").manual_seed(0),
                       output_type="np", callback_on_step_end=clock.diffusers_callback).images
            return out, clock

        sides = {"compiled": engine(compiled), "diffusers": diffusers, "eager": engine(eager)}
        outs = {label: fn()[0] for label, fn in sides.items()}  # warm-up (a new batch size may compile here)
        diff = float(np.abs(outs["compiled"] - outs["diffusers"]).max())
        diff_eager = float(np.abs(outs["compiled"] - outs["eager"]).max())

        # The parts of the limit, at this run's sizes.
        cond = encode_instruction(eager, instruction)
        latents_in = encode_image(eager, image)
        n_rows = 3 if g_image != 1.0 else 2
        h, w = latents_in.latents.shape[-2:]
        unet_in = torch.randn(n_rows, 8, h, w, device=device)
        ctx = torch.cat([cond.embeds, cond.negative_embeds, cond.negative_embeds][:n_rows]).to(device)
        out_latents = torch.randn(1, 4, h, w, device=device)
        t = torch.tensor(500.0, device=device)

        def timed(fn):
            def run():
                with torch.inference_mode():
                    t0 = time.perf_counter()
                    fn()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    return time.perf_counter() - t0
            return run

        # Called as the sampler calls it: the compiled graph is guarded on the keyword arguments given.
        kwargs = dict(encoder_hidden_states=ctx, added_cond_kwargs=None, return_dict=False)
        parts = {
            "unet stock": timed(lambda: stock_unet(unet_in, t, **kwargs)),
            "unet compiled": timed(lambda: compiled.unet(unet_in, t, **kwargs)),
            "text": timed(lambda: encode_instruction(eager, instruction)),
            "vae encode": timed(lambda: encode_image(eager, image)),
            "vae decode": timed(lambda: decode_latents(eager, out_latents)),
        }
        for fn in parts.values():
            fn()
        wall = {k: [] for k in sides}
        per_step = {k: [] for k in sides}
        part_times = {k: [] for k in parts}
        for _ in range(runs):
            for label, fn in sides.items():
                t0 = time.perf_counter()
                _, clock = fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                wall[label].append(time.perf_counter() - t0)
                per_step[label].append(clock.per_step)
            for label, fn in parts.items():
                part_times[label].append(fn())
        med = {k: _median(v) for k, v in part_times.items()}
        rest = med["text"] + med["vae encode"] + med["vae decode"]
        rows.append(dict(
            model=name, pair=f"{g_text}/{g_image}", steps=steps, compile_s=compile_s,
            step={k: _median(v) for k, v in per_step.items()}, wall={k: _median(v) for k, v in wall.items()},
            limit_stock=med["unet stock"] * steps + rest, limit_compiled=med["unet compiled"] * steps + rest,
            unet_stock=med["unet stock"], unet_compiled=med["unet compiled"], rest=rest, diff=diff,
            diff_eager=diff_eager, compiles=fwd.compiles,
        ))
    return rows


def print_rows(rows, device, runs) -> None:
    print(f"device: {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, runs {runs} (median), "
          f"fast plan {__import__('ipx2p_core.fast', fromlist=['plan_for']).plan_for(device)}")
    print("time per step (steady state, s) and ratio to diffusers; whole edit (s); limit = model cost alone")
    head = (f"{'model':<18} {'g_t/g_i':>8} {'compiled':>9} {'diffusers':>9} {'eager':>8} {'c/d':>6} {'e/d':>6} | "
            f"{'edit c':>7} {'edit d':>7} {'edit e':>7} | {'limit':>7} {'limit c':>7} {'c/limit c':>9} | "
            f"{'compile s':>9} {'max|Δ| d':>9} {'max|Δ| e':>9}")
    print(head)
    for r in rows:
        s, w = r["step"], r["wall"]
        print(f"{r['model']:<18} {r['pair']:>8} {s['compiled']:>9.4f} {s['diffusers']:>9.4f} {s['eager']:>8.4f} "
              f"{s['compiled'] / s['diffusers']:>6.3f} {s['eager'] / s['diffusers']:>6.3f} | "
              f"{w['compiled']:>7.3f} {w['diffusers']:>7.3f} {w['eager']:>7.3f} | {r['limit_stock']:>7.3f} "
              f"{r['limit_compiled']:>7.3f} {w['compiled'] / r['limit_compiled']:>9.3f} | {r['compile_s']:>9.1f} "
              f"{r['diff']:>9.2e} {r['diff_eager']:>9.2e}")
    print("limit parts (s): " + "; ".join(
        f"{r['model']} {r['pair']}: UNet stock {r['unet_stock']:.4f} x {r['steps']}, UNet compiled "
        f"{r['unet_compiled']:.4f} x {r['steps']}, text + VAE {r['rest']:.4f} (compiles so far: {r['compiles']})"
        for r in rows))
