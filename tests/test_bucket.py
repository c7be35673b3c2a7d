"""The bucket contract, run against a local folder, memory, and S3 (moto's server over HTTP)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rcbatch.errors import InputError, OutputLost, RetryLater, ServiceUnavailable
from rcbatch.worker.bucket import (
    Bucket,
    LocalBucket,
    MemoryBucket,
    NotFound,
    S3Bucket,
    make_s3_client,
    object_key,
    open_bucket,
    safe_part,
)
from rcbatch.worker.bucket.naming import TEMP_MARK
from tests.buckets import new_s3_bucket
from tests.s3server import FAKE_AWS_ENV, MotoS3Server, create_bucket, free_port

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
BAD_KEYS = ["..", "a/../b", "./a", "a/.", "/abs", "a\\b", "a\x00b", "a\nb", "a\x7fb", "",
            "a//b", "a/", f"a/{TEMP_MARK}x"]


class Source:
    """An async chunk stream of `count` 1 MiB chunks that can fail, and records how it was read."""

    def __init__(self, count: int, *, fail_after: int | None = None,
                 error: BaseException | None = None, chunk: int = MiB) -> None:
        self.count, self.fail_after, self.chunk = count, fail_after, chunk
        self.error = error or RuntimeError("download broke")
        self.pulled = 0
        self.closed = False
        self.digest = hashlib.sha256()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            for index in range(self.count):
                if index == self.fail_after:
                    raise self.error
                data = bytes([index % 251]) * self.chunk
                self.digest.update(data)
                self.pulled += 1
                yield data
        finally:
            self.closed = True


def put(bucket: Bucket, key: str, source: Any, *, run: bool = True, **options: Any) -> Any:
    """Run `put_stream` to completion (or, with run=False, return the coroutine)."""
    options.setdefault("content_type", "application/octet-stream")
    coroutine = bucket.put_stream(key, source, **options)
    return asyncio.run(coroutine) if run else coroutine


def leftovers(bucket: Bucket) -> list[str]:
    """Half-written things a failed put could leave: local temp files, S3 pending uploads."""
    if isinstance(bucket, LocalBucket):
        return [str(p) for p in bucket.root.rglob("*") if p.name.startswith(TEMP_MARK)]
    if isinstance(bucket, S3Bucket):
        answer = bucket.client.list_multipart_uploads(Bucket=bucket.bucket)
        return [upload["Key"] for upload in answer.get("Uploads", [])]
    return []


def assert_nothing_stored(bucket: Bucket, key: str) -> None:
    assert not bucket.exists(key)
    assert bucket.list_keys("") == []
    assert leftovers(bucket) == []
    with pytest.raises(NotFound):
        bucket.get_bytes(key)


# --- the contract, for every kind of bucket ---------------------------------------------------

def test_put_bytes_round_trip(bucket: Bucket) -> None:
    data = b'{"item_id": "a"}\n'
    stored = bucket.put_bytes("b1/manifest.jsonl", data, content_type="application/x-ndjson")
    assert bucket.get_bytes("b1/manifest.jsonl") == data
    assert (stored.key, stored.bytes) == ("b1/manifest.jsonl", len(data))
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.content_type == "application/x-ndjson"
    assert stored.url == bucket.url_for("b1/manifest.jsonl")


def test_small_stream_round_trip(bucket: Bucket) -> None:
    source = Source(3, chunk=1000)
    stored = put(bucket, "b1/i1/0.png", source, content_type="image/png", expected_size=3000)
    assert stored.bytes == 3000
    assert stored.sha256 == source.digest.hexdigest()
    assert hashlib.sha256(bucket.get_bytes("b1/i1/0.png")).hexdigest() == stored.sha256
    assert stored.content_type == "image/png"


def test_empty_stream_stores_an_empty_object(bucket: Bucket) -> None:
    stored = put(bucket, "b1/i1/0.txt", Source(0), content_type="text/plain")
    assert stored.bytes == 0
    assert bucket.get_bytes("b1/i1/0.txt") == b""


def test_20_mib_stream_in_1_mib_chunks(bucket: Bucket) -> None:
    source = Source(20)
    stored = put(bucket, "b1/i1/0.mp4", source, content_type="video/mp4",
                 expected_size=20 * MiB, max_bytes=20 * MiB)
    assert stored.bytes == 20 * MiB
    assert stored.sha256 == source.digest.hexdigest()
    assert hashlib.sha256(bucket.get_bytes("b1/i1/0.mp4")).hexdigest() == stored.sha256
    assert leftovers(bucket) == []


def test_a_stream_failing_halfway_stores_nothing(bucket: Bucket) -> None:
    error = RetryLater("connection reset", kind="transport")
    source = Source(20, fail_after=12, error=error)
    with pytest.raises(RetryLater) as caught:
        put(bucket, "b1/i1/0.mp4", source)
    assert caught.value is error  # the download's own error, unchanged
    assert_nothing_stored(bucket, "b1/i1/0.mp4")


def test_a_failed_stream_keeps_the_previous_object(bucket: Bucket) -> None:
    bucket.put_bytes("b1/i1/0.png", b"old", content_type="image/png")
    with pytest.raises(RuntimeError):
        put(bucket, "b1/i1/0.png", Source(3, fail_after=2))
    assert bucket.get_bytes("b1/i1/0.png") == b"old"
    assert leftovers(bucket) == []


def test_a_short_stream_stores_nothing(bucket: Bucket) -> None:
    with pytest.raises(RetryLater) as caught:
        put(bucket, "b1/i1/0.mp4", Source(12), expected_size=20 * MiB)
    assert caught.value.kind == "short_download"
    assert_nothing_stored(bucket, "b1/i1/0.mp4")


def test_a_stream_longer_than_announced_stores_nothing(bucket: Bucket) -> None:
    source = Source(5)
    with pytest.raises(RetryLater) as caught:
        put(bucket, "b1/i1/0.png", source, expected_size=2 * MiB)
    assert caught.value.kind == "size_mismatch"
    assert source.pulled == 3
    assert_nothing_stored(bucket, "b1/i1/0.png")


def test_max_bytes_stops_reading_at_once(bucket: Bucket) -> None:
    source = Source(30)
    with pytest.raises(OutputLost) as caught:
        put(bucket, "b1/i1/0.mp4", source, max_bytes=10 * MiB + 1)
    assert caught.value.kind == "too_large"
    assert source.pulled == 11
    assert source.closed
    assert_nothing_stored(bucket, "b1/i1/0.mp4")


def test_an_announced_size_over_max_bytes_reads_nothing(bucket: Bucket) -> None:
    source = Source(3)
    with pytest.raises(OutputLost):
        put(bucket, "b1/i1/0.png", source, expected_size=3 * MiB, max_bytes=MiB)
    assert source.pulled == 0
    assert_nothing_stored(bucket, "b1/i1/0.png")


def test_max_bytes_equal_to_the_size_is_accepted(bucket: Bucket) -> None:
    assert put(bucket, "b1/i1/0.png", Source(2), max_bytes=2 * MiB).bytes == 2 * MiB


def test_a_cancelled_stream_stores_nothing(bucket: Bucket) -> None:
    async def scenario() -> None:
        reached = asyncio.Event()

        async def stalled() -> AsyncIterator[bytes]:
            for index in range(12):
                yield bytes([index]) * MiB
            reached.set()
            await asyncio.Event().wait()  # the download hangs
            yield b""

        task = asyncio.create_task(bucket.put_stream("b1/i1/0.mp4", stalled(),
                                                     content_type="video/mp4"))
        await reached.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert_nothing_stored(bucket, "b1/i1/0.mp4")


def test_unsafe_keys_are_refused_everywhere(bucket: Bucket) -> None:
    for key in BAD_KEYS:
        source = Source(1)
        with pytest.raises(InputError):
            put(bucket, key, source)
        assert source.pulled == 0, key
        for call in (bucket.get_bytes, bucket.exists, bucket.delete, bucket.url_for):
            with pytest.raises(InputError):
                call(key)
        with pytest.raises(InputError):
            bucket.put_bytes(key, b"x", content_type="text/plain")
    assert bucket.list_keys("") == []


def test_list_exists_delete(bucket: Bucket) -> None:
    for key in ("b1/i1/0.png", "b1/i2/0.png", "b1/manifest.jsonl", "b10/i1/0.png"):
        bucket.put_bytes(key, key.encode(), content_type="text/plain")
    assert bucket.list_keys("b1/") == ["b1/i1/0.png", "b1/i2/0.png", "b1/manifest.jsonl"]
    assert bucket.list_keys("b1/i") == ["b1/i1/0.png", "b1/i2/0.png"]
    assert bucket.list_keys("b1") == [
        "b1/i1/0.png", "b1/i2/0.png", "b1/manifest.jsonl", "b10/i1/0.png"]
    assert bucket.list_keys("b2/") == []
    assert bucket.exists("b1/i1/0.png") and not bucket.exists("b1/i1")
    bucket.delete("b1/i1/0.png")
    bucket.delete("b1/i1/0.png")  # deleting again is fine
    assert not bucket.exists("b1/i1/0.png")
    assert len(bucket.list_keys("")) == 3
    with pytest.raises(KeyError):
        bucket.get_bytes("b1/i1/0.png")


def test_put_replaces_an_object(bucket: Bucket) -> None:
    bucket.put_bytes("b1/manifest.jsonl", b"first", content_type="application/x-ndjson")
    put(bucket, "b1/manifest.jsonl", Source(1), content_type="application/x-ndjson")
    assert len(bucket.get_bytes("b1/manifest.jsonl")) == MiB


# --- keys ----------------------------------------------------------------------------------

def test_object_key_joins_safe_parts() -> None:
    assert object_key("b1", "i1", "0.png") == "b1/i1/0.png"
    assert object_key("pre/fix", "manifest.jsonl") == "pre/fix/manifest.jsonl"


@pytest.mark.parametrize("part", ["..", ".", "", "/etc", "a\\b", "a\x00", "a\tb", "x/../y"])
def test_object_key_refuses_bad_parts(part: str) -> None:
    with pytest.raises(InputError):
        object_key("b1", part, "0.png")


def test_safe_part_keeps_plain_ids_and_marks_changed_ones() -> None:
    assert safe_part("item-0001_v2.final") == "item-0001_v2.final"
    changed = [safe_part(text) for text in ("a b", "a_b", "a/b", "a?b", "..", ".", "", "Ω")]
    assert len(set(changed)) == len(changed)
    assert safe_part("a b").startswith("a_b_")
    assert safe_part(safe_part("a b")) != safe_part("a b")  # a hashed-looking id is hashed too
    assert object_key(safe_part("\ud800"), safe_part("a\x00b"), safe_part("../../etc"))
    assert len(safe_part("x" * 5000)) <= 120
    assert safe_part("x" * 5000) != safe_part("x" * 4999)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab_./ \\\x00é", max_size=12), st.text(alphabet="ab_./ \\\x00é",
                                                                max_size=12))
def test_safe_part_is_always_a_valid_key_and_never_collides(one: str, two: str) -> None:
    assert object_key("batch", safe_part(one), "0.png")
    if one != two:
        assert safe_part(one) != safe_part(two)


# --- opening buckets -----------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "file://relative/path", "file:relative", "file:///x?y=1", "http://host/x", "ftp:///x",
    "/abs/path", "s3://", "s3://ab", "s3://bad_bucket!/x", "s3://user@bucket/x", "s3://bkt/../x",
    "s3://bkt/a//b", "",
])
def test_malformed_bucket_urls_are_input_errors(url: str) -> None:
    with pytest.raises(InputError):
        open_bucket(url)


def test_local_bucket_url_and_folders(tmp_path: Path) -> None:
    root = tmp_path / "with space"
    bucket = open_bucket(root.as_uri())
    assert isinstance(bucket, LocalBucket) and bucket.root == root
    bucket.put_bytes("b1/i1/0.png", b"png", content_type="image/png")
    assert (root / "b1" / "i1" / "0.png").read_bytes() == b"png"
    assert bucket.url_for("b1/i1/0.png") == (root / "b1/i1/0.png").as_uri()


def test_local_disk_full_on_commit_says_retry_later_and_cleans_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = LocalBucket(tmp_path)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(RetryLater) as caught:
        put(bucket, "b1/i1/0.png", Source(2))
    assert caught.value.kind == "bucket_unavailable"
    assert_nothing_stored(bucket, "b1/i1/0.png")


def test_local_unusable_folder_is_service_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    bucket = LocalBucket(tmp_path / "file" / "bucket")
    with pytest.raises(ServiceUnavailable) as caught:
        put(bucket, "b1/i1/0.png", Source(1))
    assert caught.value.kind == "bucket_refused"


def test_memory_bucket_fault_injection() -> None:
    bucket = MemoryBucket()
    bucket.fail_with = RetryLater("down", kind="bucket_unavailable")
    source = Source(3)
    with pytest.raises(RetryLater):
        put(bucket, "b1/i1/0.png", source)
    assert source.closed
    bucket.fail_with = None
    assert bucket.list_keys("") == []


# --- S3 specifics --------------------------------------------------------------------------

def test_s3_large_stream_is_a_multipart_upload_under_the_prefix(moto: MotoS3Server) -> None:
    bucket = new_s3_bucket(moto, prefix="runs/2024")
    stored = put(bucket, "b1/i1/0.mp4", Source(20), content_type="video/mp4")
    head = moto.client().head_object(Bucket=bucket.bucket, Key="runs/2024/b1/i1/0.mp4")
    assert head["ETag"].strip('"').endswith("-3")  # 8 + 8 + 4 MiB
    assert head["ContentType"] == "video/mp4"
    assert head["ContentLength"] == 20 * MiB == stored.bytes
    assert stored.url == f"s3://{bucket.bucket}/runs/2024/b1/i1/0.mp4"
    assert bucket.url == f"s3://{bucket.bucket}/runs/2024"


def test_s3_small_stream_is_a_single_put(moto: MotoS3Server) -> None:
    name = f"rcb-{uuid.uuid4().hex[:12]}"
    create_bucket(moto.endpoint_url, name)
    # opened as the product does: a URL, an endpoint and credentials from the environment
    bucket = open_bucket(f"s3://{name}/pre/fix/", s3_endpoint_url=moto.endpoint_url)
    assert isinstance(bucket, S3Bucket)
    put(bucket, "b1/i1/0.png", Source(3))
    head = moto.client().head_object(Bucket=bucket.bucket, Key="pre/fix/b1/i1/0.png")
    assert "-" not in head["ETag"]


class HeldClient:
    """A boto3 client whose `method` waits, in its thread, until the test releases it."""

    def __init__(self, client: Any, method: str) -> None:
        self.client, self.method = client, method
        self.entered, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Any:
        call = getattr(self.client, name)
        if name != self.method:
            return call

        def held(**kwargs: Any) -> Any:
            self.entered.set()
            self.release.wait(timeout=30)
            return call(**kwargs)
        return held


@pytest.mark.parametrize("method", ["create_multipart_upload", "upload_part",
                                    "complete_multipart_upload"])
def test_s3_cancelled_during_a_call_leaves_no_pending_upload(
        moto: MotoS3Server, method: str) -> None:
    plain = new_s3_bucket(moto)
    held = HeldClient(moto.client(), method)
    bucket = S3Bucket(plain.bucket, plain.prefix, client=held)

    async def scenario() -> None:
        task = asyncio.create_task(put(bucket, "b1/i1/0.mp4", Source(20), run=False))
        await asyncio.to_thread(held.entered.wait, 30)
        task.cancel()  # lands while the call is still held in its thread
        held.release.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert leftovers(plain) == []
    if method != "complete_multipart_upload":  # a completion already sent may still land whole
        assert not plain.exists("b1/i1/0.mp4")


def test_s3_missing_bucket_is_service_unavailable(moto: MotoS3Server) -> None:
    bucket = open_bucket("s3://no-such-bucket-here", s3_client=moto.client())
    with pytest.raises(ServiceUnavailable) as caught:
        bucket.put_bytes("b1/manifest.jsonl", b"{}", content_type="application/x-ndjson")
    assert caught.value.kind == "bucket_refused"
    with pytest.raises(ServiceUnavailable):
        put(bucket, "b1/i1/0.mp4", Source(10))


def test_s3_unreachable_says_retry_later() -> None:
    nobody = MotoS3Server(port=free_port())  # never started: nothing listens there
    client = nobody.client(retries={"max_attempts": 1}, connect_timeout=2)
    bucket = S3Bucket("bkt1", client=client)
    with pytest.raises(RetryLater) as caught:
        bucket.put_bytes("b1/manifest.jsonl", b"{}", content_type="application/x-ndjson")
    assert caught.value.kind == "bucket_unavailable"
    source = Source(10)
    with pytest.raises(RetryLater):
        put(bucket, "b1/i1/0.mp4", source)
    assert source.closed


def test_s3_client_configuration() -> None:
    config = make_s3_client("http://127.0.0.1:9").meta.config
    # botocore stores max_attempts=5 (retries) as total_max_attempts=6 (first try included)
    assert config.retries == {"total_max_attempts": 6, "mode": "standard"}
    assert (config.connect_timeout, config.read_timeout) == (10.0, 60.0)
    assert config.s3 == {"addressing_style": "path"}


# --- memory use ----------------------------------------------------------------------------

MEMORY_SCRIPT = """
import asyncio, json, resource, sys
from rcbatch.worker.bucket import open_bucket

async def chunks(count):
    for index in range(count):
        yield bytes([index % 251]) * (1 << 20)

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

bucket = open_bucket(sys.argv[1], s3_endpoint_url=sys.argv[2] or None)
asyncio.run(bucket.put_stream("warm-up", chunks(1), content_type="x"))  # imports, connections
before = peak()
stored = asyncio.run(bucket.put_stream("big.bin", chunks(200), content_type="x"))
print(json.dumps({"grew": peak() - before, "bytes": stored.bytes}))
"""


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_streaming_200_mib_does_not_hold_it_in_memory(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if kind == "s3":
        moto = request.getfixturevalue("moto")
        url, endpoint = new_s3_bucket(moto).url, moto.endpoint_url
    else:
        url, endpoint = tmp_path.as_uri(), ""
    env = os.environ | FAKE_AWS_ENV | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, url, endpoint], env=env,
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    assert result["bytes"] == 200 * MiB
    # local: the writer's queue (a few MiB); S3: the part filling and two being sent (8 MiB
    # each), plus client overhead; never the 200 MiB
    assert result["grew"] < 48 * MiB
