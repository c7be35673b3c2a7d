"""Output downloads obey the address policy: a URL or redirect hop on this machine or this
network is refused before anything is sent to it, a name is fetched from the very address it
was checked to have (Host and TLS server name kept), and the simulator on loopback still works."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from rcbatch.errors import ItemFailed, RcbatchError, TransportError
from rcbatch.runcomfy.addresses import AddressPolicy, StaticResolver
from rcbatch.runcomfy.client import RunComfyClient
from tests.tls import self_signed

TOKEN = "rc-SECRET-token-0123456789abcdef"
API = "https://model-api.runcomfy.net"
PUBLIC_IP = "93.184.215.14"
Handler = Callable[[httpx.Request], httpx.Response]


@dataclass
class Seen:
    """What a MockTransport handler was asked: (connected-to host, Host header, SNI, path)."""

    requests: list[tuple[str, str, str | None, str]]


def recording(routes: dict[str, httpx.Response] | None = None) -> tuple[Seen, Handler]:
    """A handler answering `routes[path]` (default 200 "png") and recording every request."""
    seen = Seen([])

    def handle(request: httpx.Request) -> httpx.Response:
        seen.requests.append((request.url.host, request.headers["Host"],
                              request.extensions.get("sni_hostname"), request.url.path))
        return (routes or {}).get(request.url.path, httpx.Response(200, content=b"png"))
    return seen, handle


def download(url: str, handler: Handler | None = None, **options: Any) -> Any:
    """(body, final_url) of downloading `url` through `handler`, or the rcbatch error."""
    async def go() -> tuple[bytes, str]:
        transport = httpx.MockTransport(handler) if handler else None
        client = RunComfyClient(TOKEN, **{"base_url": API, "transport": transport, **options})
        async with client, client.download(url) as got:
            return b"".join([c async for c in got.aiter_bytes()]), got.final_url
    try:
        return asyncio.run(go())
    except RcbatchError as exc:
        return exc


def refused(result: Any, kind: str = "refused_address") -> bool:
    return isinstance(result, ItemFailed) and result.kind == kind


@pytest.mark.parametrize("url", [
    "https://127.0.0.1/out.png", "https://10.0.0.5/out.png", "https://192.168.1.20/out.png",
    "https://169.254.169.254/latest/meta-data/", "https://[::1]/out.png",
    "https://[::ffff:127.0.0.1]/out.png", "https://2130706433/out.png",
    "https://cdn.example.com@127.0.0.1/out.png", "https://localhost/out.png",
    "http://127.0.0.1:9000/out.png",
])
def test_an_output_on_this_machine_or_network_is_refused_unrequested(url: str) -> None:
    seen, handle = recording()
    result = download(url, handle)
    assert refused(result), result
    assert result.message.startswith("refusing to download ")
    assert seen.requests == []


def test_a_name_resolving_inside_is_refused_unrequested() -> None:
    seen, handle = recording()
    resolver = StaticResolver({"cdn.example.com": [PUBLIC_IP, "10.1.2.3"]})
    result = download("https://cdn.example.com/out.png?X-Amz-Signature=abc", handle,
                      addresses=AddressPolicy(resolver=resolver))
    assert refused(result) and "resolves to 10.1.2.3, a private address" in result.message
    assert "X-Amz-Signature" not in result.message and seen.requests == []


@pytest.mark.parametrize("location", [
    "https://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://169.254.169.254/latest/meta-data/", "//169.254.169.254/latest/",
    "https://[::ffff:169.254.169.254]/latest/",
])
def test_a_redirect_to_the_metadata_address_is_never_followed(location: str) -> None:
    seen, handle = recording({"/out.png": httpx.Response(302, headers={"Location": location})})
    result = download(f"https://{PUBLIC_IP}/out.png", handle)
    assert refused(result) and "169.254.169.254" in result.message, result
    assert [path for *_, path in seen.requests] == ["/out.png"]


def test_a_redirect_to_a_name_resolving_to_the_metadata_address_is_never_followed() -> None:
    seen, handle = recording({"/out.png": httpx.Response(
        302, headers={"Location": "https://meta.example.com/latest/"})})
    resolver = StaticResolver({"cdn.example.com": [PUBLIC_IP],
                               "meta.example.com": ["169.254.169.254"]})
    result = download("https://cdn.example.com/out.png", handle,
                      addresses=AddressPolicy(resolver=resolver))
    assert refused(result) and "a link-local address" in result.message, result
    assert [path for *_, path in seen.requests] == ["/out.png"]


def test_the_download_connects_to_the_checked_address_keeping_the_host() -> None:
    seen, handle = recording({
        "/a": httpx.Response(302, headers={"Location": "/b"}),
        "/b": httpx.Response(307, headers={"Location": "https://edge.example.com:8443/c"})})
    resolver = StaticResolver({"cdn.example.com": [PUBLIC_IP], "edge.example.com": ["1.1.1.1"]})
    body, final_url = download("https://cdn.example.com/a", handle,
                               addresses=AddressPolicy(resolver=resolver))
    assert body == b"png" and final_url == "https://edge.example.com:8443/c"
    assert seen.requests == [
        (PUBLIC_IP, "cdn.example.com", "cdn.example.com", "/a"),
        (PUBLIC_IP, "cdn.example.com", "cdn.example.com", "/b"),
        ("1.1.1.1", "edge.example.com:8443", "edge.example.com", "/c")]
    assert resolver.asked == ["cdn.example.com", "cdn.example.com", "edge.example.com"]


def test_an_unreachable_first_address_falls_back_to_the_next_checked_one() -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "2606:4700::1":
            raise httpx.ConnectError("network unreachable", request=request)
        return httpx.Response(200, content=b"png")
    resolver = StaticResolver({"cdn.example.com": ["2606:4700::1", PUBLIC_IP]})
    body, _ = download("https://cdn.example.com/a", handle,
                       addresses=AddressPolicy(resolver=resolver))
    assert body == b"png" and seen == ["2606:4700::1", PUBLIC_IP]


def test_a_host_that_does_not_resolve_is_retried_later_and_not_requested() -> None:
    seen, handle = recording()
    result = download("https://nowhere.example.com/out.png", handle,
                      addresses=AddressPolicy(resolver=StaticResolver()))
    assert isinstance(result, TransportError) and result.kind == "dns", result
    assert seen.requests == []


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000/out.png",
                                 "http://[::1]:9000/out.png"])
def test_the_simulator_on_loopback_still_serves_its_outputs(url: str) -> None:
    seen, handle = recording()
    body, final_url = download(url, handle, base_url="http://127.0.0.1:8000")
    assert body == b"png" and final_url == url and len(seen.requests) == 1


def test_with_the_api_on_loopback_other_private_addresses_stay_refused() -> None:
    seen, handle = recording()
    result = download("http://10.0.0.5/out.png", handle, base_url="http://127.0.0.1:8000")
    assert refused(result) and seen.requests == []


# --- https to a pinned address, on a real socket ---------------------------------------

NAME = "dl.public.test"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for NAME only (not for 127.0.0.1): (cert file, key file)."""
    return self_signed(tmp_path_factory.mktemp("tls"), NAME)


