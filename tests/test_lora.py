"""LoRA: parity with diffusers' load_lora_weights + set_adapters in every file layout, stacking, non-destructive
branches, no compounding text-encoder scale, clear errors, saving a stack and a merged model, and the CLI flags.

Every test builds its LoRA files from random weights (tests/adapter_files.py). The engine's base models are private
(``cache=None``) and the diffusers pipelines are this module's own, so nothing leaks into other test modules.
"""

from __future__ import annotations

import contextlib
import json
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import adapter_files as af
from ipx2p_core import IP2PError, apply_embedding, apply_lora, encode_instruction, load_model, save_lora_stack
from ipx2p_core.adapters import LoraKeyWarning, save_merged_model, state_of
from ipx2p_core.schedulers import make_scheduler
from parity_helpers import max_diff, run_engine

TOL = 1e-4
PROMPT = "make it winter"
RUN = dict(steps=2, g_text=7.5, g_image=1.5, scheduler="euler_a", seed=3)


def ours(model, photo, prompt=PROMPT, **kw):
    return run_engine(model, photo, prompt, **{**RUN, **kw})


def theirs(pipe, photo, prompt=PROMPT, negative=None, **extra):
    pipe.scheduler = make_scheduler("euler_a", pipe.base_scheduler_config)
    kwargs = dict(image=photo, num_inference_steps=RUN["steps"], guidance_scale=RUN["g_text"],
                  image_guidance_scale=RUN["g_image"], negative_prompt=negative,
                  generator=torch.Generator("cpu").manual_seed(RUN["seed"]), output_type="np", **extra)
    if hasattr(pipe, "text_encoder_2"):
        w, h = photo.size
        kwargs.update(height=h - h % 2, width=w - w % 2)
    return pipe(prompt, **kwargs).images


