"""The manifest: one line per input item, in input order, with CONTRACT.md's fields."""

from __future__ import annotations

import asyncio
import csv
import io
import json

import fakeredis

from rcbatch.worker import keys
from rcbatch.worker.bucket import MemoryBucket
from rcbatch.worker.manifest import CSV_COLUMNS, write_manifest
from rcbatch.worker.state import NewItem, Store

CONTRACT_FIELDS = {"item_id", "line", "model", "input", "status", "request_id", "attempts",
                   "outputs", "error", "submitted_at", "finished_at"}


def batch() -> Store:
    store = Store(fakeredis.FakeRedis())
    items = [NewItem(f"i{k}", "in.csv", k + 2, "m", {"prompt": f"p{k}", "scale": 0.5})
             for k in range(3)]
    store.register("b", {"name": "n"}, items)
    out = [{"index": 0, "key": "b/i0/0.png", "bytes": 10, "sha256": "ab" * 32,
            "content_type": "image/png", "source_url": "https://cdn/x.png", "url": "mem://x"}]
    store.transition("b", "i0", expect=(keys.PENDING,), to=keys.COMPLETED,
                     values={"request_id": "r0", "outputs": out, "submitted_at": 1000.0,
                             "finished_at": 1002.5, "+attempts": 1, "cost": 0.03})
    store.transition("b", "i1", expect=(keys.PENDING,), to=keys.FAILED,
                     values={"error": {"kind": "job_failed", "message": "refused, sorry"}})
    return store


def test_jsonl_has_one_line_per_item_in_input_order_with_the_contract_fields() -> None:
    bucket = MemoryBucket()
    asyncio.run(write_manifest(batch(), bucket, "b"))
    lines = [json.loads(x) for x in bucket.get_bytes("b/manifest.jsonl").splitlines()]
    assert [x["item_id"] for x in lines] == ["i0", "i1", "i2"]
    assert all(set(x) >= CONTRACT_FIELDS for x in lines)
    done, failed, pending = lines
    assert done["line"] == "in.csv:2" and done["input"] == {"prompt": "p0", "scale": 0.5}
    assert done["status"] == "completed" and done["attempts"] == 1 and done["cost"] == 0.03
    assert done["outputs"] == [{"key": "b/i0/0.png", "bytes": 10, "sha256": "ab" * 32,
                                "content_type": "image/png",
                                "source_url": "https://cdn/x.png"}]
    assert done["submitted_at"].startswith("1970-01-01T00:16:40")
    assert failed["error"] == {"kind": "job_failed", "message": "refused, sorry"}
    assert pending["status"] == "pending" and pending["error"] is None


def test_csv_carries_the_same_for_spreadsheets() -> None:
    bucket = MemoryBucket()
    asyncio.run(write_manifest(batch(), bucket, "b"))
    rows = list(csv.reader(io.StringIO(bucket.get_bytes("b/manifest.csv").decode())))
    assert tuple(rows[0]) == CSV_COLUMNS
    by_id = {r[0]: dict(zip(CSV_COLUMNS, r, strict=True)) for r in rows[1:]}
    assert by_id["i0"]["outputs"] == "b/i0/0.png" and by_id["i0"]["line"] == "2"
    assert by_id["i1"]["error_message"] == "refused, sorry"
    assert json.loads(by_id["i2"]["input"]) == {"prompt": "p2", "scale": 0.5}


def test_the_contact_sheet_is_written_beside_the_manifest() -> None:
    bucket = MemoryBucket()
    asyncio.run(write_manifest(batch(), bucket, "b"))
    page = bucket.get_bytes("b/index.html").decode()
    assert "i0/0.png" in page and "refused, sorry" in page


def test_a_manifest_larger_than_its_write_chunks_is_whole_in_both_files() -> None:
    store = Store(fakeredis.FakeRedis())
    prompt = "x" * 600  # ~1.3 MiB per file over 2,000 items: several 1 MiB chunks
    store.register("b", {"name": "n"}, [NewItem(f"i{k}", "in.jsonl", k + 1, "m",
                                                {"prompt": f"{k}{prompt}"})
                                        for k in range(2000)])
    bucket = MemoryBucket()
    asyncio.run(write_manifest(store, bucket, "b"))
    lines = [json.loads(x) for x in bucket.get_bytes("b/manifest.jsonl").splitlines()]
    rows = list(csv.reader(io.StringIO(bucket.get_bytes("b/manifest.csv").decode())))
    assert [x["item_id"] for x in lines] == [f"i{k}" for k in range(2000)]
    assert [r[0] for r in rows[1:]] == [f"i{k}" for k in range(2000)]
    assert json.loads(rows[-1][-1]) == {"prompt": f"1999{prompt}"}
