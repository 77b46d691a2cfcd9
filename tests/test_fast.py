"""Fast mode (ipx2p_core/fast.py): compiled output equals eager output, sizes do not recompile every time, a compile
failure falls back to eager with one warning, and every command and node can turn it on.

The tests that really compile (inductor, C++) share one cache folder per module in tmp, so each tiny model is
compiled once cold per test session; everything else swaps torch.compile for a stand-in that runs the eager
forward and announces a compile the way dynamo does.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import pytest
import torch

from ipx2p_core import SamplerSettings, apply_lora, fast, load_model
from ipx2p_core.errors import IP2PError
from ipx2p_core.models import MODEL_CACHE, ModelCache
from ipx2p_core.pipeline import edit, guidance_sweep

SETTINGS = SamplerSettings(steps=3, seed=7)


def _image(w, h, seed=0):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (h, w, 3), dtype=np.uint8))


def _unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A fresh inductor cache for this module's real compiles (restored afterwards)."""
    folder = tmp_path_factory.mktemp("compile_cache")
    mp = pytest.MonkeyPatch()
    mp.setenv(fast.CACHE_ENV, str(folder))
    mp.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    torch._dynamo.reset()
    yield folder
    torch._dynamo.reset()
    mp.undo()


# ------------------------------------------------------------------------------------------- real compiles (inductor)


@pytest.fixture(scope="module")
def sd_pair(tiny_sd, compile_cache):
    eager = load_model(tiny_sd["folder"], cache=None)
    compiled = load_model(tiny_sd["folder"], cache=None, fast=True)
    return eager, compiled


def test_compiled_sd_matches_eager(sd_pair, compile_cache):
    eager, compiled = sd_pair
    assert compiled.compiled and not eager.compiled
    assert compiled.describe().endswith(", compiled")
    fwd = fast.compiled_forward(compiled.unet)
    assert fwd.compiles >= 1  # the warm-up call at load compiled it
    image = _image(64, 48)  # latents 32 x 24
    a = edit(eager, image, "make it winter", settings=SETTINGS).images
    b = edit(compiled, image, "make it winter", settings=SETTINGS).images
    assert float((a - b).abs().max()) <= 1e-3
    assert (compile_cache / fast.TIMES_FILE).exists()  # the compile time is known for the next process


def test_five_sizes_and_sweep_batches_compile_at_most_twice(sd_pair):
    """A studio-like session: 5 image sizes (one not a multiple of the UNet's 2x down/up factor in latents),
    single edits with 3 UNet passes, 2 passes (image guidance 1) and a sweep (batch 12 and 6 rows)."""
    eager, compiled = sd_pair
    fwd = fast.compiled_forward(compiled.unet)
    before, graphs = fwd.compiles, _unique_graphs()
    for k, (w, h) in enumerate([(64, 48), (48, 64), (96, 64), (80, 80), (72, 56)]):
        settings = SETTINGS.with_(steps=2, image_guidance=1.0 if k == 2 else 1.5)
        a = edit(eager, _image(w, h, k), "make it winter", settings=settings).images
        b = edit(compiled, _image(w, h, k), "make it winter", settings=settings).images
        assert float((a - b).abs().max()) <= 1e-3, (w, h)
    sweep = guidance_sweep(compiled, _image(64, 48), "make it winter", [5, 7.5], [1.5, 2],
                           settings=SETTINGS.with_(steps=2))
    assert tuple(sweep.images.shape) == (4, 48, 64, 3)
    assert fwd.compiles - before <= 2, fwd.compiles - before
    assert _unique_graphs() - graphs <= 2
    assert fwd.compiled is not None and fwd.failed is None


def test_compiled_sdxl_matches_eager(tiny_sdxl, compile_cache):
    eager = load_model(tiny_sdxl["folder"], cache=None)
    compiled = load_model(tiny_sdxl["folder"], cache=None, fast=True)
    assert compiled.compiled
    image = _image(64, 48)
    a = edit(eager, image, "make it winter", settings=SETTINGS).images
    b = edit(compiled, image, "make it winter", settings=SETTINGS).images
    assert float((a - b).abs().max()) <= 1e-3


