"""Loading InstructPix2Pix models: diffusers folders and single-file checkpoints, family detection, cache.

The family (SD 1.5, SDXL, CosXL Edit) is read from the weights, never from labels: some MagicBrush folders claim to be
a StableDiffusionPipeline, and diffusers' own single-file detection takes CosXL Edit for a 4-channel SDXL base.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

import torch

from .configs import CLIP_TOKENIZER_DIR, family_config_dir
from .errors import IP2PError
from .speedups import install_speedups

log = logging.getLogger(__name__)


class Family(str, Enum):
    SD15 = "sd15"
    SDXL = "sdxl"
    COSXL = "cosxl"

    @property
    def label(self) -> str:
        return {"sd15": "SD 1.5 InstructPix2Pix", "sdxl": "SDXL InstructPix2Pix", "cosxl": "CosXL Edit"}[self.value]

    @property
    def is_xl(self) -> bool:
        return self is not Family.SD15


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


FAMILY_SCHEDULER_CONFIGS: dict[str, dict] = {
    f.value: _read_json(family_config_dir(f.value) / "scheduler" / "scheduler_config.json") for f in Family
}

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True, eq=False)
class IP2PModel:
    """A loaded InstructPix2Pix model: the modules and the facts every later stage needs.

    Handles are immutable; adapters (LoRA, embeddings) produce new handles that share these modules.
    """

    family: Family
    unet: Any
    vae: Any
    text_encoders: tuple
    tokenizers: tuple
    scheduler_config: Mapping[str, Any]
    dtype: torch.dtype
    device: torch.device
    source: str
    force_zeros_for_empty_prompt: bool = False
    meta: Mapping[str, Any] = field(default_factory=dict)
    # Set by ipx2p_core.adapters (apply_lora / apply_embedding): the LoRAs (adapter name + strengths) and
    # textual-inversion embeddings this handle uses on top of the shared modules. Not part of any cache key.
    loras: tuple = ()
    embeddings: tuple = ()

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def image_latent_scale(self) -> float:
        """CosXL Edit was trained on VAE-scaled image latents; SD 1.5 and SDXL IP2P on unscaled ones."""
        return float(self.vae.config.scaling_factor) if self.family is Family.COSXL else 1.0

    @property
    def is_edm(self) -> bool:
        return str(self.scheduler_config.get("_class_name", "")).startswith("EDM")

    @property
    def vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def describe(self) -> str:
        text = f"{self.family.label} from {self.source} ({str(self.dtype).replace('torch.', '')}, {self.device})"
        if self.loras:
            text += f" + {len(self.loras)} LoRA{'s' if len(self.loras) > 1 else ''}"
        if self.embeddings:
            text += f" + {len(self.embeddings)} embedding{'s' if len(self.embeddings) > 1 else ''}"
        from .fast import describe as fast_describe

        return text + fast_describe(self)

    @property
    def compiled(self) -> bool:
        """Loaded in fast mode, with the UNet's compile working (not fallen back to eager)."""
        from .fast import compiled_forward

        fwd = compiled_forward(self.unet)
        return fwd is not None and fwd.compiled is not None


# --------------------------------------------------------------------------------------------------- weights reading


