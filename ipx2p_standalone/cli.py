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
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH[:TEXT_STRENGTH]]",
                   help="apply a LoRA (repeatable); STRENGTH for the UNet (default 1; negative allowed), "
                        "TEXT_STRENGTH for the text encoder(s) (default: STRENGTH)")
    p.add_argument("--embedding", action="append", default=[], metavar="FILE",
                   help="load a textual-inversion embedding (repeatable); use it as embedding:NAME "
                        "(NAME = file name) or by its token")
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
        **_adapter_metadata(model),
    }


def _adapter_metadata(model) -> dict:
    meta = {}
    if getattr(model, "loras", ()):
        meta["loras"] = [{"file": r.label, "strength_model": r.strength_model, "strength_text": r.strength_text}
                         for r in model.loras]
    if getattr(model, "embeddings", ()):
        meta["embeddings"] = [Path(r.source).name for r in model.embeddings]
    return meta


def parse_lora_argument(value: str) -> tuple[str, float, float]:
    """``FILE[:STRENGTH[:TEXT_STRENGTH]]`` -> (file, strength, text strength); a path may itself hold colons."""
    if Path(value).exists():
        return value, 1.0, 1.0
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
    strength = numbers[0] if numbers else 1.0
    text = numbers[1] if len(numbers) > 1 else strength
    return path, strength, text


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
    loras = [parse_lora_argument(v) for v in args.lora]
    image = open_image(args.image)
    model_path = resolve_model_argument(args.model)
    if not args.quiet:
        print(f"Loading {args.model} ...", file=sys.stderr)
    model = load_model(model_path, family=args.family, dtype=args.dtype, device=args.device, config=args.config)
    if loras or args.embedding:
        from ipx2p_core import apply_embedding, apply_lora

        for path, strength, text in loras:
            model = apply_lora(model, path, strength, text)
        for path in args.embedding:
            model = apply_embedding(model, path)
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


