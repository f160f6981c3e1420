"""A dataset's version DAG as SVG, laid out by Graphviz's ``dot``.

One node per version (name, state, date; a link to the version's page), one edge per parent
pointing at the child, declared in merge order and numbered where a version has several parents.
Node classes say what each version is (``published``/``draft``, ``snapshot``, ``squash``,
``external`` for a parent in another dataset), and so do their shapes. Labels are Graphviz HTML
labels built from escaped text; node and edge names are version ids, so nothing a user typed
reaches the SVG unescaped.
"""

from __future__ import annotations

import html
import shutil
import subprocess

DOT_TIMEOUT = 60  # seconds; a few hundred versions lay out in well under one
_SHAPES = {"squash": "box3d", "snapshot": "note", "external": "box"}
_FILLS = {"published": "#dbeafe", "draft": "#ffffff", "publishing": "#fef3c7"}


class GraphUnavailable(RuntimeError):
    """No graph can be drawn: ``dot`` is missing or failed (pages show the versions' table)."""


def dot_source(nodes: list[dict], href) -> str:
    """The ``dot`` program for ``nodes`` (version summaries: id, name, state, created, kind,
    parents, and ``dataset`` for external ones); ``href(id)`` gives each node's link."""
    lines = ["digraph versions {",
             '  graph [rankdir=TB nodesep=0.35 ranksep=0.45 bgcolor="transparent"];',
             '  node [shape=box style="rounded,filled" fontname="DejaVu Sans" fontsize=10 '
             'color="#1f2937" margin="0.12,0.06"];',
             '  edge [color="#4b5563" fontname="DejaVu Sans" fontsize=10 fontcolor="#b91c1c"];']
    known = {n["id"] for n in nodes}
    for n in nodes:
        lines.append(f'  "{n["id"]}" [{_node_attrs(n, href(n["id"]))}];')
    for n in nodes:
        parents = [p for p in n.get("parents", []) if p in known]
        for i, parent in enumerate(parents, start=1):
            label = f' label="{i}"' if len(parents) > 1 else ""
            lines.append(f'  "{parent}" -> "{n["id"]}" [id="edge-{parent}-{n["id"]}" '
                         f'class="parent"{label}];')
    lines.append("}")
    return "\n".join(lines)


def dataset_svg(dataset: dict, href) -> str:
    """The DAG of a dataset as ``UiModel.dataset`` describes it (its versions and the parents
    they have elsewhere), as inline SVG."""
    return render_svg(dot_source(dataset["external"] + dataset["versions"], href))


def _node_attrs(n: dict, url: str) -> str:
    kind = n.get("kind") or ""
    state = n["state"]
    style = "rounded,filled" + (",dashed" if state != "published" or kind == "external" else "")
    title = n["name"] if kind != "external" else f'{n["dataset"]}@{n["name"]}'
    detail = state + (f" · {kind}" if kind else "")
    label = (f'<<b>{_esc(title)}</b><br/><font point-size="9">{_esc(detail)}</font>'
             f'<br/><font point-size="9" color="#4b5563">{_esc(n["created"][:16].replace("T", " "))}</font>>')
    fill = "#f3f4f6" if kind == "external" else _FILLS.get(state, "#ffffff")
    classes = " ".join(c for c in ("version", state, kind) if c)
    return (f'id="version-{n["id"]}" class="{classes}" shape={_SHAPES.get(kind, "box")} '
            f'style="{style}" fillcolor="{fill}" URL="{url}" target="_top" '
            f'tooltip="{_esc(title)} ({_esc(detail)})" label={label}')


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def render_svg(source: str) -> str:
    """The SVG ``dot`` makes of ``source``, without the XML prologue (ready to inline)."""
    dot = shutil.which("dot")
    if dot is None:
        raise GraphUnavailable("graphviz's dot is not installed; install graphviz to draw version graphs")
    done = subprocess.run([dot, "-Tsvg"], input=source.encode(), capture_output=True,
                          timeout=DOT_TIMEOUT, check=False)
    if done.returncode != 0:
        raise GraphUnavailable(f"dot failed: {done.stderr.decode(errors='replace').strip()[:200]}")
    svg = done.stdout.decode()
    return svg[svg.index("<svg"):]
