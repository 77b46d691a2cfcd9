"""``ipx2p``: edit images with written instructions from the command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from ipx2p_core import defaults
from ipx2p_core.errors import Cancelled, IP2PError
from ipx2p_core.schedulers import SCHEDULERS

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _add_edit_parser(sub) -> None:
    p = sub.add_parser(
        "edit",
        help="edit an image following an instruction",
        description="Edit IMAGE following INSTRUCTION with an InstructPix2Pix model (SD 1.5, SDXL or CosXL Edit).",
    )
    p.add_argument("image", help="input image file (PNG, JPEG, WebP, ...)")
    p.add_argument("instruction", help='what to change, e.g. "make it winter"')
    p.add_argument("--model", "-m", required=True,
                   help="diffusers folder, .safetensors file, or Hub id (timbrooks/instruct-pix2pix)")
    p.add_argument("-o", "--output", default="edited.png", help="output PNG (several images get _1, _2, ...)")
    p.add_argument("--steps", type=int, default=defaults.STEPS, help=f"denoising steps (default {defaults.STEPS})")
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
    p.add_argument("--restore-size", action="store_true", help="resize the result back to the input's size")
    p.add_argument("--images", type=int, default=1, help="number of edits to make (different noise each)")
    p.add_argument("--guidance-rescale", type=float, default=0.0, help="0..1, counters over-saturation (default 0)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (default 0)")
    p.add_argument("--dtype", default=defaults.DTYPE, choices=["fp32", "fp16", "bf16"], help="model precision")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default)")
    p.add_argument("--family", default="auto", choices=["auto", "sd15", "sdxl", "cosxl"],
                   help="model family; auto reads it from the weights")
    p.add_argument("--config", default=None, help="diffusers-layout config folder for unusual single files")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_edit)


def _output_paths(output: str, count: int) -> list[Path]:
    out = Path(output)
    if out.suffix.lower() != ".png":
        out = out.with_suffix(".png")
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i + 1}{out.suffix}") for i in range(count)]


def settings_metadata(args, model, seed: int) -> dict:
    return {
        "instruction": args.instruction,
        "negative": args.negative,
        "model": Path(model.source).name,
        "family": model.family.value,
        "steps": args.steps,
        "text_guidance": args.text_guidance,
        "image_guidance": args.image_guidance,
        "scheduler": args.scheduler,
        "seed": seed,
        "resize": args.resize,
        "guidance_rescale": args.guidance_rescale,
        "eta": args.eta,
        "dtype": args.dtype,
        "generator": "ipx2p",
    }


def save_png(image, path: Path, metadata: dict) -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("ipx2p", json.dumps(metadata))
    info.add_text(
        "parameters",
        f"{metadata['instruction']}\nNegative prompt: {metadata['negative']}\n"
        f"Steps: {metadata['steps']}, Sampler: {metadata['scheduler']}, CFG scale: {metadata['text_guidance']}, "
        f"Image CFG scale: {metadata['image_guidance']}, Seed: {metadata['seed']}, Model: {metadata['model']}",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, pnginfo=info)


def cmd_edit(args) -> int:
    from tqdm import tqdm

    from ipx2p_core import SamplerSettings, images_to_pil, load_model
    from ipx2p_core.image import ResizePolicy, open_image
    from ipx2p_core.pipeline import edit

    from .hub import resolve_model_argument

    # Check cheap inputs before the expensive model load.
    resize = ResizePolicy.parse(args.resize)
    settings = SamplerSettings(
        steps=args.steps,
        text_guidance=args.text_guidance,
        image_guidance=args.image_guidance,
        scheduler=args.scheduler,
        seed=args.seed,
        images_per_instruction=args.images,
        guidance_rescale=args.guidance_rescale,
        eta=args.eta,
    )
    from ipx2p_core.sampling import validate_settings

    validate_settings(settings)
    image = open_image(args.image)
    model_path = resolve_model_argument(args.model)
    if not args.quiet:
        print(f"Loading {args.model} ...", file=sys.stderr)
    model = load_model(model_path, family=args.family, dtype=args.dtype, device=args.device, config=args.config)
    if not args.quiet:
        print(f"Model: {model.describe()}", file=sys.stderr)

    bar = None if args.quiet else tqdm(total=args.steps, desc="Editing", unit="step", file=sys.stderr)

    def progress(step, total, _latents):
        if bar is not None:
            bar.total = total
            bar.update(step - bar.n)

    try:
        result = edit(model, image, args.instruction, negative=args.negative or None, settings=settings,
                      resize=resize, restore_size=args.restore_size, callback=progress)
    finally:
        if bar is not None:
            bar.close()
    paths = _output_paths(args.output, result.images.shape[0])
    meta = settings_metadata(args, model, args.seed)
    for i, (img, path) in enumerate(zip(images_to_pil(result.images), paths)):
        save_png(img, path, {**meta, "index": i})
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipx2p", description="Edit images with written instructions (InstructPix2Pix).")
    parser.add_argument("--verbose", "-v", action="store_true", help="show library logs and warnings")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_edit_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        _quiet_libraries()
    try:
        return args.func(args)
    except IP2PError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (KeyboardInterrupt, Cancelled):
        print("interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED


def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("diffusers", "transformers", "accelerate", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.set_verbosity_error()
        tlog.set_verbosity_error()
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
