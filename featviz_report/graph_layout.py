"""A recorded :class:`~.graph.ModelGraph` laid out by Graphviz's ``dot`` algorithm, as boxes and paths.

The engine is ``graphviz-pure`` (a dependency: a Rust port of Graphviz's ``dot`` shipped as a binary
inside its wheel, so no system Graphviz is needed). It lays out the resnet50 graph (177 nodes) in well
under a second; we read its JSON (positions, cluster boxes, edge splines) and draw our own SVG in
:mod:`.render`, so the page keeps its strict CSP and every layer's node links to its section. Calls are
grouped by the module they ran in (a cluster per block, three levels deep), so repeated blocks read as
a column of framed groups. Without the binary, or when it fails, there is no graph and a note says why.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from .graph import GraphNode, ModelGraph
from .report_data import GraphBox, GraphCluster, GraphEdge, GraphView

__all__ = ["layout_graph", "ENGINE"]

ENGINE = "graphviz-pure"
CLUSTER_DEPTH = 3  # modules nested deeper than this are not framed (their calls still are nodes)
TIMEOUT_S = 60
POINTS = 72.0  # Graphviz sizes are in inches


def _engine() -> str | None:
    beside = Path(sys.executable).with_name(ENGINE)  # the venv's bin, when not on PATH
    return shutil.which(ENGINE) or (str(beside) if beside.is_file() else None)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _label(node: GraphNode) -> str:
    shape = "×".join(map(str, node.shape))
    if node.kind == "module":
        short = node.name.rsplit(".", 1)[-1] + (f" ({node.call + 1})" if node.call else "")
        return f"{short} · {node.type}\n{shape}"
    return f"{node.name}\n{shape}" if shape else node.name


def _scopes(scope: str) -> list[str]:
    parts = scope.split(".") if scope else []
    return [".".join(parts[: i + 1]) for i in range(min(len(parts), CLUSTER_DEPTH))]


def _dot(graph: ModelGraph) -> str:
    members: dict[str, list[GraphNode]] = defaultdict(list)
    for node in graph.nodes:
        chain = _scopes(node.scope)
        members[chain[-1] if chain else ""].append(node)
    children: dict[str, set[str]] = defaultdict(set)
    for scope in list(members):
        chain = _scopes(scope)
        for parent, child in zip(["", *chain], chain):
            children[parent].add(child)
    lines = [
        "digraph G {",
        'rankdir=TB; nodesep=0.25; ranksep=0.3; fontname="Helvetica"; fontsize=10;',
        'node [shape=box fontname="Helvetica" fontsize=11 height=0.3 margin="0.08,0.03"];',
    ]

    def emit(scope: str, index: list[int]) -> None:
        for node in members.get(scope, []):
            shape = "ellipse" if node.kind == "op" else "box"
            lines.append(f"n{node.id} [label={_quote(_label(node))} shape={shape}];")
        for child in sorted(children.get(scope, ())):
            index[0] += 1
            lines.append(f"subgraph cluster_{index[0]} {{ label={_quote(child)}; labeljust=l;")
            emit(child, index)
            lines.append("}")

    emit("", [0])
    lines += [f"n{a} -> n{b};" for a, b in graph.edges]
    lines.append("}")
    return "\n".join(lines)


def layout_graph(graph: ModelGraph, slugs: Mapping[str, str], flags: Mapping[str, str]) -> GraphView:
    """Boxes, frames and paths for ``graph``; ``slugs`` (captured layer name → section slug) make nodes
    links, ``flags`` (layer name → e.g. ``3 dead channels``) mark them. Never raises: a failed layout is
    a view with no nodes and a note."""
    engine = _engine()
    if engine is None:
        return GraphView(0, 0, (), (), (), f"no graph: the {ENGINE} program is missing (pip install {ENGINE})")
    try:
        done = subprocess.run(
            [engine, "-Tjson0"], input=_dot(graph), capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return GraphView(0, 0, (), (), (), f"no graph: {ENGINE} did not run ({type(err).__name__})")
    if done.returncode != 0:
        first = done.stderr.strip().splitlines()[0] if done.stderr.strip() else f"exit {done.returncode}"
        return GraphView(0, 0, (), (), (), f"no graph: {ENGINE} failed ({first})")
    return _view(json.loads(done.stdout), graph, slugs, flags)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _view(layout: dict, graph: ModelGraph, slugs: Mapping[str, str], flags: Mapping[str, str]) -> GraphView:
    x0, y0, x1, y1 = _floats(layout["bb"])
    height = y1 - y0

    def flip(x: float, y: float) -> tuple[float, float]:
        return round(x - x0, 1), round(height - (y - y0), 1)

    nodes_by_id = {node.id: node for node in graph.nodes}
    boxes, clusters = [], []
    for item in layout.get("objects", []):
        if "bb" in item:  # a cluster
            cx0, cy0, cx1, cy1 = _floats(item["bb"])
            left, top = flip(cx0, cy1)
            label = item.get("label", "")
            depth = label.count(".")
            clusters.append(GraphCluster(label, left, top, round(cx1 - cx0, 1), round(cy1 - cy0, 1), depth))
            continue
        node = nodes_by_id[int(item["name"][1:])]
        x, y = flip(*_floats(item["pos"]))
        w, h = float(item["width"]) * POINTS, float(item["height"]) * POINTS
        boxes.append(
            GraphBox(
                id=node.id,
                kind=node.kind,
                name=node.name,
                type=node.type,
                shape=node.shape,
                call=node.call,
                x=round(x - w / 2, 1),
                y=round(y - h / 2, 1),
                width=round(w, 1),
                height=round(h, 1),
                slug=slugs.get(node.name if node.call == 0 else f"{node.name} (call {node.call + 1})", ""),
                flags=flags.get(node.name, ""),
                label=tuple(_label(node).split("\n")),
                merge=sum(1 for _, b in graph.edges if b == node.id) > 1,
            )
        )
    edges = tuple(GraphEdge(_path(edge["pos"], flip)) for edge in layout.get("edges", []) if "pos" in edge)
    boxes.sort(key=lambda box: box.id)
    clusters.sort(key=lambda c: (c.depth, c.top, c.left))
    note = f"the first {len(graph.nodes):,} calls only" if graph.truncated else ""
    return GraphView(round(x1 - x0, 1), round(height, 1), tuple(boxes), tuple(clusters), edges, note, graph.edges)


def _path(spline: str, flip) -> str:  # type: ignore[no-untyped-def]
    """A Graphviz spline (``e,x,y x1,y1 x2,y2 ...``: an end point, then cubic Bézier points) as SVG path data."""
    end = None
    points = []
    for part in spline.split(" "):
        if part.startswith("e,"):
            end = flip(*_floats(part[2:]))
        elif part.startswith("s,"):
            continue
        else:
            points.append(flip(*_floats(part)))
    d = f"M{points[0][0]},{points[0][1]}"
    for i in range(1, len(points) - 2, 3):
        (ax, ay), (bx, by), (cx, cy) = points[i : i + 3]
        d += f"C{ax},{ay} {bx},{by} {cx},{cy}"
    if end is not None:
        d += f"L{end[0]},{end[1]}"
    return d
