"""Outputs are stored under an image or video extension only when the API says they are one:
a page, a script or an SVG would otherwise sit beside index.html on its origin."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rcbatch.worker import keys
from rcbatch.worker.manifest import manifest_line
from tests.test_steps import Harness


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "image/svg+xml",
                                          "application/javascript", ""])
def test_an_output_that_is_not_an_image_or_video_is_stored_inert_and_flagged(
        content_type: str) -> None:
    h = Harness()
    url = "https://cdn.fake-runcomfy.test/outputs/page.html"

    def output(_job: Any) -> list[str]:
        h.api.files[url] = (b"<script>alert(1)</script>", content_type)
        return [url]

    h.api._default_output = output  # type: ignore[method-assign]
    [iid] = h.register(1)
    h.drive()
    record = h.store.item("b", iid)
    assert record is not None and record["state"] == keys.COMPLETED
    [stored] = json.loads(record["outputs"])
    assert stored["key"] == f"b/{iid}/0.bin"
    assert stored["content_type"] == "application/octet-stream"
    [entry] = manifest_line(record)["outputs"]
    assert entry["unexpected_type"] == (content_type.split(";")[0] or
                                        "application/octet-stream")


def test_an_image_keeps_its_extension_and_type() -> None:
    h = Harness()
    [iid] = h.register(1)
    h.drive()
    record = h.store.item("b", iid)
    assert record is not None
    [stored] = json.loads(record["outputs"])
    assert stored["key"].endswith("/0.png") and stored["content_type"] == "image/png"
    assert "unexpected_type" not in manifest_line(record)["outputs"][0]