def test_second_process_reuses_the_compiled_kernels(tiny_sd, sd_pair, compile_cache):
    """What a new process does: dynamo traces again and inductor generates the graph again, but every C++ kernel is
    found compiled in the cache folder. (The graph itself is not stored on the CPU: it holds oneDNN-prepacked
    weights, which inductor's FX graph cache cannot save; on a GPU the whole graph is loaded from the cache.)"""
    from torch._inductor.utils import clear_caches

    kernels = sorted(p.name for p in compile_cache.rglob("*.so"))
    assert kernels  # the first compile left its kernels
    torch._dynamo.reset()
    clear_caches()
    messages = []

    @contextlib.contextmanager
    def notice(message):
        messages.append(message)
        yield

    fast.set_compile_notice(notice)
    try:
        again = load_model(tiny_sd["folder"], cache=None, fast=True)
    finally:
        fast.set_compile_notice(None)
    assert again.compiled and fast.compiled_forward(again.unet).compiles == 1
    assert sorted(p.name for p in compile_cache.rglob("*.so")) == kernels  # nothing compiled by the C++ compiler
    assert messages and messages[0].startswith("compiling the UNet (cached, about ")


# ------------------------------------------------------------------------- dynamo only (graphs run eager, no C++)


@pytest.fixture()
def dynamo_only(monkeypatch, tmp_path):
    """torch.compile with backend="eager": dynamo traces and guards as in fast mode, no inductor code is made.
    What recompiles (and whether a change is seen at all) is decided by dynamo's guards, so this is enough to
    check that LoRA handles run their own weights on a compiled UNet."""
    monkeypatch.setenv(fast.CACHE_ENV, str(tmp_path / "cache"))
    real = torch.compile
    monkeypatch.setattr(fast.torch, "compile", lambda fn, **_: real(fn, backend="eager", dynamic=None))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("freezing", [False, True], ids=["weights as inputs (GPU)", "frozen weights (CPU)"])
def test_lora_handles_on_a_compiled_model_match_eager(tiny_sd, dynamo_only, tmp_path, monkeypatch, freezing):
    import adapter_files as af

    from ipx2p_core.speedups import install_cpu_conv_fastpath

    plan = fast.FastPlan(mode="default", channels_last=True, freezing=freezing, vae_decoder=False)
    monkeypatch.setattr(fast, "plan_for", lambda device: plan)
    eager = load_model(tiny_sd["folder"], cache=None)
    compiled = load_model(tiny_sd["folder"], cache=None, fast=True)
    fwd = fast.compiled_forward(compiled.unet)
    path = af.write(af.to_peft(af.random_lora(eager, text=False, scale=0.5)), tmp_path / "lora.safetensors")
    image = _image(32, 32)
    base = edit(compiled, image, "make it winter", settings=SETTINGS).images
    for strength in (0.8, 0.3):
        a = edit(apply_lora(eager, path, strength), image, "make it winter", settings=SETTINGS).images
        b = edit(apply_lora(compiled, path, strength), image, "make it winter", settings=SETTINGS).images
        assert float((a - b).abs().max()) <= 1e-3, strength
        assert float((b - base).abs().max()) > 1e-2  # the LoRA is really applied
    again = edit(compiled, image, "make it winter", settings=SETTINGS).images  # the base handle after LoRA handles
    assert float((again - base).abs().max()) <= 1e-3
    if freezing:  # compiling is off for this model from the first LoRA on; the module is as eager loading leaves it
        assert fwd.compiles == 1 and fwd.compiled is None and "LoRA" in fwd.retired
        assert compiled.describe().endswith(", compiled until a LoRA was applied")
        assert install_cpu_conv_fastpath(compiled.unet) == 0  # the eager speed-ups are back
        assert compiled.unet.conv_in.weight.is_contiguous()
    else:
        # One compile at load; the LoRA's layers, a second strength (strengths are dynamic from then on) and the
        # base handle with the adapters switched off each compile once.
        assert fwd.compiles == 4, fwd.compiles
        assert compiled.compiled