def new_pipeline(folder, family):
    from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionXLInstructPix2PixPipeline

    if family == "sd15":
        pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(folder, safety_checker=None)
    else:
        pipe = StableDiffusionXLInstructPix2PixPipeline.from_pretrained(folder, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.base_scheduler_config = dict(pipe.scheduler.config)
    return pipe


@pytest.fixture(scope="module")
def sd(tiny_sd):
    return dict(tiny_sd, model=load_model(tiny_sd["folder"], cache=None), pipe=new_pipeline(tiny_sd["folder"], "sd15"))


@pytest.fixture(scope="module")
def xl(tiny_sdxl):
    return dict(tiny_sdxl, model=load_model(tiny_sdxl["folder"], cache=None),
                pipe=new_pipeline(tiny_sdxl["folder"], "sdxl"))


@contextlib.contextmanager
def diffusers_loras(pipe, *loras):
    """loras: (file or dict, adapter name, {component: weight}); always unloaded afterwards."""
    try:
        for source, name, _ in loras:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                pipe.load_lora_weights(source if isinstance(source, dict) else str(source), adapter_name=name)
        pipe.set_adapters([n for _, n, _ in loras], adapter_weights=[w for *_, w in loras])
        yield pipe
    finally:
        pipe.unload_lora_weights()


def weights(fx, unet, text, has_text=True):
    w = {"unet": unet}
    if has_text:
        w["text_encoder"] = text
        if fx["family"] != "sd15":
            w["text_encoder_2"] = text
    return w


# ------------------------------------------------------------------------------------------------- parity


FORMATS = [
    ("sd", "kohya", ".safetensors"),
    ("sd", "peft", ".safetensors"),
    ("sd", "old", ".bin"),
    ("sd", "ip2p", ".safetensors"),
    ("sd", "peft_raw", ".bin"),
    ("xl", "kohya", ".safetensors"),
    ("xl", "peft", ".safetensors"),
    ("xl", "old", ".safetensors"),
]


def _write_format(fx, lora, fmt, suffix, tmp_path):
    xl = fx["family"] != "sd15"
    sd = {
        "kohya": lambda: af.to_kohya(lora, sdxl=xl, unet=fx["model"].unet),
        "peft": lambda: af.to_peft(lora),
        "old": lambda: af.to_old(lora),
        "ip2p": lambda: af.to_ip2p_script(lora),
        "peft_raw": lambda: af.to_peft_raw(lora),
    }[fmt]()
    path = af.write(sd, tmp_path / f"{fmt}{suffix}")
    # diffusers reads only component-prefixed keys: give it the prefixed twin of a bare UNet file
    for_diffusers = {f"unet.{k}": v for k, v in sd.items()} if fmt == "peft_raw" else path
    return path, for_diffusers


@pytest.mark.parametrize("which,fmt,suffix", FORMATS, ids=[f"{w}-{f}" for w, f, _ in FORMATS])
def test_lora_file_layouts_match_diffusers(request, tmp_path, photo, which, fmt, suffix):
    fx = request.getfixturevalue(which)
    text = fmt not in ("ip2p", "peft_raw")
    lora = af.random_lora(fx["model"], seed=11, alpha=2.0 if fmt == "kohya" else None, text=text)
    path, for_diffusers = _write_format(fx, lora, fmt, suffix, tmp_path)
    handle = apply_lora(fx["model"], path, 0.8, 0.5)
    got = ours(handle, photo)
    with diffusers_loras(fx["pipe"], (for_diffusers, "a", weights(fx, 0.8, 0.5, text))) as pipe:
        ref = theirs(pipe, photo)
    assert max_diff(ref, got) <= TOL
    assert max_diff(ours(fx["model"], photo), got) > 1e-2  # the LoRA does something


@pytest.mark.parametrize("which", ["sd", "xl"])
def test_two_loras_with_their_own_strengths_match_diffusers(request, tmp_path, photo, which):
    fx = request.getfixturevalue(which)
    xl = which == "xl"
    a = af.write(af.to_kohya(af.random_lora(fx["model"], seed=1, alpha=2.0), xl, fx["model"].unet), tmp_path / "a.safetensors")
    b = af.write(af.to_peft(af.random_lora(fx["model"], seed=2, rank=8)), tmp_path / "b.safetensors")
    handle = apply_lora(apply_lora(fx["model"], a, 0.7, 0.4), b, -0.3, 1.2)
    assert [r.strength_model for r in handle.loras] == [0.7, -0.3]
    got = ours(handle, photo, negative="blurry")
    with diffusers_loras(fx["pipe"], (a, "a", weights(fx, 0.7, 0.4)), (b, "b", weights(fx, -0.3, 1.2))) as pipe:
        ref = theirs(pipe, photo, negative="blurry")
    assert max_diff(ref, got) <= TOL


# ------------------------------------------------------------------------------------- branches and sharing


def test_branches_in_any_order_share_the_base_weights(tiny_sd, tmp_path, photo):
    model = load_model(tiny_sd["folder"], cache=None)
    base_before = ours(model, photo)
    params_before = sum(p.numel() for p in model.unet.parameters())
    a = af.write(af.to_kohya(af.random_lora(model, seed=1, alpha=2.0), False), tmp_path / "a.safetensors")
    b = af.write(af.to_peft(af.random_lora(model, seed=2)), tmp_path / "b.safetensors")
    emb = af.write_embedding(tmp_path / "snow.pt", "a1111_pt", af.random_vectors(32, 2, seed=4), token="snowy")
    branches = {
        "base": model,
        "a": apply_lora(model, a, 0.8, 1.0),
        "b": apply_lora(model, b, 1.0, 0.6),
        "emb": apply_embedding(model, emb),
    }
    prompts = {"base": PROMPT, "a": PROMPT, "b": PROMPT, "emb": "make it embedding:snow winter"}
    for h in branches.values():  # one set of modules, no copies
        assert h.unet is model.unet and h.text_encoders[0] is model.text_encoders[0] and h.vae is model.vae
    added = sum(p.numel() for p in model.unet.parameters()) - params_before
    lora_sizes = sum(t.numel() for f in (a, b) for k, t in _unet_tensors(f).items() if "lora" in k)
    assert 0 < added <= lora_sizes  # base + adapter sizes only

    first = {k: ours(h, photo, prompts[k]) for k, h in branches.items()}
    assert all(max_diff(first["base"], first[k]) > 1e-2 for k in ("a", "b", "emb"))
    assert max_diff(first["a"], first["b"]) > 1e-2
    order = ["a", "base", "emb", "b", "a", "emb", "base", "b", "b", "a"]
    for k in order + order[::-1]:
        assert np.array_equal(ours(branches[k], photo, prompts[k]), first[k]), k
    # concurrently, from several threads: each branch still gets exactly its own adapters
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda k: (k, ours(branches[k], photo, prompts[k])), order))
    for k, out in results:
        assert np.array_equal(out, first[k]), k
    assert np.array_equal(ours(model, photo), base_before)
    assert len(model.tokenizers[0]) == 49408 and model.text_encoders[0].get_input_embeddings().num_embeddings == 49408


