"""The one seam between nodes and whatever runs them: model folders, device, progress, previews, interrupt, memory.

Two implementations: ``ComfyHost`` inside ComfyUI (ComfyUI's modules are imported lazily, inside methods, so this
file imports without ComfyUI), and ``StandaloneHost`` for our runner and studio, which plug in their own progress
and interrupt callbacks. Nodes call ``get_host()`` and never import ComfyUI themselves.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Callable

MODEL_KINDS = ("checkpoints", "diffusers", "loras", "embeddings")
MODEL_SUFFIXES = {
    "checkpoints": (".safetensors", ".ckpt", ".pt", ".pth"),
    "loras": (".safetensors", ".pt", ".bin", ".ckpt"),
    "embeddings": (".safetensors", ".pt", ".bin", ".pth"),
}


def _walk_models(roots: list[Path], kind: str) -> list[str]:
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


def _find_under(roots: list[Path], name: str) -> Path | None:
    """``name`` under one of the roots. The name may not climb out (no absolute paths, no '..'); symlinks placed
    inside a models folder are followed, as users link big models in from other disks."""
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        return None
    for root in roots:
        candidate = Path(os.path.normpath(root / rel))
        if candidate.exists():
            return candidate
    return None


class StandaloneHost:
    """Host for the runner and studio. ``models_dir`` holds checkpoints/, diffusers/, loras/, embeddings/."""

    name = "standalone"

    def __init__(self, models_dir: str | os.PathLike | None = None, device: str | None = None):
        self.models_dir = Path(models_dir or os.environ.get("IPX2P_MODELS", "models")).expanduser()
        self._device = device
        self.extra_dirs: dict[str, list[Path]] = {}
        self.progress_callback: Callable[[int, int, object | None], None] | None = None
        self.previews = True
        self.compile_models = False  # Load Model compiles every model (fast mode), as `ipx2p run/studio --compile`
        self._interrupt = threading.Event()

    # model folders
    def model_dirs(self, kind: str) -> list[Path]:
        return [self.models_dir / kind, *self.extra_dirs.get(kind, [])]

    def list_models(self, kind: str) -> list[str]:
        return _walk_models(self.model_dirs(kind), kind)

    def resolve_model(self, kind: str, name: str) -> Path | None:
        return _find_under(self.model_dirs(kind), name)

    # device and memory
    def device(self) -> str:
        return self._device or "auto"

    def prepare_memory(self, model) -> None:
        pass

    def free_memory(self) -> None:
        pass

    # progress, previews, interrupt
    def previews_enabled(self) -> bool:
        return self.previews and self.progress_callback is not None

    def progress(self, step: int, total: int, preview=None) -> None:
        if self.progress_callback is not None:
            self.progress_callback(step, total, preview)

    def interrupt(self) -> None:
        self._interrupt.set()

    def clear_interrupt(self) -> None:
        self._interrupt.clear()

    def interrupted(self) -> bool:
        return self._interrupt.is_set()


class ComfyHost:
    """Host inside ComfyUI: folder_paths, comfy.model_management, comfy.utils.ProgressBar, latent previews."""

    name = "comfyui"

    def __init__(self):
        self._patchers: dict[int, object] = {}  # strong references: ComfyUI keeps only weak ones

    def model_dirs(self, kind: str) -> list[Path]:
        import folder_paths

        return [Path(p) for p in folder_paths.get_folder_paths(kind)]

    def list_models(self, kind: str) -> list[str]:
        import folder_paths

        if kind == "diffusers":  # ComfyUI lists folders only through its own walk (see DiffusersLoader)
            return _walk_models(self.model_dirs(kind), kind)
        return [n for n in folder_paths.get_filename_list(kind) if n.lower().endswith(MODEL_SUFFIXES[kind])]

    def resolve_model(self, kind: str, name: str) -> Path | None:
        import folder_paths

        if kind == "diffusers":
            return _find_under(self.model_dirs(kind), name)
        path = folder_paths.get_full_path(kind, name)
        return Path(path) if path else None

    def device(self) -> str:
        import comfy.model_management as mm

        return str(mm.get_torch_device())

    def prepare_memory(self, model) -> None:
        """Hand our modules to ComfyUI's model management before GPU work.

        Wrapped in a ModelPatcher (around a plain Module holder: ModelPatcher sets attributes a diffusers model
        refuses), ComfyUI evicts its own models to make room, loads ours fully, and moves ours off the GPU again
        when it needs the memory or when the user presses "Unload models" (POST /free). Every node calls this
        before it computes, so weights are back on the GPU whenever they are used.
        """
        if getattr(model.device, "type", "cpu") == "cpu":
            return
        import comfy.model_management as mm
        import comfy.model_patcher
        import torch

        key = id(model.unet)  # LoRA/embedding handles share the base modules, so they share one patcher
        patcher = self._patchers.get(key)
        if patcher is None:
            holder = torch.nn.Module()
            holder.unet, holder.vae = model.unet, model.vae
            holder.text_encoders = torch.nn.ModuleList(model.text_encoders)
            patcher = comfy.model_patcher.ModelPatcher(holder, load_device=model.device,
                                                       offload_device=mm.unet_offload_device())
            self._patchers[key] = patcher
        mm.load_models_gpu([patcher], force_full_load=True)

    def free_memory(self) -> None:
        import comfy.model_management as mm

        mm.soft_empty_cache()

    def previews_enabled(self) -> bool:
        try:
            from comfy.cli_args import LatentPreviewMethod, args

            return args.preview_method != LatentPreviewMethod.NoPreviews
        except Exception:
            return False

    def progress(self, step: int, total: int, preview=None) -> None:
        import comfy.utils

        bar = comfy.utils.ProgressBar(total)
        bar.update_absolute(step, total, ("JPEG", preview, 512) if preview is not None else None)

    def interrupted(self) -> bool:
        # Raise ComfyUI's own exception so the UI reports "interrupted" (not an error); it clears the flag.
        import comfy.model_management as mm

        mm.throw_exception_if_processing_interrupted()
        return False

    def interrupt(self) -> None:
        import comfy.model_management as mm

        mm.interrupt_current_processing(True)

    def clear_interrupt(self) -> None:
        pass


_HOST: StandaloneHost | ComfyHost | None = None
_LOCK = threading.Lock()


def running_in_comfyui() -> bool:
    # ComfyUI has imported its own modules before any custom node loads; a test importing our pack has not.
    return "comfy.model_management" in sys.modules and "folder_paths" in sys.modules


def get_host():
    global _HOST
    with _LOCK:
        if _HOST is None:
            _HOST = ComfyHost() if running_in_comfyui() else StandaloneHost()
        return _HOST


def set_host(host) -> None:
    """The runner and studio install their configured StandaloneHost here."""
    global _HOST
    with _LOCK:
        _HOST = host
