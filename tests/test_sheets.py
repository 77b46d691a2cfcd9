"""The sweep's contact sheet and the chain's strip (issue 15, point 5): a header with the instruction, model and
seed; text guidance across, image guidance down; `chain -o chain.png` writes the strip of every step there."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ipx2p_core import SamplerSettings, images_to_pil, load_model
from ipx2p_core.image import GRID_GAP, GRID_ROW_LABEL, GRID_TITLE_LINE, grid_cell_origin
from ipx2p_core.pipeline import guidance_sweep
from ipx2p_standalone.cli import main

BACKGROUND = (24, 24, 28)


def _cell(sheet: np.ndarray, index: int, columns: int, size, title_lines=2) -> np.ndarray:
    x, y = grid_cell_origin(index, columns, size, title_lines)
    return sheet[y:y + size[1], x:x + size[0]]


def _has_text(region: np.ndarray) -> bool:
    return bool((np.abs(region.astype(int) - BACKGROUND).sum(-1) > 60).any())


def test_sweep_sheet_has_a_header_and_text_across_image_down(tiny_sd, photo):
    model = load_model(tiny_sd["folder"], device="cpu")
    texts, imgs = [5.0, 7.5], [1.0, 1.5, 2.0]
    result = guidance_sweep(model, photo, "make it winter", texts, imgs, settings=SamplerSettings(steps=2, seed=9))
    sheet = np.asarray(images_to_pil(result.sheet)[0])
    cells = [np.asarray(p) for p in images_to_pil(result.images)]  # text-major: (5,1) (5,1.5) (5,2) (7.5,1) ...
    w, h = 44, 32
    assert sheet.shape == (GRID_GAP + 2 * GRID_TITLE_LINE + 22 + 3 * (h + GRID_GAP),
                           GRID_GAP + GRID_ROW_LABEL + 2 * (w + GRID_GAP), 3)
    for ti in range(len(texts)):  # column ti = text guidance ti, row gi = image guidance gi
        for gi in range(len(imgs)):
            assert np.array_equal(_cell(sheet, gi * len(texts) + ti, len(texts), (w, h)),
                                  cells[ti * len(imgs) + gi]), (ti, gi)
    assert _has_text(sheet[GRID_GAP:GRID_GAP + GRID_TITLE_LINE])  # instruction line
    assert _has_text(sheet[GRID_GAP + GRID_TITLE_LINE:GRID_GAP + 2 * GRID_TITLE_LINE])  # model · seed line
    x0, y0 = grid_cell_origin(0, len(texts), (w, h), 2)
    assert _has_text(sheet[y0 - 22:y0, x0:x0 + w]) and _has_text(sheet[y0:y0 + h, GRID_GAP:x0])  # axis labels


def test_chain_output_is_the_strip_of_every_step(tiny_sd, photo, tmp_path, capsys):
    src = tmp_path / "in.png"
    photo.save(src)
    out = tmp_path / "chain.png"
    assert main(["chain", str(src), "make it winter", "add a snowman", "-m", str(tiny_sd["folder"]), "-o", str(out),
                 "--steps", "2", "-q"]) == 0
    strip = np.asarray(Image.open(out).convert("RGB"))
    steps = [np.asarray(Image.open(tmp_path / f"chain_{i}.png").convert("RGB")) for i in (1, 2)]
    w, h = 44, 32
    assert strip.shape == (GRID_GAP + 2 * GRID_TITLE_LINE + 22 + h + GRID_GAP, GRID_GAP + 3 * (w + GRID_GAP), 3)
    for i, expected in enumerate([np.asarray(photo), *steps]):
        x, y = grid_cell_origin(i, 3, (w, h), 2, labelled=False)
        y += 22  # the strip labels its columns only
        assert np.array_equal(strip[y:y + h, x:x + w], expected), i
    assert _has_text(strip[GRID_GAP:GRID_GAP + GRID_TITLE_LINE])