# --------------------------------------------------------------------------------- stand-in compile (no inductor)


class FakeCompile:
    """Stands in for torch.compile: runs the eager function; the first call is announced as dynamo announces a
    compile. ``fail_on_call`` makes every compiled call raise (as inductor does when it cannot build its code)."""

    def __init__(self, fail_on_call: Exception | None = None, fail_on_setup: Exception | None = None):
        self.fail_on_call, self.fail_on_setup = fail_on_call, fail_on_setup
        self.calls = 0

    def __call__(self, fn, **kwargs):
        if self.fail_on_setup is not None:
            raise self.fail_on_setup
        compiled_once = []

        def compiled(*args, **kw):
            self.calls += 1
            if self.fail_on_call is not None:
                raise self.fail_on_call
            if not compiled_once:
                compiled_once.append(True)
                with torch._dynamo.callback.callback_handler.install_callbacks(
                        torch._dynamo.callback.CallbackTrigger.DYNAMO, "0/0"):
                    pass
            return fn(*args, **kw)

        return compiled


@pytest.fixture()
def fake_compile(monkeypatch, tmp_path):
    monkeypatch.setenv(fast.CACHE_ENV, str(tmp_path / "cache"))
    stand_in = FakeCompile()
    monkeypatch.setattr(fast.torch, "compile", stand_in)
    yield stand_in
    fast.set_compile_notice(None)
    MODEL_CACHE.clear()  # the commands cache what they load: no stand-in "compiled" model may reach another test


def _edit(model, steps=3):
    return edit(model, _image(32, 32), "make it winter", settings=SETTINGS.with_(steps=steps)).images


def test_failure_at_first_call_falls_back_to_eager_with_one_warning(tiny_sd, fake_compile):
    from torch._inductor.exc import InductorError

    fake_compile.fail_on_call = InductorError(RuntimeError("C++ compile error: g++ not found"), "")
    eager = load_model(tiny_sd["folder"], cache=None)
    with pytest.warns(fast.CompileFallbackWarning) as caught:
        model = load_model(tiny_sd["folder"], cache=None, fast=True)
        out = _edit(model)
    assert len([w for w in caught if w.category is fast.CompileFallbackWarning]) == 1
    assert "compiling the UNet failed (InductorError" in str(caught[0].message)
    assert "runs uncompiled instead" in str(caught[0].message)
    assert fake_compile.calls == 1  # never tried again after the failure
    assert not model.compiled and model.describe().endswith(", compile failed, running eager")
    assert torch.equal(out, _edit(eager))


def test_failure_to_set_up_falls_back_to_eager(tiny_sd, fake_compile):
    fake_compile.fail_on_setup = RuntimeError("Windows not yet supported for torch.compile")
    with pytest.warns(fast.CompileFallbackWarning, match="Windows not yet supported"):
        model = load_model(tiny_sd["folder"], cache=None, fast=True)
    assert not model.compiled
    assert _edit(model).shape == (1, 32, 32, 3)


def test_an_input_that_eager_rejects_too_raises_and_keeps_compiling(tiny_sd, fake_compile):
    model = load_model(tiny_sd["folder"], cache=None, fast=True)
    fwd = fast.compiled_forward(model.unet)
    fake_compile.fail_on_call = RuntimeError("compiled path failed")
    with warnings.catch_warnings():
        warnings.simplefilter("error", fast.CompileFallbackWarning)
        with pytest.raises(RuntimeError, match="channels"):  # the eager UNet's own error about the bad input
            model.unet(torch.zeros(1, 3, 8, 8), 1, encoder_hidden_states=torch.zeros(1, 77, 32))
    assert fwd.compiled is not None and fwd.failed is None


