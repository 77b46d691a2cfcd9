"""Textual inversion: parity with diffusers' load_textual_inversion for every file layout (SD and SDXL), the
``embedding:NAME`` syntax, several embeddings in one instruction, non-destructive handles and clear errors.

Files are built from random vectors (tests/adapter_files.py); the engine's models are private (``cache=None``) and
each test that loads embeddings into diffusers builds its own pipeline (diffusers changes the tokenizer in place).
"""

from __future__ import annotations

import pytest
import torch

import adapter_files as af
from ipx2p_core import IP2PError, apply_embedding, encode_instruction, load_model
from ipx2p_core.adapters import EmbeddingNotFoundWarning
from parity_helpers import max_diff
from test_lora import new_pipeline, ours, theirs

TOL = 1e-4


@pytest.fixture(scope="module")
def sd_model(tiny_sd):
    return load_model(tiny_sd["folder"], cache=None)


@pytest.fixture(scope="module")
def xl_model(tiny_sdxl):
    return load_model(tiny_sdxl["folder"], cache=None)


def test_every_layout_and_several_embeddings_match_diffusers_sd(sd_model, tiny_sd, tmp_path, photo):
    v = lambda n, seed: af.random_vectors(32, n, seed)  # noqa: E731
    files = [  # (file, token diffusers is given or None for the stored one, token to write in the prompt)
        (af.write_embedding(tmp_path / "painterly.pt", "a1111_pt", v(3, 1), token="painterly-style"), None),
        (af.write_embedding(tmp_path / "glow.safetensors", "a1111_safetensors", v(1, 2)), "<glow>"),
        (af.write_embedding(tmp_path / "ink" / "learned_embeds.bin", "diffusers_bin", v(1, 3), token="<ink>"), None),
        (af.write_embedding(tmp_path / "neon.safetensors", "diffusers_safetensors", v(2, 4), token="<neon>"), None),
        (af.write_embedding(tmp_path / "grain.pt", "raw_pt", v(4, 5)), "<grain>"),
    ]
    handle = sd_model
    for path, _ in files:
        handle = apply_embedding(handle, path.parent if path.name == "learned_embeds.bin" else path)
    assert [e.token for e in handle.embeddings] == ["painterly-style", "<glow>", "<ink>", "<neon>", "<grain>"]
    assert [e.ids[0] for e in handle.embeddings] == [(49408, 49409, 49410), (49411,), (49412,), (49413, 49414),
                                                     (49415, 49416, 49417, 49418)]
    pipe = new_pipeline(tiny_sd["folder"], "sd15")
    for path, token in files:
        pipe.load_textual_inversion(str(path), token=token) if token else pipe.load_textual_inversion(str(path))
    ours_prompt = "embedding:painterly.pt winter, embedding:glow with embedding:ink and <neon>, embedding:grain."
    their_prompt = "painterly-style winter, <glow> with <ink> and <neon>, <grain>."
    got = ours(handle, photo, ours_prompt, negative="embedding:neon, blurry")
    ref = theirs(pipe, photo, their_prompt, negative="<neon>, blurry")
    assert max_diff(ref, got) <= TOL
    assert max_diff(got, ours(sd_model, photo, "painterly winter")) > 1e-2
    # the stored token works as well as embedding:NAME, multi-vector tokens expand the same way
    assert max_diff(ours(handle, photo, their_prompt, negative="<neon>, blurry"), got) == 0


