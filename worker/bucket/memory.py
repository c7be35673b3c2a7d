"""An in-memory bucket for unit tests: same contract, no disk, and faults on demand."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable
from dataclasses import dataclass

from rcbatch.errors import RcbatchError

from .base import NotFound, StoredObject, pump
from .naming import check_key, check_prefix


@dataclass(frozen=True)
class _Entry:
    data: bytes
    content_type: str


class MemoryBucket:
    """A dict-backed bucket. Set `fail_with` to an error to make every operation raise it.

    It holds whole objects in memory, so it is for tests only; `put_stream` still keeps a
    partial stream out of sight until it completes, like the real buckets.
    """

    def __init__(self, url: str = "memory://test") -> None:
        self.url = url.rstrip("/")
        self.objects: dict[str, _Entry] = {}
        #: when set, every call raises it (e.g. RetryLater(kind="bucket_unavailable"))
        self.fail_with: RcbatchError | None = None

    def __repr__(self) -> str:
        return f"MemoryBucket({self.url!r}, {len(self.objects)} objects)"

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str,
                         expected_size: int | None = None,
                         max_bytes: int | None = None) -> StoredObject:
        """Collect the stream aside and store it only when it completed whole."""
        check_key(key)  # `fail_with` strikes on the first chunk, as a real outage would
        sink = _MemorySink(self, key, content_type)
        digest = await pump(chunks, sink, expected_size=expected_size, max_bytes=max_bytes)
        return StoredObject(key, digest.size, digest.sha256, content_type, self.url_for(key))

    def put_bytes(self, key: str, data: bytes, *, content_type: str) -> StoredObject:
        """Store `data` under `key`."""
        self._check(key)
        self.objects[key] = _Entry(bytes(data), content_type)
        digest = hashlib.sha256(data).hexdigest()
        return StoredObject(key, len(data), digest, content_type, self.url_for(key))

    def get_bytes(self, key: str) -> bytes:
        """The stored bytes; NotFound when there are none."""
        self._check(key)
        try:
            return self.objects[key].data
        except KeyError:
            raise NotFound(key) from None

    def content_type(self, key: str) -> str:
        """The content type an object was stored with (tests check it)."""
        self._check(key)
        if key not in self.objects:
            raise NotFound(key)
        return self.objects[key].content_type

    def exists(self, key: str) -> bool:
        """Whether `key` is stored."""
        self._check(key)
        return key in self.objects

    def delete(self, key: str) -> None:
        """Forget `key` (no error when it is not there)."""
        self._check(key)
        self.objects.pop(key, None)

    def list_keys(self, prefix: str) -> list[str]:
        """Stored keys starting with `prefix`, sorted."""
        check_prefix(prefix)
        self._fail()
        return sorted(key for key in self.objects if key.startswith(prefix))

    def url_for(self, key: str) -> str:
        """`<url>/<key>`."""
        return f"{self.url}/{check_key(key)}"

    def presigned_url(self, key: str, *, expires: int) -> str:
        """A fake pre-signed URL, `https://memory.invalid/<key>?expires=N` (tests)."""
        self._check(key)
        return f"https://memory.invalid/{key}?expires={expires}"

    def _check(self, key: str) -> None:
        check_key(key)
        self._fail()

    def _fail(self) -> None:
        if self.fail_with is not None:
            raise self.fail_with


class _MemorySink:
    def __init__(self, bucket: MemoryBucket, key: str, content_type: str) -> None:
        self._bucket, self._key, self._content_type = bucket, key, content_type
        self._parts: list[bytes] = []

    async def write(self, chunk: bytes) -> None:
        self._bucket._fail()
        self._parts.append(chunk)

    def write_blocking(self, data: bytes) -> None:
        self._bucket._fail()
        self._parts.append(data)

    async def commit(self) -> None:
        self._bucket._fail()
        self._bucket.objects[self._key] = _Entry(b"".join(self._parts), self._content_type)

    async def abort(self) -> None:
        self._parts.clear()
