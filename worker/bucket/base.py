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
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from rcbatch.errors import OutputLost, RetryLater

UNAVAILABLE = "bucket_unavailable"
REFUSED = "bucket_refused"


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


class Sink(Protocol):
    """One upload in progress: receives chunks, then either commits or aborts."""

    async def write(self, chunk: bytes) -> None:
        """Take the next chunk (storage errors come out already translated)."""
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

    On any failure (ours, the storage's or the iterator's) the sink is aborted and the iterator
    closed, then the exception propagates unchanged.
    """
    if expected_size is not None and max_bytes is not None and expected_size > max_bytes:
        raise _too_large(max_bytes)
    iterator = aiter(chunks)
    hasher, size = hashlib.sha256(), 0
    try:
        async for chunk in iterator:
            size += len(chunk)
            _check_running_size(size, expected_size, max_bytes)
            hasher.update(chunk)
            if chunk:
                await sink.write(bytes(chunk))
        if expected_size is not None and size < expected_size:
            raise RetryLater(f"stream ended after {size} of {expected_size} bytes",
                             kind="short_download")
        await sink.commit()
    except BaseException:
        await sink.abort()
        await _close(iterator)
        raise
    return Digest(size=size, sha256=hasher.hexdigest())


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
