"""What every handle over one set of base modules shares, and switching those modules to one handle's adapters.

A handle records which LoRA adapters it uses, at what strengths, and which embeddings (``LoraRef``,
``EmbeddingRef``). :func:`active` switches the shared UNet and text encoders to exactly that set (``set_adapter`` +
``set_scale``, or adapters disabled) right before they run, under one lock per base model, so interleaved graph
branches are always right. Scales are set absolutely, never multiplied, so diffusers' SDXL text-encoder compounding
(0.5 -> 0.25 -> 0.125 over calls) cannot happen here. Embedding vectors reach the text encoders through a forward
hook on each token embedding, which returns the active handle's vectors for ids beyond the base vocabulary.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import IP2PError
from ..models import IP2PModel

UNET = "unet"  # the UNet's component name; text encoders are named by their family row's folders


def component_modules(model: IP2PModel) -> dict[str, Any]:
    """The modules adapters attach to, by component name: unet, text_encoder, text_encoder_2 ..."""
    encoders = {spec.folder: te for spec, te in zip(model.family.text_encoders, model.text_encoders)}
    return {UNET: model.unet, **encoders}


@dataclass(frozen=True)
class LoraRef:
    """One LoRA used by a handle: the shared adapter's name and this handle's strengths."""

    adapter: str
    source: str
    strength_model: float
    strength_text: float
    components: tuple[str, ...]

    @property
    def label(self) -> str:
        return Path(self.source).name if self.source and not self.source.startswith("<") else self.adapter


@dataclass(frozen=True, eq=False)
class EmbeddingRef:
    """One textual-inversion embedding used by a handle.

    ``vectors[i]`` / ``ids[i]``: the vectors for text encoder ``i`` ([n, width], on the model's device and dtype) and
    the token ids they got in this handle's tokenizer ``i``; ``None`` where the embedding has nothing for that encoder
    (an SD 1.5 embedding on SDXL's second encoder).
    """

    name: str
    source: str
    token: str
    vectors: tuple[torch.Tensor | None, ...]
    ids: tuple[tuple[int, ...] | None, ...]

    def tokens(self, count: int) -> list[str]:
        return [self.token] + [f"{self.token}_{i}" for i in range(1, count)]


# --------------------------------------------------------------------------------------------- per-base-model state


class SharedState:
    """What is shared by every handle over one set of base modules: injected adapters, hooks, the lock."""

    def __init__(self, model: IP2PModel):
        self.lock = threading.RLock()
        self.injected: dict[str, tuple[str, ...]] = {}  # adapter -> components it touches
        self.layers: dict[str, list] = {}  # component -> peft tuner layers (refreshed after injection)
        self.current: tuple | None = None  # the active LoRA configuration (None: unknown, re-apply)
        self.current_embeddings: tuple | None = None
        self.tables: list = [None] * len(model.text_encoders)  # per text encoder: (offset, vectors) or None
        self.pending: list = [None] * len(model.text_encoders)  # per text encoder: (mask, ids) between the hooks
        self.hooked = False

    def refresh_layers(self, model: IP2PModel) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.layers = {
            name: [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
            for name, module in component_modules(model).items()
        }
        self.current = None

    # -- LoRA activation --------------------------------------------------------------------------------------

    def activate(self, model: IP2PModel) -> None:
        signature = tuple((r.adapter, r.strength_model, r.strength_text) for r in model.loras)
        if signature != self.current and self.layers:
            for component, layers in self.layers.items():
                if not layers:
                    continue
                names, weights = component_weights(model.loras, component)
                _activate_layers(layers, names, weights)
            self.current = signature
        if model.embeddings is not self.current_embeddings:
            self.tables = embedding_tables(model)
            self.current_embeddings = model.embeddings

    # -- embedding hooks ---------------------------------------------------------------------------------------

    def install_hooks(self, model: IP2PModel) -> None:
        if self.hooked:
            return
        for i, encoder in enumerate(model.text_encoders):
            embedding = encoder.get_input_embeddings()
            embedding.register_forward_pre_hook(_make_pre_hook(self, i))
            embedding.register_forward_hook(_make_post_hook(self, i))
        self.hooked = True


_STATES: "weakref.WeakKeyDictionary[Any, SharedState]" = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def state_of(model: IP2PModel) -> SharedState:
    with _STATES_LOCK:
        state = _STATES.get(model.unet)
        if state is None:
            state = _STATES[model.unet] = SharedState(model)
        return state


@contextlib.contextmanager
def active(model: IP2PModel) -> Iterator[IP2PModel]:
    """Hold the base model's lock and switch its shared modules to exactly this handle's LoRAs and embeddings.

    Used around text encoding and the denoising loop. The switch is skipped when the previous user of the base
    modules had the same configuration, so a branch reusing its model pays nothing.
    """
    state = state_of(model)
    with state.lock:
        state.activate(model)
        yield model


def component_weights(loras, component: str) -> tuple[list[str], list[float]]:
    names, weights = [], []
    for ref in loras:
        if component not in ref.components:
            continue
        weight = ref.strength_model if component == UNET else ref.strength_text
        if weight != 0.0:
            names.append(ref.adapter)
            weights.append(float(weight))
    return names, weights


def _activate_layers(layers, names: list[str], weights: list[float]) -> None:
    if not names:
        for layer in layers:
            if not layer.disable_adapters:
                layer.enable_adapters(False)
        return
    for layer in layers:
        if layer.disable_adapters:
            layer.enable_adapters(True)
        layer.set_adapter(names, inference_mode=True)
        for name, weight in zip(names, weights):
            layer.set_scale(name, weight)  # absolute: weight * alpha / r, never compounded


def _make_pre_hook(state: SharedState, index: int):
    def pre_hook(module, args):
        state.pending[index] = None
        table = state.tables[index]
        if table is None or not args:
            return None
        ids = args[0]
        offset = table[0]
        mask = ids >= offset
        if not bool(mask.any()):
            return None
        state.pending[index] = (mask, ids)
        return (ids.masked_fill(mask, 0),) + tuple(args[1:])

    return pre_hook


def _make_post_hook(state: SharedState, index: int):
    def post_hook(module, args, output):
        pending = state.pending[index]
        if pending is None:
            return None
        state.pending[index] = None
        mask, ids = pending
        offset, vectors = state.tables[index]
        rows = ids[mask] - offset
        if int(rows.max()) >= vectors.shape[0]:
            raise IP2PError(
                f"Token id {int(rows.max()) + offset} is beyond this model's embeddings; the tokenizer and the "
                "active embeddings disagree (a tokenizer from another handle was used)."
            )
        output = output.clone()
        output[mask] = vectors[rows].to(device=output.device, dtype=output.dtype)
        return output

    return post_hook


def embedding_tables(model: IP2PModel) -> list:
    tables = []
    for i in range(len(model.text_encoders)):
        parts = [(ref.ids[i], ref.vectors[i]) for ref in model.embeddings if ref.vectors[i] is not None]
        if not parts:
            tables.append(None)
            continue
        offset = parts[0][0][0]
        tables.append((offset, torch.cat([v for _, v in parts], dim=0)))
    return tables


def tuner_layers(module) -> Iterator[tuple[str, Any]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, layer in module.named_modules():
        if isinstance(layer, BaseTunerLayer):
            yield name, layer
