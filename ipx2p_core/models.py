"""Loading InstructPix2Pix models: diffusers folders and single-file checkpoints, family detection, cache.

The family is read from the weights (``WeightFacts``, judged by the detection rules of the family table in
families.py), never from labels: some MagicBrush folders claim to be a StableDiffusionPipeline, and diffusers' own
single-file detection takes CosXL Edit for a 4-channel SDXL base. Everything else that differs per family (text
encoders, key prefixes, configs, scheduler) comes from the family's row.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from . import defaults
from .configs import CLIP_TOKENIZER_DIR
from .errors import IP2PError
from .families import CLIP, Family, FamilySpec, TextEncoderSpec, detect_family, family_names, get_family
from .ldm_layout import UNET_PREFIX as UNET_LDM
from .ldm_layout import VAE_PREFIX as VAE_LDM
from .schedulers import is_edm_config
from .speedups import install_speedups
from .tensor_files import read_state_dict, tensor_shapes

log = logging.getLogger(__name__)

__all__ = ["Family", "FamilySpec", "IP2PModel", "WeightFacts", "load_model", "MODEL_CACHE"]


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True, eq=False)
class IP2PModel:
    """A loaded InstructPix2Pix model: the modules and the facts every later stage needs.

    Handles are immutable; adapters (LoRA, embeddings) produce new handles that share these modules.
    """

    family: FamilySpec
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
        return float(self.vae.config.scaling_factor) if self.family.image_latents_scaled else 1.0

    @property
    def is_edm(self) -> bool:
        return is_edm_config(self.scheduler_config)

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


# -------------------------------------------------------------------------------------------------- family detection



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
    def family(self) -> FamilySpec | None:
        """The family table's row for these weights (None: no family fits)."""
        return detect_family(self)

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


def facts_from_folder(folder: Path) -> WeightFacts:
    weights = _unet_weights_file(folder)
    if weights is None:
        raise IP2PError(f"{folder} has a model_index.json but no UNet weights in {folder / 'unet'}.")
    shapes = tensor_shapes(weights, ("conv_in.weight", "attn2.to_k.weight", "add_embedding.linear_1.weight"))
    conv_in = shapes.get("conv_in.weight")
    if conv_in is None:
        raise IP2PError(f"{weights} has no 'conv_in.weight': it is not a diffusers UNet.")
    to_k = next((s for k, s in shapes.items() if k.endswith("attn2.to_k.weight")), None)
    xl = any(k.endswith("add_embedding.linear_1.weight") for k in shapes)
    sched = folder / "scheduler" / "scheduler_config.json"
    edm = sched.exists() and is_edm_config(_read_json(sched))
    return WeightFacts(int(conv_in[1]), int(to_k[1]) if to_k else 0, xl, edm)


def _resolve_family(facts: WeightFacts, requested: str | FamilySpec | None, path: Path) -> FamilySpec:
    if facts.in_channels != 8:
        raise IP2PError(
            f"{path} is not an InstructPix2Pix model: its UNet takes {facts.in_channels} input channels, "
            "InstructPix2Pix needs 8 (4 noise + 4 image latents). Use an IP2P checkpoint such as "
            "instruct-pix2pix-00-22000.safetensors, MagicBrush, HQ-Edit or cosxl_edit.safetensors."
        )
    detected = facts.family
    if detected is None:
        raise IP2PError(f"{path}: no model family fits its weights ({facts.describe()}); known families: "
                        f"{', '.join(family_names())}.")
    if requested in (None, "", "auto"):
        return detected
    wanted = get_family(requested)
    if wanted.architecture != detected.architecture:
        raise IP2PError(
            f"{path} was forced to load as {wanted.label}, but its weights are {detected.label} "
            f"({facts.describe()}). Leave the family on 'auto' or pick {detected.name!r}."
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


def _single_file_tokenizer(config_dir: Path, spec):
    """The config folder's own tokenizer when it brings one (tokenizer.json, as transformers 5 saves it, or
    vocab.json + merges.txt), else the shipped CLIP one."""
    folder = config_dir / spec.tokenizer_folder
    has_files = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if has_files or (folder / "tokenizer.json").is_file():
        from transformers import CLIPTokenizer

        try:
            return CLIPTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError) as exc:
            raise IP2PError(f"Could not read the tokenizer in {folder}: {str(exc).splitlines()[0]}") from None
    return shipped_tokenizer(_tokenizer_pad(config_dir, spec.tokenizer_folder, spec.pad_token))


