"""LoRA and textual inversion: stackable, non-destructive per model handle.

One loaded model feeds many graph branches. Applying a LoRA or an embedding returns a *new* frozen handle
(``dataclasses.replace``) that shares the base modules; nothing is copied and the base handle keeps producing the
base output.

LoRA
    Each LoRA file is injected once into the shared UNet / text encoders as a named peft adapter, with diffusers'
    own loaders (``lora_state_dict`` converts kohya/A1111, diffusers, peft, old attention-processor files and
    diffusers' IP2P LoRA training output; ``load_lora_into_unet`` / ``load_lora_into_text_encoder`` inject). The
    adapter name is unique per file and modification time, so the injection is cached. A handle only records which
    adapters it uses and at what strength; :func:`active` switches the shared modules to exactly that set
    (``set_adapter`` + ``set_scale``, or adapters disabled) right before the text encoders or the UNet run, under
    one lock per base model, so interleaved branches are always right. Scales are set absolutely, never multiplied,
    so diffusers' SDXL text-encoder compounding (0.5 -> 0.25 -> 0.125 over calls) cannot happen here.

Textual inversion
    The shared tokenizer and embedding matrix are never modified. A handle with embeddings carries its own copy of
    the tokenizer(s) with the added tokens (ids assigned exactly as diffusers' ``load_textual_inversion`` assigns
    them: ``len(tokenizer)``, ``+1``, ...) and the vectors; a forward hook on each text encoder's token embedding
    returns those vectors for ids beyond the base vocabulary while that handle is active. Instructions use
    ``embedding:NAME`` (ComfyUI's syntax, with or without the file extension) or the token stored in the file.

Saving
    :func:`save_lora_stack` writes a handle's LoRAs, at their strengths, as one diffusers-format LoRA file;
    :func:`save_merged_model` writes the model with LoRAs fused and embeddings added, as a diffusers folder or a
    single file.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import re
import threading
import warnings
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from .errors import IP2PError
from .models import IP2PModel
from .tensor_files import read_state_dict, read_tensors, resolve_weights_file

log = logging.getLogger(__name__)

__all__ = [
    "LoraRef",
    "EmbeddingRef",
    "LoraKeyWarning",
    "EmbeddingNotFoundWarning",
    "apply_lora",
    "apply_embedding",
    "active",
    "prepare_prompts",
    "save_lora_stack",
    "save_merged_model",
    "describe_adapters",
]

UNET = "unet"
LORA_FILE_NAMES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")
EMBEDDING_FILE_NAMES = ("learned_embeds.safetensors", "learned_embeds.bin")
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin", ".pth", ".ckpt")
# Below this share of a file's LoRA layers fitting the model, the file is refused (it is for another model).
MIN_MATCHED_SHARE = 0.5


class LoraKeyWarning(UserWarning):
    """Some layers of a LoRA file do not fit the model and were skipped (or adapted, for conv_in)."""


class EmbeddingNotFoundWarning(UserWarning):
    """An instruction names ``embedding:NAME`` but the model has no such embedding; the word is left out, as
    ComfyUI does."""


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


class _BaseState:
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

    def components(self, model: IP2PModel) -> dict[str, Any]:
        encoders = {spec.folder: te for spec, te in zip(model.family.text_encoders, model.text_encoders)}
        return {UNET: model.unet, **encoders}

    def refresh_layers(self, model: IP2PModel) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.layers = {
            name: [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
            for name, module in self.components(model).items()
        }
        self.current = None

    # -- LoRA activation --------------------------------------------------------------------------------------

    def activate(self, model: IP2PModel) -> None:
        signature = tuple((r.adapter, r.strength_model, r.strength_text) for r in model.loras)
        if signature != self.current and self.layers:
            for component, layers in self.layers.items():
                if not layers:
                    continue
                names, weights = _component_weights(model.loras, component)
                _activate_layers(layers, names, weights)
            self.current = signature
        if model.embeddings is not self.current_embeddings:
            self.tables = _embedding_tables(model)
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


_STATES: "weakref.WeakKeyDictionary[Any, _BaseState]" = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def _state(model: IP2PModel) -> _BaseState:
    with _STATES_LOCK:
        state = _STATES.get(model.unet)
        if state is None:
            state = _STATES[model.unet] = _BaseState(model)
        return state


@contextlib.contextmanager
def active(model: IP2PModel) -> Iterator[IP2PModel]:
    """Hold the base model's lock and switch its shared modules to exactly this handle's LoRAs and embeddings.

    Used around text encoding and the denoising loop. The switch is skipped when the previous user of the base
    modules had the same configuration, so a branch reusing its model pays nothing.
    """
    state = _state(model)
    with state.lock:
        state.activate(model)
        yield model


def _component_weights(loras, component: str) -> tuple[list[str], list[float]]:
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


def _make_pre_hook(state: _BaseState, index: int):
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


def _make_post_hook(state: _BaseState, index: int):
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


def _embedding_tables(model: IP2PModel) -> list:
    tables = []
    for i in range(len(model.text_encoders)):
        parts = [(ref.ids[i], ref.vectors[i]) for ref in model.embeddings if ref.vectors[i] is not None]
        if not parts:
            tables.append(None)
            continue
        offset = parts[0][0][0]
        tables.append((offset, torch.cat([v for _, v in parts], dim=0)))
    return tables


# ------------------------------------------------------------------------------------------------ reading files


def _resolve_file(path, names: tuple[str, ...], what: str) -> Path:
    return resolve_weights_file(path, names, what)


# ------------------------------------------------------------------------------------------------------- LoRA


_LYCORIS = (
    ("LoHa", (".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".hada_t1", ".hada_t2")),
    ("LoKr", (".lokr_w1", ".lokr_w2", ".lokr_t2")),
    ("(IA)^3", (".on_input",)),
    ("OFT/BOFT", (".oft_blocks", ".oft_diag", ".boft_blocks", ".oft_R")),
    ("GLoRA", (".a1.weight", ".a2.weight", ".b1.weight", ".b2.weight")),
    ("full-difference ('diff')", (".diff", ".diff_b")),
    ("LoCon with CP/Tucker decomposition (lora_mid)", (".lora_mid.",)),
    ("DoRA (dora_scale)", (".dora_scale", "dora_scale")),
    ("norm fine-tuning (w_norm)", (".w_norm", ".b_norm")),
)


def _check_lycoris(keys: list[str], source: str) -> None:
    for label, markers in _LYCORIS:
        hits = [k for k in keys if any(k.endswith(m) or m + "." in k or (m.endswith(".") and m in k) for m in markers)]
        if hits:
            raise IP2PError(
                f"{source} is a LyCORIS {label} file ({len(hits)} of {len(keys)} keys, e.g. {hits[0]!r}); this type "
                "is not supported. Only plain LoRA files are (lora_up/lora_down with .alpha, lora_A/lora_B, or "
                "diffusers' lora.up/lora.down); LoCon conv layers count as plain LoRA."
            )


def _lora_file_kind_hint(keys: list[str]) -> str:
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) for k in keys):
        return " It is a full model checkpoint, not a LoRA: load it as a model."
    if "string_to_param" in keys or "emb_params" in keys or {"clip_l", "clip_g"} & set(keys):
        return " It is a textual-inversion embedding: apply it with apply_embedding / --embedding."
    return ""


_XL_WIDTHS = {2048: "SDXL"}
_SD_WIDTHS = {768: "SD 1.x", 1024: "SD 2.x"}
_CONTEXT_KEY = re.compile(r"attn2.*(to_k|to_v).*(lora_down|lora_A|lora\.down|_lora\.down|lora_linear_layer\.down)")


def _lora_facts(sd: Mapping[str, torch.Tensor]) -> dict:
    keys = list(sd)
    width = None
    for k in keys:
        if _CONTEXT_KEY.search(k) and sd[k].ndim >= 2:
            width = int(sd[k].shape[1])
            break
    te2 = any(k.startswith(("lora_te2_", "text_encoder_2.", "te2.")) for k in keys)
    te1_xl = any(k.startswith("lora_te1_") for k in keys)
    te_sd = any(k.startswith("lora_te_") for k in keys)
    return dict(width=width, te2=te2, te1_xl=te1_xl, te_sd=te_sd)


def _check_architecture(model: IP2PModel, facts: dict, source: str) -> None:
    width = facts["width"]
    model_width = model.unet.config.cross_attention_dim
    model_width = int(model_width[0] if isinstance(model_width, (list, tuple)) else model_width)
    xl_evidence = []
    if facts["te2"]:
        xl_evidence.append("weights for a second text encoder")
    if facts["te1_xl"]:
        xl_evidence.append("kohya 'lora_te1_' keys")
    if width in _XL_WIDTHS:
        xl_evidence.append(f"cross-attention width {width}")
    sd_evidence = []
    if facts["te_sd"] and not xl_evidence:
        sd_evidence.append("kohya 'lora_te_' keys (one text encoder)")
    if width in _SD_WIDTHS:
        sd_evidence.append(f"cross-attention width {width}")
    family = model.family
    two_encoders = len(family.text_encoders) > 1  # SDXL-type: the kohya te1/te2 and second-encoder evidence fit
    fix = f"Use a LoRA trained for {family.architecture}."
    if xl_evidence and not two_encoders:
        raise IP2PError(
            f"{source} is an SDXL LoRA ({', '.join(xl_evidence)}), but the model is {family.label} "
            f"({family.architecture} architecture, cross-attention width {model_width}). {fix}"
        )
    if sd_evidence and not xl_evidence and two_encoders:
        label = _SD_WIDTHS.get(width, "SD 1.x")
        raise IP2PError(
            f"{source} is an {label} LoRA ({', '.join(sd_evidence)}), but the model is {family.label} "
            f"({family.architecture} architecture, cross-attention width {model_width}). {fix}"
        )
    if width is not None and width != model_width:
        lora_label = _XL_WIDTHS.get(width) or _SD_WIDTHS.get(width) or "another architecture"
        raise IP2PError(
            f"{source} was made for {lora_label} (cross-attention width {width}), but the model is "
            f"{model.family.label} (cross-attention width {model_width}). {fix}"
        )


def _source_key(lora) -> tuple[str, str, Path | None]:
    """(adapter name, source label, file path or None) — unique per file and modification time, or per content."""
    if isinstance(lora, Mapping):
        h = hashlib.blake2b(digest_size=8)
        for k in sorted(lora):
            v = lora[k]
            h.update(k.encode())
            if isinstance(v, torch.Tensor):
                h.update(str((tuple(v.shape), str(v.dtype))).encode())
                h.update(v.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
            else:
                h.update(repr(v).encode())
        return f"dict_{h.hexdigest()}", "<state dict>", None
    path = _resolve_file(lora, LORA_FILE_NAMES, "LoRA")
    st = path.stat()
    digest = hashlib.blake2b(f"{path}|{st.st_mtime_ns}|{st.st_size}".encode(), digest_size=6).hexdigest()
    stem = re.sub(r"[^A-Za-z0-9_]", "_", path.stem)[:40] or "lora"
    return f"{stem}_{digest}", str(path), path


def _finite(value, what: str) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise IP2PError(f"{what} must be a number, got {value!r}.") from None
    if not math.isfinite(f):
        raise IP2PError(f"{what} must be a finite number, got {value!r}.")
    return f


def apply_lora(
    model: IP2PModel,
    lora: str | os.PathLike | Mapping[str, torch.Tensor],
    strength_model: float = 1.0,
    strength_text: float = 1.0,
) -> IP2PModel:
    """A new handle that uses ``lora`` on top of ``model``'s LoRAs, at these strengths (negative allowed).

    ``lora``: a LoRA file (.safetensors, or .bin/.pt read weights-only), a folder holding
    ``pytorch_lora_weights.safetensors``, or a state dict. ``strength_text`` applies to every text encoder.
    The file is injected into the shared modules once (cached by path and modification time); ``model`` itself
    is unchanged. Applying the same LoRA twice adds the strengths.
    """
    sm = _finite(strength_model, "LoRA model strength")
    st = _finite(strength_text, "LoRA text strength")
    adapter, source, path = _source_key(lora)
    state = _state(model)
    # Node executors run everything under torch.inference_mode(); tensors made there cannot become peft parameters.
    with state.lock, torch.inference_mode(False), torch.no_grad():
        if adapter not in state.injected:
            if path is not None:
                sd, metadata = read_state_dict(path, "LoRA")
                meta = _lora_metadata(metadata)
            else:
                sd, meta = {k: (v.clone() if isinstance(v, torch.Tensor) and v.is_inference() else v)
                            for k, v in lora.items()}, None
            state.injected[adapter] = _inject(model, state, sd, adapter, source, meta)
        components = state.injected[adapter]
    loras = list(model.loras)
    for i, ref in enumerate(loras):
        if ref.adapter == adapter:
            loras[i] = replace(ref, strength_model=ref.strength_model + sm, strength_text=ref.strength_text + st)
            break
    else:
        loras.append(LoraRef(adapter, source, sm, st, components))
    return replace(model, loras=tuple(loras))


_UNET_HEADS = ("down_blocks.", "up_blocks.", "mid_block.", "conv_in.", "conv_out.", "time_embedding.", "add_embedding.")


def _maybe_prefix_unet(sd: dict) -> dict:
    """UNet-only files without a component prefix (``unet.save_attn_procs`` of diffusers <= 0.16, or a bare
    ``get_peft_model_state_dict(unet)``): diffusers' loaders only read ``unet.``-prefixed keys."""
    keys = list(sd)
    if any(k.startswith(("unet.", "text_encoder", "lora_unet_", "lora_te")) for k in keys):
        return sd
    if all(k.startswith(_UNET_HEADS) for k in keys):
        return {f"unet.{k}": v for k, v in sd.items()}
    return sd


