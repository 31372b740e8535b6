"""A recorded :class:`~.report_data.ModelGraph` laid out by Graphviz's ``dot`` algorithm, as boxes and paths.

The engine is ``graphviz-pure`` (a dependency: a Rust port of Graphviz's ``dot`` shipped as a binary in
its wheel, so no system Graphviz is needed); we read its JSON (positions, frames, splines) and draw our
own SVG in :mod:`featviz_report.render.html`, so the page keeps its strict CSP and every layer's box links to its
section.

Calls are framed by the module they ran in. A graph of more than :data:`MAX_BOXES` calls is folded: the
modules at the deepest nesting level that brings the overview within the limit become one box each
(``layer1.0 · Bottleneck · 10 calls``), linked to a drawing of their inside below the overview. A resnet50
(177 calls) reads as 16 bottlenecks between its stem and head; each bottleneck is drawn in full on demand.
All drawings go to one ``dot`` process. Without the binary, when it fails or times out, or when the graph is
too large to lay out in a few seconds (:func:`layout_size`, decided before ``dot`` starts), there is a note
saying which instead.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..capture.layer_record import call_name
from ..render.anchors import legacy_ids
from ..report_data import GraphBox, GraphCluster, GraphDetail, GraphNode, GraphPicture, GraphView, ModelGraph

__all__ = ["layout_graph", "link_graph", "layout_size", "ENGINE", "MAX_BOXES", "MAX_EDGES", "MAX_LAYOUT_SIZE"]

ENGINE = "graphviz-pure"
MAX_BOXES = 90  # an overview with more boxes than this, or more edges than MAX_EDGES, is folded
MAX_EDGES = 150
CLUSTER_DEPTH = 3  # modules nested deeper than this are not framed (their calls still are boxes)
TIMEOUT_S = 30  # a backstop: graphs that would take longer are turned away by MAX_LAYOUT_SIZE before dot starts
# The most nodes dot may have to place (layout_size: boxes plus an edge's virtual node per rank it crosses),
# about 2 s of dot on one core (time grows with its square, 0.035-0.075 s per 1,000² measured over dense
# graphs of 1,700-13,600 nodes: densenet169 6,600 → 1.9 s is drawn; densenet201 11,100 → 4.4 s, and every
# layer fed by every earlier one, unframed, 25 layers 7,900 → 3.1 s, 30 layers 13,600 → 12 s, are not)
MAX_LAYOUT_SIZE = 7000
_CONTROL = re.compile("[\x00-\x1f\x7f]")
POINTS = 72.0  # Graphviz sizes are in inches


@dataclass(frozen=True)
class _Item:
    """A box to draw before layout: a call, or a folded module."""

    key: str
    kind: str
    name: str
    type: str
    shape: tuple[int, ...]
    scope: str
    call: int = 0
    calls: int = 1


def _engine() -> str | None:
    beside = Path(sys.executable).with_name(ENGINE)  # the venv's bin, when it is not on PATH
    return shutil.which(ENGINE) or (str(beside) if beside.is_file() else None)


def _depth(name: str) -> int:
    return name.count(".") + 1 if name else 0


def _inside(scope: str, module: str) -> bool:
    return scope == module or scope.startswith(module + ".")


def _folded_under(node: GraphNode, depth: int) -> str | None:
    """The module at ``depth`` that a call ran in, or None when it ran higher up."""
    if _depth(node.scope) < depth:
        return None
    return ".".join(node.scope.split(".")[:depth])


def _fold_depth(graph: ModelGraph) -> int | None:
    """The deepest nesting level whose folding brings the overview within MAX_BOXES boxes and MAX_EDGES
    edges (None: no folding). Edges count too: densenet's concatenations join every earlier layer."""
    if len(graph.nodes) <= MAX_BOXES and len(graph.edges) <= MAX_EDGES:
        return None
    deepest = max((_depth(n.scope) for n in graph.nodes), default=0)
    for depth in range(deepest, 0, -1):
        group = {n.id: _folded_under(n, depth) or f"#{n.id}" for n in graph.nodes}
        edges = {(group[a], group[b]) for a, b in graph.edges if group[a] != group[b]}
        if len(set(group.values())) <= MAX_BOXES and len(edges) <= MAX_EDGES:
            return depth
    return 1


