"""Serving files: job outputs (`/_sim/outputs/...`) and sample inputs (`/_sim/inputs/...`).

Both answer GET and HEAD, always with Content-Length and `Accept-Ranges: bytes`, and honour
a single `Range: bytes=...` (206, or 416 when unsatisfiable). Outputs need no token, like the
CDN URLs of the real API; they may be injected as 404 or cut off halfway.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from rcbatch.runcomfy.simulator.connection import DropConnection, connection_of
from rcbatch.runcomfy.simulator.engine import Job
from rcbatch.runcomfy.simulator.media import (
    MAX_PAD,
    MAX_SIDE,
    ByteSource,
    BytesSource,
    PatternSource,
)
from rcbatch.runcomfy.simulator.outputs import OutputFile
from rcbatch.runcomfy.simulator.state import SimState

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_OUTPUT_NAME = re.compile(r"^(\d+)\.(\w+)$")
_INPUT_NAME = re.compile(r"^(\d{1,5})x(\d{1,5})\.(png|jpe?g)$")


class Unsatisfiable(Exception):
    """The Range header asks for bytes outside the file."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of a single `bytes=` range, None to send everything (absent or multi)."""
    match = _RANGE.match(header.strip()) if header else None
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # a suffix: the last N bytes
        length = min(int(last), size)
        if length == 0:
            raise Unsatisfiable
        return size - length, size
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or end <= start:
        raise Unsatisfiable
    return start, end


class ByteResponse(Response):
    """Streams a ByteSource; `truncate` sends half the promised bytes, then drops the line."""

    def __init__(self, source: ByteSource, content_type: str, request: Request, *,
                 truncate: bool = False, on_sent: Callable[[int], None] | None = None) -> None:
        self.source, self.content_type = source, content_type
        self.truncate, self.on_sent = truncate, on_sent
        self.head = request.method == "HEAD"
        self.status_code = 200
        self.span = (0, source.size)
        self.range_header = request.headers.get("range")

    def _header_list(self) -> list[tuple[bytes, bytes]]:
        start, end = self.span
        headers = [(b"content-type", self.content_type.encode()),
                   (b"content-length", str(end - start).encode()),
                   (b"accept-ranges", b"bytes")]
        if self.status_code == 206:
            value = f"bytes {start}-{end - 1}/{self.source.size}"
            headers.append((b"content-range", value.encode()))
        return headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the headers, then the chosen bytes chunk by chunk."""
        try:
            chosen = parse_range(self.range_header, self.source.size)
        except Unsatisfiable:
            await _unsatisfiable(self.source.size)(scope, receive, send)
            return
        if chosen is not None:
            self.status_code, self.span = 206, chosen
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self._header_list()})
        if not self.head:
            await self._send_body(scope, send)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_body(self, scope: Scope, send: Send) -> None:
        start, end = self.span
        stop = start + (end - start) // 2 if self.truncate else end
        connection = connection_of(scope)
        sent = 0
        for chunk in self.source.read(start, stop):
            if connection is not None and connection.closed:
                break  # the client left; do not produce the rest of a large file
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent += len(chunk)
        if self.on_sent is not None:
            self.on_sent(sent)
        if self.truncate:
            raise DropConnection


def _unsatisfiable(size: int) -> Response:
    return Response(status_code=416, headers={"content-range": f"bytes */{size}"})


def _not_found(message: str) -> JSONResponse:
    return JSONResponse({"error_code": 404001, "error_type": "ResourceNotFound",
                         "error_message": message}, status_code=404)


def _find_output(sim: SimState, request: Request) -> tuple[Job, OutputFile] | None:
    """The job and output file an output URL names, if the job has succeeded."""
    job = sim.engine.get(request.path_params["request_id"])
    match = _OUTPUT_NAME.match(request.path_params["name"])
    if job is None or job.state != "succeeded" or match is None:
        return None
    n, files = int(match.group(1)), job.outputs.files
    if n >= len(files) or files[n].ext != match.group(2):
        return None
    return job, files[n]


async def output_file(request: Request) -> Response:
    """GET/HEAD one output of a succeeded job."""
    sim: SimState = request.app.state.sim
    sim.engine.advance()
    found = _find_output(sim, request)
    if found is None:
        return _not_found("no such output")
    job, output = found
    is_get = request.method == "GET"
    if output.is_missing_now():
        if is_get:
            output.gets += 1
            sim.fetched(job)
        sim.stats.faults["output_404"] += 1
        return _not_found("output not found (simulated)")
    source = await _output_source(sim, job, output)
    truncate = is_get and sim.plan.truncates(job.index, output.n, output.gets)
    if is_get:
        output.gets += 1
        sim.fetched(job)
        sim.stats.downloads += 1
        sim.stats.faults["output_truncate"] += truncate
    return ByteResponse(source, output.content_type, request, truncate=truncate,
                        on_sent=_count_bytes(sim))


async def _output_source(sim: SimState, job: Job, output: OutputFile) -> ByteSource:
    if output.kind == "video":
        return PatternSource(output.size_bytes, job.request_id)
    fmt = "png" if output.ext == "png" else "jpeg"
    data = await sim.images.get(output.width, output.height, fmt)
    return BytesSource(data)


def _count_bytes(sim: SimState) -> Callable[[int], None]:
    def count(sent: int) -> None:
        sim.stats.bytes_served += sent
    return count


async def input_file(request: Request) -> Response:
    """GET/HEAD a sample input image `{w}x{h}.png|jpg`; `?bytes=N` pads it to N bytes."""
    sim: SimState = request.app.state.sim
    match = _INPUT_NAME.match(request.path_params["name"])
    if match is None:
        return _not_found("sample inputs are named {width}x{height}.png or .jpg")
    width, height = int(match.group(1)), int(match.group(2))
    pad_text = request.query_params.get("bytes", "0")
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE) or not pad_text.isdigit():
        return _not_found(f"sides must be within 1..{MAX_SIDE}, bytes a whole number")
    fmt = "png" if match.group(3) == "png" else "jpeg"
    data = await sim.images.get(width, height, fmt, min(int(pad_text), MAX_PAD))
    return ByteResponse(BytesSource(data), f"image/{fmt}", request)


ROUTES = [
    Route("/_sim/outputs/{request_id}/{name}", output_file, methods=["GET", "HEAD"]),
    Route("/_sim/inputs/{name}", input_file, methods=["GET", "HEAD"]),
]
