"""``ipx2p batch`` on one machine: folders, CSV and JSONL manifests, edit options, resume, retry, bad rows, exit
codes, a SIGKILL mid-run, and the same outputs whatever the batch size or number of workers."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from batch_helpers import (
    STEPS,
    by_row,
    interrupt_after,
    make_photos,
    max_level_diff,
    pixels,
    results,
    visible_files,
    write_csv,
    write_jsonl,
)
from PIL import Image

import ipx2p_core
from ipx2p_standalone.batch.journal import Journal
from ipx2p_standalone.cli import main

ROOT = Path(__file__).resolve().parents[1]


def batch(*argv) -> int:
    return main(["batch", *map(str, argv), "--device", "cpu"])


# ------------------------------------------------------------------------------------------------- happy paths


def test_folder_rows_equal_single_edits_with_the_same_metadata(tiny_sd, photo, tmp_path, capsys):
    make_photos(tmp_path / "photos", photo, 3)
    out = tmp_path / "out"
    assert batch(tmp_path / "photos", "make it winter", "-m", tiny_sd["folder"], "--out", out, "--steps", STEPS,
                 "--seed", 5) == 0
    err = capsys.readouterr().err
    assert "3 rows: 0 already done (skipped), 0 failed before, 3 to run." in err
    assert "done=3, failed=0, skipped=0" in err  # the tqdm bar's counts
    assert f"all 3 rows done (3 in this run, 0 before); results in {out / 'results.jsonl'}" in err
    records = results(out)
    assert [(r["row"], r["status"], r["outputs"]) for r in records] == [
        (0, "done", ["p0.png"]), (1, "done", ["p1.png"]), (2, "done", ["p2.png"])]
    first = records[0]
    assert set(first) == {"row", "key", "status", "inputs", "outputs", "sha256", "error", "seconds", "settings",
                          "worker", "finished"}
    assert first["inputs"] == {"image": "p0.png"} and first["error"] is None and first["seconds"] > 0
    assert first["sha256"] == [hashlib.sha256((out / "p0.png").read_bytes()).hexdigest()]
    assert [r["settings"]["seed"] for r in records] == [5, 6, 7]  # --seed + row number
    assert len({r["key"] for r in records}) == 3

    single = tmp_path / "single.png"
    assert main(["edit", str(tmp_path / "photos" / "p2.png"), "make it winter", "-m", str(tiny_sd["folder"]),
                 "-o", str(single), "--steps", STEPS, "--seed", "7", "--device", "cpu", "-q"]) == 0
    assert np.array_equal(pixels(out / "p2.png"), pixels(single))  # batch size 1 is exactly `ipx2p edit`
    with Image.open(out / "p2.png") as a, Image.open(single) as b:
        assert json.loads(a.text["ipx2p"]) == json.loads(b.text["ipx2p"])
        assert a.text["parameters"] == b.text["parameters"]


def test_csv_with_edit_options_on_sdxl(tiny_sdxl, photo, tmp_path):
    names = make_photos(tmp_path, photo, 3)
    mask = np.zeros((32, 44), np.uint8)
    mask[4:24, 8:30] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    manifest = write_csv(tmp_path / "edits.csv", [
        {"image": names[0], "instruction": "make it winter", "negative": "blurry", "seed": "42", "steps": "3",
         "text_guidance": "5", "image_guidance": "1.2", "scheduler": "ddim", "output": "sub/first"},
        {"image": names[1], "instruction": "add snow", "strength": "0.7", "resize": "fit:64", "mask": "mask.png"},
        {"image": names[2]},  # the command's instruction and options
    ])
    out = tmp_path / "out"
    assert batch(manifest, "make it a statue", "-m", tiny_sdxl["folder"], "--out", out, "--steps", STEPS,
                 "--text-guidance", "6", "-q") == 0
    rows = by_row(results(out))
    assert rows[0]["outputs"] == ["sub/first.png"] and rows[1]["outputs"] == ["p1.png"]
    s0, s1, s2 = (rows[k]["settings"] for k in range(3))
    assert (s0["seed"], s0["steps"], s0["text_guidance"], s0["image_guidance"], s0["scheduler"]) == \
        (42, 3, 5.0, 1.2, "ddim")
    assert (s1["seed"], s1["strength"], s1["steps"], s1["text_guidance"]) == (1, 0.7, 2, 6.0)
    assert (s2["seed"], s2["scheduler"]) == (2, "auto")
    with Image.open(out / "sub" / "first.png") as img:
        meta = json.loads(img.text["ipx2p"])
    assert (meta["instruction"], meta["negative"], meta["family"], meta["scheduler"]) == \
        ("make it winter", "blurry", "sdxl", "ddim")
    with Image.open(out / "p2.png") as img:
        assert json.loads(img.text["ipx2p"])["instruction"] == "make it a statue"
    with Image.open(out / "p1.png") as img:
        assert img.size == (44, 32) and json.loads(img.text["ipx2p"])["mask"] == str(tmp_path / "mask.png")  # fit:64,
        # restored (default); the mask's full path, so the PNG can run its edit again (ipx2p edit --from-png)


def test_same_outputs_across_batch_sizes_and_workers(tiny_sd, photo, tmp_path, monkeypatch):
    """JSONL, typed values; 5 rows of which 4 share settings (one UNet batch of 4 with --batch-size 4)."""
    names = make_photos(tmp_path, photo, 5)
    rows = [{"image": n, "instruction": ["make it winter", "add snow"][k % 2]} for k, n in enumerate(names)]
    rows[2]["seed"] = 1234
    rows[4]["steps"] = 3  # another group
    manifest = write_jsonl(tmp_path / "rows.jsonl", rows)
    batch_rows = []
    real_sample = ipx2p_core.sample

    def counting_sample(model, cond, image, settings, **kw):
        batch_rows.append(cond.batch_size)
        return real_sample(model, cond, image, settings, **kw)

    monkeypatch.setattr(ipx2p_core, "sample", counting_sample)
    encoded = []
    real_encode = ipx2p_core.encode_instruction
    monkeypatch.setattr(ipx2p_core, "encode_instruction", lambda m, text, *a, **k: encoded.append(text) or
                        real_encode(m, text, *a, **k))
    outs = {}
    for label, extra in (("b1", ["--batch-size", 1]), ("b4", ["--batch-size", 4]), ("w2", ["--workers", 2])):
        outs[label] = tmp_path / label
        assert batch(manifest, "-m", tiny_sd["folder"], "--out", outs[label], "--steps", STEPS, "-q", *extra) == 0
    assert batch_rows == [1, 1, 1, 1, 1, 4, 1]  # b1: five single rows; b4: a batch of four and the 3-step row
    assert encoded == ["make it winter", "add snow"] * 2  # each in-process run encodes each instruction once
    for label in ("b4", "w2"):
        assert [r["status"] for r in results(outs[label])].count("done") == 5
        for n in names:
            assert max_level_diff(outs["b1"] / n, outs[label] / n) <= 1, (label, n)
    assert {r["key"] for r in results(outs["b1"])} == {r["key"] for r in results(outs["w2"])}
    workers = {r["worker"] for r in results(outs["w2"])}
    assert len(workers) >= 1 and f"{os.uname().nodename}:{os.getpid()}" not in workers  # ran in worker processes


# ------------------------------------------------------------------------------------- resume, retry, bad rows


def test_bad_rows_fail_alone_then_resume_and_retry(tiny_sd, photo, tmp_path, capsys):
    make_photos(tmp_path, photo, 3)
    (tmp_path / "broken.png").write_text("not a picture")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small_mask.png")
    manifest = write_csv(tmp_path / "m.csv", [
        {"image": "p0.png"},
        {"image": "nope.png"},
        {"image": "broken.png"},
        {"image": "p1.png", "steps": "ten"},
        {"image": "p1.png", "mask": "small_mask.png", "output": "masked"},
        {"image": "p2.png", "output": "p0.png"},
        {"image": "p2.png", "output": "../escape.png"},
        {"image": "p2.png", "output": "p2"},
    ])
    out = tmp_path / "out"
    argv = [manifest, "make it winter", "-m", tiny_sd["folder"], "--out", out, "--steps", STEPS]
    assert batch(*argv) == 1
    err = capsys.readouterr().err
    assert "error: 6 of 8 rows failed (see" in err and "--retry-failed" in err
    rows = by_row(results(out))
    assert {k for k, r in rows.items() if r["status"] == "done"} == {0, 7}
    assert rows[1]["error"].startswith(f"m.csv line 3: Image not found: {tmp_path / 'nope.png'}")
    assert rows[2]["error"].startswith(f"m.csv line 4: {tmp_path / 'broken.png'} is not an image this program "
                                       "can read")
    assert rows[3]["error"] == "m.csv line 5: steps 'ten' is not a whole number."
    assert rows[4]["error"] == (f"m.csv line 6: The mask {tmp_path / 'small_mask.png'} is 10x10 pixels but its "
                                "image is 44x32; a mask must have its image's size.")
    assert rows[5]["error"] == ("m.csv line 7: output 'p0.png' is already the output of row 0; give this row "
                                "another output name.")
    assert rows[6]["error"] == ("m.csv line 8: output '../escape.png' must be a file name inside the output folder "
                                "(no absolute path, no '..').")
    assert all(r["outputs"] == [] and r["sha256"] == [] for r in rows.values() if r["status"] == "failed")
    assert visible_files(out) == ["p0.png", "p2.png", "results.jsonl"]
    lines = len(results(out))

    assert batch(*argv) == 1  # the same command: nothing runs again
    err = capsys.readouterr().err
    assert "8 rows: 2 already done (skipped), 6 failed before (--retry-failed runs them again), 0 to run." in err
    assert "error: 6 of 8 rows failed" in err
    assert len(results(out)) == lines

    Image.open(tmp_path / "p0.png").save(tmp_path / "broken.png")  # fix the file (same row values, same key)
    assert batch(*argv, "--retry-failed", "-q") == 1
    rows = by_row(results(out))
    assert rows[2]["status"] == "done" and rows[1]["status"] == "failed"
    assert len(results(out)) == lines + 6  # the six failed rows ran again, nothing else

    write_csv(manifest, [{"image": "p0.png"}])  # a manifest of done rows only: exit 0
    assert batch(*argv, "-q") == 0


def test_changed_settings_run_again_and_missing_outputs_are_redone(tiny_sd, photo, tmp_path, capsys):
    make_photos(tmp_path / "photos", photo, 2)
    out = tmp_path / "out"
    argv = [tmp_path / "photos", "make it winter", "-m", tiny_sd["folder"], "--out", out]
    assert batch(*argv, "--steps", STEPS, "-q") == 0
    assert capsys.readouterr().err == ""  # -q: no bar, no summary when every row is done
    first = results(out)
    (out / "p1.png").unlink()
    assert batch(*argv, "--steps", STEPS) == 0
    assert "2 rows: 1 already done (skipped), 0 failed before, 1 to run." in capsys.readouterr().err
    assert [r["row"] for r in results(out)[len(first):]] == [1]
    assert batch(*argv, "--steps", "3") == 0  # another setting: another key for every row
    assert "2 rows: 0 already done (skipped), 0 failed before, 2 to run." in capsys.readouterr().err


def test_sigkill_mid_run_then_resume_does_every_row_exactly_once(tiny_sd, photo, tmp_path):
    names = make_photos(tmp_path / "photos", photo, 8)
    out = tmp_path / "out"
    argv = ["batch", str(tmp_path / "photos"), "make it winter", "-m", str(tiny_sd["folder"]), "--out", str(out),
            "--steps", "6", "--device", "cpu", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ipx2p_standalone.cli", *argv], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    journal = out / "results.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_bytes().splitlines()) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()  # still running: the kill lands mid-run
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = [r for r in results(out) if r["status"] == "done"]
    assert 2 <= len(done_before) < 8
    for name in (n for n in visible_files(out) if n.endswith(".png") and not n.startswith(".")):
        with Image.open(out / name) as img:
            img.load()  # every file under a real name is a whole PNG
    (out / ".ipx2p-4194000-x1y2.png").write_bytes(b"\x89PNG half")  # what a kill during a write leaves

    assert main(argv) == 0
    records = results(out)
    assert [r["status"] for r in records].count("done") == 8 == len({r["key"] for r in records})
    assert sorted(r["row"] for r in records) == list(range(8))  # each row once: none lost, none done twice
    assert visible_files(out) == sorted([*names, "results.jsonl"])  # no partial files left


def test_interrupt_exits_130_and_keeps_finished_rows(tiny_sd, photo, tmp_path, monkeypatch, capsys):
    make_photos(tmp_path / "photos", photo, 3)
    out = tmp_path / "out"
    interrupt_after(monkeypatch, 1)
    argv = [tmp_path / "photos", "make it winter", "-m", tiny_sd["folder"], "--out", out, "--steps", STEPS, "-q"]
    assert batch(*argv) == 130
    assert "interrupted: 0 rows done in this run, 0 failed; run the same command again to resume." in \
        capsys.readouterr().err
    assert batch(*argv) == 0
    assert sorted(r["row"] for r in results(out)) == [0, 1, 2]


def test_torn_last_line_is_closed_and_skipped(tiny_sd, photo, tmp_path):
    make_photos(tmp_path / "photos", photo, 1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text('{"row": 0, "key": "abc", "sta')  # a line cut by a crash
    assert batch(tmp_path / "photos", "x", "-m", tiny_sd["folder"], "--out", out, "--steps", STEPS, "-q") == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    assert lines[0] == '{"row": 0, "key": "abc", "sta' and json.loads(lines[1])["status"] == "done"
    assert len(Journal(out).records()) == 1


# ------------------------------------------------------------------------------------------- bad commands: exit 2


@pytest.mark.parametrize("case,message", [
    ("unknown_column", "m.csv: unknown columns 'colour', 'size'; the known columns are image, instruction, mask, "
                       "negative, seed, steps, text_guidance, image_guidance, scheduler, strength, resize, output."),
    ("node_column", "m.csv: unknown column '3.steps' (per-node inputs such as 7.text_guidance need --workflow); "
                    "the known columns are image"),
    ("missing_manifest", "Manifest not found: {tmp}/nothing.csv"),
    ("bad_extension", "{tmp}/list.txt: give a folder of images or a manifest ending in .csv or .jsonl."),
    ("empty_manifest", "{tmp}/m.csv has no rows."),
    ("unknown_model", "Model not found: {tmp}/no-model"),
    ("folder_without_instruction", "is a folder: give the instruction for its images"),
    ("out_is_the_input_folder", "is the folder of the input images; outputs would replace them."),
    ("batch_size", "--batch-size must be at least 1, got 0."),
    ("workers", "--workers must be at least 1, got 0."),
    ("ray_missing", "--ray needs Ray Data, which is not installed here. Install the extra: pip install -e \".[ray]\""),
    ("lora_missing", "File not found: {tmp}/style.safetensors"),
    ("bad_option", "Steps must be a whole number of at least 1, got 0."),
    ("mask_missing", "Mask not found: {tmp}/mask.png"),
])
def test_bad_commands_exit_2_before_any_work(tiny_sd, photo, tmp_path, capsys, monkeypatch, case, message):
    make_photos(tmp_path / "photos", photo, 1)
    manifest = write_csv(tmp_path / "m.csv", [{"image": "photos/p0.png", "instruction": "x"}])
    source, out, extra, instruction = manifest, tmp_path / "out", [], []
    if case == "unknown_column":
        write_csv(manifest, [{"image": "photos/p0.png", "colour": "red", "size": "2"}])
    elif case == "node_column":
        write_csv(manifest, [{"image": "photos/p0.png", "3.steps": "2"}])
    elif case == "missing_manifest":
        source = tmp_path / "nothing.csv"
    elif case == "bad_extension":
        source = tmp_path / "list.txt"
        source.write_text("photos/p0.png")
    elif case == "empty_manifest":
        manifest.write_text("image,instruction\n\n")
    elif case == "unknown_model":
        extra = ["-m", tmp_path / "no-model"]
    elif case == "folder_without_instruction":
        source = tmp_path / "photos"
    elif case == "out_is_the_input_folder":
        source, out, instruction = tmp_path / "photos", tmp_path / "photos", ["make it winter"]
    elif case in ("batch_size", "workers"):
        extra = [f"--{case.replace('_', '-')}", 0]
    elif case == "ray_missing":
        monkeypatch.setitem(sys.modules, "ray", None)
        extra = ["--ray"]
    elif case == "lora_missing":
        extra = ["--lora", tmp_path / "style.safetensors:0.5"]
    elif case == "bad_option":
        extra = ["--steps", 0]
    elif case == "mask_missing":
        extra = ["--mask", tmp_path / "mask.png"]
    argv = [source, *instruction, "--out", out, "--steps", STEPS, *extra]  # extra last: a repeated option wins
    if "-m" not in extra:
        argv += ["-m", tiny_sd["folder"]]
    assert batch(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message.replace("{tmp}", str(tmp_path)) in err
    assert not (out / "results.jsonl").exists()


def test_a_second_job_on_the_same_folder_is_refused(tiny_sd, photo, tmp_path, capsys):
    make_photos(tmp_path / "photos", photo, 1)
    out = tmp_path / "out"
    with Journal(out):  # another job holds the folder
        assert batch(tmp_path / "photos", "x", "-m", tiny_sd["folder"], "--out", out, "--steps", STEPS) == 2
    assert f"error: Another ipx2p batch is writing to {out}; wait for it to finish or use another --out folder." \
        in capsys.readouterr().err


def test_a_model_that_does_not_load_is_a_bad_command(photo, tmp_path, capsys):
    make_photos(tmp_path / "photos", photo, 2)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 64)
    out = tmp_path / "out"
    assert batch(tmp_path / "photos", "x", "-m", broken, "--out", out, "--steps", STEPS) == 2
    err = capsys.readouterr().err
    assert f"error: Could not read model {broken} as safetensors" in err
    assert (out / "results.jsonl").read_text() == ""  # no row was run or failed
