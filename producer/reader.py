"""Reading generation specs from JSONL and CSV files into rows, streaming line by line.

Every defect of the file itself (encoding, quoting, JSON syntax, cell types) becomes a
`Problem`; nothing here raises for bad input. Model rules are not checked here: that is
`producer.spec.check_rows`, which calls the catalogue.
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rcbatch.errors import Problem
from rcbatch.producer.cells import coerce_cell
from rcbatch.producer.jsontext import (
    NonFinite,
    has_non_finite,
    has_surrogate,
    json_error,
    json_loads,
)
from rcbatch.producer.stdin import STDIN_NAME, LineSource, Replay, is_stdin
from rcbatch.runcomfy import catalogue

#: a physical line longer than this is refused (a generation spec is a few KiB at most)
MAX_LINE_BYTES = 1 << 20
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson", ".json-lines"})
CSV_SUFFIXES = frozenset({".csv"})
#: the `field` of a problem about the whole file, a whole row, or the CSV header
FILE_FIELD, ROW_FIELD, HEADER_FIELD = "(file)", "(row)", "(header)"

_SKIP_CHUNK = 1 << 16
#: every row without rejected fields shares this (an empty frozenset is not a singleton)
_NO_FIELDS: frozenset[str] = frozenset()
_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


@dataclass(frozen=True, slots=True)
class Row:
    """One row of an input file: where it is, and its fields as read.

    `rejected_fields` names fields the reader already reported as unreadable (and left out
    of `data`); such a row never becomes an item.
    """

    file: str
    line: int
    data: dict[str, Any]
    rejected_fields: frozenset[str] = frozenset()
    #: set on rows expanded from a sweep: {"axes": {field: value}, "repeat": k}
    sweep: dict[str, Any] | None = None


@dataclass
class ReadResult:
    """The rows read from one file and every problem found while reading it."""

    rows: list[Row] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def one_line(text: str) -> str:
    """`text` with control characters and lone surrogates escaped, so it prints on one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def read_rows(path: Path, *, default_model: str | None = None,
              display_name: str | None = None, stdin: LineSource | None = None) -> ReadResult:
    """Read every row of a .jsonl/.ndjson/.json-lines or .csv file; never raises for bad input.

    `default_model` fills in `model` where a row gives none; `display_name` (default: the
    path as given, `<stdin>` for `-`) is the FILE of every row and problem.
    """
    problems: list[Problem] = []
    rows = list(iter_rows(path, default_model=default_model, display_name=display_name,
                          problems=problems, stdin=stdin))
    return ReadResult(rows, problems)


def display_name_of(path: Path | str) -> str:
    """The FILE that rows and problems of `path` name: the path as given, `<stdin>` for `-`."""
    return STDIN_NAME if is_stdin(path) else one_line(str(path))


def iter_rows(path: Path, *, problems: list[Problem], default_model: str | None = None,
              display_name: str | None = None, stdin: LineSource | None = None) -> Iterator[Row]:
    """`read_rows` one row at a time, so a large file is never held whole in memory.

    Problems are appended to `problems` as they are found (all of them once the iterator
    is exhausted). The path `-` reads `stdin` (default: the process's standard input),
    JSON Lines or CSV as its first non-blank line shows.
    """
    sink = _Sink(one_line(display_name) if display_name is not None else display_name_of(path),
                 problems)
    if is_stdin(path):
        yield from _read_stream(stdin if stdin is not None else sys.stdin.buffer, sink,
                                default_model)
        return
    path = Path(path)
    suffix = path.suffix.lower()
    parse = _read_jsonl if suffix in JSONL_SUFFIXES else _read_csv if suffix in CSV_SUFFIXES \
        else None
    if parse is None:
        sink.add(1, FILE_FIELD, f"unsupported file type {one_line(suffix or path.name)!r}: "
                 "use .jsonl (or .ndjson) or .csv")
        return
    try:
        with open(path, "rb") as fh:
            if fh.read(2) in _UTF16_BOMS:
                sink.add(1, FILE_FIELD, "the file is UTF-16; save it as UTF-8")
            else:
                fh.seek(0)
                yield from parse(fh, sink, default_model)
    except OSError as exc:
        sink.add(1, FILE_FIELD, f"cannot read the file: {exc.strerror or exc}")


def _read_stream(stream: LineSource, sink: _Sink, default_model: str | None) -> Iterator[Row]:
    """Rows of standard input, its format told from its first non-blank line."""
    try:
        replay = Replay(stream, MAX_LINE_BYTES)
        if replay.first[:2] in _UTF16_BOMS:
            sink.add(1, FILE_FIELD, "the input is UTF-16; send it as UTF-8")
            return
        parse = _read_jsonl if replay.looks_like_jsonl() else _read_csv
        yield from parse(replay, sink, default_model)
    except OSError as exc:
        sink.add(1, FILE_FIELD, f"cannot read standard input: {exc.strerror or exc}")


