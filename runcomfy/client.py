"""The RunComfy Model API client: submit, status, result, cancel, and streaming downloads.

Every failure leaves here as one of rcbatch's own exceptions (rcbatch/errors.py), chosen by what
the caller must do next. The one subtle split is the submit: the API has no idempotency key, so
a submit whose answer was lost after the request may have reached the server raises
`SubmitUncertain` (never re-send it blindly); only failures certainly raised before anything was
sent (connect errors and timeouts, pool timeouts) are a retryable `TransportError`.

The token lives in a SecretStr and is put into the Authorization header of API calls only;
downloads (CDN URLs, other hosts) never carry it, and any error message that would contain it
is redacted on the way out.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from types import TracebackType
from typing import Any

import httpx
from pydantic import SecretStr

from rcbatch.errors import (
    AccountError,
    ItemFailed,
    JobFailed,
    OutputLost,
    RcbatchError,
    RetryLater,
    SubmitUncertain,
    TransportError,
    UnexpectedAnswer,
)
from rcbatch.runcomfy.answers import (
    CancelAnswer,
    Endpoint,
    JobState,
    ResultAnswer,
    StatusAnswer,
    SubmitAnswer,
    check_request_id,
    decode_body,
    error_for_answer,
    excerpt,
    parse_cancel,
    parse_result,
    parse_retry_after,
    parse_status,
    parse_submit,
)
from rcbatch.runcomfy.transport import AiohttpTransport

DEFAULT_BASE_URL = "https://model-api.runcomfy.net"
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)
#: the only failures that prove a submit's request never left this process
_CERTAINLY_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_MAX_REDIRECTS = 10
#: what the transport honours of these: the connection cap and the idle expiry
_POOL_LIMITS = httpx.Limits(max_connections=64, keepalive_expiry=2.0)
_REDACTED = "[redacted]"
_MIN_REDACTED_LENGTH = 8  # shorter "tokens" (test values) would shred ordinary words


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing: the API authenticates with a bearer token and the
    CDN needs no cookies."""

    def extract_cookies(self, response: httpx.Response) -> None:
        """Ignore the answer's Set-Cookie headers."""


class _CookielessClient(httpx.AsyncClient):
    """httpx's AsyncClient without cookie handling. httpx reads every answer into its jar
    through urllib's cookie machinery: 3 % of a worker's CPU in the overhead benchmark
    (py-spy), for cookies nobody uses."""

    _jar = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        """Always the empty jar."""
        return self._jar

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        """httpx's constructor sets the jar; ours stays."""


