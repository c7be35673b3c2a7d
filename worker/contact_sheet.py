"""The contact sheet: `index.html` beside a batch's manifest, outputs laid out on the sweep's axes.

Each sweep (the items one input row expands to) gets a grid of its own: rows and columns on
its first two swept fields, a section per further combination of its swept values. A row
swept by `repeat` alone gets a grid on `repeat`. Items that are not part of any sweep follow
in a section of their own; a batch without sweeps is one grid in input order. Every item of
`lines` appears exactly once. Every link is relative to the batch folder
(`<item>/<n>.<ext>`; a derived item's parent output is `../<parent batch>/...`), so the
page works opened from the local bucket folder and served from a bucket alike. No script,
no external asset.

Rendering is linear in the items: each line is read once, and the grids are put together
from dictionaries keyed on the swept values, never by scanning the items per cell.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Line = Mapping[str, Any]

_CSS = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px}h2{font-size:16px;margin-top:32px}h3{font-size:14px;margin-top:24px}
table.sheet{border-collapse:collapse}
table.sheet th{background:#eee;padding:6px 10px;font-weight:600;font-size:13px}
table.sheet td{border:1px solid #ddd;vertical-align:top;padding:6px;width:220px;background:#fff}
.cell img,.cell video{width:200px;height:200px;object-fit:contain;background:#f0f0f0;display:block}
.thumbs{display:flex;flex-wrap:wrap;gap:4px}
.thumbs img{width:96px;height:96px}
.cap{font-size:12px;margin-top:4px;word-break:break-word}
.params{color:#666;font-size:11px}
.failed{border:2px solid #c33;color:#a00;padding:8px;min-height:60px}
.pending{color:#888;padding:8px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,220px);gap:10px}
"""


@dataclass(slots=True)
class _Entry:
    """One swept item: its manifest line and its swept values (read from the line once)."""

    line: Line
    axes: dict[str, Any]


@dataclass(slots=True)
class _Sweep:
    """The items of one sweep, which all sweep the same fields in the same order."""

    axes: list[str]
    entries: list[_Entry] = field(default_factory=list)


def sweep_axes(lines: Sequence[Line]) -> list[str]:
    """All swept fields of a batch, in the order they first appear in the items' sweeps."""
    axes: dict[str, None] = {}
    for line in lines:
        axes.update(dict.fromkeys(_swept(line)))
    return list(axes)


def render(batch_id: str, lines: Sequence[Line], *, title: str | None = None) -> str:
    """The whole `index.html` of a batch."""
    sweeps, others = _grouped(lines)
    heading = html.escape(title or f"batch {batch_id}")
    counts = _counts(lines)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{heading}</title>"
            f"<style>{_CSS}</style></head><body><h1>{heading}</h1>"
            f"<p class='summary'>{html.escape(counts)}</p>{_body(sweeps, others)}"
            f"</body></html>")


def _swept(line: Line) -> dict[str, Any]:
    """The swept values of an item; a repeat-only sweep is swept on `repeat`."""
    meta = line.get("sweep") or {}
    axes = dict(meta.get("axes") or {})
    if not axes and meta.get("repeat") is not None:
        axes["repeat"] = meta["repeat"]
    return axes


def _grouped(lines: Iterable[Line]) -> tuple[list[_Sweep], list[Line]]:
    """The sweeps in order of their first item (one per input row and swept fields), and the
    items not part of any sweep."""
    sweeps: dict[tuple[str, tuple[str, ...]], _Sweep] = {}
    others: list[Line] = []
    for line in lines:
        axes = _swept(line)
        if not axes:
            others.append(line)
            continue
        key = (str(line.get("line") or ""), tuple(axes))
        if key not in sweeps:
            sweeps[key] = _Sweep(list(axes))
        sweeps[key].entries.append(_Entry(line, axes))
    return list(sweeps.values()), others


