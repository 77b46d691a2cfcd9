"""The host inside ComfyUI: folder_paths, comfy.model_management, comfy.utils.ProgressBar, latent previews.

ComfyUI's modules are imported inside the methods, so this file imports (and its tests run) without ComfyUI.
"""

from __future__ import annotations

from pathlib import Path

from ._engine import core
from .host import MODEL_SUFFIXES, find_model, walk_models


class ComfyHost:
    """Host inside ComfyUI (see :class:`.host.Host` for what each method promises)."""

    name = "comfyui"

    def __init__(self):
        self._patchers: dict[int, object] = {}  # strong references: ComfyUI keeps only weak ones

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