class _Sink:
    """Collects the problems of one file."""

    def __init__(self, file: str, problems: list[Problem] | None = None) -> None:
        self.file = file
        self.problems: list[Problem] = [] if problems is None else problems

    def add(self, line: int, field_name: str, message: str) -> None:
        """Record one problem at `line`."""
        self.problems.append(Problem(self.file, line, one_line(field_name), one_line(message)))


def _physical_lines(fh: LineSource) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, bytes or None when over the cap, size without the line break).

    An over-long line is skipped in fixed chunks: time linear in its size, memory bounded.
    """
    lineno = 0
    while chunk := fh.readline(MAX_LINE_BYTES + 1):
        lineno += 1
        if len(chunk) <= MAX_LINE_BYTES or chunk.endswith(b"\n"):
            yield lineno, chunk, len(chunk)
            continue
        size = len(chunk)
        while not chunk.endswith(b"\n") and (chunk := fh.readline(_SKIP_CHUNK)):
            size += len(chunk)
        yield lineno, None, size - len(chunk) + len(chunk.rstrip(b"\r\n"))


def _decoded_lines(fh: LineSource, sink: _Sink) -> Iterator[tuple[int, str | None]]:
    """(line number, text) per physical line; text is None for a line already reported."""
    for lineno, raw, size in _physical_lines(fh):
        if raw is None:
            sink.add(lineno, ROW_FIELD, f"the line is {size} bytes long; the limit is "
                     f"{MAX_LINE_BYTES} bytes")
            yield lineno, None
            continue
        if lineno == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM):]
        try:
            yield lineno, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            sink.add(lineno, ROW_FIELD, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
                     f"byte {exc.start + 1} of the line); save the file as UTF-8")
            yield lineno, None


_KIND_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "true/false",
               type(None): "null", int: "a number", float: "a number"}


def _read_jsonl(fh: LineSource, sink: _Sink, default_model: str | None) -> Iterator[Row]:
    """Rows of a JSON Lines file: one object per non-blank line."""
    seen_any = False
    for lineno, text in _decoded_lines(fh, sink):
        stripped = None if text is None else text.strip(" \t\r\n")  # JSON's whitespace
        if stripped == "":
            continue
        if not seen_any and stripped == "[":
            sink.add(lineno, FILE_FIELD, "this is a JSON array; JSONL needs one JSON object "
                     "per line and no enclosing [ ]")
            return
        seen_any = True
        row = _jsonl_row(sink, lineno, text, default_model) if text is not None else None
        if row is not None:
            yield row
    if not seen_any:
        sink.add(1, FILE_FIELD, "the file is empty: expected one JSON object per line")


def _jsonl_row(sink: _Sink, lineno: int, text: str, default_model: str | None) -> Row | None:
    """The row of one JSONL line, or None (with the problem recorded)."""
    duplicates: list[str] = []
    try:
        value = json_loads(text, duplicates)
    except (ValueError, RecursionError) as exc:
        sink.add(lineno, ROW_FIELD, f"not valid JSON: {json_error(exc)}")
        return None
    if not isinstance(value, dict):
        kind = "NaN/Infinity" if isinstance(value, NonFinite) else _KIND_NAMES[type(value)]
        sink.add(lineno, ROW_FIELD, f"expected a JSON object, got {kind}")
        return None
    rejected = _reject_json_fields(sink, lineno, text, value, duplicates)
    data = {k: v for k, v in value.items() if k not in rejected}
    _apply_default_model(data, default_model)
    return Row(sink.file, lineno, data, _fields(rejected))


def _reject_json_fields(sink: _Sink, lineno: int, text: str, value: dict[str, Any],
                        duplicates: list[str]) -> set[str]:
    """Report and name the top-level fields of a parsed line that cannot be used."""
    rejected: set[str] = set()
    escapes = bool(_SURROGATE_ESCAPE.search(text))
    for key in dict.fromkeys(duplicates):
        sink.add(lineno, key, "duplicate key in one JSON object; keep only one")
        rejected.add(key)
    for key, item in value.items():
        if has_non_finite(item):
            sink.add(lineno, key, "NaN and Infinity are not allowed; use a finite number")
            rejected.add(key)
        elif escapes and (has_surrogate(item) or has_surrogate(key)):
            sink.add(lineno, key, "contains a lone surrogate \\u escape, which is not text")
            rejected.add(key)
    return rejected


def _fields(names: set[str]) -> frozenset[str]:
    return frozenset(names) if names else _NO_FIELDS


def _apply_default_model(data: dict[str, Any], default_model: str | None) -> None:
    """Fill `model` from the default when the row gives none (a row's own value wins)."""
    if default_model and data.get("model") in (None, ""):
        data["model"] = default_model


def _read_csv(fh: LineSource, sink: _Sink, default_model: str | None) -> Iterator[Row]:
    """Rows of a CSV file: a header row, then one item per row."""
    records = _csv_records(_decoded_lines(fh, sink), sink)
    first = next(records, None)
    if first is None:
        sink.add(1, FILE_FIELD, "the file is empty: expected a header row and one row per item")
        return
    header_line, header_cells = first
    names = _csv_header(sink, header_line, header_cells) if header_cells is not None else None
    if names is None:
        return
    seen_record = False
    for lineno, cells in records:
        seen_record = True
        if cells is None:
            continue
        if len(cells) != len(names):
            sink.add(lineno, ROW_FIELD, f"the row has {len(cells)} cells but the header has "
                     f"{len(names)}")
            continue
        yield _csv_row(sink, lineno, dict(zip(names, cells, strict=True)), default_model)
    if not seen_record:
        sink.add(header_line, FILE_FIELD, "the file has a header but no rows")


def _csv_records(lines: Iterator[tuple[int, str | None]],
                 sink: _Sink) -> Iterator[tuple[int, list[str] | None]]:
    """(first line, cells) per non-blank CSV record; cells is None when already reported."""
    spoiled = [0]  # lines already reported; a record touching one is dropped

    def feed() -> Iterator[str]:
        for _lineno, text in lines:
            if text is None:
                spoiled[0] += 1
            yield "\n" if text is None else text

    reader = csv.reader(feed(), strict=True)
    end = 0
    while True:
        before = spoiled[0]
        try:
            cells: list[str] | None = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if spoiled[0] == before:
                sink.add(end + 1, ROW_FIELD, _csv_error(exc))
            cells = None
        start, end = end + 1, reader.line_num
        if spoiled[0] != before:
            cells = None
        if cells is None or any(cell.strip() for cell in cells):
            yield start, cells


_CSV_ERRORS = {  # the csv module's wording -> ours
    "unexpected end of data": 'a quoted cell starting on this line is never closed (missing ")',
    "expected after": 'bad quoting: a closing " must be followed by a comma or the end of the '
                      'line (write "" for a quote inside a quoted cell)',
    "field larger than field limit": f"a cell is longer than {csv.field_size_limit()} "
                                     "characters (is a quote left open?)",
    "new-line character": "a carriage return (\\r) inside an unquoted cell; save the file "
                          "with \\n or \\r\\n line endings, or quote the cell",
}


def _csv_error(exc: csv.Error) -> str:
    """A user-facing description of a CSV syntax error."""
    text = str(exc)
    return next((ours for needle, ours in _CSV_ERRORS.items() if needle in text),
                f"bad CSV: {text}")


def _csv_header(sink: _Sink, lineno: int, cells: list[str]) -> list[str] | None:
    """The column names, or None when a name is empty or repeated (each reported)."""
    names = [cell.strip() for cell in cells]
    first_seen: dict[str, int] = {}
    ok = True
    for column, name in enumerate(names, start=1):
        if not name:
            sink.add(lineno, HEADER_FIELD, f"column {column} has no name")
            ok = False
        elif name in first_seen:
            sink.add(lineno, name, f"duplicate column name (columns {first_seen[name]} and "
                     f"{column})")
            ok = False
        else:
            first_seen[name] = column
    return names if ok else None


def _csv_row(sink: _Sink, lineno: int, cells: dict[str, str],
             default_model: str | None) -> Row:
    """One CSV record as a row, cells converted by the kinds of the row's model's fields."""
    given = {name: cell for name, cell in cells.items() if cell.strip()}
    data: dict[str, Any] = {}
    if "model" in given:
        data["model"] = given.pop("model").strip()
    _apply_default_model(data, default_model)
    kinds = _field_kinds(data.get("model"))
    rejected: set[str] = set()
    for name, cell in given.items():
        try:
            data[name] = cell.strip() if name == "id" else coerce_cell(kinds.get(name), cell)
        except ValueError as exc:
            sink.add(lineno, name, str(exc))
            rejected.add(name)
    return Row(sink.file, lineno, data, _fields(rejected))


def _field_kinds(model: Any) -> dict[str, str]:
    """Field name -> kind for a known model; empty for a missing or unknown one."""
    try:
        spec = catalogue.get_model(model) if isinstance(model, str) else None
    except KeyError:
        spec = None
    return {name: f.kind for name, f in spec.fields.items()} if spec is not None else {}
