"""The names a user gives a model, LoRA or embedding, turned into a file or folder in the host's model folders.

One rule set wherever a name is typed (Load Model, Apply LoRA / Embedding, ``--set``, the CLI's ``--model`` /
``--lora`` / ``--embedding`` when no such file exists): ``NAME`` (with or without its extension), ``[diffusers] NAME``
(the Load Model list's own form), ``KIND/NAME`` (``diffusers/NAME``, ``checkpoints/NAME.safetensors``,
``loras/NAME``), or a path under the models folder (``models/diffusers/NAME`` or absolute). A name that matches
nothing is an error that lists the close matches and every folder searched.
"""

from __future__ import annotations

import difflib
from pathlib import Path, PurePosixPath

from ._engine import core
from .host import MODEL_SUFFIXES

DIFFUSERS_TAG = "[diffusers] "
LABELS = {"checkpoints": "Model", "diffusers": "Model", "loras": "LoRA", "embeddings": "Embedding"}
NAMING = ("Name it as NAME, NAME.safetensors, [diffusers] NAME, diffusers/NAME (or checkpoints/, loras/, "
          "embeddings/) or a path under the models folder.")


def display_name(kind: str, rel: str) -> str:
    """How a model shows in a node's list (diffusers folders carry a tag, as in the Load Model list)."""
    return DIFFUSERS_TAG + rel if kind == "diffusers" else rel


def _candidates(host, name: str, kinds: tuple[str, ...]) -> list[tuple[str, str]]:
    """(kind, name inside that kind's folders) to try, most literal first."""
    text = name.strip().replace("\\", "/")
    if text.startswith(DIFFUSERS_TAG.strip()):
        return [("diffusers", text[len(DIFFUSERS_TAG.strip()):].strip())] if "diffusers" in kinds else []
    out = [(kind, text) for kind in kinds]
    path = Path(text).expanduser()
    for kind in kinds:  # a path under one of the kind's folders (absolute, or relative to here)
        for root in host.model_dirs(kind):
            try:
                out.append((kind, path.absolute().relative_to(Path(root).absolute()).as_posix()))
            except ValueError:
                pass
    parts = PurePosixPath(text).parts
    for i, part in enumerate(parts[:-1]):  # KIND/NAME, models/KIND/NAME
        if part in kinds:
            out.append((part, "/".join(parts[i + 1:])))
    for kind, rel in list(out):  # NAME without its extension
        for suffix in MODEL_SUFFIXES.get(kind, ()):
            if not rel.lower().endswith(suffix):
                out.append((kind, rel + suffix))
    return out


def resolve_model_name(host, name: str, kinds: tuple[str, ...]) -> tuple[str, Path]:
    """(kind, path) of the first model ``name`` can mean among ``kinds``; IP2PError listing close matches if none."""
    if not isinstance(name, str) or not name.strip():
        raise core.IP2PError(f"{LABELS[kinds[0]]} name is empty. {NAMING}")
    for kind, rel in _candidates(host, name, kinds):
        if not rel:
            continue
        path = host.resolve_model(kind, rel)
        if path is not None and _is_model(kind, path):
            return kind, path
    raise core.IP2PError(not_found_message(host, name, kinds))


def _is_model(kind: str, path: Path) -> bool:
    # a diffusers model is a folder with model_index.json (load_model reads either form, so one linked into
    # checkpoints counts too); any other folder is a sub-folder of names, not a model
    if path.is_dir():
        return (path / "model_index.json").is_file()
    return kind != "diffusers" and path.is_file()


def not_found_message(host, name: str, kinds: tuple[str, ...]) -> str:
    available = [display_name(kind, rel) for kind in kinds for rel in host.list_models(kind)]
    by_key: dict[str, str] = {}
    for shown in available:  # compare without tag and extension, so "tiny_sd" finds "[diffusers] tiny-sd"
        by_key.setdefault(_key(shown), shown)
    close = [by_key[k] for k in difflib.get_close_matches(_key(name), list(by_key), n=5, cutoff=0.5)]
    where = "; ".join(f"{kind}: {', '.join(str(d) for d in host.model_dirs(kind)) or '(no folder)'}"
                      for kind in kinds)
    hint = (f"Close matches: {', '.join(repr(c) for c in close)}." if close else
            f"Available: {', '.join(repr(a) for a in available[:10])}{' ...' if len(available) > 10 else ''}."
            if available else "None are there.")
    return f"{LABELS[kinds[0]]} {name!r} not found (looked in {where}). {hint} {NAMING}"


def _key(name: str) -> str:
    text = name.strip()
    if text.startswith(DIFFUSERS_TAG.strip()):
        text = text[len(DIFFUSERS_TAG.strip()):].strip()
    stem = PurePosixPath(text.replace("\\", "/")).name
    for suffixes in MODEL_SUFFIXES.values():
        for suffix in suffixes:
            if stem.lower().endswith(suffix):
                return stem[: -len(suffix)].lower()
    return stem.lower()
