"""Diffusers-format state dicts -> the original single-file ("LDM") checkpoint layout.

This is the inverse of diffusers' own single-file converters (``diffusers.loaders.single_file_utils``:
``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint`` and
``convert_open_clip_checkpoint``). A file written by :func:`save_single_file` uses the key layout of the released
SD 1.5 / InstructPix2Pix / SDXL / CosXL ``.safetensors`` files:

* UNet -> ``model.diffusion_model.*`` (``time_embed``, ``label_emb``, ``input_blocks``, ``middle_block``,
  ``output_blocks``, ``out``);
* VAE -> ``first_stage_model.*`` (``encoder.down.N``, ``decoder.up.N`` in reversed order, ``mid.block_1/attn_1/
  block_2``; the mid attention's q/k/v/proj_out stored as 1x1 convolutions);
* CLIP ViT-L (SD 1.5, SDXL's first encoder) -> ``<prefix>text_model.*`` (HF CLIP key names, kept as they are);
* OpenCLIP ViT-bigG (SDXL's second encoder) -> ``conditioner.embedders.1.model.*`` (``transformer.resblocks.N``
  with fused ``in_proj`` q/k/v, ``text_projection`` stored transposed).

All mappings are derived from the state dict's keys, so any number of blocks, layers per block, transformer depth
and attention-or-not per block work. Unknown keys raise ``ValueError`` rather than being dropped silently.
Tensors are not copied unless the layout needs it (the VAE's 1x1-conv reshape is a view, q/k/v fusion and the
transposed text projection are new tensors).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .atomic_files import atomic_path
from .families import CLIP, CLIP_L_SD, CLIP_L_XL, COSXL, OPEN_CLIP_BIGG_XL, get_family

__all__ = [
    "UNET_PREFIX",
    "VAE_PREFIX",
    "SD15_CLIP_PREFIX",
    "SDXL_CLIP_L_PREFIX",
    "SDXL_OPEN_CLIP_PREFIX",
    "COSXL_SIGMA_MAX",
    "COSXL_SIGMA_MIN",
    "OPEN_CLIP_LOGIT_SCALE",
    "unet_to_ldm",
    "vae_to_ldm",
    "clip_l_to_ldm",
    "open_clip_to_ldm",
    "to_single_file_state_dict",
    "save_single_file",
]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# Text encoder prefixes and extra keys differ per family: they live in the family table (families.py).
SD15_CLIP_PREFIX = CLIP_L_SD.ldm_prefix + "text_model."
SDXL_CLIP_L_PREFIX = CLIP_L_XL.ldm_prefix + "text_model."
SDXL_OPEN_CLIP_PREFIX = OPEN_CLIP_BIGG_XL.ldm_prefix
COSXL_SIGMA_MAX = COSXL.ldm_extra["edm_vpred.sigma_max"]
COSXL_SIGMA_MIN = COSXL.ldm_extra["edm_vpred.sigma_min"]
# ln(100): the (clamped) value of OpenCLIP's ``logit_scale`` as found in released SDXL files. Not part of any
# diffusers text encoder; only written when asked for (see ``open_clip_to_ldm``).
OPEN_CLIP_LOGIT_SCALE = math.log(100.0)


# ----------------------------------------------------------------------------------------------------------------
# UNet
# ----------------------------------------------------------------------------------------------------------------

# diffusers ResnetBlock2D submodule -> LDM ResBlock submodule
_UNET_RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}

_UNET_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    # SDXL's text_time embedding and the class embeddings of timestep/projection type share LDM's label_emb.0
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
}

_BLOCK_RE = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$")
_MID_RE = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


def _resnet_key(rest: str, names: Mapping[str, str], where: str) -> str:
    head, _, tail = rest.partition(".")
    if head not in names or not tail:
        raise ValueError(f"unexpected resnet parameter {where}.{rest!r}")
    return f"{names[head]}.{tail}"


def _config_get(config, name, default=None):
    if config is None:
        return default
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def unet_to_ldm(unet_state_dict: Mapping[str, torch.Tensor], unet_config=None) -> dict[str, torch.Tensor]:
    """Map a diffusers ``UNet2DConditionModel`` state dict to ``model.diffusion_model.*`` keys.

    ``unet_config`` (``unet.config`` or a plain dict) is optional: the layout is derived from the keys; when given,
    ``layers_per_block`` is checked against them.

    Index arithmetic (as in LDM's ``UNetModel``): ``input_blocks.0`` is ``conv_in``; each down block ``b``
    contributes one input block per resnet (``.0`` resnet, ``.1`` its transformer) plus one more (``.0.op``) for its
    downsampler; the middle block is ``resnet, transformer, resnet, ...``; each up block contributes one output block
    per resnet (``.0`` resnet, ``.1`` transformer) and its upsampler goes into the last of them, as ``.1.conv``
    without a transformer or ``.2.conv`` with one.
    """
    down: dict[int, dict[str, list]] = {}
    up: dict[int, dict[str, list]] = {}
    mid: list[tuple[str, int, str]] = []
    out: dict[str, torch.Tensor] = {}
    label_sources: set[str] = set()

    def put(key: str, value: torch.Tensor, source: str) -> None:
        if key in out:
            raise ValueError(f"two UNet parameters map to {key!r} (second one: {source!r})")
        out[key] = value

    for key, value in unet_state_dict.items():
        m = _BLOCK_RE.match(key)
        if m:
            kind, b, sub, idx, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
            table = down if kind == "down_blocks" else up
            table.setdefault(b, {}).setdefault(sub, []).append((idx, rest, value, key))
            continue
        m = _MID_RE.match(key)
        if m:
            mid.append((m.group(1), int(m.group(2)), m.group(3), value, key))
            continue
        module, _, param = key.rpartition(".")
        if module in _UNET_TOP_LEVEL:
            if module.startswith(("add_embedding", "class_embedding")):
                label_sources.add(module.partition(".")[0])
            put(f"{_UNET_TOP_LEVEL[module]}.{param}", value, key)
            continue
        if key == "class_embedding.weight":  # nn.Embedding class labels (num_class_embeds), as in the x4 upscaler
            label_sources.add("class_embedding")
            put("label_emb.weight", value, key)
            continue
        raise ValueError(f"UNet parameter {key!r} has no place in the original checkpoint layout")
    if len(label_sources) > 1:
        raise ValueError("UNet has both add_embedding and class_embedding; the LDM layout holds one label_emb")

    def n_resnets(block: dict[str, list], kind: str, b: int) -> int:
        ids = sorted({idx for idx, *_ in block.get("resnets", [])})
        if ids != list(range(len(ids))) or not ids:
            raise ValueError(f"{kind}.{b} has resnets {ids}; expected 0..n-1")
        return len(ids)

    layers_per_block = _config_get(unet_config, "layers_per_block")
    if layers_per_block is not None:
        n_down = len(down)
        expected = (
            list(layers_per_block) if isinstance(layers_per_block, (list, tuple)) else [layers_per_block] * n_down
        )
        actual = [n_resnets(down[b], "down_blocks", b) for b in sorted(down)]
        if actual != expected[: len(actual)] or len(expected) != n_down:
            raise ValueError(f"config layers_per_block={layers_per_block!r} but the down blocks have {actual} resnets")

    # Down blocks -> input_blocks
    if sorted(down) != list(range(len(down))) or sorted(up) != list(range(len(up))):
        raise ValueError(f"non-contiguous block indices: down {sorted(down)}, up {sorted(up)}")
    offset = 1
    for b in range(len(down)):
        block = down[b]
        n = n_resnets(block, "down_blocks", b)
        for idx, rest, value, key in block.get("resnets", []):
            put(f"input_blocks.{offset + idx}.0.{_resnet_key(rest, _UNET_RESNET_NAMES, key)}", value, key)
        for idx, rest, value, key in block.get("attentions", []):
            if idx >= n:
                raise ValueError(f"{key!r}: attention index beyond the block's {n} resnets")
            put(f"input_blocks.{offset + idx}.1.{rest}", value, key)
        offset += n
        downsamplers = block.get("downsamplers", [])
        if downsamplers:
            for idx, rest, value, key in downsamplers:
                if idx != 0 or not rest.startswith("conv."):
                    raise ValueError(f"unexpected downsampler parameter {key!r}")
                put(f"input_blocks.{offset}.0.op.{rest[len('conv.'):]}", value, key)
            offset += 1

    # Mid block -> middle_block.{0: resnet 0, 1: attention 0, 2: resnet 1, ...}
    for sub, idx, rest, value, key in mid:
        if sub == "resnets":
            put(f"middle_block.{2 * idx}.{_resnet_key(rest, _UNET_RESNET_NAMES, key)}", value, key)
        else:
            put(f"middle_block.{2 * idx + 1}.{rest}", value, key)

    # Up blocks -> output_blocks
    offset = 0
    for b in range(len(up)):
        block = up[b]
        n = n_resnets(block, "up_blocks", b)
        for idx, rest, value, key in block.get("resnets", []):
            put(f"output_blocks.{offset + idx}.0.{_resnet_key(rest, _UNET_RESNET_NAMES, key)}", value, key)
        attention_ids = set()
        for idx, rest, value, key in block.get("attentions", []):
            if idx >= n:
                raise ValueError(f"{key!r}: attention index beyond the block's {n} resnets")
            attention_ids.add(idx)
            put(f"output_blocks.{offset + idx}.1.{rest}", value, key)
        last = n - 1
        slot = 2 if last in attention_ids else 1
        for idx, rest, value, key in block.get("upsamplers", []):
            if idx != 0 or not rest.startswith("conv."):
                raise ValueError(f"unexpected upsampler parameter {key!r}")
            put(f"output_blocks.{offset + last}.{slot}.conv.{rest[len('conv.'):]}", value, key)
        offset += n

    return {UNET_PREFIX + k: v for k, v in out.items()}


# ----------------------------------------------------------------------------------------------------------------
# VAE
# ----------------------------------------------------------------------------------------------------------------

_VAE_RESNET_NAMES = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "nin_shortcut",
}
# diffusers mid attention (current and legacy names) -> LDM AttnBlock
_VAE_ATTN_NAMES = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
    "query": "q",
    "key": "k",
    "value": "v",
    "proj_attn": "proj_out",
}
_VAE_TOP_LEVEL = {
    "conv_in": "conv_in",
    "conv_out": "conv_out",
    "conv_norm_out": "norm_out",
}
_VAE_BLOCK_RE = re.compile(
    r"^(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)$"
)
_VAE_MID_RE = re.compile(r"^(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


def vae_to_ldm(vae_state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a diffusers ``AutoencoderKL`` state dict to ``first_stage_model.*`` keys.

    The decoder's ``up_blocks.i`` becomes ``decoder.up.(n-1-i)`` (LDM numbers decoder levels by resolution, lowest
    resolution last). The mid attention's q/k/v/proj_out weights become ``[C, C, 1, 1]`` conv weights.
    """
    n_up = len({int(m.group(3)) for k in vae_state_dict if (m := _VAE_BLOCK_RE.match(k)) and m.group(2) == "up_blocks"})
    out: dict[str, torch.Tensor] = {}

    def put(key: str, value: torch.Tensor, source: str) -> None:
        if key in out:
            raise ValueError(f"two VAE parameters map to {key!r} (second one: {source!r})")
        out[key] = value

    for key, value in vae_state_dict.items():
        m = _VAE_BLOCK_RE.match(key)
        if m:
            part, kind, b, sub, idx, rest = m.groups()
            b, idx = int(b), int(idx)
            if kind == "down_blocks" and part == "encoder":
                level, stage = b, "down"
            elif kind == "up_blocks" and part == "decoder":
                level, stage = n_up - 1 - b, "up"
            else:
                raise ValueError(f"unexpected VAE parameter {key!r}")
            if sub == "resnets":
                put(f"{part}.{stage}.{level}.block.{idx}.{_resnet_key(rest, _VAE_RESNET_NAMES, key)}", value, key)
            elif sub in ("downsamplers", "upsamplers") and idx == 0 and rest.startswith("conv."):
                name = "downsample" if sub == "downsamplers" else "upsample"
                put(f"{part}.{stage}.{level}.{name}.{rest}", value, key)
            else:
                raise ValueError(f"unexpected VAE parameter {key!r}")
            continue
        m = _VAE_MID_RE.match(key)
        if m:
            part, sub, idx, rest = m.group(1), m.group(2), int(m.group(3)), m.group(4)
            if sub == "resnets":
                put(f"{part}.mid.block_{idx + 1}.{_resnet_key(rest, _VAE_RESNET_NAMES, key)}", value, key)
                continue
            if idx != 0:
                raise ValueError(f"the LDM VAE has one mid attention; got {key!r}")
            module, _, param = rest.rpartition(".")
            if module not in _VAE_ATTN_NAMES:
                raise ValueError(f"unexpected VAE attention parameter {key!r}")
            name = _VAE_ATTN_NAMES[module]
            if name != "norm" and param == "weight":
                if value.ndim == 2:
                    value = value[:, :, None, None]
                elif value.ndim == 3:  # very old diffusers checkpoints stored proj_attn as conv1d
                    value = value[:, :, :, None]
            put(f"{part}.mid.attn_1.{name}.{param}", value, key)
            continue
        part, _, rest = key.partition(".")
        module, _, param = rest.rpartition(".")
        if part in ("encoder", "decoder") and module in _VAE_TOP_LEVEL:
            put(f"{part}.{_VAE_TOP_LEVEL[module]}.{param}", value, key)
        elif module == "" and part in ("quant_conv", "post_quant_conv"):
            put(key, value, key)
        else:
            raise ValueError(f"VAE parameter {key!r} has no place in the original checkpoint layout")
    return {VAE_PREFIX + k: v for k, v in out.items()}


# ----------------------------------------------------------------------------------------------------------------
# Text encoders
# ----------------------------------------------------------------------------------------------------------------

_CLIP_DROPPED = ("text_projection.weight", "logit_scale")


def _strip_text_model(key: str) -> str:
    return key[len("text_model.") :] if key.startswith("text_model.") else key


def clip_l_to_ldm(te_state_dict: Mapping[str, torch.Tensor], prefix: str = SD15_CLIP_PREFIX) -> dict[str, torch.Tensor]:
    """Map a ``CLIPTextModel`` state dict to ``<prefix><key>``, ``prefix`` ending in ``text_model.``.

    Accepts both the flattened (transformers >= 5.6, no ``text_model.`` in keys) and the wrapped key forms. Position
    id buffers are skipped; a projection or logit scale (present only if a ``CLIPTextModelWithProjection`` is passed)
    is dropped, as released SD 1.5 / SDXL files hold none for this encoder.
    """
    if not prefix.endswith("."):
        prefix += "."
    out: dict[str, torch.Tensor] = {}
    for key, value in te_state_dict.items():
        inner = _strip_text_model(key)
        if inner.endswith("position_ids") or key in _CLIP_DROPPED:
            continue
        if not inner.startswith(("embeddings.", "encoder.layers.", "final_layer_norm.")):
            raise ValueError(f"CLIP text encoder parameter {key!r} has no place in the original checkpoint layout")
        new = prefix + inner
        if new in out:
            raise ValueError(f"two CLIP parameters map to {new!r}")
        out[new] = value
    return out


_OPEN_CLIP_LAYER_RE = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_OPEN_CLIP_LAYER_NAMES = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_OPEN_CLIP_TOP_LEVEL = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}