def test_compile_notice_is_shown_while_compiling(tiny_sd, fake_compile, monkeypatch):
    from ipx2p_standalone.compile_option import show_compile_progress

    stream = io.StringIO()
    show_compile_progress(stream=stream)
    load_model(tiny_sd["folder"], cache=None, fast=True)
    text = stream.getvalue()
    assert "compiling the UNet (first time, about " in text and "compiling the UNet: done in " in text
    assert "on a CPU it runs no faster than eager)" in text  # measured: README "Fast mode"
    stream.truncate(0)
    load_model(tiny_sd["folder"], cache=None, fast=True)  # the time of the first compile was recorded
    assert "compiling the UNet (cached, about " in stream.getvalue()
    show_compile_progress(quiet=True, stream=stream)
    stream.truncate(0)
    load_model(tiny_sd["folder"], cache=None, fast=True)
    assert stream.getvalue().strip("\x00") == ""


def test_cache_key_separates_compiled_and_eager(tiny_sd, fake_compile):
    cache = ModelCache(max_entries=4)
    eager = load_model(tiny_sd["folder"], cache=cache)
    compiled = load_model(tiny_sd["folder"], cache=cache, fast=True)
    assert eager is not compiled and compiled.compiled and not eager.compiled
    assert load_model(tiny_sd["folder"], cache=cache, fast=True) is compiled
    assert load_model(tiny_sd["folder"], cache=cache) is eager


def test_cache_folder_and_mode_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(fast.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fast.compile_cache_dir() == tmp_path / "xdg" / "ipx2p" / "compile"
    monkeypatch.setenv(fast.CACHE_ENV, str(tmp_path / "mine"))
    assert fast.compile_cache_dir() == tmp_path / "mine"
    monkeypatch.setenv(fast.MODE_ENV, "max-autotune-no-cudagraphs")
    assert fast.plan_for(torch.device("cpu")).mode == "max-autotune-no-cudagraphs"
    monkeypatch.setenv(fast.MODE_ENV, "turbo")
    with pytest.raises(IP2PError, match="IPX2P_COMPILE_MODE='turbo' is not a torch.compile mode; use one of default"):
        fast.plan_for(torch.device("cpu"))


# ------------------------------------------------------------------------------------------ CLI, nodes, runner


def test_cli_compile_flag_on_every_model_command():
    from ipx2p_standalone.cli import build_parser

    parser = build_parser()
    for argv in (["edit", "a.png", "x", "-m", "m"], ["sweep", "a.png", "x", "-m", "m"],
                 ["chain", "a.png", "x", "y", "-m", "m"], ["run", "w.json"], ["studio"]):
        assert parser.parse_args(argv).compile is False
        assert parser.parse_args([*argv, "--compile"]).compile is True


def test_cli_edit_with_compile(tiny_sd, photo, tmp_path, fake_compile, capsys):
    from PIL import Image

    from ipx2p_standalone.cli import main

    common = [str(tmp_path / "in.png"), "make it winter", "-m", str(tiny_sd["folder"]), "--steps", "2"]
    photo.save(tmp_path / "in.png")
    assert main(["edit", *common, "-o", str(tmp_path / "plain.png"), "--quiet"]) == 0
    assert main(["edit", *common, "-o", str(tmp_path / "fast.png"), "--compile"]) == 0
    err = capsys.readouterr().err
    assert "compiling the UNet (first time, about " in err and "compiled" in err
    assert fake_compile.calls > 0
    import numpy as np

    assert np.array_equal(np.asarray(Image.open(tmp_path / "plain.png")), np.asarray(Image.open(tmp_path / "fast.png")))


def test_load_model_node_compile_input_and_host_setting(tiny_sd, fake_compile, tmp_path):
    import shutil

    from ipx2p_nodes.host import get_host, set_host
    from ipx2p_standalone.host import StandaloneHost
    from ipx2p_nodes.loaders import IPX2PLoadModel

    models = tmp_path / "models"
    shutil.copytree(tiny_sd["folder"], models / "diffusers" / "tiny")
    previous = get_host()
    host = StandaloneHost(models_dir=models, device="cpu")
    set_host(host)
    try:
        spec = IPX2PLoadModel.INPUT_TYPES()
        assert spec["optional"]["compile"][0] == "BOOLEAN" and spec["optional"]["compile"][1]["default"] is False
        node = IPX2PLoadModel()
        (plain,) = node.load("[diffusers] tiny")  # an old workflow: no compile input
        (compiled,) = node.load("[diffusers] tiny", compile=True)
        assert compiled.compiled and not plain.compiled
        host.compile_models = True  # ipx2p run / studio --compile
        (forced,) = node.load("[diffusers] tiny")
        assert forced is compiled
    finally:
        set_host(previous)


# ------------------------------------------------------------------------------------------------------------- batch


def test_batch_with_compile_gives_the_eager_pixels_and_records_it(tiny_sd, photo, tmp_path, compile_cache, capsys):
    """`ipx2p batch --compile`, compiled for real (inductor) in the batch's in-process worker."""
    import json

    from batch_helpers import make_photos, max_level_diff, results
    from PIL import Image

    from ipx2p_standalone.cli import main

    MODEL_CACHE.clear()
    make_photos(tmp_path / "photos", photo, 2)
    common = ["batch", str(tmp_path / "photos"), "make it winter", "-m", str(tiny_sd["folder"]), "--steps", "2",
              "--seed", "3", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "plain"), "-q"]) == 0
    assert main([*common, "--out", str(tmp_path / "fast"), "--compile"]) == 0
    assert "fast mode: each worker compiles the UNet when it loads the model" in capsys.readouterr().err
    plain, compiled = results(tmp_path / "plain"), results(tmp_path / "fast")
    assert [r["status"] for r in compiled] == ["done", "done"]
    assert [r["settings"] for r in compiled] == [{**r["settings"], "compile": True} for r in plain]
    assert [r["key"] for r in compiled] == [r["key"] for r in plain]  # a resume with or without --compile skips
    for name in ("p0.png", "p1.png"):
        # <= 1e-3 apart as floats (test_compiled_sd_matches_eager): at most one 8-bit level after rounding
        assert max_level_diff(tmp_path / "plain" / name, tmp_path / "fast" / name) <= 1
        with Image.open(tmp_path / "fast" / name) as a, Image.open(tmp_path / "plain" / name) as b:
            fast_meta, plain_meta = json.loads(a.text["ipx2p"]), json.loads(b.text["ipx2p"])
        assert fast_meta == {**plain_meta, "compiled": True}
    MODEL_CACHE.clear()


