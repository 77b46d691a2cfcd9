"""Every API route the pinned frontend bundle (comfyui-frontend-package 1.58.1) calls is served by the studio, or is
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
# The 1.58 bundle is minified: placeholders are one-letter names, so a placeholder becomes "x" unless the whole
# template is listed here with the sample path it stands for.
SAMPLE_PATHS = {
    "/templates/${t}": "/templates/index.json",  # `index.${locale}.json` for other languages than English
    "/workflow_templates/${t}/${e.name}": f"/workflow_templates/{PACK_NAME}/ipx2p_sd15_staged.jpg",
    "/workflow_templates/${t}/${e}.json": f"/workflow_templates/{PACK_NAME}/ipx2p_sd15_staged.json",
}
# Calls whose route is a variable, found by text next to the call (the 400 characters before it: minified names
# change, function names and literals do not) → the (method, path)s it can be. A dynamic call matching none of these
# fails the test, so a new kind of call in another frontend version cannot slip through.
KNOWN_DYNAMIC = {
    ("fetchApi", "t.pathname===r;return{url:i?"): [("GET", "/api/view")],  # the agent panel downloads a /view URL
    ("apiURL", "t.pathname===r;return{url:i?"): [("GET", "/api/view")],
    ("apiURL", "function resolveAgentAssetUrl(e){"): [("GET", "/api/agent/x")],  # the cloud agent's asset URLs
    ("fileURL", "async tryFetchMarkdown(e){"): [("GET", f"/extensions/{PACK_NAME}/docs/IPX2PSampler.md"),
                                               ("GET", "/docs/LoadImage/en.md")],
    ("fileURL", "async function importCustomExtension(e){"): [("GET", f"/extensions/{PACK_NAME}/example.js")],
    ("apiURL", "function resolveThumbnailUrl(e){"): [],  # an absolute URL, or one of the routes below
    ("apiURL", "createModelUpdateHandler("): [("GET", "/api/view")],  # getResourceURL: "/view?filename=..."
    ("apiURL", "async function handleModelUpload("): [("GET", "/api/view")],
    ("apiURL", "hdri?.enabled??"): [("GET", "/api/view")],
    ("apiURL", "dleHDRIFileUpdate=async"): [("GET", "/api/view")],
    ("apiURL", "`load3d.uploadingModel`"): [("GET", "/api/view")],
    ("apiURL", "handleModelDrop=async"): [("GET", "/api/view")],
    ("apiURL", "getResourceURL(...splitFilePath("): [("GET", "/api/view")],
    ("apiURL", "a=getResourceURL(i.subfolder"): [("GET", "/api/view")],
    ("fetchApi", "async function request(e,t,n,r){"): [("GET", "/api/agent/x")],  # the cloud agent's client
    ("apiURL", "this.authProvider.fetch(this."): [],  # inside fetchApi itself
    ("fetchApi", "async storeUserData(e,t,"): [("POST", "/api/userdata/x")],
    ("fetchApi", "async _postItem(e,t){"): [("POST", "/api/queue"), ("POST", "/api/history"),
                                           ("POST", "/api/interrupt")],  # "/" + "queue" | "history" | "interrupt"
    ("fetchApi", "async getGlobalSubgraphData(e){"): [("GET", "/api/global_subgraphs/x")],
    ("apiURL", "function resolvePreviewUrl(t){"): [("GET", "/api/assets/x")],
    ("fetchApi", "let f=`${B}?${d.toString()}`"): [("GET", "/api/assets")],
    ("fetchApi", "async function seedModelAssets(){"): [("POST", "/api/assets/x")],
    ("fetchApi", "async function uploadAssetFromUrl(e){"): [("POST", "/api/assets")],
    ("fetchApi", "n.append(`file`,t,e.name)"): [("POST", "/api/assets")],
    ("fetchApi", "async function uploadAssetAsync(e){"): [("POST", "/api/assets/x")],
    ("fetchApi", "async function createAssetExport(e){"): [("POST", "/api/assets/exports")],
    ("fetchApi", "async function fetchModelData(e,t,n){"): [("GET", "/api/view")],  # "/" + "api/view?..."
    ("apiURL", "function resolveExportDownloadUrl(e){"): [("GET", "/api/assets/exports/x")],
    ("fetchApi", "async function decodeAudioSource(e){"): [("GET", "/api/view")],
}
# Functions that the api module hands fetchApi to (``fn(this.fetchApi.bind(this), ...)``) call it as their first
# parameter: the literals inside them (and in the functions they pass it on to) are routes too.
CONCAT = re.compile(r"""^(`[^`$?]*`|"[^"?]*"|'[^'?]*')\s*\+""")  # "/" + name (not "/view?" + query)
CONST_PATH = re.compile(r"[,;\s]([\w$]+)=`(/[a-z][^`$]*)`")
BOUND_FETCH = re.compile(r"(?<![\w$])(\w+)\(this\.fetchApi\.bind\(this\)")


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


def _literal_path(arg: str, consts: dict | None = None) -> str | None:
    """The path a string/template literal (or ``"literal" + rest``) stands for, placeholders filled, no query.

    A placeholder naming a constant path of the same chunk (``B=`/assets```) becomes that path; any other, "x".
    """
    if not arg or arg[0] not in "\"'`":
        return None
    end = _skip_template(arg, 0) if arg[0] == "`" else _skip_string(arg, 0)
    body = arg[1:end]
    if body in SAMPLE_PATHS:
        return SAMPLE_PATHS[body]
    if arg[0] == "`":
        out, j = [], 0
        while j < len(body):
            if body.startswith("${", j):
                expr, j = _group(body, j + 2)
                out.append((consts or {}).get(expr.strip(), "x"))
            else:
                out.append(body[j])
                j += 1
        body = "".join(out)
    return body.split("?")[0]


def _method(args: str) -> str:
    m = re.search(r"""method:\s*["'`](\w+)["'`]""", args)
    return m.group(1).upper() if m else "GET"


def _bound_fetch_routes(src: str) -> set[tuple[str, str]]:
    """Routes called through a fetchApi handed to a helper function (the jobs API's fetchJobsRaw and friends)."""
    routes: set[tuple[str, str]] = set()
    todo, seen = set(BOUND_FETCH.findall(src)), set()
    while todo:
        name = todo.pop()
        seen.add(name)
        m = re.search(r"function " + re.escape(name) + r"\((\w+)", src)
        if m is None:
            continue
        param = m.group(1)
        body_start = src.index("{", m.end())
        body, _ = _group(src, body_start + 1)
        for lit in re.finditer(r"`/[a-z]", body):
            path = _literal_path(body[lit.start():])
            method = "POST" if re.search(r"method:\s*`POST`", body) and "cancel" in path else "GET"
            routes.add((method, "/api" + path))
        todo |= set(re.findall(r"(?<![\w$.])(\w+)\(" + re.escape(param) + r"[,)]", body)) - seen
    return routes


def _is_third_party(js: Path) -> bool:
    """Vendor chunks (PostHog, Datadog, ...) build URLs of their own services, not of the ComfyUI server."""
    return js.name.startswith("vendor-")


def bundle_routes() -> tuple[set[tuple[str, str]], list[tuple[str, str]]]:
    """(method, path) of every route the bundle calls, and the dynamic call sites not in KNOWN_DYNAMIC."""
    routes: set[tuple[str, str]] = set()
    unknown: list[tuple[str, str]] = []
    for js in sorted((STATIC / "assets").glob("*.js")):
        src = js.read_text(encoding="utf-8")
        consts = dict(CONST_PATH.findall(src))
        for m in CALL.finditer(src):
            args, end = _group(src, m.end())
            if src[end:end + 8].lstrip().startswith("{"):
                continue  # the method's own definition
            kind, first = m.group(1), _first_argument(args)
            path = _literal_path(first, consts)
            if path is not None and (path and not path.startswith("/") or CONCAT.match(first)):
                path = None  # built from a variable: a known dynamic call or an unknown one
            if path is not None:
                if path == "" or path.endswith("/"):
                    continue  # a base URL, or a prefix tested with startsWith
                method = "PATCH" if ".patch(" in src[end:end + 40] else _method(args)
                routes.add((method, PREFIX[kind] + path))
                continue
            near = src[max(0, m.start() - 400):m.start()] + first
            key = next((k for k in KNOWN_DYNAMIC if k[0] == kind and k[1] in near), None)
            if key is None:
                unknown.append((kind, first[:80]))
            else:
                routes.update(KNOWN_DYNAMIC[key])
        routes |= _bound_fetch_routes(src)
        if not _is_third_party(js):
            # URLs built by hand; a literal compared with or cut from another URL is not a call
            for m in re.finditer(r"""[`"'](/api/[^`"'\s?]*)""", src):
                before = src[max(0, m.start() - 12):m.start()]
                if re.search(r"(startsWith|replace|includes)\($|===?$", before):
                    continue
                lit = m.group(1)
                if lit.endswith("/"):
                    continue
                routes.add(("GET", re.sub(r"\$\{([^}]*)\}", "x", lit)))
        # the ComfyUI-Manager client (an axios instance with baseURL /api/v2/)
        for method, path in re.findall(r"""[\w$]\.(get|post)\(\s*["'`]((?:manager|customnode)/[^"'`?]+)""", src):
            routes.add((method.upper(), "/api/v2/" + path))
        for lit in re.findall(r"""\bfetch\(\s*[`"'](/[^`"'?]*)""", src):
            routes.add(("GET", lit))
        if "/ws${" in src or '/ws"' in src or "/ws`" in src:
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
    for expected in ("/api/prompt", "/api/object_info", "/api/userdata/x", "/api/view", "/api/jobs", "/api/jobs/x",
                     "/api/jobs/cancel", "/api/global_subgraphs", "/api/node_replacements", "/api/features",
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
