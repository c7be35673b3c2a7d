"""What every bucket offers, and the one streaming loop all of them share.

Errors a bucket raises, by what the caller should do:

- `NotFound` (a `KeyError`): `get_bytes` of a key that is not there.
- `OutputLost(kind="too_large")`: the stream went past `max_bytes` (reading stopped at once).
- `RetryLater(kind="short_download")`: the stream ended before `expected_size` bytes;
  `RetryLater(kind="size_mismatch")`: it went past `expected_size`. Download again.
- `RetryLater(kind="bucket_unavailable")`: the storage could not be reached or is momentarily
  unable to store (connection refused or timed out after botocore's own retries, S3 5xx or
  throttling, a full disk, an I/O error). A worker retries the item later; nothing is lost.
- `ServiceUnavailable(kind="bucket_refused")`: the storage answered but refuses us (no such S3
  bucket, access denied, missing credentials, permission denied or read-only folder). Retrying
  will not help until someone fixes the configuration: stop (the CLI exits 3).
- `InputError`: an unsafe key (see `naming.py`) or a malformed bucket URL.
- Anything the chunk iterator itself raises propagates unchanged, after cleanup.

Whatever is raised, nothing is ever left under the final key by a failed `put_stream`, and a
partial object never appears. (One unavoidable exception, on S3: when the final request, the
completion or the single put, was already sent as the call was cancelled or its answer was lost,
the object may land there, whole and correct.)

How `pump` moves the bytes: a small stream (at most `SMALL_STREAM` bytes, as announced or as
seen so far: the common tiny image) is hashed and written on the event loop, chunk by chunk,
because handing it to a thread would cost more than the work. A larger one is handed over in
batches of about `BATCH` bytes to one background thread that hashes and stores them while the
loop goes on receiving, so a download runs at about the slower of the network and the storage
rather than their sum (hashlib and file writes release the GIL). At most `BUFFER_LIMIT` bytes wait
for that thread, plus the batch being gathered: memory stays bounded whatever the speeds. The size
checks stay on the loop, so a stream over `max_bytes` stops being read at once; the thread's
errors come out of `put_stream` exactly as the sink raised them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import queue
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from rcbatch.errors import OutputLost, RetryLater

UNAVAILABLE = "bucket_unavailable"
REFUSED = "bucket_refused"

MiB = 1024 * 1024
#: streams up to this size (announced, or seen so far) stay on the event loop
SMALL_STREAM = 1 * MiB
#: a larger stream goes to the writer thread in batches of about this size...
BATCH = 1 * MiB
#: ...with at most this much queued for it and not stored yet
BUFFER_LIMIT = 4 * MiB


class NotFound(KeyError):
    """The key is not in the bucket (a KeyError, like a missing dict key)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"no object at key {self.key!r}"


@dataclass(frozen=True)
class StoredObject:
    """One object as stored: what the manifest records for an output."""

    key: str
    bytes: int
    sha256: str
    content_type: str
    url: str


@runtime_checkable
class Bucket(Protocol):
    """Where workers store outputs and manifests: a local folder, S3, or memory (tests)."""

    url: str

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str,
                         expected_size: int | None = None,
                         max_bytes: int | None = None) -> StoredObject:
        """Store a stream under `key` without holding it in memory; all or nothing."""
        ...

    def put_bytes(self, key: str, data: bytes, *, content_type: str) -> StoredObject:
        """Store a small object (a manifest) under `key`, replacing any old one atomically."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; raises NotFound when there is none."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object under `key`; no error when there is none."""
        ...

    def list_keys(self, prefix: str) -> list[str]:
        """Every key starting with `prefix` (plain string prefix, `""` for all), sorted."""
        ...

    def url_for(self, key: str) -> str:
        """Where `key` lives, as a `file://` or `s3://` URL."""
        ...

    def presigned_url(self, key: str, *, expires: int) -> str:
        """A URL the API can GET `key` with for `expires` seconds; InputError when this
        bucket cannot serve one (a local folder)."""
        ...


class Sink(Protocol):
    """One upload in progress: receives chunks, then either commits or aborts.

    `pump` calls `write` (small streams) and then `write_blocking` (once the stream proved
    large), never both at the same time, and calls `commit` or `abort` only once no
    `write_blocking` is running any more. Errors come out already translated.
    """

    async def write(self, chunk: bytes) -> None:
        """Take the next chunk of a small stream, on the event loop."""
        ...

    def write_blocking(self, data: bytes) -> None:
        """Take the next batch of a large stream, on pump's writer thread (may block)."""
        ...

    async def commit(self) -> None:
        """Make the object visible under its final key."""
        ...

    async def abort(self) -> None:
        """Throw away whatever was written; best effort, never raises."""
        ...


@dataclass
class Digest:
    """Size and SHA-256 of a stream, measured on the way through."""

    size: int
    sha256: str


