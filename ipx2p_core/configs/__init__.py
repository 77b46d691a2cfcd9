"""Configuration files that single-file loading needs offline, shipped with the engine.

``clip_tokenizer/`` holds the CLIP BPE vocabulary and merges (OpenAI CLIP's ``bpe_simple_vocab_16e6``, the same
files every SD 1.5 / SDXL tokenizer uses); ``<family>/`` folders hold diffusers-layout component configs (no weights),
one per row of the family table (``ipx2p_core.families``).
"""

from pathlib import Path

CONFIGS_DIR = Path(__file__).resolve().parent
CLIP_TOKENIZER_DIR = CONFIGS_DIR / "clip_tokenizer"
