"""What a LoRA file is before it touches a model: its adapter name, the kinds of file it is not (LyCORIS types, full
checkpoints, embeddings), and the architecture it was made for."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Mapping

import torch

from ..errors import IP2PError
from ..models import IP2PModel
from ..tensor_files import resolve_weights_file

LORA_FILE_NAMES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")

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


def check_lycoris(keys: list[str], source: str) -> None:
    for label, markers in _LYCORIS:
        hits = [k for k in keys if any(k.endswith(m) or m + "." in k or (m.endswith(".") and m in k) for m in markers)]
        if hits:
            raise IP2PError(
                f"{source} is a LyCORIS {label} file ({len(hits)} of {len(keys)} keys, e.g. {hits[0]!r}); this type "
                "is not supported. Only plain LoRA files are (lora_up/lora_down with .alpha, lora_A/lora_B, or "
                "diffusers' lora.up/lora.down); LoCon conv layers count as plain LoRA."
            )


def lora_file_kind_hint(keys: list[str]) -> str:
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) for k in keys):
        return " It is a full model checkpoint, not a LoRA: load it as a model."
    if "string_to_param" in keys or "emb_params" in keys or {"clip_l", "clip_g"} & set(keys):
        return " It is a textual-inversion embedding: apply it with apply_embedding / --embedding."
    return ""


_XL_WIDTHS = {2048: "SDXL"}
_SD_WIDTHS = {768: "SD 1.x", 1024: "SD 2.x"}
_CONTEXT_KEY = re.compile(r"attn2.*(to_k|to_v).*(lora_down|lora_A|lora\.down|_lora\.down|lora_linear_layer\.down)")


def lora_facts(sd: Mapping[str, torch.Tensor]) -> dict:
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


def check_architecture(model: IP2PModel, facts: dict, source: str) -> None:
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


def source_key(lora) -> tuple[str, str, Path | None]:
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
    path = resolve_weights_file(lora, LORA_FILE_NAMES, "LoRA")
    st = path.stat()
    digest = hashlib.blake2b(f"{path}|{st.st_mtime_ns}|{st.st_size}".encode(), digest_size=6).hexdigest()
    stem = re.sub(r"[^A-Za-z0-9_]", "_", path.stem)[:40] or "lora"
    return f"{stem}_{digest}", str(path), path

_UNET_HEADS = ("down_blocks.", "up_blocks.", "mid_block.", "conv_in.", "conv_out.", "time_embedding.", "add_embedding.")


def maybe_prefix_unet(sd: dict) -> dict:
    """UNet-only files without a component prefix (``unet.save_attn_procs`` of diffusers <= 0.16, or a bare
    ``get_peft_model_state_dict(unet)``): diffusers' loaders only read ``unet.``-prefixed keys."""
    keys = list(sd)
    if any(k.startswith(("unet.", "text_encoder", "lora_unet_", "lora_te")) for k in keys):
        return sd
    if all(k.startswith(_UNET_HEADS) for k in keys):
        return {f"unet.{k}": v for k, v in sd.items()}
    return sd


def lora_metadata(metadata: dict | None) -> dict | None:
    if not metadata:
        return None
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY

    raw = metadata.get(LORA_ADAPTER_METADATA_KEY)
    return json.loads(raw) if raw else None
