"""Charts as inline SVG (matplotlib, Agg): a report page must open with no network."""
from __future__ import annotations

import io
import re
from typing import Sequence

import networkx as nx

STATUS_FILL = {"ok": "#d1f0d9", "failed": "#ffd7d5", "cancelled": "#eeeeee",
               "running": "#fff1c2", "not run": "#f6f8fa"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _svg(fig) -> str:
    """The figure as an <svg> element: text kept as <text> (the page's own fonts, searchable,
    a fraction of the size of glyph paths), no XML prolog and no metadata block (its RDF
    namespace URLs would read like links to fetch)."""
    plt = _plt()
    buf = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    return re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)


def graph_svg(nodes: Sequence[dict], edges: Sequence[tuple[str, str]]) -> str:
    """The recipe's DAG left to right, one column per topological generation; each box shows
    the node's name, type and status, filled by status."""
    plt = _plt()
    dag = nx.DiGraph()
    dag.add_nodes_from(n["name"] for n in nodes)
    dag.add_edges_from(edges)
    place: dict[str, tuple[float, float]] = {}
    columns = list(nx.topological_generations(dag))
    for x, column in enumerate(columns):
        for y, name in enumerate(sorted(column)):
            place[name] = (x * 3.2, -(y - (len(column) - 1) / 2) * 1.4)
    tall = max((len(c) for c in columns), default=1)
    fig, ax = plt.subplots(figsize=(max(3.0, 2.6 * len(columns)), max(1.6, 1.1 * tall)))
    for a, b in edges:
        ax.annotate("", xy=place[b], xytext=place[a],
                    arrowprops={"arrowstyle": "-|>", "color": "#57606a", "shrinkA": 48,
                                "shrinkB": 48})
    for n in nodes:
        x, y = place[n["name"]]
        label = f"{n['name']}\n{n['type']}\n{n['status']}"
        ax.text(x, y, label, ha="center", va="center", fontsize=9,
                bbox={"boxstyle": "round,pad=0.5", "fc": STATUS_FILL.get(n["status"], "#fff"),
                      "ec": "#57606a"})
    xs = [p[0] for p in place.values()] or [0.0]
    ys = [p[1] for p in place.values()] or [0.0]
    ax.set_xlim(min(xs) - 1.4, max(xs) + 1.4)
    ax.set_ylim(min(ys) - 0.9, max(ys) + 0.9)
    ax.axis("off")
    return _svg(fig)


def bars_svg(labels: Sequence[str], series: dict[str, Sequence[float]], ylabel: str,
             ylim: tuple[float, float] | None = (0.0, 1.0), highlight: int | None = None) -> str:
    """Grouped bars: one group per label, one bar per series; `highlight` marks a group."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(3.5, 0.55 * len(labels) * max(1, len(series))), 2.6))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))]
        bars = ax.bar(xs, values, width, label=name)
        if highlight is not None and len(series) == 1:
            bars[highlight].set_edgecolor("#cf222e")
            bars[highlight].set_linewidth(2)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _svg(fig)


def loops_svg(loops: Sequence[dict], roles: Sequence[str]) -> str:
    """Squeeze Evolve: each group's fitness per loop, coloured by the role it was routed to,
    with the loop's percentile thresholds."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    colours = {r: plt.cm.tab10(i) for i, r in enumerate(roles)}
    seen: set[str] = set()
    for rec in loops:
        for value, role in zip(rec.get("fitness") or [], rec.get("routes") or []):
            ax.scatter([rec["loop"]], [value], color=colours.get(role, "#888"), s=18,
                       label=None if role in seen else role)
            seen.add(role)
        for cut in rec.get("thresholds") or []:
            ax.hlines(cut, rec["loop"] - 0.3, rec["loop"] + 0.3, colors="#57606a",
                      linestyles="dashed")
    ax.set_xticks([rec["loop"] for rec in loops])   # loops are whole numbers
    ax.set_xlabel("loop")
    ax.set_ylabel("group fitness")
    ax.grid(alpha=0.3)
    if seen:
        ax.legend(fontsize=8, title="routed to")
    return _svg(fig)
