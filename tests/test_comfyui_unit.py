"""Issue 12 without a ComfyUI checkout: what the pack does inside ComfyUI, against small fakes of ComfyUI's modules
(test_comfyui_compat.py checks the same against the real one when IPX2P_COMFYUI_DIR is set)."""

from __future__ import annotations

import sys

import pytest

from test_comfyui_compat import VENV_PYTHONS, comfy_python


# ------------------------------------------------------------------------------------- finding ComfyUI's python


def test_comfy_python_is_the_checkouts_venv_or_the_named_one(tmp_path):
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").write_text("")
    assert comfy_python(str(tmp_path), None) == str(tmp_path / ".venv" / "bin" / "python")
    assert comfy_python(str(tmp_path), sys.executable) == sys.executable


def test_comfy_python_missing_names_the_variable(tmp_path):
    with pytest.raises(RuntimeError) as err:
        comfy_python(str(tmp_path), None)
    assert str(err.value) == (f"No Python environment found for ComfyUI in {tmp_path} (looked for "
                              f"{', '.join(VENV_PYTHONS)}); set IPX2P_COMFYUI_PYTHON to the interpreter that runs "
                              "ComfyUI.")
