"""A bucket on S3 or any S3-compatible store (MinIO, moto): `s3://bucket/optional/prefix`.

Streams go up as a multipart upload as chunks arrive: chunks are buffered until they add up to
`part_size` (8 MiB), then sent as one part while the next one fills, with at most
`parts_in_flight` (2) parts being sent at once: memory stays at about `parts_in_flight + 2`
parts. The upload is completed (parts listed in order of part number) only once the whole stream
has arrived and checked out, and aborted on any failure, so a partial object never appears.
Streams shorter than one part use a single `put_object`.

boto3 is synchronous (and its clients are thread-safe). The upload calls of `put_stream` run in
threads because a part upload can take seconds, and blocking the event loop that long would
stall the other downloads sharing it and could trip their timeouts: a large stream's parts are
buffered and started from `pump`'s writer thread (see `base.py`) and sent by a small pool of
`parts_in_flight` threads. The other methods (`put_bytes`, `get_bytes`, ...) are plain
synchronous calls for small objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import re
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from rcbatch.errors import InputError, RetryLater, ServiceUnavailable

from .base import REFUSED, UNAVAILABLE, NotFound, StoredObject, pump
from .naming import check_key, check_prefix

PART_SIZE = 8 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's smallest part (all but the last)
#: part uploads of one stream sent at the same time; memory: this many parts being sent, one
#: filling, and briefly one more while a part is joined
PARTS_IN_FLIGHT = 2
_BUCKET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$")
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
_TRANSIENT_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                              "InternalError", "ServiceUnavailable", "NoSuchUpload"})
_TRANSIENT_ERRORS = (BotoConnectionError, HTTPClientError, IncompleteReadError,
                     ConnectionError, TimeoutError)


def make_s3_client(endpoint_url: str | None = None, *, connect_timeout: float = 10.0,
                   read_timeout: float = 60.0) -> Any:
    """A boto3 S3 client with explicit timeouts and standard retries.

    Credentials come from the usual AWS variables and files. With an endpoint URL (MinIO, moto)
    path-style addressing is used, as those servers expect.
    """
    options: dict[str, Any] = {
        "connect_timeout": connect_timeout, "read_timeout": read_timeout,
        "retries": {"max_attempts": 5, "mode": "standard"},
    }
    if endpoint_url:
        options["s3"] = {"addressing_style": "path"}
    # A fresh session per client: boto3's default session is not safe to share across threads.
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint_url or None, config=Config(**options))


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split `s3://bucket/optional/prefix` into (bucket, prefix); InputError when malformed."""
    parts = urlsplit(url)
    if (parts.scheme != "s3" or parts.query or parts.fragment or "@" in parts.netloc
            or not _BUCKET_NAME.match(parts.netloc)):
        raise InputError(f"an S3 bucket URL looks like s3://bucket/optional/prefix, not {url!r}")
    prefix = parts.path.strip("/")
    if prefix:
        check_key(prefix)
    return parts.netloc, prefix


