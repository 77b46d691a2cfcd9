"""``ipx2p``: edit images with written instructions from the command line."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from ipx2p_core.errors import Cancelled, IP2PError

from .batch.command import add_batch_parser
from .compile_option import add_compile_argument, show_compile_progress
from .edit_commands import add_edit_parsers, parse_lora_argument
from .save_commands import add_save_parsers

__all__ = ["main", "parse_lora_argument"]

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


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
    add_compile_argument(p, help="fast mode for every Load Model node of the workflow (as if its compile input "
                                 "were on); see `ipx2p edit --help`")
    p.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    from .host import StandaloneHost
    from .runner import Runner, format_errors
    from .workflow import OverrideError, WorkflowFormatError, load_workflow_file, parse_set_argument

    try:
        workflow = load_workflow_file(args.workflow)
        overrides = dict(parse_set_argument(item) for item in args.overrides)
    except (WorkflowFormatError, OverrideError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    host = StandaloneHost(models_dir=args.models, device=args.device, temp_dir=args.temp_dir)
    host.previews = False  # nothing here shows latent previews; skip making them
    host.compile_models = args.compile
    if args.compile:
        show_compile_progress(args.quiet)
    runner = Runner(output_dir=args.output_dir, input_dir=args.input_dir, host=host)
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
    p.add_argument("--output-dir", default=None, help="where SaveImage writes (default: output/ in the studio's "
                                                       "per-user folder, $IPX2P_STUDIO_HOME or "
                                                       "~/.local/share/ipx2p/studio on Linux)")
    p.add_argument("--input-dir", default=None, help="uploaded and loadable images (default: input/ there)")
    p.add_argument("--user-dir", default=None, help="settings and saved workflows (default: user/ there)")
    p.add_argument("--temp-dir", default=None, help="PreviewImage files (default: a temporary folder)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: auto)")
    p.add_argument("--max-upload-mb", type=float, default=100, help="largest upload accepted (default 100)")
    add_compile_argument(p, help="fast mode for every model the studio loads (as if each Load Model node's compile "
                                 "input were on): the first prompt with a model compiles it, later ones run faster")
    p.set_defaults(func=cmd_studio)


def cmd_studio(args) -> int:
    try:
        from .studio import StudioConfig, StudioError, run_studio
    except ImportError as exc:
        print(f"error: the studio needs its extra dependencies ({exc}); install them with: "
              "pip install -e \".[studio]\"", file=sys.stderr)
        return EXIT_ERROR
    logging.getLogger("ipx2p_standalone").setLevel(logging.INFO)  # one line per finished prompt
    logging.getLogger("ipx2p_core.fast").setLevel(logging.INFO)  # "compiling the UNet ..." lines in fast mode
    config = StudioConfig(host=args.host, port=args.port, models_dir=args.models, output_dir=args.output_dir,
                          input_dir=args.input_dir, user_dir=args.user_dir, temp_dir=args.temp_dir,
                          device=args.device, max_upload_mb=args.max_upload_mb, compile_models=args.compile)
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
    add_edit_parsers(sub)
    add_save_parsers(sub)
    add_batch_parser(sub)
    _add_run_parser(sub)
    _add_studio_parser(sub)
    return parser


# how the engine's fixes read on the command line (IP2PError.phrased)
CLI_OPTIONS = {"config": "--config DIR", "device": "--device {value}", "overwrite": "--overwrite"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # which options were given (ipx2p edit --from-png)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        _quiet_libraries()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return args.func(args)
    except IP2PError as exc:
        print(f"error: {exc.phrased(CLI_OPTIONS)}", file=sys.stderr)
        return EXIT_ERROR
    except (KeyboardInterrupt, Cancelled):
        print("interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning (instruction truncated, mask stretched, ...) as one ``warning:`` line, without the internal file
    and line Python's default format shows."""
    text = " ".join(str(message).split())
    print(f"warning: {text}", file=file or sys.stderr)


def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("diffusers", "transformers", "accelerate", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    _no_library_progress_bars()  # transformers' "Loading weights" bar: ours show the progress that matters
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.set_verbosity_error()
        tlog.set_verbosity_error()
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
