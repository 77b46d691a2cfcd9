"""LoRA and textual inversion: stackable, non-destructive per model handle.

One loaded model feeds many graph branches. Applying a LoRA or an embedding returns a *new* frozen handle
(``dataclasses.replace``) that shares the base modules; nothing is copied and the base handle keeps producing the
base output.

    state.py       what handles over one base model share; ``active`` switches the modules to one handle
    lora_files.py  what a LoRA file is: adapter name, format checks, the architecture it was made for
    lora.py        ``apply_lora``: fit every layer to the model, inject with diffusers' loaders
    embeddings.py  ``apply_embedding``, ``prepare_prompts``: textual inversion per handle
    export.py      ``save_lora_stack``, ``save_merged_model``
"""

from .embeddings import EmbeddingNotFoundWarning, apply_embedding, prepare_prompts
from .export import save_lora_stack, save_merged_model
from .lora import LoraKeyWarning, apply_lora
from .state import EmbeddingRef, LoraRef, active, state_of

__all__ = [
    "LoraRef",
    "EmbeddingRef",
    "LoraKeyWarning",
    "EmbeddingNotFoundWarning",
    "apply_lora",
    "apply_embedding",
    "active",
    "prepare_prompts",
    "save_lora_stack",
    "save_merged_model",
    "state_of",
]