def _lora_metadata(metadata: dict | None) -> dict | None:
    if not metadata:
        return None
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY

    raw = metadata.get(LORA_ADAPTER_METADATA_KEY)
    return json.loads(raw) if raw else None


def _mixin(model: IP2PModel):
    """The family's diffusers LoRA loader mixin (its classmethods convert, inject and save)."""
    import diffusers.loaders

    return getattr(diffusers.loaders, model.family.lora_loader)


@contextlib.contextmanager
def _quiet_loading():
    """transformers prints a progress bar and a load report for every text-encoder adapter; keep stderr clean."""
    try:
        from transformers.utils import logging as tlog
    except ImportError:  # pragma: no cover
        yield
        return
    bar = tlog.is_progress_bar_enabled()
    verbosity = tlog.get_verbosity()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            # peft's notice that a model holds several adapters: that is the design here
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            yield
    finally:
        tlog.set_verbosity(verbosity)
        if bar:
            tlog.enable_progress_bar()


def _inject(model: IP2PModel, state: _BaseState, sd: dict, adapter: str, source: str, metadata) -> tuple[str, ...]:
    keys = list(sd)
    _check_lycoris(keys, source)
    if not any("lora" in k for k in keys):
        raise IP2PError(
            f"{source} is not a LoRA file: none of its {len(keys)} keys names a LoRA layer (e.g. {keys[0]!r})."
            f"{_lora_file_kind_hint(keys)}"
        )
    _check_architecture(model, _lora_facts(sd), source)
    sd = _maybe_prefix_unet(sd)

    mixin = _mixin(model)
    try:
        converted, alphas, file_meta = mixin.lora_state_dict(
            dict(sd), unet_config=model.unet.config, return_lora_metadata=True
        )
    except (ValueError, KeyError, IndexError) as exc:
        raise IP2PError(f"{source}: diffusers could not convert this LoRA ({str(exc).splitlines()[0][:300]}).") from None
    metadata = metadata or file_meta
    odd = [k for k in converted if "lora" not in k]
    if odd:
        raise IP2PError(
            f"{source}: {len(odd)} of {len(converted)} keys are not LoRA weights (e.g. {odd[0]!r}); a LoRA file holds "
            "only lora_up/lora_down (or lora_A/lora_B) weights and alphas."
        )

    components = state.components(model)
    parts: dict[str, dict] = {p: {} for p in components}
    stray: set[str] = set()
    for k, v in converted.items():
        head = k.split(".", 1)[0]
        if head in parts:
            parts[head][k[len(head) + 1 :]] = v
        else:  # e.g. a second text encoder's weights on an SD 1.5 model
            stray.add(k.split(".lora")[0])
    total, matched = len(stray), 0
    examples: list[str] = sorted(stray)[:2]
    ready: dict[str, dict] = {}
    for prefix, part in parts.items():
        if not part:
            continue
        peft_sd, n_total, n_bad, bad = _fit_part(model, prefix, components[prefix], part, source)
        total += n_total
        matched += n_total - n_bad
        examples += [f"{prefix}.{b}" for b in bad[:2]]
        if peft_sd:
            ready[prefix] = peft_sd
    if total == 0 or matched == 0 or matched < MIN_MATCHED_SHARE * total:
        raise IP2PError(
            f"{source} does not fit this {model.family.label} model: only {matched} of its {total} LoRA layers "
            f"match a layer of the model (e.g. unmatched: {', '.join(examples[:3]) or 'none'}). It was made for "
            "another model architecture, or the file is not a Stable Diffusion LoRA."
        )
    if matched < total:
        warnings.warn(
            f"{source}: {total - matched} of its {total} LoRA layers match no layer of this model and are skipped "
            f"(e.g. {', '.join(examples[:3])}).",
            LoraKeyWarning,
            stacklevel=4,
        )

    done: list[str] = []
    try:
        with _quiet_loading():
            for prefix, peft_sd in ready.items():
                prefixed = {f"{prefix}.{k}": v for k, v in peft_sd.items()}
                kwargs = dict(network_alphas=alphas, adapter_name=adapter, metadata=metadata)
                if prefix == UNET:
                    mixin.load_lora_into_unet(prefixed, unet=components[prefix], **kwargs)
                else:
                    mixin.load_lora_into_text_encoder(prefixed, text_encoder=components[prefix], prefix=prefix, **kwargs)
                done.append(prefix)
                _settle_adapter(components[prefix], adapter)
    except IP2PError:
        _remove_adapter(components, done, adapter)
        raise
    except Exception as exc:
        _remove_adapter(components, done + [p for p in ready if p not in done], adapter)
        raise IP2PError(f"{source}: injecting the LoRA failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}).") from None
    finally:
        state.refresh_layers(model)
    log.info("Injected LoRA %s into %s as adapter %s", source, ", ".join(done), adapter)
    return tuple(done)