def _unet_tensors(path):
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(path)).items() if "unet" in k}


def test_same_file_is_injected_once_and_strengths_add(sd, tmp_path):
    path = af.write(af.to_peft(af.random_lora(sd["model"], seed=7)), tmp_path / "same.safetensors")
    state = state_of(sd["model"])
    h1 = apply_lora(sd["model"], path, 0.5, 0.25)
    n = len(state.injected)
    h2 = apply_lora(h1, path, 0.25, 0.25)
    h3 = apply_lora(sd["model"], path)
    assert len(state.injected) == n
    assert len(h2.loras) == 1 and (h2.loras[0].strength_model, h2.loras[0].strength_text) == (0.75, 0.5)
    assert h1.loras[0].adapter == h3.loras[0].adapter
    assert "1 LoRA" in h2.describe() and sd["model"].loras == ()
    with pytest.raises(IP2PError, match="finite number"):
        apply_lora(sd["model"], path, float("nan"))


def test_sdxl_text_encoder_scale_does_not_compound(xl, tmp_path, photo):
    """diffusers' SDXL pipeline multiplies the text-encoder LoRA scale on every call (0.5, 0.25, 0.125); ours not."""
    path = af.write(af.to_peft(af.random_lora(xl["model"], seed=5)), tmp_path / "c.safetensors")
    handle = apply_lora(xl["model"], path, 0.5, 0.5)
    conds = [encode_instruction(handle, PROMPT, "blurry") for _ in range(3)]
    for c in conds[1:]:
        assert torch.equal(c.embeds, conds[0].embeds) and torch.equal(c.pooled, conds[0].pooled)
        assert torch.equal(c.negative_embeds, conds[0].negative_embeds)
    outs = [ours(handle, photo) for _ in range(3)]
    assert np.array_equal(outs[0], outs[2])
    pipe = xl["pipe"]
    try:
        pipe.load_lora_weights(str(path), adapter_name="c")
        refs = [theirs(pipe, photo, cross_attention_kwargs={"scale": 0.5}) for _ in range(3)]
    finally:
        pipe.unload_lora_weights()
    assert max_diff(refs[0], outs[0]) <= TOL  # same as diffusers' first call
    assert max_diff(refs[2], outs[2]) > 1e-3  # diffusers' third call has drifted (text scale 0.125)


# --------------------------------------------------------------------------------------------------- errors


def test_sdxl_lora_on_sd_model_and_the_reverse(sd, xl, tmp_path):
    xl_file = af.write(af.to_kohya(af.random_lora(xl["model"], seed=1), True, xl["model"].unet), tmp_path / "xl.safetensors")
    sd_file = af.write(af.to_kohya(af.random_lora(sd["model"], seed=1), False), tmp_path / "sd.safetensors")
    with pytest.raises(IP2PError, match=r"is an SDXL LoRA .* but the model is SD 1\.5 InstructPix2Pix"):
        apply_lora(sd["model"], xl_file)
    with pytest.raises(IP2PError, match=r"is an SD 1\.x LoRA .* but the model is SDXL InstructPix2Pix"):
        apply_lora(xl["model"], sd_file)
    # a UNet-only diffusers-format file: recognised by its cross-attention width
    unet_only = af.write(af.to_peft(af.random_lora(xl["model"], seed=1, text=False)), tmp_path / "xl_unet.safetensors")
    with pytest.raises(IP2PError, match=r"cross-attention width 72.*SD 1\.5 InstructPix2Pix \(cross-attention width 32\)"):
        apply_lora(sd["model"], unet_only)


