"""The storage bucket: where workers stream finished outputs and write manifests.

    bucket = open_bucket(settings.resolved_bucket_url(), s3_endpoint_url=settings.s3_endpoint_url)
    key = object_key(batch_id, safe_part(item_id), f"{n}.{ext}")
    stored = await bucket.put_stream(key, response.aiter_bytes(), content_type=...,
                                     expected_size=length, max_bytes=settings.max_output_bytes)

Three implementations share one contract (see `base.py` for the errors and what to do about
them): `LocalBucket` (`file:///abs/path`), `S3Bucket` (`s3://bucket/prefix`) and `MemoryBucket`
(a fake for unit tests).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rcbatch.errors import InputError

from .base import Bucket, NotFound, StoredObject
from .local import LocalBucket
from .memory import MemoryBucket
from .naming import check_key, object_key, safe_part

if TYPE_CHECKING:
    from .s3 import S3Bucket, make_s3_client

__all__ = [
    "Bucket", "LocalBucket", "MemoryBucket", "NotFound", "S3Bucket", "StoredObject",
    "check_key", "make_s3_client", "object_key", "open_bucket", "safe_part",
]


def open_bucket(url: str, *, s3_endpoint_url: str | None = None,
                s3_client: Any = None) -> Bucket:
    """The bucket a URL names: `file:///abs/path` or `s3://bucket/optional/prefix`.

    For S3, `s3_client` (a boto3 client) wins over `s3_endpoint_url`; without either the usual
    AWS endpoint is used. A malformed URL or another scheme raises InputError.
    """
    scheme = url.partition(":")[0].lower() if isinstance(url, str) else ""
    if scheme == "file":
        return LocalBucket.from_url(url)
    if scheme == "s3":
        from .s3 import S3Bucket  # boto3 costs a quarter second to import: only for S3

        return S3Bucket.from_url(url, endpoint_url=s3_endpoint_url, client=s3_client)
    raise InputError(f"a bucket URL starts with file:/// or s3://, not {url!r}")


def __getattr__(name: str) -> Any:
    """`S3Bucket` and `make_s3_client`, imported (with boto3) only when asked for."""
    if name in ("S3Bucket", "make_s3_client"):
        return getattr(importlib.import_module(f"{__name__}.s3"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
