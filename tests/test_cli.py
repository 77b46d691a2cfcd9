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
