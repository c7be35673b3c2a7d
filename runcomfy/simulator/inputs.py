"""Fetching a job's input images, as the real API does (only with `fetch_inputs` on).

Each image URL of an accepted body is fetched with a plain GET (loopback and plain http
allowed: this is a test server on the tester's machine). Its sha256 and size are recorded
with the job (`GET /_sim/jobs`); a URL that does not answer 200 with an image makes the job
fail with an error naming it, the way a generation fails on an unreadable input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from rcbatch.runcomfy.addresses import safe_url
from rcbatch.runcomfy.catalogue import MODELS
from rcbatch.runcomfy.imageinfo import identify

#: the most bytes read from one input URL (the largest page limit is 15 MB)
MAX_INPUT_BYTES = 32 * 1024 * 1024


@dataclass
class FetchedInputs:
    """What fetching a body's input images found: one record per URL, and the first error."""

    records: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def image_urls(model_id: str, body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """`(label, url)` for each image URL of `body` (`image_urls[0]`, ...)."""
    spec = MODELS.get(model_id)
    if spec is None or spec.image_field is None:
        return []
    values = body.get(spec.image_field)
    if not isinstance(values, list):
        return []
    return [(f"{spec.image_field}[{i}]", v) for i, v in enumerate(values) if isinstance(v, str)]


async def fetch_inputs(model_id: str, body: Mapping[str, Any], *,
                       timeout: float = 10.0) -> FetchedInputs:
    """Fetch every input image of `body`; never raises for a bad URL (it is the error)."""
    found = FetchedInputs()
    targets = image_urls(model_id, body)
    if not targets:
        return found
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client:
        for label, url in targets:
            record, error = await _fetch_one(client, label, url)
            found.records.append(record)
            if error and found.error is None:
                found.error = f"input {label} ({safe_url(url)}): {error}"
    return found


async def _fetch_one(client: httpx.AsyncClient, label: str,
                     url: str) -> tuple[dict[str, Any], str | None]:
    record: dict[str, Any] = {"field": label, "url": safe_url(url), "status": None,
                              "sha256": None, "bytes": None}
    try:
        async with client.stream("GET", url) as response:
            record["status"] = response.status_code
            if response.status_code != 200:
                return record, f"answered HTTP {response.status_code}, not 200"
            data = await _read_capped(response)
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
        return record, f"could not be fetched ({type(exc).__name__})"
    if data is None:
        return record, f"is larger than {MAX_INPUT_BYTES} bytes"
    record.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    if identify(data) is None:
        return record, "is not an image"
    return record, None


async def _read_capped(response: httpx.Response) -> bytes | None:
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > MAX_INPUT_BYTES:
            return None
    return bytes(data)