def load_state_dict_safely(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint: safetensors directly, pickles only through torch's weights-only unpickler."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises several types for truncated or garbled headers
            raise IP2PError(
                f"Could not read {path} as safetensors ({type(exc).__name__}: {exc}). The file is truncated or "
                "corrupt: download it again and compare its size with the source."
            ) from None
    try:
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap can only be used" not in str(exc):
                raise
            data = torch.load(str(path), map_location="cpu", weights_only=True)  # legacy (non-zip) pickle
    except Exception as exc:
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "unpickl" in text.lower():
            raise IP2PError(
                f"Refusing to load {path}: the pickle contains objects other than tensors ({text.splitlines()[0]}). "
                "Loading it could run arbitrary code. Use a .safetensors version of this model."
            ) from None
        raise IP2PError(
            f"Could not read {path} as a PyTorch checkpoint ({type(exc).__name__}: {text.splitlines()[0] if text else ''}). "
            "The file is truncated, corrupt or not a checkpoint."
        ) from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise IP2PError(f"{path} does not hold a flat dictionary of tensors; it is not a model checkpoint.")
    return data


# -------------------------------------------------------------------------------------------------- family detection

UNET_LDM = "model.diffusion_model."


@dataclass(frozen=True)
class WeightFacts:
    """What the weights say about the model, independent of any label."""

    in_channels: int
    context_dim: int
    xl: bool
    edm: bool
    sigma_min: float | None = None
    sigma_max: float | None = None

    @property
    def family(self) -> Family:
        if self.edm:
            return Family.COSXL
        return Family.SDXL if self.xl else Family.SD15

    def describe(self) -> str:
        kind = "SDXL-type (two text encoders, pooled embedding)" if self.xl else "SD-1.x-type (one text encoder)"
        return f"{kind} UNet, {self.in_channels}-channel input, context width {self.context_dim}"


def _first_key(keys, suffix: str, contains: str = "") -> str | None:
    for k in keys:
        if k.endswith(suffix) and contains in k:
            return k
    return None


def facts_from_ldm(sd: Mapping[str, torch.Tensor], path: Path) -> WeightFacts:
    conv_in = sd.get(UNET_LDM + "input_blocks.0.0.weight")
    if conv_in is None:
        sample = ", ".join(list(sd)[:4])
        hint = ""
        if any(k.startswith(("lora_", "lora_unet")) or ".lora_" in k for k in list(sd)[:50]):
            hint = " It looks like a LoRA file: apply it to a model instead of loading it as one."
        raise IP2PError(
            f"{path} is not a Stable Diffusion checkpoint: no '{UNET_LDM}input_blocks.0.0.weight' key "
            f"(first keys: {sample}).{hint}"
        )
    to_k = _first_key(sd, "attn2.to_k.weight", UNET_LDM)
    context = int(sd[to_k].shape[1]) if to_k else 0
    xl = (UNET_LDM + "label_emb.0.0.weight") in sd
    edm = "edm_vpred.sigma_max" in sd
    smin = float(sd["edm_vpred.sigma_min"].item()) if "edm_vpred.sigma_min" in sd else None
    smax = float(sd["edm_vpred.sigma_max"].item()) if edm else None
    return WeightFacts(int(conv_in.shape[1]), context, xl, edm, smin, smax)


def _unet_weights_file(folder: Path) -> Path | None:
    unet = folder / "unet"
    for name in (
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.fp16.safetensors",
        "diffusion_pytorch_model.bin",
        "diffusion_pytorch_model.fp16.bin",
        "diffusion_pytorch_model.safetensors.index.json",
        "diffusion_pytorch_model.fp16.safetensors.index.json",
    ):
        if (unet / name).exists():
            return unet / name
    return None


def _tensor_shapes(path: Path, wanted: tuple[str, ...]) -> dict[str, tuple]:
    """Shapes of a few tensors, read from the file header where possible (no full load)."""
    if path.name.endswith(".index.json"):
        index = _read_json(path)["weight_map"]
        shapes: dict[str, tuple] = {}
        for shard in {index[k] for k in index if any(k.endswith(w) for w in wanted)}:
            shapes.update(_tensor_shapes(path.parent / shard, wanted))
        return shapes
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if any(k.endswith(w) for w in wanted)}
        except Exception as exc:
            raise IP2PError(f"Could not read {path} ({type(exc).__name__}: {exc}); the file is truncated or corrupt.") from None
    sd = load_state_dict_safely(path)
    return {k: tuple(v.shape) for k, v in sd.items() if any(k.endswith(w) for w in wanted)}


