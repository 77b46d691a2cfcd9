"""Workflow formats: node input specs, UI-format (litegraph) → API-format conversion, and ``--set`` overrides.

ComfyUI runs *API-format* prompts: ``{"<id>": {"class_type": ..., "inputs": {name: value | [src_id, slot]}}}``.
What users save and share is the *UI format* the frontend writes (``nodes`` / ``links`` / ``widgets_values``).
The frontend turns one into the other before queueing; :func:`ui_to_api` does the same here, following the
frontend's rules:

* ``widgets_values`` are positional, in the order of the node's widget inputs (required, then optional; inputs of
  widget types INT, FLOAT, STRING, BOOLEAN and COMBO without ``forceInput``). A widget converted to an input keeps
  its slot; a link into it replaces the value.
* Some widgets store one more value after their own: ``control_after_generate`` (INT inputs with the option, and
  INT inputs named ``seed``/``noise_seed`` when the option is not given; FLOAT and COMBO with the option, COMBO also a
  ``control_filter_list`` value) and upload buttons (``image_upload`` …). These extra values never reach the prompt.
* Virtual nodes are not sent: ``Note``/``MarkdownNote`` are dropped, ``Reroute`` passes its input through,
  ``PrimitiveNode`` writes its value into the widgets it feeds.
* Muted nodes (mode 2) are dropped, and links from them removed. Bypassed nodes (mode 4) are dropped and each link
  from one of their outputs is re-wired to the input of the same slot (or else the first input) of a matching type.
* Subgraphs (``definitions.subgraphs``) are expanded: a node inside one runs as ``"<subgraph node id>:<inner id>"``,
  links cross the subgraph boundary, widgets promoted to the subgraph node give their values (see
  :mod:`.execution_graph`, a port of the frontend 1.58.1 rules).
* Legacy group nodes (``extra.groupNodes``, types ``workflow>NAME``) are first turned into subgraphs, as the
  frontend 1.58.1 migrates them when it loads a workflow (:mod:`.group_nodes`).
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from .execution_graph import ExecutionGraph, GraphError, Value
from .group_nodes import GroupNodeError, has_group_nodes, migrate_group_nodes

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
CONTROL_MODES = ("fixed", "increment", "decrement", "randomize", "increment-wrap")
UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload", "3d_upload")


class WorkflowFormatError(ValueError):
    """A file that is not a ComfyUI workflow, or a UI workflow this converter cannot read."""


# ----------------------------------------------------------------------------------------------------------------
# Input specs
# ----------------------------------------------------------------------------------------------------------------


def input_types(cls) -> dict:
    """``cls.INPUT_TYPES()`` as a dict with required/optional/hidden sections (missing ones empty)."""
    spec = cls.INPUT_TYPES() or {}
    return {"required": dict(spec.get("required") or {}), "optional": dict(spec.get("optional") or {}),
            "hidden": dict(spec.get("hidden") or {})}


def spec_type(spec) -> Any:
    """The type part of an input spec: a type string, or the list of options of a combo."""
    if isinstance(spec, (tuple, list)) and spec:
        return list(spec[0]) if isinstance(spec[0], (list, tuple)) else spec[0]
    return spec


def spec_options(spec) -> dict:
    if isinstance(spec, (tuple, list)) and len(spec) > 1 and isinstance(spec[1], dict):
        return spec[1]
    return {}


def combo_options(spec) -> list | None:
    """The allowed values of a combo input (list form or ``("COMBO", {"options": [...]})``), else None."""
    kind = spec_type(spec)
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return list(spec_options(spec).get("options") or [])
    return None


def widget_kind(spec) -> str | None:
    """INT/FLOAT/STRING/BOOLEAN/COMBO when the input is shown as a widget, None for a socket-only input."""
    if spec_options(spec).get("forceInput"):
        return None
    if combo_options(spec) is not None:
        return "COMBO"
    kind = spec_type(spec)
    return kind if kind in WIDGET_TYPES else None


def widget_default(spec):
    opts = spec_options(spec)
    if "default" in opts:
        return opts["default"]
    kind = widget_kind(spec)
    if kind == "COMBO":
        options = combo_options(spec)
        return options[0] if options else None
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)


@dataclass(frozen=True)
class WidgetSlot:
    """One entry of a node's ``widgets_values``: an input's value, or an extra value stored after it."""

    name: str  # the input's name (for extras: the input they belong to)
    extra: str | None = None  # None, "control", "filter" or "upload"


def widget_layout(cls) -> list[WidgetSlot]:
    """The positions of ``widgets_values`` for a node class, as the frontend lays out its widgets."""
    spec = input_types(cls)
    return layout_for_specs([*spec["required"].items(), *spec["optional"].items()])


def layout_for_specs(specs) -> list[WidgetSlot]:
    """The positions of ``widgets_values`` for inputs ``[(name, spec), ...]`` in order (a node's, or a group
    node's)."""
    slots: list[WidgetSlot] = []
    for name, s in specs:
        kind = widget_kind(s)
        if kind is None:
            continue
        opts = spec_options(s)
        slots.append(WidgetSlot(name))
        control = opts.get("control_after_generate")
        if kind == "INT" and control is None:
            control = name in ("seed", "noise_seed")
        if control and kind in ("INT", "FLOAT", "COMBO"):
            slots.append(WidgetSlot(name, "control"))
            if kind == "COMBO":
                slots.append(WidgetSlot(name, "filter"))
        if any(opts.get(u) for u in UPLOAD_OPTIONS):
            slots.append(WidgetSlot(name, "upload"))
    return slots


def _looks_like_extra(slot: WidgetSlot, value) -> bool:
    if slot.extra == "control":
        return value in CONTROL_MODES
    if slot.extra == "filter":
        return isinstance(value, str)
    if slot.extra == "upload":
        return value is None or value in ("image", "video", "audio", "upload", "")
    return False


def map_widgets_values(cls, values) -> tuple[dict[str, Any], dict[str, int], dict[str, str]]:
    """``widgets_values`` → ({input: value}, {input: index in widgets_values}, {input: control mode}).

    A list maps positionally onto :func:`widget_layout`. When its length is not the full layout (older files, or
    a frontend that stored no extra value), an extra position is taken only if the value looks like one.
    Missing values get the input's default, as the frontend does when it loads an older workflow.
    """
    layout = widget_layout(cls)
    spec = input_types(cls)
    all_specs = {**spec["required"], **spec["optional"]}
    result: dict[str, Any] = {}
    index: dict[str, int] = {}
    controls: dict[str, str] = {}
    if isinstance(values, dict):  # some custom frontends store {name: value}
        for slot in layout:
            if slot.extra is None and slot.name in values:
                result[slot.name] = values[slot.name]
    else:
        values = list(values or [])
        exact = len(values) == len(layout)
        i = 0
        for slot in layout:
            if slot.extra is not None:
                if i < len(values) and (exact or _looks_like_extra(slot, values[i])):
                    if slot.extra == "control":
                        controls[slot.name] = values[i]
                    i += 1
                continue
            if i < len(values):
                if values[i] is not None:
                    result[slot.name] = values[i]
                    index[slot.name] = i
                i += 1
    for slot in layout:
        if slot.extra is None and slot.name not in result:
            result[slot.name] = widget_default(all_specs[slot.name])
    return result, index, controls


# ----------------------------------------------------------------------------------------------------------------
# Values the frontend rewrites when it queues: dynamic prompts, filename_prefix replacements
# ----------------------------------------------------------------------------------------------------------------

_COMMENTS = re.compile(r"/\*[\s\S]*?\*/|//.*")


def process_dynamic_prompt(text: str, rng: Callable[[], float] = random.random) -> str:
    """The frontend's dynamic prompts for STRING widgets with ``dynamicPrompts``: C-style comments are removed and
    each ``{a|b|c}`` (nestable) is replaced by one option picked at random; ``\\{``, ``\\|``, ``\\}`` are literal."""
    source = _COMMENTS.sub("", text)
    pos = 0

    def choice() -> str:
        nonlocal pos
        options, current, depth = [], "", 0
        while pos < len(source):
            c = source[pos]
            pos += 1
            if c == "\\":
                current += "\\" + source[pos: pos + 1]
                pos += 1
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                if not depth:
                    break
                depth -= 1
            elif c == "|" and not depth:
                options.append(current)
                current = ""
                continue
            current += c
        options.append(current)
        return process_dynamic_prompt(options[min(int(rng() * len(options)), len(options) - 1)], rng)

    out = ""
    while pos < len(source):
        c = source[pos]
        pos += 1
        if c == "\\":
            out += "\\" + source[pos: pos + 1]
            pos += 1
        elif c == "{":
            out += choice()
        else:
            out += c
    return re.sub(r"\\([{}|])", r"\1", out)


_DATE_TOKENS = re.compile(r"dd?|MM?|hh?|mm?|ss?|yyy?y?")


def format_date(fmt: str, when: datetime.datetime | None = None) -> str:
    """The frontend's ``%date:FORMAT%``: yyyy, yy, MM, M, dd, d, hh, h, mm, m, ss, s."""
    when = when or datetime.datetime.now()
    parts = {"d": when.day, "M": when.month, "h": when.hour, "m": when.minute, "s": when.second}

    def repl(m: re.Match) -> str:
        tok = m.group(0)
        if tok == "yy":
            return str(when.year)[2:]
        if tok == "yyyy":
            return str(when.year)
        if tok[0] in parts:
            return str(parts[tok[0]]).rjust(len(tok), "0")
        return tok

    return _DATE_TOKENS.sub(repl, fmt)


def apply_text_replacements(value: str, lookup: Callable[[str, str], Any]) -> str:
    """The frontend's ``filename_prefix`` replacements: ``%date:FORMAT%`` and ``%NODE.WIDGET%`` (NODE = a node's
    "Node name for S&R" or title); ``/`` and ``\\`` in substituted values become ``_``. Others stay for the backend."""

    def repl(m: re.Match) -> str:
        text = m.group(1)
        split = text.split(".")
        if len(split) != 2:
            if split[0].startswith("date:"):
                return format_date(split[0][5:])
            return m.group(0)
        found = lookup(split[0], split[1])
        if found is _MISSING:
            return m.group(0)
        return re.sub(r"[/\\]", "_", str("" if found is None else found))

    return re.sub(r"%([^%]+)%", repl, value)


_MISSING = object()


# ----------------------------------------------------------------------------------------------------------------
# Format detection
# ----------------------------------------------------------------------------------------------------------------


def is_ui_workflow(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list)


def is_api_prompt(data) -> bool:
    return isinstance(data, dict) and bool(data) and all(
        isinstance(v, dict) and "class_type" in v for v in data.values())


def load_workflow_file(path) -> dict:
    from pathlib import Path

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WorkflowFormatError(f"Workflow file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkflowFormatError(f"Cannot read workflow file {p}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowFormatError(f"{p} is not valid JSON: {exc}") from None


# ----------------------------------------------------------------------------------------------------------------
# UI → API
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Conversion:
    """The result of :func:`ui_to_api`."""

    prompt: dict  # API format
    workflow: dict  # the UI workflow it came from (a deep copy, safe to patch)
    widget_index: dict[tuple[str, str], int] = field(default_factory=dict)  # (node, input) → widgets_values index
    controls: dict[tuple[str, str], str] = field(default_factory=dict)  # (node, input) → control_after_generate
    warnings: list[str] = field(default_factory=list)


class _UiGraph:
    """A UI workflow's nodes (by execution id, subgraphs expanded: see :mod:`.execution_graph`), with the frontend's
    rules for following a link to the node that really feeds it and for reading a node's widget values."""

    def __init__(self, workflow: dict, node_classes: dict, display_names: dict):
        self.node_classes = node_classes
        self.display_names = display_names
        try:
            self.exec = ExecutionGraph(workflow)
        except GraphError as exc:
            raise WorkflowFormatError(str(exc)) from None
        self.nodes: dict[str, dict] = {i: dto.node for i, dto in self.exec.nodes.items()}
        self._widget_values: dict[str, dict] = {}

    def resolve_input(self, node_id: str, slot: int, want_type):
        """The real (node id, slot) feeding input ``slot`` of a node, a promoted widget's :class:`Value`, or None
        when nothing real feeds it."""
        try:
            return self.exec.resolve_input(self.exec.nodes[node_id], slot, want_type)
        except GraphError as exc:
            raise WorkflowFormatError(str(exc)) from None

    def widget_values(self, node_id: str) -> dict:
        """{input: value} of a node's widgets (a PrimitiveNode's single value as "value"); {} if unreadable."""
        if node_id not in self._widget_values:
            node = self.nodes[node_id]
            cls = self.node_classes.get(node.get("type"))
            values: dict = {}
            if node.get("type") == "PrimitiveNode" and node.get("widgets_values"):
                values = {"value": node["widgets_values"][0]}
            elif cls is not None:
                try:
                    values = map_widgets_values(cls, node.get("widgets_values"))[0]
                except Exception:  # noqa: BLE001 - reported when the node itself is converted
                    values = {}
            self._widget_values[node_id] = values
        return self._widget_values[node_id]

    def lookup(self, name: str, widget: str):
        """``%NODE.WIDGET%``: a widget value of the node whose "Node name for S&R" (else title) is ``name``."""
        nodes = self.exec.root.nodes  # the workflow's own nodes, not those inside subgraphs
        matches = [i for i, n in nodes.items() if (n.get("properties") or {}).get("Node name for S&R") == name]
        if not matches:
            matches = [i for i, n in nodes.items()
                       if (n.get("title") or self.display_names.get(n.get("type")) or n.get("type")) == name]
        if not matches:
            return _MISSING
        values = self.widget_values(matches[0])
        return values[widget] if widget in values else _MISSING

    def primitive_value(self, node_id: str, slot: int):
        """The value of a PrimitiveNode linked into input ``slot`` (it writes its value into the widget it feeds),
        else _MISSING."""
        dto = self.exec.nodes[node_id]
        link = dto.input_link(slot)
        origin = dto.scope.nodes.get(link.origin_id) if link is not None else None
        if origin is None or origin.get("type") != "PrimitiveNode" or not origin.get("widgets_values"):
            return _MISSING
        return origin["widgets_values"][0]


def _as_prompt_value(value):
    """A list constant is wrapped, so that it cannot be read as a link."""
    return {"__value__": value} if isinstance(value, list) else value


def ui_to_api(workflow: dict, node_classes: dict, display_names: dict | None = None,
              rng: Callable[[], float] = random.random) -> Conversion:
    """Convert a UI-format workflow to an API prompt as the ComfyUI frontend does when it queues it.

    ``rng`` picks the options of dynamic prompts (``{a|b}`` in STRING widgets with ``dynamicPrompts``).
    Steps: 1. check the file's shape, turn legacy group nodes into subgraphs (:mod:`.group_nodes`); 2. read nodes
    and links, subgraphs expanded to nodes with ids ``outer:inner``; 3. convert each node that is sent (widget
    values, then links, each followed to the node that really feeds it, or to the widget promoted to its subgraph
    node); 4. drop links into nodes that were not sent.
    """
    _check_ui_workflow(workflow)  # 1
    if has_group_nodes(workflow):  # legacy group nodes become subgraphs, as the frontend migrates them on load
        try:
            workflow = migrate_group_nodes(workflow, node_classes)
        except GroupNodeError as exc:
            raise WorkflowFormatError(str(exc)) from None
    else:
        workflow = copy.deepcopy(workflow)
    graph = _UiGraph(workflow, node_classes, display_names or {})  # 2
    conv = Conversion(prompt={}, workflow=workflow)
    for node_id, dto in graph.exec.nodes.items():  # 3
        if not dto.is_sent:
            continue
        node = dto.node
        ntype = node.get("type")
        inputs = _widget_inputs(graph, conv, node_id, node, rng)
        inputs.update(_linked_inputs(graph, node_id, node))
        conv.prompt[node_id] = {"inputs": inputs, "class_type": ntype, "_meta": _meta(graph, node)}
    for entry in conv.prompt.values():  # 4. as in the frontend: links into nodes that were not sent disappear
        for name, value in list(entry["inputs"].items()):
            if is_link(value) and value[0] not in conv.prompt:
                del entry["inputs"][name]
    return conv


def _meta(graph: _UiGraph, node: dict) -> dict:
    """The prompt's ``_meta``: the node's title, and the registry ids (cnr_id, aux_id, ver) it was made with."""
    ntype = node.get("type")
    meta = {"title": node.get("title") or graph.display_names.get(ntype) or ntype}
    props = node.get("properties") or {}
    for key in ("cnr_id", "aux_id", "ver"):
        if isinstance(props.get(key), str) and props[key]:
            meta[key] = props[key]
    return meta


def _check_ui_workflow(workflow) -> None:
    if not is_ui_workflow(workflow):
        raise WorkflowFormatError("Not a UI-format workflow (no 'nodes' list).")
    _check_shape(workflow)


def _check_shape(workflow: dict) -> None:
    """Refuse, with WorkflowFormatError naming the part, a UI workflow whose parts have the wrong JSON types (what a
    hand-edited or corrupted file has): the converter below may then index every part as the format says."""
    def fail(where: str, expected: str, value) -> None:
        raise WorkflowFormatError(f"{where} must be {expected}, not {type(value).__name__} {str(value)[:60]!r}.")

    scalar = (str, int, type(None))
    for key in ("extra", "definitions"):
        if not isinstance(workflow.get(key), (dict, type(None))):
            fail(f"'{key}'", "an object", workflow[key])
    if not isinstance((workflow.get("extra") or {}).get("groupNodes"), (dict, type(None))):
        fail("'extra.groupNodes'", "an object", workflow["extra"]["groupNodes"])
    links = workflow.get("links")
    if not isinstance(links, (list, type(None))):
        fail("'links'", "a list", links)
    for i, raw in enumerate(links or []):
        if isinstance(raw, dict):
            ends = [raw.get("id"), raw.get("origin_id"), raw.get("target_id")]
            slots = [raw.get("origin_slot", 0), raw.get("target_slot", 0)]
        elif isinstance(raw, (list, tuple)) and len(raw) >= 5:
            ends, slots = [raw[0], raw[1], raw[3]], [raw[2], raw[4]]
        else:
            continue  # not a link: skipped, as the frontend does
        if not all(isinstance(v, scalar) for v in ends) or not all(isinstance(v, int) for v in slots):
            fail(f"Link {i}", "[id, from node, from slot, to node, to slot, type] with integer slots", raw)
    for i, node in enumerate(workflow["nodes"]):
        if not isinstance(node, dict):
            fail(f"Node {i} in 'nodes'", "an object", node)
        if not isinstance(node.get("id"), scalar) or not isinstance(node.get("type"), scalar):
            fail(f"Node {i}'s id and type", "strings or numbers", [node.get("id"), node.get("type")])
        for key, kind in (("inputs", list), ("outputs", list), ("properties", dict)):
            if not isinstance(node.get(key), (kind, type(None))):
                fail(f"Node {node['id']}'s '{key}'", f"a{'n object' if kind is dict else ' list'}", node[key])
        for slot in (node.get("inputs") or []) + (node.get("outputs") or []):
            if not isinstance(slot, dict) or not isinstance(slot.get("link"), scalar) \
                    or not isinstance(slot.get("name"), scalar) or isinstance(slot.get("type"), (dict, list)):
                fail(f"Node {node['id']}'s input or output", "an object {name, type, link}", slot)
        if not isinstance(node.get("widgets_values"), (list, dict, type(None))) or \
                (node.get("type") == "PrimitiveNode" and not isinstance(node.get("widgets_values"), (list, type(None)))):
            fail(f"Node {node['id']}'s 'widgets_values'", "a list", node["widgets_values"])


def _widget_inputs(graph: _UiGraph, conv: Conversion, node_id: str, node: dict, rng) -> dict[str, Any]:
    """A node's widget values as prompt inputs, with the frontend's rewrites (dynamic prompts, filename_prefix
    replacements); records where each value sits in widgets_values and each control_after_generate mode."""
    cls = graph.node_classes.get(node.get("type"))
    if cls is None:
        return {}
    try:
        values, index, controls = map_widgets_values(cls, node.get("widgets_values"))
    except Exception as exc:  # noqa: BLE001 - a broken INPUT_TYPES shows up again, per node, in validation
        conv.warnings.append(f"Node {node_id} ({node.get('type')}): cannot read its widgets: {exc}")
        return {}
    specs = {}
    if values:
        spec = input_types(cls)
        specs = {**spec["required"], **spec["optional"]}
    inputs: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, str) and widget_kind(specs[name]) == "STRING":
            if spec_options(specs[name]).get("dynamicPrompts"):
                value = process_dynamic_prompt(value, rng)
            if name == "filename_prefix":
                value = apply_text_replacements(value, graph.lookup)
        inputs[name] = _as_prompt_value(value)
    for name, i in index.items():
        conv.widget_index[(node_id, name)] = i
    for name, mode in controls.items():
        conv.controls[(node_id, name)] = mode
    return inputs


def _linked_inputs(graph: _UiGraph, node_id: str, node: dict) -> dict[str, Any]:
    """A node's input slots as prompt links ``[node_id, slot]`` to the node that really feeds each one; the value
    of a widget promoted to the subgraph node around it, or of a PrimitiveNode, where one feeds the slot."""
    inputs: dict[str, Any] = {}
    for slot, inp in enumerate(node.get("inputs") or []):
        name = inp.get("name") if isinstance(inp, dict) else None
        if not name:
            continue
        resolved = graph.resolve_input(node_id, slot, inp.get("type"))
        if isinstance(resolved, Value):
            inputs[name] = _as_prompt_value(resolved.value)
            continue
        if resolved is not None:
            inputs[name] = [resolved[0], int(resolved[1])]
            continue
        value = graph.primitive_value(node_id, slot)
        if value is not _MISSING:
            inputs[name] = _as_prompt_value(value)
    return inputs


# ----------------------------------------------------------------------------------------------------------------
# Overrides (--set NODE.INPUT=VALUE)
# ----------------------------------------------------------------------------------------------------------------


class OverrideError(ValueError):
    def __init__(self, message: str, node_id: str | None = None, input_name: str | None = None):
        super().__init__(message)
        self.node_id = node_id
        self.input_name = input_name


def parse_set_argument(text: str) -> tuple[str, str]:
    """``"NODE_ID.INPUT=VALUE"`` → (``"NODE_ID.INPUT"``, ``"VALUE"``)."""
    key, sep, value = text.partition("=")
    if not sep or "." not in key or not key.split(".", 1)[0] or not key.split(".", 1)[1]:
        raise OverrideError(f"--set expects NODE_ID.INPUT=VALUE, got {text!r}")
    return key.strip(), value


def normalise_overrides(overrides) -> list[tuple[str, str, Any]]:
    """Accept {"5.seed": 3}, {"5": {"seed": 3}} or [("5", "seed", 3)] and return [(node, input, value)]."""
    if not overrides:
        return []
    out: list[tuple[str, str, Any]] = []
    if isinstance(overrides, dict):
        for key, value in overrides.items():
            if isinstance(value, dict) and "." not in str(key):
                out.extend((str(key), str(k), v) for k, v in value.items())
            else:
                node, sep, name = str(key).partition(".")
                if not sep or not node or not name:
                    raise OverrideError(f"Override key {key!r} must look like NODE_ID.INPUT")
                out.append((node, name, value))
    else:
        for item in overrides:
            node, name, value = item
            out.append((str(node), str(name), value))
    return out


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def coerce_override(spec, raw, node_id: str, name: str):
    """Type an override value by the input's spec. Strings (from the command line) are parsed; JSON values pass."""
    kind = widget_kind(spec) or spec_type(spec)
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("[") and text.endswith("]"):  # a link ["node", slot]
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = None
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                return [str(value[0]), value[1]]
        try:
            if kind == "INT":
                return _parse_int(text)
            if kind == "FLOAT":
                value = float(text)
                if not math.isfinite(value):
                    raise ValueError("not a finite number")
                return value
            if kind == "BOOLEAN":
                if text.lower() in _TRUE:
                    return True
                if text.lower() in _FALSE:
                    return False
                raise ValueError("expected true or false")
            if kind == "COMBO":
                options = combo_options(spec) or []
                if raw in options or not options:
                    return raw
                for option in options:  # combos of numbers
                    if not isinstance(option, str) and str(option) == text:
                        return option
                return raw
        except ValueError as exc:
            raise OverrideError(f"--set {node_id}.{name}={raw}: not a valid {kind} ({exc})", node_id, name) from None
        return raw
    return raw


def _parse_int(text: str) -> int:
    if text.lower().lstrip("+-").startswith(("0x", "0b", "0o")):
        return int(text, 0)
    try:
        return int(text)
    except ValueError:
        value = float(text)  # "1e3", "7.0"
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError("not a whole number") from None
        return int(value)


def apply_overrides(prompt: dict, overrides, node_classes: dict, conversion: Conversion | None = None) -> None:
    """Set inputs of an API prompt in place (typed by INPUT_TYPES); also patch the UI workflow's widgets_values."""
    for node_id, name, raw in normalise_overrides(overrides):
        entry = prompt.get(node_id)
        if entry is None:
            known = ", ".join(sorted(prompt, key=id_sort_key)) or "none"
            raise OverrideError(f"--set {node_id}.{name}: there is no node {node_id} in the workflow "
                                f"(nodes: {known})", node_id, name)
        cls = node_classes.get(entry.get("class_type"))
        if cls is None:
            raise OverrideError(f"--set {node_id}.{name}: node {node_id} has unknown type "
                                f"{entry.get('class_type')!r}", node_id, name)
        spec = input_types(cls)
        all_specs = {**spec["required"], **spec["optional"]}
        if name not in all_specs:
            raise OverrideError(f"--set {node_id}.{name}: {entry['class_type']} has no input {name!r} "
                                f"(inputs: {', '.join(all_specs)})", node_id, name)
        value = coerce_override(all_specs[name], raw, node_id, name)
        entry.setdefault("inputs", {})[name] = {"__value__": value} if isinstance(value, list) and \
            not is_link(value) else value
        if conversion is not None and not is_link(value):
            idx = conversion.widget_index.get((node_id, name))
            node = next((n for n in conversion.workflow.get("nodes", []) if str(n.get("id")) == node_id), None)
            if idx is not None and node is not None and isinstance(node.get("widgets_values"), list):
                node["widgets_values"][idx] = value
            elif node is not None and isinstance(node.get("widgets_values"), dict):
                node["widgets_values"][name] = value


def is_link(value) -> bool:
    """An API-prompt input that links to another node: ``[node_id, output_slot]``. Node ids may be strings or (in
    hand-written prompts) integers; validation turns them into strings. The slot is an int, never a bool."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) \
        and isinstance(value[1], int) and not isinstance(value[1], bool)


def id_sort_key(node_id: str):
    """Numeric-aware order for node ids ("2" before "10")."""
    parts = str(node_id).split(":")
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts]
