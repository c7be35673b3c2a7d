"""Preflight: real image bytes served over a mock transport and over a loopback HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rcbatch.runcomfy.addresses import AddressPolicy, StaticResolver
from rcbatch.runcomfy.catalogue import Issue
from rcbatch.runcomfy.imageinfo import identify, make_image_bytes, read_header
from rcbatch.runcomfy.preflight import Preflight
from tests.tls import self_signed

I2V = "bytedance/dreamina-3-0/image-to-video"
EDIT = "bytedance/dreamina-4-0/edit"
SEEDREAM = "bytedance/seedream-4-5/edit-sequential"
T2I = "bytedance/dreamina-4-0/text-to-image"
HOST = "https://img.example.com"
CHUNK = 16 * 1024
#: what the fake resolver answers for every name: a public address (never connected to here)
PUBLIC_IP = "93.184.215.14"


def public_policy(**options: Any) -> AddressPolicy:
    """The address policy with every name resolving to PUBLIC_IP (no DNS asked)."""
    return AddressPolicy(resolver=StaticResolver(default=[PUBLIC_IP]), **options)


@dataclass
class Served:
    """One file on the fake host and how the host misbehaves with it."""

    body: bytes
    content_type: str = "image/png"
    range_mode: str = "honour"  # honour | ignore | partial (at most 32 KiB per answer)
    head_status: int = 200
    status: int = 200
    send_length: bool = True
    delay: float = 0.0
    redirect: str | None = None  # answer 302 to this Location


class FakeHost:
    """An httpx MockTransport handler serving `files` by path, recording what was asked."""

    def __init__(self, files: dict[str, Served]) -> None:
        self.files = files
        self.requests: list[tuple[str, str, str | None]] = []
        self.connected: list[tuple[str, str]] = []  # (address connected to, Host header)
        self.sent = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path, request.headers.get("range")))
        self.connected.append((request.url.host, request.headers["host"]))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            served = self.files.get(request.url.path)
            if served is not None and served.delay:
                await asyncio.sleep(served.delay)
            return self._answer(request, served)
        finally:
            self.in_flight -= 1

    def _answer(self, request: httpx.Request, served: Served | None) -> httpx.Response:
        if served is None:
            return httpx.Response(404, text="not found")
        if served.redirect is not None:
            return httpx.Response(302, headers={"location": served.redirect})
        headers = {"content-type": served.content_type}
        if request.method == "HEAD":
            if served.send_length:
                headers["content-length"] = str(len(served.body))
            return httpx.Response(served.head_status, headers=headers)
        if served.status != 200:
            return httpx.Response(served.status, text="nope")
        wanted = parse_range(request.headers.get("range"))
        if wanted is None or served.range_mode == "ignore":
            if served.send_length:
                headers["content-length"] = str(len(served.body))
            return httpx.Response(200, headers=headers, content=self._stream(served.body))
        start, end = wanted
        if start >= len(served.body):
            return httpx.Response(416, headers={"content-range": f"bytes */{len(served.body)}"})
        if served.range_mode == "partial":
            end = min(end, start + 32 * 1024 - 1)
        end = min(end, len(served.body) - 1)
        headers["content-range"] = f"bytes {start}-{end}/{len(served.body)}"
        part = served.body[start:end + 1]
        return httpx.Response(206, headers=headers, content=self._stream(part))

    async def _stream(self, body: bytes) -> AsyncIterator[bytes]:
        for offset in range(0, len(body), CHUNK):
            chunk = body[offset:offset + CHUNK]
            self.sent += len(chunk)
            yield chunk

    def gets(self, path: str) -> list[str | None]:
        return [r for m, p, r in self.requests if m == "GET" and p == path]


def parse_range(header: str | None) -> tuple[int, int] | None:
    match = re.fullmatch(r"bytes=(\d+)-(\d+)", header or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def png(width: int, height: int) -> bytes:
    return make_image_bytes(width, height, "PNG")


def jpeg(width: int, height: int, padding: int = 0) -> bytes:
    return make_image_bytes(width, height, "JPEG", padding=padding)


def run_rows(host: FakeHost, rows: list[tuple[str, dict[str, Any]]],
             **options: Any) -> list[list[Issue]]:
    async def go() -> list[list[Issue]]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(host)) as client:
            return await Preflight(client, **{"policy": public_policy(), **options}).check_rows(
                rows)
    return asyncio.run(go())


def check_one(host: FakeHost, model_id: str, row: dict[str, Any], **options: Any) -> list[Issue]:
    [issues] = run_rows(host, [(model_id, row)], **options)
    return issues


def i2v_row(*paths: str) -> dict[str, Any]:
    return {"image_urls": [HOST + p for p in paths], "prompt": "waves"}


# -- the header reader -------------------------------------------------------------------------

@pytest.mark.parametrize(("fmt", "size"), [("PNG", (640, 480)), ("JPEG", (320, 1000)),
                                           ("GIF", (17, 3)), ("WEBP", (100, 50))])
def test_read_header_from_real_bytes(fmt: str, size: tuple[int, int]) -> None:
    assert read_header(make_image_bytes(*size, fmt)) == (*size, fmt)


REAL = [make_image_bytes(300, 200, fmt) for fmt in ("PNG", "JPEG", "GIF", "WEBP")]


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300))
def test_header_reading_never_raises_on_junk(data: bytes) -> None:
    header = read_header(data)
    assert header is None or identify(data) == header[2]


@settings(max_examples=200, deadline=None)
@given(which=st.integers(0, len(REAL) - 1), length=st.integers(0, 2000))
def test_a_truncated_image_reads_as_its_size_or_not_yet(which: int, length: int) -> None:
    header = read_header(REAL[which][:length])
    assert header is None or header[:2] == (300, 200)


def test_read_header_needs_the_frame_header() -> None:
    data = jpeg(300, 200, padding=100_000)
    assert read_header(data[:65536]) is None
    assert read_header(data) == (300, 200, "JPEG")


# -- rules applied to fetched images -----------------------------------------------------------

def test_a_good_png_passes() -> None:
    host = FakeHost({"/a.png": Served(png(1000, 800))})
    assert check_one(host, I2V, i2v_row("/a.png")) == []
    assert host.gets("/a.png") == ["bytes=0-65535"]


def test_shortest_side_rule_with_its_documented_message() -> None:
    host = FakeHost({"/small.png": Served(png(300, 600))})
    [issue] = check_one(host, I2V, i2v_row("/small.png"))
    assert issue == Issue("image_urls[0]", "The shortest side must be at least 320 px. "
                                           "(got 300×600 px)")


def test_issue_names_the_index_of_the_bad_image() -> None:
    host = FakeHost({"/ok.png": Served(png(800, 800)), "/wide.png": Served(png(1000, 250))})
    row = {"image_urls": [HOST + "/ok.png", HOST + "/wide.png"], "prompt": "p"}
    [issue] = check_one(host, EDIT, row)
    assert issue.field == "image_urls[1]" and issue.severity == "error"
    assert issue.message.startswith("The input image aspect ratio must be within [1/3, 3].")


def test_seedream_aspect_warns_between_0_625_and_1_16_and_errors_below() -> None:
    host = FakeHost({"/half.png": Served(png(500, 1000)), "/thin.png": Served(png(20, 1000))})
    row = {"images": [HOST + "/half.png", HOST + "/thin.png"], "prompt": "2 images",
           "sequential_image_generation_options": 2}
    issues = check_one(host, SEEDREAM, row)
    assert [(i.field, i.severity) for i in issues] == [("images[0]", "warning"),
                                                       ("images[1]", "error")]
    assert all(i.message.startswith("The aspect ratio range should be 1:16 to 16:1.")
               for i in issues)


def test_file_size_from_content_length() -> None:
    big = jpeg(800, 600) + bytes(5_000_000)  # 5.0 MB and 4.77 MiB: over 4.7 either way
    host = FakeHost({"/big.jpg": Served(big, "image/jpeg")})
    [issue] = check_one(host, I2V, i2v_row("/big.jpg"))
    assert issue.field == "image_urls[0]" and issue.severity == "error"
    assert issue.message.startswith("File size must be less than 4.7 MB. (got 5,00")
    assert host.gets("/big.jpg") == ["bytes=0-65535"]


def test_file_size_from_content_range_when_head_is_refused() -> None:
    big = jpeg(800, 600) + bytes(16_000_000)
    host = FakeHost({"/big.jpg": Served(big, "image/jpeg", head_status=403)})
    [issue] = check_one(host, EDIT, {"image_urls": [HOST + "/big.jpg"], "prompt": "p"})
    assert issue.message.startswith("Each image file must be ≤ 15 MB.")


def test_frame_header_past_64_kib_is_found_with_a_wider_read() -> None:
    host = FakeHost({"/exif.jpg": Served(jpeg(4097, 1400, padding=150_000), "image/jpeg")})
    issues = check_one(host, I2V, i2v_row("/exif.jpg"))
    assert [i.message for i in issues] == ["Maximum resolution is 4096×4096. (got 4097×1400 px)"]
    assert host.gets("/exif.jpg") == ["bytes=0-65535", "bytes=65536-262143"]


def test_a_server_ignoring_range_is_read_only_up_to_the_cap() -> None:
    body = jpeg(640, 480, padding=3_000_000)  # frame header after 3 MB
    host = FakeHost({"/huge.jpg": Served(body, "image/jpeg", range_mode="ignore")})
    [issue] = check_one(host, I2V, i2v_row("/huge.jpg"), byte_cap=256 * 1024)
    assert issue.severity == "warning"
    assert issue.message.startswith("could not read the image size from the first 262,144 bytes")
    assert host.sent <= 256 * 1024 * 2 + 2 * CHUNK  # two reads (64 KiB, 256 KiB), never 3 MB


def test_a_server_honouring_range_partially_is_resumed() -> None:
    host = FakeHost({"/p.jpg": Served(jpeg(800, 400, padding=70_000), "image/jpeg",
                                      range_mode="partial")})
    assert check_one(host, I2V, i2v_row("/p.jpg")) == []
    assert host.gets("/p.jpg")[:2] == ["bytes=0-65535", "bytes=32768-131071"]


def test_unknown_size_is_a_warning_not_an_error() -> None:
    body = jpeg(640, 480) + bytes(2_000_000)  # header first; no Content-Length, no Range
    host = FakeHost({"/chunked.jpg": Served(body, "image/jpeg", range_mode="ignore",
                                            send_length=False)})
    [issue] = check_one(host, I2V, i2v_row("/chunked.jpg"))
    assert issue.severity == "warning" and "did not say the file's size" in issue.message


def test_a_gif_is_a_description_warning() -> None:
    host = FakeHost({"/a.gif": Served(make_image_bytes(400, 400, "GIF"), "image/gif")})
    [issue] = check_one(host, I2V, i2v_row("/a.gif"))
    assert issue.severity == "warning" and "only JPEG and PNG" in issue.message


def test_an_image_served_as_text_is_a_warning() -> None:
    host = FakeHost({"/a.png": Served(png(400, 400), "text/plain")})
    [issue] = check_one(host, I2V, i2v_row("/a.png"))
    assert issue.severity == "warning" and "Content-Type text/plain" in issue.message


# -- fetch failures ----------------------------------------------------------------------------

def test_404_is_an_error_naming_the_url() -> None:
    [issue] = check_one(FakeHost({}), I2V, i2v_row("/gone.png"))
    assert issue == Issue("image_urls[0]", f"could not fetch image {HOST}/gone.png: HTTP 404")


def test_get_failure_after_head_success() -> None:
    host = FakeHost({"/a.png": Served(png(10, 10), status=500)})
    [issue] = check_one(host, I2V, i2v_row("/a.png"))
    assert issue.message == f"could not fetch image {HOST}/a.png: HTTP 500"


def test_html_is_not_an_image() -> None:
    host = FakeHost({"/login": Served(b"<html><body>sign in</body></html>", "text/html")})
    [issue] = check_one(host, I2V, i2v_row("/login"))
    assert issue.message == f"could not fetch image {HOST}/login: not an image"


def test_transport_timeout_is_an_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    async def go() -> list[Issue]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await Preflight(client, policy=public_policy()).check_row(I2V,
                                                                             i2v_row("/a.png"))
    [issue] = asyncio.run(go())
    assert issue.message == f"could not fetch image {HOST}/a.png: timed out"


def test_the_per_url_deadline_bounds_a_stalled_server() -> None:
    host = FakeHost({"/stall.png": Served(png(9, 9), delay=30)})
    [issue] = check_one(host, I2V, i2v_row("/stall.png"), url_deadline=0.05)
    assert issue.message == f"could not fetch image {HOST}/stall.png: timed out"


# -- rows, dedupe, concurrency -----------------------------------------------------------------

def test_same_url_is_fetched_once_across_rows() -> None:
    host = FakeHost({"/a.png": Served(png(300, 300))})
    rows = [(I2V, i2v_row("/a.png")), (EDIT, {"image_urls": [HOST + "/a.png"] * 2,
                                              "prompt": "p"})]
    issues = run_rows(host, rows)
    assert [[i.field for i in row] for row in issues] == [["image_urls[0]"], []]
    assert [m for m, p, _ in host.requests if p == "/a.png"] == ["HEAD", "GET"]


def test_rows_keep_their_order_and_skip_what_validate_reports() -> None:
    host = FakeHost({"/a.png": Served(png(300, 300)), "/b.png": Served(png(900, 900))})
    rows: list[tuple[str, dict[str, Any]]] = [
        (I2V, i2v_row("/a.png")), (T2I, {"prompt": "no images"}),
        (I2V, {"image_urls": ["http://img.example.com/b.png", 3], "prompt": "p"}),
        ("acme/unknown", {"image_urls": [HOST + "/b.png"]}), (I2V, i2v_row("/b.png"))]
    issues = run_rows(host, rows)
    assert [len(row) for row in issues] == [1, 0, 0, 0, 0]
    assert sorted((m, p) for m, p, _r in host.requests) == [
        ("GET", "/a.png"), ("GET", "/b.png"), ("HEAD", "/a.png"), ("HEAD", "/b.png")]


def test_concurrency_is_bounded() -> None:
    files = {f"/{n}.png": Served(png(400, 400), delay=0.01) for n in range(12)}
    host = FakeHost(files)
    rows = [(I2V, i2v_row(path)) for path in files]
    assert run_rows(host, rows, concurrency=3) == [[] for _ in rows]
    assert host.max_in_flight <= 3


# -- a real loopback HTTP server ---------------------------------------------------------------

class ImageHandler(BaseHTTPRequestHandler):
    """Serves `server.files`; paths under /norange/ ignore Range, /partial/ cap it at 32 KiB."""

    server: ImageServer

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, *, body: bool) -> None:
        data = self.server.files.get(self.path.split("/")[-1])
        if data is None:
            self.send_error(404)
            return
        wanted = parse_range(self.headers.get("Range"))
        if not body or wanted is None or self.path.startswith("/norange/"):
            self._send(200, data, {}, body=body)
            return
        start, end = wanted
        if self.path.startswith("/partial/"):
            end = min(end, start + 32 * 1024 - 1)
        end = min(end, len(data) - 1)
        self._send(206, data[start:end + 1],
                   {"Content-Range": f"bytes {start}-{end}/{len(data)}"}, body=True)

    def _send(self, status: int, data: bytes, headers: dict[str, str], *, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            # the client may stop reading at its byte cap, as it should
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ImageServer(ThreadingHTTPServer):
    daemon_threads = True
    files: dict[str, bytes]


@pytest.fixture
def image_server() -> Iterator[str]:
    server = ImageServer(("127.0.0.1", 0), ImageHandler)
    server.files = {"ok.jpg": jpeg(800, 600), "exif.jpg": jpeg(200, 900, padding=300_000),
                    "tiny.jpg": jpeg(100, 100)}
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_over_real_loopback_http(image_server: str) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{closed.getsockname()[1]}/x.jpg"
    closed.close()
    rows = [(I2V, {"image_urls": [f"{image_server}/{mode}/{name}"], "prompt": "p"})
            for mode in ("range", "norange", "partial")
            for name in ("ok.jpg", "exif.jpg", "tiny.jpg")]
    rows += [(I2V, {"image_urls": [f"{image_server}/range/missing.jpg"], "prompt": "p"}),
             (I2V, {"image_urls": [dead], "prompt": "p"})]

    async def go() -> list[list[Issue]]:
        timeout = httpx.Timeout(5.0)
        async with httpx.AsyncClient(timeout=timeout) as client:
            return await Preflight(client, concurrency=4,
                                   allow_loopback_http=True).check_rows(rows)
    found = asyncio.run(go())
    shortest = "The shortest side must be at least 320 px."
    for offset in (0, 3, 6):
        assert found[offset] == []
        assert [i.message.split(" (")[0] for i in found[offset + 1]] == [
            shortest, "The long-to-short side ratio must be greater than 0.33."]
        assert [i.message.split(" (")[0] for i in found[offset + 2]] == [shortest]
    assert found[9][0].message.endswith("missing.jpg: HTTP 404")
    assert found[10][0].message == f"could not fetch image {dead}: connection failed"


# -- addresses: only public hosts, every redirect hop checked, pinned connections (SSRF) -------

def preflight_with(handler: Any, row: dict[str, Any], **options: Any) -> list[Issue]:
    """The issues of one I2V row fetched through a MockTransport `handler`."""
    async def go() -> list[Issue]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await Preflight(client, **options).check_row(I2V, row)
    return asyncio.run(go())


def test_requests_connect_to_the_checked_address_with_the_urls_host() -> None:
    host = FakeHost({"/a.png": Served(png(800, 800))})
    assert check_one(host, I2V, i2v_row("/a.png")) == []
    assert host.connected == [(PUBLIC_IP, "img.example.com")] * 2


def test_a_name_resolving_to_a_private_address_is_never_contacted() -> None:
    host = FakeHost({"/a.png": Served(png(800, 800))})
    policy = AddressPolicy(resolver=StaticResolver({"img.example.com": ["10.0.0.5"]}))
    [issue] = check_one(host, I2V, i2v_row("/a.png"), policy=policy)
    assert issue == Issue("image_urls[0]", f"{HOST}/a.png: resolves to 10.0.0.5, a private "
                                           f"address; RunComfy cannot fetch it")
    assert host.requests == []


def test_redirects_to_public_hosts_are_followed_hop_by_hop() -> None:
    host = FakeHost({"/a.png": Served(b"", redirect="https://cdn.example.com/b.png"),
                     "/b.png": Served(png(800, 800))})
    resolver = StaticResolver({"img.example.com": [PUBLIC_IP], "cdn.example.com": ["1.1.1.1"]})
    assert check_one(host, I2V, i2v_row("/a.png"), policy=AddressPolicy(resolver=resolver)) == []
    assert host.connected == [(PUBLIC_IP, "img.example.com"), ("1.1.1.1", "cdn.example.com")] * 2


def test_a_redirect_to_the_metadata_service_is_refused_before_any_request() -> None:
    host = FakeHost({"/a.png": Served(b"", redirect="http://169.254.169.254/latest/meta-data/"),
                     "/latest/meta-data/": Served(b'{"secret": 1}', "application/json")})
    [issue] = check_one(host, I2V, i2v_row("/a.png"))
    assert issue.message == (f"{HOST}/a.png: redirected to http://169.254.169.254/latest/"
                             f"meta-data/: is 169.254.169.254, a link-local address; RunComfy "
                             f"cannot fetch it")
    assert [p for _m, p, _r in host.requests] == ["/a.png"]


def test_redirect_loops_end() -> None:
    host = FakeHost({"/a.png": Served(b"", redirect="/b.png"),
                     "/b.png": Served(b"", redirect="/a.png")})
    [issue] = check_one(host, I2V, i2v_row("/a.png"))
    assert issue.message == f"could not fetch image {HOST}/a.png: more than 5 redirects"
    assert len(host.requests) == 6


def test_a_second_dns_answer_is_checked_again_and_never_used_unchecked() -> None:
    answers = [[PUBLIC_IP], ["127.0.0.1"]]

    async def rebinding(host: str, port: int) -> list[str]:
        return answers.pop(0) if len(answers) > 1 else answers[0]

    host = FakeHost({"/a.png": Served(png(800, 800))})
    [issue] = check_one(host, I2V, i2v_row("/a.png"), policy=AddressPolicy(resolver=rebinding))
    assert issue.message.endswith("/a.png: resolves to 127.0.0.1, a loopback address; RunComfy "
                                  "cannot fetch it")
    assert host.connected == [(PUBLIC_IP, "img.example.com")]  # the HEAD; the GET was refused


def test_the_next_checked_address_is_tried_when_one_refuses_connections() -> None:
    seen: list[str] = []
    host = FakeHost({"/a.png": Served(png(800, 800))})

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "2606:4700::1":
            raise httpx.ConnectError("unreachable", request=request)
        return await host(request)

    resolver = StaticResolver({"img.example.com": ["2606:4700::1", PUBLIC_IP]})
    assert preflight_with(handler, i2v_row("/a.png"),
                          policy=AddressPolicy(resolver=resolver)) == []
    assert seen == ["2606:4700::1", PUBLIC_IP] * 2


def test_loopback_redirects_stay_allowed_for_the_simulator() -> None:
    host = FakeHost({"/a.png": Served(b"", redirect="http://localhost:8000/b.png"),
                     "/b.png": Served(png(800, 800))})
    row = {"image_urls": ["http://127.0.0.1:8000/a.png"], "prompt": "p"}
    policy = AddressPolicy(allow_loopback=True,
                           resolver=StaticResolver({"localhost": ["127.0.0.1"]}))
    assert check_one(host, I2V, row, policy=policy) == []
    [issue] = check_one(host, I2V, {"image_urls": ["https://10.0.0.5/a.png"], "prompt": "p"},
                        policy=policy)
    assert "a private address" in issue.message


class Recorder(ThreadingHTTPServer):
    """A server on 127.0.0.1 that counts every connection and records every request."""

    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), RouteHandler)
        self.connections = 0
        self.seen: list[tuple[str, str, str]] = []  # (method, path, Host)
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def get_request(self) -> Any:
        self.connections += 1
        return super().get_request()


#: what the internal service answers to anything (never to be seen in an error)
INTERNAL_ANSWER = (200, {"Content-Type": "application/json"}, b'{"AccessKeyId": "AKIA-INSIDE"}')


class RouteHandler(BaseHTTPRequestHandler):
    """Answers `server.routes[path]`, else the internal service's secret."""

    server: Recorder

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, *, body: bool) -> None:
        self.server.seen.append((self.command, self.path, self.headers.get("Host", "")))
        status, headers, data = self.server.routes.get(self.path, INTERNAL_ANSWER)
        self.send_response(status)
        for name, value in {"Content-Length": str(len(data)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serving(server: Recorder) -> Iterator[Recorder]:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def internal() -> Iterator[Recorder]:
    """An internal service on 127.0.0.1 (plain http) that must never be reached."""
    with serving(Recorder()) as server:
        yield server


PUBLIC_NAME = "img.public.test"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for PUBLIC_NAME and 127.0.0.1: (cert file, key file)."""
    return self_signed(tmp_path_factory.mktemp("tls"), PUBLIC_NAME, ips=("127.0.0.1",))


@dataclass
class PublicHost:
    """An https server on 127.0.0.1 playing the public host PUBLIC_NAME."""

    server: Recorder
    server_names: list[str | None]  # the TLS server names clients asked for
    client_tls: ssl.SSLContext  # trusts the host's certificate

    def policy(self, names: dict[str, list[str]] | None = None) -> AddressPolicy:
        """Resolves PUBLIC_NAME (and `names`) to loopback, judging only this host public."""
        resolver = StaticResolver({PUBLIC_NAME: ["127.0.0.1"], **(names or {})})
        return AddressPolicy(resolver=resolver, trusted=[("127.0.0.1", self.server.port)])

    def url(self, path: str) -> str:
        return f"https://{PUBLIC_NAME}:{self.server.port}{path}"


@pytest.fixture
def public_host(certificate: tuple[Path, Path]) -> Iterator[PublicHost]:
    server_names: list[str | None] = []
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(*certificate)
    tls.sni_callback = lambda _socket, name, _context: server_names.append(name)
    client_tls = ssl.create_default_context(cafile=str(certificate[0]))
    with serving(Recorder(tls)) as server:
        yield PublicHost(server, server_names, client_tls)


def preflight_over_tls(host: PublicHost, url: str, **options: Any) -> list[Issue]:
    """Preflight one row through a real client that trusts `host`'s certificate and, like
    `rcbatch validate`'s, would follow redirects by itself."""
    async def go() -> list[Issue]:
        async with httpx.AsyncClient(verify=host.client_tls, timeout=5.0,
                                     follow_redirects=True) as client:
            return await Preflight(client, **options).check_row(I2V, {"image_urls": [url],
                                                                      "prompt": "p"})
    return asyncio.run(go())


def test_https_connects_to_the_checked_address_with_the_urls_server_name(
        public_host: PublicHost) -> None:
    public_host.server.routes["/ok.jpg"] = (200, {"Content-Type": "image/jpeg"}, jpeg(800, 600))
    url = public_host.url("/ok.jpg")
    assert preflight_over_tls(public_host, url, policy=public_host.policy()) == []
    netloc = f"{PUBLIC_NAME}:{public_host.server.port}"
    assert public_host.server.seen == [("HEAD", "/ok.jpg", netloc), ("GET", "/ok.jpg", netloc)]
    assert set(public_host.server_names) == {PUBLIC_NAME}


#: (Location the public host answers, what the error must say about it)
INSIDE = [
    ("http://127.0.0.1:{port}/latest/meta-data/iam/security-credentials/",
     "http://127.0.0.1:{port}/latest/meta-data/iam/security-credentials/: is 127.0.0.1, "
     "a loopback address"),
    ("https://localhost:{port}/latest/meta-data/",
     "https://localhost:{port}/latest/meta-data/: is localhost, this machine (a loopback "
     "address)"),
    ("//127.1:{port}/latest/", "https://127.1:{port}/latest/: is 127.0.0.1, a loopback address"),
    ("http://2130706433:{port}/", "http://2130706433:{port}/: is 127.0.0.1, a loopback address"),
    ("http://[::ffff:127.0.0.1]:{port}/",
     "http://[::ffff:127.0.0.1]:{port}/: is ::ffff:7f00:1, a loopback address (IPv4 "
     "127.0.0.1)"),
    ("https://img.public.test@127.0.0.1:{port}/",
     "https://127.0.0.1:{port}/: is 127.0.0.1, a loopback address"),
    ("http://inside.test:{port}/", "http://inside.test:{port}/: resolves to 127.0.0.1, a "
                                   "loopback address"),
]


@pytest.mark.parametrize(("location", "reason"), INSIDE)
def test_a_public_host_redirecting_inside_never_reaches_the_inside(
        public_host: PublicHost, internal: Recorder, location: str, reason: str) -> None:
    public_host.server.routes["/img.jpg"] = (302, {"Location": location.format(
        port=internal.port)}, b"")
    url = public_host.url("/img.jpg")
    policy = public_host.policy({"inside.test": ["127.0.0.1"]})
    [issue] = preflight_over_tls(public_host, url, policy=policy)
    assert internal.connections == 0 and internal.seen == []
    assert issue == Issue("image_urls[0]", f"{url}: redirected to "
                                           f"{reason.format(port=internal.port)}; RunComfy "
                                           f"cannot fetch it")
    assert "json" not in issue.message.lower() and "AKIA" not in issue.message


@pytest.mark.parametrize("url", [
    "https://localhost:{port}/latest/meta-data/", "https://LOCALHOST.:{port}/x.jpg",
    "https://127.1:{port}/x.jpg", "https://2130706433:{port}/x.jpg",
    "https://0x7f.0.0.1:{port}/x.jpg", "https://[::ffff:127.0.0.1]:{port}/x.jpg",
    "https://img.example.com@127.0.0.1:{port}/x.jpg"])
def test_this_machine_in_any_spelling_is_never_connected_to(internal: Recorder,
                                                            url: str) -> None:
    async def go() -> list[Issue]:
        async with httpx.AsyncClient(timeout=5.0, follow_redirects=True) as client:
            return await Preflight(client).check_row(I2V, {"image_urls": [
                url.format(port=internal.port)], "prompt": "p"})
    [issue] = asyncio.run(go())
    assert internal.connections == 0
    assert "a loopback address" in issue.message
    assert issue.message.endswith("; RunComfy cannot fetch it")
