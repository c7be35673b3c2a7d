"""Large streams through a bucket: pump's writer thread, the local writeback, S3 parts in flight.

The bucket contract itself (every kind of bucket, small streams) is tests/test_bucket.py; its
fixtures are shared from there.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from rcbatch.errors import RetryLater, ServiceUnavailable
from rcbatch.worker.bucket import Bucket, LocalBucket, S3Bucket, local
from rcbatch.worker.bucket.base import BATCH, BUFFER_LIMIT, pump
from rcbatch.worker.bucket.s3 import MIN_PART_SIZE
from tests.buckets import new_s3_bucket
from tests.s3server import MotoS3Server
from tests.test_bucket import MiB, Source, assert_nothing_stored, leftovers, put

# --- large streams: the writer thread -------------------------------------------------------

KiB64 = 64 * 1024
WRITER = "rcbatch-bucket-writer"


def writer_threads() -> list[threading.Thread]:
    """pump's writer threads still alive (there must be none once a put_stream returned)."""
    return [thread for thread in threading.enumerate() if thread.name == WRITER]


class RecordingSink:
    """A Sink that records which thread got which bytes; `gate`, when given, holds each
    `write_blocking` until set, and `fail` is raised by the first one after the gate."""

    def __init__(self, *, gate: threading.Event | None = None,
                 fail: BaseException | None = None) -> None:
        self.gate, self.fail = gate, fail
        self.on_loop = self.on_thread = 0
        self.threads: set[str] = set()
        self.entered = threading.Event()
        self.running = False
        self.events: list[str] = []
        self.digest = hashlib.sha256()

    async def write(self, chunk: bytes) -> None:
        self.on_loop += len(chunk)
        self.digest.update(chunk)

    def write_blocking(self, data: bytes) -> None:
        self.running = True
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        try:
            if self.gate is not None:
                assert self.gate.wait(timeout=10)
            if self.fail is not None:
                raise self.fail
            self.on_thread += len(data)
            self.digest.update(data)
        finally:
            self.running = False

    async def commit(self) -> None:
        self.events.append("commit")

    async def abort(self) -> None:
        self.events.append("abort" if not self.running else "abort while writing")


def pump_into(sink: RecordingSink, source: Any, **options: Any) -> Any:
    options.setdefault("expected_size", None)
    options.setdefault("max_bytes", None)
    return pump(source, sink, **options)


@pytest.mark.parametrize(("count", "announced", "on_loop"), [
    (8, True, 8 * KiB64),  # 512 KiB announced: all on the loop
    (8, False, 8 * KiB64),
    (48, True, 0),  # 3 MiB announced: all on the writer thread
    (48, False, 16 * KiB64),  # 3 MiB unannounced: the first MiB on the loop, then the thread
])
def test_small_streams_stay_on_the_loop_and_large_ones_go_to_the_writer(
        count: int, announced: bool, on_loop: int) -> None:
    source, sink = Source(count, chunk=KiB64), RecordingSink()
    size = count * KiB64
    digest = asyncio.run(pump_into(sink, source, expected_size=size if announced else None))
    assert (digest.size, digest.sha256) == (size, source.digest.hexdigest())
    assert sink.digest.hexdigest() == digest.sha256  # every byte, in order
    assert (sink.on_loop, sink.on_thread) == (on_loop, size - on_loop)
    assert sink.threads == ({WRITER} if on_loop < size else set())
    assert sink.events == ["commit"]
    assert writer_threads() == []


def test_a_slow_store_holds_the_download_back_within_the_buffer_bound() -> None:
    gate = threading.Event()
    source, sink = Source(256, chunk=KiB64), RecordingSink(gate=gate)  # 16 MiB

    async def scenario() -> Any:
        task = asyncio.create_task(pump_into(sink, source, expected_size=16 * MiB))
        await asyncio.to_thread(sink.entered.wait, 10)
        for _ in range(20):  # the source never waits: the pump runs until it must wait for room
            await asyncio.sleep(0)
        buffered = source.pulled * KiB64 - sink.on_thread
        assert not task.done() and sink.on_thread == 0
        assert BUFFER_LIMIT <= buffered <= BUFFER_LIMIT + BATCH + KiB64
        gate.set()
        return await task

    digest = asyncio.run(scenario())
    assert (digest.size, digest.sha256) == (16 * MiB, source.digest.hexdigest())
    assert sink.digest.hexdigest() == digest.sha256