def test_batch_worker_processes_and_ray_actors_load_the_model_compiled(tiny_sd, fake_compile, tmp_path,
                                                                        monkeypatch):
    """Local worker processes (``_init_process``) and Ray actors (``RayBatchWorker``) both build their worker with
    ``make_worker(spec)``; here in this process, with the stand-in compile."""
    from dataclasses import replace

    from ipx2p_nodes.host import get_host, set_host
    from ipx2p_standalone.batch import local, ray_executor
    from ipx2p_standalone.batch.tasks import JobSpec

    monkeypatch.setattr(local, "quiet_libraries", lambda: None)  # process-wide filters, meant for worker processes
    spec = JobSpec(mode="edit", out_dir=str(tmp_path / "out"), device="cpu", model=str(tiny_sd["folder"]),
                   compile=True)
    actor = ray_executor.RayBatchWorker(spec)  # loads the model once, at construction
    assert actor.worker.model.compiled and fake_compile.calls > 0
    plain = local.make_worker(replace(spec, compile=False))
    assert not plain.load().compiled

    previous = get_host()
    try:
        workflow = local.make_worker(JobSpec(mode="workflow", out_dir=str(tmp_path / "wf"), device="cpu",
                                             workflow={}, compile=True))
        assert workflow.load().host.compile_models is True  # every Load Model node of the workflow compiles
    finally:
        set_host(previous)