async def pump(chunks: AsyncIterable[bytes], sink: Sink, *, expected_size: int | None,
               max_bytes: int | None) -> Digest:
    """Feed `chunks` into `sink` while measuring them; commit only if the stream was whole.

    On any failure (ours, the storage's or the iterator's) the writer thread is stopped and
    waited for, the sink aborted and the iterator closed, then the exception propagates
    unchanged.
    """
    if expected_size is not None and max_bytes is not None and expected_size > max_bytes:
        raise _too_large(max_bytes)
    iterator = aiter(chunks)
    hasher, size = hashlib.sha256(), 0
    writer: _Writer | None = None
    # An announced large stream goes to the writer thread from its first chunk.
    small = -1 if expected_size is not None and expected_size > SMALL_STREAM else SMALL_STREAM
    try:
        async for chunk in iterator:
            size += len(chunk)
            _check_running_size(size, expected_size, max_bytes)
            if writer is None and size > small:
                writer = _Writer(sink, hasher)
            if writer is not None:
                await writer.put(bytes(chunk))
            elif chunk:
                hasher.update(chunk)
                await sink.write(bytes(chunk))
        if expected_size is not None and size < expected_size:
            raise RetryLater(f"stream ended after {size} of {expected_size} bytes",
                             kind="short_download")
        if writer is not None:
            await writer.finish()
        await sink.commit()
    except BaseException as exc:
        await _clean_up(writer, sink, iterator, exc)
        raise
    return Digest(size=size, sha256=hasher.hexdigest())


async def _clean_up(writer: _Writer | None, sink: Sink, iterator: AsyncIterator[bytes],
                    exc: BaseException) -> None:
    interrupted = await writer.stop() if writer is not None else False
    await sink.abort()
    await _close(iterator)
    if interrupted and not isinstance(exc, asyncio.CancelledError):
        # The cancellation absorbed while the thread wound down must not be lost.
        raise asyncio.CancelledError() from exc


class _Writer:
    """pump's background thread for one large stream: hashes and stores batches of chunks.

    The loop gathers chunks into batches and queues them; it waits whenever `BUFFER_LIMIT`
    bytes are queued and not yet stored. The thread reports progress, its end and its error
    back to the loop with `call_soon_threadsafe`.
    """

    def __init__(self, sink: Sink, hasher: Any) -> None:
        self._sink, self._hasher = sink, hasher
        self._loop = asyncio.get_running_loop()
        self._queue: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
        self._batch: list[bytes] = []
        self._gathered = 0  # bytes in `_batch`
        self._queued = 0  # bytes handed to the thread and not stored yet
        self._progress, self._ended = asyncio.Event(), asyncio.Event()
        self._error: BaseException | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="rcbatch-bucket-writer",
                                        daemon=True)
        self._thread.start()

    async def put(self, chunk: bytes) -> None:
        """Add a chunk; queue the batch once it is big enough, waiting for room if need be."""
        if chunk:
            self._batch.append(chunk)
            self._gathered += len(chunk)
        if self._gathered >= BATCH:
            await self._hand_over()

    async def finish(self) -> None:
        """Queue the rest and wait until all of it is stored; raises the thread's error."""
        if self._batch:
            await self._hand_over()
        self._queue.put(None)
        await self._ended.wait()
        self._thread.join()  # it has nothing left to do but return: microseconds
        self._raise_failure()

    async def stop(self) -> bool:
        """Make the thread drop what is still queued and wait until it has ended, even
        through cancellations (at most one batch or part away); True if one was absorbed."""
        self._stopping = True
        self._queue.put(None)
        interrupted = False
        while not self._ended.is_set():
            try:
                await self._ended.wait()
            except asyncio.CancelledError:
                interrupted = True
        self._thread.join()
        return interrupted

    async def _hand_over(self) -> None:
        # With nothing queued a batch goes through whatever its size: one huge chunk must
        # not wait forever.
        while self._queued and self._queued + self._gathered > BUFFER_LIMIT:
            self._raise_failure()
            self._progress.clear()
            await self._progress.wait()
        self._raise_failure()
        batch, self._batch = self._batch, []
        self._queued += self._gathered
        self._gathered = 0
        self._queue.put(batch)

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            while (batch := self._queue.get()) is not None:
                if self._stopping:
                    continue  # drain until the end mark
                # One hash update and one write per batch, not per 64 KiB chunk: every such
                # call takes the GIL back from the loop, and that contention cost far more
                # than this copy (per-chunk calls stored 1 GiB at ~60 % of this speed).
                data = b"".join(batch) if len(batch) > 1 else batch[0]
                self._hasher.update(data)
                self._sink.write_blocking(data)
                self._notify(self._stored, len(data))
        except BaseException as exc:
            self._error = exc
        finally:
            self._notify(self._on_ended)

    def _notify(self, callback: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(callback, *args)

    def _stored(self, size: int) -> None:
        self._queued -= size
        self._progress.set()

    def _on_ended(self) -> None:
        self._ended.set()
        self._progress.set()


def _check_running_size(size: int, expected_size: int | None, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise _too_large(max_bytes)
    if expected_size is not None and size > expected_size:
        raise RetryLater(f"stream went past its expected {expected_size} bytes",
                         kind="size_mismatch")


def _too_large(max_bytes: int) -> OutputLost:
    return OutputLost(f"output is larger than the {max_bytes}-byte limit", kind="too_large")


async def _close(iterator: AsyncIterator[bytes]) -> None:
    # Stop the producer (e.g. an HTTP download) at once instead of leaving it suspended.
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    with contextlib.suppress(Exception):  # the original error matters more than this one
        await aclose()
