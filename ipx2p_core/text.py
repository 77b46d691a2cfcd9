"""Instruction encoding: CLIP-L for SD 1.5; CLIP-L + OpenCLIP bigG, pooled embedding for SDXL / CosXL.

Prompts longer than the encoders' 77-token window are truncated, as diffusers and the original repo do, with a
warning naming the dropped words (chunking would change the model's conditioning and break parity). Only a start of
the text large enough to fill the window is tokenized, and text over ``defaults.MAX_INSTRUCTION_CHARS`` is refused
up front, so the work per instruction is bounded (tokenizing cannot be interrupted).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch

from . import adapters, defaults
from .errors import IP2PError
from .families import LAST_STATE
from .models import IP2PModel

log = logging.getLogger(__name__)


class PromptTruncatedWarning(UserWarning):
    """An instruction did not fit the text encoder's 77-token window; the tail was dropped."""


@dataclass(frozen=True, eq=False)
class Conditioning:
    """Encoded instructions, one row per instruction, plus the matching negative rows.

    SDXL adds pooled embeddings. ``negative_is_zero`` records diffusers' rule that an SDXL model with no negative
    instruction uses all-zero negative embeddings.
    """

    embeds: torch.Tensor
    negative_embeds: torch.Tensor
    pooled: torch.Tensor | None
    negative_pooled: torch.Tensor | None
    instructions: tuple[str, ...]
    negatives: tuple[str, ...]
    family: str

    @property
    def batch_size(self) -> int:
        return int(self.embeds.shape[0])


