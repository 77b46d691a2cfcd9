"""What the command line tells a user (issue 15, point 6): -q hides library bars, warnings are one `warning:`
line, a missing input file says it does not exist and where, a single file's --config brings its own tokenizer
and a tokenizer that does not fit is one `error:` line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from ipx2p_standalone.cli import main

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_quiet_edit_prints_warnings_as_one_line_each_and_no_library_bars(tiny_sd, photo, tmp_path, capsys):
    src, mask = tmp_path / "in.png", tmp_path / "mask.png"
    photo.save(src)
    Image.fromarray(np.full((16, 22), 255, np.uint8)).save(mask)  # half the image's size: stretched
    words = " ".join(f"word{i}" for i in range(90))
    assert main(["edit", str(src), f"make it winter {words}", "-m", str(tiny_sd["folder"]), "--steps", "1",
                 "--mask", str(mask), "-o", str(tmp_path / "o.png"), "-q"]) == 0
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("warning: Instruction longer than 77 tokens (") and "Dropped: '" in lines[0]
    assert lines[1] == ("warning: Mask is 22x16 but the image is 44x32; the mask was stretched to the image's "
                        "size.")
    assert "Loading weights" not in err and ".py:" not in err


def test_run_missing_input_says_it_does_not_exist_and_where(tiny_sd, tmp_path, capsys):
    models = tmp_path / "models"
    (models / "diffusers").mkdir(parents=True)
    (models / "diffusers" / "tiny-sd").symlink_to(tiny_sd["folder"])
    (tmp_path / "in").mkdir()
    assert main(["run", str(ROOT / "example_workflows" / "ipx2p_sd15_edit_image.json"), "--models", str(models),
                 "--input-dir", str(tmp_path / "in"), "--set", "1.model_name=tiny-sd", "-q"]) == 2
    err = capsys.readouterr().err
    assert f"Invalid image file: ipx2p_example.png does not exist (looked for {(tmp_path / 'in').resolve()}" \
        f"/ipx2p_example.png)" in err


def _small_vocab_model(tmp_path):
    """A tiny SD whose text encoder has 514 token embeddings and whose tokenizer (in its diffusers folder) has 514
    tokens: the shipped 49408-token CLIP tokenizer would index past its table."""
    import tiny_models
    from transformers import CLIPTextModel, CLIPTokenizer

    from ipx2p_core.configs import CLIP_TOKENIZER_DIR
    from ipx2p_core.ldm_layout import save_single_file

    full = json.loads((CLIP_TOKENIZER_DIR / "vocab.json").read_text())
    vocab = {tok: i for tok, i in full.items() if i < 512}  # the byte tokens, with and without </w>
    vocab.update({"<|startoftext|>": 512, "<|endoftext|>": 513})
    files = tmp_path / "small_tok"
    files.mkdir()
    (files / "vocab.json").write_text(json.dumps(vocab))
    (files / "merges.txt").write_text("#version: 0.2\n")
    comps = tiny_models.tiny_sd_components()
    cfg = tiny_models.tiny_clip_config()
    cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = 514, 512, 513, 513
    comps["text_encoder"] = tiny_models._seeded(0, lambda: CLIPTextModel(cfg))
    comps["tokenizer"] = CLIPTokenizer(str(files / "vocab.json"), str(files / "merges.txt"), model_max_length=77)
    folder = tiny_models.save_diffusers_folder(comps, tmp_path / "small_vocab", sdxl=False)
    single = tmp_path / "small_vocab.safetensors"
    save_single_file(single, comps["unet"], comps["vae"], (comps["text_encoder"],), "sd15")
    return folder, single


def test_single_file_uses_the_config_folders_tokenizer(photo, tmp_path, capsys):
    folder, single = _small_vocab_model(tmp_path)
    photo.save(tmp_path / "in.png")
    base = ["edit", str(tmp_path / "in.png"), "make it winter", "--steps", "1", "--seed", "3", "-q"]
    assert main(base + ["-m", str(single), "--config", str(folder), "-o", str(tmp_path / "file.png")]) == 0
    assert main(base + ["-m", str(folder), "-o", str(tmp_path / "folder.png")]) == 0
    file_px, folder_px = (np.asarray(Image.open(tmp_path / n)) for n in ("file.png", "folder.png"))
    assert np.array_equal(file_px, folder_px)  # the single file + its config is the diffusers folder

    no_tokenizer = tmp_path / "config_without_tokenizer"
    shutil.copytree(folder, no_tokenizer)
    shutil.rmtree(no_tokenizer / "tokenizer")
    capsys.readouterr()
    assert main(base + ["-m", str(single), "--config", str(no_tokenizer), "-o", str(tmp_path / "bad.png")]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {single}: its text encoder has 514 token embeddings, but the tokenizer (the shipped CLIP "
                   "tokenizer) has 49408 tokens. Pass --config DIR (load_model(config=...)) whose tokenizer folder "
                   "holds the model's own tokenizer (tokenizer.json, or vocab.json and merges.txt; config folder "
                   f"used: {no_tokenizer}).\n")
    assert not (tmp_path / "bad.png").exists()