def _drawings(graph: ModelGraph) -> list[tuple[str, str, list[_Item], set[tuple[str, str]]]]:
    """(anchor, module, items, edges) per drawing: the overview first, then each folded module's inside."""
    depth = _fold_depth(graph)
    if depth is None:
        items = [_Item(f"n{n.id}", n.kind, n.name, n.type, n.shape, n.scope, n.call) for n in graph.nodes]
        return [("", "", items, {(f"n{a}", f"n{b}") for a, b in graph.edges})]
    group_of = {n.id: _folded_under(n, depth) for n in graph.nodes}
    members: dict[str, list[GraphNode]] = defaultdict(list)
    for node in graph.nodes:
        if group_of[node.id]:
            members[group_of[node.id]].append(node)  # type: ignore[index]
    anchors = dict(zip(members, _anchors(list(members))))
    overview: list[_Item] = []
    placed: set[str] = set()
    for node in graph.nodes:
        group = group_of[node.id]
        if group is None:
            overview.append(_Item(f"n{node.id}", node.kind, node.name, node.type, node.shape, node.scope, node.call))
        elif group not in placed:
            placed.add(group)
            inner = members[group]
            parent = group.rpartition(".")[0]
            held = _held((n.kind, n.type) for n in inner)
            overview.append(_Item(anchors[group], "group", group, held, inner[-1].shape, parent, calls=len(inner)))

    def key(node_id: int) -> str:
        group = group_of[node_id]
        return anchors[group] if group else f"n{node_id}"

    edges = {(key(a), key(b)) for a, b in graph.edges if key(a) != key(b)}
    drawings = [("", "", overview, edges)]
    for group, inner in members.items():
        ids = {n.id for n in inner}
        items = [_Item(f"n{n.id}", n.kind, n.name, n.type, n.shape, n.scope, n.call) for n in inner]
        inner_edges = {(f"n{a}", f"n{b}") for a, b in graph.edges if a in ids and b in ids}
        if any(a not in ids and b in ids for a, b in graph.edges):
            items.insert(0, _Item("in", "input", "in", "from outside", (), group.rpartition(".")[0]))
            inner_edges |= {("in", f"n{b}") for a, b in graph.edges if a not in ids and b in ids}
        if any(a in ids and b not in ids for a, b in graph.edges):
            items.append(_Item("out", "output", "out", "to outside", (), group.rpartition(".")[0]))
            inner_edges |= {(f"n{a}", "out") for a, b in graph.edges if a in ids and b not in ids}
        drawings.append((anchors[group], group, items, inner_edges))
    return drawings


def _held(members: Iterable[tuple[str, str]]) -> str:
    """What a folded module held, from its calls' (kind, type): ``12 calls: Conv2d, BatchNorm2d, ReLU``
    (the module's own class is not recorded)."""
    calls = [(kind, type_) for kind, type_ in members if kind in ("module", "op")]
    types = list(dict.fromkeys(type_ for kind, type_ in calls if kind == "module"))
    listed = ", ".join(types[:4]) + (" …" if len(types) > 4 else "")
    return f"{len(calls)} calls" + (f": {listed}" if types else "")


def _anchors(modules: list[str]) -> list[str]:
    """A folded module's drawing's id: ``legacy_ids`` keeps the addresses earlier reports gave it."""
    return [f"module-{slug}" for slug in legacy_ids(modules)]


def _quote(text: str) -> str:
    """A DOT string; line breaks as DOT's ``\\n``, other control characters (which dot would copy raw
    into its JSON, or stop at) as U+FFFD."""
    text = _CONTROL.sub(lambda m: "\n" if m.group() == "\n" else "\ufffd", text)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _label(item: _Item) -> tuple[str, ...]:
    shape = "×".join(map(str, item.shape))
    if item.kind == "group":
        return (item.name, f"{item.calls} calls · {shape}")
    if item.kind == "module":
        short = item.name.rsplit(".", 1)[-1] + (f" ({item.call + 1})" if item.call else "")
        return (f"{short} · {item.type}", shape)
    return (item.name, shape) if shape else (item.name,)


