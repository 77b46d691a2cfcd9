"""Every API route the pinned frontend bundle (comfyui-frontend-package 1.27.10) calls is served by the studio, or is
in the studio's DELIBERATELY_UNSUPPORTED list (which the README shows, with reasons).

Routes are read from the bundle's JavaScript: calls of ``fetchApi``, ``apiURL``, ``fileURL`` and ``internalURL``
(their first argument: a string or template literal, or a known variable), ``"/api/..."`` string literals, literal
``fetch("/...")`` calls, the ComfyUI-Manager client's calls and the websocket URL. A call whose argument is a
variable must be in KNOWN_DYNAMIC below, so a new kind of call in another frontend version fails this test instead of
slipping through.
"""

from __future__ import annotations

import asyncio
import fnmatch
import importlib.resources
import re
from importlib import metadata
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_urldispatcher import StaticResource
from dummy_nodes import NODES

from ipx2p_nodes.host import get_host, set_host
from ipx2p_standalone.studio import FRONTEND_VERSION, PACK_NAME, create_app
from ipx2p_standalone.studio.routes import DELIBERATELY_UNSUPPORTED

STATIC = Path(str(importlib.resources.files("comfyui_frontend_package") / "static"))
README = Path(__file__).resolve().parents[1] / "README.md"

PREFIX = {"fetchApi": "/api", "apiURL": "/api", "internalURL": "/internal", "fileURL": ""}
CALL = re.compile(r"(?<![\w$])(fetchApi|apiURL|fileURL|internalURL)\(")
# Values for template placeholders (what the frontend substitutes); anything else becomes "x".
SAMPLES = {
    "encodeURIComponent(file)": "workflows%2Fa.json", "encodeURIComponent(source)": "workflows%2Fa.json",
    "encodeURIComponent(dest)": "workflows%2Fb.json", "encodeURIComponent(id2)": "Comfy.Locale",
    "folder": "checkpoints", "sourceModule": PACK_NAME, "template2.name": "ipx2p_sd15_staged.jpg",
    "id2": "ipx2p_sd15_staged", "path_index": "0", "encodedFilename": "model.webp",
}
# Calls whose route is a variable: the source text of the argument → the (method, path)s it can be.
KNOWN_DYNAMIC = {
    ("fetchApi", '"/" + type'): [("POST", "/api/queue"), ("POST", "/api/history"), ("POST", "/api/interrupt")],
    ("fetchApi", "url"): [("GET", "/api/assets")],  # createAssetService: `${ASSETS_ENDPOINT}?include_tags=...`
    ("apiURL", "route"): [],  # inside fetchApi itself
    ("fileURL", "ext"): [("GET", f"/extensions/{PACK_NAME}/example.js")],  # each URL /extensions listed
    ("fileURL", "localePath"): [("GET", f"/extensions/{PACK_NAME}/docs/IPX2PSampler/en.md")],
    ("fileURL", "fallbackPath"): [("GET", f"/extensions/{PACK_NAME}/docs/IPX2PSampler.md")],
    ("fileURL", "mdUrl"): [("GET", "/docs/LoadImage/en.md")],
    ("apiURL", "getResourceURL("): [("GET", "/api/view")],  # "/view?filename=...&type=...&subfolder=..."
    ("apiURL", "Load3dUtils.getResourceURL("): [("GET", "/api/view")],
}


def _skip_string(src: str, j: int) -> int:
    quote = src[j]
    j += 1
    while src[j] != quote:
        j += 2 if src[j] == "\\" else 1
    return j


def _skip_template(src: str, j: int) -> int:
    """From an opening backquote to its closing one (placeholders may nest anything)."""
    j += 1
    while src[j] != "`":
        if src[j] == "\\":
            j += 2
            continue
        if src.startswith("${", j):
            _, j = _group(src, j + 2)
            continue
        j += 1
    return j


def _group(src: str, i: int) -> tuple[str, int]:
    """The text from ``i`` up to the bracket that closes an already opened one, and the index after it."""
    depth, j = 0, i
    while True:
        c = src[j]
        if c in "\"'":
            j = _skip_string(src, j)
        elif c == "`":
            j = _skip_template(src, j)
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                return src[i:j], j + 1
            depth -= 1
        j += 1


def _first_argument(args: str) -> str:
    depth, j = 0, 0
    while j < len(args):
        c = args[j]
        if c in "\"'":
            j = _skip_string(args, j)
        elif c == "`":
            j = _skip_template(args, j)
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            return args[:j].strip()
        j += 1
    return args.strip()


def _literal_path(arg: str) -> str | None:
    """The path a string/template literal (or ``"literal" + rest``) stands for, placeholders filled, no query."""
    if not arg or arg[0] not in "\"'`":
        return None
    end = _skip_template(arg, 0) if arg[0] == "`" else _skip_string(arg, 0)
    body = arg[1:end]
    if arg[0] == "`":
        out, j = [], 0
        while j < len(body):
            if body.startswith("${", j):
                expr, j = _group(body, j + 2)
                out.append(SAMPLES.get(expr.strip(), "x"))
            else:
                out.append(body[j])
                j += 1
        body = "".join(out)
    return body.split("?")[0]