def test_a_storage_error_in_the_writer_thread_surfaces_unchanged() -> None:
    gate = threading.Event()
    error = RetryLater("disk full", kind="bucket_unavailable")
    source, sink = Source(256, chunk=KiB64), RecordingSink(gate=gate, fail=error)

    async def scenario() -> None:
        task = asyncio.create_task(pump_into(sink, source, expected_size=16 * MiB))
        await asyncio.to_thread(sink.entered.wait, 10)
        gate.set()  # the pump is waiting for room by now: the failure must wake it up
        with pytest.raises(RetryLater) as caught:
            await task
        assert caught.value is error

    asyncio.run(scenario())
    assert sink.events == ["abort"]
    assert source.closed and source.pulled < 256
    assert writer_threads() == []


def test_a_cancelled_pump_waits_for_its_writer_thread() -> None:
    gate = threading.Event()
    source, sink = Source(256, chunk=KiB64), RecordingSink(gate=gate)

    async def scenario() -> None:
        task = asyncio.create_task(pump_into(sink, source, expected_size=16 * MiB))
        await asyncio.to_thread(sink.entered.wait, 10)
        task.cancel()
        for _ in range(20):
            await asyncio.sleep(0)
        task.cancel()  # cancelled again while it waits for the thread: still waits
        for _ in range(20):
            await asyncio.sleep(0)
        assert not task.done()  # the thread is still inside write_blocking
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert sink.events == ["abort"]  # not "abort while writing"
    assert sink.on_thread <= BATCH + KiB64  # what was queued was dropped, not stored
    assert source.closed
    assert writer_threads() == []


@pytest.mark.parametrize("announced", [True, False])
def test_a_large_stream_in_download_sized_chunks_is_stored_exactly(
        bucket: Bucket, announced: bool) -> None:
    source = Source(300, chunk=KiB64 - 17)  # ~19 MiB (3 S3 parts), chunks aligned to nothing
    size = 300 * (KiB64 - 17)
    stored = put(bucket, "b1/i1/0.mp4", source, expected_size=size if announced else None,
                 max_bytes=size)
    expected = b"".join(bytes([index % 251]) * (KiB64 - 17) for index in range(300))
    assert bucket.get_bytes("b1/i1/0.mp4") == expected
    assert (stored.bytes, stored.sha256) == (size, hashlib.sha256(expected).hexdigest())
    assert leftovers(bucket) == []
    assert writer_threads() == []


def test_a_source_failing_while_the_writer_thread_works_stores_nothing(bucket: Bucket) -> None:
    error = RetryLater("connection reset", kind="transport")
    source = Source(300, fail_after=250, error=error, chunk=KiB64)
    with pytest.raises(RetryLater) as caught:
        put(bucket, "b1/i1/0.mp4", source, expected_size=300 * KiB64)
    assert caught.value is error
    assert_nothing_stored(bucket, "b1/i1/0.mp4")
    assert writer_threads() == []


class FillingFile:
    """A file object whose writes fail with `errno` once `room` bytes were written."""

    def __init__(self, file: Any, room: int, code: int) -> None:
        self.file, self.room, self.code = file, room, code
        self.failed_in: str | None = None

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.failed_in = threading.current_thread().name
            raise OSError(self.code, os.strerror(self.code))
        self.room -= len(data)
        return int(self.file.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


@pytest.mark.parametrize(("code", "error"), [(errno.ENOSPC, RetryLater),
                                             (errno.EROFS, ServiceUnavailable)])
def test_local_write_error_in_the_writer_thread_is_translated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, error: type) -> None:
    bucket, opened = LocalBucket(tmp_path), []
    real_fdopen = os.fdopen

    def fdopen(fd: int, mode: str) -> FillingFile:
        opened.append(FillingFile(real_fdopen(fd, mode), 5 * MiB, code))
        return opened[-1]

    monkeypatch.setattr(os, "fdopen", fdopen)
    source = Source(20)
    with pytest.raises(error) as caught:
        put(bucket, "b1/i1/0.mp4", source, expected_size=20 * MiB)
    monkeypatch.undo()
    assert opened[0].failed_in == WRITER
    assert caught.value.kind == ("bucket_unavailable" if error is RetryLater else "bucket_refused")
    assert isinstance(caught.value.__cause__, OSError)
    assert source.closed and source.pulled < 20
    assert_nothing_stored(bucket, "b1/i1/0.mp4")