def facts_from_folder(folder: Path) -> WeightFacts:
    weights = _unet_weights_file(folder)
    if weights is None:
        raise IP2PError(f"{folder} has a model_index.json but no UNet weights in {folder / 'unet'}.")
    shapes = _tensor_shapes(weights, ("conv_in.weight", "attn2.to_k.weight", "add_embedding.linear_1.weight"))
    conv_in = shapes.get("conv_in.weight")
    if conv_in is None:
        raise IP2PError(f"{weights} has no 'conv_in.weight': it is not a diffusers UNet.")
    to_k = next((s for k, s in shapes.items() if k.endswith("attn2.to_k.weight")), None)
    xl = any(k.endswith("add_embedding.linear_1.weight") for k in shapes)
    sched = folder / "scheduler" / "scheduler_config.json"
    edm = sched.exists() and str(_read_json(sched).get("_class_name", "")).startswith("EDM")
    return WeightFacts(int(conv_in[1]), int(to_k[1]) if to_k else 0, xl, edm)


def _resolve_family(facts: WeightFacts, requested: str | Family | None, path: Path) -> Family:
    if facts.in_channels != 8:
        raise IP2PError(
            f"{path} is not an InstructPix2Pix model: its UNet takes {facts.in_channels} input channels, "
            "InstructPix2Pix needs 8 (4 noise + 4 image latents). Use an IP2P checkpoint such as "
            "instruct-pix2pix-00-22000.safetensors, MagicBrush, HQ-Edit or cosxl_edit.safetensors."
        )
    detected = facts.family
    if requested in (None, "", "auto"):
        return detected
    try:
        wanted = Family(requested)
    except ValueError:
        raise IP2PError(f"Unknown model family {requested!r}; use auto, sd15, sdxl or cosxl.") from None
    if wanted.is_xl != detected.is_xl:
        raise IP2PError(
            f"{path} was forced to load as {wanted.label}, but its weights are {detected.label} "
            f"({facts.describe()}). Leave the family on 'auto' or pick {detected.value!r}."
        )
    return wanted


# ------------------------------------------------------------------------------------------------------- tokenizers


def shipped_tokenizer(pad_token: str = "<|endoftext|>"):
    """The CLIP tokenizer every SD 1.5 / SDXL checkpoint uses, built from the files shipped with the engine."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        str(CLIP_TOKENIZER_DIR / "vocab.json"),
        str(CLIP_TOKENIZER_DIR / "merges.txt"),
        pad_token=pad_token,
        model_max_length=77,
    )


def _tokenizer_pad(config_dir: Path, sub: str, default: str) -> str:
    cfg = config_dir / sub / "tokenizer_config.json"
    if cfg.exists():
        pad = _read_json(cfg).get("pad_token", default)
        return pad["content"] if isinstance(pad, dict) else pad
    return default


# ---------------------------------------------------------------------------------------------------- model building


def _empty_init():
    from accelerate import init_empty_weights

    return init_empty_weights(include_buffers=False)


def _load_into(module, state_dict: Mapping[str, torch.Tensor], what: str, path: Path, ignore=("position_ids",)):
    """Load weights into a module built on the meta device; any missing or mis-shaped weight is a clear error."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith(ignore)]
    hint = (
        "If this checkpoint has an unusual architecture, pass a matching diffusers-layout config folder "
        "(load_model(config=...), CLI --config DIR); otherwise the file is damaged."
    )
    if missing:
        raise IP2PError(
            f"{path}: the {what} weights do not fit the config: {len(missing)} of {len(expected)} tensors missing "
            f"(e.g. {missing[0]}). {hint}"
        )
    for k, v in expected.items():
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape):
            raise IP2PError(
                f"{path}: the {what} weight {k} has shape {tuple(state_dict[k].shape)}, the config expects "
                f"{tuple(v.shape)}. {hint}"
            )
    filtered = {k: v for k, v in state_dict.items() if k in expected}
    module.load_state_dict(filtered, strict=False, assign=True)
    module.eval()
    return module