def test_keys_that_mostly_match_nothing_fail_and_a_few_warn(sd, tmp_path):
    sd_lora = af.to_peft(af.random_lora(sd["model"], seed=3, text=False))  # 48 UNet layers
    layers = sorted({k.rsplit(".lora_", 1)[0] for k in sd_lora})
    renamed = lambda ks: {(k.replace("unet.", "unet.extra_blocks.", 1) if k.rsplit(".lora_", 1)[0] in ks else k): v  # noqa: E731
                          for k, v in sd_lora.items()}
    mostly = af.write(renamed(set(layers[:40])), tmp_path / "mostly.safetensors")
    with pytest.raises(IP2PError, match=r"only 8 of its 48 LoRA layers match"):
        apply_lora(sd["model"], mostly)
    few = af.write(renamed(set(layers[:3])), tmp_path / "few.safetensors")
    with pytest.warns(LoraKeyWarning, match=r"3 of its 48 LoRA layers match no layer"):
        handle = apply_lora(sd["model"], few)
    assert handle.loras[0].components == ("unet",)


@pytest.mark.parametrize("kind,suffixes", [("LoHa", ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")),
                                           ("LoKr", ("lokr_w1", "lokr_w2"))])
def test_lycoris_types_are_not_supported(sd, tmp_path, kind, suffixes):
    key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    data = {f"{key}.{s}": torch.randn(4, 4) for s in suffixes}
    data[f"{key}.alpha"] = torch.tensor(4.0)
    path = af.write(data, tmp_path / f"{kind}.safetensors")
    with pytest.raises(IP2PError, match=f"LyCORIS {kind}.*not supported"):
        apply_lora(sd["model"], path)


def test_corrupt_unsafe_and_wrong_files(sd, tiny_sd, tmp_path):
    good = af.write(af.to_peft(af.random_lora(sd["model"], seed=3)), tmp_path / "good.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(IP2PError, match="truncated or corrupt"):
        apply_lora(sd["model"], cut)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(IP2PError, match="truncated, corrupt or not a LoRA"):
        apply_lora(sd["model"], junk)
    evil = tmp_path / "evil.bin"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(1), "x": threading.Lock.__name__, "f": np.float64}, evil)
    with pytest.raises(IP2PError, match="Refusing to load LoRA"):
        apply_lora(sd["model"], evil)
    with pytest.raises(IP2PError, match="full model checkpoint"):
        apply_lora(sd["model"], tiny_sd["file"])
    with pytest.raises(IP2PError, match="LoRA file not found"):
        apply_lora(sd["model"], tmp_path / "missing.safetensors")
    assert not any(sd["model"].loras)


def test_lora_for_a_4_channel_conv_in_applies_to_the_noise_channels(sd, tmp_path, photo):
    """A LoCon trained on plain SD 1.5 changes conv_in for 4 channels; IP2P's conv_in takes 8 (noise + image)."""
    lora = af.random_lora(sd["model"], seed=9, conv_in=4, text=False)
    path = af.write(af.to_peft(lora), tmp_path / "locon.safetensors")
    with pytest.warns(LoraKeyWarning, match="noise-latent channels only"):
        handle = apply_lora(sd["model"], path, 0.9)
    padded = af.to_peft(lora)
    a = padded["unet.conv_in.lora_A.weight"]
    padded["unet.conv_in.lora_A.weight"] = torch.cat([a, torch.zeros_like(a)], dim=1)
    with diffusers_loras(sd["pipe"], (padded, "p", {"unet": 0.9})) as pipe:
        ref = theirs(pipe, photo)
    assert max_diff(ref, ours(handle, photo)) <= TOL


# --------------------------------------------------------------------------------------------------- saving


@pytest.mark.parametrize("which", ["sd", "xl"])
def test_saved_lora_stack_reloads_to_the_same_output(request, tmp_path, photo, which):
    fx = request.getfixturevalue(which)
    a = af.write(af.to_kohya(af.random_lora(fx["model"], seed=1, alpha=2.0), which == "xl", fx["model"].unet),
                 tmp_path / "a.safetensors")
    b = af.write(af.to_peft(af.random_lora(fx["model"], seed=2, rank=8, text=False)), tmp_path / "b.safetensors")
    handle = apply_lora(apply_lora(fx["model"], a, 0.7, 0.4), b, -0.5, 0.0)
    stack = save_lora_stack(handle, tmp_path / "out" / "stack.safetensors")
    assert stack.name == "stack.safetensors" and stack.exists()
    got = ours(handle, photo)
    with diffusers_loras(fx["pipe"], (stack, "s", weights(fx, 1.0, 1.0))) as pipe:
        ref = theirs(pipe, photo)
    assert max_diff(ref, got) <= TOL
    assert max_diff(ours(apply_lora(fx["model"], stack), photo), got) <= TOL
    with pytest.raises(IP2PError, match="no LoRAs"):
        save_lora_stack(fx["model"], tmp_path / "none.safetensors")