def test_local_large_stream_starts_the_writeback_as_it_goes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    advised: list[tuple[int, int]] = []
    real_fadvise = os.posix_fadvise

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append((offset, offset + length))
        real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    monkeypatch.setattr(local, "WRITEBACK_EVERY", 4 * MiB)
    stored = put(LocalBucket(tmp_path), "b1/i1/0.mp4", Source(18), expected_size=18 * MiB)
    assert stored.bytes == 18 * MiB
    # each call covers the bytes written since the last one and the range before them
    assert advised == [(0, 4 * MiB), (0, 8 * MiB), (4 * MiB, 12 * MiB), (8 * MiB, 16 * MiB)]


class FlakyClient:
    """A boto3 client wrapper: counts concurrent part uploads and can fail or reorder them."""

    def __init__(self, client: Any, *, fail_part: int | None = None,
                 error: Exception | None = None, hold_first: bool = False) -> None:
        self.client, self.fail_part, self.error = client, fail_part, error
        self.hold_first, self.second_done = hold_first, threading.Event()
        self.lock = threading.Lock()
        self.active = self.most = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def upload_part(self, **kwargs: Any) -> Any:
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            number = kwargs["PartNumber"]
            if number == self.fail_part and self.error is not None:
                raise self.error
            if number == 1 and self.hold_first:  # finishes after part 2: only if both run
                assert self.second_done.wait(timeout=10), "part 2 never ran alongside part 1"
            answer = self.client.upload_part(**kwargs)
            if number == 2:
                self.second_done.set()
            return answer
        finally:
            with self.lock:
                self.active -= 1


def s3_over(moto: MotoS3Server, client: Any, **options: Any) -> tuple[S3Bucket, S3Bucket]:
    """The same fresh bucket twice: through `client`, and through the plain moto client."""
    plain = new_s3_bucket(moto)
    return S3Bucket(plain.bucket, plain.prefix, client=client, **options), plain


def test_s3_sends_two_parts_at_once_and_completes_them_in_order(moto: MotoS3Server) -> None:
    client = FlakyClient(moto.client(), hold_first=True)
    bucket, plain = s3_over(moto, client, part_size=MIN_PART_SIZE)
    source = Source(160, chunk=KiB64 * 2)  # 20 MiB: four 5 MiB parts
    stored = put(bucket, "b1/i1/0.mp4", source, expected_size=20 * MiB)
    assert client.most == 2  # part 1 finished after part 2, and never more than two at once
    head = moto.client().head_object(Bucket=plain.bucket, Key=f"{plain.prefix}/b1/i1/0.mp4")
    assert head["ETag"].strip('"').endswith("-4")
    data = plain.get_bytes("b1/i1/0.mp4")
    assert hashlib.sha256(data).hexdigest() == stored.sha256 == source.digest.hexdigest()
    assert leftovers(plain) == []


def test_s3_parts_in_flight_is_a_bound(moto: MotoS3Server) -> None:
    client = FlakyClient(moto.client())
    bucket, _ = s3_over(moto, client, part_size=MIN_PART_SIZE, parts_in_flight=1)
    put(bucket, "b1/i1/0.mp4", Source(20), expected_size=20 * MiB)
    assert client.most == 1
    with pytest.raises(ValueError):
        S3Bucket("bkt1", client=client, parts_in_flight=0)


@pytest.mark.parametrize(("code", "status", "error"), [
    ("SlowDown", 503, RetryLater), ("AccessDenied", 403, ServiceUnavailable)])
def test_s3_part_upload_error_is_translated_and_aborts_the_upload(
        moto: MotoS3Server, code: str, status: int, error: type) -> None:
    failure = ClientError({"Error": {"Code": code, "Message": "no"},
                           "ResponseMetadata": {"HTTPStatusCode": status}}, "UploadPart")
    client = FlakyClient(moto.client(), fail_part=2, error=failure)
    bucket, plain = s3_over(moto, client, part_size=MIN_PART_SIZE)
    source = Source(40)
    with pytest.raises(error) as caught:
        put(bucket, "b1/i1/0.mp4", source, expected_size=40 * MiB)
    assert caught.value.__cause__ is failure
    assert "upload part 2" in caught.value.message
    assert source.closed and source.pulled < 40
    assert_nothing_stored(plain, "b1/i1/0.mp4")
    assert writer_threads() == []
