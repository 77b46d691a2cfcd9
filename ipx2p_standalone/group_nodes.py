"""Legacy group nodes → subgraphs, as the current ComfyUI frontend migrates them when it loads a workflow.

Before subgraphs, the frontend packed nodes into *group nodes*: ``extra.groupNodes[NAME]`` holds the packed nodes
(``nodes``, links between them by index, which outputs leave the group) and each instance is a node of type
``workflow>NAME`` (``workflow/NAME`` in files older than frontend 1.2.63) whose widgets and sockets are the inner
nodes' unlinked widgets and inputs. comfyui-frontend-package 1.58.1 no longer runs them: on load it unpacks each
instance into its nodes (new ids), copies the group's widget values into them, reconnects the outside links, and
converts the nodes into a subgraph (one definition per instance, a new subgraph node). :func:`migrate_group_nodes`
does the same to a UI workflow, so that ``ui_to_api`` queues what the frontend queues (node ids
``"<subgraph node>:<inner node>"``), and a saved copy opens in the frontend as it would have converted it.

A port of ``GroupNodeConfig`` (which inputs, widgets and outputs a group shows, in which order) and
``GroupNodeHandler.convertToNodes`` in the frontend's ``extensions/core/groupNode.ts``, checked against the frontend
itself in chromium (tools/build_group_node_fixtures.py, tests/test_group_nodes.py). One deliberate difference: the
order of a group's widgets is the one of the frontends that made and saved group nodes (1.27.10 and before: an inner
node's widget sockets sorted as text, "10" before "3"), which the saved ``widgets_values`` follow. Frontend 1.58.1
sorts them as numbers when it migrates, so for an inner node with ten or more inputs (our sampler, the one-node edit)
it hands values to the wrong widgets (seed 1, steps 1234, scheduler "fixed"; the queued prompt then fails
validation): here each widget keeps the value the group node showed. Not ported: group nodes holding a
PrimitiveNode or a Reroute (refused with a clear error), group nodes inside subgraphs (the frontend does not migrate
those either).
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from typing import Any

GROUP_PREFIX, LEGACY_GROUP_PREFIX = "workflow>", "workflow/"
NOT_PORTED = ("PrimitiveNode", "Reroute")


class GroupNodeError(ValueError):
    """A group node this migration cannot convert (the message says which and why)."""


def is_group_type(ntype) -> bool:
    return isinstance(ntype, str) and ntype.startswith((GROUP_PREFIX, LEGACY_GROUP_PREFIX))


def has_group_nodes(workflow: dict) -> bool:
    return bool((workflow.get("extra") or {}).get("groupNodes")) or any(
        isinstance(n, dict) and is_group_type(n.get("type")) for n in workflow.get("nodes") or [])


# ---- what a group node shows: GroupNodeConfig ---------------------------------------------------------------


@dataclass
class GroupWidget:
    inner: int  # index of the inner node in the group's ``nodes``
    name: str  # the inner node's input
    spec: Any  # its input spec (with the control value the group adds to seeds)


@dataclass
class GroupLayout:
    """One group type: its widgets (in order), its input sockets and its outputs, each mapped to an inner node."""

    name: str
    data: dict
    widgets: list[GroupWidget] = field(default_factory=list)
    inputs: dict[int, tuple[int, str]] = field(default_factory=dict)  # group input slot → (inner, input name)
    outputs: dict[int, tuple[int, int]] = field(default_factory=dict)  # group output slot → (inner, output slot)


def _input_specs(cls) -> dict:
    from .workflow import input_types

    spec = input_types(cls)
    return {**spec["required"], **spec["optional"]}


def group_layout(name: str, data: dict, node_classes: dict) -> GroupLayout:
    """The frontend's ``GroupNodeConfig.registerType`` for one group, with the widget order of the frontends that
    made group nodes: which inner inputs become the group's widgets and sockets (unlinked ones; normal widgets per
    node, then inputs, then widgets that have a socket, after all nodes), and which inner outputs its outputs are
    (those linked outside the group, or not linked inside)."""
    from .workflow import spec_options, widget_kind

    nodes = data.get("nodes")
    if not isinstance(nodes, list) or not all(isinstance(n, dict) for n in nodes):
        raise GroupNodeError(f"Group node {name!r}: 'extra.groupNodes.{name}.nodes' must be a list of nodes.")
    layout = GroupLayout(name, data)
    links_to: dict[tuple[int, int], list] = {}
    links_from: dict[tuple[int, int], list] = {}
    for link in data.get("links") or []:
        if not isinstance(link, list) or len(link) < 4 or link[0] is None:
            continue  # a link from outside the group when it was made
        links_from.setdefault((int(link[0]), int(link[1])), []).append(link)
        links_to[(int(link[2]), int(link[3]))] = link
    external = {(int(e[0]), int(e[1])) for e in data.get("external") or []
                if isinstance(e, list) and len(e) >= 3 and e[2] is not None}
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    count = 0
    converted_later: list[tuple[int, int, list[tuple[int, str]]]] = []  # (inner node, its sockets, its widgets)
    for index, node in enumerate(nodes):
        ntype = node.get("type")
        if ntype in NOT_PORTED:
            # Frontends 1.27.10 and 1.58.1 both hand a grouped PrimitiveNode's value to the wrong widget (tried:
            # a primitive on a sampler's seed ends up in its strength, resp. scrambles every value).
            raise GroupNodeError(
                f"Group node {name!r} holds a {ntype}, which the runner cannot unpack from a group node (the ComfyUI "
                "frontends misplace its value too). In ComfyUI, move it out of the group or ungroup the group node, "
                "check the values it feeds, and save the workflow again.")
        cls = node_classes.get(ntype)
        if cls is None:
            raise GroupNodeError(f"Group node {name!r} holds a node of type {ntype!r}, which is not installed.")
        specs = _input_specs(cls)
        node_inputs = [i if isinstance(i, dict) else {} for i in node.get("inputs") or []]
        node_config = config.get(str(index)) or config.get(index) or {}
        slots, converted = [], []
        for input_name, spec in specs.items():
            if widget_kind(spec) is None:
                slots.append(input_name)
                continue
            socket = next((k for k, i in enumerate(node_inputs) if i.get("name") == input_name
                           and isinstance(i.get("widget"), dict) and i["widget"].get("name") == input_name), -1)
            if socket > -1:
                converted.append((socket, input_name))  # a widget with a socket: handled after all nodes
            else:
                layout.widgets.append(GroupWidget(index, input_name, _group_spec(input_name, spec, spec_options)))
        for position, input_name in enumerate(slots):
            if (index, position) in links_to:
                continue  # linked inside the group (looked up by position among the sockets, as the makers did)
            visible = ((node_config.get("input") or {}).get(input_name) or {}).get("visible")
            if visible is False:
                continue
            layout.inputs[count] = (index, input_name)
            count += 1
        # the makers sorted socket indices as text (10 before 3): keep their order, which the saved values follow
        converted_later.append((index, len(slots), sorted(converted, key=lambda c: str(c[0]))))
        outputs = getattr(cls, "RETURN_TYPES", ()) or ()
        for slot in range(len(outputs)):
            linked_inside = (index, slot) in links_from and (index, slot) not in external
            custom = ((node_config.get("output") or {}).get(str(slot)) or (node_config.get("output") or {}).get(slot)
                      or {})
            visible = custom.get("visible", not linked_inside)
            if visible:
                layout.outputs[len(layout.outputs)] = (index, slot)
    for index, n_slots, converted in converted_later:
        specs = _input_specs(node_classes[nodes[index]["type"]])
        for i, (_, input_name) in enumerate(converted):
            if (index, n_slots + i) in links_to:
                continue
            layout.widgets.append(GroupWidget(index, input_name, _group_spec(input_name, specs[input_name],
                                                                             spec_options)))
            layout.inputs[count] = (index, input_name)
            count += 1
    return layout


def _group_spec(input_name: str, spec, spec_options):
    """The spec the group gives a widget: seeds get a control_after_generate widget whatever their own spec says."""
    if input_name in ("seed", "noise_seed"):
        kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
        return [kind, {**spec_options(spec), "control_after_generate": True}]
    return spec


def group_widget_values(layout: GroupLayout, values) -> list[tuple[GroupWidget, Any, str | None]]:
    """The group node instance's ``widgets_values`` read over the group's widgets: (widget, value, control mode)."""
    from .workflow import CONTROL_MODES, WidgetSlot, _looks_like_extra, layout_for_specs

    slots: list[tuple[WidgetSlot, GroupWidget]] = []
    for k, widget in enumerate(layout.widgets):
        for slot in layout_for_specs([(str(k), widget.spec)]):
            slots.append((slot, widget))
    values = list(values or []) if isinstance(values, list) else []
    exact = len(values) == len(slots)
    out: dict[int, list] = {}
    i = 0
    for slot, widget in slots:
        key = id(widget)
        if slot.extra is not None:
            if i < len(values) and (exact or _looks_like_extra(slot, values[i])):
                if slot.extra == "control" and key in out and values[i] in CONTROL_MODES:
                    out[key][2] = values[i]
                i += 1
            continue
        if i < len(values):
            out[key] = [widget, values[i], None]
            i += 1
    return [tuple(v) for v in out.values()]


# ---- the migration: GroupNodeHandler.convertToNodes + LGraph.convertToSubgraph ----------------------------------


class _Ids:
    """The frontend's sequential ids: the next integer above the last one used that no node (anywhere) has."""

    def __init__(self, last: int, used: set[int]):
        self.last, self.used = last, used

    def mint(self) -> int:
        self.last += 1
        while self.last in self.used:
            self.last += 1
        self.used.add(self.last)
        return self.last