class RunComfyClient:
    """An async client for the Model API; one per process, closed with `aclose()`."""

    def __init__(self, token: str | SecretStr, base_url: str = DEFAULT_BASE_URL, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 timeout: httpx.Timeout | None = None, max_output_bytes: int = 2 * 1024**3,
                 user_agent: str = "rcbatch/0.1") -> None:
        """Build a client; nothing is sent until the first call."""
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        self.base_url = _checked_base_url(base_url)
        self.max_output_bytes = max_output_bytes
        self._base_is_loopback = _is_loopback(httpx.URL(self.base_url).host)
        # Idle connections are dropped after 2 s, well before servers close them (uvicorn
        # 5 s, load balancers 60 s): reusing one just as the server closes it would turn a
        # good submit into a SubmitUncertain.
        self._http = _CookielessClient(transport=transport or AiohttpTransport(_POOL_LIMITS),
                                       timeout=timeout or DEFAULT_TIMEOUT,
                                       headers={"User-Agent": user_agent},
                                       follow_redirects=False)

    def __repr__(self) -> str:
        return f"RunComfyClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> RunComfyClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def submit(self, model_id: str, body: Mapping[str, Any]) -> SubmitAnswer:
        """Submit one job; see the module docstring for the SubmitUncertain rule."""
        path = f"/v1/models/{_checked_model_id(model_id)}"
        content = _encode_body(body)
        with self._redacting():
            response = await self._exchange("submit", "POST", path, content=content)
            try:
                return parse_submit(self._answer("submit", response))
            except UnexpectedAnswer as exc:
                if not response.is_success:
                    raise
                raise SubmitUncertain(
                    f"submit to {model_id} answered HTTP {response.status_code} but the answer "
                    f"could not be read ({exc.message}); a job may exist, so it is not "
                    "re-sent automatically") from exc

    async def status(self, request_id: str) -> StatusAnswer:
        """The job's state as /status tells it (COMPLETED: ask `result`)."""
        rid = check_request_id(request_id)
        with self._redacting():
            response = await self._exchange("status", "GET", f"/v1/requests/{rid}/status")
            return parse_status(self._answer("status", response), rid)

    async def result(self, request_id: str, *, include_cost: bool = False) -> ResultAnswer:
        """The job's result; a failed job raises JobFailed, a cancelled one is CANCELLED."""
        rid = check_request_id(request_id)
        params = {"include_cost": "true"} if include_cost else None
        with self._redacting():
            response = await self._exchange("result", "GET", f"/v1/requests/{rid}/result",
                                            params=params)
            answer = parse_result(self._answer("result", response), rid)
            if answer.state is JobState.FAILED:
                raise JobFailed(answer.error or "the job failed (the API gave no reason)")
            return answer

    async def cancel(self, request_id: str) -> CancelAnswer:
        """Ask the API to cancel a job (only a queued job can be); safe to repeat."""
        rid = check_request_id(request_id)
        with self._redacting():
            response = await self._exchange("cancel", "POST", f"/v1/requests/{rid}/cancel")
            return parse_cancel(self._answer("cancel", response), rid)

    def download(self, url: str) -> AbstractAsyncContextManager[Download]:
        """Open an output URL for streaming: `async with client.download(u) as d: ...`."""
        return self._download(url)

    async def _exchange(self, endpoint: Endpoint, method: str, path: str, *,
                        content: bytes | None = None,
                        params: dict[str, str] | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._bearer()}", "Accept": "application/json"}
        if content is not None:
            headers["Content-Type"] = "application/json"
        request = self._http.build_request(method, self.base_url + path, content=content,
                                           params=params, headers=headers)
        try:
            return await self._http.send(request)
        except httpx.HTTPError as exc:
            raise _transport_error(endpoint, exc) from exc

    def _answer(self, endpoint: Endpoint, response: httpx.Response) -> dict[str, Any]:
        body = decode_body(response.content)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        error = error_for_answer(endpoint, response.status_code, body, response.content,
                                 retry_after)
        if error is not None:
            raise error
        if body is None:
            raise UnexpectedAnswer(f"{endpoint}: HTTP {response.status_code} with a body that "
                                   f"is not a JSON object: {excerpt(response.content)}")
        return body

    def _bearer(self) -> str:
        secret = self._token.get_secret_value()
        if not secret.strip():
            raise AccountError("no RunComfy API token is configured", kind="unauthorized")
        return secret

    @contextmanager
    def _redacting(self) -> Iterator[None]:
        """Blank the token out of any error leaving here (the API may echo what it got)."""
        try:
            yield
        except RcbatchError as exc:
            secret = self._token.get_secret_value()
            if len(secret) >= _MIN_REDACTED_LENGTH:
                exc.message = exc.message.replace(secret, _REDACTED)
                exc.args = tuple(a.replace(secret, _REDACTED) if isinstance(a, str) else a
                                 for a in exc.args)
            raise

    @asynccontextmanager
    async def _download(self, url: str) -> AsyncIterator[Download]:
        response = await self._open(url)
        try:
            yield Download(url, response, self.max_output_bytes)
        finally:
            await response.aclose()

    async def _open(self, url: str) -> httpx.Response:
        """GET `url`, following redirects by hand so every hop passes the URL rules."""
        current = url
        for _ in range(_MAX_REDIRECTS + 1):
            request = self._http.build_request("GET", self._checked_download_url(current),
                                               headers={"Accept-Encoding": "identity"})
            try:
                response = await self._http.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise TransportError(f"download of {_safe(current)} failed: "
                                     f"{_describe(exc)}", kind="download") from exc
            location = response.headers.get("Location")
            if not (response.is_redirect and location):
                return await _checked_download(response, current, self.max_output_bytes)
            await response.aclose()
            current = str(response.url.join(location))
        raise OutputLost(f"download of {_safe(url)}: more than {_MAX_REDIRECTS} redirects",
                         kind="too_many_redirects")

    def _checked_download_url(self, url: str) -> httpx.URL:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ItemFailed(f"not a usable output URL: {_safe(url)}",
                             kind="invalid_url") from exc
        if parsed.scheme == "https" and parsed.host:
            return parsed
        if parsed.scheme == "http" and _is_loopback(parsed.host) and self._base_is_loopback:
            return parsed
        raise ItemFailed(f"refusing to download {_safe(url)}: outputs are fetched over https "
                         "(plain http only from loopback when the API itself is on loopback)",
                         kind="insecure_url")


