"""The contact sheet: `index.html` beside a batch's manifest, outputs laid out on the sweep's axes.

Rows and columns are the first two swept fields; each further combination of swept values
gets a section of its own. Batches without sweeps show one grid in input order. Every link
is relative to the batch folder (`<item>/<n>.<ext>`), so the page works opened from the local
bucket folder and served from a bucket alike. No script, no external asset.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from itertools import product
from typing import Any

Line = Mapping[str, Any]

_CSS = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px}h2{font-size:16px;margin-top:32px}
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


def sweep_axes(lines: Sequence[Line]) -> list[str]:
    """The swept fields, in the order they first appear in the items' `sweep` records."""
    axes: list[str] = []
    for line in lines:
        for name in (line.get("sweep") or {}).get("axes", {}):
            if name not in axes:
                axes.append(name)
    return axes


def render(batch_id: str, lines: Sequence[Line], *, title: str | None = None) -> str:
    """The whole `index.html` of a batch."""
    axes = sweep_axes(lines)
    body = _sections(lines, axes) if axes else _plain_grid(lines)
    heading = html.escape(title or f"batch {batch_id}")
    counts = _counts(lines)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{heading}</title>"
            f"<style>{_CSS}</style></head><body><h1>{heading}</h1>"
            f"<p class='summary'>{html.escape(counts)}</p>{body}</body></html>")


def _counts(lines: Sequence[Line]) -> str:
    tally: dict[str, int] = {}
    for line in lines:
        tally[str(line.get("status"))] = tally.get(str(line.get("status")), 0) + 1
    return ", ".join(f"{n} {state}" for state, n in sorted(tally.items()))


def _values(lines: Sequence[Line], axis: str) -> list[Any]:
    seen: list[Any] = []
    for line in lines:
        value = (line.get("sweep") or {}).get("axes", {}).get(axis, _MISSING)
        if value is not _MISSING and value not in seen:
            seen.append(value)
    return seen


_MISSING = object()


def _sections(lines: Sequence[Line], axes: list[str]) -> str:
    rows_axis = axes[0]
    cols_axis = axes[1] if len(axes) > 1 else None
    rest = axes[2:]
    parts = []
    for combo in product(*[_values(lines, a) for a in rest]) if rest else [()]:
        fixed = dict(zip(rest, combo, strict=True))
        chosen = [ln for ln in lines if _matches(ln, fixed)]
        if not chosen:
            continue
        if fixed:
            label = ", ".join(f"{k} = {_short(v)}" for k, v in fixed.items())
            parts.append(f"<h2>{html.escape(label)}</h2>")
        parts.append(_table(chosen, rows_axis, cols_axis))
    return "".join(parts)


def _matches(line: Line, fixed: Mapping[str, Any]) -> bool:
    axes = (line.get("sweep") or {}).get("axes", {})
    return all(axes.get(k, _MISSING) == v for k, v in fixed.items())


def _table(lines: Sequence[Line], rows_axis: str, cols_axis: str | None) -> str:
    row_values = _values(lines, rows_axis)
    col_values = _values(lines, cols_axis) if cols_axis else [None]
    head = "".join(f"<th>{html.escape(_label(cols_axis, v))}</th>" for v in col_values)
    out = [f"<table class='sheet'><tr><th>{html.escape(rows_axis)}</th>{head}</tr>"]
    for rv in row_values:
        out.append(f"<tr><th>{html.escape(_short(rv))}</th>")
        for cv in col_values:
            fixed = {rows_axis: rv, **({cols_axis: cv} if cols_axis else {})}
            cell = [ln for ln in lines if _matches(ln, fixed)]
            out.append("<td>" + "".join(_cell(ln) for ln in cell) + "</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def _label(axis: str | None, value: Any) -> str:
    return f"{axis} = {_short(value)}" if axis else ""


def _plain_grid(lines: Iterable[Line]) -> str:
    return "<div class='grid'>" + "".join(
        f"<div>{_cell(line)}</div>" for line in lines) + "</div>"


def _cell(line: Line) -> str:
    outputs = line.get("outputs") or []
    prompt = str((line.get("input") or {}).get("prompt", ""))
    caption = (f"<div class='cap' title='{html.escape(prompt)}'>{html.escape(prompt[:140])}"
               f"</div><div class='params'>{html.escape(_params(line))}</div>")
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
