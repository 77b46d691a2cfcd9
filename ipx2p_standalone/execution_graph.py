"""The frontend's execution view of a UI workflow: every node that runs, with its execution id, and the rule that
follows a link to the node that really feeds it, through subgraph boundaries, reroutes and bypassed nodes.

A port of ``ExecutableNodeDTO`` and ``SubgraphNode.getInnerNodes`` in comfyui-frontend-package 1.58.1 (litegraph
bundle), which ``graphToPrompt`` uses:

* A node inside a subgraph runs under the id of its path: ``"<subgraph node id>:<inner id>"``, nested
  ``"a:b:c"``. Several instances of one subgraph definition give several sets of nodes, one per path. These are
  the ids ComfyUI's errors and progress name, so the runner names the node the user sees.
* The inner nodes of a top-level subgraph node are expanded unless it is muted (mode 2) or bypassed (mode 4); a
  nested subgraph node's inner nodes are expanded whatever its mode (the frontend does the same): each inner node
  is then sent or not by its own mode.
* A link from the subgraph's input node (id -10) continues at the same input of the subgraph node, outside. When
  nothing is linked there, the widget promoted to the subgraph node gives the value.
* A link from a subgraph node's output continues inside, from the node linked to the subgraph's output node
  (id -20), slot of the same index.
* A bypassed node passes to each output the input of the same slot if its type fits, else the first input of the
  wanted type, else the first input whose type fits both; a muted node feeds nothing; a Reroute passes its input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4
SUBGRAPH_INPUT_NODE, SUBGRAPH_OUTPUT_NODE = "-10", "-20"
NOTE_TYPES = ("Note", "MarkdownNote", "Comfy.Note", "Comfy.MarkdownNote")
VIRTUAL_TYPES = ("Reroute", "PrimitiveNode", *NOTE_TYPES)
MAX_DEPTH = 64  # nesting deeper than this is a definition that contains itself


class GraphError(ValueError):
    """A workflow whose graph cannot be followed (a loop, a subgraph that contains itself)."""


@dataclass
class Link:
    id: Any
    origin_id: str
    origin_slot: int
    target_id: str
    target_slot: int
    type: Any


def parse_links(raw_links) -> dict[Any, Link]:
    """Links of schema 0.4 (``[id, from, from_slot, to, to_slot, type]``) or 1.x (objects) by id."""
    out: dict[Any, Link] = {}
    for raw in raw_links or []:
        if isinstance(raw, dict):
            link = Link(raw.get("id"), str(raw.get("origin_id")), int(raw.get("origin_slot", 0)),
                        str(raw.get("target_id")), int(raw.get("target_slot", 0)), raw.get("type"))
        elif isinstance(raw, (list, tuple)) and len(raw) >= 5:
            link = Link(raw[0], str(raw[1]), int(raw[2]), str(raw[3]), int(raw[4]), raw[5] if len(raw) > 5 else None)
        else:
            continue
        out[link.id] = link
    return out


def types_match(a, b) -> bool:
    """Litegraph's connection rule: equal, a wildcard, or comma-separated type lists that share a type."""
    if a in (None, "", "*") or b in (None, "", "*"):
        return True
    a, b = str(a).upper(), str(b).upper()
    if a == b:
        return True
    return bool({t.strip() for t in a.split(",")} & {t.strip() for t in b.split(",")})


def node_mode(node) -> int:
    try:
        return int(node.get("mode") or 0)
    except (TypeError, ValueError):
        return MODE_ALWAYS


class Scope:
    """One graph: the workflow itself, or one subgraph definition (``definitions.subgraphs[i]``)."""

    def __init__(self, data: dict, definition: bool = False):
        self.data = data
        self.definition = definition
        self.name = data.get("name") or data.get("id") if definition else None
        self.nodes: dict[str, dict] = {}
        for node in data.get("nodes") or []:
            if not isinstance(node, dict) or "id" not in node:
                where = f" of subgraph {self.name!r}" if definition else ""
                raise GraphError(f"A node in 'nodes'{where} has no id.")
            self.nodes[str(node["id"])] = node
        self.links = parse_links(data.get("links"))
        self._into: dict[tuple[str, int], Link] = {}
        for link in self.links.values():
            self._into.setdefault((link.target_id, link.target_slot), link)

    def link_into(self, node_id: str, slot: int) -> Link | None:
        return self._into.get((node_id, slot))

    def output_link(self, slot: int) -> Link | None:
        """The link into output ``slot`` of this subgraph (its first, as the frontend takes)."""
        outputs = self.data.get("outputs") or []
        ids = (outputs[slot].get("linkIds") or []) if slot < len(outputs) and isinstance(outputs[slot], dict) else []
        for link_id in ids:
            if link_id in self.links:
                return self.links[link_id]
        return self.link_into(SUBGRAPH_OUTPUT_NODE, slot)

    def input_links(self, slot: int) -> list[Link]:
        """The links from input ``slot`` of this subgraph to the nodes inside."""
        return [lk for lk in self.links.values() if lk.origin_id == SUBGRAPH_INPUT_NODE and lk.origin_slot == slot]