def _body(sweeps: Sequence[_Sweep], others: Sequence[Line]) -> str:
    if not sweeps:
        return _plain_grid(others)
    titled = len(sweeps) > 1 or bool(others)
    parts = [_sweep(one, titled) for one in sweeps]
    if others:
        parts.append(f"<section class='others'><h2>Not swept ({_items(len(others))})</h2>"
                     f"{_plain_grid(others)}</section>")
    return "".join(parts)


def _sweep(one: _Sweep, titled: bool) -> str:
    """One sweep's grid(s); under a heading of its own when the page holds more than it."""
    head = ""
    if titled:
        first = one.entries[0].line
        source = str(first.get("line") or "").rsplit("/", 1)[-1]  # no local paths on the page
        label = " · ".join(x for x in (source, str(first.get("model") or ""),
                                       f"{_items(len(one.entries))} by {', '.join(one.axes)}") if x)
        head = f"<h2>{html.escape(label)}</h2>"
    body = _sections(one.entries, one.axes, "h3" if titled else "h2")
    return f"<section class='sweep'>{head}{body}</section>"


def _items(n: int) -> str:
    return f"{n} item{'' if n == 1 else 's'}"


def _counts(lines: Iterable[Line]) -> str:
    tally: dict[str, int] = {}
    for line in lines:
        state = str(line.get("status"))
        tally[state] = tally.get(state, 0) + 1
    return ", ".join(f"{n} {state}" for state, n in sorted(tally.items()))


def _sections(entries: Sequence[_Entry], axes: list[str], level: str) -> str:
    """A table per combination of the fields past the first two, in sweep order."""
    rest = axes[2:]
    sections: dict[tuple[str, ...], list[_Entry]] = {}
    for entry in entries:
        sections.setdefault(tuple(_key(entry.axes[a]) for a in rest), []).append(entry)
    rank = [_first_seen(_key(e.axes[a]) for e in entries) for a in rest]
    parts = []
    for combo in sorted(sections, key=lambda c: [r[k] for r, k in zip(rank, c, strict=True)]):
        chosen = sections[combo]
        if rest:
            label = ", ".join(f"{a} = {_short(chosen[0].axes[a])}" for a in rest)
            parts.append(f"<{level}>{html.escape(label)}</{level}>")
        parts.append(_table(chosen, axes[0], axes[1] if len(axes) > 1 else None))
    return "".join(parts)


def _table(entries: Sequence[_Entry], rows_axis: str, cols_axis: str | None) -> str:
    """A grid of rows by columns; a list of the pairs there are when most cells would be
    empty (fields zipped together rather than crossed), so the page stays linear in size."""
    rows: dict[str, Any] = {}
    cols: dict[str, Any] = {}
    cells: dict[tuple[str, str], list[Line]] = {}
    for entry in entries:
        row, col = entry.axes[rows_axis], entry.axes[cols_axis] if cols_axis else None
        rk, ck = _key(row), _key(col)
        rows.setdefault(rk, row)
        cols.setdefault(ck, col)
        cells.setdefault((rk, ck), []).append(entry.line)
    if cols_axis and len(rows) * len(cols) > 2 * len(cells):
        return _pair_table(rows, cols, cells, rows_axis, cols_axis)
    return _grid_table(rows, cols, cells, rows_axis, cols_axis)


def _grid_table(rows: Mapping[str, Any], cols: Mapping[str, Any],
                cells: Mapping[tuple[str, str], list[Line]], rows_axis: str,
                cols_axis: str | None) -> str:
    head = "".join(f"<th>{html.escape(_label(cols_axis, v))}</th>" for v in cols.values())
    out = [f"<table class='sheet'><tr><th>{html.escape(rows_axis)}</th>{head}</tr>"]
    for rk, row in rows.items():
        out.append(f"<tr><th>{html.escape(_short(row))}</th>")
        for ck in cols:
            out.append("<td>" + "".join(_cell(ln) for ln in cells.get((rk, ck), ())) + "</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def _pair_table(rows: Mapping[str, Any], cols: Mapping[str, Any],
                cells: Mapping[tuple[str, str], list[Line]], rows_axis: str,
                cols_axis: str) -> str:
    row_rank, col_rank = _first_seen(rows), _first_seen(cols)
    out = [f"<table class='sheet pairs'><tr><th>{html.escape(rows_axis)}</th>"
           f"<th>{html.escape(cols_axis)}</th><th></th></tr>"]
    for rk, ck in sorted(cells, key=lambda p: (row_rank[p[0]], col_rank[p[1]])):
        out.append(f"<tr><th>{html.escape(_short(rows[rk]))}</th>"
                   f"<th>{html.escape(_short(cols[ck]))}</th><td>"
                   + "".join(_cell(ln) for ln in cells[(rk, ck)]) + "</td></tr>")
    out.append("</table>")
    return "".join(out)


