"""Saving a model's LoRA stack or merged weights under a name a user chose: the name stays inside its folder, nothing
is replaced unless asked, and the result appears whole (written beside the target, then renamed into place)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from . import paths
from .adapters import save_lora_stack, save_merged_model
from .errors import IP2PError
from .models import IP2PModel

SAVE_FORMATS = ("diffusers", "single_file")
STAGING_PREFIX = ".ipx2p-"  # model listings skip hidden names, so a save in progress never shows up


def name_in(folder: str | os.PathLike, name: str, suffix: str = "") -> Path:
    """``folder/name`` (+ ``suffix`` unless the name has it), refusing names that leave the folder, as ComfyUI's
    SaveImage refuses a prefix outside the output folder. Subfolders (``styles/winter``) are fine."""
    text = (name or "").strip()
    target = paths.contained_path(folder, text) if text else None
    if target is None or target.name.startswith("."):
        raise IP2PError(f"Cannot save as {name!r}: give a name inside {folder} (letters, digits, -, _, subfolders "
                        "with /), without '..', a leading dot or an absolute path.")
    if suffix and target.suffix.lower() != suffix:
        target = target.with_name(target.name + suffix)
    return target


def publish(write: Callable[[Path], Path], target: str | os.PathLike, overwrite: bool = False) -> Path:
    """Call ``write(staging_path)`` (it writes a file or a folder there and returns it), then rename it to ``target``.

    An existing ``target`` is an error unless ``overwrite``; then it is replaced in one rename (a folder: the old one
    is moved aside first and removed after). Nothing is left behind when ``write`` fails.
    """
    target = Path(target).expanduser()
    exists_error = IP2PError(f"{target} exists already.", hint="Set {option} to replace it, or choose another name.",
                             option="overwrite", value="True")
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise exists_error
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=STAGING_PREFIX))
    try:
        written = Path(write(staging / target.name))
        if written.is_dir():
            if target.exists() or target.is_symlink():
                if not overwrite:
                    raise exists_error
                os.rename(target, staging / ".replaced")
            os.rename(written, target)
        elif overwrite:
            os.replace(written, target)
        else:
            try:
                os.link(written, target)  # fails, rather than replaces, if the name was taken meanwhile
            except FileExistsError:
                raise exists_error from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def save_lora_file(model: IP2PModel, target: str | os.PathLike, overwrite: bool = False) -> Path:
    """The handle's LoRAs at their strengths as one diffusers-format ``.safetensors`` (see ``save_lora_stack``)."""
    target = Path(target)
    if target.suffix.lower() != ".safetensors":
        target = target.with_name(target.name + ".safetensors")
    return publish(lambda p: save_lora_stack(model, p), target, overwrite)


def save_merged(model: IP2PModel, target: str | os.PathLike, format: str = "diffusers",
                overwrite: bool = False) -> Path:
    """The handle with its LoRAs fused and embeddings added: a diffusers folder or one ``.safetensors`` file (see
    ``save_merged_model``)."""
    if format not in SAVE_FORMATS:
        raise IP2PError(f"Unknown save format {format!r}; use {' or '.join(SAVE_FORMATS)}.")
    target = Path(target)
    if format == "single_file" and target.suffix.lower() != ".safetensors":
        target = target.with_name(target.name + ".safetensors")
    return publish(lambda p: save_merged_model(model, p, format=format), target, overwrite)
