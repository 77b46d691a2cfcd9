"""Turning a --model (--lora, --embedding) argument into a local path: local files and folders as they are, then
names in the models folder ($IPX2P_MODELS or ./models, any name form of ipx2p_nodes.model_names), then Hub ids
downloaded."""

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


MODEL_KINDS = ("checkpoints", "diffusers")


def local_model_path(value: str, kinds: tuple[str, ...]) -> str:
    """``value`` itself when it exists, else what it names in the models folder, else ``value`` unchanged (the
    loader then says it is not found)."""
    if Path(value).expanduser().exists():
        return value
    from ipx2p_nodes.model_names import resolve_model_name

    from .host import StandaloneHost

    try:
        return str(resolve_model_name(StandaloneHost(), value, kinds)[1])
    except IP2PError:
        return value


def resolve_model_argument(value: str) -> str:
    """A local path is returned unchanged, a name in the models folder becomes its path (``diffusers/NAME`` there
    wins over a Hub id of that spelling); ``owner/repo`` or ``owner/repo/file.safetensors`` is fetched from the Hub."""
    local = local_model_path(value, MODEL_KINDS)
    if local != value or not HUB_ID.match(value):
        return local
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