def _scopes(scope: str) -> list[str]:
    parts = scope.split(".") if scope else []
    return [".".join(parts[: i + 1]) for i in range(min(len(parts), CLUSTER_DEPTH))]


def _dot(name: str, top: str, items: list[_Item], edges: set[tuple[str, str]]) -> tuple[str, list[str]]:
    """The DOT text of one drawing, and the modules its frames ``cluster_1``, ``cluster_2``, ... stand for."""
    members: dict[str, list[_Item]] = defaultdict(list)
    for item in items:
        chain = [s for s in _scopes(item.scope) if _depth(s) > _depth(top)]
        members[chain[-1] if chain else top].append(item)
    children: dict[str, set[str]] = defaultdict(set)
    for scope in list(members):
        chain = [s for s in _scopes(scope) if _depth(s) > _depth(top)]
        for parent, child in zip([top, *chain], chain):
            children[parent].add(child)
    lines = [
        f"digraph {_quote(name)} {{",
        'rankdir=TB; nodesep=0.25; ranksep=0.3; fontname="Helvetica"; fontsize=10;',
        'node [shape=box fontname="Helvetica" fontsize=11 height=0.3 margin="0.08,0.03"];',
    ]
    frames: list[str] = []

    def emit(scope: str) -> None:
        for item in members.get(scope, []):
            shape = "ellipse" if item.kind == "op" else "box"
            lines.append(f"{_quote(item.key)} [label={_quote(chr(10).join(_label(item)))} shape={shape}];")
        for child in sorted(children.get(scope, ())):
            frames.append(child)
            lines.append(f"subgraph cluster_{len(frames)} {{ label={_quote(child)}; labeljust=l;")
            emit(child)
            lines.append("}")

    emit(top)
    lines += [f"{_quote(a)} -> {_quote(b)};" for a, b in sorted(edges)]
    lines.append("}")
    return "\n".join(lines), frames


def layout_size(drawings: list[tuple[str, str, list[_Item], set[tuple[str, str]]]]) -> int:
    """About how many nodes ``dot`` places for ``drawings``, as one drawing's worth: ``dot`` ranks the
    boxes and cuts every edge into one virtual node per rank it crosses, and its time grows with the square
    of that count, so drawings add up as the root of the sum of their squares.

    An edge between two boxes of one frame (or both outside any) is counted in full; an edge between
    frames only up to the taller frame's height plus one, as ``dot`` routes it along the frames' sides
    (densenet's concatenations, which join every earlier layer's frame). Within 8 % of the nodes ``dot``
    reports placing (``-v``) on dense graphs with and without frames and on densenet121-201's blocks."""
    return math.isqrt(sum(_placed(top, items, edges) ** 2 for _, top, items, edges in drawings))


def _placed(top: str, items: list[_Item], edges: set[tuple[str, str]]) -> int:
    """The nodes ``dot`` places for one drawing (see :func:`layout_size`)."""
    rank = _ranks(items, edges)
    inner: dict[str, str | None] = {}
    low: dict[str | None, int] = {}
    high: dict[str | None, int] = {}
    for item in items:
        chain = [s for s in _scopes(item.scope) if _depth(s) > _depth(top)]
        inner[item.key] = chain[-1] if chain else None
        for scope in chain:
            low[scope] = min(low.get(scope, rank[item.key]), rank[item.key])
            high[scope] = max(high.get(scope, rank[item.key]), rank[item.key])
    height = {frame: high[frame] - low[frame] + 1 for frame in low}
    virtual = 0
    for a, b in edges:
        span = abs(rank[b] - rank[a]) - 1
        if span > 0 and inner[a] == inner[b]:
            virtual += span
        elif span > 0:
            virtual += min(span, max(height.get(inner[a], 0), height.get(inner[b], 0)) + 1)
    return len(items) + virtual


