"""Textual inversion: embeddings per handle, without touching the shared tokenizers or embedding matrices.

A handle with embeddings carries its own copy of the tokenizer(s) with the added tokens (ids assigned exactly as
diffusers' ``load_textual_inversion`` assigns them: ``len(tokenizer)``, ``+1``, ...) and the vectors; the hooks
in ``state`` return those vectors for ids beyond the base vocabulary while that handle is active. Instructions use
``embedding:NAME`` (ComfyUI's syntax, with or without the file extension) or the token stored in the file.
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Mapping

import torch

from ..errors import IP2PError
from ..models import IP2PModel
from ..tensor_files import read_tensors, resolve_weights_file
from .state import EmbeddingRef, state_of

EMBEDDING_FILE_NAMES = ("learned_embeds.safetensors", "learned_embeds.bin")
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin", ".pth", ".ckpt")


class EmbeddingNotFoundWarning(UserWarning):
    """An instruction names ``embedding:NAME`` but the model has no such embedding; the word is left out, as
    ComfyUI does."""


def _as_matrix(t, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise IP2PError(f"{what} is not a tensor ({type(t).__name__}).")
    t = t.detach()
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or t.shape[0] < 1:
        raise IP2PError(f"{what} has shape {tuple(t.shape)}; an embedding is [vectors, width].")
    return t.to(torch.float32) if not t.is_floating_point() else t


def _parse_embedding(data, path: Path) -> tuple[str | None, dict]:
    """(token stored in the file or None, {"clip_l"/"clip_g"/None: [n, width] tensor})."""
    if isinstance(data, torch.Tensor):
        return None, {None: _as_matrix(data, str(path))}
    if not isinstance(data, Mapping) or not data:
        raise IP2PError(f"{path} is not a textual-inversion embedding (it holds {type(data).__name__}).")
    if "clip_l" in data or "clip_g" in data:  # SDXL embeddings
        return None, {k: _as_matrix(data[k], f"{path} [{k}]") for k in ("clip_l", "clip_g") if k in data}
    if "string_to_param" in data:  # A1111
        params = data["string_to_param"]
        params = dict(params.items()) if hasattr(params, "items") else None  # a dict, or an old ParameterDict
        if params:
            vec = params.get("*", next(iter(params.values())))
        else:
            raise IP2PError(f"{path}: 'string_to_param' holds no vectors.")
        name = data.get("name")
        return (name if isinstance(name, str) and name else None), {None: _as_matrix(vec, str(path))}
    if "emb_params" in data:  # A1111 .safetensors
        return None, {None: _as_matrix(data["emb_params"], str(path))}
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if len(tensors) == 1:  # diffusers learned_embeds: {token: vector(s)}
        token, vec = next(iter(tensors.items()))
        return token, {None: _as_matrix(vec, str(path))}
    if any("lora" in str(k) for k in data):
        raise IP2PError(f"{path} is a LoRA file, not an embedding: apply it with apply_lora / --lora.")
    raise IP2PError(
        f"{path} is not a textual-inversion embedding this program knows (keys: {', '.join(map(str, list(data)[:5]))}). "
        "Known layouts: A1111 ('string_to_param'), diffusers ({token: tensor}), SDXL ('clip_l'/'clip_g'), raw tensor."
    )


def _norm_name(name: str) -> str:
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in EMBEDDING_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.casefold()


def _usable_token(token: str | None, tokenizers) -> bool:
    if not token or not re.fullmatch(r"\S+", token) or token.startswith("embedding:"):
        return False
    return all(token not in t.get_vocab() and f"{token}_1" not in t.get_vocab() for t in tokenizers)


def apply_embedding(model: IP2PModel, path: str | os.PathLike, name: str | None = None) -> IP2PModel:
    """A new handle whose instructions may use the textual-inversion embedding at ``path``.

    Use it as ``embedding:NAME`` (``name`` defaults to the file name without extension; the extension may be
    written or left out) or by the token stored in the file. Formats: A1111 .pt/.safetensors, diffusers
    learned_embeds.bin/.safetensors, raw tensors, multi-vector, SDXL clip_l/clip_g. Pickles are read weights-only.
    Neither the shared tokenizers nor the text encoders change.
    """
    p = resolve_weights_file(path, EMBEDDING_FILE_NAMES, "embedding")
    data, _ = read_tensors(p, "embedding", nested=True)
    file_token, parts = _parse_embedding(data, p)
    name = name if name else (p.parent.name if p.name in EMBEDDING_FILE_NAMES else p.stem)
    key = _norm_name(name)
    for ref in model.embeddings:
        if _norm_name(ref.name) == key:
            if ref.source == str(p):
                return model
            raise IP2PError(f"This model already has an embedding named {ref.name!r} (from {ref.source}); pass another name.")

    widths = [int(te.get_input_embeddings().weight.shape[1]) for te in model.text_encoders]
    per_encoder: list[torch.Tensor | None] = [None] * len(widths)
    if None in parts:
        vec = parts[None]
        per_encoder = [vec if vec.shape[1] == w else None for w in widths]
    else:
        order = ("clip_l", "clip_g")
        for i in range(len(widths)):
            vec = parts.get(order[i]) if i < len(order) else None
            if vec is None and i == 0 and len(widths) == 1:
                vec = parts.get("clip_l")
            if vec is not None and vec.shape[1] == widths[i]:
                per_encoder[i] = vec
            elif vec is not None:
                raise IP2PError(
                    f"{p}: its {order[i]} vectors have width {vec.shape[1]}, this model's text encoder {i + 1} "
                    f"takes {widths[i]}. The embedding was made for another model."
                )
    if all(v is None for v in per_encoder):
        have = ", ".join(f"{k or 'vectors'}: width {v.shape[1]}" for k, v in parts.items())
        raise IP2PError(
            f"{p} does not fit {model.family.label}: the embedding has {have}, the text encoder(s) take "
            f"{', '.join(map(str, widths))}. It was made for another model."
        )

    tokenizers = [t for t, v in zip(model.tokenizers, per_encoder) if v is not None]
    token = file_token if _usable_token(file_token, tokenizers) else None
    if token is None:
        base = re.sub(r"\s+", "_", name)
        token = f"<{base}>"
        i = 1
        while not _usable_token(token, tokenizers):
            token, i = f"<{base}-{i}>", i + 1
    new_tokenizers = list(model.tokenizers)
    ids: list[tuple[int, ...] | None] = []
    vectors: list[torch.Tensor | None] = []
    for i, vec in enumerate(per_encoder):
        if vec is None:
            ids.append(None)
            vectors.append(None)
            continue
        tok = copy.deepcopy(model.tokenizers[i])
        start = len(tok)
        got = []
        for t in [token] + [f"{token}_{j}" for j in range(1, vec.shape[0])]:
            tok.add_tokens(t)
            got.append(tok.convert_tokens_to_ids(t))
        if got != list(range(start, start + len(got))):
            raise IP2PError(f"{p}: the tokenizer gave unexpected ids {got} for the embedding's tokens.")
        prev = [r.ids[i] for r in model.embeddings if r.ids[i] is not None]
        if prev and prev[-1][-1] + 1 != start:
            raise IP2PError("This handle's tokenizer was changed outside apply_embedding; its token ids are not contiguous.")
        new_tokenizers[i] = tok
        ids.append(tuple(got))
        encoder = model.text_encoders[i]
        weight = encoder.get_input_embeddings().weight
        vectors.append(vec.to(device=weight.device, dtype=weight.dtype).contiguous())
    ref = EmbeddingRef(name=name, source=str(p), token=token, vectors=tuple(vectors), ids=tuple(ids))
    state = state_of(model)
    with state.lock:
        state.install_hooks(model)
    return replace(model, tokenizers=tuple(new_tokenizers), embeddings=model.embeddings + (ref,))


_EMBEDDING_RE = re.compile(r"embedding:([^\s,;()\[\]{}]+)")


def _find_embedding(model: IP2PModel, raw: str) -> tuple[EmbeddingRef | None, str]:
    """The embedding ``embedding:<raw>`` names, and the tail of ``raw`` that is not part of the name
    (trailing punctuation, or a ComfyUI weight such as ``:1.2``)."""
    candidates = [raw, raw.rstrip(".:!?"), raw.split(":", 1)[0], raw.split(":", 1)[0].rstrip(".!?")]
    for cand in candidates:
        key = _norm_name(cand)
        for ref in model.embeddings:
            if _norm_name(ref.name) == key:
                return ref, raw[len(cand):]
    return None, ""


def _maybe_convert_prompt(prompt: str, tokenizer) -> str:
    # Copied from diffusers.loaders.textual_inversion.TextualInversionLoaderMixin._maybe_convert_prompt
    tokens = tokenizer.tokenize(prompt)
    unique_tokens = set(tokens)
    for token in unique_tokens:
        if token in tokenizer.added_tokens_encoder:
            replacement = token
            i = 1
            while f"{token}_{i}" in tokenizer.added_tokens_encoder:
                replacement += f" {token}_{i}"
                i += 1
            prompt = prompt.replace(token, replacement)
    return prompt


def prepare_prompts(model: IP2PModel, texts: list[str], encoder: int) -> list[str]:
    """Texts as text encoder ``encoder`` of this handle reads them.

    Multi-vector tokens written directly are expanded as diffusers' ``maybe_convert_prompt`` does; then each
    ``embedding:NAME`` becomes the embedding's tokens (or nothing, for an encoder the embedding has no vectors for).
    """
    tokenizer = model.tokenizers[encoder]
    out = []
    for text in texts:
        if model.embeddings or len(tokenizer) > getattr(tokenizer, "vocab_size", len(tokenizer)):
            text = _maybe_convert_prompt(text, tokenizer)
        if "embedding:" in text:
            def repl(m: re.Match) -> str:
                ref, tail = _find_embedding(model, m.group(1))
                if ref is None:
                    if encoder == 0:
                        known = ", ".join(r.name for r in model.embeddings) or "none"
                        warnings.warn(
                            f"The instruction uses {m.group(0)!r}, but this model has no embedding of that name "
                            f"(applied: {known}); it is left out. Apply it first (apply_embedding, the Apply "
                            "Embedding node, or --embedding FILE).",
                            EmbeddingNotFoundWarning,
                            stacklevel=5,
                        )
                    return ""
                if tail.startswith(":"):  # a ComfyUI weight (embedding:name:1.2) is not supported: ignored
                    tail = ""
                if ref.vectors[encoder] is None:
                    return tail
                return " ".join(ref.tokens(len(ref.ids[encoder]))) + tail

            text = _EMBEDDING_RE.sub(repl, text)
        out.append(text)
    return out