@dataclass
class Value:
    """What a link resolved to when no node feeds it: the value of a widget promoted to a subgraph node."""

    value: Any


class ExecNode:
    """One node as the frontend executes it: its execution id, the graph it lives in, and (inside a subgraph) the
    subgraph node instance around it."""

    def __init__(self, node: dict, scope: Scope, path: tuple[str, ...], host: ExecNode | None,
                 subgraph: Scope | None):
        self.node = node
        self.scope = scope
        self.path = path
        self.host = host
        self.subgraph = subgraph  # the definition when this node is a subgraph node
        self.id = ":".join((*path, str(node["id"])))

    @property
    def mode(self) -> int:
        return node_mode(self.node)

    @property
    def is_virtual(self) -> bool:
        return self.subgraph is not None or self.node.get("type") in VIRTUAL_TYPES

    @property
    def is_sent(self) -> bool:
        """Whether the frontend puts the node in the API prompt (not virtual, not muted, not bypassed)."""
        return not self.is_virtual and self.mode not in (MODE_NEVER, MODE_BYPASS)

    def inputs(self) -> list[dict]:
        """Input slots ({name, type, link}); a subgraph node's are its definition's inputs, linked by slot."""
        if self.subgraph is None:
            return [i if isinstance(i, dict) else {} for i in self.node.get("inputs") or []]
        nid = str(self.node["id"])
        out = []
        for k, inp in enumerate(self.subgraph.data.get("inputs") or []):
            link = self.scope.link_into(nid, k)
            out.append({"name": inp.get("name"), "type": inp.get("type"), "link": link.id if link else None})
        return out

    def input_link(self, slot: int) -> Link | None:
        inputs = self.inputs()
        if slot >= len(inputs):
            return None
        link_id = inputs[slot].get("link")
        return self.scope.links.get(link_id) if link_id is not None else None


