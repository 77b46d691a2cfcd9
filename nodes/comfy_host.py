"""The host inside ComfyUI: folder_paths, comfy.model_management, comfy.utils.ProgressBar, latent previews.

ComfyUI's modules are imported inside the methods, so this file imports (and its tests run) without ComfyUI.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import sys
import tempfile
import threading
import weakref
from pathlib import Path

from ._engine import core
from .host import MODEL_SUFFIXES, find_model, walk_models

PATCHER_ATTR = "_ipx2p_comfy_patcher"
log = logging.getLogger(__name__)


def _return_freed_memory() -> None:
    """Hand the heap pages freed with a model back to the OS. glibc keeps them in the process: after /free released a
    98 MB model in ComfyUI, the process's RSS stayed the same to the byte (tests/test_comfyui_compat.py)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _trim_after_release() -> None:
    # Called by a finalizer while gc is still clearing the model's modules: trim once they are gone.
    if sys.platform.startswith("linux"):
        timer = threading.Timer(0.5, _return_freed_memory)
        timer.daemon = True
        timer.start()


def copy_missing_files(source: Path, target: Path) -> list[Path]:
    """Copy the files of ``source`` that ``target`` lacks; never replaces a file there. Returns what was copied.

    Each copy goes to a temp file in ``target`` and is linked into place: a reader never sees half a file, and a
    file the user puts there meanwhile wins (the link fails instead of overwriting it).
    """
    copied = []
    if not source.is_dir():
        return copied
    target.mkdir(parents=True, exist_ok=True)
    for f in sorted(source.iterdir()):
        dest = target / f.name
        if not f.is_file() or dest.exists() or dest.is_symlink():
            continue
        fd, tmp = tempfile.mkstemp(dir=target, prefix=".ipx2p-")
        os.close(fd)
        try:
            shutil.copyfile(f, tmp)
            os.link(tmp, dest)
            copied.append(dest)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    return copied


def copy_example_inputs(source: Path) -> None:
    """When the pack loads in ComfyUI: the example workflows' Load Image files into ComfyUI's input folder, so the
    templates run on the first Queue."""
    import folder_paths

    try:
        copy_missing_files(source, Path(folder_paths.get_input_directory()))
    except OSError as exc:
        log.warning("[ipx2p] Could not copy the example images from %s to ComfyUI's input folder: %s", source, exc)


class ComfyHost:
    """Host inside ComfyUI (see :class:`.host.Host` for what each method promises)."""

    name = "comfyui"

    # model folders
    def model_dirs(self, kind: str) -> list[Path]:
        import folder_paths

        return [Path(p) for p in folder_paths.get_folder_paths(kind)]

    def list_models(self, kind: str) -> list[str]:
        import folder_paths

        if kind == "diffusers":  # ComfyUI lists folders only through its own walk (see DiffusersLoader)
            return walk_models(self.model_dirs(kind), kind)
        return [n for n in folder_paths.get_filename_list(kind) if n.lower().endswith(MODEL_SUFFIXES[kind])]

    def resolve_model(self, kind: str, name: str) -> Path | None:
        import folder_paths

        if kind == "diffusers":
            return find_model(self.model_dirs(kind), name)
        path = folder_paths.get_full_path(kind, name)
        return Path(path) if path else None

    def temp_dir(self) -> Path:
        import folder_paths

        return Path(folder_paths.get_temp_directory())

    # device and memory
    def device(self) -> str:
        import comfy.model_management as mm

        return str(mm.get_torch_device())

    def model_cache(self):
        """None: ComfyUI's own node cache keeps a loaded model between runs, and /free (free_memory) drops it.
        A second cache of ours would keep the weights alive after the user asked ComfyUI to release them."""
        return None

    def prepare_memory(self, model) -> None:
        """Hand our modules to ComfyUI's model management before any work, on every device (the CPU too).

        Wrapped in a ModelPatcher (around a plain Module holder: ModelPatcher sets attributes a diffusers model
        refuses), ComfyUI evicts its own models to make room, loads ours fully, and moves ours off the GPU again
        when it needs the memory or when the user presses "Unload models" (POST /free). Every node calls this
        before it computes, so weights are back on the GPU whenever they are used.
        """
        import comfy.model_management as mm

        mm.load_models_gpu([self.patcher(model)], force_full_load=True)

    @staticmethod
    def patcher(model):
        """The model's one ModelPatcher (LoRA/embedding handles share the base modules, so they share it).

        It lives on the UNet, not in a table of ours: ComfyUI's LoadedModel keeps only a weak reference, so the
        patcher lives exactly as long as the node outputs that hold the model. When /free clears ComfyUI's node
        cache, the UNet and its patcher become an unreachable cycle that ComfyUI's gc.collect() right after frees.
        """
        patcher = getattr(model.unet, PATCHER_ATTR, None)
        if patcher is None:
            import comfy.model_management as mm
            import comfy.model_patcher
            import torch

            holder = torch.nn.Module()
            holder.unet, holder.vae = model.unet, model.vae
            holder.text_encoders = torch.nn.ModuleList(model.text_encoders)
            offload = torch.device("cpu") if model.device.type == "cpu" else mm.unet_offload_device()
            patcher = comfy.model_patcher.ModelPatcher(holder, load_device=model.device, offload_device=offload)
            setattr(model.unet, PATCHER_ATTR, patcher)
            weakref.finalize(model.unet, _trim_after_release)
        return patcher

    def free_memory(self) -> None:
        import comfy.model_management as mm

        mm.soft_empty_cache()

    # progress, previews, cancellation
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

    def cancelled(self) -> bool:
        import comfy.model_management as mm

        return mm.processing_interrupted()

    def raise_cancelled(self, exc: "core.Cancelled"):
        """ComfyUI's own exception, so its executor reports "interrupted" (not an error); it clears the flag."""
        import comfy.model_management as mm

        try:
            mm.throw_exception_if_processing_interrupted()
        except mm.InterruptProcessingException as interrupt:
            raise interrupt from exc
        raise mm.InterruptProcessingException() from exc  # the flag was cleared meanwhile; still an interrupt
