"""Reading weights files safely: safetensors directly, pickles only through torch's weights-only unpickler.

One reader for model checkpoints, LoRA files and textual-inversion embeddings, so every kind gets the same checks
and the same clear errors (truncated file, unsafe pickle, not a weights file).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from .errors import IP2PError

# Classes the old textual-inversion format pickles (a ParameterDict of Parameters); safe to rebuild.
_EMBEDDING_CLASSES = [torch.nn.ParameterDict, torch.nn.Parameter]
_UNSAFE = re.compile(r"Unsupported global|Unsupported class|unrecognized function")
_PICKLE_PROTOCOL_2_OR_LATER = b"\x80"  # a pickle stream's first byte (PROTO opcode)


def read_tensors(path: str | Path, what: str, *, nested: bool = False) -> tuple[Any, dict | None]:
    """The file's content and its safetensors metadata (None for pickles).

    ``what`` names the kind of file in errors ("model", "LoRA", "embedding"). ``nested`` also allows the
    containers old embedding files pickle; everything else in a pickle is refused, never executed.
    """
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path, what)
    try:
        with torch.serialization.safe_globals(_EMBEDDING_CLASSES if nested else []):
            try:
                data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap can only be used" not in str(exc):
                    raise
                data = torch.load(str(path), map_location="cpu", weights_only=True)  # legacy (non-zip) pickle
    except Exception as exc:
        text = str(exc)
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip() if "WeightsUnpickler error:" in text else text
        detail = (detail.splitlines() or [type(exc).__name__])[0][:300]
        if _UNSAFE.search(text) or ("WeightsUnpickler error:" in text and _starts_like_pickle(path)):
            raise IP2PError(
                f"Refusing to load {what} {path}: the pickle holds objects other than tensors ({detail}). Loading it "
                "could run arbitrary code. Use a .safetensors version."
            ) from None
        raise IP2PError(
            f"Could not read {what} {path} ({type(exc).__name__}: {detail}). The file is truncated, corrupt or not a "
            f"{what} file."
        ) from None
    return data, None


def read_state_dict(path: str | Path, what: str = "model") -> tuple[dict[str, torch.Tensor], dict | None]:
    """A flat {name: tensor} dictionary (a training checkpoint's ``state_dict`` entry is unwrapped) and the
    safetensors metadata."""
    data, metadata = read_tensors(path, what)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise IP2PError(f"{path} does not hold a flat dictionary of tensors; it is not a {what} file.")
    return data, metadata


def tensor_shapes(path: Path, wanted: tuple[str, ...]) -> dict[str, tuple]:
    """Shapes of the tensors whose names end with one of ``wanted``, from the header where the format allows
    (safetensors, sharded safetensors index); other formats are read whole."""
    if path.name.endswith(".index.json"):
        with open(path, encoding="utf-8") as f:
            index = json.load(f)["weight_map"]
        shapes: dict[str, tuple] = {}
        for shard in {index[k] for k in index if k.endswith(wanted)}:
            shapes.update(tensor_shapes(path.parent / shard, wanted))
        return shapes
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if k.endswith(wanted)}
        except Exception as exc:
            raise IP2PError(
                f"Could not read {path} ({type(exc).__name__}: {exc}); the file is truncated or corrupt."
            ) from None
    return {k: tuple(v.shape) for k, v in read_state_dict(path)[0].items() if k.endswith(wanted)}


def resolve_weights_file(path, names: tuple[str, ...], what: str) -> Path:
    """The file ``path`` names; for a folder, the first of ``names`` inside it (diffusers' LoRA / embedding files)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise IP2PError(f"{what[0].upper() + what[1:]} file not found: {path} (looked for {p.resolve()}).")
    if p.is_dir():
        found = next((p / name for name in names if (p / name).is_file()), None)
        if found is None:
            raise IP2PError(f"{p} is a folder without {' or '.join(names)}; point at the {what} file itself.")
        p = found
    return p.resolve()


def _read_safetensors(path: Path, what: str) -> tuple[dict, dict | None]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
        return load_file(str(path)), metadata
    except Exception as exc:  # safetensors raises several types for truncated or garbled headers
        raise IP2PError(
            f"Could not read {what} {path} as safetensors ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
            "The file is truncated or corrupt: download it again and compare its size with the source."
        ) from None


def _starts_like_pickle(path: Path) -> bool:
    """A file the weights-only unpickler parsed but stopped in is a real pickle (refused); junk is not one."""
    try:
        with open(path, "rb") as f:
            return f.read(1) == _PICKLE_PROTOCOL_2_OR_LATER
    except OSError:
        return False