def _model_dtype_device(model, dtype: torch.dtype, device: torch.device):
    if model.dtype != dtype:
        model = model.to(dtype=dtype)
    return model.to(device=device) if model.device != device else model


def _vae_dtype(vae, dtype: torch.dtype) -> torch.dtype:
    # fp16 overflows in the SDXL VAE (NaNs/black images); diffusers marks such VAEs with force_upcast.
    if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        return torch.float32
    return dtype


def _text_encoder_from_ldm(cls, config_path: Path, weights: dict, path: Path, what: str):
    config = cls.config_class.from_pretrained(str(config_path))
    with _empty_init():
        model = cls(config)
    if not hasattr(model, "text_model"):
        # transformers >= 5.6 flattened CLIPTextModel: its keys no longer start with "text_model."
        weights = {k.removeprefix("text_model."): v for k, v in weights.items()}
    return _load_into(model, weights, what, path)


def _load_single_file(path: Path, requested, config: str | Path | None, dtype, device) -> IP2PModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    sd = load_state_dict_safely(path)
    facts = facts_from_ldm(sd, path)
    family = _resolve_family(facts, requested, path)
    config_dir = Path(config) if config else family_config_dir(family.value)
    if not (config_dir / "unet" / "config.json").exists():
        raise IP2PError(f"Config folder {config_dir} has no unet/config.json (a diffusers-layout folder is needed).")

    unet_config = UNet2DConditionModel.load_config(str(config_dir / "unet"))
    if int(unet_config["in_channels"]) != 8:
        unet_config["in_channels"] = 8
    has_ema = sum(k.startswith("model_ema.") for k in sd) > 100
    unet_sd = convert_ldm_unet_checkpoint(sd, unet_config, extract_ema=has_ema)
    with _empty_init():
        unet = UNet2DConditionModel.from_config(unet_config)
    _load_into(unet, unet_sd, "UNet", path)

    vae_config = AutoencoderKL.load_config(str(config_dir / "vae"))
    if not any(k.startswith("first_stage_model.") for k in sd):
        raise IP2PError(f"{path} has a UNet but no VAE ('first_stage_model.*' keys); a full checkpoint is needed.")
    vae_sd = convert_ldm_vae_checkpoint(sd, vae_config)
    with _empty_init():
        vae = AutoencoderKL.from_config(vae_config)
    _load_into(vae, vae_sd, "VAE", path)

    if family.is_xl:
        te1_sd = convert_ldm_clip_checkpoint({k: v for k, v in sd.items() if k.startswith("conditioner.embedders.0.")})
        te1 = _text_encoder_from_ldm(CLIPTextModel, config_dir / "text_encoder", te1_sd, path, "first text encoder")
        te2_config = CLIPTextModelWithProjection.config_class.from_pretrained(str(config_dir / "text_encoder_2"))
        with _empty_init():
            te2 = CLIPTextModelWithProjection(te2_config)
        te2_sd = convert_open_clip_checkpoint(te2, sd, prefix="conditioner.embedders.1.model.")
        _load_into(te2, te2_sd, "second text encoder", path)
        encoders = (te1, te2)
        tokenizers = (
            shipped_tokenizer(_tokenizer_pad(config_dir, "tokenizer", "<|endoftext|>")),
            shipped_tokenizer(_tokenizer_pad(config_dir, "tokenizer_2", "!")),
        )
    else:
        te_sd = convert_ldm_clip_checkpoint({k: v for k, v in sd.items() if k.startswith("cond_stage_model.")})
        encoders = (_text_encoder_from_ldm(CLIPTextModel, config_dir / "text_encoder", te_sd, path, "text encoder"),)
        tokenizers = (shipped_tokenizer(_tokenizer_pad(config_dir, "tokenizer", "<|endoftext|>")),)
    del sd

    sched_path = config_dir / "scheduler" / "scheduler_config.json"
    scheduler_config = _read_json(sched_path) if sched_path.exists() else dict(FAMILY_SCHEDULER_CONFIGS[family.value])
    if family is Family.COSXL:
        scheduler_config = dict(FAMILY_SCHEDULER_CONFIGS["cosxl"]) if not scheduler_config["_class_name"].startswith("EDM") else scheduler_config
        if facts.sigma_max:
            scheduler_config["sigma_max"] = facts.sigma_max
        if facts.sigma_min:
            scheduler_config["sigma_min"] = facts.sigma_min
    index = config_dir / "model_index.json"
    force_zeros = bool(_read_json(index).get("force_zeros_for_empty_prompt", family.is_xl)) if index.exists() else family.is_xl
    return _finish(family, unet, vae, encoders, tokenizers, scheduler_config, dtype, device, path, force_zeros,
                   {"format": "single-file", "ema": has_ema, "config": str(config_dir)})


