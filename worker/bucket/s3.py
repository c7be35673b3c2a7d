"""A bucket on S3 or any S3-compatible store (MinIO, moto): `s3://bucket/optional/prefix`.

Streams go up as a multipart upload, one part at a time as chunks arrive: chunks are buffered
until they add up to `part_size` (8 MiB), then sent as one part (so only one part is ever held).
The upload is completed only once the whole stream has arrived and checked out, and aborted on any
failure, so a partial object never appears. Streams shorter than one part use a single
`put_object`.

boto3 is synchronous. The upload calls of `put_stream` run in a thread (`asyncio.to_thread`)
because a part upload can take seconds, and blocking the event loop that long would stall the
other downloads sharing it and could trip their timeouts. The other methods (`put_bytes`,
`get_bytes`, ...) are plain synchronous calls for small objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import AsyncIterable, Callable, Iterator
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
                 part_size: int = PART_SIZE) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.part_size = part_size
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

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key


class _MultipartSink:
    """One upload: at most one part of chunks buffered, and a multipart upload once one fills."""

    def __init__(self, bucket: S3Bucket, key: str, content_type: str) -> None:
        self._s3, self._key, self._content_type = bucket, key, content_type
        # Chunks are kept as given and joined once per part: one copy per byte, not three.
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._inflight: asyncio.Future[None] | None = None

    async def write(self, chunk: bytes) -> None:
        """Buffer the chunk; once a full part has arrived, send it (and wait for it)."""
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered >= self._s3.part_size:
            await self._send_part(self._take())

    async def commit(self) -> None:
        """A single put for a small object; else the last part and the completion."""
        if self._upload_id is None:
            await self._run(self._put_object, self._take())
            return
        if self._buffered:
            await self._send_part(self._take())
        await self._run(self._complete)

    async def abort(self) -> None:
        """Wait for a call still running in its thread, then abort the multipart upload."""
        if self._inflight is not None and not self._inflight.done():
            with contextlib.suppress(BaseException):
                await asyncio.wait([self._inflight])
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

    async def _send_part(self, data: bytes) -> None:
        if self._upload_id is None:
            await self._run(self._create)
        await self._run(self._upload_part, data)

    async def _run(self, call: Callable[..., None], *args: Any) -> None:
        # Shielded, so a cancelled caller leaves the thread's outcome readable for `abort`.
        self._inflight = asyncio.ensure_future(asyncio.to_thread(call, *args))
        await asyncio.shield(self._inflight)

    # The methods below run in a worker thread and record their outcome on `self` themselves,
    # so the state is right even when the awaiting coroutine was cancelled meanwhile.

    def _create(self) -> None:
        with _translated(f"start the upload of {self._key}"):
            answer = self._s3.client.create_multipart_upload(
                Bucket=self._s3.bucket, Key=self._key, ContentType=self._content_type)
        self._upload_id = answer["UploadId"]

    def _upload_part(self, data: bytes) -> None:
        number = len(self._parts) + 1
        with _translated(f"upload part {number} of {self._key}"):
            answer = self._s3.client.upload_part(
                Bucket=self._s3.bucket, Key=self._key, UploadId=self._upload_id,
                PartNumber=number, Body=data)
        self._parts.append({"ETag": answer["ETag"], "PartNumber": number})

    def _complete(self) -> None:
        with _translated(f"complete the upload of {self._key}"):
            self._s3.client.complete_multipart_upload(
                Bucket=self._s3.bucket, Key=self._key, UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts})
        self._upload_id = None  # nothing left to abort: the object is whole

    def _put_object(self, body: bytes) -> None:
        with _translated(f"store {self._key}"):
            self._s3.client.put_object(Bucket=self._s3.bucket, Key=self._key, Body=body,
                                       ContentType=self._content_type)


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
