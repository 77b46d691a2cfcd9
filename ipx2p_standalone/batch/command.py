"""``ipx2p batch``: the driver. Reads the manifest, plans rows, skips what results.jsonl says is done, hands the
rest to workers (this process, worker processes, or Ray actors), journals every finished row, shows progress.

Exit status: 0 when every row is done, 1 when some failed (their count is printed), 2 for a bad command found before
any work starts (unreadable manifest, unknown column, unknown model, unusable workflow), 130 when interrupted
(rows finished so far are kept; the same command resumes).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from ipx2p_core import defaults
from ipx2p_core.errors import IP2PError

from .journal import Journal, JournalLocked, clean_leftovers
from .manifest import ManifestError, is_node_column, read_manifest
from .tasks import (
    EditDefaults,
    JobSpec,
    Plan,
    RowTask,
    WorkflowTargets,
    check_not_overwriting,
    job_identity,
    plan_edit_rows,
    plan_workflow_rows,
)

EXIT_OK, EXIT_FAILED_ROWS, EXIT_BAD_COMMAND, EXIT_INTERRUPTED = 0, 1, 2, 130
CUDA_BATCH_SIZE = 4  # default rows per UNet batch on a GPU (CPU: 1, where batching does not pay)


class BadCommand(ValueError):
    """Found before any work starts: exit status 2."""


def add_batch_parser(sub) -> None:
    from ..edit_commands import _add_model_arguments, _add_sampling_arguments, add_edit_options

    p = sub.add_parser(
        "batch",
        help="edit a folder or a manifest of images (resumable; local workers or a Ray cluster)",
        description="Edit every image of a folder, or every row of a CSV / JSONL manifest (columns: image, "
                    "instruction, and optionally mask, negative, seed, steps, text_guidance, image_guidance, "
                    "scheduler, strength, resize, output), or run a workflow file per row (--workflow). Writes one "
                    "PNG per row and results.jsonl to --out; running the same command again skips rows already done.",
    )
    p.add_argument("source", help="a folder of images, or a manifest (.csv or .jsonl; paths relative to it)")
    p.add_argument("instruction", nargs="?", default=None,
                   help="instruction for every row that has none (required for a folder)")
    p.add_argument("--out", "-o", required=True, help="output folder (images and results.jsonl)")
    _add_model_arguments(p, model_required=False)
    _add_sampling_arguments(p)
    add_edit_options(p)
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"rows per UNet batch (default: 1 on CPU, {CUDA_BATCH_SIZE} on a GPU)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes, each with its own model (default: one per GPU, else 1)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray (ray://HOST:10001, or RAY_ADDRESS, or a local Ray when not given); "
                        "needs the ray extra")
    p.add_argument("--retry-failed", action="store_true", help="run rows that failed in an earlier run again")
    p.add_argument("--workflow", default=None, metavar="WF.json",
                   help="run this workflow file per row instead of an edit (image goes to its Load Image node)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE_ID.INPUT=VALUE",
                   help="with --workflow: change an input for every row (repeatable)")
    p.add_argument("--models", default=None, help="with --workflow: models folder (default $IPX2P_MODELS or ./models)")
    p.set_defaults(func=cmd_batch)


# ---------------------------------------------------------------------------------------------------------- driver


def cmd_batch(args) -> int:
    try:
        job = _prepare(args)
    except (BadCommand, ManifestError, IP2PError, JournalLocked) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_COMMAND
    with job.journal:
        return _run(args, job)


class _Job:
    def __init__(self, spec, plan, journal, manifest_rows, workflow_targets=None):
        self.spec: JobSpec = spec
        self.plan: Plan = plan
        self.journal: Journal = journal
        self.rows = manifest_rows
        self.targets = workflow_targets


def _prepare(args) -> _Job:
    from ..cli import _no_library_progress_bars

    if not getattr(args, "verbose", False):
        _no_library_progress_bars()  # one bar: the batch's
    if args.batch_size is not None and args.batch_size < 1:
        raise BadCommand(f"--batch-size must be at least 1, got {args.batch_size}.")
    if args.workers is not None and args.workers < 1:
        raise BadCommand(f"--workers must be at least 1, got {args.workers}.")
    if args.ray is not None:
        from .ray_executor import RayUnavailable, import_ray

        try:
            import_ray()
        except RayUnavailable as exc:
            raise BadCommand(str(exc)) from None
    else:
        from ipx2p_core.models import parse_device

        parse_device(args.device)  # an unknown or missing device is a bad command, found before any work
    workflow_mode = args.workflow is not None
    manifest = read_manifest(args.source, workflow=workflow_mode)
    if manifest.kind == "folder" and not workflow_mode and not args.instruction:
        raise BadCommand(f"{args.source} is a folder: give the instruction for its images, e.g. "
                         f"ipx2p batch {args.source} \"make it winter\" --model M --out DIR")
    d = EditDefaults(
        instruction=args.instruction, negative=args.negative, mask=args.mask, seed=args.seed, steps=args.steps,
        text_guidance=args.text_guidance, image_guidance=args.image_guidance, scheduler=args.scheduler,
        strength=args.strength, resize=args.resize, guidance_rescale=args.guidance_rescale, eta=args.eta,
        image_guidance_end=args.image_guidance_end)
    out = Path(args.out).expanduser().absolute()
    if manifest.kind == "folder" and out.resolve() == manifest.base_dir.resolve():
        raise BadCommand(f"--out {args.out} is the folder of the input images; outputs would replace them. "
                         "Choose another folder.")
    if workflow_mode:
        spec, targets, input_root = _workflow_spec(args, manifest, out)
        plan = plan_workflow_rows(manifest, targets, d, job_identity(spec, None), input_root)
    else:
        spec, model_path = _edit_spec(args, out)
        targets = None
        plan = plan_edit_rows(manifest, d, job_identity(spec, model_path))
    for task, message in check_not_overwriting(plan.tasks, out):
        plan.tasks.remove(task)
        plan.failed.append((next(r for r in manifest.rows if r.index == task.row), message))
    journal = Journal(out)
    try:
        journal.open()
    except OSError as exc:
        raise BadCommand(f"cannot write to the output folder {out} ({exc.strerror or exc}).") from None
    return _Job(spec, plan, journal, manifest.rows, targets)


def _edit_spec(args, out: Path) -> tuple[JobSpec, str]:
    from ipx2p_core.image import ResizePolicy
    from ipx2p_core.models import resolve_model_path

    from ..edit_commands import _settings, check_instructions, parse_lora_argument
    from ..model_download import local_model_path, resolve_model_argument

    if not args.model:
        raise BadCommand("--model is needed (or --workflow to run a workflow file per row).")
    check_instructions(args)  # the command's instruction; a row's own is refused by the engine, for that row only
    ResizePolicy.parse(args.resize)
    _settings(args, guidance_rescale=args.guidance_rescale, eta=args.eta, strength=args.strength,
              image_guidance_end=args.image_guidance_end)  # the command's own values: a bad one is a bad command
    if args.mask and not Path(args.mask).is_file():
        raise BadCommand(f"Mask not found: {args.mask} (looked for {Path(args.mask).absolute()}).")
    model_path = str(resolve_model_path(resolve_model_argument(args.model)))
    loras = tuple((local_model_path(p, ("loras",)), s, t) for p, s, t in map(parse_lora_argument, args.lora))
    args.embedding = [local_model_path(p, ("embeddings",)) for p in args.embedding]
    for path in [p for p, _, _ in loras] + list(args.embedding):
        if not Path(path).exists():
            raise BadCommand(f"File not found: {path} (looked for {Path(path).absolute()}).")
    spec = JobSpec(mode="edit", out_dir=str(out), device=args.device, model=model_path, dtype=args.dtype,
                   family=args.family, config=args.config,
                   loras=tuple((str(Path(p).absolute()), s, t) for p, s, t in loras),
                   embeddings=tuple(str(Path(p).absolute()) for p in args.embedding),
                   restore_size=args.restore_size, mask_grow=args.mask_grow, mask_feather=args.mask_feather,
                   batch_size=args.batch_size or 1, compile=args.compile)
    return spec, model_path


EDIT_ONLY = {"model": None, "lora": [], "embedding": [], "steps": defaults.STEPS, "negative": "",
             "text_guidance": defaults.TEXT_GUIDANCE, "image_guidance": defaults.IMAGE_GUIDANCE,
             "scheduler": defaults.SCHEDULER, "resize": defaults.RESIZE, "strength": defaults.STRENGTH, "mask": None,
             "restore_size": defaults.RESTORE_SIZE, "image_guidance_end": defaults.IMAGE_GUIDANCE_END}


def _workflow_spec(args, manifest, out: Path) -> tuple[JobSpec, WorkflowTargets, Path]:
    from ..host import StandaloneHost

    from ..runner import Runner
    from ..workflow import OverrideError, WorkflowFormatError, load_workflow_file, parse_set_argument

    given = [f"--{k.replace('_', '-')}" for k, default in EDIT_ONLY.items() if getattr(args, k) != default]
    if given:
        raise BadCommand(f"{', '.join(given)} do not apply with --workflow: set node inputs with --set "
                         "NODE_ID.INPUT=VALUE or NODE_ID.INPUT manifest columns.")
    try:
        workflow = load_workflow_file(args.workflow)
        overrides = dict(parse_set_argument(item) for item in args.overrides)
    except (WorkflowFormatError, OverrideError) as exc:
        raise BadCommand(str(exc)) from None
    images = [r.values[c] for r in manifest.rows for c in r.values
              if (c == "image" or (is_node_column(c) and c.endswith(".image"))) and isinstance(r.values[c], str)]
    paths = [Path(v).expanduser() if Path(v).expanduser().is_absolute() else manifest.base_dir / v for v in images]
    input_root = Path(os.path.commonpath([str(p.absolute().parent) for p in paths])) if paths else manifest.base_dir
    host = StandaloneHost(models_dir=args.models, device=args.device)
    runner = Runner(output_dir=out, input_dir=input_root, temp_dir=out, host=host)
    prepared = runner.prepare(workflow, overrides)
    if not prepared.ok:
        raise BadCommand(f"the workflow cannot run: {prepared.text()}")
    prompt = prepared.prompt
    targets = _targets(prompt, overrides)
    _check_workflow_columns(manifest, prompt, runner, targets, args)
    _preflight(runner, workflow, overrides, targets, manifest, args.instruction)
    spec = JobSpec(mode="workflow", out_dir=str(out), device=args.device, workflow=workflow, overrides=overrides,
                   models_dir=args.models, input_root=str(input_root), batch_size=1, compile=args.compile)
    return spec, targets, input_root


def _targets(prompt: dict, overrides: dict) -> WorkflowTargets:
    def with_input(name):
        return [n for n, e in prompt.items() if name in e["inputs"] and not isinstance(e["inputs"][name], list)]

    loaders = [n for n, e in prompt.items() if e["class_type"] == "LoadImage"]
    instruction = with_input("instruction")
    seeds = [n for n in with_input("seed") if f"{n}.seed" not in overrides]
    saves = [n for n, e in prompt.items() if e["class_type"] == "SaveImage"]
    return WorkflowTargets(image=loaders[0] if len(loaders) == 1 else None, image_nodes=set(loaders),
                           instruction=instruction[0] if len(instruction) == 1 else None, seeds=seeds, saves=saves)


def _check_workflow_columns(manifest, prompt, runner, targets: WorkflowTargets, args) -> None:
    from ..workflow import input_types

    columns = {c for r in manifest.rows for c in r.values}
    loaders = sorted(targets.image_nodes)
    if "image" in columns and targets.image is None:
        raise BadCommand(f"the image column needs exactly one Load Image node in the workflow, it has "
                         f"{len(loaders)}{' (' + ', '.join(loaders) + ')' if loaders else ''}; name the node in the "
                         f"column instead, e.g. {loaders[0] if loaders else 'NODE_ID'}.image.")
    if ("instruction" in columns or args.instruction) and targets.instruction is None:
        holders = [n for n, e in prompt.items() if "instruction" in e["inputs"]]
        raise BadCommand(f"an instruction needs exactly one node with an 'instruction' input in the workflow, it has "
                         f"{len(holders)}; use a NODE_ID.instruction column instead.")
    for column in sorted(c for c in columns if is_node_column(c)):
        node, _, name = column.partition(".")
        if node not in prompt:
            raise BadCommand(f"column {column!r}: the workflow has no node {node} (nodes: "
                             f"{', '.join(sorted(prompt, key=str))}).")
        spec = input_types(runner.node_classes[prompt[node]["class_type"]])
        if name not in {**spec["required"], **spec["optional"]}:
            raise BadCommand(f"column {column!r}: {prompt[node]['class_type']} has no input {name!r} (inputs: "
                             f"{', '.join([*spec['required'], *spec['optional']])}).")


def _preflight(runner, workflow, overrides, targets: WorkflowTargets, manifest, instruction) -> None:
    """Validate the workflow once before any row runs: errors in nodes the rows do not set are a bad command."""
    columns = {c for r in manifest.rows for c in r.values}
    per_row = set(targets.seeds) | set(targets.saves)
    per_row |= {t for t, column in ((targets.image, "image"), (targets.instruction, "instruction"))
                if t and (column in columns or (column == "instruction" and instruction))}
    per_row |= {c.partition(".")[0] for c in columns if is_node_column(c)}
    checked = runner.validate(workflow, overrides=overrides)
    fixed = {n: e for n, e in checked.node_errors.items() if n not in per_row}
    if not checked.ok and (fixed or not checked.node_errors):
        from ..runner import format_errors

        raise BadCommand("the workflow cannot run: " + " ".join(
            format_errors(checked.error if not fixed else None, fixed, checked.prompt).split()))


# ---------------------------------------------------------------------------------------------------------- running


def _run(args, job: _Job) -> int:
    out = Path(job.spec.out_dir)
    clean_leftovers(out)
    plan, latest = job.plan, job.journal.latest()
    pending, skipped, failed_before = [], 0, 0
    for task in plan.tasks:
        previous = latest.get(task.key)
        if previous and previous.get("status") == "done" and all((out / o).is_file() for o in previous["outputs"]):
            skipped += 1
        elif previous and previous.get("status") == "failed" and not args.retry_failed:
            failed_before += 1
        else:
            pending.append(task)
    unplannable = []
    for raw, message in sorted(plan.failed, key=lambda f: f[0].index):
        previous = latest.get(plan.keys[raw.index])
        if previous and previous.get("status") == "failed" and not args.retry_failed:
            failed_before += 1
        else:
            unplannable.append((raw, message))
    total = len(plan.tasks) + len(plan.failed)
    counts = {"done": 0, "failed": 0}
    if pending and args.compile and not args.quiet:
        from ipx2p_core.fast import compile_cache_dir

        print(f"fast mode: each worker compiles the UNet when it loads the model (the first time on this machine "
              f"takes minutes; compiled code is cached in {compile_cache_dir()})", file=sys.stderr)
    try:
        records = _executor(args, job, pending) if pending else None  # loads the model here when in-process
        if not args.quiet:
            print(f"{total} rows: {skipped} already done (skipped), "
                  f"{failed_before} failed before{' (--retry-failed runs them again)' if failed_before else ''}, "
                  f"{len(pending)} to run.", file=sys.stderr)
        _journal_unplannable(args, job, unplannable, counts)
        if records is not None:
            _execute(args, job, records, len(pending), counts, skipped)
    except KeyboardInterrupt:
        print(f"interrupted: {counts['done']} rows done in this run, {counts['failed']} failed; run the same "
              "command again to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _WorkerSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_COMMAND
    finally:
        clean_leftovers(out)
    failed = counts["failed"] + failed_before
    if failed:
        print(f"error: {failed} of {total} rows failed (see {job.journal.path}); fix them and run the same "
              "command again with --retry-failed.", file=sys.stderr)
        return EXIT_FAILED_ROWS
    if not args.quiet:
        print(f"all {total} rows done ({counts['done']} in this run, {skipped} before); results in "
              f"{job.journal.path}", file=sys.stderr)
    return EXIT_OK


def _journal_unplannable(args, job: _Job, failed: list, counts: dict) -> None:
    """Rows whose values cannot be used: journaled as failed without reaching a worker."""
    from .edit_worker import row_record

    for raw, message in failed:
        stub = RowTask(row=raw.index, key=job.plan.keys[raw.index], where=raw.where, inputs=raw.values, output="")
        job.journal.append(row_record(stub, "failed", error=message))
        counts["failed"] += 1
        if not args.quiet:
            print(f"failed: {message}", file=sys.stderr)


class _WorkerSetupError(RuntimeError):
    """A worker could not start (its model did not load): nothing ran."""


def _execute(args, job: _Job, records, count: int, counts: dict, skipped: int) -> None:
    from tqdm import tqdm

    bar = tqdm(total=count, unit="row", desc="batch", file=sys.stderr, disable=args.quiet, smoothing=0.1)
    bar.set_postfix(done=0, skipped=skipped, failed=counts["failed"], refresh=False)
    try:
        with contextlib.closing(records):
            for chunk in records:
                for record in chunk:
                    job.journal.append(record)
                    counts["done" if record["status"] == "done" else "failed"] += 1
                    if record["status"] != "done" and not args.quiet:
                        bar.write(f"failed: {record['error']}", file=sys.stderr)
                bar.set_postfix(done=counts["done"], skipped=skipped, failed=counts["failed"], refresh=False)
                bar.update(len(chunk))
    finally:
        bar.close()


def _executor(args, job: _Job, pending: list[RowTask]):
    """An iterator of record lists, local or on Ray, with the batch size and workers settled."""
    spec = job.spec
    if args.ray is not None:
        return _ray_executor(args, spec, pending)
    from ipx2p_core.models import parse_device

    device = parse_device(args.device)
    gpus = _gpu_ids() if device.type == "cuda" and args.device in (None, "auto", "cuda") else []
    workers = args.workers or max(1, len(gpus))
    batch = args.batch_size or (CUDA_BATCH_SIZE if device.type == "cuda" else 1)
    spec = _with(spec, batch_size=batch if spec.mode == "edit" else 1)
    chunks = _chunks(_order_for_batching(pending, spec), spec.batch_size)
    from .local import make_worker, run_in_process, run_in_processes

    if workers == 1:
        worker = make_worker(spec)
        try:
            loaded = worker.load()
        except IP2PError as exc:
            raise _WorkerSetupError(str(exc)) from None
        if not args.quiet and spec.mode == "edit":
            print(f"Model: {loaded.describe()}", file=sys.stderr)
        return run_in_process(worker, chunks)
    return _setup_errors(run_in_processes(spec, chunks, workers, gpus))


def _ray_executor(args, spec: JobSpec, pending: list[RowTask]):
    from .ray_executor import cluster_gpus, connect, run_on_ray

    ray, started = connect(args.ray or None, args.quiet)
    gpus = cluster_gpus(ray) if args.device not in ("cpu", "mps") else 0
    workers = args.workers or max(1, gpus)
    batch = args.batch_size or (CUDA_BATCH_SIZE if gpus else 1)
    spec = _with(spec, batch_size=batch if spec.mode == "edit" else 1,
                 device="cuda" if gpus and args.device in (None, "auto") else spec.device)
    ordered = _order_for_batching(pending, spec)

    def records():
        try:
            yield from run_on_ray(ray, spec, ordered, workers, use_gpus=gpus > 0)
        finally:
            if started:  # a Ray we started for this job ends with it; a session the caller opened stays
                ray.shutdown()

    return _setup_errors(records())


def _setup_errors(records):
    """Model-loading errors raised inside workers become one clear message (exit 2) instead of a traceback."""
    try:
        yield from records
    except IP2PError as exc:
        raise _WorkerSetupError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - Ray wraps the worker's exception in its own types
        cause = _root_cause(exc)
        if isinstance(cause, IP2PError):
            raise _WorkerSetupError(str(cause)) from None
        raise
    finally:
        with contextlib.suppress(Exception):
            records.close()


def _root_cause(exc: BaseException) -> BaseException:
    seen = exc
    for attr in ("cause", "__cause__"):
        inner = getattr(seen, attr, None)
        if isinstance(inner, BaseException):
            return _root_cause(inner)
    return seen


def _with(spec: JobSpec, **changes) -> JobSpec:
    from dataclasses import replace

    return replace(spec, **changes)


def _gpu_ids() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [g.strip() for g in visible.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _chunks(tasks: list[RowTask], size: int) -> list[list[RowTask]]:
    return [tasks[i:i + size] for i in range(0, len(tasks), size)]


def _order_for_batching(tasks: list[RowTask], spec: JobSpec) -> list[RowTask]:
    """With batches of several rows, put rows that can share a UNet batch (same settings, same input size) next to
    each other, keeping manifest order otherwise. Sizes come from image headers (no decoding)."""
    if spec.mode != "edit" or spec.batch_size <= 1:
        return tasks
    from PIL import Image

    def hint(task: RowTask):
        try:
            with Image.open(task.image) as img:
                size = img.size
        except Exception:  # noqa: BLE001 - an unreadable image fails in its worker, with its message
            size = None
        settings = {k: v for k, v in task.settings.items() if k != "seed"}
        return json.dumps([settings, task.resize, size, task.mask is not None], sort_keys=True)

    first_seen: dict[str, int] = {}
    keyed = []
    for task in tasks:
        h = hint(task)
        first_seen.setdefault(h, len(first_seen))
        keyed.append((first_seen[h], task.row, task))
    return [t for _, _, t in sorted(keyed, key=lambda k: (k[0], k[1]))]
