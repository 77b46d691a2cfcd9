"""``ipx2p edit``, ``ipx2p sweep`` and ``ipx2p chain``: edits straight from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ipx2p_core import defaults
from ipx2p_core.errors import IP2PError
from ipx2p_core.number_lists import format_number_list, parse_number_list
from ipx2p_core.families import family_names
from ipx2p_core.schedulers import SCHEDULERS

from .compile_option import add_compile_argument, show_compile_progress
from .output_files import check_outputs, save_output


# ------------------------------------------------------------------------------------------------------- arguments


def _add_model_arguments(p, model_required: bool = True) -> None:
    p.add_argument("--model", "-m", required=model_required,
                   help="diffusers folder, .safetensors file, a model name in $IPX2P_MODELS or ./models (NAME, "
                        "diffusers/NAME, ...), or Hub id (timbrooks/instruct-pix2pix)")
    p.add_argument("--dtype", default=defaults.DTYPE, choices=["auto", "fp32", "fp16", "bf16"],
                   help="model precision; auto (default) = fp16 on a GPU, fp32 on the CPU")
    p.add_argument("--device", default=defaults.DEVICE, help="cpu, cuda, cuda:N, mps or auto (default)")
    p.add_argument("--family", default=defaults.FAMILY, choices=["auto", *family_names()],
                   help="model family; auto reads it from the weights")
    p.add_argument("--config", default=None, help="diffusers-layout config folder for unusual single files")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH[:TEXT_STRENGTH]]",
                   help=f"apply a LoRA (repeatable); STRENGTH for the UNet (default {defaults.LORA_STRENGTH:g}; "
                        "negative allowed), "
                        "TEXT_STRENGTH for the text encoder(s) (default: STRENGTH)")
    p.add_argument("--embedding", action="append", default=[], metavar="FILE",
                   help="load a textual-inversion embedding (repeatable); use it as embedding:NAME "
                        "(NAME = file name) or by its token")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_compile_argument(p)


def _add_sampling_arguments(p, guidance: bool = True) -> None:
    p.add_argument("--steps", type=int, default=defaults.STEPS, help=f"denoising steps (default {defaults.STEPS})")
    if guidance:
        p.add_argument("--text-guidance", type=float, default=defaults.TEXT_GUIDANCE,
                       help=f"how strongly to follow the instruction (default {defaults.TEXT_GUIDANCE})")
        p.add_argument("--image-guidance", type=float, default=defaults.IMAGE_GUIDANCE,
                       help=f"how closely to stay with the input image (default {defaults.IMAGE_GUIDANCE})")
    p.add_argument("--seed", type=int, default=defaults.SEED, help=f"random seed (default {defaults.SEED})")
    p.add_argument("--scheduler", default=defaults.SCHEDULER, choices=["auto", *SCHEDULERS],
                   help="sampler; auto = Euler ancestral (EDM Euler for CosXL Edit)")
    p.add_argument("--negative", default="", help="negative instruction (what to avoid)")
    p.add_argument("--resize", default=defaults.RESIZE,
                   help="keep (input size, multiple of 8) | fit:N (longest side ~N, multiples of 64) | WxH")
    p.add_argument("--restore-size", action=argparse.BooleanOptionalAction, default=defaults.RESTORE_SIZE,
                   help="return the result at the input's size (default on; --no-restore-size keeps the size it "
                        "was sampled at)")


def add_edit_options(p) -> None:
    """Options of a single edit beyond the sampling ones (``ipx2p edit`` and ``ipx2p batch``)."""
    p.add_argument("--guidance-rescale", type=float, default=defaults.GUIDANCE_RESCALE,
                   help=f"0..1, counters over-saturation (default {defaults.GUIDANCE_RESCALE:g})")
    p.add_argument("--eta", type=float, default=defaults.ETA, help=f"DDIM eta (default {defaults.ETA:g})")
    p.add_argument("--strength", type=float, default=defaults.STRENGTH,
                   help="edit strength in (0, 1]: lower starts from the input and keeps more structure "
                        f"(default {defaults.STRENGTH:g})")
    p.add_argument("--image-guidance-end", type=float, default=defaults.IMAGE_GUIDANCE_END,
                   help="image guidance at the last step (linear from --image-guidance); default constant")
    p.add_argument("--mask", default=None, metavar="FILE",
                   help="edit only where this mask is white (greyscale image, or the transparency of an RGBA "
                        "image); outside it the output keeps the input's pixels exactly")
    p.add_argument("--mask-grow", type=int, default=defaults.MASK_GROW,
                   help=f"grow (or, negative, shrink) the mask by N pixels (default {defaults.MASK_GROW})")
    p.add_argument("--mask-feather", type=int, default=defaults.MASK_FEATHER,
                   help=f"soften the mask's edge over N pixels (default {defaults.MASK_FEATHER})")


def add_edit_parsers(sub) -> None:
    p = sub.add_parser(
        "edit",
        help="edit an image following an instruction",
        description="Edit IMAGE following INSTRUCTION with an InstructPix2Pix model (SD 1.5, SDXL or CosXL Edit).",
    )
    p.add_argument("image", nargs="?", help="input image file (PNG, JPEG, WebP, ...)")
    p.add_argument("instruction", nargs="?", help='what to change, e.g. "make it winter"')
    p.add_argument("-o", "--output", default="edited.png",
                   help="output image, .png, .jpg or .webp (several images get _1, _2, ...)")
    p.add_argument("--from-png", default=None, metavar="PNG",
                   help="run the edit recorded in an ipx2p PNG again (its image, instruction, model and every "
                        "setting); options given here change those")
    _add_overwrite_argument(p)
    _add_model_arguments(p, model_required=False)
    _add_sampling_arguments(p)
    p.add_argument("--images", type=int, default=defaults.IMAGES_PER_INSTRUCTION,
                   help="number of edits to make (different noise each)")
    add_edit_options(p)
    p.set_defaults(func=cmd_edit, edit_options={a.dest: a.option_strings for a in p._actions if a.option_strings})

    p = sub.add_parser(
        "sweep",
        help="try a grid of text x image guidance values (one contact sheet)",
        description="Edit IMAGE with every pair of the given text and image guidance values, same seed, and write "
                    "a labelled contact sheet plus every edit.",
    )
    p.add_argument("image", help="input image file")
    p.add_argument("instruction", help='what to change, e.g. "make it winter"')
    p.add_argument("-o", "--output", default="sweep.png",
                   help="contact sheet, .png, .jpg or .webp (cells go to OUTPUT_cells/ in the same format)")
    _add_overwrite_argument(p)
    text_values = format_number_list(defaults.SWEEP_TEXT_GUIDANCES)
    image_values = format_number_list(defaults.SWEEP_IMAGE_GUIDANCES)
    p.add_argument("--text", dest="text_values", default=text_values,
                   help=f"text guidance values, comma separated (default {text_values!r})")
    p.add_argument("--image", dest="image_values", default=image_values,
                   help=f"image guidance values, comma separated (default {image_values!r})")
    p.add_argument("--max-batch", type=int, default=defaults.SWEEP_MAX_BATCH,
                   help="largest UNet batch per call (edits x passes); lower it when memory runs out "
                        f"(default {defaults.SWEEP_MAX_BATCH}; never changes the results)")
    _add_model_arguments(p)
    _add_sampling_arguments(p, guidance=False)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "chain",
        help="apply several instructions one after another",
        description="Apply each INSTRUCTION to the previous result, starting from IMAGE; writes every step.",
    )
    p.add_argument("image", help="input image file")
    p.add_argument("instructions", nargs="+", help='instructions in order, e.g. "make it winter" "add a snowman"')
    p.add_argument("-o", "--output", default="chain.png", help="output image, .png, .jpg or .webp (steps get _1, _2, ...)")
    _add_overwrite_argument(p)
    _add_model_arguments(p)
    _add_sampling_arguments(p)
    p.set_defaults(func=cmd_chain)


# --------------------------------------------------------------------------------------------------------- helpers


def _add_overwrite_argument(p) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="allow -o to name the input image (or mask) and replace it; other existing files of the "
                        "output's name are always replaced")


def _output_paths(output: str, count: int) -> list[Path]:
    out = Path(output)
    if not out.suffix:
        out = out.with_suffix(".png")
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i + 1}{out.suffix}") for i in range(count)]


def bounded_text(meta: dict, key: str, text: str | None) -> None:
    """``meta[key] = text``, or for a text longer than ``defaults.METADATA_TEXT_CHARS`` its start plus its length and
    sha256 (``KEY_chars``, ``KEY_sha256``): metadata stays small whatever was typed."""
    import hashlib

    if text is None or len(text) <= defaults.METADATA_TEXT_CHARS:
        meta[key] = text
        return
    meta[key] = text[: defaults.METADATA_TEXT_CHARS] + "…"
    meta[f"{key}_chars"] = len(text)
    meta[f"{key}_sha256"] = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def check_instructions(args) -> None:
    """The instruction length limit, checked before the model loads."""
    from ipx2p_core.text import check_instruction

    for text in [getattr(args, "instruction", None), *getattr(args, "instructions", [])]:
        check_instruction(text)
    check_instruction(args.negative, "negative instruction")


def _cell_path(sheet: Path, text: float, image: float, per_cell: int, k: int) -> Path:
    """A sweep cell's file: OUTPUT_cells/textT_imageG[_N] in the sheet's format."""
    return sheet.with_name(f"{sheet.stem}_cells") / \
        f"text{text:g}_image{image:g}{'' if per_cell == 1 else f'_{k + 1}'}{sheet.suffix}"


def settings_metadata(args, model, seed: int) -> dict:
    """What an edit ran with, as recorded in its PNG: enough to run it again (``ipx2p edit --from-png``). Values
    are the ones that ran: the scheduler ``auto`` stood for, the precision ``auto`` chose, full model and adapter
    paths beside their short names."""
    from ipx2p_core.schedulers import resolve_scheduler_name

    scheduler = resolve_scheduler_name(args.scheduler, model.is_edm, model.family.default_scheduler).name
    meta = {
        "instruction": getattr(args, "instruction", None),
        "negative": args.negative,
        "image": _absolute(getattr(args, "image", None)),
        "model": Path(model.source).name,
        "model_path": str(Path(model.source).absolute()),
        "family": model.family.name,
        "config": _absolute(getattr(args, "config", None)),
        "steps": args.steps,
        "text_guidance": getattr(args, "text_guidance", None),
        "image_guidance": getattr(args, "image_guidance", None),
        "scheduler": scheduler,
        "seed": seed,
        "resize": args.resize,
        "restore_size": getattr(args, "restore_size", defaults.RESTORE_SIZE),
        "images": getattr(args, "images", defaults.IMAGES_PER_INSTRUCTION),
        "dtype": args.dtype,
        "generator": "ipx2p",
        **_adapter_metadata(model),
    }
    bounded_text(meta, "instruction", meta["instruction"])  # a huge text keeps its start, length and sha256
    bounded_text(meta, "negative", meta["negative"])
    if getattr(model, "compiled", False):
        meta["compiled"] = True  # fast mode ran (pixels within 1e-3 of eager)
    for extra in ("guidance_rescale", "eta", "strength", "image_guidance_end", "mask"):
        if getattr(args, extra, None) is not None:
            meta[extra] = getattr(args, extra)
    if meta.get("mask") is not None:
        meta["mask"] = _absolute(meta["mask"])
        meta["mask_grow"] = getattr(args, "mask_grow", defaults.MASK_GROW)
        meta["mask_feather"] = getattr(args, "mask_feather", defaults.MASK_FEATHER)
    return {k: v for k, v in meta.items() if v is not None or k in ("text_guidance", "image_guidance")}


def _absolute(path) -> str | None:
    return str(Path(path).expanduser().absolute()) if path else None


def _adapter_metadata(model) -> dict:
    meta = {}
    if getattr(model, "loras", ()):
        meta["loras"] = [{"file": r.label, "path": r.source, "strength_model": r.strength_model,
                          "strength_text": r.strength_text} for r in model.loras]
    if getattr(model, "embeddings", ()):
        meta["embeddings"] = [Path(r.source).name for r in model.embeddings]
        meta["embedding_paths"] = [r.source for r in model.embeddings]
    return meta


def parse_lora_argument(value: str) -> tuple[str, float, float]:
    """``FILE[:STRENGTH[:TEXT_STRENGTH]]`` -> (file, strength, text strength); a path may itself hold colons."""
    if Path(value).exists():
        return value, defaults.LORA_STRENGTH, defaults.LORA_STRENGTH
    parts = value.split(":")
    numbers: list[float] = []
    while len(parts) > 1 and len(numbers) < 2:
        try:
            numbers.insert(0, float(parts[-1]))
        except ValueError:
            break
        parts.pop()
    path = ":".join(parts)
    if not path:
        raise IP2PError(f"--lora {value!r}: give a file, optionally followed by :STRENGTH[:TEXT_STRENGTH].")
    strength = numbers[0] if numbers else defaults.LORA_STRENGTH
    text = numbers[1] if len(numbers) > 1 else strength
    return path, strength, text


def png_info(metadata: dict):
    """The PNG text chunks of an edit: ``ipx2p`` (JSON settings) and A1111-style ``parameters``."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("ipx2p", json.dumps(metadata))
    if metadata.get("instruction") is not None:
        info.add_text(
            "parameters",
            f"{metadata['instruction']}\nNegative prompt: {metadata['negative']}\n"
            f"Steps: {metadata['steps']}, Sampler: {metadata['scheduler']}, CFG scale: {metadata['text_guidance']}, "
            f"Image CFG scale: {metadata['image_guidance']}, Seed: {metadata['seed']}, Model: {metadata['model']}",
        )
    return info


