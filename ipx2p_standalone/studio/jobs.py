"""The jobs API (``/jobs``, ``/jobs/{id}``, cancel) that frontends from 1.3x on use for the queue and history panels.

A job is one queued prompt seen through the frontend's zod schema (``static/assets/api-*.js`` in 1.58.1): a list item
``{id, status, create_time, execution_start_time, execution_end_time, preview_output, outputs_count,
previewable_outputs_count, execution_error, workflow_id}``; the detail adds ``workflow: {prompt, extra_data}``,
``outputs``, ``update_time``, ``execution_status``. Times are milliseconds since the epoch, as ComfyUI sends them.
Built from the queue's snapshot and history only, so the queue keeps one source of truth.
"""

from __future__ import annotations

import time

STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
SORT_KEYS = ("created_at", "execution_duration")
MEDIA_KINDS = ("images", "video", "audio")  # the output lists the frontend can preview


class JobQueryError(ValueError):
    """A bad /jobs query; the message says which parameter, its value and what would be right."""


def _messages(entry: dict) -> dict:
    return {name: data for name, data in (entry.get("status") or {}).get("messages", [])}


def _history_status(entry: dict) -> str:
    status = entry.get("status") or {}
    if status.get("completed"):
        return "completed"
    return "cancelled" if "execution_interrupted" in _messages(entry) else "failed"


def _outputs(entry: dict) -> tuple[dict | None, int, int]:
    """The first previewable output (as the frontend wants it), the number of outputs and of previewable ones."""
    preview, count, previewable = None, 0, 0
    for node_id, output in (entry.get("outputs") or {}).items():
        for kind, items in output.items():
            if not isinstance(items, list):
                continue
            count += len(items)
            if kind not in MEDIA_KINDS:
                continue
            previewable += len(items)
            if preview is None and items and isinstance(items[0], dict):
                preview = {**items[0], "nodeId": str(node_id), "mediaType": kind}
    return preview, count, previewable


def _workflow_id(extra_data: dict) -> str | None:
    workflow = (extra_data.get("extra_pnginfo") or {}).get("workflow")
    wid = workflow.get("id") if isinstance(workflow, dict) else None
    return str(wid) if wid else None


def queued_job(item, status: str) -> dict:
    """A pending or running queue item as a job."""
    return {"id": item.prompt_id, "status": status, "create_time": item.extra_data.get("create_time", 0), "execution_start_time": None,
            "execution_end_time": None, "preview_output": None, "outputs_count": 0, "previewable_outputs_count": 0,
            "execution_error": None, "workflow_id": _workflow_id(item.extra_data)}


def history_job(prompt_id: str, entry: dict) -> dict:
    """A finished prompt (a history entry) as a job."""
    messages = _messages(entry)
    _, _, _, extra_data, _ = (entry.get("prompt") or [None] * 5)[:5]
    extra_data = extra_data or {}
    start = (messages.get("execution_start") or {}).get("timestamp")
    end_message = next((messages[m] for m in ("execution_success", "execution_error", "execution_interrupted")
                        if m in messages), {})
    error = messages.get("execution_error")
    preview, count, previewable = _outputs(entry)
    return {"id": prompt_id, "status": _history_status(entry),
            "create_time": extra_data.get("create_time") or start or 0,
            "execution_start_time": start, "execution_end_time": end_message.get("timestamp"),
            "preview_output": preview, "outputs_count": count, "previewable_outputs_count": previewable,
            "execution_error": error, "workflow_id": _workflow_id(extra_data)}


def job_detail(prompt_id: str, entry: dict) -> dict:
    """A finished job with its workflow (prompt and extra data, which the frontend reopens) and outputs."""
    _, _, prompt, extra_data, _ = (entry.get("prompt") or [None] * 5)[:5]
    job = history_job(prompt_id, entry)
    job.update(workflow={"prompt": prompt, "extra_data": extra_data or {}}, outputs=entry.get("outputs") or {},
               update_time=job["execution_end_time"] or job["create_time"], execution_status=entry.get("status"))
    return job


def queued_detail(item, status: str) -> dict:
    job = queued_job(item, status)
    job.update(workflow={"prompt": item.prompt, "extra_data": item.extra_data}, outputs={},
               update_time=job["create_time"])
    return job


def all_jobs(queue) -> list[dict]:
    snapshot = queue.jobs_snapshot()
    jobs = [queued_job(i, "in_progress") for i in snapshot["running"]]
    jobs += [queued_job(i, "pending") for i in snapshot["pending"]]
    jobs += [history_job(pid, entry) for pid, entry in snapshot["history"].items()]
    return jobs


def _int(query, name: str, default: int, minimum: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise JobQueryError(f"{name} must be an integer >= {minimum}, got {raw!r}")
    return value


def list_jobs(queue, query) -> dict:
    """``GET /jobs``: filter by ``status`` (comma list) and ``workflow_id``, sort, page with ``limit``/``offset``."""
    wanted = [s for s in (query.get("status") or "").split(",") if s]
    bad = [s for s in wanted if s not in STATUSES]
    if bad:
        raise JobQueryError(f"status {','.join(bad)!r} is not a job status; use any of {', '.join(STATUSES)}")
    sort_by = query.get("sort_by", "created_at")
    if sort_by not in SORT_KEYS:
        raise JobQueryError(f"sort_by must be one of {', '.join(SORT_KEYS)}, got {sort_by!r}")
    order = query.get("sort_order", "desc")
    if order not in ("asc", "desc"):
        raise JobQueryError(f"sort_order must be asc or desc, got {order!r}")
    limit = _int(query, "limit", 200, 1)
    offset = _int(query, "offset", 0, 0)

    jobs = all_jobs(queue)
    if wanted:
        jobs = [j for j in jobs if j["status"] in wanted]
    if query.get("workflow_id"):
        jobs = [j for j in jobs if j["workflow_id"] == query["workflow_id"]]
    if sort_by == "created_at":
        def key(j):
            return j["create_time"] or 0
    else:
        def key(j):
            start, end = j["execution_start_time"], j["execution_end_time"]
            return (end - start) if start is not None and end is not None else -1
    jobs.sort(key=key, reverse=order == "desc")
    page = jobs[offset:offset + limit]
    return {"jobs": page, "pagination": {"offset": offset, "limit": limit, "total": len(jobs),
                                         "has_more": offset + len(page) < len(jobs)}}


def find_job(queue, job_id: str) -> dict | None:
    """``GET /jobs/{id}``: the job with its workflow and outputs, or None."""
    snapshot = queue.jobs_snapshot()
    for status, items in (("in_progress", snapshot["running"]), ("pending", snapshot["pending"])):
        for item in items:
            if item.prompt_id == job_id:
                return queued_detail(item, status)
    entry = snapshot["history"].get(job_id)
    return job_detail(job_id, entry) if entry is not None else None


def now_ms() -> int:
    return int(time.time() * 1000)