def _as_int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _all_node_ids(workflow: dict) -> set[int]:
    ids = {_as_int(n.get("id")) for n in workflow.get("nodes") or [] if isinstance(n, dict)}
    for sg in (workflow.get("definitions") or {}).get("subgraphs") or []:
        ids |= {_as_int(n.get("id")) for n in (sg or {}).get("nodes") or [] if isinstance(n, dict)}
    return {i for i in ids if i is not None}


def _link_tuple(raw):
    """(id, origin, origin slot, target, target slot, type) of a root link in either schema."""
    if isinstance(raw, dict):
        return [raw.get("id"), raw.get("origin_id"), raw.get("origin_slot", 0), raw.get("target_id"),
                raw.get("target_slot", 0), raw.get("type")]
    return list(raw) + [None] * (6 - len(raw)) if isinstance(raw, list) and len(raw) >= 5 else None


def migrate_group_nodes(workflow: dict, node_classes: dict) -> dict:
    """A copy of ``workflow`` with every top-level group node instance turned into a subgraph, as frontend 1.58.1
    does on load (its ``extra.groupNodes`` removed). Raises :class:`GroupNodeError` for what it cannot convert."""
    try:
        return _migrate(copy.deepcopy(workflow), node_classes)
    except GroupNodeError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:  # a hand-edited or broken file
        raise GroupNodeError(f"The workflow's group nodes ('extra.groupNodes') cannot be read: {type(exc).__name__}: "
                             f"{str(exc)[:200]}") from None


