"""Save LoRA Stack and Save Merged Model: output nodes that write into the host's model folders."""

from __future__ import annotations

from ._engine import core
from .common import CATEGORY, MODEL, prepare
from .host import get_host

# how the engine's fixes read on these nodes (IP2PError.phrased)
SAVE_OPTIONS = {"overwrite": "the node's overwrite input"}
DESTINATION = {"diffusers": "diffusers", "single_file": "checkpoints"}  # merged format -> model folder kind


def _folder(kind: str):
    return get_host().model_dirs(kind)[0]


def _check_name(kind: str, name: str, suffix: str = ""):
    try:
        return core.saving.name_in(_folder(kind), name, suffix)
    except core.IP2PError as exc:
        return str(exc)


def _saved(kind: str, path) -> dict:
    rel = path.relative_to(_folder(kind)).as_posix()
    return {"ui": {"text": [f"{kind}/{rel}"]}, "result": ()}


class IPX2PSaveLoRAStack:
    DESCRIPTION = ("Save the model's LoRAs, at their strengths, as one LoRA file in models/loras (diffusers format; "
                   "diffusers, this pack and other tools load it). Never replaces a file unless overwrite is on.")
    CATEGORY = f"{CATEGORY}/save"
    RETURN_TYPES = ()
    OUTPUT_TOOLTIPS = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "A model with LoRAs applied (Apply LoRA)."}),
                "filename": ("STRING", {"default": "ipx2p_lora_stack",
                                        "tooltip": "File name in models/loras (subfolders with /); .safetensors is "
                                                   "added."}),
                "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing file of that name."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, filename):  # names only what it judges: ComfyUI still checks the rest
        message = _check_name("loras", filename, ".safetensors")
        return message if isinstance(message, str) else True

    def save(self, model, filename, overwrite=False):
        target = core.saving.name_in(_folder("loras"), filename, ".safetensors")
        try:
            return _saved("loras", core.saving.save_lora_file(model, target, overwrite=bool(overwrite)))
        except core.IP2PError as exc:
            raise exc.phrased(SAVE_OPTIONS) from None


class IPX2PSaveMergedModel:
    DESCRIPTION = ("Save the model with its LoRAs fused in and its embeddings added: a diffusers folder in "
                   "models/diffusers, or one .safetensors checkpoint in models/checkpoints (embeddings cannot be "
                   "stored in a single file). Never replaces a model unless overwrite is on.")
    CATEGORY = f"{CATEGORY}/save"
    RETURN_TYPES = ()
    OUTPUT_TOOLTIPS = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "The model to save, with its LoRAs and embeddings."}),
                "filename": ("STRING", {"default": "ipx2p_merged",
                                        "tooltip": "Folder name in models/diffusers, or file name in "
                                                   "models/checkpoints (.safetensors is added)."}),
                "format": (list(core.saving.SAVE_FORMATS), {"default": "diffusers",
                                                            "tooltip": "diffusers: a folder (keeps embeddings). "
                                                                       "single_file: one checkpoint."}),
                "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing model of that name."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, filename, format):  # names what it judges (the name depends on the format's folder)
        if format not in DESTINATION:
            return f"format: {format!r} is not one of {', '.join(DESTINATION)}."
        message = _check_name(DESTINATION[format], filename, ".safetensors" if format == "single_file" else "")
        return message if isinstance(message, str) else True

    def save(self, model, filename, format="diffusers", overwrite=False):
        kind = DESTINATION[format]
        target = core.saving.name_in(_folder(kind), filename, ".safetensors" if format == "single_file" else "")
        prepare(model)
        try:
            return _saved(kind, core.saving.save_merged(model, target, format=format, overwrite=bool(overwrite)))
        except core.IP2PError as exc:
            raise exc.phrased(SAVE_OPTIONS) from None
