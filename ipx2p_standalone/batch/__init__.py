"""``ipx2p batch``: one edit, or one workflow file, over a folder or a manifest; resumable, on one machine or on Ray.

    manifest.py        folder / CSV / JSONL -> raw rows (unknown columns and unreadable manifests are bad commands)
    tasks.py           raw rows + the command's options -> row tasks: typed values, seeds, output names, resume keys
    journal.py         results.jsonl (append-only, whole lines), atomic image writes, leftovers of killed runs
    edit_worker.py     edit rows: the model once, repeated instructions encoded once, rows grouped into UNet batches
    workflow_worker.py workflow rows through one cached Runner per worker
    local.py           in this process, or N spawned worker processes (one GPU each where there are several)
    ray_executor.py    Ray Data: map_batches over an actor pool, the driver gathers the records
    command.py         the CLI driver: plan, skip what is done, run, journal, progress, exit status
"""