def _migrate(wf: dict, node_classes: dict) -> dict:
    groups = (wf.get("extra") or {}).get("groupNodes") or {}
    for node in wf.get("nodes") or []:
        if isinstance(node, dict) and isinstance(node.get("type"), str) \
                and node["type"].startswith(LEGACY_GROUP_PREFIX):
            node["type"] = GROUP_PREFIX + node["type"][len(LEGACY_GROUP_PREFIX):]
    for sg in (wf.get("definitions") or {}).get("subgraphs") or []:
        for node in (sg or {}).get("nodes") or []:
            if isinstance(node, dict) and is_group_type(node.get("type")):
                raise GroupNodeError(
                    f"Subgraph {sg.get('name') or sg.get('id')!r} holds a legacy group node ({node['type']}); the "
                    "frontend does not convert group nodes inside subgraphs either. Unpack it in ComfyUI.")
    layouts: dict[str, GroupLayout] = {}
    for node in wf.get("nodes") or []:
        ntype = node.get("type") if isinstance(node, dict) else None
        if not is_group_type(ntype):
            continue
        gname = ntype[len(GROUP_PREFIX):]
        if gname not in layouts:
            if not isinstance(groups.get(gname), dict):
                raise GroupNodeError(f"Node {node.get('id')} is a group node ({ntype}), but the workflow has no "
                                     f"'extra.groupNodes.{gname}' that says what it holds.")
            layouts[gname] = group_layout(gname, groups[gname], node_classes)
    if not layouts:
        (wf.get("extra") or {}).pop("groupNodes", None)
        return wf
    state = wf.get("state") if isinstance(wf.get("state"), dict) else {}
    used = _all_node_ids(wf)
    last = max([_as_int(state.get("lastNodeId")) or 0, _as_int(wf.get("last_node_id")) or 0, *used])
    ids = _Ids(last, used)
    link_ids = [_as_int((_link_tuple(raw) or [None])[0]) for raw in wf.get("links") or []]
    next_link = [max([_as_int(state.get("lastLinkId")) or 0, _as_int(wf.get("last_link_id")) or 0,
                      *[i for i in link_ids if i is not None]])]

    def new_link_id() -> int:
        next_link[0] += 1
        return next_link[0]

    for node in list(wf["nodes"]):
        if isinstance(node, dict) and is_group_type(node.get("type")):
            _convert_instance(wf, node, layouts[node["type"][len(GROUP_PREFIX):]], node_classes, ids, new_link_id)
    wf["extra"].pop("groupNodes", None)
    if wf.get("floatingLinks", []) is None:  # frontend 1.58.1 cannot load null here once the file has subgraphs
        del wf["floatingLinks"]
    wf["last_node_id"] = ids.last
    wf["last_link_id"] = next_link[0]
    if isinstance(wf.get("state"), dict):
        wf["state"]["lastNodeId"], wf["state"]["lastLinkId"] = ids.last, next_link[0]
    return wf


