"""The quick subset (issue 15, point 3): `pytest -m "not slow"` leaves out whole slow files listed in conftest, and
CI still runs every test."""

from __future__ import annotations

from pathlib import Path

import conftest

ROOT = Path(__file__).resolve().parents[1]


def test_slow_files_exist_and_ci_runs_everything():
    tests = {p.name for p in (ROOT / "tests").glob("test_*.py")}
    assert conftest.SLOW_FILES <= tests, conftest.SLOW_FILES - tests  # no stale names
    assert "test_quick_subset.py" not in conftest.SLOW_FILES
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest -q\n" in ci and "not slow" not in ci  # CI runs every test


def test_the_hook_marks_exactly_the_slow_files():
    class Item:
        def __init__(self, name):
            self.path, self.markers = Path("tests") / name, []

        def add_marker(self, marker):
            self.markers.append(marker.name)

    items = [Item("test_parity.py"), Item("test_cli.py"), Item("test_browser.py")]
    conftest.pytest_collection_modifyitems(None, items)
    assert [i.markers for i in items] == [["slow"], [], ["slow"]]


def test_readme_gives_the_quick_command():
    text = (ROOT / "README.md").read_text()
    assert '.venv/bin/python -m pytest -q -m "not slow"' in text
