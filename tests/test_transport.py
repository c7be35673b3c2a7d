"""runcomfy/transport.py on real loopback sockets: what reaches the server, and which httpx
error each way of failing becomes (the submit's "was it sent?" rule rests on that)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from rcbatch.errors import SubmitUncertain
from rcbatch.runcomfy.client import RunComfyClient
from rcbatch.runcomfy.transport import CHUNK, AiohttpTransport

TOKEN = "tok-transport-0123456789"
Behaviour = Callable[[socket.socket, bytes], None]


def _read_request(sock: socket.socket) -> bytes:
    """Headers and, when announced, the body of one request ('' when the peer closed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            return data
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


class _Server:
    """A loopback server that reads each request and then does what `behaviour` says;
    it records every request and counts connections."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.requests: list[bytes] = []
        self.connections = 0
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer.connections += 1
                with contextlib.suppress(OSError):  # a behaviour may close the socket
                    while request := _read_request(self.request):
                        outer.requests.append(request)
                        behaviour(self.request, request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Behaviour], _Server]]:
    servers: list[_Server] = []

    def start(behaviour: Behaviour) -> _Server:
        servers.append(_Server(behaviour))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _answer(body: bytes, *headers: str) -> Behaviour:
    def send(sock: socket.socket, request: bytes) -> None:
        head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *headers]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return send


def _reset(sock: socket.socket, request: bytes) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _silent(sock: socket.socket, request: bytes) -> None:
    time.sleep(1.0)


def _client(**timeouts: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=timeouts.pop("connections", 4), keepalive_expiry=2)
    timeout = httpx.Timeout(**{"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0,
                               **timeouts})
    return httpx.AsyncClient(transport=AiohttpTransport(limits), timeout=timeout)


def _run(client: httpx.AsyncClient, *calls: tuple[str, str]) -> list[Any]:
    """Send the requests one after the other; each answer's body or the exception raised."""
    async def go() -> list[Any]:
        out: list[Any] = []
        async with client:
            for method, url in calls:
                try:
                    out.append((await client.request(method, url)).content)
                except httpx.HTTPError as exc:
                    out.append(exc)
        return out
    return asyncio.run(go())


def test_the_request_reaches_the_server_as_httpx_built_it(serve: Any) -> None:
    server = serve(_answer(b"{}"))
    url = f"{server.base}/v1/a%2Fb?sig=x%2By%3D&n=1"
    assert _run(_client(), ("GET", url)) == [b"{}"]
    request_line, *headers = server.requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
    assert request_line == b"GET /v1/a%2Fb?sig=x%2By%3D&n=1 HTTP/1.1"
    names = [h.split(b":")[0].lower() for h in headers]
    assert names.count(b"host") == 1 and names.count(b"user-agent") == 1
    assert b"cookie" not in names


def test_a_prepared_client_builds_its_tls_context_before_its_first_request(
        serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # a worker prepares its client as its process starts (worker/wiring.py `warm_up`):
    # parsing the CA bundle then costs the first submits nothing
    built: list[object] = []
    real = httpx.create_ssl_context

    def counting(*args: Any, **kwargs: Any) -> Any:
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(httpx, "create_ssl_context", counting)
    server = serve(_answer(b'{"request_id": "r1", "status": "in_queue"}'))
    client = RunComfyClient(TOKEN, server.base)
    client.prepare()
    assert len(built) == 1
    client.prepare()
    asyncio.run(_submit_then_close(client))
    assert len(built) == 1  # the session took the prepared context


async def _submit_then_close(client: RunComfyClient) -> None:
    async with client:
        await client.submit("m/x", {"prompt": "p"})


def test_connections_are_kept_and_reused(serve: Any) -> None:
    server = serve(_answer(b"ok"))
    assert _run(_client(), *[("GET", f"{server.base}/x")] * 3) == [b"ok"] * 3
    assert server.connections == 1


def test_a_compressed_answer_is_decoded_once(serve: Any) -> None:
    server = serve(_answer(gzip.compress(b'{"a": 1}'), "Content-Encoding: gzip"))
    assert _run(_client(), ("GET", f"{server.base}/x")) == [b'{"a": 1}']


def test_a_large_body_streams_whole_in_bounded_chunks(serve: Any) -> None:
    body = bytes(range(256)) * (12 * 1024)  # 3 MiB
    server = serve(_answer(body))

    async def go() -> list[bytes]:
        async with _client() as client, client.stream("GET", f"{server.base}/big") as answer:
            return [chunk async for chunk in answer.aiter_raw()]
    chunks = asyncio.run(go())
    assert b"".join(chunks) == body and max(map(len, chunks)) <= CHUNK


def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    [error] = _run(_client(), ("GET", f"http://127.0.0.1:{port}/x"))
    assert isinstance(error, httpx.ConnectError)


@pytest.mark.parametrize(("behaviour", "expected"), [
    (_reset, httpx.ReadError), (_silent, httpx.ReadTimeout)])
def test_failures_after_sending_never_read_as_unsent(serve: Any, behaviour: Behaviour,
                                                     expected: type[Exception]) -> None:
    server = serve(behaviour)
    [error] = _run(_client(read=0.3), ("POST", f"{server.base}/x"))
    assert isinstance(error, expected) and not isinstance(
        error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout), repr(error)
    assert len(server.requests) == 1


@pytest.mark.parametrize("behaviour", [_reset, _silent])
def test_a_submit_that_reached_the_server_is_uncertain(serve: Any, behaviour: Behaviour) -> None:
    server = serve(behaviour)

    async def go() -> Exception:
        timeout = httpx.Timeout(2.0, read=0.3)
        async with RunComfyClient(TOKEN, server.base, timeout=timeout) as client:
            try:
                await client.submit("vendor/model/x", {"prompt": "x"})
            except Exception as exc:  # the assertion below names what came out
                return exc
        raise AssertionError("the submit succeeded")
    error = asyncio.run(go())
    assert isinstance(error, SubmitUncertain), repr(error)
    assert len(server.requests) == 1 and TOKEN not in str(error)


def test_waiting_for_a_pooled_connection_times_out_as_unsent(serve: Any) -> None:
    server = serve(_silent)

    async def go() -> list[BaseException | httpx.Response]:
        async with _client(connections=1, read=1.5, pool=0.1, connect=0.1) as client:
            first = asyncio.ensure_future(client.post(f"{server.base}/first"))
            await asyncio.sleep(0.2)  # the only connection is taken
            second = await asyncio.gather(
                client.post(f"{server.base}/second?X-Amz-Signature=s3cr3t"),
                return_exceptions=True)
            await asyncio.gather(first, return_exceptions=True)
            return second
    [error] = asyncio.run(go())
    assert isinstance(error, httpx.ConnectTimeout | httpx.PoolTimeout), repr(error)
    assert "s3cr3t" not in str(error)  # a pre-signed URL's query never shows
    assert [r.split(b" ")[1] for r in server.requests] == [b"/first"]


def test_the_environment_proxy_is_used_unless_the_host_is_excluded(
        serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy, direct = serve(_answer(b"via proxy")), serve(_answer(b"direct"))
    monkeypatch.setenv("HTTP_PROXY", proxy.base)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    calls = [("GET", "http://outputs.example/a.png"), ("GET", f"{direct.base}/b.png")]
    assert _run(_client(), *calls) == [b"via proxy", b"direct"]
    assert proxy.requests[0].startswith(b"GET http://outputs.example/a.png HTTP/1.1")


def test_a_redirect_is_handed_back_not_followed(serve: Any) -> None:
    def redirect(sock: socket.socket, request: bytes) -> None:
        sock.sendall(b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n")
    server = serve(redirect)

    async def go() -> httpx.Response:
        async with _client() as client:
            return await client.get(f"{server.base}/out.png")
    answer = asyncio.run(go())
    assert (answer.status_code, answer.headers["Location"]) == (302, "/elsewhere")
    assert len(server.requests) == 1


def test_a_post_without_a_body_announces_one_empty_body(serve: Any) -> None:
    server = serve(_answer(b"{}"))
    assert _run(_client(), ("POST", f"{server.base}/v1/requests/r1/cancel")) == [b"{}"]
    head = server.requests[0].split(b"\r\n\r\n")[0].lower()
    assert head.count(b"content-length:") == 1 and b"content-length: 0" in head