def _method(args: str) -> str:
    m = re.search(r"""method:\s*["'](\w+)["']""", args)
    return m.group(1).upper() if m else "GET"


def bundle_routes() -> tuple[set[tuple[str, str]], list[tuple[str, str]]]:
    """(method, path) of every route the bundle calls, and the dynamic call sites not in KNOWN_DYNAMIC."""
    routes: set[tuple[str, str]] = set()
    unknown: list[tuple[str, str]] = []
    for js in sorted((STATIC / "assets").glob("*.js")):
        src = js.read_text(encoding="utf-8")
        for m in CALL.finditer(src):
            args, end = _group(src, m.end())
            if src[end:end + 8].lstrip().startswith("{"):
                continue  # the method's own definition
            kind, first = m.group(1), _first_argument(args)
            key = next((k for k in KNOWN_DYNAMIC if k[0] == kind and (first == k[1] or first.startswith(k[1]))),
                       None)
            path = _literal_path(first) if key is None else None
            if path is not None:
                if path.endswith("/"):
                    continue  # a base URL (the Manager client's), handled below
                method = "PATCH" if src[m.start() - 40:m.start()].rstrip().endswith("axios.patch(this.") else \
                    _method(args)
                routes.add((method, PREFIX[kind] + path))
                continue
            if key is None:
                unknown.append((kind, first[:80]))
            else:
                routes.update(KNOWN_DYNAMIC[key])
        for lit in re.findall(r"""[`"'](/api/[^`"'\s?]*)""", src):  # URLs built by hand
            routes.add(("GET", re.sub(r"\$\{([^}]*)\}", lambda g: SAMPLES.get(g.group(1), "x"), lit)))
        for method, path in re.findall(r"""managerApiClient\.(get|post)\(\s*["']([^"']+)""", src):
            routes.add((method.upper(), "/api/v2/" + path))
        for lit in re.findall(r"""\bfetch\(\s*[`"'](/[^`"'?]*)""", src):
            routes.add(("GET", lit))
        if "/ws${" in src or '/ws"' in src:
            routes.add(("GET", "/ws"))
    return routes, unknown


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    previous = get_host()
    root = tmp_path_factory.mktemp("routes")
    web_dir = root / "web"
    web_dir.mkdir()
    (web_dir / "example.js").write_text("export {};\n")
    application = create_app(models_dir=root / "models", input_dir=root / "in", output_dir=root / "out",
                             user_dir=root / "user", temp_dir=root / "temp", node_classes=NODES, web_dir=web_dir)
    yield application
    set_host(previous)


def served(app, method: str, path: str) -> bool:
    """Whether a route other than the frontend's static files answers ``method path``."""
    async def resolve():
        request = make_mocked_request(method, path, app=app)
        return await app.router.resolve(request)

    match = asyncio.run(resolve())
    if match.http_exception is not None:
        return False
    resource = match.route.resource
    frontend_files = isinstance(resource, StaticResource) and resource.canonical in ("", "/")
    return not frontend_files


def test_pinned_frontend_version():
    assert metadata.version("comfyui-frontend-package") == FRONTEND_VERSION


def test_every_route_the_bundle_calls_is_served_or_deliberately_unsupported(app):
    routes, unknown = bundle_routes()
    assert not unknown, f"calls with a variable route this test does not know (add them to KNOWN_DYNAMIC): {unknown}"
    paths = {p for _, p in routes}
    for expected in ("/api/prompt", "/api/object_info", "/api/userdata/workflows%2Fa.json", "/api/view",
                     "/internal/logs/subscribe", "/ws", "/api/interrupt", "/templates/index.json",
                     f"/api/workflow_templates/{PACK_NAME}/ipx2p_sd15_staged.json"):
        assert expected in paths, expected  # the extraction itself works
    assert len(routes) >= 45

    missing, used_exceptions = [], set()
    for method, path in sorted(routes):
        if served(app, method, path):
            # ComfyUI serves each API route with and without /api; so does the studio
            if path.startswith("/api/"):
                assert served(app, method, path[4:]), (method, path[4:])
            continue
        patterns = [p for p in DELIBERATELY_UNSUPPORTED if path == p or fnmatch.fnmatchcase(path, p)]
        if patterns:
            used_exceptions.update(patterns)
        else:
            missing.append((method, path))
    assert not missing, f"routes the frontend calls that the studio does not serve: {missing}"
    assert used_exceptions == set(DELIBERATELY_UNSUPPORTED), \
        f"stale DELIBERATELY_UNSUPPORTED entries: {set(DELIBERATELY_UNSUPPORTED) - used_exceptions}"


def test_readme_lists_the_unsupported_routes():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Studio"):]
    for pattern in DELIBERATELY_UNSUPPORTED:
        assert f"`{pattern}`" in section, pattern
