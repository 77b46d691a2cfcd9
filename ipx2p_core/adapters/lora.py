"""Applying LoRA files: diffusers' loaders convert and inject, this module checks every layer against the model first.

Each LoRA file is injected once into the shared UNet / text encoders as a named peft adapter, with diffusers' own
loaders (``lora_state_dict`` converts kohya/A1111, diffusers, peft, old attention-processor files and diffusers'
IP2P LoRA training output; ``load_lora_into_unet`` / ``load_lora_into_text_encoder`` inject). The adapter name is
unique per file and modification time, so the injection is cached. A handle only records which adapters it uses
and at what strength (``state.active`` switches them).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from dataclasses import replace
from typing import Mapping

import torch

from ..errors import IP2PError
from ..models import IP2PModel
from ..tensor_files import read_state_dict
from .lora_files import check_architecture, check_lycoris, lora_facts, lora_file_kind_hint, lora_metadata
from .lora_files import maybe_prefix_unet, source_key
from .state import UNET, LoraRef, SharedState, component_modules, state_of, tuner_layers

log = logging.getLogger(__name__)

# Below this share of a file's LoRA layers fitting the model, the file is refused (it is for another model).
MIN_MATCHED_SHARE = 0.5


class LoraKeyWarning(UserWarning):
    """Some layers of a LoRA file do not fit the model and were skipped (or adapted, for conv_in)."""


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
    adapter, source, path = source_key(lora)
    state = state_of(model)
    # Node executors run everything under torch.inference_mode(); tensors made there cannot become peft parameters.
    with state.lock, torch.inference_mode(False), torch.no_grad():
        if adapter not in state.injected:
            if path is not None:
                sd, metadata = read_state_dict(path, "LoRA")
                meta = lora_metadata(metadata)
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


def lora_loader(model: IP2PModel):
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


def _inject(model: IP2PModel, state: SharedState, sd: dict, adapter: str, source: str, metadata) -> tuple[str, ...]:
    keys = list(sd)
    check_lycoris(keys, source)
    if not any("lora" in k for k in keys):
        raise IP2PError(
            f"{source} is not a LoRA file: none of its {len(keys)} keys names a LoRA layer (e.g. {keys[0]!r})."
            f"{lora_file_kind_hint(keys)}"
        )
    check_architecture(model, lora_facts(sd), source)
    sd = maybe_prefix_unet(sd)

    mixin = lora_loader(model)
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

    components = component_modules(model)
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
    for _, layer in tuner_layers(module):
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

