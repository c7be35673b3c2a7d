"""httpx's transport seam over aiohttp: httpx's API above, aiohttp's C parser on the wire.

`RunComfyClient` speaks httpx (its requests, answers and exception types, and `MockTransport`
in the tests); only the bytes on the wire go through aiohttp. Measured on loopback, per
request of the worker's kind, 0.37-0.46 ms of CPU instead of 0.70-0.82 ms through httpcore
and h11, and a 1 GiB download in 0.25 s of CPU instead of 0.61-0.66 s.

aiohttp's failures are translated into httpx's, and the translation carries the rule the
submit rests on (`runcomfy/client.py`): only a failure raised before any byte of the request
could have left is a `ConnectError`, `ConnectTimeout` or `PoolTimeout`; everything else
(a reset, a disconnect, a read timeout, a broken body) says the request may have arrived.
The packaged httpx-aiohttp transport maps aiohttp's `ClientConnectionError`, the base class
of a server disconnecting after the request was sent, to `ConnectTimeout`: a lost submit
answer would then read as never sent and be re-sent, paying for the job twice. Hence this
module.

A request may carry a whole-call deadline in its `DEADLINE` extension (aiohttp's `total`):
met while a connection is still being taken or opened it is a `ConnectTimeout` (unsent),
later a `DeadlineExceeded` (a `ReadTimeout`: it may have arrived). API calls set one; output
downloads do not (a large file legitimately takes long; `runcomfy/client.py` bounds them by
size and by an average-rate floor instead). `read_capped` reads an answer whole, refusing one
larger than a limit as sent or once decoded.

The aiohttp session is made on the first request, inside the event loop that uses it (aiohttp
binds a session to its loop), and closed by `aclose`.

A request may name its TLS server name in httpx's `sni_hostname` extension: a download pinned
to the address its host name was checked to have (`runcomfy/addresses.py`) connects to that
IP, while the certificate is still verified for, and SNI sent with, the host's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import urllib.request
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import httpx
import yarl

#: what a download hands on at most per chunk (the stream reader's buffer is this size too,
#: so a fast download comes in few large pieces rather than many 64 KiB ones)
CHUNK = 1024 * 1024

#: the request extension holding a whole call's deadline in seconds (absent: none)
DEADLINE = "rcbatch.deadline"

_QUERY = re.compile(r"\?[^\s'\">]*")


class DeadlineExceeded(httpx.ReadTimeout):
    """The call's overall deadline passed once its request may have been sent."""


class AnswerTooLarge(Exception):
    """An answer body over the limit `read_capped` was given (as sent or decoded)."""


# Most specific first: the first class that matches decides.
_TRANSLATIONS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    # Raised while a connection is taken from the pool or opened: nothing was sent.
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),  # refused, DNS, TLS handshake, proxy
    # Raised once the request may have been written: it may have arrived.
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),  # a body cut short, as h11 says
    (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.ClientError, httpx.ReadError),
    # aiohttp's `total` timer (socket timeouts are matched above); unsent while no
    # connection was had yet (see `_translated`)
    (asyncio.TimeoutError, DeadlineExceeded),
    (OSError, httpx.ReadError),
)


@contextlib.contextmanager
def _translated(request: httpx.Request, progress: dict[str, bool] | None = None) -> Iterator[None]:
    """Translate aiohttp's failures; `progress` (filled by `_mark_connected`) tells whether a
    connection was had: aiohttp's `total` timer met in the pool or while connecting raises
    a bare TimeoutError, not its ConnectionTimeoutError."""
    try:
        yield
    except Exception as exc:
        for source, target in _TRANSLATIONS:
            if isinstance(exc, source):
                raise _translation(target, exc, request, progress) from exc
        raise


def _translation(target: type[httpx.TransportError], exc: BaseException,
                 request: httpx.Request,
                 progress: dict[str, bool] | None) -> httpx.TransportError:
    if target is not DeadlineExceeded:
        return target(_message(exc), request=request)
    if progress is not None and not progress.get("connected"):
        return httpx.ConnectTimeout("the call's deadline passed before a connection was had",
                                    request=request)
    return DeadlineExceeded("the call's deadline passed before its answer was complete",
                            request=request)


async def _mark_connected(session: aiohttp.ClientSession, context: Any,
                          params: object) -> None:
    """aiohttp trace hook, on a new or a pooled connection taken: from now on the request
    may leave."""
    context.trace_request_ctx["connected"] = True


