"""Fast mode: the UNet (and, where it pays, the VAE decoder) compiled with ``torch.compile`` (inductor).

``load_model(..., fast=True)`` calls :func:`make_fast` on the freshly loaded model. What it does, per device, is one
:class:`FastPlan` (see :func:`plan_for`; the measurements behind each choice are in the comments there):

- channels-last memory format for the compiled modules' weights;
- a compiled ``forward`` installed on the module *instance* (the module object, its config, its LoRA adapters and
  everything else that holds it stay the same), wrapped by :class:`CompiledForward`, which
  - marks batch and spatial sizes dynamic, so a new image size or a sweep batch reuses the compiled graph instead
    of compiling again (bounded by tests/test_fast.py);
  - falls back to the module's eager forward, for good and with one :class:`CompileFallbackWarning`, when
    compiling fails (no C++ compiler, an operation inductor cannot lower, any error inside dynamo or inductor);
    an input the eager module rejects too is the input's fault: its error is raised and compiling stays on;
  - shows a notice ("compiling the UNet (first time, about N s)") while a compile runs, at load (a warm-up call on
    a small dummy input) and at any later recompile.
- inductor's caches (FX graph, AOT autograd) on disk in :func:`compile_cache_dir` (``$IPX2P_COMPILE_CACHE``, else
  ``~/.cache/ipx2p/compile``), so the next process loads compiled code instead of generating it.

Outputs stay those of the eager modules up to float rounding (tests: <= 1e-3 per pixel, fp32, CPU).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import itertools
import json
import logging
import os
import threading
import time
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import torch

from .atomic_files import write_atomic
from .families import TEXT_TIME

log = logging.getLogger(__name__)

CACHE_ENV = "IPX2P_COMPILE_CACHE"
MODE_ENV = "IPX2P_COMPILE_MODE"  # overrides the plan's torch.compile mode, e.g. for benchmarks
MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")
TIMES_FILE = "ipx2p-compile-times.json"

# Seconds a first (cold-cache) compile takes, shown before a model's first compile on a machine. CPU UNet: SD 1.5,
# torch 2.13, fp32, 2 idle cores, 244 s (bench/fast_start.py, README "Fast mode"); the others are guesses until
# measured.
FIRST_COMPILE_ESTIMATE_S = {("cpu", "UNet"): 240, ("cpu", "VAE decoder"): 60, ("cuda", "UNet"): 90,
                            ("cuda", "VAE decoder"): 40}


class CompileFallbackWarning(UserWarning):
    """Compiling failed; the module runs eager (as fast as without fast mode, results unchanged)."""


# ------------------------------------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class FastPlan:
    """What fast mode does on one device."""

    mode: str  # torch.compile mode
    channels_last: bool
    freezing: bool  # inductor folds the weights into the compiled code as constants
    vae_decoder: bool  # compile the VAE decoder as well as the UNet

    def options(self) -> dict:
        """torch.compile ``options`` (mode and options cannot both be given, so the mode's options come first)."""
        from torch._inductor import list_mode_options

        return {**list_mode_options(self.mode), "freezing": self.freezing}


def plan_for(device: torch.device) -> FastPlan:
    """The plan per device, from measurements (torch 2.13; CPU: 2 cores, full SD 1.5 UNet, latents 32 x 32, batch 3,
    CPU time of one call, eager with the engine's speed-ups = 1):

    - CPU, compiled as is: 1.10 (slower: convolutions and matrix products stay library calls, and the compiled graph
      loses the eager path's small-convolution shortcut); channels-last + freezing: 0.76 (inductor folds the weights
      into the graph as constants and lays them out once for oneDNN / MKL, instead of on every call); freezing
      alone: 0.88. Freezing keeps a second, prepacked copy of the UNet's weights (SD 1.5 fp32: +3.4 GB) and cannot
      follow LoRA changes without another copy per LoRA setting, so a LoRA turns compiling off for that model.
      Those ratios were taken under heavy load; on the idle machine a compiled call took as long as a stock one
      (3.502 s vs 3.520 s, wall time, bench_engine.py --compile), so on the CPU fast mode does not pay today.
    - CUDA: to be measured with bench/gpu_fast.py; no freezing there (weights move between devices under ComfyUI's
      model management, and LoRAs then recompile instead of turning compiling off).
    """
    if device.type == "cuda":
        plan = FastPlan(mode="default", channels_last=True, freezing=False, vae_decoder=True)
    else:
        plan = FastPlan(mode="default", channels_last=True, freezing=True, vae_decoder=False)
    mode = os.environ.get(MODE_ENV, "").strip()
    if mode:
        if mode not in MODES:
            from .errors import IP2PError

            raise IP2PError(f"{MODE_ENV}={mode!r} is not a torch.compile mode; use one of {', '.join(MODES)}.")
        plan = FastPlan(mode, plan.channels_last, plan.freezing, plan.vae_decoder)
    return plan


# ----------------------------------------------------------------------------------------------------- disk cache


def compile_cache_dir() -> Path:
    """Where compiled code is kept between processes: ``$IPX2P_COMPILE_CACHE``, else ``$XDG_CACHE_HOME/ipx2p/compile``
    (``~/.cache/ipx2p/compile``)."""
    explicit = os.environ.get(CACHE_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(base).expanduser() / "ipx2p" / "compile"


def _use_cache_dir() -> Path:
    """Point inductor at our cache folder (it reads TORCHINDUCTOR_CACHE_DIR whenever it needs the folder).

    A TORCHINDUCTOR_CACHE_DIR the user chose is kept; torch's own default (it writes its /tmp default into the
    environment on first use) is replaced.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current and os.path.abspath(current) != os.path.abspath(default_cache_dir()) and not os.environ.get(CACHE_ENV):
        return Path(current)
    folder = compile_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return folder


class CompileTimes:
    """Measured compile times per (module, device, precision, mode, torch), kept next to the compiled code, so the
    notice can say how long a compile will take and whether the cache has it."""

    _lock = threading.Lock()

    def __init__(self, folder: Path):
        self.path = folder / TIMES_FILE

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def get(self, key: str) -> dict | None:
        return self._read().get(key)

    def record(self, key: str, seconds: float, cached: bool) -> None:
        with self._lock:
            data = self._read()
            entry = data.get(key, {})
            entry["warm" if cached else "cold"] = round(seconds, 1)
            data[key] = entry
            try:
                write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))
            except OSError as exc:  # a read-only cache folder costs the estimate, nothing else
                log.debug("could not record compile time in %s: %s", self.path, exc)


# ---------------------------------------------------------------------------------------------------------- notice

Notice = Callable[[str], ContextManager]


@contextlib.contextmanager
def log_notice(message: str) -> Iterator[None]:
    """The default notice: one log line before and one after."""
    log.info("%s ...", message)
    start = time.perf_counter()
    yield
    log.info("%s: done in %.0f s", message, time.perf_counter() - start)


_notice: Notice = log_notice


def set_compile_notice(notice: Notice | None) -> None:
    """How compiles are announced in this process: ``notice(message)`` is a context manager held while one runs
    (the CLI shows a spinner on stderr). ``None`` restores the default (log lines)."""
    global _notice
    _notice = notice or log_notice


# ------------------------------------------------------------------------------------------------ compiled forward

# The CompiledForward whose call is running in this thread/context: dynamo's compile callbacks are process-wide,
# this tells ours apart from compiles of anything else (ComfyUI may compile other models in the same process).
_running: contextvars.ContextVar["CompiledForward | None"] = contextvars.ContextVar("ipx2p_compiling", default=None)


def _on_start(_args) -> None:
    fwd = _running.get()
    if fwd is not None:
        fwd._compile_started()


def _on_end(_args) -> None:
    fwd = _running.get()
    if fwd is not None:
        fwd._compile_ended()


def _install_compile_callbacks() -> None:
    """Register our start/end callbacks with dynamo (again after a ``torch._dynamo.reset()``, which clears them)."""
    try:
        from torch._dynamo.callback import callback_handler
    except ImportError:  # older torch: no notice, compiling works the same
        return
    if _on_start not in callback_handler.start_callbacks:
        callback_handler.register_start_callback(_on_start)
    if _on_end not in callback_handler.end_callbacks:
        callback_handler.register_end_callback(_on_end)


def _prepare(value, inference: bool):
    """One argument of a compiled call, as the compiled graph expects it (recursing into dicts)."""
    if isinstance(value, dict):
        return {k: _prepare(v, inference) for k, v in value.items()}
    if not isinstance(value, torch.Tensor):
        return value
    if inference and not value.is_inference():
        # Dynamo guards on a tensor's dispatch keys, which differ between tensors made inside and outside inference
        # mode: the sampler's reused input buffer (made outside) and a sweep's row subset (made inside) would each
        # get their own graph. Latents and text embeddings are small next to the UNet's work: copy them instead.
        value = value.clone()
    if value.dim() >= 1:  # batch (and, for 4-D tensors, height and width) may change without a recompile
        torch._dynamo.maybe_mark_dynamic(value, 0)
        if value.dim() == 4:
            torch._dynamo.maybe_mark_dynamic(value, 2)
            torch._dynamo.maybe_mark_dynamic(value, 3)
    return value


def _freezing(on: bool) -> ContextManager:
    """Dynamo reads inductor's *global* freezing flag while it traces (weights become constants of the graph, guarded
    by identity; the per-compile option alone leaves them graph inputs). Set it only around our own calls."""
    if not on:
        return contextlib.nullcontext()
    import torch._inductor.config

    return torch._inductor.config.patch(freezing=True)


def _has_lora(module: torch.nn.Module) -> bool:
    """A LoRA was injected into the module (diffusers' peft integration marks it)."""
    return bool(getattr(module, "_hf_peft_config_loaded", False))


def _call_forward(forward, *args, **kwargs):
    return forward(*args, **kwargs)


_entries = itertools.count(1)


def _entry_function(label: str) -> Callable:
    """A function of its own (its own code object) that calls the forward it is given.

    Dynamo keeps compiled graphs on the code object it compiled: with one entry per module, each module has its own
    graphs and recompile limit, and they are freed with the module (compiling the bound forward directly would put
    every UNet of the process on diffusers' shared forward code).
    """
    name = f"ipx2p_{label.lower().replace(' ', '_')}_{next(_entries)}"
    code = _call_forward.__code__.replace(co_name=name, co_qualname=name) if hasattr(
        _call_forward.__code__, "co_qualname") else _call_forward.__code__.replace(co_name=name)
    return types.FunctionType(code, _call_forward.__globals__, name)


class CompiledForward:
    """A module's forward, compiled, with eager fallback. Installed as the instance's ``forward``."""

    def __init__(self, module: torch.nn.Module, label: str, plan: FastPlan, key: str,
                 eager_setup: Callable[[torch.nn.Module], Any] | None = None):
        self.label, self.plan, self.key = label, plan, key
        self.eager_setup = eager_setup  # what eager loading does to the module (the CPU speed-ups)
        self.eager = types.MethodType(type(module).forward, module)
        self.failed: str | None = None
        self.retired: str | None = None
        self.compiles = 0  # compiles (first one and recompiles) seen by this forward
        self._start = 0.0
        self._notice_cm = None
        self._cache = _use_cache_dir()
        self._times = CompileTimes(self._cache)
        try:
            self.compiled = torch.compile(_entry_function(label), dynamic=None, options=plan.options())
        except Exception as exc:  # noqa: BLE001 - any failure to set up compiling means eager, said once
            self.compiled = None
            self._fail(exc)

    def __call__(self, *args, **kwargs):
        if self.compiled is not None and self.plan.freezing and _has_lora(self.eager.__self__):
            self._retire("a LoRA was applied, and frozen weights would need a copy per LoRA setting")
        if self.compiled is None:
            return self.eager(*args, **kwargs)
        inference = torch.is_inference_mode_enabled()
        c_args = [_prepare(a, inference) for a in args]
        c_kwargs = {k: _prepare(v, inference) for k, v in kwargs.items()}
        _install_compile_callbacks()
        token = _running.set(self)
        try:
            with _freezing(self.plan.freezing):
                return self.compiled(self.eager, *c_args, **c_kwargs)
        except torch.cuda.OutOfMemoryError:
            raise  # the caller's to handle (sweeps halve their batch); compiling is not at fault
        except Exception as exc:  # noqa: BLE001
            self._compile_ended(failed=True)
            try:
                out = self.eager(*args, **kwargs)
            except Exception:
                raise  # the eager module rejects this input too: its error, compiling stays on
            self._fail(exc)
            return out
        finally:
            _running.reset(token)

    # notices and bookkeeping
    def message(self) -> str:
        device = self.key.split(":")[1]  # key: label:device:...
        # measured on an idle 2-core CPU: compiled steps take as long as eager ones (README "Fast mode")
        hint = "; on a CPU it runs no faster than eager" if device == "cpu" else ""
        seen = self._times.get(self.key) or {}
        if seen:
            seconds = seen.get("warm") or seen.get("cold")
            return f"compiling the {self.label} (cached, about {seconds:.0f} s{hint})"
        estimate = FIRST_COMPILE_ESTIMATE_S.get((device, self.label))
        about = f"about {estimate} s" if estimate else "this can take minutes"
        return f"compiling the {self.label} (first time, {about}{hint})"

    def _compile_started(self) -> None:
        self.compiles += 1
        if self._notice_cm is not None:
            return
        self._cached = bool(self._times.get(self.key))
        self._start = time.perf_counter()
        self._notice_cm = _notice(self.message())
        self._notice_cm.__enter__()

    def _compile_ended(self, failed: bool = False) -> None:
        cm, self._notice_cm = self._notice_cm, None
        if cm is None:
            return
        cm.__exit__(None, None, None)
        if not failed:
            self._times.record(self.key, time.perf_counter() - self._start, cached=self._cached)

    def _back_to_eager(self) -> None:
        """Drop the compiled graphs (and their weights) and leave the module exactly as eager loading gives it."""
        self.compiled = None
        module = self.eager.__self__
        if self.plan.channels_last:
            module.to(memory_format=torch.contiguous_format)
        if self.eager_setup is not None:
            self.eager_setup(module)

    def _retire(self, why: str) -> None:
        self._back_to_eager()
        self.retired = why
        log.info("Fast mode: the %s runs uncompiled from now on: %s.", self.label, why)

    def _fail(self, exc: Exception) -> None:
        self._back_to_eager()
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        self.failed = f"{type(exc).__name__}: {first}"
        warnings.warn(
            f"Fast mode: compiling the {self.label} failed ({self.failed}); it runs uncompiled instead, with the same "
            "results at normal speed. Compiling on the CPU needs a C++ compiler (g++ or clang) and Python headers; "
            "run with TORCH_LOGS=+dynamo for details.",
            CompileFallbackWarning,
            stacklevel=3,
        )


def compiled_forward(module: torch.nn.Module) -> CompiledForward | None:
    """The module's CompiledForward, if fast mode installed one."""
    fwd = module.__dict__.get("forward")
    return fwd if isinstance(fwd, CompiledForward) else None


def _compile_module(module: torch.nn.Module, label: str, plan: FastPlan, key: str,
                    eager_setup: Callable[[torch.nn.Module], Any] | None = None) -> CompiledForward:
    # Instance-level eager speed-ups (speedups.py) would be traced as Python branches on shapes; the compiled
    # module does without them (its own kernels replace what they work around).
    for sub in module.modules():
        sub.__dict__.pop("forward", None)
    if plan.channels_last:
        module.to(memory_format=torch.channels_last)
    fwd = CompiledForward(module, label, plan, key, eager_setup)
    module.forward = fwd
    return fwd


# ----------------------------------------------------------------------------------------------------- entry point


def _key(model, label: str, plan: FastPlan) -> str:
    cfg = getattr(model.unet if label == "UNet" else model.vae, "config", {})
    config = json.dumps({k: v for k, v in dict(cfg).items() if not k.startswith("_")}, sort_keys=True, default=str)
    arch = hashlib.sha1(config.encode()).hexdigest()[:10]
    return f"{label}:{model.device.type}:{str(model.dtype).replace('torch.', '')}:{plan.mode}:{arch}:" \
           f"torch{torch.__version__}"


def make_fast(model, *, warm_up: bool = True):
    """Compile ``model``'s UNet (and VAE decoder where the plan says so) in place; returns the model.

    With ``warm_up`` the compile happens now, on a small dummy input, rather than at the first sampling step.
    """
    plan = plan_for(model.device)
    from .speedups import install_speedups

    unet = _compile_module(model.unet, "UNet", plan, _key(model, "UNet", plan), install_speedups)
    decoder = None
    if plan.vae_decoder:
        decoder = _compile_module(model.vae.decoder, "VAE decoder", plan, _key(model, "VAE decoder", plan))
    if warm_up:
        warm_up_model(model, unet, decoder)
    return model


def warm_up_model(model, unet: CompiledForward | None = None, decoder: CompiledForward | None = None) -> None:
    """One call of each compiled module on a small dummy input, so the compile happens at load.

    Sizes: batch 3 (a single edit's three passes), latents 16 x 24. Batch, height and width are all different and
    above 1 on purpose: dynamo gives equal sizes one symbol (and would then recompile for every non-square image)
    and treats sizes 0 and 1 as constants.
    """
    unet = unet or compiled_forward(model.unet)
    decoder = decoder or compiled_forward(model.vae.decoder)
    device, dtype = model.device, model.dtype
    b, h, w = 3, 16, 24
    with torch.inference_mode():
        if unet is not None and unet.compiled is not None:
            sample = torch.zeros(b, model.unet.config.in_channels, h, w, device=device, dtype=dtype)
            ctx = torch.zeros(b, 77, model.unet.config.cross_attention_dim, device=device, dtype=dtype)
            added = None
            if model.family.added_conditioning == TEXT_TIME:  # SDXL: pooled text + size/crop time ids
                width = model.unet.add_embedding.linear_1.in_features - 6 * model.unet.config.addition_time_embed_dim
                added = {"text_embeds": torch.zeros(b, width, device=device, dtype=dtype),
                         "time_ids": torch.zeros(b, 6, device=device, dtype=dtype)}
            model.unet(sample, torch.tensor(999.0, device=device), encoder_hidden_states=ctx,
                       added_cond_kwargs=added, return_dict=False)
        if decoder is not None and decoder.compiled is not None:
            z = torch.zeros(1, model.latent_channels, h, w, device=device, dtype=model.vae_dtype)  # decodes: 1 image
            model.vae.decoder(z)


def describe(model) -> str:
    """' (compiled)' / ' (compile failed: ...)' for IP2PModel.describe."""
    fwd = compiled_forward(model.unet)
    if fwd is None:
        return ""
    if fwd.failed:
        return ", compile failed, running eager"
    return ", compiled" if fwd.compiled is not None else ", compiled until a LoRA was applied"
