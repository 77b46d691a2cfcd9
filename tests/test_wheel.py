"""A normal (non-editable) install works: the wheel holds the studio, web/ and example_workflows/, and `ipx2p studio`
and `ipx2p edit` run from it.

The wheel is built from a copy of the source (no build isolation: the test venv's setuptools) and installed with
``--no-deps`` into a fresh venv that reaches the test venv's libraries through a path entry (not its ``.pth`` files,
so the editable install's finder stays out): seconds, not a torch download.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import site
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_COPY = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                   "output", "input", "user", "models")


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=SKIP_COPY)
    # example_workflows/input is data the wheel must carry; the ignore above is for run-time folders at the root
    shutil.rmtree(source / "example_workflows")
    shutil.copytree(ROOT / "example_workflows", source / "example_workflows",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(work / "dist"), str(source)], check=True, env=env, cwd=work)
    (wheel,) = (work / "dist").glob("comfyui_ipx2p-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=env)
    purelib = next((venv / "lib").glob("python3*/site-packages"))
    # the test venv's libraries (torch, diffusers, aiohttp, the frontend) after the new venv's own site-packages
    (purelib / "test_venv_libraries.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", str(wheel)], check=True, env=env, cwd=work)
    return {"wheel": wheel, "venv": venv, "env": env, "work": work}


def test_the_wheel_holds_the_studio_and_its_data(wheel_env):
    names = set(zipfile.ZipFile(wheel_env["wheel"]).namelist())
    for name in ("ipx2p_standalone/studio/app.py", "ipx2p_standalone/studio/routes.py",
                 "ipx2p_standalone/batch/command.py", "ipx2p_nodes/__init__.py",
                 "ipx2p_core/configs/sd15/unet/config.json", "ipx2p_core/configs/clip_tokenizer/vocab.json"):
        assert name in names, name
    for path in (ROOT / "web").glob("*.js"):
        assert f"ipx2p_standalone/studio/web/{path.name}" in names
    for path in [*(ROOT / "example_workflows").glob("*.json"), *(ROOT / "example_workflows").glob("*.jpg")]:
        assert f"ipx2p_standalone/studio/example_workflows/{path.name}" in names
    for path in (ROOT / "example_workflows" / "input").glob("*.png"):
        assert f"ipx2p_standalone/studio/example_workflows/input/{path.name}" in names


def test_studio_and_edit_run_from_the_installed_wheel(wheel_env, tiny_sd, photo, tmp_path):
    venv, env = wheel_env["venv"], {**wheel_env["env"], "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    where = subprocess.run([venv / "bin" / "python", "-c", "import ipx2p_standalone.studio.app as a; "
                            "print(a.__file__); print(a.packaged_folder('web'))"],
                           capture_output=True, text=True, check=True, env=env, cwd=tmp_path).stdout.split()
    assert all(p.startswith(str(venv)) for p in where), where  # the wheel's files, not the repository's

    (tmp_path / "models" / "diffusers").mkdir(parents=True)
    os.symlink(tiny_sd["folder"], tmp_path / "models" / "diffusers" / "tiny-sd")
    photo.save(tmp_path / "photo.png")
    edit = subprocess.run([venv / "bin" / "ipx2p", "edit", "photo.png", "make it winter", "-m",
                           str(tiny_sd["folder"]), "--steps", "1", "-o", "out.jpg", "-q"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert edit.returncode == 0, edit.stderr
    assert edit.stdout.strip() == "out.jpg" and (tmp_path / "out.jpg").stat().st_size > 0

    proc = subprocess.Popen([venv / "bin" / "ipx2p", "studio", "--port", "0", "--models", "models", "--device", "cpu",
                             "--input-dir", "input", "--output-dir", "output", "--user-dir", "user"],
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        url, lines = None, []
        deadline = time.monotonic() + 300
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if m := re.search(r"Open (http://\S+) in your browser", line):
                url = m.group(1)
        assert url, "".join(lines)

        def get(path):
            with urllib.request.urlopen(url + path, timeout=60) as r:
                return r.status, r.read()

        status, page = get("/")
        assert status == 200 and b"<html" in page.lower()
        status, body = get("/object_info")
        info = json.loads(body)
        assert status == 200 and {"IPX2PEditImage", "LoadImage", "SaveImage"} <= set(info)
        assert info["IPX2PLoadModel"]["input"]["required"]["model_name"][0] == ["[diffusers] tiny-sd"]
        status, script = get("/extensions/comfyui-ipx2p/ipx2p_compare.js")
        assert status == 200 and script == (ROOT / "web" / "ipx2p_compare.js").read_bytes()
        status, body = get("/templates/index.json")  # the examples, with titles, from inside the wheel
        assert status == 200 and "ipx2p_sd15_edit_image" in [t["name"] for t in json.loads(body)[0]["templates"]]
        assert (tmp_path / "input" / "ipx2p_example.png").is_file()  # the examples' inputs, copied at start
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
