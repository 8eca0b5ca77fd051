"""What the analysis found, for people: one row per group, what pins it and where, and a drawing of one.

``fxprune inspect MODEL`` prints :func:`format_table` of :func:`group_rows`; ``--dot``/``--png`` write
:func:`group_dot` / :func:`draw_group` of one group. A group's *share of parameters* is the share of the
model's parameter elements in the tensors that have a member dim in the group (a conv weight counts in
both its output and its input group); its *share of MACs* is the share of MACs of the modules owning those
tensors, each counted without its submodules (a relative position table held by an attention module brings
that module's own matmuls, not its q/k/v projections'; matmuls between two activations elsewhere belong to no
parameter and are not attributed).

Example:
    >>> import torch, fxprune
    >>> from fxprune.inspect import group_rows, format_table
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
    >>> x = torch.randn(1, 3, 10, 10)
    >>> rows = group_rows(fxprune.analyze(m, x), m, x)
    >>> [(r.key, r.size, r.removable, r.pinned) for r in rows]
    [('0.weight:0', 8, 8, None), ('0.weight:1', 3, 0, 'model input'), ('2.weight:0', 4, 0, 'model output')]
    >>> rows[0].params, rows[0].macs   # 8*27 + 8 + 4*8*9 params; conv 0 and conv 2: 8*64*27 + 4*36*72 MACs
    (512, 24192)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, List, Optional

import networkx as nx
import torch

from .count import count
from .errors import PlanError, describe_node

__all__ = ["GroupRow", "group_rows", "own_macs", "format_table", "find_group", "default_group", "group_graph",
           "group_dot", "draw_group"]


@dataclass
class GroupRow:
    """One group: its size, removable classes, members, the parameters and MACs it holds, and its pin."""

    key: str
    size: int
    removable: int
    members: int
    params: int
    macs: int
    params_share: float
    macs_share: float
    pinned: Optional[str]
    pin_nodes: List[str] = field(default_factory=list)  # the nodes that pin it, with the user's source line


def _pin_nodes(graph: Any, group: Any) -> List[str]:
    """The nodes whose rule pinned a dim of ``group`` (op, node and source line, via describe_node)."""
    ctx, gm = getattr(graph, "ctx", None), getattr(graph, "gm", None)
    pinned_by = getattr(ctx, "pinned_by", {}) or {}
    names: List[str] = []
    for d in getattr(group, "dims", []):
        names.extend(sorted(pinned_by.get(d.id, ())))
    m = re.search(r"\((\w+)\)$", group.pinned or "")  # "dim 1 of an input to <op> (<node>)"
    if m and m.group(1) not in names:
        names.insert(0, m.group(1))
    nodes = {n.name: n for n in gm.graph.nodes} if isinstance(gm, torch.fx.GraphModule) else {}
    out: List[str] = []
    for name in dict.fromkeys(names):
        node = nodes.get(name)
        out.append(" ".join(describe_node(node).split()) if node is not None else name)
    return out


def group_rows(graph: Any, model: torch.nn.Module, example_inputs: Any) -> List[GroupRow]:
    """One :class:`GroupRow` per group of ``graph`` (the analysis of ``model``), in the graph's order."""
    macs_total, params_total, macs_by_module, _ = count(model, example_inputs, layer_wise=True)
    macs_by_module = own_macs(macs_by_module)
    params = {n: p for n, p in model.named_parameters()}
    rows = []
    for g in graph.groups:
        tensors = {name for name, _ in g.members if name in params}
        n_params = sum(params[t].numel() for t in tensors)
        owners = {t.rpartition(".")[0] for t in tensors}
        n_macs = sum(macs_by_module.get(o, 0) for o in owners if o)
        rows.append(GroupRow(
            g.key, g.size, len(g.all_classes), len(g.members), n_params, n_macs,
            n_params / params_total if params_total else 0.0, n_macs / macs_total if macs_total else 0.0,
            g.pinned, _pin_nodes(graph, g) if g.pinned else []))
    return rows


def own_macs(by_module: dict) -> dict:
    """Per-module MACs without those of submodules, from counts that include them (``count(...)[2]``).

    Example:
        >>> own_macs({"": 100, "attn": 90, "attn.qkv": 60, "attn.proj": 20, "head": 10})
        {'': 0, 'attn': 10, 'attn.qkv': 60, 'attn.proj': 20, 'head': 10}
    """
    own = dict(by_module)
    for name, n in by_module.items():
        parent = name
        while parent:  # the nearest counted ancestor does this work through ``name``
            parent = parent.rpartition(".")[0]
            if parent in by_module:
                own[parent] -= n
                break
    return own


