"""README's install section (issue 15, point 2): the CPU-only and tested-versions variants, what they cost, and
the Python versions, consistent with pyproject.toml and constraints-ci.txt."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SECTION = README[README.index("### Install: what it costs"):README.index("## What it does")]


def test_install_variants_and_costs():
    assert "pip install -e . --extra-index-url https://download.pytorch.org/whl/cpu" in SECTION
    assert "`-c constraints-ci.txt`" in SECTION
    torch_pin = re.search(r"^torch==([\d.]+)$", (ROOT / "constraints-ci.txt").read_text(), re.M).group(1)
    assert f"torch {torch_pin}+cpu wheel" in SECTION  # the measured wheel is the pinned one
    for row in ("Default", "CPU only", "Tested versions", "Studio", "Tests"):
        assert f"| {row}" in SECTION, row
    assert "measured" in SECTION and "estimated" in SECTION  # says which numbers are which


def test_python_versions_match_pyproject():
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.10"
    assert "Python 3.10 or newer" in SECTION and "Python 3.11" in SECTION
