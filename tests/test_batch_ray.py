"""``ipx2p batch --ray`` on a local Ray (2 CPUs, one session for the module): the same files and statuses as the
local run, a failing row is ``failed`` (not a crashed job), and a job interrupted half-way resumes with every row done
exactly once."""

from __future__ import annotations

import os

import pytest
from batch_helpers import (
    STEPS,
    by_row,
    interrupt_after,
    make_photos,
    max_level_diff,
    results,
    visible_files,
    write_csv,
)

from ipx2p_standalone.cli import main

ray = pytest.importorskip("ray", reason="Ray is the optional extra: pip install -e \".[ray]\"")


@pytest.fixture(scope="module")
def ray_session():
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, photo):
    """12 rows: 11 photos and one missing image (row 5)."""
    root = tmp_path_factory.mktemp("ray_rows")
    names = make_photos(root, photo, 11)
    rows = [{"image": n, "instruction": ["make it winter", "add snow", "make it a statue"][k % 3]}
            for k, n in enumerate(names)]
    rows.insert(5, {"image": "missing.png", "instruction": "x"})
    return write_csv(root / "rows.csv", rows)


def _argv(manifest, model, out, *extra):
    return ["batch", str(manifest), "-m", str(model), "--out", str(out), "--steps", STEPS, "--device", "cpu", "-q",
            *map(str, extra)]


def test_ray_gives_the_local_files_and_statuses(ray_session, manifest, tiny_sd, tmp_path):
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert main(_argv(manifest, tiny_sd["folder"], local)) == 1
    assert main(_argv(manifest, tiny_sd["folder"], on_ray, "--ray", "--workers", 2)) == 1
    a, b = by_row(results(local)), by_row(results(on_ray))
    assert {k: (r["status"], r["key"], r["outputs"]) for k, r in a.items()} == \
        {k: (r["status"], r["key"], r["outputs"]) for k, r in b.items()}
    assert b[5]["status"] == "failed" and "Image not found" in b[5]["error"]
    assert sum(r["status"] == "done" for r in b.values()) == 11
    for r in a.values():
        for name in r["outputs"]:
            assert max_level_diff(local / name, on_ray / name) <= 1
    assert len({r["worker"] for r in b.values()}) == 2  # both actors took rows
    assert visible_files(local) == visible_files(on_ray)


def test_interrupted_ray_job_resumes_with_every_row_done_once(ray_session, manifest, tiny_sd, tmp_path,
                                                               monkeypatch):
    out = tmp_path / "out"
    interrupt_after(monkeypatch, 6)  # Ctrl-C half-way: the driver stops, Ray's actors go with the dataset
    assert main(_argv(manifest, tiny_sd["folder"], out, "--ray", "--workers", 2)) == 130
    monkeypatch.undo()
    first = results(out)
    assert len(first) == 6

    assert main(_argv(manifest, tiny_sd["folder"], out, "--ray", "--workers", 1)) == 1  # row 5 stays failed
    records = results(out)
    done = [r for r in records if r["status"] == "done"]
    assert len(done) == 11 == len({r["row"] for r in done})  # none lost, none done twice
    assert [r["row"] for r in records if r["status"] == "failed"] == [5]
    assert not [f for f in visible_files(out) if f.startswith(".")]  # no temporaries or staging left