def _as_list(value: str | Sequence[str] | None, name: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    items = list(value)
    if not items or not all(isinstance(v, str) for v in items):
        raise IP2PError(f"{name} must be a string or a non-empty list of strings, got {value!r}.")
    return items


_HEAD_CHARS = 1024  # first try at a start of text that fills 77 tokens (a token is ~4 characters of English)
_WHITESPACE = " \t\n\r"
_DROPPED_SHOWN = 200  # characters of the dropped text the warning quotes


def check_instruction(text: str, name: str = "instruction") -> None:
    """Refuse an instruction longer than ``defaults.MAX_INSTRUCTION_CHARS`` (before any work is spent on it)."""
    if isinstance(text, str) and len(text) > defaults.MAX_INSTRUCTION_CHARS:
        raise IP2PError(f"The {name} is {len(text):,} characters long; the limit is "
                        f"{defaults.MAX_INSTRUCTION_CHARS:,}. The text encoder reads only its first 77 tokens "
                        "(about 300 characters), so shorten it.")


def _visible_head(tokenizer, text: str, max_len: int) -> str:
    """The shortest whole-word start of ``text`` whose tokens overfill the encoder's window, or the whole text.

    CLIP's tokenizer splits text into pieces that never span whitespace and encodes each piece alone, so every token
    before a cut at whitespace is the token the whole text gives: tokenizing the head yields exactly the window
    diffusers gets from the whole text, at a cost bounded by the window instead of the text's length."""
    size = _HEAD_CHARS
    while size < len(text):
        cut = max(text.rfind(c, 0, size) for c in _WHITESPACE)
        if cut > 0 and len(tokenizer(text[:cut]).input_ids) > max_len:
            return text[:cut]
        size *= 2
    return text


def _tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    max_len = tokenizer.model_max_length
    heads = [_visible_head(tokenizer, text, max_len) for text in texts]
    ids = tokenizer(heads, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt").input_ids
    for text, head, toks in zip(texts, heads, tokenizer(heads, padding=False, truncation=False).input_ids):
        if len(toks) > max_len:
            dropped = tokenizer.decode(toks[max_len - 1 : -1]) + text[len(head):]
            count = f"{len(toks)}" if head is text else f"more than {len(toks)}"
            shown = dropped if len(dropped) <= _DROPPED_SHOWN else \
                f"{dropped[:_DROPPED_SHOWN]}… ({len(dropped) - _DROPPED_SHOWN:,} more characters)"
            warnings.warn(
                f"Instruction longer than {max_len} tokens ({count}); the text encoder only sees the start. "
                f"Dropped: {shown!r}",
                PromptTruncatedWarning,
                stacklevel=3,
            )
    return ids


def _encode_last_state(model: IP2PModel, texts: list[str]) -> torch.Tensor:
    """SD 1.5: the single CLIP-L encoder's last hidden state."""
    (tokenizer,), (encoder,) = model.tokenizers, model.text_encoders
    ids = _tokenize(tokenizer, adapters.prepare_prompts(model, texts, 0)).to(model.device)
    mask = None
    if getattr(encoder.config, "use_attention_mask", False):
        mask = (ids != tokenizer.pad_token_id).long()
    return encoder(ids, attention_mask=mask)[0].to(model.dtype)


def _encode_penultimate_pooled(model: IP2PModel, texts: list[str],
                               texts_2: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL: every encoder's penultimate hidden state, concatenated, and the projection encoder's pooled embedding."""
    states, pooled = [], None
    for i, (tokenizer, encoder, batch) in enumerate(zip(model.tokenizers, model.text_encoders, (texts, texts_2))):
        batch = adapters.prepare_prompts(model, batch, i)
        out = encoder(_tokenize(tokenizer, batch).to(model.device), output_hidden_states=True)
        if out[0].ndim == 2:  # the projection encoder's first output is the pooled text embedding
            pooled = out[0]
        states.append(out.hidden_states[-2])
    dtype = model.text_encoders[-1].dtype
    return torch.cat(states, dim=-1).to(dtype), pooled.to(dtype)


def encode_instruction(
    model: IP2PModel,
    instruction: str | Sequence[str],
    negative: str | Sequence[str] | None = None,
    *,
    instruction_2: str | Sequence[str] | None = None,
    negative_2: str | Sequence[str] | None = None,
) -> Conditioning:
    """Encode one or more instructions and their negative instruction(s).

    An empty negative means "none": SD 1.5 encodes the empty string (as diffusers does), SDXL models with
    ``force_zeros_for_empty_prompt`` use zeros (as diffusers does). ``instruction_2`` / ``negative_2`` feed the
    second SDXL encoder and default to the first ones.
    """
    texts = _as_list(instruction, "instruction")
    if texts is None:
        raise IP2PError("An instruction is needed (for example 'make it winter').")
    negs = _as_list(negative, "negative instruction")
    negative_2 = _as_list(negative_2, "negative_2")
    for values, name in ((texts, "instruction"), (negs, "negative instruction"),
                         (_as_list(instruction_2, "instruction_2"), "instruction_2"), (negative_2, "negative_2")):
        for text in values or ():
            check_instruction(text, name)
    if negs is None or all(n == "" for n in negs):
        negs = None
    if negs is not None and len(negs) == 1 and len(texts) > 1:
        negs = negs * len(texts)
    if negs is not None and len(negs) != len(texts):
        raise IP2PError(f"Got {len(texts)} instructions but {len(negs)} negative instructions; give one or the same number.")
    texts_2 = _as_list(instruction_2, "instruction_2") or texts
    if len(texts_2) != len(texts):
        raise IP2PError(f"instruction_2 has {len(texts_2)} entries for {len(texts)} instructions.")

    with adapters.active(model), torch.inference_mode():  # this handle's LoRAs and embeddings, under the model's lock
        if model.family.text_recipe == LAST_STATE:
            rows = _encode_last_state(model, texts + (negs or [""] * len(texts)))
            embeds, neg_embeds = rows[: len(texts)], rows[len(texts) :]
            pooled = neg_pooled = None
        else:  # PENULTIMATE_POOLED (register() accepts no other recipe)
            embeds, pooled = _encode_penultimate_pooled(model, texts, texts_2)
            if negs is None and model.force_zeros_for_empty_prompt:
                neg_embeds, neg_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
            else:
                neg_list = negs or [""] * len(texts)
                neg_2 = _as_list(negative_2, "negative_2") or neg_list
                neg_embeds, neg_pooled = _encode_penultimate_pooled(model, neg_list, neg_2)
    return Conditioning(
        embeds=embeds,
        negative_embeds=neg_embeds,
        pooled=pooled,
        negative_pooled=neg_pooled,
        instructions=tuple(texts),
        negatives=tuple(negs or [""] * len(texts)),
        family=model.family.name,
    )
