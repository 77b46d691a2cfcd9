"""From raw manifest rows to row tasks: typed values, the command's defaults, output names, seeds and resume keys.

A row's value is its column, else the command's option. Its seed is its ``seed`` column, else ``--seed`` + its row
number. Its key is a hash of what decides its output (row values, settings, output name) and of the job's identity
(model files, LoRAs, embeddings, precision; or the workflow file and ``--set`` values): the same command run again
finds the same keys in ``results.jsonl`` and skips rows already done. A value that cannot be used fails its row with
one message; the other rows go on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ipx2p_core import defaults
from ipx2p_core.atomic_files import is_temp_name
from ipx2p_core.errors import IP2PError

from .journal import RESULTS_NAME, STAGING_PREFIX
from .manifest import Manifest, RawRow, is_node_column

KEY_VERSION = 1  # bump when the meaning of a key changes, so old results are not taken for new ones


@dataclass(frozen=True)
class EditDefaults:
    """The command's edit options: the value of every row that does not set the column itself."""

    instruction: str | None = None
    negative: str = ""
    mask: str | None = None  # a path relative to the current folder
    seed: int = defaults.SEED
    steps: int = defaults.STEPS
    text_guidance: float = defaults.TEXT_GUIDANCE
    image_guidance: float = defaults.IMAGE_GUIDANCE
    scheduler: str = defaults.SCHEDULER
    strength: float = 1.0
    resize: str = defaults.RESIZE
    guidance_rescale: float = 0.0
    eta: float = 0.0
    image_guidance_end: float | None = None


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs besides its rows; picklable (process pools) and plain data (Ray)."""

    mode: str  # "edit" | "workflow"
    out_dir: str
    device: str | None = "auto"
    batch_size: int = 1
    # Fast mode (--compile): each worker loads its model compiled. Not part of a row's key: compiled pixels equal
    # eager ones within 1e-3 (tests/test_fast.py), as a row's pixels do not depend on --batch-size either.
    compile: bool = False
    # edit mode
    model: str | None = None
    dtype: str = defaults.DTYPE
    family: str = defaults.FAMILY
    config: str | None = None
    loras: tuple = ()  # (path, strength, text strength)
    embeddings: tuple = ()
    restore_size: bool = defaults.RESTORE_SIZE
    mask_grow: int = defaults.MASK_GROW
    mask_feather: int = defaults.MASK_FEATHER
    # workflow mode
    workflow: dict | None = None
    overrides: dict = field(default_factory=dict)  # the command's --set values
    models_dir: str | None = None
    input_root: str | None = None  # LoadImage reads row images relative to this folder


@dataclass
class RowTask:
    row: int
    key: str
    where: str
    inputs: dict  # the row's values as given
    output: str  # relative to the output folder (posix)
    image: str | None = None  # absolute path
    # edit mode
    mask: str | None = None
    instruction: str = ""
    negative: str = ""
    settings: dict = field(default_factory=dict)  # SamplerSettings fields
    resize: str = defaults.RESIZE
    # workflow mode
    overrides: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RowTask":
        return cls(**data)


class RowError(ValueError):
    """A value of one row that cannot be used; the message names the row and the column."""


# ------------------------------------------------------------------------------------------------------ values


def _int(value, column: str, where: str) -> int:
    if isinstance(value, bool):
        raise RowError(f"{where}: {column} {value!r} is not a whole number.")
    if isinstance(value, int):
        return value
    try:
        number = float(str(value).strip())
    except ValueError:
        raise RowError(f"{where}: {column} {value!r} is not a whole number.") from None
    if not math.isfinite(number) or not number.is_integer():
        raise RowError(f"{where}: {column} {value!r} is not a whole number.")
    return int(str(value).strip()) if str(value).strip().lstrip("+-").isdigit() else int(number)


def _float(value, column: str, where: str) -> float:
    if isinstance(value, bool):
        raise RowError(f"{where}: {column} {value!r} is not a number.")
    try:
        number = float(value if isinstance(value, (int, float)) else str(value).strip())
    except ValueError:
        raise RowError(f"{where}: {column} {value!r} is not a number.") from None
    if not math.isfinite(number):
        raise RowError(f"{where}: {column} {value!r} is not a finite number.")
    return number


def _str(value, column: str, where: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"{where}: {column} must be text, got {json.dumps(value)}.")
    return value


def _scheduler(value: str, where: str) -> str:
    from ipx2p_core.schedulers import resolve_scheduler_name

    if value in ("", "auto"):  # the model family's own default, resolved by the worker
        return value
    try:
        resolve_scheduler_name(value, edm_model=False)
    except IP2PError as first:
        try:
            resolve_scheduler_name(value, edm_model=True)
        except IP2PError:
            raise RowError(f"{where}: {first}") from None
    return value


def _resize(value: str, where: str) -> str:
    from ipx2p_core.image import ResizePolicy

    try:
        return str(ResizePolicy.parse(value))
    except IP2PError as exc:
        raise RowError(f"{where}: {exc}") from None


def _output_name(value, where: str) -> str:
    """A .png name inside the output folder (sub folders allowed)."""
    text = _str(value, "output", where).strip().replace("\\", "/")
    rel = PurePosixPath(text)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or text.endswith("/"):
        raise RowError(f"{where}: output {value!r} must be a file name inside the output folder (no absolute path, "
                       "no '..').")
    if rel.suffix.lower() not in ("", ".png"):
        raise RowError(f"{where}: output {value!r} must be a .png name (outputs are PNG files with their settings).")
    if not rel.suffix:
        rel = rel.with_suffix(".png")
    if rel.as_posix() == RESULTS_NAME or is_temp_name(rel.name) or any(p.startswith(STAGING_PREFIX)
                                                                        for p in rel.parts):
        raise RowError(f"{where}: output {value!r} is a name the batch uses itself; choose another.")
    return rel.as_posix()


def _path(value, base: Path, column: str, where: str) -> tuple[str, str]:
    """(as written, absolute path) for a file named relative to ``base``."""
    ref = _str(value, column, where).strip()
    if not ref:
        raise RowError(f"{where}: {column} is empty.")
    p = Path(ref).expanduser()
    return ref, str(p if p.is_absolute() else base / p)


# ------------------------------------------------------------------------------------------------------ identity


def file_identity(path: str | os.PathLike) -> list:
    """Name, size and modification time of a file, or of the weight and config files of a model folder: a model
    replaced under the same name gets a new identity (and its rows run again)."""
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return [str(p.resolve()), st.st_size, st.st_mtime_ns]
    if p.is_dir():
        entries = []
        for f in sorted(p.rglob("*")):
            if f.is_file() and f.suffix in (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".json"):
                st = f.stat()
                entries.append([f.relative_to(p).as_posix(), st.st_size, st.st_mtime_ns])
        return [str(p.resolve()), entries]
    return [str(path)]


def job_identity(spec: JobSpec, model_path: str | None) -> dict:
    """What, besides a row's own values, decides its pixels."""
    if spec.mode == "workflow":
        workflow = json.dumps(spec.workflow, sort_keys=True, ensure_ascii=False)
        return {"workflow": hashlib.sha256(workflow.encode()).hexdigest(), "set": spec.overrides,
                "models_dir": str(Path(spec.models_dir or os.environ.get("IPX2P_MODELS", "models")).resolve())}
    return {
        "model": file_identity(model_path) if model_path else None,
        "dtype": spec.dtype, "family": spec.family, "config": spec.config,
        "loras": [[file_identity(p), s, t] for p, s, t in spec.loras],
        "embeddings": [file_identity(p) for p in spec.embeddings],
        "restore_size": spec.restore_size, "mask_grow": spec.mask_grow, "mask_feather": spec.mask_feather,
    }