class Download:
    """An open output download: its headers, and its body as a stream of byte chunks."""

    def __init__(self, url: str, response: httpx.Response, max_bytes: int) -> None:
        """Wrap an open streaming response; `RunComfyClient.download` builds these."""
        self.url = url
        self.final_url = str(response.url)
        self.content_length = _content_length(response)
        self.content_type: str | None = response.headers.get("Content-Type")
        self._response = response
        self._max_bytes = max_bytes

    def __repr__(self) -> str:
        return f"Download(url={_safe(self.url)!r}, content_length={self.content_length})"

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
                    raise OutputLost(f"{_safe(self.url)} is larger than {self._max_bytes} "
                                     "bytes", kind="too_large")
                yield chunk
        except httpx.HTTPError as exc:
            raise self._broken(exc, self._wire_bytes(received)) from exc
        self._check_complete(self._wire_bytes(received))

    def _wire_bytes(self, decoded: int) -> int | None:
        """Bytes received as sent (what Content-Length counts), None when unknown."""
        encoding = self._response.headers.get("Content-Encoding", "").strip().lower()
        if encoding in ("", "identity"):
            return decoded
        return self._response.num_bytes_downloaded or None

    def _broken(self, exc: httpx.HTTPError, wire: int | None) -> RetryLater:
        short = (isinstance(exc, httpx.RemoteProtocolError) and self.content_length is not None
                 and wire is not None and wire < self.content_length)
        return RetryLater(f"download of {_safe(self.url)} broke after {wire} bytes: "
                          f"{_describe(exc)}", kind="short_download" if short else "download")

    def _check_complete(self, wire: int | None) -> None:
        if self.content_length is None or wire is None or wire == self.content_length:
            return
        kind = "short_download" if wire < self.content_length else "download"
        raise RetryLater(f"download of {_safe(self.url)} ended after {wire} bytes, "
                         f"Content-Length said {self.content_length}", kind=kind)


async def _checked_download(response: httpx.Response, url: str,
                            max_bytes: int) -> httpx.Response:
    """`response` if it is a 200 of acceptable size; otherwise close it and raise."""
    error: RcbatchError | None = None
    status = response.status_code
    where = f"download of {_safe(url)}: HTTP {status}"
    if status in (401, 403, 404, 410):
        error = OutputLost(f"{where}: the output is gone or no longer accessible",
                           kind="output_lost" if status in (404, 410) else "output_forbidden")
    elif status in (408, 429) or status >= 500:
        error = RetryLater(where, kind="download",
                           retry_after=parse_retry_after(response.headers.get("Retry-After")))
    elif status != 200:
        error = UnexpectedAnswer(f"{where} (expected 200)")
    elif (_content_length(response) or 0) > max_bytes:
        error = OutputLost(f"{where}: Content-Length {_content_length(response)} is over the "
                           f"limit of {max_bytes} bytes", kind="too_large")
    if error is not None:
        await response.aclose()
        raise error
    return response


def _transport_error(endpoint: Endpoint, exc: httpx.HTTPError) -> RcbatchError:
    """A failure without an answer, translated by whether the request may have arrived."""
    if endpoint == "submit" and not isinstance(exc, _CERTAINLY_UNSENT):
        return SubmitUncertain(f"submit may have reached the API but its answer was lost "
                               f"({_describe(exc)}); not re-sent automatically")
    if isinstance(exc, httpx.TransportError):
        return TransportError(f"{endpoint}: {_describe(exc)}")
    return UnexpectedAnswer(f"{endpoint}: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("Content-Length", "").strip()
    return int(value) if value.isdigit() else None


def _safe(url: str) -> str:
    """A URL without its query or fragment (pre-signed URLs carry credentials there)."""
    return url.split("?", 1)[0].split("#", 1)[0][:200]


def _is_loopback(host: str) -> bool:
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _checked_base_url(base_url: str) -> str:
    url = httpx.URL(base_url)
    if url.scheme not in ("http", "https") or not url.host or url.query or url.fragment:
        raise ValueError(f"the API base URL must be http(s)://host[:port][/path], "
                         f"got {_safe(base_url)!r}")
    return str(url).rstrip("/")


def _checked_model_id(model_id: str) -> str:
    parts = model_id.split("/") if isinstance(model_id, str) else [""]
    if all(p and p not in (".", "..") and _MODEL_CHARS.issuperset(p) for p in parts):
        return model_id
    raise ItemFailed(f"not a valid model id: {model_id!r}"[:200], kind="invalid_model")


_MODEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _encode_body(body: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(dict(body), ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ItemFailed(f"the input cannot be sent as JSON: {exc}"[:300],
                         kind="invalid_body") from exc