def _load_folder(folder: Path, requested, dtype, device) -> IP2PModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    facts = facts_from_folder(folder)
    family = _resolve_family(facts, requested, folder)
    variant = "fp16" if ".fp16." in _unet_weights_file(folder).name else None

    def component(cls, sub):
        if not (folder / sub).is_dir():
            raise IP2PError(f"{folder} is missing the '{sub}' folder needed for {family.label}.")
        kwargs = {"variant": variant} if variant and any(".fp16." in p.name for p in (folder / sub).iterdir()) else {}
        try:
            return cls.from_pretrained(str(folder), subfolder=sub, **kwargs)
        except (OSError, ValueError, RuntimeError) as exc:
            raise IP2PError(f"Could not load {sub} from {folder}: {str(exc).splitlines()[0]}") from None

    unet = component(UNet2DConditionModel, "unet")
    vae = component(AutoencoderKL, "vae")
    if family.is_xl:
        encoders = (component(CLIPTextModel, "text_encoder"), component(CLIPTextModelWithProjection, "text_encoder_2"))
        tokenizers = (component(CLIPTokenizer, "tokenizer"), component(CLIPTokenizer, "tokenizer_2"))
    else:
        encoders = (component(CLIPTextModel, "text_encoder"),)
        tokenizers = (component(CLIPTokenizer, "tokenizer"),)
    for m in (unet, vae, *encoders):
        m.eval()
    sched = folder / "scheduler" / "scheduler_config.json"
    scheduler_config = _read_json(sched) if sched.exists() else dict(FAMILY_SCHEDULER_CONFIGS[family.value])
    if family is Family.COSXL and not str(scheduler_config.get("_class_name", "")).startswith("EDM"):
        scheduler_config = dict(FAMILY_SCHEDULER_CONFIGS["cosxl"])
    force_zeros = bool(_read_json(folder / "model_index.json").get("force_zeros_for_empty_prompt", family.is_xl))
    return _finish(family, unet, vae, encoders, tokenizers, scheduler_config, dtype, device, folder, force_zeros,
                   {"format": "diffusers"})


def _finish(family, unet, vae, encoders, tokenizers, scheduler_config, dtype, device, path, force_zeros, meta):
    unet = _model_dtype_device(unet, dtype, device)
    vae = _model_dtype_device(vae, _vae_dtype(vae, dtype), device)
    encoders = tuple(_model_dtype_device(te, dtype, device) for te in encoders)
    for m in (unet, vae, *encoders):
        m.requires_grad_(False)
    install_speedups(unet)
    return IP2PModel(
        family=family,
        unet=unet,
        vae=vae,
        text_encoders=encoders,
        tokenizers=tuple(tokenizers),
        scheduler_config=dict(scheduler_config),
        dtype=dtype,
        device=device,
        source=str(path),
        force_zeros_for_empty_prompt=force_zeros,
        meta=meta,
    )


