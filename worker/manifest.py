"""The manifest: one line per input item mapping it to its outputs, in the batch's folder.

`manifest.jsonl` follows CONTRACT.md (item_id, line, model, input, status, request_id,
attempts, outputs, error, submitted_at, finished_at, plus cost and history when known, the
local files an item's input came from (`inputs`) and the output a derived item was made
from (`parent`));
`manifest.csv` carries the same for spreadsheet users, every cell that a spreadsheet would
read as a formula (starting with = + - @, a tab or a carriage return: OWASP's rule) prefixed
with a single quote, since error texts come from the API and prompts from anyone; the JSONL
keeps every value exact. Both are rewritten whole (streamed,
never built in memory; one read of the items for both and the contact sheet) by a debounced
task while the batch runs and once more when it ends.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import IO, Any

from rcbatch.worker import contact_sheet, keys
from rcbatch.worker.bucket import Bucket, StoredObject, object_key
from rcbatch.worker.state import Store

SHEET_LIMIT = 5000
_CHUNK_BYTES = 1 << 20
_SPOOL_BYTES = 8 << 20
CSV_COLUMNS = ("item_id", "file", "line", "model", "status", "request_id", "attempts",
               "outputs", "sha256", "bytes", "error_kind", "error_message", "submitted_at",
               "finished_at", "cost", "input")
_OUTPUT_FIELDS = ("key", "bytes", "sha256", "content_type", "source_url")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _output(stored: Mapping[str, Any]) -> dict[str, Any]:
    """An output's manifest entry; `unexpected_type` names what the API announced for an
    output that was not an image or video (stored as inert `.bin`)."""
    entry = {k: stored.get(k) for k in _OUTPUT_FIELDS}
    if stored.get("unexpected_type"):
        entry["unexpected_type"] = stored["unexpected_type"]
    return entry


def manifest_line(record: Mapping[str, str]) -> dict[str, Any]:
    """The manifest entry of one item record."""
    outputs = json.loads(record.get("outputs") or "[]")
    line: dict[str, Any] = {
        "item_id": record["id"],
        "line": f"{record.get('file', '')}:{record.get('line', '')}",
        "model": record.get("model"),
        # the body as sent: bucket references (local files, parent outputs) pre-signed
        "input": json.loads(record.get("sent_input") or record.get("input") or "{}"),
        "status": keys.PUBLIC_STATE.get(record.get("state", ""), record.get("state")),
        "request_id": record.get("request_id") or None,
        "attempts": int(record.get("attempts") or 0),
        "outputs": [_output(o) for o in outputs],
        "error": json.loads(record["error"]) if record.get("error") else None,
        "submitted_at": _iso(record.get("submitted_at")),
        "finished_at": _iso(record.get("finished_at")),
    }
    if record.get("unchecked_model"):
        line["unchecked_model"] = True  # not in the catalogue: only the API checked it
    if record.get("estimate"):
        line["estimated_cost"] = float(record["estimate"])
    if record.get("cost"):
        line["cost"] = float(record["cost"])
    if record.get("history"):
        line["history"] = json.loads(record["history"])
    if record.get("sweep"):
        line["sweep"] = json.loads(record["sweep"])
    if record.get("inputs"):  # local files: [{"field", "local_path", "sha256", "key"}]
        line["inputs"] = json.loads(record["inputs"])
    if record.get("parent"):  # a derived batch's item: {"batch_id", "item_id", "output"}
        line["parent"] = json.loads(record["parent"])
    return line


def csv_row(line: Mapping[str, Any]) -> list[str]:
    """The manifest.csv row of one manifest entry, each cell safe for a spreadsheet."""
    return [inert_cell(cell) for cell in _csv_cells(line)]


def inert_cell(value: str) -> str:
    """`value`, prefixed with a single quote when a spreadsheet would run it as a formula."""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def _csv_cells(line: Mapping[str, Any]) -> list[str]:
    file, _, number = str(line["line"]).rpartition(":")
    outputs = line["outputs"]
    error = line["error"] or {}
    return [str(line["item_id"]), file, number, line["model"] or "", line["status"] or "",
            line["request_id"] or "", str(line["attempts"]),
            "|".join(o["key"] for o in outputs), "|".join(o["sha256"] for o in outputs),
            "|".join(str(o["bytes"]) for o in outputs), error.get("kind", ""),
            error.get("message", ""), line["submitted_at"] or "", line["finished_at"] or "",
            str(line.get("cost", "")), json.dumps(line["input"], ensure_ascii=False)]


def manifest_keys(bid: str) -> tuple[str, str]:
    """Bucket keys of a batch's manifest.jsonl and manifest.csv."""
    return object_key(bid, "manifest.jsonl"), object_key(bid, "manifest.csv")


