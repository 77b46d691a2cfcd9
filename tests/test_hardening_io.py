"""Issue 11, the files side: crash-safe writes, SaveImage's symlink check (and, below, the other hardening points)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from ipx2p_core.atomic_files import (TEMP_PREFIX, private_temp_folder, remove_leftovers, remove_stale_temp_folders,
                                     write_atomic)
from ipx2p_standalone.builtin_nodes import Folders, make_builtin_nodes

ROOT = Path(__file__).resolve().parents[1]


def _save_image(tmp_path, prefix="ComfyUI"):
    folders = Folders(input=tmp_path / "in", output=tmp_path / "out", temp=tmp_path / "temp")
    save = make_builtin_nodes(folders)["SaveImage"]()
    return save.save_images(torch.full((1, 8, 8, 3), 0.5), prefix)


# ------------------------------------------------------------------------------------------- SaveImage and symlinks


def test_save_image_refuses_a_symlink_leading_out_of_the_output_folder(tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"precious")
    (tmp_path / "out").mkdir()
    # %batch_num% names are not seen by the counter (as in ComfyUI), so the same name comes round again
    (tmp_path / "out" / "shot_0_00001_.png").symlink_to(outside)
    with pytest.raises(ValueError, match=r"shot_0_00001_\.png is a link that leads outside the output folder"):
        _save_image(tmp_path, "shot_%batch_num%")
    assert outside.read_bytes() == b"precious"


def test_save_image_refuses_a_symlinked_subfolder_leading_out(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValueError, match=r"Saving image outside the output folder is not allowed \(prefix 'sub/x'"):
        _save_image(tmp_path, "sub/x")
    assert list(elsewhere.iterdir()) == []


def test_save_image_writes_whole_files_and_leaves_no_temp_files(tmp_path):
    result = _save_image(tmp_path)
    assert result["ui"]["images"] == [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ComfyUI_00001_.png"]
    with Image.open(tmp_path / "out" / "ComfyUI_00001_.png") as img:
        assert img.size == (8, 8) and img.getpixel((0, 0)) == (127, 127, 127)  # ComfyUI truncates 127.5
    assert oct((tmp_path / "out" / "ComfyUI_00001_.png").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------------------- killed mid-write

_WRITERS = {
    "save_image": (
        "import torch\n"
        "from ipx2p_standalone.builtin_nodes import Folders, make_builtin_nodes\n"
        "f = Folders(input=OUT, output=OUT, temp=OUT)\n"
        "make_builtin_nodes(f)['SaveImage']().save_images(torch.rand(1, 256, 256, 3), 'ComfyUI')\n",
        "ComfyUI_00001_.png",
    ),
    "cli_png": (
        "from PIL import Image\n"
        "from ipx2p_standalone.output_files import save_output\n"
        "save_output(Image.new('RGB', (256, 256), 'red'), OUT / 'edited.png', {'instruction': 'x', 'negative': '',"
        " 'steps': 1, 'scheduler': 'auto', 'text_guidance': 1, 'image_guidance': 1, 'seed': 0, 'model': 'm'})\n",
        "edited.png",
    ),
}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
@pytest.mark.parametrize("writer", sorted(_WRITERS))
def test_a_writer_killed_mid_write_leaves_the_old_file_and_no_half_file(tmp_path, writer, sig):
    code, target = _WRITERS[writer]
    out = tmp_path / "out"
    out.mkdir()
    old = out / target
    Image.new("RGB", (4, 4), "blue").save(old)
    old_bytes = old.read_bytes()
    if writer == "save_image":  # SaveImage never replaces a file: its counter moves on; the new one must not appear
        target = "ComfyUI_00002_.png"
    env = {**os.environ, "IPX2P_TEST_PAUSE_MID_WRITE": "60", "OMP_NUM_THREADS": "1"}
    # SIGINT as a terminal delivers it, even when these tests run in the background (where the shell makes
    # children ignore SIGINT, and Python then installs no KeyboardInterrupt handler)
    proc = subprocess.Popen([sys.executable, "-c", f"from pathlib import Path\nOUT = Path({str(out)!r})\n{code}"],
                            env=env, cwd=ROOT, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    temps: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        temps = [p for p in out.iterdir() if p.name.startswith(TEMP_PREFIX) and p.stat().st_size > 0]
        if temps:
            break
        time.sleep(0.05)
    assert temps and proc.poll() is None, proc.stderr.read().decode()  # half written, paused
    proc.send_signal(sig)
    proc.wait(timeout=60)
    names = sorted(p.name for p in out.iterdir())
    assert old.read_bytes() == old_bytes  # the old file, whole
    assert target not in names or target == old.name  # no new file under a real name
    if sig == signal.SIGINT:
        assert names == [old.name]  # KeyboardInterrupt: the temp file is removed on the way out
    else:
        assert names == sorted([old.name, temps[0].name])  # SIGKILL: a temp file only, removed at the next start
        if writer == "cli_png":  # the next CLI run's output check removes it
            from ipx2p_standalone.output_files import check_outputs

            check_outputs([out / "edited.png"], [], overwrite=False)
        else:  # the next runner's start
            from ipx2p_standalone.runner import Runner

            Runner(node_classes={}, output_dir=out, temp_dir=tmp_path / "temp")
        assert sorted(p.name for p in out.iterdir()) == [old.name]


def test_write_atomic_replaces_a_symlink_instead_of_writing_through_it(tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text("keep")
    (tmp_path / "link.json").symlink_to(outside)
    digest = write_atomic(tmp_path / "link.json", b"{}")
    assert outside.read_text() == "keep" and not (tmp_path / "link.json").is_symlink()
    assert (tmp_path / "link.json").read_bytes() == b"{}" and len(digest) == 64


def test_leftovers_of_live_writers_are_kept_and_of_ended_ones_removed(tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(ended.stdout)
    (tmp_path / "sub").mkdir()
    (tmp_path / f"{TEMP_PREFIX}{dead_pid}-abc.png").write_bytes(b"half")
    (tmp_path / "sub" / f"{TEMP_PREFIX}{dead_pid}-def.json").write_bytes(b"{")
    (tmp_path / f"{TEMP_PREFIX}{os.getpid()}-live.png").write_bytes(b"being written")
    (tmp_path / "photo.png").write_bytes(b"a user's file")
    assert remove_leftovers(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == \
        sorted([f"{TEMP_PREFIX}{os.getpid()}-live.png", "photo.png"])


def test_temp_folders_of_ended_runs_are_removed_at_the_next_start(tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(ended.stdout)
    for name in (f"ipx2p-temp-{dead_pid}-x", f"ipx2p-studio-temp-{dead_pid}-y", f"ipx2p-temp-{os.getpid()}-z",
                 "ipx2p-temp-abc", "other"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "preview.png").write_bytes(b"p")
    assert remove_stale_temp_folders(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"ipx2p-temp-{os.getpid()}-z", "ipx2p-temp-abc",
                                                                  "other"])


def test_a_runs_private_temp_folder_is_removed_at_exit(tmp_path):
    code = ("from ipx2p_core.atomic_files import private_temp_folder\n"
            "f = private_temp_folder(); (f / 'preview.png').write_bytes(b'p'); print(f)\n")
    folder = Path(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                 cwd=ROOT).stdout.strip())
    assert folder.name.startswith("ipx2p-temp-") and not folder.exists()
    assert private_temp_folder().is_dir()


# ------------------------------------------------------------------------------------------- huge instructions


@pytest.fixture(scope="module")
def sd(tiny_sd):
    from ipx2p_core import load_model

    return load_model(tiny_sd["folder"], dtype="fp32", device="cpu")


def _rss() -> int:
    import gc

    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss


@pytest.mark.parametrize("megabytes", [5, 50])
def test_a_huge_instruction_is_refused_within_a_second_and_memory_comes_back(sd, photo, tmp_path, megabytes):
    from ipx2p_core import IP2PError, SamplerSettings
    from ipx2p_core.pipeline import edit
    from ipx2p_standalone.cli import main

    before = _rss()
    huge = "make it winter " * (megabytes * 1024 * 1024 // 15)
    started = time.perf_counter()
    with pytest.raises(IP2PError, match=rf"^The instruction is {len(huge):,} characters long; the limit is 10,000\. "
                                        r"The text encoder reads only its first 77 tokens"):
        edit(sd, photo, huge, settings=SamplerSettings(steps=1))
    photo.save(tmp_path / "photo.png")
    # the CLI refuses it before loading the model (a model that does not exist is never looked at)
    assert main(["edit", str(tmp_path / "photo.png"), huge, "-m", str(tmp_path / "no-model"),
                 "-o", str(tmp_path / "out.png")]) == 2
    assert main(["edit", str(tmp_path / "photo.png"), "x", "--negative", huge, "-m", str(tmp_path / "no-model"),
                 "-o", str(tmp_path / "out.png")]) == 2
    elapsed = time.perf_counter() - started
    del huge
    assert elapsed < 1.0 * 3  # the engine and two CLI calls: well under a second each
    assert _rss() - before < 50 * 1024 * 1024
    assert not (tmp_path / "out.png").exists()


def test_the_cli_names_the_limit_in_one_error_line(tmp_path, photo, capsys):
    from ipx2p_standalone.cli import main

    photo.save(tmp_path / "photo.png")
    assert main(["chain", str(tmp_path / "photo.png"), "ok", "y" * 10_001, "-m", str(tmp_path / "no-model")]) == 2
    assert capsys.readouterr().err == ("error: The instruction is 10,001 characters long; the limit is 10,000. The "
                                       "text encoder reads only its first 77 tokens (about 300 characters), so "
                                       "shorten it.\n")


def test_tokenizing_a_start_of_the_text_gives_exactly_the_whole_texts_window(sd):
    import random
    import warnings

    from ipx2p_core.text import _tokenize

    tokenizer = sd.tokenizers[0]
    rng = random.Random(0)
    words = ["make", "it", "winter,", "snow!!", "über-cool", "日本", "3.14", "don't", "a" * 40, "&amp;", "(sky)", "é"]
    for _ in range(20):
        text = "".join(rng.choice(words) + rng.choice([" ", "  ", "\n", "\t", " "]) for _ in range(rng.randint(50, 3000)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = _tokenize(tokenizer, [text])
        whole = tokenizer([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        assert torch.equal(ours, whole)


def test_the_truncation_warning_is_bounded_and_names_the_dropped_words(sd):
    from ipx2p_core.text import PromptTruncatedWarning, encode_instruction

    text = "one two three four five six seven eight nine ten " * 199  # 9,950 characters, 995 tokens
    with pytest.warns(PromptTruncatedWarning) as record:
        encode_instruction(sd, text)
    message = str(record[0].message)
    # only a start (1,024 characters, ~200 tokens) was tokenized: the count is a lower bound
    assert re.match(r"Instruction longer than 77 tokens \(more than \d{3}\); the text encoder only sees the start\. "
                    r"Dropped: 'six seven eight nine ten one two .*… \(\d,\d{3} more characters\)'$", message)
    assert len(message) < 400


def test_metadata_keeps_a_bounded_start_with_the_length_and_hash():
    import hashlib

    from ipx2p_standalone.edit_commands import bounded_text

    meta: dict = {}
    bounded_text(meta, "instruction", "short")
    assert meta == {"instruction": "short"}
    text = "z" * 9_000
    bounded_text(meta, "instruction", text)
    assert meta == {"instruction": "z" * 1_000 + "…", "instruction_chars": 9_000,
                    "instruction_sha256": hashlib.sha256(text.encode()).hexdigest()}


# ------------------------------------------------------------------------------------------- multi-frame images


@pytest.fixture(scope="module")
def paged_tiff(tmp_path_factory) -> Path:
    """A 64x64 first page and two 144-megapixel pages (bilevel, deflated: a 50 kB file)."""
    path = tmp_path_factory.mktemp("tiff") / "pages.tiff"
    huge = Image.new("1", (12_000, 12_000), 0)
    Image.new("RGB", (64, 64), "red").save(path, save_all=True, append_images=[huge, huge], compression="tiff_deflate")
    assert path.stat().st_size < 100_000
    return path


TIFF_REFUSED = ("has 3 frames; frame 2 is 12000x12000 and frames 1-2 hold 144,004,096 pixels, more than the limit "
                "of 100,000,000 (a decompression bomb, or simply too large to edit)")


def test_every_frame_counts_against_the_pixel_limit_without_decoding(paged_tiff):
    from ipx2p_core import IP2PError
    from ipx2p_core.image import check_image_pixels, open_image

    before = _rss()
    with Image.open(paged_tiff) as img:
        with pytest.raises(IP2PError, match=re.escape(f"pages {TIFF_REFUSED}")):
            check_image_pixels(img, name="pages")
        assert img.tell() == 0  # left at the frame it was at
        assert check_image_pixels(img, max_pixels=300_000_000) == 64 * 64 + 2 * 144_000_000
    with pytest.raises(IP2PError, match=f"^{re.escape(f'{paged_tiff} {TIFF_REFUSED}')}$"):
        open_image(paged_tiff)
    assert _rss() - before < 50 * 1024 * 1024  # decoding one page as RGB floats would take 1.7 GB


def test_load_image_and_the_cli_refuse_a_file_whose_later_frames_are_huge(paged_tiff, tmp_path, capsys):
    from ipx2p_core import IP2PError
    from ipx2p_standalone.cli import main

    folders = Folders(input=paged_tiff.parent, output=tmp_path / "out", temp=tmp_path / "temp")
    load = make_builtin_nodes(folders)["LoadImage"]
    assert load.VALIDATE_INPUTS("pages.tiff") == f"Invalid image file: pages.tiff is not a readable image " \
                                                 f"(IP2PError: pages.tiff {TIFF_REFUSED})"
    with pytest.raises(IP2PError, match=re.escape(f"pages.tiff {TIFF_REFUSED}")):
        load().load_image("pages.tiff")
    assert main(["edit", str(paged_tiff), "make it winter", "-m", str(tmp_path / "no-model"),
                 "-o", str(tmp_path / "out.png")]) == 2
    assert capsys.readouterr().err == f"error: {paged_tiff} {TIFF_REFUSED}\n"


def test_studio_uploads_count_every_frame(paged_tiff, tmp_path):
    import aiohttp
    from dummy_nodes import NODES
    from studio_helpers import run

    from ipx2p_nodes.host import get_host, set_host
    from ipx2p_standalone.studio import StudioServer

    folders = {k: tmp_path / k for k in ("models", "input", "output", "user", "temp")}
    for folder in folders.values():
        folder.mkdir()
    Image.new("RGB", (64, 64), "blue").save(folders["input"] / "photo.png")
    data = paged_tiff.read_bytes()
    previous = get_host()
    with StudioServer(models_dir=folders["models"], input_dir=folders["input"], output_dir=folders["output"],
                      user_dir=folders["user"], temp_dir=folders["temp"], device="cpu", node_classes=NODES) as studio:
        async def upload(s, route, **fields):
            form = aiohttp.FormData()
            form.add_field("image", data, filename="pages.tiff", content_type="image/tiff")
            for key, value in fields.items():
                form.add_field(key, value)
            async with s.post(studio.url + route, data=form) as r:
                return r.status, await r.text()

        async def scenario():
            async with aiohttp.ClientSession() as s:
                return (await upload(s, "/api/upload/image"),
                        await upload(s, "/api/upload/mask", original_ref='{"filename": "photo.png", "type": "input"}'))

        image, mask = run(scenario())
    set_host(previous)
    assert image == (413, f"pages.tiff {TIFF_REFUSED}\n")
    assert mask == (413, f"pages.tiff {TIFF_REFUSED}\n")
    assert not (folders["input"] / "pages.tiff").exists()


# ------------------------------------------------------------------------------------------- CLI outputs


@pytest.mark.parametrize("output, message", [
    ("{tmp}/photo.png/out.png", "Cannot write {tmp}/photo.png/out.png: {tmp}/photo.png is a file, not a folder."),
    ("/proc/ipx2p-out.png", "Cannot write /proc/ipx2p-out.png: the folder /proc is not writable ("),
    ("{tmp}/dir.png", "Output {tmp}/dir.png is a folder; give a file name such as {tmp}/dir.png/edited.png."),
    ("{tmp}/out.gif", "Output {tmp}/out.gif: unknown image extension '.gif'; use .png, .jpg, .jpeg or .webp."),
    ("{tmp}/photo.png", "Output {tmp}/photo.png is an input image; it would be replaced by the edit. Choose another "
                        "-o, or give --overwrite to replace it."),
])
@pytest.mark.parametrize("command", ["edit", "sweep", "chain"])
def test_output_mistakes_are_one_error_line_before_the_model_loads(tmp_path, photo, capsys, command, output, message):
    from ipx2p_standalone.cli import main

    photo.save(tmp_path / "photo.png")
    (tmp_path / "dir.png").mkdir()
    before = (tmp_path / "photo.png").read_bytes()
    output, message = output.format(tmp=tmp_path), message.format(tmp=tmp_path)
    # a model that does not exist: reaching the model load would give another error
    assert main([command, str(tmp_path / "photo.png"), "make it winter", "-m", str(tmp_path / "no-model"),
                 "-o", output]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert (tmp_path / "photo.png").read_bytes() == before


def test_the_mask_is_an_input_too(tmp_path, photo, capsys):
    from ipx2p_standalone.cli import main

    photo.save(tmp_path / "photo.png")
    photo.save(tmp_path / "mask.png")
    assert main(["edit", str(tmp_path / "photo.png"), "x", "--mask", str(tmp_path / "mask.png"), "-m",
                 str(tmp_path / "no-model"), "-o", str(tmp_path / "mask.png")]) == 2
    assert "is an input image" in capsys.readouterr().err


def test_output_extension_picks_the_format_and_carries_the_settings(tiny_sd, photo, tmp_path):
    from ipx2p_standalone.cli import main
    from ipx2p_standalone.output_files import read_settings

    photo.save(tmp_path / "photo.webp", lossless=True)
    common = ["-m", str(tiny_sd["folder"]), "--steps", "2", "-q"]
    assert main(["edit", str(tmp_path / "photo.webp"), "make it winter", *common, "--images", "2",
                 "-o", str(tmp_path / "out.jpg")]) == 0
    for i in (1, 2):
        with Image.open(tmp_path / f"out_{i}.jpg") as img:
            assert img.format == "JPEG" and img.size == photo.size
        settings = read_settings(tmp_path / f"out_{i}.jpg")
        assert settings["instruction"] == "make it winter" and settings["steps"] == 2 and settings["index"] == i - 1
    # -o naming the input: only with --overwrite; then the input is replaced by a WebP edit
    assert main(["edit", str(tmp_path / "photo.webp"), "make it winter", *common, "--overwrite",
                 "-o", str(tmp_path / "photo.webp")]) == 0
    with Image.open(tmp_path / "photo.webp") as img:
        assert img.format == "WEBP"
    assert read_settings(tmp_path / "photo.webp")["generator"] == "ipx2p"
    assert main(["edit", str(tmp_path / "photo.webp"), "x", *common, "-o", str(tmp_path / "noext")]) == 0
    with Image.open(tmp_path / "noext.png") as img:
        assert img.format == "PNG" and json.loads(img.text["ipx2p"])["instruction"] == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noext.png", "out_1.jpg", "out_2.jpg", "photo.webp"]


def test_an_export_folder_appears_whole_or_not_at_all(tmp_path):
    from ipx2p_core.atomic_files import atomic_folder

    with pytest.raises(RuntimeError, match="killed"):
        with atomic_folder(tmp_path / "merged") as folder:
            (folder / "unet").mkdir()
            (folder / "unet" / "half.safetensors").write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_folder(tmp_path / "merged") as folder:
        assert folder.name.startswith(f"{TEMP_PREFIX}{os.getpid()}-") and not (tmp_path / "merged").exists()
        (folder / "model_index.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
    assert (tmp_path / "merged" / "model_index.json").read_text() == "{}"
    # a folder the user keeps other files in is written into, never replaced
    (tmp_path / "merged" / "notes.txt").write_text("mine")
    with atomic_folder(tmp_path / "merged") as folder:
        assert folder == tmp_path / "merged"
    assert (tmp_path / "merged" / "notes.txt").read_text() == "mine"
    # the folder a killed export leaves is removed at the next start
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f"{TEMP_PREFIX}{int(ended.stdout)}-exp" / "unet").mkdir(parents=True)
    assert remove_leftovers(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_batch_refuses_a_huge_command_instruction_before_any_row(tmp_path, photo, capsys):
    from ipx2p_standalone.cli import main

    (tmp_path / "photos").mkdir()
    photo.save(tmp_path / "photos" / "a.png")
    assert main(["batch", str(tmp_path / "photos"), "w" * 20_000, "-m", str(tmp_path / "no-model"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "error: The instruction is 20,000 characters long; the limit is 10,000." in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.jsonl").exists()
