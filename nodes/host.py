"""The one seam between nodes and whatever runs them: model folders, temp folder, device, memory, progress,
previews and cancellation. Nodes call ``get_host()`` and never import ComfyUI or the standalone runner themselves.

Two implementations: :class:`.comfy_host.ComfyHost` inside ComfyUI, and ``ipx2p_standalone.host.StandaloneHost``
for our runner, CLI and studio, which install theirs with :func:`set_host`.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import NoReturn, Protocol, runtime_checkable

from ._engine import core, paths

MODEL_KINDS = ("checkpoints", "diffusers", "loras", "embeddings")
MODEL_SUFFIXES = {
    "checkpoints": (".safetensors", ".ckpt", ".pt", ".pth"),
    "loras": (".safetensors", ".pt", ".bin", ".ckpt"),
    "embeddings": (".safetensors", ".pt", ".bin", ".pth"),
}


@runtime_checkable
class Host(Protocol):
    """What a node may ask of whatever runs it."""

    name: str

    # model folders: kind is one of MODEL_KINDS
    def model_dirs(self, kind: str) -> list[Path]: ...
    def list_models(self, kind: str) -> list[str]: ...
    def resolve_model(self, kind: str, name: str) -> Path | None: ...

    def temp_dir(self) -> Path:
        """Where display nodes write preview files (served as type "temp")."""

    # device and memory
    def device(self) -> str: ...
    def prepare_memory(self, model) -> None:
        """Make room for (and re-load) the model's weights before heavy work."""

    def free_memory(self) -> None:
        """Release cached models and device memory ("Unload models")."""

    def model_cache(self) -> "core.models.ModelCache | None":
        """The cache Load Model keeps models in across runs, or None where the host caches node outputs itself."""

    # progress, previews, cancellation
    def previews_enabled(self) -> bool: ...
    def progress(self, step: int, total: int, preview=None) -> None: ...
    def cancelled(self) -> bool:
        """Whether the user asked to stop; nodes pass this to the engine as ``cancel``."""

    def raise_cancelled(self, exc: "core.Cancelled") -> NoReturn:
        """Raise what the host's executor reports as an interruption (the engine raised ``Cancelled``)."""


def walk_models(roots: list[Path], kind: str) -> list[str]:
    """Relative names under the roots: files with the kind's suffixes, or diffusers folders (model_index.json)."""
    names: set[str] = set()
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel_dir = Path(dirpath).relative_to(root)
            if kind == "diffusers":
                if "model_index.json" in filenames:
                    names.add(rel_dir.as_posix())
                    dirnames[:] = []
                continue
            for f in filenames:
                if f.lower().endswith(MODEL_SUFFIXES[kind]):
                    names.add((rel_dir / f).as_posix())
    return sorted(names)


def find_model(roots: list[Path], name: str) -> Path | None:
    """``name`` under the first root that has it. The name may not climb out; symlinks placed inside a models
    folder are followed, as users link big models in from other disks."""
    for root in roots:
        candidate = paths.contained_path(root, name, follow_links=True)
        if candidate is None:
            return None
        if candidate.exists():
            return candidate
    return None


_HOST: Host | None = None
_LOCK = threading.Lock()


def running_in_comfyui() -> bool:
    # ComfyUI has imported its own modules before any custom node loads; a test importing our pack has not.
    return "comfy.model_management" in sys.modules and "folder_paths" in sys.modules


def _default_host() -> Host:
    if running_in_comfyui():
        from .comfy_host import ComfyHost

        return ComfyHost()
    try:  # the pip-installed nodes without ComfyUI: our standalone host, as `ipx2p run` would install
        from ipx2p_standalone.host import StandaloneHost
    except ImportError:
        raise core.IP2PError("No host is installed for the nodes: run them in ComfyUI, through `ipx2p run` or the "
                             "studio, or install one with ipx2p_nodes.host.set_host(...).") from None
    return StandaloneHost()


def get_host() -> Host:
    global _HOST
    with _LOCK:
        if _HOST is None:
            _HOST = _default_host()
        return _HOST


def set_host(host: Host) -> None:
    """The runner and studio install their configured StandaloneHost here."""
    global _HOST
    with _LOCK:
        _HOST = host
