"""The studio's defences: no path traversal in view, upload or userdata ('..', absolute paths, URL-encoded and
backslash variants, symlinks out of the folder), cross-origin and DNS-rebinding requests refused, upload size and
decompression-bomb limits, masks composited as ComfyUI does."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from dummy_nodes import NODES
from PIL import Image
from studio_helpers import run

from ipx2p_nodes.host import get_host, set_host
from ipx2p_standalone.studio import StudioServer
from ipx2p_standalone.studio.app import exposure_warning
from ipx2p_standalone.studio.security import origin_problem, safe_filename

SECRET = b"top secret"


@pytest.fixture()
def area(tmp_path):
    """Folders for one server, and secrets beside them that no request may read or overwrite."""
    root = tmp_path / "studio"
    d = {k: root / k for k in ("models", "input", "output", "user", "temp")}
    for p in d.values():
        p.mkdir(parents=True)
    (root / "secret.txt").write_bytes(SECRET)
    (tmp_path / "secret.txt").write_bytes(SECRET)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(png_bytes((4, 4)))
    (outside / "secret.json").write_bytes(SECRET)
    # symlinks that lead out of each folder
    os.symlink(outside / "secret.png", d["output"] / "link.png")
    os.symlink(outside, d["output"] / "linkdir")
    os.symlink(outside, d["input"] / "linkdir")
    (d["user"] / "default").mkdir()
    os.symlink(outside / "secret.json", d["user"] / "default" / "link.json")
    os.symlink(outside, d["user"] / "default" / "linkdir")
    (d["output"] / "fine.png").write_bytes(png_bytes((8, 6), alpha=True))
    d["outside"] = outside
    d["root"] = root
    return d


def png_bytes(size, alpha=False, color=(200, 30, 30)):
    img = Image.new("RGBA" if alpha else "RGB", size, color + ((128,) if alpha else ()))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def server(area, **kw):
    return StudioServer(models_dir=area["models"], input_dir=area["input"], output_dir=area["output"],
                        user_dir=area["user"], temp_dir=area["temp"], device="cpu", node_classes=NODES, **kw)


@pytest.fixture()
def studio(area):
    previous = get_host()
    with server(area) as s:
        yield s
    set_host(previous)


def files_outside(area) -> set[str]:
    return {str(p.relative_to(area["root"].parent)) for p in area["root"].parent.rglob("*")
            if p.is_file() and not p.is_relative_to(area["root"])}


# ---------------------------------------------------------------------------------------------- pure checks


def test_safe_filename_accepts_plain_file_names_only():
    assert [safe_filename(n) for n in ("a.png", "../a.png", "a/b.png", "a\\b.png", "..", "", "/a.png",
                                       "..%2Fa.png", "%2e%2e", "100%.png")] == \
        ["a.png", None, None, None, None, None, None, None, None, "100%.png"]


@pytest.mark.parametrize("host,origin,loopback_only,refused", [
    ("127.0.0.1:8188", None, True, False),
    ("127.0.0.1:8188", "http://127.0.0.1:8188", True, False),
    ("localhost:8188", "http://localhost:8188", True, False),
    ("127.0.0.1:8188", "http://evil.example", True, True),
    ("127.0.0.1:8188", "http://127.0.0.1:9999", True, True),
    ("127.0.0.1:8188", "http://127.0.0.1", True, False),  # as ComfyUI: a port on one side only is not compared
    ("127.0.0.1:8188", "null", True, True),
    ("evil.example:8188", "http://evil.example:8188", True, True),  # DNS rebinding onto a loopback-only server
    ("evil.example:8188", None, True, True),
    ("192.168.1.5:8188", "http://192.168.1.5:8188", False, False),
    ("192.168.1.5:8188", "http://evil.example", False, True),
    ("[::1]:8188", "http://[::1]:8188", True, False),
])
def test_origin_rules(host, origin, loopback_only, refused):
    assert (origin_problem(host, origin, loopback_only) is not None) == refused


def test_binding_elsewhere_warns():
    assert exposure_warning("127.0.0.1") is None and exposure_warning("localhost") is None
    assert exposure_warning("::1") is None
    assert "WARNING" in exposure_warning("0.0.0.0") and "no login" in exposure_warning("192.168.1.5")


# ---------------------------------------------------------------------------------------------- over HTTP


VIEW_ATTACKS = [
    {"filename": "../secret.txt", "type": "output"},
    {"filename": "../../secret.txt", "type": "output"},
    {"filename": "..\\secret.txt", "type": "output"},
    {"filename": "..%2Fsecret.txt", "type": "output"},
    {"filename": "/etc/passwd", "type": "output"},
    {"filename": "secret.txt", "type": "output", "subfolder": ".."},
    {"filename": "secret.txt", "type": "output", "subfolder": "..\\.."},
    {"filename": "secret.txt", "type": "output", "subfolder": "/"},
    {"filename": "passwd", "type": "output", "subfolder": "/etc"},
    {"filename": "../secret.txt [output]"},
    {"filename": "link.png", "type": "output"},
    {"filename": "secret.png", "type": "output", "subfolder": "linkdir"},
    {"filename": "secret.png", "type": "input", "subfolder": "linkdir"},
    {"filename": "fine.png", "type": "../output"},
    {"filename": "fine.png", "type": "models"},
]


def test_view_serves_only_inside_the_folders(studio):
    async def scenario():
        async with aiohttp.ClientSession() as s:
            results = []
            for params in VIEW_ATTACKS:
                async with s.get(studio.url + "/api/view", params=params) as r:
                    results.append((params, r.status, await r.read()))
            # the same, percent-encoded by hand in the raw URL (no client re-encoding)
            for raw in ("filename=..%2Fsecret.txt&type=output", "filename=%2E%2E%2Fsecret.txt&type=output",
                        "filename=%2e%2e%5csecret.txt&type=output", "filename=secret.txt&subfolder=%2E%2E",
                        "filename=%2Fetc%2Fpasswd"):
                async with s.get(aiohttp.client.URL(studio.url + "/api/view?" + raw, encoded=True)) as r:
                    results.append((raw, r.status, await r.read()))
            async with s.get(studio.url + "/api/view", params={"filename": "fine.png", "type": "output"}) as r:
                ok = (r.status, r.content_type, r.headers.get("X-Content-Type-Options"))
            async with s.get(studio.url + "/api/view", params={"filename": "fine.png", "channel": "a"}) as r:
                alpha = Image.open(io.BytesIO(await r.read()))
            async with s.get(studio.url + "/api/view", params={"filename": "fine.png", "channel": "rgb"}) as r:
                rgb = Image.open(io.BytesIO(await r.read()))
            async with s.get(studio.url + "/api/view", params={"filename": "fine.png", "preview": "jpeg;50"}) as r:
                jpeg = (r.status, r.content_type)
            async with s.get(studio.url + "/api/view", params={"filename": "fine.png [output]",
                                                               "preview": "webp;90", "channel": "a"}) as r:
                webp = (r.status, r.content_type)
            return results, ok, alpha, rgb, jpeg, webp

    results, ok, alpha, rgb, jpeg, webp = run(scenario())
    for params, status, body in results:
        assert status in (400, 403, 404), (params, status)
        assert SECRET not in body and b"root:" not in body and not body.startswith(b"\x89PNG"), params
    assert ok == (200, "image/png", "nosniff")
    assert alpha.mode == "RGBA" and alpha.getpixel((0, 0)) == (0, 0, 0, 128)
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (200, 30, 30)
    assert jpeg == (200, "image/jpeg") and webp == (200, "image/webp")


UPLOAD_NAMES = ["../evil.png", "..\\evil.png", "/tmp/evil.png", "sub/../../evil.png", "..", "", "a/b.png",
                "..%2Fevil.png"]
UPLOAD_SUBFOLDERS = ["..", "../..", "/tmp", "..\\..", "linkdir", "a/../../..", "C:\\temp"]


def quoted(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"')


def test_upload_stays_inside_the_folders(studio, area):
    before = files_outside(area)

    async def upload(s, name, subfolder="", kind="input", data=None):
        # built by hand: aiohttp's FormData would percent-encode the file name, a browser sends it as typed
        boundary = "----studio-test-boundary"
        parts = [
            (f'Content-Disposition: form-data; name="image"; filename="{quoted(name)}"\r\n'
             'Content-Type: image/png\r\n\r\n').encode() + (data or png_bytes((4, 4))),
            b'Content-Disposition: form-data; name="type"\r\n\r\n' + kind.encode(),
            b'Content-Disposition: form-data; name="subfolder"\r\n\r\n' + subfolder.encode(),
        ]
        body = b"".join(f"--{boundary}\r\n".encode() + p + b"\r\n" for p in parts) + f"--{boundary}--\r\n".encode()
        async with s.post(studio.url + "/api/upload/image", data=body,
                          headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}) as r:
            return r.status, await r.text()

    async def scenario():
        async with aiohttp.ClientSession() as s:
            out = [(n, *await upload(s, n)) for n in UPLOAD_NAMES if n]
            out += [(sub, *await upload(s, "evil.png", sub)) for sub in UPLOAD_SUBFOLDERS]
            out.append(("type", *await upload(s, "evil.png", kind="../input")))
            good = await upload(s, "photo.png", "clip space")
            dup = await upload(s, "photo.png", "clip space")  # same bytes: reused
            other = await upload(s, "photo.png", "clip space", data=png_bytes((5, 5)))  # renamed
            return out, good, dup, other

    out, good, dup, other = run(scenario())
    for what, status, text in out:
        assert status in (400, 403), (what, status, text)
    assert files_outside(area) == before
    assert not (area["outside"] / "evil.png").exists()
    assert good[0] == 200 and json.loads(good[1]) == {"name": "photo.png", "subfolder": "clip space", "type": "input"}
    assert json.loads(dup[1])["name"] == "photo.png"
    assert json.loads(other[1])["name"] == "photo (1).png"
    assert sorted(p.name for p in (area["input"] / "clip space").iterdir()) == ["photo (1).png", "photo.png"]


def test_userdata_stays_inside_the_user_folder(studio, area):
    before = files_outside(area)
    attacks = ["..%2F..%2Fsecret.txt", "..%2F..%2F..%2Fsecret.txt", "%2E%2E%2F%2E%2E%2Fsecret.txt",
               "%252E%252E%252F%252E%252E%252Fsecret.txt", "..%5C..%5Csecret.txt", "%2Fetc%2Fpasswd",
               "link.json", "linkdir%2Fsecret.json", "workflows%2F..%2F..%2F..%2Fsecret.txt", "C%3A%5Cx.json"]

    async def scenario():
        async with aiohttp.ClientSession() as s:
            out = []
            for name in attacks:
                url = aiohttp.client.URL(studio.url + "/api/userdata/" + name, encoded=True)
                async with s.get(url) as r:
                    out.append(("get " + name, r.status, await r.read()))
                async with s.post(url, data=b"pwned") as r:
                    out.append(("post " + name, r.status, await r.read()))
                async with s.delete(url) as r:
                    out.append(("delete " + name, r.status, b""))
                move = aiohttp.client.URL(studio.url + "/api/userdata/ok.json/move/" + name, encoded=True)
                async with s.post(move) as r:
                    out.append(("move to " + name, r.status, b""))
            for d in ("..", "../..", "/etc", "linkdir", "..\\.."):
                async with s.get(studio.url + "/api/userdata", params={"dir": d}) as r:
                    out.append(("list " + d, r.status, await r.read()))
            async with s.get(studio.url + "/api/v2/userdata", params={"path": ".."}) as r:
                out.append(("v2 ..", r.status, await r.read()))
            # a listing of the user's own folder leaves out the links that lead outside
            async with s.get(studio.url + "/api/userdata", params={"dir": ".", "recurse": "true"}) as r:
                listing = await r.json()
            return out, listing

    (area["user"] / "default" / "ok.json").write_text("{}")
    out, listing = run(scenario())
    for what, status, body in out:
        assert status in (400, 403, 404), (what, status)
        assert SECRET not in body and b"root:" not in body, what
    assert files_outside(area) == before
    assert (area["outside"] / "secret.json").read_bytes() == SECRET
    assert (area["root"] / "secret.txt").read_bytes() == SECRET
    assert (area["user"] / "default" / "ok.json").exists()
    assert listing == ["ok.json"]


def test_cross_origin_and_rebinding_requests_are_refused(studio):
    port = studio.port

    async def scenario():
        async with aiohttp.ClientSession() as s:
            out = {}
            body = {"prompt": {"1": {"class_type": "Number", "inputs": {"value": 1}}}}
            for name, headers in {
                "evil origin": {"Origin": "http://evil.example"},
                "other port": {"Origin": f"http://127.0.0.1:{port + 1}"},
                "null origin": {"Origin": "null"},
                "rebinding": {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"},
            }.items():
                async with s.post(studio.url + "/api/prompt", json=body, headers=headers) as r:
                    out[name] = r.status
                async with s.post(studio.url + "/api/userdata/x.json", data=b"{}", headers=headers) as r:
                    out[name + " userdata"] = r.status
            try:
                await s.ws_connect(studio.url.replace("http", "ws") + "/ws", headers={"Origin": "http://evil.example"})
                out["ws"] = "connected"
            except aiohttp.WSServerHandshakeError as exc:
                out["ws"] = exc.status
            async with s.post(studio.url + "/api/settings", json={"a": 1},
                              headers={"Origin": f"http://127.0.0.1:{port}"}) as r:
                out["same origin"] = r.status
            async with s.get(studio.url.replace("127.0.0.1", "localhost") + "/api/settings") as r:
                out["localhost"] = (r.status, await r.json())
            return out

    out = run(scenario())
    for key in ("evil origin", "other port", "null origin", "rebinding"):
        assert out[key] == 403 and out[key + " userdata"] == 403, key
    assert out["ws"] == 403
    assert out["same origin"] == 200 and out["localhost"] == (200, {"a": 1})


def giant_png_header(width, height) -> bytes:
    """A tiny file that claims to be a width×height PNG: refused from its header, before any decoding."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