def _check_vocab(encoders, tokenizers, path: Path, config_dir: Path) -> None:
    """A tokenizer whose ids run past its text encoder's embedding table would fail mid-edit with an IndexError."""
    for encoder, tokenizer in zip(encoders, tokenizers):
        rows, ids = int(encoder.config.vocab_size), len(tokenizer)
        if ids > rows:
            raise IP2PError(
                f"{path}: its text encoder has {rows} token embeddings, but the tokenizer "
                f"({getattr(tokenizer, 'name_or_path', '') or 'the shipped CLIP tokenizer'}) has {ids} tokens. Pass "
                f"--config DIR (load_model(config=...)) whose tokenizer folder holds the model's own tokenizer "
                f"(tokenizer.json, or vocab.json and merges.txt; config folder used: {config_dir}).")


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
    hint = dict(hint="If this checkpoint has an unusual architecture, give a matching diffusers-layout config folder "
                     "({option}); otherwise the file is damaged.", option="config")
    if missing:
        raise IP2PError(
            f"{path}: the {what} weights do not fit the config: {len(missing)} of {len(expected)} tensors missing "
            f"(e.g. {missing[0]}).", **hint
        )
    for k, v in expected.items():
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape):
            raise IP2PError(
                f"{path}: the {what} weight {k} has shape {tuple(state_dict[k].shape)}, the config expects "
                f"{tuple(v.shape)}.", **hint
            )
    filtered = {k: v for k, v in state_dict.items() if k in expected}
    module.load_state_dict(filtered, strict=False, assign=True)
    module.eval()
    return module


def _model_dtype_device(model, dtype: torch.dtype, device: torch.device):
    if model.dtype != dtype:
        if getattr(model, "_keep_in_fp32_modules", None):  # diffusers' to() keeps (and warns about) those modules
            model = model.to(dtype=dtype)
        else:
            # diffusers' ModelMixin.to() logs "modules that should be kept in float32: []" on every dtype cast, even
            # when the list is empty (0.42): torch's own to() does the same cast without it
            model = torch.nn.Module.to(model, dtype=dtype)
    return model.to(device=device) if model.device != device else model


def _vae_dtype(vae, dtype: torch.dtype) -> torch.dtype:
    # fp16 overflows in the SDXL VAE (NaNs/black images); diffusers marks such VAEs with force_upcast.
    if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        return torch.float32
    return dtype


def _text_encoder_from_ldm(spec: TextEncoderSpec, config_dir: Path, sd: Mapping[str, torch.Tensor], path: Path,
                           what: str):
    """One text encoder of a single file: built from the config folder, weights under the family's key prefix."""
    import transformers
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint

    cls = getattr(transformers, spec.model_class)
    config = cls.config_class.from_pretrained(str(config_dir / spec.folder))
    with _empty_init():
        model = cls(config)
    if spec.ldm_layout == CLIP:
        weights = convert_ldm_clip_checkpoint({k: v for k, v in sd.items() if k.startswith(spec.ldm_prefix)},
                                              remove_prefix=spec.ldm_prefix)
        if not hasattr(model, "text_model"):
            # transformers >= 5.6 flattened CLIPTextModel: its keys no longer start with "text_model."
            weights = {k.removeprefix("text_model."): v for k, v in weights.items()}
    else:  # OPEN_CLIP
        weights = convert_open_clip_checkpoint(model, sd, prefix=spec.ldm_prefix)
    return _load_into(model, weights, what, path)


def _encoder_names(family: FamilySpec) -> list[str]:
    """How errors name the text encoders: "text encoder", or "first text encoder", "second text encoder"."""
    if len(family.text_encoders) == 1:
        return ["text encoder"]
    return [f"{n} text encoder" for n in ("first", "second", "third", "fourth")[: len(family.text_encoders)]]