def _add_run_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run a ComfyUI workflow (UI or API format) headlessly",
        description="Run a ComfyUI workflow file (as saved by ComfyUI, or its API export) with this pack's nodes "
                    "and LoadImage / SaveImage / PreviewImage. Prints each node as it runs and the files written.",
    )
    p.add_argument("workflow", help="workflow .json (UI or API format)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE_ID.INPUT=VALUE",
                   help="change an input before running, e.g. --set 7.text_guidance=9 --set 3.image=photo.png "
                        "(repeatable; typed by the node's input)")
    p.add_argument("--output-dir", default="output", help="where SaveImage writes (default ./output)")
    p.add_argument("--input-dir", default=".", help="where LoadImage finds images (default: current directory)")
    p.add_argument("--temp-dir", default=None, help="where PreviewImage writes (default: a new temporary folder)")
    p.add_argument("--models", default=None,
                   help="models folder with checkpoints/, diffusers/, loras/, embeddings/ "
                        "(default $IPX2P_MODELS or ./models)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: auto)")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the written files and errors")
    p.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    from ipx2p_nodes.host import StandaloneHost

    from .runner import Runner, format_errors
    from .workflow import OverrideError, WorkflowFormatError, load_workflow_file, parse_set_argument

    try:
        workflow = load_workflow_file(args.workflow)
        overrides = dict(parse_set_argument(item) for item in args.overrides)
    except (WorkflowFormatError, OverrideError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    host = StandaloneHost(models_dir=args.models, device=args.device)
    host.previews = False  # nothing here shows latent previews; skip making them
    if not args.quiet and not getattr(args, "verbose", False):
        _no_library_progress_bars()  # our per-node lines and step bar are the progress shown
    runner = Runner(output_dir=args.output_dir, input_dir=args.input_dir, temp_dir=args.temp_dir, host=host)
    reporter = _RunReporter(runner, quiet=args.quiet)
    result = runner.run(workflow, overrides=overrides, on_event=reporter)
    reporter.close()
    if result.status == "invalid":
        print("error: the workflow cannot run:", file=sys.stderr)
        for line in format_errors(result.error, result.node_errors, result.prompt).splitlines():
            print(f"  {line}", file=sys.stderr)
        return EXIT_ERROR
    if result.status == "interrupted":
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.status == "error":
        err = result.error or {}
        print(f"error: node {err.get('node_id')} ({err.get('node_type')}) failed: "
              f"{str(err.get('exception_message', '')).strip()}", file=sys.stderr)
        if not args.quiet:
            print("".join(err.get("traceback") or []).rstrip(), file=sys.stderr)
        return EXIT_ERROR
    for path in result.files:
        print(path)
    return 0


def _no_library_progress_bars() -> None:
    for module in ("transformers.utils.logging", "diffusers.utils.logging"):
        try:
            __import__(module, fromlist=["disable_progress_bar"]).disable_progress_bar()
        except (ImportError, AttributeError):
            pass


class _RunReporter:
    """Prints one line per node and a progress bar for nodes that report steps (to stderr)."""

    def __init__(self, runner, quiet: bool):
        self.runner = runner
        self.quiet = quiet
        self.bar = None
        self.started = {}
        self.prompt = None

    def _label(self, node_id) -> str:
        cls = (self.prompt or {}).get(node_id, {}).get("class_type", "")
        title = (self.prompt or {}).get(node_id, {}).get("_meta", {}).get("title") or \
            self.runner.display_names.get(cls, cls)
        return f"#{node_id} {title}" + (f" [{cls}]" if cls and cls != title else "")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __call__(self, event: str, data: dict) -> None:
        import time

        if self.quiet:
            return
        if event == "execution_start":
            self.prompt = self.runner.current_prompt
        elif event == "execution_cached" and data.get("nodes"):
            print(f"cached: {', '.join('#' + n for n in data['nodes'])}", file=sys.stderr)
        elif event == "executing" and data.get("node") is not None:
            self.close()
            self.started[data["node"]] = time.perf_counter()
            print(f"running {self._label(data['node'])}", file=sys.stderr)
        elif event == "progress":
            from tqdm import tqdm

            if self.bar is None:
                self.bar = tqdm(total=data["max"], unit="step", file=sys.stderr, leave=False,
                                desc=f"  #{data['node']}")
            self.bar.total = data["max"]
            self.bar.update(data["value"] - self.bar.n)
        elif event == "progress_state":
            for node_id, state in data.get("nodes", {}).items():
                if state.get("state") == "finished" and node_id in self.started:
                    self.close()
                    seconds = time.perf_counter() - self.started.pop(node_id)
                    print(f"  done {self._label(node_id)} in {seconds:.2f}s", file=sys.stderr)


def _add_studio_parser(sub) -> None:
    p = sub.add_parser(
        "studio",
        help="serve the ComfyUI frontend with this pack's nodes in your browser",
        description="Serve the official ComfyUI frontend (pinned comfyui-frontend-package) with this pack's nodes, "
                    "example workflows and web extensions; graphs run through the same runner as `ipx2p run`. "
                    "Needs the studio extra: pip install -e \".[studio]\".",
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; anything else exposes the "
                        "studio, which has no login, to the network)")
    p.add_argument("--port", type=int, default=8188, help="port (default 8188; 0 picks a free one)")
    p.add_argument("--models", default=None,
                   help="models folder with checkpoints/, diffusers/, loras/, embeddings/ "
                        "(default $IPX2P_MODELS or ./models)")
    p.add_argument("--output-dir", default="output", help="where SaveImage writes (default ./output)")
    p.add_argument("--input-dir", default="input", help="uploaded and loadable images (default ./input)")
    p.add_argument("--user-dir", default="user", help="settings and saved workflows (default ./user)")
    p.add_argument("--temp-dir", default=None, help="PreviewImage files (default: a temporary folder)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: auto)")
    p.add_argument("--max-upload-mb", type=float, default=100, help="largest upload accepted (default 100)")
    p.set_defaults(func=cmd_studio)


def cmd_studio(args) -> int:
    try:
        from .studio import StudioConfig, StudioError, run_studio
    except ImportError as exc:
        print(f"error: the studio needs its extra dependencies ({exc}); install them with: "
              "pip install -e \".[studio]\"", file=sys.stderr)
        return EXIT_ERROR
    logging.getLogger("ipx2p_standalone").setLevel(logging.INFO)  # one line per finished prompt
    config = StudioConfig(host=args.host, port=args.port, models_dir=args.models, output_dir=args.output_dir,
                          input_dir=args.input_dir, user_dir=args.user_dir, temp_dir=args.temp_dir,
                          device=args.device, max_upload_mb=args.max_upload_mb)
    try:
        run_studio(config)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # the port is taken, the address is not ours
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipx2p", description="Edit images with written instructions (InstructPix2Pix).")
    parser.add_argument("--verbose", "-v", action="store_true", help="show library logs and warnings")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_edit_parser(sub)
    _add_run_parser(sub)
    _add_studio_parser(sub)
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