def open_clip_to_ldm(
    te2_state_dict: Mapping[str, torch.Tensor],
    prefix: str = SDXL_OPEN_CLIP_PREFIX,
    logit_scale: float | None = None,
) -> dict[str, torch.Tensor]:
    """Map a ``CLIPTextModelWithProjection`` state dict to the OpenCLIP layout under ``prefix``.

    q/k/v projections are concatenated (in that order) into ``attn.in_proj_weight`` / ``in_proj_bias``;
    ``text_projection`` is diffusers' ``text_projection.weight`` transposed (``[hidden, projection]``).
    ``logit_scale``: if given, also write ``<prefix>logit_scale`` (released SDXL files carry it, ln(100); diffusers
    ignores it, ComfyUI only notes it missing).
    """
    if not prefix.endswith("."):
        prefix += "."
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}

    def put(key: str, value: torch.Tensor, source: str) -> None:
        if prefix + key in out:
            raise ValueError(f"two text encoder parameters map to {prefix + key!r} (second one: {source!r})")
        out[prefix + key] = value

    for key, value in te2_state_dict.items():
        if key == "text_projection.weight":
            put("text_projection", value.t().contiguous(), key)
            continue
        if key == "logit_scale":
            put("logit_scale", value, key)
            continue
        inner = _strip_text_model(key)
        if inner.endswith("position_ids"):
            continue
        if inner in _OPEN_CLIP_TOP_LEVEL:
            put(_OPEN_CLIP_TOP_LEVEL[inner], value, key)
            continue
        m = _OPEN_CLIP_LAYER_RE.match(inner)
        if m:
            layer, rest = int(m.group(1)), m.group(2)
            module, _, param = rest.rpartition(".")
            qkv_m = re.fullmatch(r"self_attn\.([qkv])_proj", module)
            if qkv_m:
                parts = qkv.setdefault((layer, param), {})
                parts[qkv_m.group(1)] = value
                continue
            if module in _OPEN_CLIP_LAYER_NAMES:
                put(f"transformer.resblocks.{layer}.{_OPEN_CLIP_LAYER_NAMES[module]}.{param}", value, key)
                continue
        raise ValueError(f"OpenCLIP text encoder parameter {key!r} has no place in the original checkpoint layout")

    for (layer, param), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"layer {layer} {param}: need q, k and v projections, got {sorted(parts)}")
        fused = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        put(f"transformer.resblocks.{layer}.attn.in_proj_{param}", fused, f"layer {layer} q/k/v {param}")

    if logit_scale is not None and prefix + "logit_scale" not in out:
        put("logit_scale", torch.tensor(float(logit_scale)), "logit_scale")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Whole checkpoint