# ------------------------------------------------------------------------------------------------------ entry point


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise IP2PError(f"Unsupported dtype {dtype}; use fp32, fp16 or bf16.")
        return dtype
    key = str(dtype).lower().replace("float32", "fp32").replace("float16", "fp16").replace("bfloat16", "bf16")
    if key not in DTYPES:
        raise IP2PError(f"Unknown dtype {dtype!r}; use fp32, fp16 or bf16.")
    return DTYPES[key]


def parse_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise IP2PError(f"Unknown device {device!r}; use cpu, cuda, cuda:N, mps or auto.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise IP2PError(f"Device {device!r} was asked for, but this PyTorch build sees no CUDA GPU. Use --device cpu.")
    return dev


class ModelCache:
    """Loaded models keyed by (path, mtime, size, dtype, device, family, config, fast); least recently used goes first."""

    def __init__(self, max_entries: int = 2):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, IP2PModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            model = self._entries.get(key)
            if model is not None:
                self._entries.move_to_end(key)
            return model

    def put(self, key, model: IP2PModel):
        with self._lock:
            self._entries[key] = model
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> int:
        with self._lock:
            n = len(self._entries)
            self._entries.clear()
            return n

    def __len__(self):
        return len(self._entries)


MODEL_CACHE = ModelCache()


def _stat_key(path: Path) -> tuple:
    target = path / "model_index.json" if path.is_dir() else path
    weights = _unet_weights_file(path) if path.is_dir() else None
    st = target.stat()
    wst = weights.stat() if weights else st
    return (st.st_mtime_ns, st.st_size, wst.st_mtime_ns, wst.st_size)


def resolve_model_path(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if p.exists():
        if p.is_dir() and not (p / "model_index.json").exists():
            raise IP2PError(
                f"{p.resolve()} is a folder without model_index.json. Point at a diffusers model folder (the one "
                "holding model_index.json, unet/, vae/, text_encoder/) or at a single .safetensors file."
            )
        if p.is_file() and p.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise IP2PError(f"{p.resolve()} is not a model file; expected one of {', '.join(SINGLE_FILE_SUFFIXES)}.")
        return p.resolve()
    raise IP2PError(
        f"Model not found: {path!s} (looked for {p.resolve()}). Give a diffusers folder with model_index.json or a "
        ".safetensors checkpoint."
    )


def load_model(
    path: str | os.PathLike,
    *,
    family: str | Family | None = "auto",
    dtype: str | torch.dtype = "fp32",
    device: str | torch.device | None = "cpu",
    config: str | os.PathLike | None = None,
    cache: ModelCache | None = MODEL_CACHE,
    fast: bool = False,
) -> IP2PModel:
    """Load an SD 1.5 / SDXL / CosXL Edit InstructPix2Pix model from a diffusers folder or a single file.

    ``config`` is a diffusers-layout folder of component configs for single files whose architecture differs from
    the released models (the shipped configs are used otherwise). Loading either completes or raises
    ``IP2PError``; nothing half-loaded is cached.

    ``fast`` compiles the UNet (fast mode, ``ipx2p_core.fast``): the first load pays a compile, cached on disk for
    later processes; a compiled and an eager model of the same file are separate cache entries.
    """
    torch_dtype = parse_dtype(dtype)
    torch_device = parse_device(device)
    p = resolve_model_path(path)
    key = (str(p), _stat_key(p), torch_dtype, str(torch_device), str(family or "auto"), str(config or ""),
           bool(fast))
    if cache is not None and (hit := cache.get(key)) is not None:
        return hit
    with torch.inference_mode(False), torch.no_grad():
        if p.is_dir():
            model = _load_folder(p, family, torch_dtype, torch_device)
        else:
            model = _load_single_file(p, family, config, torch_dtype, torch_device)
    if fast:
        from .fast import make_fast

        make_fast(model)
    log.info("Loaded %s", model.describe())
    if cache is not None:
        cache.put(key, model)
    return model
