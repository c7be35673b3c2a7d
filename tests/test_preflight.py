"""Preflight: real image bytes served over a mock transport and over a loopback HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rcbatch.runcomfy.catalogue import Issue
from rcbatch.runcomfy.imageinfo import identify, make_image_bytes, read_header
from rcbatch.runcomfy.preflight import Preflight

I2V = "bytedance/dreamina-3-0/image-to-video"
EDIT = "bytedance/dreamina-4-0/edit"
SEEDREAM = "bytedance/seedream-4-5/edit-sequential"
T2I = "bytedance/dreamina-4-0/text-to-image"
HOST = "https://img.example.com"
CHUNK = 16 * 1024


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


class FakeHost:
    """An httpx MockTransport handler serving `files` by path, recording what was asked."""

    def __init__(self, files: dict[str, Served]) -> None:
        self.files = files
        self.requests: list[tuple[str, str, str | None]] = []
        self.sent = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path, request.headers.get("range")))
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
            return await Preflight(client, **options).check_rows(rows)
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
    assert issue.message == (f"could not fetch image {HOST}/login: not an image "
                             f"(Content-Type: text/html)")


def test_transport_timeout_is_an_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    async def go() -> list[Issue]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await Preflight(client).check_row(I2V, i2v_row("/a.png"))
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
            return await Preflight(client, concurrency=4).check_rows(rows)
    found = asyncio.run(go())
    shortest = "The shortest side must be at least 320 px."
    for offset in (0, 3, 6):
        assert found[offset] == []
        assert [i.message.split(" (")[0] for i in found[offset + 1]] == [
            shortest, "The long-to-short side ratio must be greater than 0.33."]
        assert [i.message.split(" (")[0] for i in found[offset + 2]] == [shortest]
    assert found[9][0].message.endswith("missing.jpg: HTTP 404")
    assert found[10][0].message == f"could not fetch image {dead}: connection failed"
