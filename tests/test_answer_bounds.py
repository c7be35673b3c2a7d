"""API answers are bounded in size and in time, on real loopback sockets: a server that
trickles or streams without end makes a retryable error (a submit that was sent: uncertain),
while output downloads, which may legitimately take long, keep working."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
from typing import Any

import httpx
import pytest

from rcbatch.config import Settings
from rcbatch.errors import RcbatchError, RetryLater, SubmitUncertain, TransportError
from rcbatch.runcomfy.client import RunComfyClient
from rcbatch.runcomfy.transport import AiohttpTransport
from rcbatch.worker.wiring import api_client, limits_from
from tests.test_transport import Behaviour, serve

__all__ = ["serve"]  # the fixture used below

TOKEN = "tok-bounds-0123456789"
MODEL = "vendor/model/x"
RID = "req-1"
#: the server side of a trickle never runs longer than this, whatever the client does
TRICKLE_LIMIT = 30.0
QUICK = httpx.Timeout(connect=0.3, read=0.3, write=0.3, pool=0.3)


def _trickle(head: str, byte: bytes = b" ", every: float = 0.05) -> Behaviour:
    """Send the answer's head, then one byte of body every `every` seconds (each read wait
    is short, so only an overall deadline ends it)."""
    def send(sock: socket.socket, request: bytes) -> None:
        sock.sendall(head.encode())
        end = time.monotonic() + TRICKLE_LIMIT
        while time.monotonic() < end:
            sock.sendall(byte)
            time.sleep(every)
    return send


SLOW_JSON = _trickle("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     "Content-Length: 100000\r\n\r\n")


def _endless(total: int, chunk: int = 1 << 20) -> Behaviour:
    """A 200 answer without a length whose body streams `total` bytes as fast as it can."""
    def send(sock: socket.socket, request: bytes) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\n\r\n")
        for _ in range(total // chunk):
            sock.sendall(b" " * chunk)
        sock.close()
    return send


def _fixed(body: bytes, *headers: str) -> Behaviour:
    def send(sock: socket.socket, request: bytes) -> None:
        head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *headers]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return send


def _call(base: str, endpoint: str, **kwargs: Any) -> Any:
    """One call of `endpoint` against `base`: its answer, or the rcbatch error it raised."""
    async def go() -> Any:
        async with RunComfyClient(TOKEN, base, **{"timeout": QUICK, **kwargs}) as client:
            try:
                if endpoint == "submit":
                    return await client.submit(MODEL, {"prompt": "x"})
                return await getattr(client, endpoint)(RID)
            except RcbatchError as exc:
                return exc
    result = asyncio.run(go())
    assert TOKEN not in repr(result)
    return result


@pytest.mark.timeout(20)
@pytest.mark.parametrize("endpoint", ["status", "result", "cancel"])
def test_a_trickled_answer_hits_the_deadline_and_is_retried(serve: Any, endpoint: str) -> None:
    server = serve(SLOW_JSON)
    error = _call(server.base, endpoint)
    assert isinstance(error, TransportError) and error.kind == "deadline", repr(error)
    assert len(server.requests) == 1


@pytest.mark.timeout(20)
def test_a_trickled_submit_answer_is_uncertain_never_unsent(serve: Any) -> None:
    server = serve(SLOW_JSON)
    error = _call(server.base, "submit")
    assert isinstance(error, SubmitUncertain), repr(error)
    assert len(server.requests) == 1 and b'{"prompt":"x"}' in server.requests[0]


@pytest.mark.timeout(20)
def test_a_deadline_met_while_waiting_for_a_connection_leaves_the_submit_unsent(
        serve: Any) -> None:
    server = serve(SLOW_JSON)
    patient = httpx.Timeout(connect=30.0, read=30.0, write=30.0, pool=30.0)

    async def hold(client: RunComfyClient) -> None:
        async with client.download(f"{server.base}/out.png") as download:
            async for _ in download.aiter_bytes():
                pass

    async def go() -> BaseException | None:
        transport = AiohttpTransport(httpx.Limits(max_connections=1, keepalive_expiry=2))
        async with RunComfyClient(TOKEN, server.base, transport=transport, timeout=patient,
                                  call_deadline=0.5) as client:
            holder = asyncio.ensure_future(hold(client))  # a download keeps the only connection
            await asyncio.sleep(0.2)
            try:
                await client.submit(MODEL, {"prompt": "x"})
            except RcbatchError as exc:
                return exc
            finally:
                holder.cancel()
                await asyncio.gather(holder, return_exceptions=True)
        return None
    error = asyncio.run(go())
    assert isinstance(error, TransportError), repr(error)  # retryable: it was never sent
    assert [r.split(b" ")[0] for r in server.requests] == [b"GET"]


def _announced_huge(sock: socket.socket, request: bytes) -> None:
    sock.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 1500000000\r\n\r\n{"a": 1')


@pytest.mark.parametrize("behaviour", [_endless(24 << 20), _announced_huge],
                         ids=["streamed", "announced"])
def test_a_huge_status_answer_is_refused_not_read_whole(serve: Any,
                                                        behaviour: Behaviour) -> None:
    server = serve(behaviour)
    error = _call(server.base, "status")
    assert isinstance(error, RetryLater) and error.kind == "answer_too_large", repr(error)


def test_a_small_gzip_answer_that_inflates_past_the_cap_is_refused(serve: Any) -> None:
    bomb = gzip.compress(b" " * (24 << 20))  # ~24 KB on the wire
    server = serve(_fixed(bomb, "Content-Encoding: gzip", "Content-Type: application/json"))
    error = _call(server.base, "status")
    assert isinstance(error, RetryLater) and error.kind == "answer_too_large", repr(error)


def test_a_compressed_answer_under_the_cap_is_read(serve: Any) -> None:
    body = b'{"request_id": "req-1", "status": "in_queue", "queue_position": 3}'
    server = serve(_fixed(gzip.compress(body), "Content-Encoding: gzip"))
    answer = _call(server.base, "status")
    assert answer.queue_position == 3, repr(answer)


def test_a_huge_submit_answer_is_uncertain(serve: Any) -> None:
    server = serve(_endless(24 << 20))
    error = _call(server.base, "submit")
    assert isinstance(error, SubmitUncertain), repr(error)


def test_the_cap_is_a_setting_of_the_client(serve: Any) -> None:
    body = b'{"request_id": "req-1", "status": "in_queue", "pad": "' + b"x" * 2000 + b'"}'
    server = serve(_fixed(body))
    assert not isinstance(_call(server.base, "status"), RcbatchError)
    error = _call(server.base, "status", max_answer_bytes=1000)
    assert isinstance(error, RetryLater) and error.kind == "answer_too_large"


@pytest.mark.parametrize(("endpoint", "expected"), [
    ("status", TransportError), ("submit", SubmitUncertain)])
def test_a_transport_that_ignores_the_deadline_is_still_stopped(endpoint: str,
                                                                expected: type) -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def go() -> Any:
        async with RunComfyClient(TOKEN, transport=httpx.MockTransport(never),
                                  call_deadline=0.1) as client:
            try:
                if endpoint == "submit":
                    return await client.submit(MODEL, {"prompt": "x"})
                return await client.status(RID)
            except RcbatchError as exc:
                return exc
    error = asyncio.run(go())
    assert isinstance(error, expected), repr(error)


def test_a_long_download_of_many_chunks_outlasts_the_call_deadline(serve: Any) -> None:
    piece = bytes(range(256)) * 1024  # 256 KiB

    def slow_but_steady(sock: socket.socket, request: bytes) -> None:
        sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(piece) * 24}\r\n\r\n".encode())
        for _ in range(24):
            sock.sendall(piece)
            time.sleep(0.05)  # 1.2 s in all: more than the deadline of an API call
    server = serve(slow_but_steady)
    got = asyncio.run(_download(server.base, call_deadline=0.3))
    assert got == piece * 24


@pytest.mark.timeout(20)
def test_a_trickled_download_is_retried_once_under_the_rate_floor(serve: Any) -> None:
    server = serve(_trickle("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"))
    error = asyncio.run(_download(server.base, min_download_rate=1000.0))
    assert isinstance(error, RetryLater) and error.kind == "download_too_slow", repr(error)


async def _download(base: str, **kwargs: Any) -> Any:
    """The whole body of `base`/out.png, or the rcbatch error the download raised."""
    async with RunComfyClient(TOKEN, base, **{"timeout": QUICK, **kwargs}) as client:
        try:
            async with client.download(f"{base}/out.png") as download:
                return b"".join([chunk async for chunk in download.aiter_bytes()])
        except RcbatchError as exc:
            return exc


def test_the_default_deadline_fits_inside_what_the_reconciler_allows_a_submit() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    client = api_client(settings)
    assert 0 < client.call_deadline < limits_from(settings).submit_due