async def write_manifest(store: Store, bucket: Bucket, bid: str) -> StoredObject:
    """Rewrite both manifest files and the contact sheet of a batch from one read of its
    items (a rewrite of a big batch is mostly that read); returns the JSONL object.

    The JSONL streams straight into the bucket while the CSV rows are spooled to a temporary
    file (memory up to `_SPOOL_BYTES`, then disk) and stored after it.
    """
    jsonl_key, csv_key = manifest_keys(bid)
    sheet: list[dict[str, Any]] = []
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
        lines = _kept_and_spooled(store.iter_items(bid), sheet, spool)
        stored = await bucket.put_stream(jsonl_key, _aiter(_jsonl_chunks(lines)),
                                         content_type="application/x-ndjson")
        spool.seek(0)
        await bucket.put_stream(csv_key, _aiter(iter(lambda: spool.read(_CHUNK_BYTES), b"")),
                                content_type="text/csv")
    _put_contact_sheet(store, bucket, bid, sheet)
    return stored


def write_contact_sheet(store: Store, bucket: Bucket, bid: str) -> StoredObject:
    """Write `index.html`, the contact sheet (the first SHEET_LIMIT items of a huge batch)."""
    lines = []
    for record in store.iter_items(bid):
        lines.append(manifest_line(record))
        if len(lines) >= SHEET_LIMIT:
            break
    return _put_contact_sheet(store, bucket, bid, lines)


def _put_contact_sheet(store: Store, bucket: Bucket, bid: str,
                       lines: list[dict[str, Any]]) -> StoredObject:
    name = (store.batch(bid) or {}).get("name") or bid
    page = contact_sheet.render(bid, lines, title=f"{name} ({bid})")
    return bucket.put_bytes(object_key(bid, "index.html"), page.encode(),
                            content_type="text/html; charset=utf-8")


def _kept_and_spooled(records: Iterable[Mapping[str, str]], sheet: list[dict[str, Any]],
                      spool: IO[bytes]) -> Iterator[dict[str, Any]]:
    """Each record's manifest entry; on the way, its CSV row goes to `spool` and the first
    SHEET_LIMIT entries to `sheet`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for record in records:
        line = manifest_line(record)
        writer.writerow(csv_row(line))
        if buffer.tell() > _CHUNK_BYTES:
            spool.write(buffer.getvalue().encode())
            buffer.seek(0)
            buffer.truncate()
        if len(sheet) < SHEET_LIMIT:
            sheet.append(line)
        yield line
    spool.write(buffer.getvalue().encode())


def _jsonl_chunks(lines: Iterable[Mapping[str, Any]]) -> Iterator[bytes]:
    buffer = io.StringIO()
    for line in lines:
        buffer.write(json.dumps(line, ensure_ascii=False) + "\n")
        if buffer.tell() > _CHUNK_BYTES:
            yield buffer.getvalue().encode()
            buffer = io.StringIO()
    yield buffer.getvalue().encode()


async def _aiter(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _iso(value: str | None) -> str | None:
    if not value:
        return None
    return datetime.fromtimestamp(float(value), tz=UTC).isoformat(timespec="milliseconds")