def format_table(rows: List[GroupRow], limit: int = 0) -> str:
    """The rows as a text table, then one line per pinned group: the reason and the pinning nodes.

    ``limit`` > 0 keeps the groups holding the most parameters.
    """
    shown = sorted(rows, key=lambda r: -r.params)[:limit] if limit > 0 else rows
    header = ("#", "group", "size", "removable", "members", "params", "MACs", "status")
    lines = [header]
    for i, r in enumerate(shown, 1):
        status = "pinned" if r.pinned else "free"
        lines.append((str(i), r.key, str(r.size), str(r.removable), str(r.members),
                      f"{100 * r.params_share:.1f}%", f"{100 * r.macs_share:.1f}%", status))
    widths = [max(len(line[c]) for line in lines) for c in range(len(header))]
    text = ["  ".join(c.ljust(w) if k in (1, 7) else c.rjust(w) for k, (c, w) in enumerate(zip(line, widths))).rstrip()
            for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    free = sum(1 for r in rows if not r.pinned)
    text.append(f"{len(rows)} groups: {free} free, {len(rows) - free} pinned"
                + (f" (showing the {len(shown)} holding the most parameters)" if len(shown) < len(rows) else ""))
    pinned = [(i, r) for i, r in enumerate(shown, 1) if r.pinned]
    if pinned:
        text.append("pinned groups (reason; the nodes that pin them, with the source line):")
        for i, r in pinned:
            text.append(f"  {i} {r.key}: {r.pinned}")
            text.extend(f"      {n}" for n in r.pin_nodes[:3])
            if len(r.pin_nodes) > 3:
                text.append(f"      ... and {len(r.pin_nodes) - 3} more nodes")
    return "\n".join(text)


def find_group(graph: Any, key: str) -> Any:
    """The group whose key is ``key``, or the group of ``"<param>:<dim>"``; PlanError otherwise."""
    for g in graph.groups:
        if g.key == key:
            return g
    name, _, dim = key.rpartition(":")
    if not name or not dim.lstrip("-").isdigit():
        raise PlanError(f"group {key!r} is not of the form '<parameter qualname>:<dim>'")
    return graph.group_of(name, int(dim))


def default_group(rows: List[GroupRow]) -> str:
    """The free group holding the most parameters (any group when all are pinned)."""
    pool = [r for r in rows if not r.pinned] or rows
    return max(pool, key=lambda r: r.params).key


def group_graph(graph: Any, group: Any) -> nx.Graph:
    """Members (parameter dims) and values of ``group`` as nodes, its couplings as edges."""
    ids = {d.id for d in group.dims}
    pins = {d for d, _, _ in getattr(graph.ir, "pins", [])}
    G = nx.Graph(name=group.key)
    for d in group.dims:
        G.add_node(d.id, label=f"{d.name}:{d.dim} [{d.size}]", param=d.is_param, pinned=d.id in pins)
    for a, b in getattr(graph.ir, "_pairs", []):
        if a in ids and b in ids and a != b:
            G.add_edge(a, b)
    return G


def group_dot(graph: Any, group: Any) -> str:
    """Graphviz dot text of :func:`group_graph` (parameters as boxes, pinned dims red).

    Example:
        >>> import torch, fxprune
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        >>> graph = fxprune.analyze(m, torch.randn(1, 4))
        >>> print(group_dot(graph, graph.group_of("0.weight", 0)).splitlines()[0])
        graph "0.weight:0" {
    """
    G = group_graph(graph, group)
    out = [f'graph "{group.key}" {{', "  node [fontname=Helvetica, fontsize=10];"]
    for n, a in G.nodes(data=True):
        shape = "box" if a["param"] else "ellipse"
        color = ", color=red, fontcolor=red" if a["pinned"] else ""
        label = a["label"].replace('"', r"\"")
        out.append(f'  n{n} [label="{label}", shape={shape}{color}];')
    out.extend(f"  n{a} -- n{b};" for a, b in G.edges())
    out.append("}")
    return "\n".join(out) + "\n"


def draw_group(graph: Any, group: Any, path: str) -> None:
    """Draw :func:`group_graph` to an image file with matplotlib (parameters blue, pinned dims red)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("drawing a group needs matplotlib (pip install matplotlib); "
                          "--dot writes Graphviz text without it") from None
    G = group_graph(graph, group)
    fig, ax = plt.subplots(figsize=(max(6, len(G) ** 0.5 * 2.5),) * 2)
    pos = nx.kamada_kawai_layout(G) if 1 < len(G) <= 400 else nx.spring_layout(G, seed=0)
    colors = ["tab:red" if a["pinned"] else "tab:blue" if a["param"] else "lightgray" for _, a in G.nodes(data=True)]
    nx.draw_networkx(G, pos, ax=ax, node_color=colors, node_size=300, font_size=6,
                     labels={n: a["label"] for n, a in G.nodes(data=True)})
    ax.set_title(f"group {group.key}: {group.size} channels, {len(group.members)} members"
                 + (f" (pinned: {group.pinned})" if group.pinned else ""), fontsize=9)
    ax.axis("off")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