class S3Bucket:
    """A bucket in S3 under an optional key prefix; the boto3 client comes in from outside."""

    def __init__(self, bucket: str, prefix: str = "", *, client: Any,
                 part_size: int = PART_SIZE, parts_in_flight: int = PARTS_IN_FLIGHT) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes")
        if parts_in_flight < 1:
            raise ValueError("parts_in_flight must be at least 1")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.part_size = part_size
        self.parts_in_flight = parts_in_flight
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    @classmethod
    def from_url(cls, url: str, *, endpoint_url: str | None = None,
                 client: Any = None) -> S3Bucket:
        """Open `s3://bucket/prefix`, making a client for `endpoint_url` unless one is given."""
        bucket, prefix = parse_s3_url(url)
        if client is None:
            client = make_s3_client(endpoint_url)
        return cls(bucket, prefix, client=client)

    def __repr__(self) -> str:
        return f"S3Bucket({self.url!r})"

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str,
                         expected_size: int | None = None,
                         max_bytes: int | None = None) -> StoredObject:
        """Stream to S3 part by part; the object appears only when the stream was whole."""
        sink = _MultipartSink(self, self._full(key), content_type)
        digest = await pump(chunks, sink, expected_size=expected_size, max_bytes=max_bytes)
        return StoredObject(key, digest.size, digest.sha256, content_type, self.url_for(key))

    def put_bytes(self, key: str, data: bytes, *, content_type: str) -> StoredObject:
        """Store a small object with one `put_object`."""
        full = self._full(key)
        with _translated(f"store {full}"):
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data,
                                   ContentType=content_type)
        digest = hashlib.sha256(data).hexdigest()
        return StoredObject(key, len(data), digest, content_type, self.url_for(key))

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; NotFound when there is none."""
        full = self._full(key)
        with _translated(f"read {full}"):
            try:
                answer = self.client.get_object(Bucket=self.bucket, Key=full)
            except ClientError as exc:
                if _code(exc) in _MISSING:
                    raise NotFound(key) from None
                raise
            return bytes(answer["Body"].read())

    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key` (a HEAD request)."""
        full = self._full(key)
        with _translated(f"look up {full}"):
            try:
                self.client.head_object(Bucket=self.bucket, Key=full)
            except ClientError as exc:
                if _code(exc) in _MISSING:
                    return False
                raise
        return True

    def delete(self, key: str) -> None:
        """Delete the object (S3 answers the same whether or not it was there)."""
        full = self._full(key)
        with _translated(f"delete {full}"):
            self.client.delete_object(Bucket=self.bucket, Key=full)

    def list_keys(self, prefix: str) -> list[str]:
        """Every key starting with `prefix`, relative to the bucket's own prefix, sorted."""
        check_prefix(prefix)
        base = self.prefix + "/" if self.prefix else ""
        keys: list[str] = []
        with _translated(f"list {base + prefix or self.bucket}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base + prefix)
            for page in pages:
                keys += [item["Key"][len(base):] for item in page.get("Contents", [])]
        return sorted(keys)

    def url_for(self, key: str) -> str:
        """`s3://bucket/prefix/key`."""
        return f"s3://{self.bucket}/{self._full(key)}"

    def presigned_url(self, key: str, *, expires: int) -> str:
        """A URL anyone may GET the object with for `expires` seconds (computed locally,
        no request is sent; the API fetches input images with it)."""
        full = self._full(key)
        with _translated(f"sign a URL for {full}"):
            url: str = self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": full}, ExpiresIn=expires)
        return url

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key


class _MultipartSink:
    """One upload: the next part fills while up to `parts_in_flight` earlier ones are sent."""

    def __init__(self, bucket: S3Bucket, key: str, content_type: str) -> None:
        self._s3, self._key, self._content_type = bucket, key, content_type
        # Chunks are kept as given and joined once per part: one copy per byte, not three.
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._upload_id: str | None = None
        self._numbers = itertools.count(1)
        self._etags: dict[int, str] = {}
        self._sending: deque[Future[None]] = deque()  # oldest first
        self._pool: ThreadPoolExecutor | None = None
        self._call: asyncio.Future[None] | None = None

    async def write(self, chunk: bytes) -> None:
        """Buffer a chunk of a small stream (a full part, if ever, goes up from a thread)."""
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered >= self._s3.part_size:
            await self._run(self.write_blocking, b"")

    def write_blocking(self, data: bytes) -> None:
        """Buffer a batch (on pump's writer thread); start sending each part as it fills,
        first waiting for a free slot when `parts_in_flight` are being sent."""
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
        if self._buffered >= self._s3.part_size:
            self._send(self._take)

    async def commit(self) -> None:
        """A single put for a small object; else the last part, every part done, completion.

        Two separate calls, so a cancellation while parts are still going up aborts the upload
        rather than completing it.
        """
        if self._upload_id is None:
            await self._run(self._put_object, self._take())
            return
        await self._run(self._drain)
        await self._run(self._complete)
        self._close_pool()

    async def abort(self) -> None:
        """Wait for calls still running in threads, then abort the multipart upload."""
        if self._call is not None:  # first: it may still start a part
            await _settle(self._call)
        if self._sending:  # parts still going up could land in the upload after its abort
            await _settle(asyncio.ensure_future(
                asyncio.to_thread(futures_wait, list(self._sending))))
        self._close_pool()
        self._take()
        if self._upload_id is not None:
            # Synchronous on purpose: it must run even if the task is being cancelled again.
            with contextlib.suppress(Exception):
                self._s3.client.abort_multipart_upload(
                    Bucket=self._s3.bucket, Key=self._key, UploadId=self._upload_id)

    def _take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks, self._buffered = [], 0
        return data

    async def _run(self, call: Callable[..., None], *args: Any) -> None:
        # Shielded, so a cancelled caller leaves the thread's outcome readable for `abort`.
        self._call = asyncio.ensure_future(asyncio.to_thread(call, *args))
        await asyncio.shield(self._call)

    # The methods below run in threads and record their outcome on `self` themselves, so the
    # state is right even when the awaiting coroutine was cancelled meanwhile.

    def _send(self, take: Callable[[], bytes]) -> None:
        if self._upload_id is None:
            self._create()
        while len(self._sending) >= self._s3.parts_in_flight:
            self._sending.popleft().result()  # raises that part's (translated) error
        # Joined only now that a slot is free: the joining briefly holds the part twice.
        data = take()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._s3.parts_in_flight,
                                            thread_name_prefix="rcbatch-s3-part")
        self._sending.append(self._pool.submit(self._upload_part, next(self._numbers), data))

    def _drain(self) -> None:
        if self._buffered:
            self._send(self._take)
        while self._sending:
            self._sending.popleft().result()

    def _create(self) -> None:
        with _translated(f"start the upload of {self._key}"):
            answer = self._s3.client.create_multipart_upload(
                Bucket=self._s3.bucket, Key=self._key, ContentType=self._content_type)
        self._upload_id = answer["UploadId"]

    def _upload_part(self, number: int, data: bytes) -> None:
        with _translated(f"upload part {number} of {self._key}"):
            answer = self._s3.client.upload_part(
                Bucket=self._s3.bucket, Key=self._key, UploadId=self._upload_id,
                PartNumber=number, Body=data)
        self._etags[number] = answer["ETag"]

    def _complete(self) -> None:
        parts = [{"ETag": self._etags[number], "PartNumber": number}
                 for number in sorted(self._etags)]
        with _translated(f"complete the upload of {self._key}"):
            self._s3.client.complete_multipart_upload(
                Bucket=self._s3.bucket, Key=self._key, UploadId=self._upload_id,
                MultipartUpload={"Parts": parts})
        self._upload_id = None  # nothing left to abort: the object is whole

    def _put_object(self, body: bytes) -> None:
        with _translated(f"store {self._key}"):
            self._s3.client.put_object(Bucket=self._s3.bucket, Key=self._key, Body=body,
                                       ContentType=self._content_type)

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


async def _settle(call: asyncio.Future[Any]) -> None:
    # A further cancellation only cuts the wait short: the caller is cleaning up already.
    with contextlib.suppress(BaseException):
        await asyncio.wait([call])


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    """Turn boto errors into RetryLater (may clear up) or ServiceUnavailable (needs a human)."""
    try:
        yield
    except ClientError as exc:
        detail = exc.response.get("Error", {}).get("Message") or ""
        message = f"S3: cannot {action}: {_code(exc)} ({_status(exc)}) {detail}".rstrip()
        if _status(exc) >= 500 or _status(exc) in (408, 429) or _code(exc) in _TRANSIENT_CODES:
            raise RetryLater(message, kind=UNAVAILABLE) from exc
        raise ServiceUnavailable(message, kind=REFUSED) from exc
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise ServiceUnavailable(f"S3: cannot {action}: no usable AWS credentials",
                                 kind=REFUSED) from exc
    except _TRANSIENT_ERRORS as exc:
        raise RetryLater(f"S3: cannot {action}: {exc}", kind=UNAVAILABLE) from exc
    except BotoCoreError as exc:
        raise ServiceUnavailable(f"S3: cannot {action}: {exc}", kind=REFUSED) from exc