def row_key(identity: dict, decided_by: dict) -> str:
    text = json.dumps({"v": KEY_VERSION, "job": identity, "row": decided_by}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------------------------ planning


@dataclass
class Plan:
    tasks: list[RowTask]
    failed: list[tuple[RawRow, str]]  # rows that cannot run, with the reason
    keys: dict[int, str]  # row -> key, for every row (failed ones too)


def default_stems(manifest: Manifest) -> dict[int, str]:
    """row -> output stem: the image's name (``image``, else a NODE_ID.image column); rows sharing an image name get
    '<name>-<row>' (rows with an output column name their own)."""
    stems: dict[int, str] = {}
    for row in manifest.rows:
        image = row.values.get("image", next((v for c, v in row.values.items()
                                              if is_node_column(c) and c.endswith(".image")), None))
        stems[row.index] = PurePosixPath(str(image).replace("\\", "/")).stem if isinstance(image, str) else ""
    counts: dict[str, int] = {}
    for row in manifest.rows:
        if "output" not in row.values:
            counts[stems[row.index]] = counts.get(stems[row.index], 0) + 1
    return {i: (s if s and counts.get(s, 0) <= 1 else f"{s or 'row'}-{i}") for i, s in stems.items()}


def _plan(manifest: Manifest, identity: dict, build) -> Plan:
    """``build(raw, output)`` -> (the values that decide the row's pixels, its task); a RowError fails the row."""
    stems = default_stems(manifest)
    plan, claimed = Plan([], [], {}), {}
    for raw in manifest.rows:
        try:
            if raw.error:
                raise RowError(raw.error)
            output = _output_name(raw.values["output"], raw.where) if "output" in raw.values \
                else f"{stems[raw.index]}.png"
            decided, task = build(raw, output)
            task.key = plan.keys[raw.index] = row_key(identity, {**decided, "output": output})
            _claim(claimed, output, raw)
            plan.tasks.append(task)
        except RowError as exc:
            plan.keys.setdefault(raw.index, _failed_key(identity, raw, str(exc)))
            plan.failed.append((raw, str(exc)))
    return plan


def plan_edit_rows(manifest: Manifest, d: EditDefaults, identity: dict) -> Plan:
    from ipx2p_core import SamplerSettings
    from ipx2p_core.sampling import validate_settings

    def build(raw: RawRow, output: str):
        v, where = raw.values, raw.where
        if "image" not in v:
            raise RowError(f"{where}: no image (the image column is empty).")
        image_ref, image = _path(v["image"], manifest.base_dir, "image", where)
        instruction = _str(v["instruction"], "instruction", where) if "instruction" in v else d.instruction
        if not instruction or not instruction.strip():
            raise RowError(f"{where}: no instruction (fill the instruction column, or give one instruction for "
                           "all rows after the manifest).")
        negative = _str(v["negative"], "negative", where) if "negative" in v else d.negative
        mask_ref, mask = (None, None)
        if "mask" in v:
            mask_ref, mask = _path(v["mask"], manifest.base_dir, "mask", where)
        elif d.mask:
            mask_ref, mask = d.mask, str(Path(d.mask).expanduser().absolute())
        settings = {
            "steps": _int(v["steps"], "steps", where) if "steps" in v else d.steps,
            "text_guidance": _float(v["text_guidance"], "text_guidance", where) if "text_guidance" in v
            else d.text_guidance,
            "image_guidance": _float(v["image_guidance"], "image_guidance", where) if "image_guidance" in v
            else d.image_guidance,
            "scheduler": _scheduler(_str(v["scheduler"], "scheduler", where), where) if "scheduler" in v
            else d.scheduler,
            "seed": _int(v["seed"], "seed", where) if "seed" in v else d.seed + raw.index,
            "strength": _float(v["strength"], "strength", where) if "strength" in v else d.strength,
            "guidance_rescale": d.guidance_rescale, "eta": d.eta, "image_guidance_end": d.image_guidance_end,
        }
        try:
            validate_settings(SamplerSettings(**settings))
        except IP2PError as exc:
            raise RowError(f"{where}: {exc}") from None
        resize = _resize(_str(v["resize"], "resize", where), where) if "resize" in v else d.resize
        decided = {"image": image_ref, "mask": mask_ref, "instruction": instruction, "negative": negative,
                   "settings": settings, "resize": resize}
        return decided, RowTask(row=raw.index, key="", where=where, inputs=dict(v), output=output, image=image,
                                mask=mask, instruction=instruction, negative=negative, settings=settings,
                                resize=resize)

    return _plan(manifest, identity, build)


def _failed_key(identity: dict, raw: RawRow, error: str) -> str:
    """A row that cannot run: keyed by its values and the reason, so fixing the value gives it a new key."""
    return row_key(identity, {"row": raw.index, "values": raw.values, "error": error})


def _claim(claimed: dict, output: str, raw: RawRow) -> None:
    """Each output name belongs to one row (the first that names it)."""
    if output in claimed:
        raise RowError(f"{raw.where}: output {output!r} is already the output of row {claimed[output]}; give this "
                       "row another output name.")
    claimed[output] = raw.index


def check_not_overwriting(tasks: list[RowTask], out_dir: Path) -> list[tuple[RowTask, str]]:
    """Rows whose output would replace one of their own inputs (an output folder inside the images' folder)."""
    bad = []
    for t in tasks:
        target = (out_dir / t.output).resolve()
        for source in (t.image, t.mask):
            if source and Path(source).resolve() == target:
                bad.append((t, f"{t.where}: the output {out_dir / t.output} would replace the input {source}; "
                               "choose another --out folder or output name."))
                break
    return bad


# ------------------------------------------------------------------------------------------------ workflow rows


def plan_workflow_rows(manifest: Manifest, targets: "WorkflowTargets", d: EditDefaults, identity: dict,
                       input_root: Path) -> Plan:
    """Per row: the overrides that set its image, instruction, seed and NODE_ID.INPUT columns."""

    def build(raw: RawRow, output: str):
        v, where = raw.values, raw.where
        overrides: dict[str, Any] = {}
        decided: dict[str, Any] = {}
        image = None
        if "image" in v:
            ref, image = _path(v["image"], manifest.base_dir, "image", where)
            overrides[f"{targets.image}.image"] = _relative_to(image, input_root)
            decided["image"] = ref
        instruction = v.get("instruction", d.instruction)
        if instruction is not None:
            overrides[f"{targets.instruction}.instruction"] = _str(instruction, "instruction", where)
            decided["instruction"] = instruction
        seed = _int(v["seed"], "seed", where) if "seed" in v else d.seed + raw.index
        for node in targets.seeds:
            overrides[f"{node}.seed"] = seed
        decided["seed"] = seed if targets.seeds else None
        for column, value in v.items():
            if not is_node_column(column):
                continue
            node, _, name = column.partition(".")
            if node in targets.image_nodes and name == "image":  # an image path, relative to the manifest
                ref, path = _path(value, manifest.base_dir, column, where)
                image = image or path
                overrides[column], decided[column] = _relative_to(path, input_root), ref
            else:
                overrides[column] = decided[column] = value
        for node in targets.saves:  # a new prefix per row: Save Image runs for every row, never from the cache
            overrides[f"{node}.filename_prefix"] = f"row{raw.index:06d}"
        return decided, RowTask(row=raw.index, key="", where=where, inputs=dict(v), output=output, image=image,
                                settings={"seed": seed} if targets.seeds else {}, overrides=overrides)

    return _plan(manifest, identity, build)


def _relative_to(path: str, root: Path) -> str:
    return Path(os.path.relpath(Path(path).absolute(), root)).as_posix()


@dataclass
class WorkflowTargets:
    """Which nodes of the workflow the plain columns set."""

    image: str | None  # the one LoadImage node, if there is exactly one
    image_nodes: set  # every LoadImage node id
    instruction: str | None  # the one node with an 'instruction' input
    seeds: list  # every node with a 'seed' value input not set by --set
    saves: list  # every SaveImage node