def _convert_instance(wf: dict, group: dict, layout: GroupLayout, node_classes: dict, ids: _Ids,
                      new_link_id) -> None:
    from .workflow import map_widgets_values, widget_layout

    gid = str(group.get("id"))
    template = layout.data["nodes"]
    if not template:  # the frontend's conversion fails ("nothing to convert") and it removes the node
        root_links = [_link_tuple(raw) for raw in wf.get("links") or []]
        touching = [lk for lk in root_links if lk and gid in (str(lk[1]), str(lk[3]))]
        keep = [raw for raw, lk in zip(wf.get("links") or [], root_links) if not lk or lk not in touching]
        _rewire_root(wf, group, keep, [], [lk for lk in touching if str(lk[3]) == gid],
                     [lk for lk in touching if str(lk[1]) == gid], None)
        return
    inner_ids = [ids.mint() for _ in template]
    inner = []
    for k, t in enumerate(template):  # the frontend pastes the stored nodes: their widgets, modes and titles
        n = {key: copy.deepcopy(v) for key, v in t.items() if key not in ("index", "id")}
        n["id"] = inner_ids[k]
        n["inputs"] = [dict(i, link=None) for i in n.get("inputs") or [] if isinstance(i, dict)]
        n["outputs"] = [dict(o, links=[]) for o in n.get("outputs") or [] if isinstance(o, dict)]
        inner.append(n)

    # the group's widget values go to the inner widgets they stand for (the control mode too)
    for widget, value, control in group_widget_values(layout, group.get("widgets_values")):
        n = inner[widget.inner]
        cls = node_classes[n["type"]]
        slots = widget_layout(cls)
        values = n.get("widgets_values")
        if not isinstance(values, list) or len(values) != len(slots):
            values = _full_widgets_values(cls, values, map_widgets_values, slots)
        for pos, slot in enumerate(slots):
            if slot.name == widget.name and slot.extra is None:
                values[pos] = value
            elif slot.name == widget.name and slot.extra == "control" and control is not None:
                values[pos] = control
        n["widgets_values"] = values

    links: list[dict] = []  # links of the subgraph, between inner nodes and to its input/output nodes

    def connect_inside(o: int, o_slot: int, t: int, t_name_or_slot, ltype) -> None:
        target = inner[t]
        slot = t_name_or_slot if isinstance(t_name_or_slot, int) else next(
            (k for k, i in enumerate(target["inputs"]) if i.get("name") == t_name_or_slot), -1)
        if slot < 0 or slot >= len(target["inputs"]):
            return
        lid = new_link_id()
        links.append({"id": lid, "origin_id": inner_ids[o], "origin_slot": o_slot, "target_id": inner_ids[t],
                      "target_slot": slot, "type": ltype})
        target["inputs"][slot]["link"] = lid
        outs = inner[o]["outputs"]
        if o_slot < len(outs):
            outs[o_slot]["links"].append(lid)

    for link in layout.data.get("links") or []:
        if isinstance(link, list) and len(link) >= 4 and link[0] is not None:
            connect_inside(int(link[0]), int(link[1]), int(link[2]), int(link[3]), link[5] if len(link) > 5 else None)

    root_links = [_link_tuple(raw) for raw in wf.get("links") or []]
    into = [lk for lk in root_links if lk and str(lk[3]) == gid]
    out_of = [lk for lk in root_links if lk and str(lk[1]) == gid]
    keep = [raw for raw, lk in zip(wf.get("links") or [], root_links) if not lk or gid not in (str(lk[1]), str(lk[3]))]

    # convertToSubgraph: one subgraph input per outside output feeding it, one output per inner output used outside
    sub_inputs: list[dict] = []
    by_origin: dict[tuple, int] = {}
    boundary_in: list[tuple[int, Any, Any, Any]] = []  # (subgraph input, origin, origin slot, type)
    for lk in sorted(into, key=lambda lk: int(lk[4])):
        mapped = layout.inputs.get(int(lk[4]))
        if mapped is None:
            continue
        index, input_name = mapped
        target = inner[index]
        slot = next((k for k, i in enumerate(target["inputs"]) if i.get("name") == input_name), -1)
        if slot < 0:
            continue
        key = (str(lk[1]), int(lk[2]))
        if key not in by_origin:
            by_origin[key] = len(sub_inputs)
            sub_inputs.append({"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{gid}/in/{len(sub_inputs)}")),
                               "name": input_name, "type": lk[5] or target["inputs"][slot].get("type"),
                               "linkIds": []})
            boundary_in.append((by_origin[key], lk[1], lk[2], lk[5]))
        k = by_origin[key]
        lid = new_link_id()
        links.append({"id": lid, "origin_id": -10, "origin_slot": k, "target_id": inner_ids[index],
                      "target_slot": slot, "type": sub_inputs[k]["type"]})
        sub_inputs[k]["linkIds"].append(lid)
        target["inputs"][slot]["link"] = lid

    sub_outputs: list[dict] = []
    by_inner: dict[tuple[int, int], int] = {}
    boundary_out: list[tuple[int, Any, Any, Any]] = []  # (subgraph output, target, target slot, type)
    for lk in out_of:
        mapped = layout.outputs.get(int(lk[2]))
        if mapped is None:
            continue
        index, o_slot = mapped
        if (index, o_slot) not in by_inner:
            by_inner[(index, o_slot)] = len(sub_outputs)
            outs = inner[index]["outputs"]
            name = outs[o_slot].get("name") if o_slot < len(outs) else str(lk[5])
            lid = new_link_id()
            links.append({"id": lid, "origin_id": inner_ids[index], "origin_slot": o_slot, "target_id": -20,
                          "target_slot": len(sub_outputs), "type": lk[5]})
            if o_slot < len(outs):
                outs[o_slot]["links"].append(lid)
            sub_outputs.append({"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{gid}/out/{len(sub_outputs)}")),
                                "name": name, "type": lk[5], "linkIds": [lid]})
        boundary_out.append((by_inner[(index, o_slot)], lk[3], lk[4], lk[5]))

    sub_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"ipx2p-group-node/{layout.name}/{gid}/{inner_ids[0]}"))
    definition = {"id": sub_id, "version": 1, "name": layout.name, "revision": 0, "config": {},
                  "state": {"lastNodeId": ids.last, "lastLinkId": 0, "lastGroupId": 0, "lastRerouteId": 0},
                  "inputNode": {"id": -10, "bounding": [0, 0, 75, 100]},
                  "outputNode": {"id": -20, "bounding": [0, 0, 75, 100]},
                  "inputs": sub_inputs, "outputs": sub_outputs, "widgets": [], "nodes": inner, "links": links,
                  "groups": [], "extra": {"ipx2p_group_node": layout.name}}
    if not isinstance(wf.get("definitions"), dict):
        wf["definitions"] = {}
    if not isinstance(wf["definitions"].get("subgraphs"), list):
        wf["definitions"]["subgraphs"] = []
    wf["definitions"]["subgraphs"].append(definition)

    node_id = ids.mint()
    new_links = []
    sub_node = {"id": node_id, "type": sub_id, "pos": group.get("pos", [0, 0]), "size": group.get("size", [200, 100]),
                "flags": {}, "order": group.get("order", 0), "mode": 0, "properties": {},
                "inputs": [{"name": i["name"], "type": i["type"], "link": None} for i in sub_inputs],
                "outputs": [{"name": o["name"], "type": o["type"], "links": []} for o in sub_outputs],
                "widgets_values": []}
    for k, origin, origin_slot, ltype in boundary_in:
        lid = new_link_id()
        new_links.append([lid, origin, origin_slot, node_id, k, ltype])
        sub_node["inputs"][k]["link"] = lid
    for k, target, target_slot, ltype in boundary_out:
        lid = new_link_id()
        new_links.append([lid, node_id, k, target, target_slot, ltype])
        sub_node["outputs"][k]["links"].append(lid)
    _rewire_root(wf, group, keep, new_links, into, out_of, sub_node)