def test_upload_limits(area):
    previous = get_host()
    with server(area, max_upload_mb=0.05, max_image_pixels=50_000) as studio:
        async def upload(s, data, name="x.png"):
            form = aiohttp.FormData()
            form.add_field("image", data, filename=name, content_type="image/png")
            async with s.post(studio.url + "/api/upload/image", data=form) as r:
                return r.status, await r.text()

        async def scenario():
            async with aiohttp.ClientSession() as s:
                noise = np.random.RandomState(0).randint(0, 255, (200, 200, 3), dtype=np.uint8)
                buf = io.BytesIO()
                Image.fromarray(noise).save(buf, format="PNG")  # ~120 kB: over 0.05 MB
                out = {"too big": await upload(s, buf.getvalue())}
                out["bomb"] = await upload(s, giant_png_header(100_000, 100_000))
                out["many pixels"] = await upload(s, png_bytes((300, 300)))  # 90,000 > 50,000
                out["not an image"] = await upload(s, b"hello, not an image", "x.png")
                out["fine"] = await upload(s, png_bytes((100, 100)))
                async with s.get(studio.url + "/api/features") as r:
                    out["features"] = await r.json()
                async with s.get(studio.url + "/api/queue") as r:
                    out["alive"] = r.status
                return out

        out = run(scenario())
    set_host(previous)
    assert out["too big"][0] == 413
    assert out["bomb"][0] == 413 and "pixels" in out["bomb"][1]
    assert out["many pixels"][0] == 413
    assert out["not an image"][0] == 400 and "not a readable image" in out["not an image"][1]
    assert out["fine"][0] == 200
    assert out["features"]["max_upload_size"] == int(0.05 * 1024 * 1024)
    assert out["alive"] == 200
    examples = os.listdir(Path(__file__).resolve().parents[1] / "example_workflows" / "input")
    assert sorted(p.name for p in area["input"].iterdir() if p.is_file()) == sorted([*examples, "x.png"])