def _first_seen(keys: Iterable[str]) -> dict[str, int]:
    """Each key's position among the distinct keys, in order of first appearance."""
    rank: dict[str, int] = {}
    for key in keys:
        rank.setdefault(key, len(rank))
    return rank


def _key(value: Any) -> str:
    """A swept value as a dictionary key (values may be lists or objects)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _label(axis: str | None, value: Any) -> str:
    return f"{axis} = {_short(value)}" if axis else ""


def _plain_grid(lines: Iterable[Line]) -> str:
    return "<div class='grid'>" + "".join(
        f"<div>{_cell(line)}</div>" for line in lines) + "</div>"


def _cell(line: Line) -> str:
    outputs = line.get("outputs") or []
    prompt = str((line.get("input") or {}).get("prompt", ""))
    caption = (f"<div class='cap' title='{html.escape(prompt)}'>{html.escape(prompt[:140])}"
               f"</div><div class='params'>{html.escape(_params(line))}</div>"
               f"{_parent_link(line)}")
    item = html.escape(str(line.get("item_id")))
    if line.get("status") == "completed" and outputs:
        media = "".join(_media(o, first=(i == 0)) for i, o in enumerate(outputs))
        wrap = "thumbs" if len(outputs) > 1 else ""
        return f"<div class='cell' id='{item}'><div class='{wrap}'>{media}</div>{caption}</div>"
    error = line.get("error") or {}
    if error or line.get("status") in ("failed", "cancelled", "submit_uncertain"):
        text = f"{line.get('status')}: {error.get('kind', '')}: {error.get('message', '')}"
        return (f"<div class='cell' id='{item}'><div class='failed'>{html.escape(text)}</div>"
                f"{caption}</div>")
    return (f"<div class='cell' id='{item}'><div class='pending'>"
            f"{html.escape(str(line.get('status')))}</div>{caption}</div>")


def _media(output: Mapping[str, Any], *, first: bool) -> str:
    href = html.escape(_relative(str(output["key"])))
    kind = str(output.get("content_type", "")).split("/")[0]
    if kind == "video":
        return (f"<video src='{href}' controls preload='metadata' muted></video>"
                f"<a href='{href}'>open video</a>")
    return f"<a href='{href}'><img src='{href}' loading='lazy' alt='output'></a>"


def _parent_link(line: Line) -> str:
    """A derived item's link to the output it was made from (in the parent batch's folder,
    a sibling of this one)."""
    parent = line.get("parent")
    if not isinstance(parent, Mapping) or not parent.get("key"):
        return ""
    href = html.escape("../" + str(parent["key"]))
    label = html.escape(f"from {parent.get('item_id')} #{parent.get('output')}")
    return f"<div class='params'><a class='parent' href='{href}'>{label}</a></div>"


def _relative(key: str) -> str:
    """Output keys are `<batch>/<item>/<n>.<ext>`; the page sits in `<batch>/`."""
    return key.split("/", 1)[1] if "/" in key else key


def _params(line: Line) -> str:
    shown = {k: v for k, v in (line.get("input") or {}).items()
             if k not in ("prompt", "image_urls", "images")}
    return json.dumps(shown, ensure_ascii=False)[:200]


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."