def test_sdxl_clip_l_clip_g_and_single_encoder_embeddings_match_diffusers(xl_model, tiny_sdxl, tmp_path, photo):
    from safetensors.torch import load_file

    both = af.write_embedding(tmp_path / "frost.safetensors", "sdxl", clip_l=af.random_vectors(32, 2, 1),
                              clip_g=af.random_vectors(40, 2, 2))
    only_l = af.write_embedding(tmp_path / "moss.pt", "a1111_pt", af.random_vectors(32, 1, 3), token="<moss>")
    handle = apply_embedding(apply_embedding(xl_model, both), only_l)
    frost, moss = handle.embeddings
    assert frost.ids == ((49408, 49409), (49408, 49409)) and moss.ids == ((49410,), None)
    pipe = new_pipeline(tiny_sdxl["folder"], "sdxl")
    sd = load_file(str(both))
    pipe.load_textual_inversion(sd["clip_l"], token="<frost>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(sd["clip_g"], token="<frost>", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    pipe.load_textual_inversion(str(only_l), text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    got = ours(handle, photo, "make it embedding:frost and <moss>", negative="embedding:frost")
    ref = theirs(pipe, photo, "make it <frost> and <moss>", negative="<frost>")
    assert max_diff(ref, got) <= TOL
    # embedding:NAME drops an embedding from an encoder it has no vectors for (as ComfyUI does)
    cond = encode_instruction(handle, "embedding:moss")
    assert torch.equal(cond.embeds[..., 32:], encode_instruction(xl_model, "").embeds[..., 32:])


def test_embedding_handles_never_change_the_shared_tokenizer_or_encoder(sd_model, tmp_path, photo):
    embedding = sd_model.text_encoders[0].get_input_embeddings()
    weight = embedding.weight.detach().clone()
    base_out = ours(sd_model, photo)
    path = af.write_embedding(tmp_path / "fog.safetensors", "diffusers_safetensors", af.random_vectors(32, 2, 9),
                              token="<fog>")
    handle = apply_embedding(sd_model, path)
    other = apply_embedding(sd_model, path, name="mist")
    assert handle.tokenizers[0] is not sd_model.tokenizers[0] and len(sd_model.tokenizers[0]) == 49408
    assert ours(handle, photo, "embedding:fog") is not None and ours(other, photo, "embedding:mist") is not None
    assert embedding.num_embeddings == 49408 and torch.equal(embedding.weight, weight)
    assert max_diff(ours(sd_model, photo), base_out) == 0
    assert max_diff(ours(handle, photo, "embedding:fog"), ours(other, photo, "embedding:mist")) == 0
    assert apply_embedding(handle, path) is handle  # the same file under the same name: nothing to do
    with pytest.raises(IP2PError, match="already has an embedding named 'fog'"):
        apply_embedding(handle, af.write_embedding(tmp_path / "x" / "fog.pt", "raw_pt", af.random_vectors(32, 1, 1)))


def test_embedding_errors(sd_model, tmp_path):
    good = af.write_embedding(tmp_path / "ok.pt", "raw_pt", af.random_vectors(32, 1, 1))
    handle = apply_embedding(sd_model, good)
    # an unknown embedding:NAME is left out with a warning, as ComfyUI does
    with pytest.warns(EmbeddingNotFoundWarning, match=r"uses 'embedding:nothere'.*no embedding of that name \(applied: ok\)"):
        cond = encode_instruction(handle, "a embedding:nothere b")
    assert torch.equal(cond.embeds, encode_instruction(handle, "a  b").embeds)
    with pytest.warns(EmbeddingNotFoundWarning, match="no embedding of that name"):
        encode_instruction(sd_model, "embedding:ok")
    wide = af.write_embedding(tmp_path / "wide.pt", "raw_pt", af.random_vectors(40, 1, 1))
    with pytest.raises(IP2PError, match=r"width 40.*take 32"):
        apply_embedding(sd_model, wide)
    evil = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": torch.zeros(1, 32)}, "name": "x", "hook": torch.nn.Linear(1, 1)}, evil)
    with pytest.raises(IP2PError, match="Refusing to load embedding"):
        apply_embedding(sd_model, evil)
    cut = tmp_path / "cut.safetensors"
    full = af.write_embedding(tmp_path / "full.safetensors", "diffusers_safetensors", af.random_vectors(32, 8, 1))
    cut.write_bytes(full.read_bytes()[:100])
    with pytest.raises(IP2PError, match="truncated or corrupt"):
        apply_embedding(sd_model, cut)
    old = tmp_path / "old.pt"  # textual_inversion's original format: a ParameterDict (weights-only loadable)
    torch.save({"string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.zeros(2, 32))}),
                "name": "oldtok"}, old)
    assert apply_embedding(sd_model, old).embeddings[0].token == "oldtok"
