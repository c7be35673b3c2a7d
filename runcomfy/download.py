"""Output downloads: an open streaming answer checked for status and size, read in chunks
under the size limit and an average-rate floor, every failure one of rcbatch's errors.

A download has no overall deadline: a 2 GiB video on a slow link legitimately takes long. A
server trickling bytes, which read timeouts never catch, is stopped by the rate floor instead:
past a grace (the read timeout) the time allowed grows with the bytes received.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx

from rcbatch.errors import OutputLost, RcbatchError, RetryLater, UnexpectedAnswer
from rcbatch.runcomfy.answers import parse_retry_after


class Download:
    """An open output download: its headers, and its body as a stream of byte chunks."""

    def __init__(self, url: str, response: httpx.Response, max_bytes: int, *,
                 min_rate: tuple[float, float] = (0.0, 0.0),
                 final_url: str | None = None) -> None:
        """Wrap an open streaming response; `RunComfyClient.download` builds these.
        `min_rate` is (grace seconds, bytes a second): the floor the average must keep.
        `final_url`: the URL that answered after redirects, with its host's name (the
        response's own URL names the address connected to); default the response's."""
        self.url = url
        self.final_url = final_url if final_url is not None else str(response.url)
        self.content_length = content_length(response)
        self.content_type: str | None = response.headers.get("Content-Type")
        self._response = response
        self._max_bytes = max_bytes
        self._min_rate = min_rate
        self._opened = time.monotonic()

    def __repr__(self) -> str:
        return f"Download(url={safe_url(self.url)!r}, content_length={self.content_length})"

    async def aiter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        """The body in chunks; raises RetryLater/OutputLost when it breaks, is short or huge.

        By default chunks come as they arrive (up to 1 MiB each): re-chunking to a fixed
        size copies every byte twice more and halved a 1 GiB download (bench/streaming.py).
        """
        received = 0
        try:
            async for chunk in self._response.aiter_bytes(chunk_size):
                received += len(chunk)
                if received > self._max_bytes:
                    raise OutputLost(f"{safe_url(self.url)} is larger than {self._max_bytes} "
                                     "bytes", kind="too_large")
                self._check_rate(received)
                yield chunk
        except httpx.HTTPError as exc:
            raise self._broken(exc, self._wire_bytes(received)) from exc
        self._check_complete(self._wire_bytes(received))

    def _check_rate(self, received: int) -> None:
        """RetryLater once the average rate fell under the floor after the grace: the time
        allowed grows with the bytes received, so a large download is never cut for length,
        while a trickle (which read timeouts never catch) ends."""
        grace, rate = self._min_rate
        elapsed = time.monotonic() - self._opened
        if rate > 0 and elapsed > grace + received / rate:
            raise RetryLater(f"download of {safe_url(self.url)} too slow: {received} bytes in "
                             f"{elapsed:.0f} s (under {rate:g} bytes/s on average)",
                             kind="download_too_slow")

    def _wire_bytes(self, decoded: int) -> int | None:
        """Bytes received as sent (what Content-Length counts), None when unknown."""
        encoding = self._response.headers.get("Content-Encoding", "").strip().lower()
        if encoding in ("", "identity"):
            return decoded
        return self._response.num_bytes_downloaded or None

    def _broken(self, exc: httpx.HTTPError, wire: int | None) -> RetryLater:
        short = (isinstance(exc, httpx.RemoteProtocolError) and self.content_length is not None
                 and wire is not None and wire < self.content_length)
        return RetryLater(f"download of {safe_url(self.url)} broke after {wire} bytes: "
                          f"{describe(exc)}", kind="short_download" if short else "download")

    def _check_complete(self, wire: int | None) -> None:
        if self.content_length is None or wire is None or wire == self.content_length:
            return
        kind = "short_download" if wire < self.content_length else "download"
        raise RetryLater(f"download of {safe_url(self.url)} ended after {wire} bytes, "
                         f"Content-Length said {self.content_length}", kind=kind)


async def checked_download(response: httpx.Response, url: str,
                            max_bytes: int) -> httpx.Response:
    """`response` if it is a 200 of acceptable size; otherwise close it and raise."""
    error: RcbatchError | None = None
    status = response.status_code
    where = f"download of {safe_url(url)}: HTTP {status}"
    if status in (401, 403, 404, 410):
        error = OutputLost(f"{where}: the output is gone or no longer accessible",
                           kind="output_lost" if status in (404, 410) else "output_forbidden")
    elif status in (408, 429) or status >= 500:
        error = RetryLater(where, kind="download",
                           retry_after=parse_retry_after(response.headers.get("Retry-After")))
    elif status != 200:
        error = UnexpectedAnswer(f"{where} (expected 200)")
    elif (content_length(response) or 0) > max_bytes:
        error = OutputLost(f"{where}: Content-Length {content_length(response)} is over the "
                           f"limit of {max_bytes} bytes", kind="too_large")
    if error is not None:
        await response.aclose()
        raise error
    return response


def describe(exc: BaseException) -> str:
    """An exception as one short line: its type and the start of its text."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def content_length(response: httpx.Response) -> int | None:
    """The answer's Content-Length as a number, None when absent or unreadable."""
    value = response.headers.get("Content-Length", "").strip()
    return int(value) if value.isdigit() else None


def safe_url(url: str) -> str:
    """A URL without its query or fragment (pre-signed URLs carry credentials there)."""
    return url.split("?", 1)[0].split("#", 1)[0][:200]