class ExecutionGraph:
    """All nodes of a workflow and its subgraphs by execution id, and link resolution between them."""

    def __init__(self, workflow: dict):
        self.root = Scope(workflow)
        self.definitions: dict[str, Scope] = {}
        for sg in (workflow.get("definitions") or {}).get("subgraphs") or []:
            if isinstance(sg, dict) and sg.get("id") is not None:
                self.definitions[str(sg["id"])] = Scope(sg, definition=True)
        self.nodes: dict[str, ExecNode] = {}
        for node in self.root.nodes.values():
            dto = self._add(node, self.root, (), None)
            if dto.subgraph is not None and dto.mode not in (MODE_NEVER, MODE_BYPASS):
                self._add_inner(dto, ())

    def _add(self, node, scope, path, host) -> ExecNode:
        sub = self.definitions.get(str(node.get("type")))
        dto = ExecNode(node, scope, path, host, sub)
        self.nodes[dto.id] = dto
        return dto

    def _add_inner(self, dto: ExecNode, seen: tuple[str, ...]) -> None:
        name = str(dto.node.get("type"))
        if name in seen or len(seen) >= MAX_DEPTH:
            raise GraphError(f"Subgraph {dto.subgraph.name!r} contains itself (through node {dto.id}); a subgraph "
                             "cannot be nested in itself.")
        path = (*dto.path, str(dto.node["id"]))
        for inner in dto.subgraph.nodes.values():
            child = self._add(inner, dto.subgraph, path, dto)
            if child.subgraph is not None:
                self._add_inner(child, (*seen, name))

    def sibling(self, dto: ExecNode, node_id: str) -> ExecNode | None:
        return self.nodes.get(":".join((*dto.path, node_id)))

    # ---- link resolution ------------------------------------------------------------------------------------

    def resolve_input(self, dto: ExecNode, slot: int, want_type=None, seen: frozenset = frozenset()):
        """What feeds input ``slot``: (execution id, output slot), a :class:`Value`, or None."""
        key = (dto.id, "I", slot)
        if key in seen:
            raise GraphError(f"Links loop through node {dto.id}.")
        seen = seen | {key}
        inputs = dto.inputs()
        link = dto.input_link(slot)
        if link is None:
            return None
        if link.origin_id == SUBGRAPH_INPUT_NODE and dto.host is not None:
            host, k = dto.host, link.origin_slot
            if host.input_link(k) is None:
                value = self.promoted_value(host, k)
                return None if value is _NONE else Value(value)
            return self.resolve_input(host, k, None, seen)
        origin = self.sibling(dto, link.origin_id)
        if origin is None:
            return None
        return self.resolve_output(origin, link.origin_slot, want_type or inputs[slot].get("type"), seen)

    def resolve_output(self, dto: ExecNode, slot: int, want_type, seen: frozenset):
        key = (dto.id, "O", slot)
        if key in seen:
            raise GraphError(f"Links loop through node {dto.id}.")
        seen = seen | {key}
        if dto.mode == MODE_NEVER:
            return None
        if dto.mode == MODE_BYPASS:
            pick = self._bypass_input(dto, slot, want_type)
            return None if pick is None else self.resolve_input(dto, pick, None, seen)
        if dto.subgraph is not None:
            link = dto.subgraph.output_link(slot)
            if link is None:
                return None
            if link.origin_id == SUBGRAPH_INPUT_NODE:
                raise GraphError(f"Output {slot} of subgraph {dto.subgraph.name!r} (node {dto.id}) is linked "
                                 "straight to one of its inputs; the frontend cannot queue that either. Put a node "
                                 "between them or link around the subgraph.")
            inner = self.nodes.get(":".join((*dto.path, str(dto.node["id"]), link.origin_id)))
            return None if inner is None else self.resolve_output(inner, link.origin_slot, want_type, seen)
        if dto.node.get("type") == "Reroute":
            return self.resolve_input(dto, 0, want_type, seen)
        if dto.is_virtual:
            return None
        return dto.id, slot

    @staticmethod
    def _bypass_input(dto: ExecNode, slot: int, want_type) -> int | None:
        inputs = dto.inputs()
        outputs = dto.node.get("outputs") or []
        if dto.subgraph is not None:
            outputs = dto.subgraph.data.get("outputs") or []
        out_type = outputs[slot].get("type") if slot < len(outputs) else want_type
        if want_type in ("*", "", None):
            pick = slot if len(inputs) > slot else 0
        elif slot < len(inputs) and types_match(inputs[slot].get("type"), out_type) \
                and types_match(inputs[slot].get("type"), want_type):
            pick = slot
        else:
            pick = next((i for i, s in enumerate(inputs) if s.get("type") == want_type), -1)
            if pick == -1:
                pick = next((i for i, s in enumerate(inputs) if types_match(s.get("type"), out_type)
                             and types_match(s.get("type"), want_type)), -1)
        return None if pick == -1 or pick >= len(inputs) else pick

    # ---- widgets promoted to subgraph nodes -----------------------------------------------------------------

    def has_widget(self, sub: Scope, slot: int, depth: int = 0) -> bool:
        """Whether input ``slot`` of a subgraph carries a promoted widget: it feeds a widget input inside (or the
        promoted widget of a nested subgraph node)."""
        if depth > MAX_DEPTH:
            return False
        for link in sub.input_links(slot):
            target = sub.nodes.get(link.target_id)
            if target is None:
                continue
            nested = self.definitions.get(str(target.get("type")))
            if nested is not None:
                if self.has_widget(nested, link.target_slot, depth + 1):
                    return True
                continue
            entry = next((i for i in target.get("inputs") or [] if isinstance(i, dict) and i.get("link") == link.id),
                         None)
            if entry is not None and entry.get("widget"):
                return True
        return False

    def promoted_value(self, host: ExecNode, slot: int):
        """The value of the widget promoted to input ``slot`` of subgraph node ``host``: by name from
        ``widgets_values_named`` (frontend 1.58), else by position among the inputs that carry widgets."""
        if not self.has_widget(host.subgraph, slot):
            return _NONE
        inputs = host.subgraph.data.get("inputs") or []
        name = inputs[slot].get("name")
        named = host.node.get("widgets_values_named")
        if isinstance(named, dict) and name in named:
            return named[name]
        values = host.node.get("widgets_values")
        if isinstance(values, dict):
            return values.get(name, _NONE)
        position = sum(1 for k in range(slot) if self.has_widget(host.subgraph, k))
        if isinstance(values, list) and position < len(values):
            return values[position]
        return _NONE


_NONE = object()