def test_default_limit_refuses_a_decompression_bomb(studio, area):
    async def scenario():
        async with aiohttp.ClientSession() as s:
            form = aiohttp.FormData()
            form.add_field("image", giant_png_header(50_000, 50_000), filename="bomb.png", content_type="image/png")
            async with s.post(studio.url + "/api/upload/image", data=form) as r:
                return r.status

    assert run(scenario()) == 413
    assert not (area["input"] / "bomb.png").exists()


def test_upload_mask_composites_alpha_onto_the_original(studio, area):
    original = Image.new("RGB", (16, 12), (10, 200, 30))
    original_buf = io.BytesIO()
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("workflow", '{"nodes": []}')
    original.save(original_buf, format="PNG", pnginfo=info)
    (area["input"] / "orig.png").write_bytes(original_buf.getvalue())
    mask = Image.new("RGBA", (16, 12), (0, 0, 0, 255))
    for x in range(8):
        for y in range(12):
            mask.putpixel((x, y), (0, 0, 0, 0))
    mask_buf = io.BytesIO()
    mask.save(mask_buf, format="PNG")

    async def scenario():
        async with aiohttp.ClientSession() as s:
            out = {}
            for name, ref in {
                "ok": {"filename": "orig.png", "subfolder": "", "type": "input"},
                "escape": {"filename": "../secret.txt", "subfolder": "", "type": "input"},
                "escape sub": {"filename": "secret.png", "subfolder": "linkdir", "type": "input"},
                "missing": {"filename": "nope.png", "type": "input"},
                "broken": "not json",
            }.items():
                form = aiohttp.FormData()
                form.add_field("image", mask_buf.getvalue(), filename=f"clipspace-mask-{len(out)}.png",
                               content_type="image/png")
                form.add_field("type", "input")
                form.add_field("subfolder", "clipspace")
                form.add_field("original_ref", ref if isinstance(ref, str) else json.dumps(ref))
                async with s.post(studio.url + "/api/upload/mask", data=form) as r:
                    out[name] = (r.status, await r.text())
            return out

    out = run(scenario())
    assert out["ok"][0] == 200 and json.loads(out["ok"][1]) == {"name": "clipspace-mask-0.png",
                                                               "subfolder": "clipspace", "type": "input"}
    saved = Image.open(area["input"] / "clipspace" / "clipspace-mask-0.png")
    assert saved.mode == "RGBA" and saved.size == (16, 12)
    assert saved.getpixel((2, 2)) == (10, 200, 30, 0) and saved.getpixel((12, 2)) == (10, 200, 30, 255)
    assert saved.text["workflow"] == '{"nodes": []}'
    for key in ("escape", "escape sub", "missing", "broken"):
        assert out[key][0] in (400, 403, 404), key
    assert sorted(p.name for p in (area["input"] / "clipspace").iterdir()) == ["clipspace-mask-0.png"]