@pytest.mark.parametrize("which", ["sd", "xl"])
def test_merged_model_as_diffusers_folder_and_single_file(request, tmp_path, photo, which):
    fx = request.getfixturevalue(which)
    lora = af.write(af.to_kohya(af.random_lora(fx["model"], seed=4, alpha=2.0), which == "xl", fx["model"].unet),
                    tmp_path / "l.safetensors")
    if which == "xl":  # SDXL layout, vectors for both encoders; the token is then <file name>
        emb = af.write_embedding(tmp_path / "ice.safetensors", "sdxl", clip_l=af.random_vectors(32, 2, seed=8),
                                 clip_g=af.random_vectors(40, 2, seed=9))
    else:
        emb = af.write_embedding(tmp_path / "ice.safetensors", "diffusers_safetensors",
                                 af.random_vectors(32, 2, seed=8), token="<ice>")
    handle = apply_embedding(apply_lora(fx["model"], lora, 0.8, 0.6), emb)
    prompt = "make it <ice> winter"  # the stored token: it is what a reloaded model knows
    got = ours(handle, photo, prompt)
    assert max_diff(got, ours(handle, photo, "make it embedding:ice winter")) == 0

    folder = save_merged_model(handle, tmp_path / "merged")
    reloaded = load_model(folder, cache=None)
    assert len(reloaded.tokenizers[0]) == 49410 and not reloaded.loras
    assert max_diff(ours(reloaded, photo, prompt), got) <= TOL
    ref = theirs(new_pipeline(folder, fx["family"]), photo, prompt)
    assert max_diff(ref, got) <= TOL

    lora_only = apply_lora(fx["model"], lora, 0.8, 0.6)
    with pytest.warns(UserWarning, match="embeddings .* are not stored"):
        save_merged_model(handle, tmp_path / "with_emb.safetensors", format="single_file")
    single = save_merged_model(lora_only, tmp_path / "merged.safetensors", format="single_file")
    want = ours(lora_only, photo)
    from_file = load_model(single, config=fx["config"], cache=None)
    assert max_diff(ours(from_file, photo), want) <= TOL
    assert fx["model"].unet.conv_in.weight.data_ptr() != from_file.unet.conv_in.weight.data_ptr()
    assert max_diff(ours(fx["model"], photo), ours(load_model(fx["folder"], cache=None), photo)) == 0


# ------------------------------------------------------------------------------------------------------ CLI


def test_cli_lora_and_embedding_flags(tiny_sd, tmp_path, photo, capsys):
    from PIL import Image

    from ipx2p_standalone.cli import main, parse_lora_argument

    model = load_model(tiny_sd["folder"], cache=None)
    lora = af.write(af.to_kohya(af.random_lora(model, seed=1, alpha=2.0), False), tmp_path / "warm:er.safetensors")
    emb = af.write_embedding(tmp_path / "frost.pt", "a1111_pt", af.random_vectors(32, 1, seed=3), token="frost")
    assert parse_lora_argument(f"{lora}:0.8:0.5") == (str(lora), 0.8, 0.5)
    assert parse_lora_argument(f"{lora}:-1") == (str(lora), -1.0, -1.0)
    assert parse_lora_argument(str(lora)) == (str(lora), 1.0, 1.0)
    src = tmp_path / "in.png"
    photo.save(src)
    out = tmp_path / "o.png"
    code = main(["edit", str(src), "make it embedding:frost", "-m", str(tiny_sd["folder"]), "-o", str(out), "-q",
                 "--steps", "2", "--lora", f"{lora}:0.8:0.5", "--embedding", str(emb)])
    assert code == 0, capsys.readouterr().err
    meta = json.loads(Image.open(out).text["ipx2p"])
    assert meta["loras"] == [{"file": "warm:er.safetensors", "path": str(lora), "strength_model": 0.8,
                              "strength_text": 0.5}]
    assert meta["embeddings"] == ["frost.pt"] and meta["embedding_paths"] == [str(emb)]
    assert main(["edit", str(src), "x", "-m", str(tiny_sd["folder"]), "-o", str(out), "-q",
                 "--lora", str(tmp_path / "nope.safetensors")]) == 2
    assert "LoRA file not found" in capsys.readouterr().err
