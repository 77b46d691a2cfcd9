"""``ipx2p batch --workflow``: a workflow file per row through the runner (its cache loads the model once), rows set
by image / instruction / seed / NODE_ID.INPUT columns, row k equal to ``ipx2p run`` with the same values."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from batch_helpers import by_row, make_photos, pixels, results, write_csv
from examples_helpers import EXAMPLES_DIR, load_example, tiny_overrides
from PIL import Image

import ipx2p_core
from ipx2p_nodes.host import get_host, set_host
from ipx2p_standalone.cli import main


@pytest.fixture()
def models(tmp_path, tiny_sd, tiny_sdxl):
    root = tmp_path / "models" / "diffusers"
    root.mkdir(parents=True)
    os.symlink(tiny_sd["folder"], root / "tiny-sd")
    os.symlink(tiny_sdxl["folder"], root / "tiny-sdxl")
    previous = get_host()
    yield tmp_path / "models"
    set_host(previous)


def _sets(name: str) -> list[str]:
    args = []
    for key, value in tiny_overrides(load_example(name)).items():
        args += ["--set", f"{key}={value}"]
    return args


def test_csv_rows_through_a_workflow_equal_ipx2p_run(models, photo, tmp_path, monkeypatch, capsys):
    make_photos(tmp_path / "in", photo, 3)
    manifest = write_csv(tmp_path / "in" / "rows.csv", [
        {"image": "p0.png", "instruction": "make it winter"},
        {"image": "p1.png", "instruction": "add snow", "3.text_guidance": "9"},
        {"image": "p2.png", "seed": "77", "output": "third"},
        {"image": "p0.png", "3.text_guidance": "abc", "output": "bad"},
    ])
    loads = []
    real_load = ipx2p_core.load_model
    monkeypatch.setattr(ipx2p_core, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    wf = EXAMPLES_DIR / "ipx2p_sd15_edit_image.json"
    out = tmp_path / "out"
    code = main(["batch", str(manifest), "--workflow", str(wf), "--models", str(models), "--out", str(out),
                 *_sets("ipx2p_sd15_edit_image"), "--seed", "10"])
    assert code == 1
    assert "error: 1 of 4 rows failed" in capsys.readouterr().err
    rows = by_row(results(out))
    assert [rows[k]["status"] for k in range(4)] == ["done", "done", "done", "failed"]
    assert rows[3]["error"] == ("rows.csv line 5: node 3 (IPX2PEditImage, 'Edit Image (InstructPix2Pix)'): --set "
                                "3.text_guidance=abc: not a valid FLOAT (could not convert string to float: 'abc')")
    assert [rows[k]["outputs"] for k in range(3)] == [["p0.png"], ["p1.png"], ["third.png"]]
    assert [rows[k]["settings"] for k in range(3)] == [{"seed": 10}, {"seed": 11}, {"seed": 77}]
    assert len(loads) == 1  # the runner's cache: rows 2..N reuse the loaded model
    with Image.open(out / "p1.png") as img:
        assert json.loads(img.text["prompt"])["3"]["inputs"]["text_guidance"] == 9.0  # ComfyUI's metadata
        assert "workflow" in img.text
    assert sorted(p.name for p in out.iterdir()) == ["p0.png", "p1.png", "results.jsonl", "third.png"]

    single = tmp_path / "single"
    assert main(["run", str(wf), *_sets("ipx2p_sd15_edit_image"), "--set", "2.image=p1.png", "--set",
                 "3.instruction=add snow", "--set", "3.text_guidance=9", "--set", "3.seed=11", "--input-dir",
                 str(tmp_path / "in"), "--output-dir", str(single), "--models", str(models), "-q"]) == 0
    (saved,) = list(single.glob("*.png"))
    assert np.array_equal(pixels(out / "p1.png"), pixels(saved))


def test_folder_through_an_sdxl_workflow_with_one_instruction(models, photo, tmp_path):
    make_photos(tmp_path / "photos", photo, 2)
    out = tmp_path / "out"
    assert main(["batch", str(tmp_path / "photos"), "make it a statue", "--workflow",
                 str(EXAMPLES_DIR / "ipx2p_sdxl_edit.json"), "--models", str(models), "--out", str(out),
                 *_sets("ipx2p_sdxl_edit"), "-q"]) == 0
    rows = by_row(results(out))
    assert [(r["status"], r["outputs"], r["settings"]) for r in rows.values()] == [
        ("done", ["p0.png"], {"seed": 0}), ("done", ["p1.png"], {"seed": 1})]
    with Image.open(out / "p0.png") as img:
        prompt = json.loads(img.text["prompt"])
    assert prompt["3"]["inputs"]["instruction"] == "make it a statue" and prompt["5"]["inputs"]["seed"] == 0
    assert main(["batch", str(tmp_path / "photos"), "make it a statue", "--workflow",
                 str(EXAMPLES_DIR / "ipx2p_sdxl_edit.json"), "--models", str(models), "--out", str(out),
                 *_sets("ipx2p_sdxl_edit"), "-q"]) == 0
    assert len(results(out)) == 2  # resumed: nothing ran again


@pytest.mark.parametrize("extra,columns,message", [
    (["--steps", "3"], None, "--steps do not apply with --workflow: set node inputs with --set NODE_ID.INPUT=VALUE"),
    ([], {"9.steps": "3"}, "column '9.steps': the workflow has no node 9 (nodes: 1, 2, 3, 4)."),
    ([], {"3.colour": "red"}, "column '3.colour': IPX2PEditImage has no input 'colour' (inputs: model, image, "),
    ([], {"size": "3"}, "unknown column 'size'; the known columns are image, instruction, seed, output and "
                        "NODE_ID.INPUT columns (e.g. 7.text_guidance)."),
    (["--set", "1.model_name=missing"], None, "the workflow cannot run: node 1 (IPX2PLoadModel, 'Load "
                                              "InstructPix2Pix Model'): input 'model_name': Model 'missing' not "
                                              "found (looked in checkpoints: "),
    (["--set", "7.steps=2"], None, "the workflow cannot run: --set 7.steps: there is no node 7 in the workflow"),
])
def test_workflow_bad_commands_exit_2(models, photo, tmp_path, capsys, extra, columns, message):
    make_photos(tmp_path, photo, 1)
    manifest = write_csv(tmp_path / "rows.csv", [{"image": "p0.png", "instruction": "x", **(columns or {})}])
    out = tmp_path / "out"
    code = main(["batch", str(manifest), "--workflow", str(EXAMPLES_DIR / "ipx2p_sd15_edit_image.json"),
                 "--models", str(models), "--out", str(out), *_sets("ipx2p_sd15_edit_image"),
                 *extra])  # a later --set of the same input wins
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not (out / "results.jsonl").exists()


def test_two_load_image_nodes_need_the_column_to_name_one(models, photo, tmp_path, capsys):
    wf = load_example("ipx2p_sd15_edit_image")
    loader = next(n for n in wf["nodes"] if n["type"] == "LoadImage")
    wf["nodes"].append({**json.loads(json.dumps(loader)), "id": 9, "outputs": [
        {"name": "IMAGE", "type": "IMAGE", "links": [], "slot_index": 0},
        {"name": "MASK", "type": "MASK", "links": [], "slot_index": 1}]})
    wf_path = tmp_path / "two_loaders.json"
    wf_path.write_text(json.dumps(wf))
    make_photos(tmp_path / "in" / "sub", photo, 2)
    argv = ["batch", None, "make it winter", "--workflow", str(wf_path), "--models", str(models), "--out",
            str(tmp_path / "out"), *_sets("ipx2p_sd15_edit_image"), "-q"]
    argv[1] = str(write_csv(tmp_path / "in" / "rows.csv", [{"image": "sub/p0.png"}]))
    assert main(argv) == 2
    assert ("error: the image column needs exactly one Load Image node in the workflow, it has 2 (2, 9); name the "
            "node in the column instead, e.g. 2.image.") in capsys.readouterr().err
    argv[1] = str(write_csv(tmp_path / "in" / "rows.csv", [{"2.image": "sub/p0.png"}, {"2.image": "sub/p1.png"}]))
    assert main(argv) == 0
    rows = by_row(results(tmp_path / "out"))
    assert [(r["status"], r["outputs"], r["inputs"]) for r in rows.values()] == [
        ("done", ["p0.png"], {"2.image": "sub/p0.png"}), ("done", ["p1.png"], {"2.image": "sub/p1.png"})]