# ----------------------------------------------------------------------------------------------------------------


def _state_dict(module_or_state_dict) -> Mapping[str, torch.Tensor]:
    if isinstance(module_or_state_dict, Mapping):
        sd = module_or_state_dict
    else:
        sd = module_or_state_dict.state_dict()
    # torch.compile wraps a module as `_orig_mod`
    if any(k.startswith("_orig_mod.") for k in sd):
        sd = {k.removeprefix("_orig_mod."): v for k, v in sd.items()}
    return sd


def to_single_file_state_dict(
    unet,
    vae,
    text_encoders: tuple,
    family: str,
    extra: dict | None = None,
) -> dict[str, torch.Tensor]:
    """The full original-layout state dict of a model.

    ``unet`` / ``vae`` / ``text_encoders``: torch modules (or their state dicts). ``family``: a family name
    (``"sd15"``, ``"sdxl"``, ``"cosxl"``, any registered one); its row gives the text encoders' key prefixes and
    layouts and the extra scalar keys (``"cosxl"``: ``edm_vpred.sigma_max`` = 120.0 and ``edm_vpred.sigma_min`` =
    0.002, as CosXL files have). ``extra``: more keys to write; they take precedence over the converted ones.
    """
    spec = get_family(family)
    if not isinstance(text_encoders, (tuple, list)):
        text_encoders = (text_encoders,)
    if len(text_encoders) != len(spec.text_encoders):
        raise ValueError(f"family {family!r} needs {len(spec.text_encoders)} text encoder(s), got {len(text_encoders)}")

    unet_config = None if isinstance(unet, Mapping) else getattr(unet, "config", None)
    out: dict[str, torch.Tensor] = {}
    out.update(unet_to_ldm(_state_dict(unet), unet_config))
    out.update(vae_to_ldm(_state_dict(vae)))
    for encoder_spec, encoder in zip(spec.text_encoders, text_encoders):
        if encoder_spec.ldm_layout == CLIP:
            out.update(clip_l_to_ldm(_state_dict(encoder), encoder_spec.ldm_prefix + "text_model."))
        else:  # OPEN_CLIP
            out.update(open_clip_to_ldm(_state_dict(encoder), encoder_spec.ldm_prefix))
    for key, value in spec.ldm_extra.items():
        out[key] = torch.tensor(value)
    if extra:
        out.update(extra)
    return out


def _for_safetensors(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.to("cpu")
    tensor = tensor.contiguous()
    # A view into a larger storage (or one shared with another tensor) is copied out so every entry owns its bytes.
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size() or tensor.storage_offset():
        tensor = tensor.clone()
    return tensor


def save_single_file(
    path: str | Path,
    unet,
    vae,
    text_encoders: tuple,
    family: str,
    extra: dict | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write :func:`to_single_file_state_dict` to ``path`` with safetensors (CPU, contiguous tensors)."""
    from safetensors.torch import save_file

    state_dict = to_single_file_state_dict(unet, vae, text_encoders, family, extra)
    state_dict = {k: _for_safetensors(v) for k, v in state_dict.items()}
    path = Path(path)
    with atomic_path(path) as tmp:  # a killed export never leaves half a checkpoint under the real name
        save_file(state_dict, str(tmp), metadata=metadata)
    return path