def _scheduler_config(family: FamilySpec, folder: Path, facts: WeightFacts | None = None) -> dict:
    """The folder's scheduler config, or the family's own where it is missing or of the wrong kind (an EDM family
    needs an EDM schedule). EDM single files carry their sigma range; it wins over the config's."""
    path = folder / "scheduler" / "scheduler_config.json"
    config = _read_json(path) if path.exists() else family.scheduler_config()
    if is_edm_config(config) != family.edm:
        config = family.scheduler_config()
    if family.edm and facts is not None:
        if facts.sigma_max:
            config["sigma_max"] = facts.sigma_max
        if facts.sigma_min:
            config["sigma_min"] = facts.sigma_min
    return config


def _force_zeros(family: FamilySpec, folder: Path) -> bool:
    index = folder / "model_index.json"
    default = family.force_zeros_for_empty_prompt
    return bool(_read_json(index).get("force_zeros_for_empty_prompt", default)) if index.exists() else default


def _load_single_file(path: Path, requested, config: str | Path | None, dtype, device) -> IP2PModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    sd, _ = read_state_dict(path, "model")
    facts = facts_from_ldm(sd, path)
    family = _resolve_family(facts, requested, path)
    config_dir = Path(config) if config else family.config_dir
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
    if not any(k.startswith(VAE_LDM) for k in sd):
        raise IP2PError(f"{path} has a UNet but no VAE ('{VAE_LDM}*' keys); a full checkpoint is needed.")
    vae_sd = convert_ldm_vae_checkpoint(sd, vae_config)
    with _empty_init():
        vae = AutoencoderKL.from_config(vae_config)
    _load_into(vae, vae_sd, "VAE", path)

    encoders = tuple(_text_encoder_from_ldm(spec, config_dir, sd, path, what)
                     for spec, what in zip(family.text_encoders, _encoder_names(family)))
    tokenizers = tuple(_single_file_tokenizer(config_dir, spec) for spec in family.text_encoders)
    _check_vocab(encoders, tokenizers, path, config_dir)
    del sd

    return _finish(family, unet, vae, encoders, tokenizers, _scheduler_config(family, config_dir, facts), dtype,
                   device, path, _force_zeros(family, config_dir),
                   {"format": "single-file", "ema": has_ema, "config": str(config_dir)})


def _load_folder(folder: Path, requested, dtype, device) -> IP2PModel:
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTokenizer

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
    encoders = tuple(component(getattr(transformers, spec.model_class), spec.folder) for spec in family.text_encoders)
    tokenizers = tuple(component(CLIPTokenizer, spec.tokenizer_folder) for spec in family.text_encoders)
    for m in (unet, vae, *encoders):
        m.eval()
    return _finish(family, unet, vae, encoders, tokenizers, _scheduler_config(family, folder), dtype, device, folder,
                   _force_zeros(family, folder), {"format": "diffusers"})


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
        raise IP2PError(f"Device {device!r} was asked for, but this PyTorch build sees no CUDA GPU.", hint="Use {option}.",
                        option="device", value="cpu")
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
    family: str | FamilySpec | None = "auto",
    dtype: str | torch.dtype = "fp32",
    device: str | torch.device | None = "cpu",
    config: str | os.PathLike | None = None,
    cache: ModelCache | None = MODEL_CACHE,
    fast: bool = defaults.COMPILE,
) -> IP2PModel:
    """Load an InstructPix2Pix model of any registered family (SD 1.5, SDXL, CosXL Edit) from a diffusers folder or
    a single file. ``family``: "auto" (read from the weights) or a family name / row.

    ``config`` is a diffusers-layout folder of component configs for single files whose architecture differs from
    the released models (the shipped configs are used otherwise). Loading either completes or raises
    ``IP2PError``; nothing half-loaded is cached.

    ``fast`` compiles the UNet (fast mode, ``ipx2p_core.fast``): the first load pays a compile, cached on disk for
    later processes; a compiled and an eager model of the same file are separate cache entries.
    """
    torch_dtype = parse_dtype(dtype)
    torch_device = parse_device(device)
    p = resolve_model_path(path)
    family_name = family.name if isinstance(family, FamilySpec) else str(family or "auto")
    key = (str(p), _stat_key(p), torch_dtype, str(torch_device), family_name, str(config or ""),
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
