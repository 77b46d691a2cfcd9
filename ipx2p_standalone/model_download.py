"""Turning a --model argument into a local path: local files and folders as they are, Hub ids downloaded."""

from __future__ import annotations

import re
from pathlib import Path

from ipx2p_core.errors import IP2PError

# Files a diffusers IP2P repository needs; weights in safetensors only (never pickles from the network).
DIFFUSERS_PATTERNS = [
    "model_index.json",
    "*/config.json",
    "scheduler/scheduler_config.json",
    "tokenizer*/*.json",
    "tokenizer*/*.txt",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder*/model.safetensors",
]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w./-]+\.safetensors)?$")


def resolve_model_argument(value: str) -> str:
    """A local path is returned unchanged; ``owner/repo`` or ``owner/repo/file.safetensors`` is fetched from the Hub."""
    if Path(value).expanduser().exists() or not HUB_ID.match(value):
        return value
    owner, repo, *rest = value.split("/")
    repo_id = f"{owner}/{repo}"
    try:
        import huggingface_hub as hub

        if rest:
            return hub.hf_hub_download(repo_id, "/".join(rest))
        return hub.snapshot_download(repo_id, allow_patterns=DIFFUSERS_PATTERNS)
    except Exception as exc:  # offline, unknown repo, gated repo: one clear message
        raise IP2PError(
            f"Could not get {value!r} from the Hugging Face Hub ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
            f"No local file or folder {value!r} exists either. Download the model on a connected machine (for "
            f"example `hf download {repo_id}`), copy the folder (the one with model_index.json) or the .safetensors "
            "file here, and pass its path to --model."
        ) from None