def _rewire_root(wf: dict, group: dict, keep: list, new_links: list, into: list, out_of: list, sub_node: dict):
    """Replace the group node by the subgraph node: its links out, the new ones in, the nodes' slots updated."""
    gone = {lk[0] for lk in into + out_of}
    by_id = {str(n.get("id")): n for n in wf["nodes"] if isinstance(n, dict)}
    for lk in out_of:
        target = by_id.get(str(lk[3]))
        slot = int(lk[4])
        if target and slot < len(target.get("inputs") or []) and target["inputs"][slot].get("link") == lk[0]:
            target["inputs"][slot]["link"] = None
    for lk in into:
        origin = by_id.get(str(lk[1]))
        slot = int(lk[2])
        if origin and slot < len(origin.get("outputs") or []):
            origin["outputs"][slot]["links"] = [x for x in origin["outputs"][slot].get("links") or [] if x not in gone]
    dict_links = any(isinstance(raw, dict) for raw in keep)
    for lid, o, o_slot, t, t_slot, ltype in new_links:
        if str(t) in by_id and t_slot < len(by_id[str(t)].get("inputs") or []):
            by_id[str(t)]["inputs"][t_slot]["link"] = lid
        if str(o) in by_id and o_slot < len(by_id[str(o)].get("outputs") or []):
            by_id[str(o)]["outputs"][o_slot].setdefault("links", [])
            by_id[str(o)]["outputs"][o_slot]["links"] = [*(by_id[str(o)]["outputs"][o_slot]["links"] or []), lid]
        keep.append({"id": lid, "origin_id": o, "origin_slot": o_slot, "target_id": t, "target_slot": t_slot,
                     "type": ltype} if dict_links else [lid, o, o_slot, t, t_slot, ltype])
    wf["links"] = keep
    wf["nodes"] = [n for n in wf["nodes"] if n is not group] + ([sub_node] if sub_node is not None else [])


def _full_widgets_values(cls, values, map_widgets_values, slots) -> list:
    """A node's widgets_values as a full positional list (stored values where they are, defaults elsewhere)."""
    result, _, controls = map_widgets_values(cls, values)
    out = []
    for slot in slots:
        if slot.extra is None:
            out.append(result.get(slot.name))
        elif slot.extra == "control":
            out.append(controls.get(slot.name, "fixed"))
        else:
            out.append(None)
    return out