def _settings(args, **extra):
    from ipx2p_core import SamplerSettings
    from ipx2p_core.sampling import validate_settings

    settings = SamplerSettings(
        steps=args.steps,
        text_guidance=getattr(args, "text_guidance", defaults.TEXT_GUIDANCE),
        image_guidance=getattr(args, "image_guidance", defaults.IMAGE_GUIDANCE),
        scheduler=args.scheduler,
        seed=args.seed,
        **extra,
    )
    validate_settings(settings)
    return settings


def _load(args):
    """Load the model with its LoRAs and embeddings; say what was loaded."""
    from ipx2p_core import apply_embedding, apply_lora, load_model
    from ipx2p_core.models import parse_device

    from .model_download import local_model_path, resolve_model_argument

    loras = [(local_model_path(p, ("loras",)), s, t) for p, s, t in map(parse_lora_argument, args.lora)]
    model_path = resolve_model_argument(args.model)
    if not args.quiet:
        print(f"Loading {args.model} ...", file=sys.stderr)
    device = parse_device(args.device)
    args.dtype = defaults.dtype_for(args.dtype, device.type)  # the precision used, also for the PNG metadata
    if args.compile:
        show_compile_progress(args.quiet)
    model = load_model(model_path, family=args.family, dtype=args.dtype, device=device, config=args.config,
                       fast=args.compile)
    for path, strength, text in loras:
        model = apply_lora(model, path, strength, text)
    for path in args.embedding:
        model = apply_embedding(model, local_model_path(path, ("embeddings",)))
    if not args.quiet:
        print(f"Model: {model.describe()}", file=sys.stderr)
    return model


