"""Load Model, Apply LoRA, Apply Embedding."""

from __future__ import annotations

import os

from ._engine import core
from .common import CATEGORY, MODEL, defaults
from .host import get_host
from .model_names import DIFFUSERS_TAG, display_name, resolve_model_name

MODEL_KINDS = ("checkpoints", "diffusers")


def model_choices() -> list[str]:
    host = get_host()
    return [display_name(kind, n) for kind in MODEL_KINDS for n in host.list_models(kind)]


def resolve_model_choice(name: str):
    """The model a Load Model name means (any form of :mod:`.model_names`)."""
    return resolve_model_name(get_host(), name, MODEL_KINDS)[1]


def _validate_name(name: str, kind: str):
    try:
        resolve_model_name(get_host(), name, (kind,))
    except core.IP2PError as exc:
        return str(exc)
    return True


SHIPPED_TAG = "[shipped] "
AUTO_CONFIG = "auto"
# how the engine's fixes read inside a graph (IP2PError.phrased): the Load Model node's own inputs
NODE_OPTIONS = {"config": "choose it in Load Model's config input", "device": "{value} in Load Model's device input"}


def config_choices() -> list[str]:
    """auto (the family's shipped configs), each shipped config, and the diffusers folders in models/diffusers."""
    shipped = [SHIPPED_TAG + n for n in core.family_names()]
    return [AUTO_CONFIG, *shipped, *(DIFFUSERS_TAG + n for n in get_host().list_models("diffusers"))]


def resolve_config_choice(name: str):
    """The config folder for a single-file checkpoint, or None for the family's shipped one."""
    if name in (None, "", AUTO_CONFIG):
        return None
    if name.startswith(SHIPPED_TAG) and name[len(SHIPPED_TAG):] in core.family_names():
        return core.get_family(name[len(SHIPPED_TAG):]).config_dir
    if name.startswith(DIFFUSERS_TAG):
        path = get_host().resolve_model("diffusers", name[len(DIFFUSERS_TAG):])
        if path is not None:
            return path
    raise core.IP2PError(f"Config {name!r} not found; choose auto, a shipped config or a diffusers folder from "
                         f"models/diffusers ({', '.join(config_choices()[1:])}).")


def _stamp(path) -> float:
    try:
        target = os.path.join(path, "model_index.json") if os.path.isdir(path) else path
        return os.path.getmtime(target)
    except OSError:
        return float("nan")


class IPX2PLoadModel:
    DESCRIPTION = ("Load an InstructPix2Pix model: SD 1.5 (timbrooks, MagicBrush, HQ-Edit), SDXL IP2P or CosXL "
                   "Edit, from a single .safetensors checkpoint or a diffusers folder. The family is read from the "
                   "weights.")
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The loaded model; connect it to the encode, sample and decode nodes.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": (model_choices(), {"tooltip": "A checkpoint from models/checkpoints, or a diffusers "
                                                            "folder (with model_index.json) from models/diffusers."}),
                "family": (["auto", *core.family_names()], {"default": defaults.FAMILY,
                                                            "tooltip": "auto reads the family from the weights."}),
                "dtype": (["auto", "fp32", "fp16", "bf16"], {"default": defaults.DTYPE,
                                                             "tooltip": "auto = fp16 on a GPU, fp32 on the CPU."}),
                "device": (["auto", "cpu", "cuda", "mps"], {"default": defaults.DEVICE,
                                                            "tooltip": "Where the model runs; auto follows the host "
                                                                       "(ComfyUI's --cpu etc.)."}),
            },
            "optional": {
                "compile": ("BOOLEAN", {"default": defaults.COMPILE,
                                        "tooltip": "Fast mode: compile the UNet with torch.compile. The first run "
                                                   "on a machine spends minutes compiling (cached on disk after "
                                                   "that); then every step is faster. Worth it for many edits."}),
                "config": (config_choices(), {"default": AUTO_CONFIG,
                                              "tooltip": "Single files only: the architecture to build. auto = the "
                                                         "family's released configs; for a checkpoint of another "
                                                         "architecture, pick a diffusers folder of that model from "
                                                         "models/diffusers (its configs are used, not its weights)."}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, model_name, **_):
        try:
            return f"{model_name}:{_stamp(resolve_model_choice(model_name))}"
        except core.IP2PError:
            return model_name

    @classmethod
    def VALIDATE_INPUTS(cls, model_name):
        # Names only the input it judges: ComfyUI (and our runner) skip their own checks for every input named here,
        # and for all inputs when the signature takes **kwargs (then dtype "fp64" would pass /prompt).
        try:
            resolve_model_choice(model_name)
        except core.IP2PError as exc:
            return str(exc)
        return True

    def load(self, model_name, family=defaults.FAMILY, dtype=defaults.DTYPE, device=defaults.DEVICE,
             compile=defaults.COMPILE, config=AUTO_CONFIG):
        host = get_host()
        path = resolve_model_choice(model_name)
        fast = bool(compile) or bool(getattr(host, "compile_models", False))  # `ipx2p run/studio --compile`
        try:
            dev = core.models.parse_device(host.device() if device == "auto" else device)
            model = core.load_model(path, family=family, dtype=defaults.dtype_for(dtype, dev.type), device=dev,
                                    config=resolve_config_choice(config), cache=host.model_cache(), fast=fast)
        except core.IP2PError as exc:
            raise exc.phrased(NODE_OPTIONS) from None
        host.prepare_memory(model)  # owned by the host's memory management from the start (ComfyUI: /free drops it)
        return (model,)


class IPX2PApplyLoRA:
    DESCRIPTION = ("Apply a LoRA (kohya/A1111, diffusers or peft format). Returns a new model; the input model and "
                   "other branches are unchanged, and the base weights are shared, not copied.")
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with this LoRA added to its stack.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "The model to add the LoRA to (chain several Apply LoRA nodes)."}),
                "lora_name": (get_host().list_models("loras"), {"tooltip": "A LoRA file from models/loras."}),
                "strength_model": ("FLOAT", {"default": defaults.LORA_STRENGTH, "min": -10.0, "max": 10.0, "step": 0.01,
                                             "tooltip": "LoRA strength on the UNet (negative inverts it)."}),
                "strength_text": ("FLOAT", {"default": defaults.LORA_STRENGTH, "min": -10.0, "max": 10.0, "step": 0.01,
                                            "tooltip": "LoRA strength on the text encoder(s)."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name):
        return _validate_name(lora_name, "loras")  # any name form, not only the list's

    def apply(self, model, lora_name, strength_model=defaults.LORA_STRENGTH, strength_text=defaults.LORA_STRENGTH):
        path = resolve_model_name(get_host(), lora_name, ("loras",))[1]
        return (core.apply_lora(model, path, strength_model=strength_model, strength_text=strength_text),)


class IPX2PApplyEmbedding:
    DESCRIPTION = ("Add a textual-inversion embedding. Use it in instructions as embedding:NAME (or by its own "
                   "token). Returns a new model; other branches do not see it.")
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model that understands embedding:NAME.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "The model to add the embedding to."}),
                "embedding_name": (get_host().list_models("embeddings"),
                                   {"tooltip": "An embedding file from models/embeddings."}),
            },
            "optional": {
                "name": ("STRING", {"default": "", "tooltip": "Name to use in instructions as embedding:NAME; "
                                                              "empty = the file name without extension."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, embedding_name):
        return _validate_name(embedding_name, "embeddings")

    def apply(self, model, embedding_name, name=""):
        path = resolve_model_name(get_host(), embedding_name, ("embeddings",))[1]
        return (core.apply_embedding(model, path, name=name or None),)
