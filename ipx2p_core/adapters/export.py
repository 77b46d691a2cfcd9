"""Saving a handle: its LoRAs as one stacked LoRA file, or the whole model with LoRAs fused and embeddings added.

:func:`save_lora_stack` writes a handle's LoRAs, at their strengths, as one diffusers-format LoRA file;
:func:`save_merged_model` writes the model with LoRAs fused and embeddings added, as a diffusers folder or a single
file. The shared weights are never written to.
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ..atomic_files import atomic_folder, atomic_path
from ..errors import IP2PError
from ..models import IP2PModel
from .lora import lora_loader
from .lora_files import LORA_FILE_NAMES
from .state import UNET, component_modules, component_weights, embedding_tables, state_of, tuner_layers


def _lora_scale(layer, adapter: str, strength: float) -> float:
    r = layer.r[adapter]
    alpha = layer.lora_alpha[adapter]
    if layer.use_rslora.get(adapter, False):
        return strength * alpha / math.sqrt(r)
    return strength * alpha / r


def _stack_component(module, refs: list[tuple[str, float]]) -> dict[str, torch.Tensor]:
    """One component's LoRAs concatenated along the rank: B·A = Σ sᵢ·Bᵢ·Aᵢ, zero-padded to one rank."""
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, layer in tuner_layers(module):
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
    state = state_of(model)
    with state.lock:
        stacks = {}
        for component, module in component_modules(model).items():
            names, weights = component_weights(model.loras, component)
            stacks[component] = _stack_component(module, list(zip(names, weights))) if names else {}
    for spec, encoder in zip(model.family.text_encoders, model.text_encoders):
        if stacks.get(spec.folder) and not hasattr(encoder, "text_model"):
            # write the unflattened CLIP names every diffusers version reads
            stacks[spec.folder] = {f"text_model.{k}": v for k, v in stacks[spec.folder].items()}
    if not any(stacks.values()):
        raise IP2PError("All of this model's LoRAs have strength 0; there is nothing to save.")
    # save_lora_weights takes one <component>_lora_layers argument per component of the family's pipeline
    layers = {f"{component}_lora_layers": stack or None for component, stack in stacks.items()}
    with atomic_path(folder / weight_name) as tmp:  # written under a temp name, renamed when complete
        lora_loader(model).save_lora_weights(save_directory=str(folder), weight_name=tmp.name,
                                             safe_serialization=True, **layers)
    return folder / weight_name


def _merged_state_dict(module, component: str, model: IP2PModel) -> dict[str, torch.Tensor]:
    """The module's weights with this handle's LoRAs fused in, as plain (un-wrapped) parameter names.

    Must run with the handle active (scales set). The shared weights are never written to.
    """
    names, _ = component_weights(model.loras, component)
    deltas: dict[str, torch.Tensor] = {}
    if names:
        for name, layer in tuner_layers(module):
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
    tables = embedding_tables(model)
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
    from ..ldm_layout import save_single_file

    if format not in ("diffusers", "single_file"):
        raise IP2PError(f"Unknown save format {format!r}; use 'diffusers' or 'single_file'.")
    path = Path(path).expanduser()
    state = state_of(model)
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
    with atomic_folder(path) as tmp:  # built beside the target, renamed into place when complete
        _save_diffusers_folder(model, tmp, unet_sd, te_sds)
    return path


def _save_diffusers_folder(model: IP2PModel, folder: Path, unet_sd: dict, te_sds: list[dict]) -> None:
    import diffusers
    from safetensors.torch import save_file

    from ..ldm_layout import _for_safetensors

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