class _Progress:
    """A tqdm bar fed by the engine's step callback (one bar per sampling run)."""

    def __init__(self, args, label: str):
        self.quiet, self.label, self.bar = args.quiet, label, None

    def __call__(self, step, total, _latents):
        if self.quiet:
            return
        from tqdm import tqdm

        if self.bar is None or step <= self.bar.n:
            self.close()
            self.bar = tqdm(total=total, desc=self.label, unit="step", file=sys.stderr)
        self.bar.update(step - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# -------------------------------------------------------------------------------------------------------- commands


# PNG metadata key -> edit option (``--from-png``)
FROM_PNG = {"image": "image", "instruction": "instruction", "negative": "negative", "model_path": "model",
            "family": "family", "config": "config", "steps": "steps", "text_guidance": "text_guidance",
            "image_guidance": "image_guidance", "scheduler": "scheduler", "seed": "seed", "resize": "resize",
            "restore_size": "restore_size", "images": "images", "dtype": "dtype",
            "guidance_rescale": "guidance_rescale", "eta": "eta", "strength": "strength",
            "image_guidance_end": "image_guidance_end", "mask": "mask", "mask_grow": "mask_grow",
            "mask_feather": "mask_feather", "embedding_paths": "embedding"}


def read_png_settings(path) -> dict:
    """The ``ipx2p`` JSON settings an edit wrote into its PNG."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            text = getattr(img, "text", {}).get("ipx2p")
    except (OSError, ValueError) as exc:
        raise IP2PError(f"--from-png {path}: cannot read it as a PNG ({exc}).") from None
    if not text:
        raise IP2PError(f"--from-png {path}: it has no ipx2p settings (only PNGs written by ipx2p edit or ipx2p "
                        "batch have them).")
    return json.loads(text)


def apply_png_settings(args) -> None:
    """Set every option not given on the command line from ``--from-png``'s recorded settings."""
    meta = read_png_settings(args.from_png)
    argv = getattr(args, "argv", None) or []
    given = {dest for dest, flags in args.edit_options.items()
             if any(t == f or t.startswith(f + "=") for t in argv for f in flags if f.startswith("--") or t == f)}
    given |= {dest for dest in ("image", "instruction") if getattr(args, dest) is not None}
    for key, dest in FROM_PNG.items():
        if key in meta and dest not in given:
            setattr(args, dest, meta[key])
    if "lora" not in given and meta.get("loras"):
        args.lora = [f"{r['path']}:{r['strength_model']}:{r['strength_text']}" for r in meta["loras"]]


def cmd_edit(args) -> int:
    from ipx2p_core import images_to_pil
    from ipx2p_core.image import ResizePolicy, open_image
    from ipx2p_core.pipeline import edit

    if args.from_png:
        apply_png_settings(args)
    for dest, option in (("image", "IMAGE"), ("instruction", "INSTRUCTION"), ("model", "--model")):
        if getattr(args, dest) is None:
            raise IP2PError(f"ipx2p edit needs {option} (or --from-png PNG to take it from an earlier edit).")
    # Check cheap inputs before the expensive model load.
    check_instructions(args)
    check_outputs(_output_paths(args.output, args.images), [args.image, args.mask], args.overwrite)
    resize = ResizePolicy.parse(args.resize)
    settings = _settings(args, images_per_instruction=args.images, guidance_rescale=args.guidance_rescale,
                         eta=args.eta, strength=args.strength, image_guidance_end=args.image_guidance_end)
    image = open_image(args.image)
    mask = open_image(args.mask) if args.mask else None
    model = _load(args)
    progress = _Progress(args, "Editing")
    try:
        result = edit(model, image, args.instruction, negative=args.negative or None, settings=settings,
                      resize=resize, restore_size=args.restore_size, mask=mask, mask_grow=args.mask_grow,
                      mask_feather=args.mask_feather, callback=progress)
    finally:
        progress.close()
    paths = _output_paths(args.output, result.images.shape[0])
    meta = settings_metadata(args, model, args.seed)
    for i, (img, path) in enumerate(zip(images_to_pil(result.images), paths)):
        save_output(img, path, {**meta, "index": i})
        print(path)
    return 0


def cmd_sweep(args) -> int:
    from ipx2p_core import images_to_pil
    from ipx2p_core.image import ResizePolicy, open_image
    from ipx2p_core.pipeline import guidance_sweep

    check_instructions(args)
    texts, imgs = parse_number_list(args.text_values, "--text"), parse_number_list(args.image_values, "--image")
    sheet_path = _output_paths(args.output, 1)[0]
    check_outputs([sheet_path, *(_cell_path(sheet_path, t, g, 1, 0) for t in texts for g in imgs)], [args.image],
                  args.overwrite)
    resize = ResizePolicy.parse(args.resize)
    settings = _settings(args)
    image = open_image(args.image)
    model = _load(args)
    progress = _Progress(args, f"Sweep {len(texts)}x{len(imgs)}")
    try:
        result = guidance_sweep(model, image, args.instruction, texts, imgs, negative=args.negative or None,
                                settings=settings, resize=resize, restore_size=args.restore_size,
                                max_rows=args.max_batch, callback=progress)
    finally:
        progress.close()
    meta = settings_metadata(args, model, args.seed)
    save_output(images_to_pil(result.sheet)[0], sheet_path, {**meta, "cells": [list(c) for c in result.cells]})
    print(sheet_path)
    per_cell = result.images.shape[0] // len(result.cells)
    for k, img in enumerate(images_to_pil(result.images)):
        t, g = result.cells[k // per_cell]
        path = _cell_path(sheet_path, t, g, per_cell, k % per_cell)
        save_output(img, path, {**meta, "text_guidance": t, "image_guidance": g})
        print(path)
    return 0


def cmd_chain(args) -> int:
    from ipx2p_core import images_to_pil
    from ipx2p_core.image import ResizePolicy, labelled_grid, open_image, to_image_batch
    from ipx2p_core.pipeline import edit_chain, sheet_title

    check_instructions(args)
    steps = [s for s in args.instructions if s.strip()]
    strip_path = _output_paths(args.output, 1)[0]  # the strip of all steps; chain_1..N beside it
    paths = [strip_path.with_name(f"{strip_path.stem}_{i + 1}{strip_path.suffix}") for i in range(len(steps))]
    check_outputs([strip_path, *paths], [args.image], args.overwrite)
    resize = ResizePolicy.parse(args.resize)
    settings = _settings(args)
    image = open_image(args.image)
    model = _load(args)
    progress = _Progress(args, "Editing")
    try:
        results = edit_chain(model, image, args.instructions, negative=args.negative or None, settings=settings,
                             resize=resize, restore_size=args.restore_size, callback=progress)
    finally:
        progress.close()
    meta = settings_metadata(args, model, args.seed)
    for i, (result, path) in enumerate(zip(results, paths)):
        save_output(images_to_pil(result.images)[0], path, {**meta, "instruction": steps[i], "chain": steps[: i + 1]})
        print(path)
    # the whole chain at a glance: the input, then every step under its instruction
    strip = labelled_grid([to_image_batch(image)[0], *(r.images[0] for r in results)], columns=len(results) + 1,
                          title=sheet_title(model, " \u2192 ".join(steps), settings),
                          column_labels=["input", *(f"{i + 1}. {s[:40]}" for i, s in enumerate(steps))])
    save_output(images_to_pil(strip)[0], strip_path, {**meta, "instruction": None, "chain": steps})
    print(strip_path)
    return 0
