"""PNG metadata tells what ran (issue 15, point 4): the scheduler `auto` stood for, restore-size, mask grow and
feather, the image count, full paths; `ipx2p edit --from-png OUT.png` runs the recorded edit again, same pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ipx2p_standalone.cli import main


def _meta(path):
    with Image.open(path) as img:
        return json.loads(img.text["ipx2p"]), img.text["parameters"], np.asarray(img.convert("RGB"))


def test_metadata_records_what_ran_and_reruns_to_the_same_pixels(tiny_sd, photo, tmp_path, capsys):
    src, mask = tmp_path / "in.png", tmp_path / "mask.png"
    photo.save(src)
    m = np.zeros((32, 44), np.uint8)
    m[4:20, 6:30] = 255
    Image.fromarray(m).save(mask)
    out = tmp_path / "first.png"
    assert main(["edit", str(src), "make it winter", "-m", str(tiny_sd["folder"]), "-o", str(out), "--steps", "2",
                 "--seed", "11", "--images", "2", "--no-restore-size", "--resize", "fit:64", "--mask", str(mask),
                 "--mask-grow", "3", "--mask-feather", "2", "--image-guidance", "1.2", "--negative", "blurry",
                 "-q"]) == 0
    first, params, pixels = _meta(tmp_path / "first_2.png")
    assert first["scheduler"] == "euler_a" and "Sampler: euler_a" in params  # what "auto" ran, not "auto"
    assert (first["restore_size"], first["mask_grow"], first["mask_feather"], first["images"], first["index"]) == \
        (False, 3, 2, 2, 1)
    assert (first["image"], first["mask"], first["model_path"]) == (str(src), str(mask), str(tiny_sd["folder"]))
    assert (first["dtype"], first["resize"], first["image_guidance"], first["seed"]) == ("fp32", "fit:64", 1.2, 11)

    again = tmp_path / "again.png"
    assert main(["edit", "--from-png", str(tmp_path / "first_2.png"), "-o", str(again), "-q"]) == 0
    second, _, pixels_again = _meta(tmp_path / "again_2.png")
    assert np.array_equal(pixels, pixels_again)  # same pixels: the metadata is the whole edit
    assert second == first

    changed = tmp_path / "changed.png"  # an option given on the command line changes the recorded one
    assert main(["edit", "--from-png", str(tmp_path / "first_2.png"), "-o", str(changed), "--seed", "12",
                 "--images", "1", "-q"]) == 0
    third, _, _ = _meta(changed)
    assert (third["seed"], third["images"], third["mask_grow"]) == (12, 1, 3)


def test_from_png_needs_ipx2p_settings(tmp_path, capsys):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert main(["edit", "--from-png", str(plain), "-q"]) == 2
    assert capsys.readouterr().err == (f"error: --from-png {plain}: it has no ipx2p settings (only PNGs written by "
                                       "ipx2p edit or ipx2p batch have them).\n")
    assert main(["edit", "photo.png", "-q"]) == 2
    assert capsys.readouterr().err == ("error: ipx2p edit needs INSTRUCTION (or --from-png PNG to take it from an "
                                       "earlier edit).\n")