def _tagged_conversion(keys: list[str], convert) -> dict[str, str]:
    """Run a diffusers key converter on tag tensors to learn where every original key goes."""
    tagged = {k: torch.tensor(i) for i, k in enumerate(keys)}
    out = convert(tagged)
    return {new: keys[int(v)] for new, v in out.items()}


def _te_to_peft(sd: dict) -> dict:
    from diffusers.utils.state_dict_utils import (
        StateDictType,
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
    )

    keys = list(sd)
    if any("lora_A" in k or "lora_B" in k for k in keys):
        return convert_state_dict_to_peft(convert_state_dict_to_diffusers(sd))
    if any("lora_linear_layer" in k for k in keys):
        return convert_state_dict_to_peft(sd, original_type=StateDictType.DIFFUSERS)
    # Old attention-processor naming (to_q_lora.down ...). diffusers infers the type only when an out_proj key is
    # present and fails on q/k/v-only text-encoder LoRAs; the mapping is the same either way.
    return convert_state_dict_to_peft(sd, original_type=StateDictType.DIFFUSERS_OLD)


def _fit_part(model: IP2PModel, prefix: str, module, part: dict, source: str):
    """Map one component's keys to peft names and check every layer against the model.

    Returns (peft state dict of the layers that fit, number of layers, number that do not fit, their names).
    """
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

    keys = list(part)
    if prefix == UNET:
        mapping = (
            {k: k for k in keys} if "lora_A" in keys[0] else _tagged_conversion(keys, convert_unet_state_dict_to_peft)
        )
    else:
        try:
            mapping = _tagged_conversion(keys, _te_to_peft)
        except ValueError as exc:
            raise IP2PError(f"{source}: the {prefix} weights are in an unknown layout ({exc}).") from None
        if not hasattr(module, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel
            mapping = {k.removeprefix("text_model."): v for k, v in mapping.items()}
    layers: dict[str, dict[str, str]] = {}
    for new, old in mapping.items():
        layer, _, rest = new.partition(".lora_")
        layers.setdefault(layer, {})["lora_" + rest] = old
    out: dict[str, torch.Tensor] = {}
    bad: list[str] = []
    for layer, entries in layers.items():
        fitted = _fit_layer(model, prefix, module, layer, {k: part[v] for k, v in entries.items()}, source)
        if fitted is None:
            bad.append(layer)
            continue
        out.update({f"{layer}.{k}": v for k, v in fitted.items()})
    return out, len(layers), len(bad), bad


def _fit_layer(model, prefix, module, layer: str, weights: dict, source: str):
    """The layer's LoRA weights shaped for the model's layer, or None if they cannot fit."""
    try:
        target = module.get_submodule(layer)
    except AttributeError:
        return None
    target = getattr(target, "base_layer", target)
    a, b = weights.get("lora_A.weight"), weights.get("lora_B.weight")
    if a is None or b is None:
        return None
    weights = dict(weights)
    if isinstance(target, torch.nn.Linear):
        if a.ndim == 4 and a.shape[2:] == (1, 1):
            a, b = a.flatten(1), b.flatten(1)
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != target.in_features or b.shape[0] != target.out_features:
            return None
    elif isinstance(target, torch.nn.Conv2d):
        if a.ndim == 2 and target.kernel_size == (1, 1):  # linear-style LoRA on a 1x1 conv (SD 1.5 proj_in/out)
            a = a[:, :, None, None]
        if b.ndim == 2:
            b = b[:, :, None, None]
        if a.ndim != 4 or b.ndim != 4 or b.shape[0] != target.out_channels or tuple(a.shape[2:]) != target.kernel_size:
            return None
        if a.shape[1] != target.in_channels:
            latent = model.latent_channels
            if prefix == UNET and layer == "conv_in" and a.shape[1] == latent and target.in_channels == 2 * latent:
                # A LoRA trained on a 4-channel SD UNet: its conv_in change applies to the noise latents; the
                # image-latent channels that InstructPix2Pix adds get no change.
                warnings.warn(
                    f"{source} changes conv_in for {latent} input channels; this InstructPix2Pix UNet takes "
                    f"{target.in_channels} (noise + image latents). The change is applied to the noise-latent "
                    "channels only.",
                    LoraKeyWarning,
                    stacklevel=6,
                )
                a = torch.cat([a, torch.zeros_like(a)], dim=1)
            else:
                return None
    else:
        return None
    if a.shape[0] != b.shape[1]:
        return None
    weights["lora_A.weight"], weights["lora_B.weight"] = a, b
    return weights


def _settle_adapter(module, adapter: str) -> None:
    """Freeze the new adapter's weights and put them on the base layer's device."""
    for _, layer in _tuner_layers(module):
        device = layer.get_base_layer().weight.device
        for attr in layer.adapter_layer_names:
            holder = getattr(layer, attr, None)
            if holder is None or adapter not in holder:
                continue
            item = holder[adapter]
            if isinstance(item, torch.nn.Module):
                item.to(device)
            else:
                item.data = item.data.to(device)
            item.requires_grad_(False)


def _remove_adapter(components: dict, names: list[str], adapter: str) -> None:
    """Take a half-injected adapter out again, so a failed load leaves nothing behind."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for prefix in names:
        module = components[prefix]
        for layer in module.modules():
            if isinstance(layer, BaseTunerLayer) and adapter in layer._get_available_adapters():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # peft notes which adapter becomes active instead
                    layer.delete_adapter(adapter)
        config = getattr(module, "peft_config", None)
        if isinstance(config, dict):
            config.pop(adapter, None)


# --------------------------------------------------------------------------------------------- textual inversion


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
    p = _resolve_file(path, EMBEDDING_FILE_NAMES, "embedding")
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
    state = _state(model)
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


# ------------------------------------------------------------------------------------------------------- saving


def _tuner_layers(module) -> Iterator[tuple[str, Any]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, layer in module.named_modules():
        if isinstance(layer, BaseTunerLayer):
            yield name, layer


def _lora_scale(layer, adapter: str, strength: float) -> float:
    r = layer.r[adapter]
    alpha = layer.lora_alpha[adapter]
    if layer.use_rslora.get(adapter, False):
        return strength * alpha / math.sqrt(r)
    return strength * alpha / r


def _stack_component(module, refs: list[tuple[str, float]]) -> dict[str, torch.Tensor]:
    """One component's LoRAs concatenated along the rank: B·A = Σ sᵢ·Bᵢ·Aᵢ, zero-padded to one rank."""
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, layer in _tuner_layers(module):
        a_parts, b_parts = [], []
        for adapter, strength in refs:
            if adapter not in getattr(layer, "lora_A", {}):
                continue
            if layer.use_dora.get(adapter, False) or getattr(layer, "lora_bias", {}).get(adapter, False):
                raise IP2PError(f"LoRA adapter {adapter} uses DoRA or a LoRA bias; these cannot be saved as a stack.")
            a = layer.lora_A[adapter].weight.detach()
            b = layer.lora_B[adapter].weight.detach()
            a_parts.append(a.float())
            b_parts.append(b.float() * _lora_scale(layer, adapter, strength))
        if a_parts:
            layers[name] = (torch.cat(a_parts, dim=0), torch.cat(b_parts, dim=1))
    if not layers:
        return {}
    rank = max(a.shape[0] for a, _ in layers.values())
    dtype = next(module.parameters()).dtype
    out = {}
    for name, (a, b) in layers.items():
        pad = rank - a.shape[0]
        if pad:
            a = torch.cat([a, a.new_zeros((pad, *a.shape[1:]))], dim=0)
            b = torch.cat([b, b.new_zeros((b.shape[0], pad, *b.shape[2:]))], dim=1)
        out[f"{name}.lora_A.weight"] = a.to(dtype).cpu().contiguous()
        out[f"{name}.lora_B.weight"] = b.to(dtype).cpu().contiguous()
    return out


def save_lora_stack(model: IP2PModel, path: str | os.PathLike) -> Path:
    """Write the handle's LoRAs, at their strengths, as one diffusers-format LoRA file and return its path.

    ``path``: a ``.safetensors`` file name, or a folder (``pytorch_lora_weights.safetensors`` is written in it).
    diffusers' ``load_lora_weights`` (and :func:`apply_lora` at strength 1) reproduce this handle's LoRA effect.
    """
    if not model.loras:
        raise IP2PError("This model has no LoRAs applied; there is nothing to save.")
    path = Path(path).expanduser()
    if path.suffix.lower() == ".safetensors":
        folder, weight_name = path.parent, path.name
    else:
        folder, weight_name = path, LORA_FILE_NAMES[0]
    state = _state(model)
    with state.lock:
        stacks = {}
        for component, module in state.components(model).items():
            names, weights = _component_weights(model.loras, component)
            stacks[component] = _stack_component(module, list(zip(names, weights))) if names else {}
    for spec, encoder in zip(model.family.text_encoders, model.text_encoders):
        if stacks.get(spec.folder) and not hasattr(encoder, "text_model"):
            # write the unflattened CLIP names every diffusers version reads
            stacks[spec.folder] = {f"text_model.{k}": v for k, v in stacks[spec.folder].items()}
    if not any(stacks.values()):
        raise IP2PError("All of this model's LoRAs have strength 0; there is nothing to save.")
    # save_lora_weights takes one <component>_lora_layers argument per component of the family's pipeline
    layers = {f"{component}_lora_layers": stack or None for component, stack in stacks.items()}
    kwargs = dict(save_directory=str(folder), weight_name=weight_name, safe_serialization=True, **layers)
    folder.mkdir(parents=True, exist_ok=True)
    _mixin(model).save_lora_weights(**kwargs)
    return folder / weight_name


def _merged_state_dict(module, component: str, model: IP2PModel) -> dict[str, torch.Tensor]:
    """The module's weights with this handle's LoRAs fused in, as plain (un-wrapped) parameter names.

    Must run with the handle active (scales set). The shared weights are never written to.
    """
    names, _ = _component_weights(model.loras, component)
    deltas: dict[str, torch.Tensor] = {}
    if names:
        for name, layer in _tuner_layers(module):
            active = [a for a in names if a in getattr(layer, "lora_A", {})]
            if not active:
                continue
            delta = None
            for adapter in active:
                d = layer.get_delta_weight(adapter).float()
                delta = d if delta is None else delta + d
            deltas[f"{name}.weight"] = delta
    out: dict[str, torch.Tensor] = {}
    for key, value in module.state_dict().items():
        if ".lora_" in key or "lora_magnitude_vector" in key:
            continue
        clean = key.replace(".base_layer.", ".")
        if clean in deltas:
            value = (value.float() + deltas[clean].to(value.device)).to(value.dtype)
        out[clean] = value
    return out


def _with_embeddings(sd: dict[str, torch.Tensor], model: IP2PModel, encoder: int) -> tuple[dict, int | None]:
    tables = _embedding_tables(model)
    if tables[encoder] is None:
        return sd, None
    offset, vectors = tables[encoder]
    key = next(k for k in sd if k.endswith("token_embedding.weight"))
    base = sd[key]
    sd = dict(sd)
    sd[key] = torch.cat([base[:offset], vectors.to(base.device, base.dtype)], dim=0)
    return sd, int(sd[key].shape[0])


def save_merged_model(model: IP2PModel, path: str | os.PathLike, format: str = "diffusers") -> Path:
    """Write the model with this handle's LoRAs fused in and its embeddings added; return the path.

    ``format="diffusers"``: a folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, ...) that
    ``load_model`` and diffusers' ``from_pretrained`` read; embeddings become added tokens and embedding rows.
    ``format="single_file"``: one original-layout ``.safetensors``. A single file holds no tokenizer, so
    embeddings cannot be stored in it (a warning says so; keep the embedding files).
    """
    from .ldm_layout import save_single_file

    if format not in ("diffusers", "single_file"):
        raise IP2PError(f"Unknown save format {format!r}; use 'diffusers' or 'single_file'.")
    path = Path(path).expanduser()
    state = _state(model)
    with state.lock:
        state.activate(model)
        unet_sd = _merged_state_dict(model.unet, UNET, model)
        te_sds = [_merged_state_dict(te, spec.folder, model)
                  for spec, te in zip(model.family.text_encoders, model.text_encoders)]
    if format == "single_file":
        if path.suffix.lower() != ".safetensors":
            path = path.with_suffix(".safetensors")
        if model.embeddings:
            warnings.warn(
                "A single-file checkpoint has no tokenizer, so the embeddings "
                f"({', '.join(r.name for r in model.embeddings)}) are not stored in {path.name}; keep their files.",
                UserWarning,
                stacklevel=2,
            )
        save_single_file(path, unet_sd, model.vae, tuple(te_sds), model.family.name)
        return path
    _save_diffusers_folder(model, path, unet_sd, te_sds)
    return path


def _save_diffusers_folder(model: IP2PModel, folder: Path, unet_sd: dict, te_sds: list[dict]) -> None:
    import diffusers
    from safetensors.torch import save_file

    from .ldm_layout import _for_safetensors

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "unet").mkdir(exist_ok=True)
    model.unet.save_config(str(folder / "unet"))
    save_file({k: _for_safetensors(v) for k, v in unet_sd.items()}, str(folder / "unet" / "diffusion_pytorch_model.safetensors"),
              metadata={"format": "pt"})
    model.vae.save_pretrained(str(folder / "vae"), safe_serialization=True)
    family = model.family
    for i, (spec, te, sd) in enumerate(zip(family.text_encoders, model.text_encoders, te_sds)):
        sub = folder / spec.folder
        sub.mkdir(exist_ok=True)
        sd, vocab = _with_embeddings(sd, model, i)
        config = copy.deepcopy(te.config)
        if vocab is not None:
            config.vocab_size = vocab
        config.architectures = [type(te).__name__]
        config.save_pretrained(str(sub))
        save_file({k: _for_safetensors(v) for k, v in sd.items()}, str(sub / "model.safetensors"), metadata={"format": "pt"})
        model.tokenizers[i].save_pretrained(str(folder / spec.tokenizer_folder))
    sched = dict(model.scheduler_config)
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2))
    index: dict[str, Any] = {
        "_class_name": family.pipeline_class,
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", sched.get("_class_name", "EulerAncestralDiscreteScheduler")],
        "unet": ["diffusers", type(model.unet).__name__],
        "vae": ["diffusers", type(model.vae).__name__],
    }
    for spec, tokenizer in zip(family.text_encoders, model.tokenizers):
        index[spec.folder] = ["transformers", spec.model_class]
        index[spec.tokenizer_folder] = ["transformers", type(tokenizer).__name__]
    if family.force_zeros_for_empty_prompt:  # only the pipelines that have the option default it to True
        index["force_zeros_for_empty_prompt"] = bool(model.force_zeros_for_empty_prompt)
    index.update(family.model_index_extra)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def describe_adapters(model: IP2PModel) -> str:
    """'2 LoRAs (a.safetensors 0.8/1.0, b 0.5/0.5), 1 embedding (foo)' or ''."""
    parts = []
    if model.loras:
        items = ", ".join(f"{r.label} {r.strength_model:g}/{r.strength_text:g}" for r in model.loras)
        parts.append(f"{len(model.loras)} LoRA{'s' if len(model.loras) > 1 else ''} ({items})")
    if model.embeddings:
        items = ", ".join(r.name for r in model.embeddings)
        parts.append(f"{len(model.embeddings)} embedding{'s' if len(model.embeddings) > 1 else ''} ({items})")
    return ", ".join(parts)
