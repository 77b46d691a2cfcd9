"""The studio's working folders (issue 15, point 7): by default under a per-user data folder, never the current
folder, so `ipx2p studio` run inside a checkout leaves it clean; and the folders a checkout may get are ignored."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("aiohttp")

from ipx2p_standalone.studio import StudioConfig  # noqa: E402
from ipx2p_standalone.studio.app import Studio, studio_home  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_default_folders_are_per_user_not_the_current_folder(tmp_path, monkeypatch):
    checkout, data = tmp_path / "checkout", tmp_path / "xdg"
    checkout.mkdir()
    monkeypatch.chdir(checkout)
    monkeypatch.delenv("IPX2P_STUDIO_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(data))
    monkeypatch.setattr(sys, "platform", "linux")
    assert studio_home() == data / "ipx2p" / "studio"
    studio = Studio(StudioConfig(models_dir=tmp_path / "models", temp_dir=tmp_path / "temp", device="cpu"))
    home = data / "ipx2p" / "studio"
    assert (studio.folders["input"], studio.folders["output"], studio.user_dir) == \
        (home / "input", home / "output", home / "user")
    assert sorted(p.name for p in checkout.iterdir()) == []  # nothing created where it was started
    assert (home / "input" / "ipx2p_example.png").is_file()  # the examples' inputs are loadable from there

    monkeypatch.setenv("IPX2P_STUDIO_HOME", str(tmp_path / "mine"))
    assert studio_home() == tmp_path / "mine"


def test_cli_studio_folders_default_to_the_per_user_folder():
    from ipx2p_standalone.cli import build_parser

    args = build_parser().parse_args(["studio"])
    assert (args.input_dir, args.output_dir, args.user_dir) == (None, None, None)


def test_working_folders_in_a_checkout_are_ignored():
    if not (ROOT / ".git").exists() or subprocess.run(["git", "--version"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    names = ["input/x.png", "output/x.png", "user/default/comfy.settings.json", "models/checkpoints/m.safetensors"]
    done = subprocess.run(["git", "check-ignore", *names], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.split() == names
