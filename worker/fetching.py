"""Streaming a finished job's outputs into the bucket, one output at a time.

Each stored output is recorded at once, so a fetch that is interrupted (a crash, a broken
download) resumes with the outputs still missing. The bucket never shows a partial object
under a final key (worker/bucket.py), and size and sha256 are computed on the way through.

A bucket that cannot be reached or refuses us never fails an item either: the outputs are paid
for and stay on the CDN for days, so the batch pauses for the outage (worker/runtime.py) and
the fetch is tried again with a capped backoff until the bucket takes it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from rcbatch.errors import ItemFailed, OutputLost, RcbatchError, RetryLater, ServiceUnavailable
from rcbatch.worker import keys
from rcbatch.worker.bucket import object_key, safe_part
from rcbatch.worker.pacing import backoff
from rcbatch.worker.refs import PendingFetch, StepRef
from rcbatch.worker.runtime import Runtime, outage_service

_GONE_RETRIES = 3
#: the only types stored under their own extension: anything else (text/html, image/svg+xml,
#: application/javascript ...) would be served beside index.html, on its origin, and linked
#: from it, so it is stored as inert bytes and flagged in the manifest
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp",
               "image/gif": "gif", "image/avif": "avif", "video/mp4": "mp4",
               "video/webm": "webm", "video/quicktime": "mov"}
_INERT = "application/octet-stream"


def fetch(rt: Runtime, ref: StepRef) -> None:
    """Store every output of one item whose step is still the ref's (`StepRef.at_seq`), then
    complete it."""
    step = rt.store.begin_step(ref, expect=(keys.FETCHING,))
    if not step.ok:
        return
    ref = ref.knowing(step.item)
    if step.deliveries > rt.limits.max_deliveries:
        rt.finish(ref, expect=(keys.FETCHING,), to=keys.FAILED, error={
            "kind": "worker_lost", "message": f"storing outputs crashed a worker "
                                              f"{step.deliveries - 1} times"})
        return
    store_outputs(rt, PendingFetch(ref, step.item, step.batch))


def hand_over(rt: Runtime, fetch: PendingFetch) -> None:
    """Leave a fetch a poll started to a fetch task instead, which counts its own start."""
    ok, _ = rt.store.transition(fetch.ref, expect=(keys.FETCHING,), values={"deliveries": 0})
    if ok:
        rt.publisher.fetch(fetch.ref.bid, fetch.ref.iid, fetch.ref.seq)


def store_outputs(rt: Runtime, fetch: PendingFetch) -> None:
    """The fetch step once started: store the outputs of `fetch.item` (its record as of the
    ref's step) into its batch's bucket, then complete it, or plan a retry, or fail it."""
    ref = fetch.ref
    try:
        stored = _store_all(rt, rt.buckets(fetch.batch.get("bucket_url", "")), ref, fetch.item)
    except RetryLater as exc:
        if outage_service(exc) == "bucket":
            _bucket_down(rt, fetch, exc)
        else:
            _retry(rt, fetch, exc, rt.limits.max_step_errors, exc.retry_after)
    except ServiceUnavailable as exc:  # the bucket refuses us (no such bucket, access denied)
        _bucket_down(rt, fetch, exc)
    except OutputLost as exc:
        # A CDN may answer 404 for a moment after the job ends: a few tries, then it is lost.
        limit = 0 if exc.kind == "too_large" else _GONE_RETRIES
        _retry(rt, fetch, exc, limit, None)
    except (ItemFailed, RcbatchError) as exc:
        rt.finish(ref, expect=(keys.FETCHING,), to=keys.FAILED,
                  error={"kind": exc.kind, "message": exc.message})
    else:
        rt.service_ok(ref.bid, "bucket", fetch.batch.get("state", ""))
        rt.finish(ref, expect=(keys.FETCHING,), to=keys.COMPLETED,
                  values={"outputs": json.dumps(stored)})


def _bucket_down(rt: Runtime, fetch: PendingFetch, exc: RcbatchError) -> None:
    """The bucket cannot take the outputs: pause the batch for the outage (at once when the
    bucket refuses us: that needs a person) and try again later, without limit."""
    rt.service_down(fetch.ref.bid, "bucket", exc, at_once=isinstance(exc, ServiceUnavailable))
    _retry(rt, fetch, exc, None, getattr(exc, "retry_after", None), counter="outage_errors")


def _store_all(rt: Runtime, bucket: Any, ref: StepRef,
               item: dict[str, str]) -> list[dict[str, Any]]:
    urls = json.loads(item.get("output_urls") or "[]")
    stored: list[dict[str, Any]] = json.loads(item.get("outputs") or "[]")
    for n, output in enumerate(urls):
        if any(s.get("index") == n for s in stored):
            continue
        beat = _Heartbeat(rt, ref)
        stored.append(rt.run(_store_one(rt, bucket, ref, n, output["url"], beat)))
        if len(stored) == len(urls):
            break  # the last one is recorded by the item's completion
        rt.store.transition(ref, expect=(keys.FETCHING,),
                            due=rt.clock() + rt.limits.step_grace,
                            values={"outputs": json.dumps(stored)})
    return sorted(stored, key=lambda s: s["index"])


class _Heartbeat:
    """Pushes the fetch's deadline forward while a long transfer streams, so the reconciler
    does not re-drive a download that is merely slow."""

    every = 15.0

    def __init__(self, rt: Runtime, ref: StepRef) -> None:
        self.rt, self.ref = rt, ref
        self.last = rt.clock()

    async def wrap(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            if self.rt.clock() - self.last > self.every:
                self.last = self.rt.clock()
                self.rt.store.transition(self.ref, expect=(keys.FETCHING,),
                                         due=self.last + self.rt.limits.step_grace)
            yield chunk


async def _store_one(rt: Runtime, bucket: Any, ref: StepRef, n: int,
                     url: str, beat: _Heartbeat) -> dict[str, Any]:
    async with rt.client.download(url) as download:
        announced = (download.content_type or _INERT).split(";")[0].strip().lower()
        extension = _EXTENSIONS.get(announced, "bin")
        key = object_key(ref.bid, safe_part(ref.iid), f"{n}.{extension}")
        obj = await bucket.put_stream(key, beat.wrap(download.aiter_bytes()),
                                      content_type=announced if extension != "bin" else _INERT,
                                      expected_size=download.content_length,
                                      max_bytes=rt.limits.max_output_bytes)
    stored = {"index": n, "key": obj.key, "bytes": obj.bytes, "sha256": obj.sha256,
              "content_type": obj.content_type, "source_url": url, "url": obj.url}
    if extension == "bin":
        stored["unexpected_type"] = announced[:100]
    return stored


def _retry(rt: Runtime, fetch: PendingFetch, exc: RcbatchError, limit: int | None,
           retry_after: float | None, counter: str = "step_errors") -> None:
    """Store the outputs again later, or fail the item once `counter` passed `limit`
    (None: never)."""
    errors = int(fetch.item.get(counter, 0)) + 1
    ref = fetch.ref
    if limit is not None and errors > limit:
        kind = exc.kind if exc.kind == "too_large" else "output_lost"
        rt.finish(ref, expect=(keys.FETCHING,), to=keys.FAILED,
                  error={"kind": kind, "message": exc.message})
        return
    delay = backoff(errors, retry_after=retry_after)
    now = rt.clock()
    ok, _ = rt.store.transition(
        ref, expect=(keys.FETCHING,), due=now + delay + rt.limits.step_grace,
        values={"seq": ref.seq + 1, "deliveries": 0, counter: errors,
                "last_error": exc.as_record()})
    if ok:
        rt.item_log(ref).warning("fetch_retry", kind=exc.kind, delay=round(delay, 2))
        rt.publisher.fetch(ref.bid, ref.iid, ref.seq + 1, countdown=delay)