def _message(exc: BaseException) -> str:
    """aiohttp's text without URL queries: some messages quote the whole URL, and a
    pre-signed output URL carries its credentials in the query."""
    return _QUERY.sub("", str(exc)) or type(exc).__name__


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport sending each request through one aiohttp session."""

    def __init__(self, limits: httpx.Limits) -> None:
        """Pool as `limits` say: at most `max_connections`, idle ones dropped after
        `keepalive_expiry` seconds."""
        self._limits = limits
        self._session: aiohttp.ClientSession | None = None
        self._tls: ssl.SSLContext | None = None
        self._proxies: dict[tuple[str, str], str | None] = {}

    def tls_context(self) -> ssl.SSLContext:
        """The TLS context of every connection, built on first use: httpx's CA bundle and
        SSL_CERT_FILE rules. Building it parses the whole CA bundle (45 ms of CPU measured
        here), so a worker builds it as its process starts, not in its first request."""
        if self._tls is None:
            self._tls = httpx.create_ssl_context()
        return self._tls

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._limits.max_connections or 0,  # aiohttp's 0: no limit, as None
                keepalive_timeout=self._limits.keepalive_expiry,  # None: kept for ever in both
                ssl=self.tls_context())
            # Not trust_env: aiohttp would then look up ~/.netrc and the proxy variables in a
            # thread on every request (two thread hops: measured slower than httpcore in the
            # worker); the proxy is looked up once per host instead (`_proxy_for`).
            trace = aiohttp.TraceConfig()
            trace.on_connection_create_end.append(_mark_connected)
            trace.on_connection_reuseconn.append(_mark_connected)
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, auto_decompress=False,
                read_bufsize=CHUNK, trace_configs=[trace])
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request`; the answer's body streams from the open aiohttp response."""
        body = await request.aread()
        progress: dict[str, bool] = {}
        with _translated(request, progress):
            answer = await self._session_now().request(
                request.method, yarl.URL(str(request.url), encoded=True),
                headers=[(k.decode("latin-1"), v.decode("latin-1"))
                         for k, v in request.headers.raw],
                data=body or None, allow_redirects=False, timeout=_timeout(request),
                proxy=self._proxy_for(request.url), compress=False,
                server_hostname=request.extensions.get("sni_hostname"),
                trace_request_ctx=progress)
        extensions: dict[str, object] = {"http_version": b"HTTP/1.1"}
        if answer.reason:
            extensions["reason_phrase"] = answer.reason.encode("latin-1", "replace")
        return httpx.Response(answer.status, headers=list(answer.raw_headers),
                              stream=_Body(answer, request), request=request,
                              extensions=extensions)

    def _proxy_for(self, url: httpx.URL) -> str | None:
        """The proxy the environment names for `url`'s host (HTTPS_PROXY, HTTP_PROXY,
        ALL_PROXY, NO_PROXY), as httpx honours them; read once per scheme and host."""
        key = (url.scheme, url.host)
        if key not in self._proxies:
            proxies = urllib.request.getproxies()
            bypass = "no" in proxies and urllib.request.proxy_bypass(url.host)
            self._proxies[key] = None if bypass else proxies.get(url.scheme, proxies.get("all"))
        return self._proxies[key]

    async def aclose(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None


def _timeout(request: httpx.Request) -> aiohttp.ClientTimeout:
    """httpx's per-request timeouts in aiohttp's terms: aiohttp's `connect` covers the wait
    for a pooled connection and opening it; a socket read may wait `read` seconds; `total`
    (the `DEADLINE` extension) runs from the start until the body is read or released."""
    given = request.extensions.get("timeout", {})
    pool, connect = given.get("pool"), given.get("connect")
    return aiohttp.ClientTimeout(
        total=request.extensions.get(DEADLINE), sock_read=given.get("read"),
        sock_connect=connect,
        connect=None if pool is None or connect is None else pool + connect)


class _Body(httpx.AsyncByteStream):
    """An answer's body as httpx reads it: chunks as they arrive, at most `CHUNK` each."""

    def __init__(self, answer: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._answer, self._request = answer, request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _translated(self._request):
            async for chunk in self._answer.content.iter_chunked(CHUNK):
                yield chunk

    async def aclose(self) -> None:
        # A body read to its end returns the connection to the pool; one left unread closes it.
        self._answer.release()


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The whole body of a streamed `response`, decoded; AnswerTooLarge past `limit` bytes
    as announced, as sent, or once decoded (a small gzip body may inflate a thousandfold)."""
    declared = response.headers.get("Content-Length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        raise AnswerTooLarge(f"Content-Length {declared} is over {limit} bytes")
    if response.is_stream_consumed:  # made in memory and already decoded (MockTransport)
        if len(response.content) > limit:
            raise AnswerTooLarge(f"the answer is over {limit} bytes")
        return response.content
    raw = bytearray()
    async for chunk in response.aiter_raw():
        raw += chunk
        if len(raw) > limit:
            raise AnswerTooLarge(f"the answer went past {limit} bytes")
    data = bytes(raw)
    codings = response.headers.get("Content-Encoding", "").lower().split(",")
    for coding in reversed([c.strip() for c in codings if c.strip()]):
        data = _inflated(coding, data, limit, response.request)
    return data


def _inflated(coding: str, data: bytes, limit: int, request: httpx.Request) -> bytes:
    """`data` with one content coding undone, never inflating past `limit` bytes."""
    if coding == "identity":
        return data
    if coding not in ("gzip", "x-gzip", "deflate"):
        raise httpx.DecodingError(f"unsupported Content-Encoding {coding!r}", request=request)
    # gzip; deflate is zlib-wrapped by the RFC, raw by some servers (httpx accepts both)
    tries = [zlib.MAX_WBITS | 16] if "gzip" in coding else [zlib.MAX_WBITS, -zlib.MAX_WBITS]
    for wbits in tries:
        try:
            out = zlib.decompressobj(wbits).decompress(data, limit + 1)
            break
        except zlib.error as exc:
            error = exc
    else:
        raise httpx.DecodingError(f"{coding} body: {error}", request=request) from error
    if len(out) > limit:
        raise AnswerTooLarge(f"the answer inflates past {limit} bytes")
    return out