def _ranks(items: list[_Item], edges: set[tuple[str, str]]) -> dict[str, int]:
    """Each box's rank as ``dot`` gives it, near enough: the longest path to it, in topological order (by
    the boxes' order where there is a choice, or a cycle, which ``dot`` breaks by reversing an edge)."""
    index = {item.key: n for n, item in enumerate(items)}
    before: dict[str, list[str]] = defaultdict(list)
    after: dict[str, list[str]] = defaultdict(list)
    for a, b in edges:
        if a != b:
            before[b].append(a)
            after[a].append(b)
    waiting = {item.key: len(before[item.key]) for item in items}
    ready = [index[key] for key, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    rank: dict[str, int] = {}
    while len(rank) < len(items):
        if not ready:  # a cycle: go on from its first box
            heapq.heappush(ready, min(index[item.key] for item in items if item.key not in rank))
        key = items[heapq.heappop(ready)].key
        if key in rank:
            continue
        rank[key] = max((rank[p] + 1 for p in before[key] if p in rank), default=0)
        for b in after[key]:
            waiting[b] -= 1
            if waiting[b] == 0 and b not in rank:
                heapq.heappush(ready, index[b])
    return rank


def layout_graph(graph: ModelGraph) -> GraphView:
    """Drawings of ``graph``, not yet linked to any section (see :func:`link_graph`). Never raises: a
    failed layout is a view without drawings and with a note."""
    layers: dict[int, str] = {}
    note = f"the first {len(graph.nodes) - 2:,} calls only" if graph.truncated else ""
    engine = _engine()
    if engine is None:
        return GraphView(graph, None, (), f"no graph: the {ENGINE} program is missing (pip install {ENGINE})", layers)
    drawings = _drawings(graph)
    nodes = sum(len(items) for _, _, items, _ in drawings)
    edge_count = sum(len(edges) for *_, edges in drawings)
    size = layout_size(drawings)
    counts = f"{nodes:,} nodes and {edge_count:,} edges; about {size:,} nodes to place with long edges cut at each rank"
    if size > MAX_LAYOUT_SIZE:
        why = f"too large to lay out in a few seconds ({counts}, over the limit of {MAX_LAYOUT_SIZE:,})"
        return GraphView(graph, None, (), f"no graph: {why}", layers)
    dots = [_dot(anchor or "overview", top, items, edges) for anchor, top, items, edges in drawings]
    source = "\n".join(text for text, _ in dots)
    try:
        done = subprocess.run(
            [engine, "-Tjson0"], input=source, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        why = f"{ENGINE} timed out after {TIMEOUT_S} s ({counts})"
        return GraphView(graph, None, (), f"no graph: {why}", layers)
    except OSError as err:
        why = f"{ENGINE} could not be started ({type(err).__name__}: {err.strerror or err})"
        return GraphView(graph, None, (), f"no graph: {why}", layers)
    if done.returncode != 0:
        first = done.stderr.strip().splitlines()[0] if done.stderr.strip() else f"exit {done.returncode}"
        return GraphView(graph, None, (), f"no graph: {ENGINE} failed ({first})", layers)
    anchors = {anchor: top for anchor, top, _, _ in drawings[1:]}
    try:
        layouts = _documents(done.stdout)
        if len(layouts) != len(drawings):
            raise ValueError(f"{len(layouts)} of {len(drawings)} drawings")
        pictures = [
            _picture(layout, items, edges, anchors, frames)
            for layout, (_, _, items, edges), (_, frames) in zip(layouts, drawings, dots)
        ]
    except (ValueError, KeyError, IndexError, TypeError) as err:  # output we cannot read: no drawing
        return GraphView(graph, None, (), f"no graph: unreadable {ENGINE} output ({type(err).__name__})", layers)
    details = tuple(
        GraphDetail(anchor, top, _held((item.kind, item.type) for item in items), picture)
        for (anchor, top, items, _), picture in zip(drawings[1:], pictures[1:])
    )
    folded = f"{len(details)} modules are folded into one box each; their insides are drawn below" if details else ""
    return GraphView(graph, pictures[0], details, "; ".join(p for p in (note, folded) if p), layers)


def link_graph(view: GraphView, slugs: Mapping[str, str], flags: Mapping[str, str]) -> GraphView:
    """``view`` with each captured layer's box a link to its section and flagged. ``slugs`` map a layer's
    name (``name (call 2)`` for a later call) to its section's slug, ``flags`` a layer's name to what
    its summary flags (``3 dead channels``)."""

    def link(box: GraphBox) -> GraphBox:
        slug = slugs.get(box.name, "") if box.kind == "module" else ""
        if not slug:
            return box
        return dataclasses.replace(
            box, href=f"#layer-{slug}", slug=slug, flags=flags.get(box.name.split(" (call ")[0], "")
        )

    def linked(picture: GraphPicture) -> GraphPicture:
        return dataclasses.replace(picture, boxes=tuple(link(box) for box in picture.boxes))

    names = {n.id: call_name(n.name, n.call) for n in view.recorded.nodes if n.kind == "module"}
    return dataclasses.replace(
        view,
        overview=linked(view.overview) if view.overview else None,
        details=tuple(dataclasses.replace(d, picture=linked(d.picture)) for d in view.details),
        layers={node: slugs[name] for node, name in names.items() if name in slugs},
    )


def _documents(text: str) -> list[dict]:  # type: ignore[type-arg]
    """The JSON documents ``dot`` wrote one after the other, one per graph."""
    decoder = json.JSONDecoder()
    found: list[dict] = []  # type: ignore[type-arg]
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            return found
        document, index = decoder.raw_decode(text, index)
        found.append(document)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _picture(
    layout: dict,  # type: ignore[type-arg]
    items: list[_Item],
    edges: set[tuple[str, str]],
    anchors: Mapping[str, str],
    frames: list[str],
) -> GraphPicture:
    x0, y0, x1, y1 = _floats(layout["bb"])
    height = y1 - y0

    def flip(x: float, y: float) -> tuple[float, float]:
        return round(x - x0, 1), round(height - (y - y0), 1)

    by_key = {item.key: item for item in items}
    incoming: dict[str, int] = defaultdict(int)
    for _, b in edges:
        incoming[b] += 1
    boxes, clusters = [], []
    for obj in layout.get("objects", []):
        if "bb" in obj:  # a frame
            cx0, cy0, cx1, cy1 = _floats(obj["bb"])
            left, top = flip(cx0, cy1)
            label = frames[int(obj["name"].rpartition("_")[2]) - 1]  # our name, not dot's escaped label
            clusters.append(GraphCluster(label, left, top, round(cx1 - cx0, 1), round(cy1 - cy0, 1), label.count(".")))
            continue
        item = by_key[obj["name"]]
        x, y = flip(*_floats(obj["pos"]))
        w, h = float(obj["width"]) * POINTS, float(obj["height"]) * POINTS
        href = f"#{item.key}" if item.key in anchors else ""
        boxes.append(
            GraphBox(
                kind=item.kind,
                name=call_name(item.name, item.call),
                type=item.type,
                shape=item.shape,
                label=_label(item),
                x=round(x - w / 2, 1),
                y=round(y - h / 2, 1),
                width=round(w, 1),
                height=round(h, 1),
                href=href,
                slug="",
                flags="",
                merge=incoming[item.key] > 1 and item.kind == "op",
                calls=item.calls,
            )
        )
    paths = tuple(_path(edge["pos"], flip) for edge in layout.get("edges", []) if "pos" in edge)
    clusters.sort(key=lambda c: (c.depth, c.top, c.left))
    return GraphPicture(round(x1 - x0, 1), round(height, 1), tuple(boxes), tuple(clusters), paths)


def _path(spline: str, flip) -> str:  # type: ignore[no-untyped-def]
    """A Graphviz spline (``e,x,y x1,y1 x2,y2 ...``: an end point, then cubic Bézier points) as SVG path data."""
    end = None
    points = []
    for part in spline.split(" "):
        if part.startswith("e,"):
            end = flip(*_floats(part[2:]))
        elif not part.startswith("s,"):
            points.append(flip(*_floats(part)))
    d = f"M{points[0][0]},{points[0][1]}"
    for i in range(1, len(points) - 2, 3):
        (ax, ay), (bx, by), (cx, cy) = points[i : i + 3]
        d += f"C{ax},{ay} {bx},{by} {cx},{cy}"
    if end is not None:
        d += f"L{end[0]},{end[1]}"
    return d
