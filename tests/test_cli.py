"""The ipx2p command line: edits with progress and PNG metadata, clear errors with exit code 2."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from ipx2p_standalone.cli import main


def test_edit_writes_pngs_with_settings(tiny_sd, photo, tmp_path, capsys):
    src = tmp_path / "in.png"
    photo.save(src)
    out = tmp_path / "out" / "winter.png"
    code = main(["edit", str(src), "make it winter", "--model", str(tiny_sd["folder"]), "-o", str(out),
                 "--steps", "3", "--seed", "42", "--images", "2", "--negative", "blurry", "--resize", "keep"])
    assert code == 0
    captured = capsys.readouterr()
    assert "Editing" in captured.err and "3/3" in captured.err  # tqdm progress bar
    paths = [tmp_path / "out" / "winter_1.png", tmp_path / "out" / "winter_2.png"]
    assert captured.out.split() == [str(p) for p in paths]
    img = Image.open(paths[0])
    assert img.size == (44, 32)
    meta = json.loads(img.text["ipx2p"])
    assert meta | {"index": 0} == meta
    assert (meta["instruction"], meta["negative"], meta["steps"], meta["seed"]) == ("make it winter", "blurry", 3, 42)
    assert meta["text_guidance"] == 7.5 and meta["image_guidance"] == 1.5 and meta["family"] == "sd15"
    assert "Image CFG scale: 1.5" in img.text["parameters"]


def test_restore_size_and_single_file(tiny_sd, photo, tmp_path, capsys):
    src = tmp_path / "in.png"
    photo.resize((45, 33)).save(src)
    out = tmp_path / "o.png"
    assert main(["edit", str(src), "x", "-m", str(tiny_sd["file"]), "--config", str(tiny_sd["config"]), "-o", str(out),
                 "--steps", "2", "--restore-size", "--resize", "fit:64", "-q"]) == 0
    assert Image.open(out).size == (45, 33)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "{tmp}/missing"], "Model not found"),
        (["--model", "owner/not-a-real-repo"], "Could not get 'owner/not-a-real-repo' from the Hugging Face Hub"),
        (["--steps", "0"], "Steps must be a whole number of at least 1, got 0"),
        (["--text-guidance", "nan"], "Text guidance must be a finite number"),
        (["--resize", "huge"], "Unknown resize policy 'huge'"),
    ],
)
def test_errors_exit_2_with_one_line(tiny_sd, photo, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = tmp_path / "in.png"
    photo.save(src)
    argv = ["edit", str(src), "x", "--model", str(tiny_sd["folder"]), "-o", str(tmp_path / "o.png"), "-q"]
    argv += [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "o.png").exists()


def test_not_an_image(tiny_sd, tmp_path, capsys):
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    assert main(["edit", str(bad), "x", "-m", str(tiny_sd["folder"]), "-q"]) == 2
    assert "is not an image this program can read" in capsys.readouterr().err


def test_edit_with_mask_strength_and_schedule(tiny_sd, photo, tmp_path):
    import numpy as np

    src, mask = tmp_path / "in.png", tmp_path / "mask.png"
    photo.save(src)
    m = np.zeros((32, 44), np.uint8)
    m[4:20, 6:30] = 255
    Image.fromarray(m).save(mask)
    out = tmp_path / "masked.png"
    assert main(["edit", str(src), "make it winter", "-m", str(tiny_sd["folder"]), "-o", str(out), "--steps", "4",
                 "--mask", str(mask), "--mask-feather", "2", "--strength", "0.75", "--image-guidance-end", "1.0",
                 "-q"]) == 0
    edited = np.asarray(Image.open(out)).astype(int)
    assert np.abs(edited - np.asarray(photo).astype(int))[m == 0].max() == 0
    meta = json.loads(Image.open(out).text["ipx2p"])
    assert meta["strength"] == 0.75 and meta["image_guidance_end"] == 1.0 and meta["mask"] == str(mask)


def test_sweep_writes_a_contact_sheet_and_cells(tiny_sd, photo, tmp_path, capsys):
    src = tmp_path / "in.png"
    photo.save(src)
    out = tmp_path / "grid.png"
    assert main(["sweep", str(src), "make it winter", "-m", str(tiny_sd["folder"]), "-o", str(out),
                 "--text", "5,7.5", "--image", "1,1.5,2", "--steps", "2", "-q"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[0] == str(out) and len(printed) == 7
    assert (tmp_path / "grid_cells" / "text7.5_image1.5.png").is_file()
    sheet = Image.open(out)
    assert sheet.width > 3 * 44 and sheet.height > 2 * 32
    assert json.loads(sheet.text["ipx2p"])["cells"][0] == [5.0, 1.0]
    assert main(["sweep", str(src), "x", "-m", str(tiny_sd["folder"]), "--text", "", "-q"]) == 2
    assert "--text needs at least one value" in capsys.readouterr().err


def test_chain_writes_every_step(tiny_sd, photo, tmp_path, capsys):
    src = tmp_path / "in.png"
    photo.save(src)
    out = tmp_path / "chain.png"
    assert main(["chain", str(src), "make it winter", "add a snowman", "-m", str(tiny_sd["folder"]), "-o", str(out),
                 "--steps", "2", "-q"]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "chain_1.png"), str(tmp_path / "chain_2.png"),
                                               str(out)]  # the steps, then the strip of them all
    assert json.loads(Image.open(tmp_path / "chain_2.png").text["ipx2p"])["chain"] == ["make it winter",
                                                                                       "add a snowman"]