class _Output(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.hosts.append(self.headers.get("Host", ""))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"data")

    def log_message(self, *args: Any) -> None:
        """Quiet."""


@dataclass
class TlsHost:
    """An https server on 127.0.0.1 playing the public host NAME."""

    port: int
    hosts: list[str]  # Host headers received
    server_names: list[str | None]  # TLS server names asked for

    def policy(self, names: dict[str, list[str]] | None = None) -> AddressPolicy:
        resolver = StaticResolver({NAME: ["127.0.0.1"], **(names or {})})
        return AddressPolicy(resolver=resolver, trusted=[("127.0.0.1", self.port)])


@pytest.fixture
def tls_host(certificate: tuple[Path, Path],
             monkeypatch: pytest.MonkeyPatch) -> Iterator[TlsHost]:
    # the client's transport builds its TLS context like httpx: SSL_CERT_FILE names the CAs
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    names: list[str | None] = []
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(*certificate)
    tls.sni_callback = lambda _socket, name, _context: names.append(name)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Output)
    server.daemon_threads = True
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    server.hosts = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield TlsHost(int(server.server_address[1]), server.hosts,  # type: ignore[attr-defined]
                      names)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_https_to_the_pinned_address_verifies_the_certificate_for_the_name(
        tls_host: TlsHost) -> None:
    url = f"https://{NAME}:{tls_host.port}/out.png"
    body, final_url = download(url, addresses=tls_host.policy())
    assert body == b"data" and final_url == url
    assert tls_host.hosts == [f"{NAME}:{tls_host.port}"]
    assert set(tls_host.server_names) == {NAME}


def test_https_to_a_name_the_certificate_does_not_cover_fails(tls_host: TlsHost) -> None:
    other = "other.public.test"
    result = download(f"https://{other}:{tls_host.port}/out.png",
                      addresses=tls_host.policy({other: ["127.0.0.1"]}))
    assert isinstance(result, TransportError) and result.kind == "download", result
    assert tls_host.hosts == []


def test_a_pooled_connection_is_not_reused_for_another_server_name(tls_host: TlsHost) -> None:
    """Two names on one address, one client: the second name gets its own TLS handshake, so
    the certificate is checked for it too (and fails: it covers only NAME)."""
    other = "other.public.test"
    policy = tls_host.policy({other: ["127.0.0.1"]})

    async def fetch(client: RunComfyClient, name: str) -> Any:
        try:
            async with client.download(f"https://{name}:{tls_host.port}/x") as got:
                return b"".join([c async for c in got.aiter_bytes()])
        except RcbatchError as exc:
            return exc

    async def go() -> list[Any]:
        async with RunComfyClient(TOKEN, API, addresses=policy) as client:
            return [await fetch(client, NAME), await fetch(client, other)]
    first, second = asyncio.run(go())
    assert first == b"data" and isinstance(second, TransportError), second
    assert tls_host.hosts == [f"{NAME}:{tls_host.port}"]
