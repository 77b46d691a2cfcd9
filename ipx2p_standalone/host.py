"""The host for our runner, CLI and studio: a models folder, a temp folder, plugged-in progress, a cancel flag."""

from __future__ import annotations

import gc
import logging
import os
import threading
from pathlib import Path
from typing import Callable

from ipx2p_core.errors import Cancelled, IP2PError
from ipx2p_nodes.host import find_model, walk_models

log = logging.getLogger(__name__)


class StandaloneHost:
    """Host outside ComfyUI (see :class:`ipx2p_nodes.host.Host`). ``models_dir`` holds checkpoints/, diffusers/,
    loras/ and embeddings/; ``temp_dir`` is where display nodes write their previews (a runner given a host without
    one lends it its own temp folder)."""

    name = "standalone"

    def __init__(self, models_dir: str | os.PathLike | None = None, device: str | None = None,
                 temp_dir: str | os.PathLike | None = None):
        self.models_dir = Path(models_dir or os.environ.get("IPX2P_MODELS", "models")).expanduser()
        self._device = device
        self.temp_folder: Path | None = Path(temp_dir).expanduser().absolute() if temp_dir is not None else None
        self.extra_dirs: dict[str, list[Path]] = {}
        self.progress_callback: Callable[[int, int, object | None], None] | None = None
        self.previews = True
        self.compile_models = False  # Load Model compiles every model (fast mode), as `ipx2p run/studio --compile`
        self._interrupt = threading.Event()

    # model folders
    def model_dirs(self, kind: str) -> list[Path]:
        return [self.models_dir / kind, *self.extra_dirs.get(kind, [])]

    def list_models(self, kind: str) -> list[str]:
        return walk_models(self.model_dirs(kind), kind)

    def resolve_model(self, kind: str, name: str) -> Path | None:
        return find_model(self.model_dirs(kind), name)

    def temp_dir(self) -> Path:
        if self.temp_folder is None:
            raise IP2PError("This host has no temp folder to write preview images to; run the node through "
                            "`ipx2p run` or the studio, or give StandaloneHost(temp_dir=...).")
        return self.temp_folder

    # device and memory
    def device(self) -> str:
        return self._device or "auto"

    def prepare_memory(self, model) -> None:
        pass  # nothing else shares the device: models stay where they were loaded

    def model_cache(self):
        """The engine's cache: the runner and the studio reuse a loaded model across workflows (free_memory drops it)."""
        from ipx2p_core import MODEL_CACHE

        return MODEL_CACHE

    def free_memory(self) -> None:
        """Drop the engine's cached models and return the freed device memory to the driver."""
        from ipx2p_core import MODEL_CACHE

        MODEL_CACHE.clear()
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if getattr(torch, "mps", None) is not None and torch.backends.mps.is_available():
                torch.mps.empty_cache()
        except Exception:  # noqa: BLE001 - freeing memory is best effort; the models are already dropped
            log.exception("Could not empty the device cache")

    # progress, previews, cancellation
    def previews_enabled(self) -> bool:
        return self.previews and self.progress_callback is not None

    def progress(self, step: int, total: int, preview=None) -> None:
        if self.progress_callback is not None:
            self.progress_callback(step, total, preview)

    def cancelled(self) -> bool:
        return self._interrupt.is_set()

    def raise_cancelled(self, exc: Cancelled):
        raise exc  # the runner reports Cancelled as the interruption

    # the runner's controls (not part of the seam nodes see)
    def interrupt(self) -> None:
        """Ask the running work to stop: nodes see ``cancelled()`` turn true at the next step."""
        self._interrupt.set()

    def clear_interrupt(self) -> None:
        self._interrupt.clear()
