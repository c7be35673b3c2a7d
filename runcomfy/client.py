"""The RunComfy Model API client: submit, status, result, cancel, and streaming downloads.

Every failure leaves here as one of rcbatch's own exceptions (rcbatch/errors.py), chosen by what
the caller must do next. The one subtle split is the submit: the API has no idempotency key, so
a submit whose answer was lost after the request may have reached the server raises
`SubmitUncertain` (never re-send it blindly); only failures certainly raised before anything was
sent (connect errors and timeouts, pool timeouts) are a retryable `TransportError`.

Every API call has an overall deadline (`call_deadline`, by default the connect, write and read
timeouts added up: the longest an honest call takes, and what the reconciler allows a submit)
and its answer a size cap (`max_answer_bytes`): a server trickling bytes or streaming without
end makes a retryable error (for a submit, SubmitUncertain) instead of a call that never ends
or fills memory. Output downloads have neither: they stream under `max_output_bytes`, and past
a grace of one read timeout must keep an average of `min_download_rate` bytes a second.

The token lives in a SecretStr and is put into the Authorization header of API calls only;
downloads (CDN URLs, other hosts) never carry it, and any error message that would contain it
is redacted on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from rcbatch.runcomfy.addresses import (
    AddressPolicy,
    Destination,
    IPAddress,
    is_loopback_url,
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
from rcbatch.runcomfy.download import Download, checked_download
from rcbatch.runcomfy.download import describe as _describe
from rcbatch.runcomfy.download import safe_url as _safe
from rcbatch.runcomfy.transport import (
    DEADLINE,
    AiohttpTransport,
    AnswerTooLarge,
    DeadlineExceeded,
    read_capped,
)

DEFAULT_BASE_URL = "https://model-api.runcomfy.net"
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)
#: the largest API answer read (they are a few hundred bytes; outputs are downloads)
MAX_ANSWER_BYTES = 1024 * 1024
#: the average bytes a second a download must keep once a read timeout has passed: far below
#: any working CDN, even shared by a worker's 64 connections, yet a trickle ends in minutes
MIN_DOWNLOAD_RATE = 4096.0
#: how long past `call_deadline` the client's own timer waits for a transport that ignores it
_BACKSTOP = 1.0
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
                 user_agent: str = "rcbatch/0.1", call_deadline: float | None = None,
                 max_answer_bytes: int = MAX_ANSWER_BYTES,
                 min_download_rate: float = MIN_DOWNLOAD_RATE,
                 addresses: AddressPolicy | None = None) -> None:
        """Build a client; nothing is sent until the first call.

        `call_deadline` (seconds; None: connect + write + read of `timeout`) bounds each API
        call whole; see the module docstring for it and the other limits. `addresses` judges
        every output URL and redirect hop (default: public addresses only, and loopback too
        when the API base URL is itself on loopback, the simulator).
        """
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        self.base_url = _checked_base_url(base_url)
        self.max_output_bytes = max_output_bytes
        self.max_answer_bytes = max_answer_bytes
        self.min_download_rate = min_download_rate
        timeout = timeout or DEFAULT_TIMEOUT
        self.call_deadline = call_deadline or _longest_call(timeout)
        self._grace = timeout.read or DEFAULT_TIMEOUT.read or 0.0
        self._base_is_loopback = is_loopback_url(self.base_url)
        self._addresses = addresses or AddressPolicy(allow_loopback=self._base_is_loopback)
        # Idle connections are dropped after 2 s, well before servers close them (uvicorn
        # 5 s, load balancers 60 s): reusing one just as the server closes it would turn a
        # good submit into a SubmitUncertain.
        self._transport = transport or AiohttpTransport(_POOL_LIMITS)
        self._http = _CookielessClient(transport=self._transport,
                                       timeout=timeout,
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

    def prepare(self) -> None:
        """Do now the set-up the first call would do on its way (the TLS context: 45 ms of
        CPU here), for a process whose first calls are latency-bound (a worker's)."""
        if isinstance(self._transport, AiohttpTransport):
            self._transport.tls_context()

    async def submit(self, model_id: str, body: Mapping[str, Any]) -> SubmitAnswer:
        """Submit one job; see the module docstring for the SubmitUncertain rule."""
        path = f"/v1/models/{_checked_model_id(model_id)}"
        content = _encode_body(body)
        with self._redacting():
            response, raw = await self._exchange("submit", "POST", path, content=content)
            try:
                return parse_submit(self._answer("submit", response, raw))
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
            answer = await self._exchange("status", "GET", f"/v1/requests/{rid}/status")
            return parse_status(self._answer("status", *answer), rid)

    async def result(self, request_id: str, *, include_cost: bool = False) -> ResultAnswer:
        """The job's result; a failed job raises JobFailed, a cancelled one is CANCELLED."""
        rid = check_request_id(request_id)
        params = {"include_cost": "true"} if include_cost else None
        with self._redacting():
            response, raw = await self._exchange("result", "GET",
                                                 f"/v1/requests/{rid}/result", params=params)
            answer = parse_result(self._answer("result", response, raw), rid)
            if answer.state is JobState.FAILED:
                raise JobFailed(answer.error or "the job failed (the API gave no reason)")
            return answer

    async def cancel(self, request_id: str) -> CancelAnswer:
        """Ask the API to cancel a job (only a queued job can be); safe to repeat."""
        rid = check_request_id(request_id)
        with self._redacting():
            answer = await self._exchange("cancel", "POST", f"/v1/requests/{rid}/cancel")
            return parse_cancel(self._answer("cancel", *answer), rid)

    def download(self, url: str) -> AbstractAsyncContextManager[Download]:
        """Open an output URL for streaming: `async with client.download(u) as d: ...`."""
        return self._download(url)

    async def _exchange(self, endpoint: Endpoint, method: str, path: str, *,
                        content: bytes | None = None,
                        params: dict[str, str] | None = None) -> tuple[httpx.Response, bytes]:
        """Send one API request; its answer and the answer's body, read within the limits."""
        headers = {"Authorization": f"Bearer {self._bearer()}", "Accept": "application/json"}
        if content is not None:
            headers["Content-Type"] = "application/json"
        request = self._http.build_request(method, self.base_url + path, content=content,
                                           params=params, headers=headers,
                                           extensions={DEADLINE: self.call_deadline})
        try:
            # The transport keeps the deadline itself, knowing whether the request left yet;
            # this timer only stops a transport that does not (and cannot tell: uncertain).
            async with asyncio.timeout(self.call_deadline + _BACKSTOP):
                response = await self._http.send(request, stream=True)
                try:
                    return response, await read_capped(response, self.max_answer_bytes)
                finally:
                    await response.aclose()
        except TimeoutError as exc:
            late = DeadlineExceeded(f"no complete answer within {self.call_deadline:g} s",
                                    request=request)
            raise _transport_error(endpoint, late) from exc
        except AnswerTooLarge as exc:
            raise _too_large(endpoint, str(exc)) from exc
        except httpx.HTTPError as exc:
            raise _transport_error(endpoint, exc) from exc

    def _answer(self, endpoint: Endpoint, response: httpx.Response,
                raw: bytes) -> dict[str, Any]:
        body = decode_body(raw)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        error = error_for_answer(endpoint, response.status_code, body, raw, retry_after)
        if error is not None:
            raise error
        if body is None:
            raise UnexpectedAnswer(f"{endpoint}: HTTP {response.status_code} with a body that "
                                   f"is not a JSON object: {excerpt(raw)}")
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
        response, final_url = await self._open(url)
        try:
            yield Download(url, response, self.max_output_bytes,
                           min_rate=(self._grace, self.min_download_rate), final_url=final_url)
        finally:
            await response.aclose()

    async def _open(self, url: str) -> tuple[httpx.Response, str]:
        """GET `url`, following redirects by hand so every hop passes the address policy and
        connects to the address that was checked; the answer and the URL that gave it (the
        host's name, not the address connected to)."""
        current = url
        for _ in range(_MAX_REDIRECTS + 1):
            destination = await self._checked_destination(current)
            try:
                response = await self._send_pinned(destination)
            except httpx.HTTPError as exc:
                raise TransportError(f"download of {_safe(current)} failed: "
                                     f"{_describe(exc)}", kind="download") from exc
            location = response.headers.get("Location")
            if not (response.is_redirect and location):
                checked = await checked_download(response, current, self.max_output_bytes)
                return checked, str(destination.url)
            await response.aclose()
            # relative to the URL asked for: `response.url` holds the pinned address
            current = str(destination.url.join(location))
        raise OutputLost(f"download of {_safe(url)}: more than {_MAX_REDIRECTS} redirects",
                         kind="too_many_redirects")

    async def _send_pinned(self, destination: Destination) -> httpx.Response:
        """GET `destination` from the first of its checked addresses that accepts a
        connection (as a connector would try each address a name resolves to)."""
        *others, last = destination.addresses
        for address in others:
            with contextlib.suppress(httpx.ConnectError):
                return await self._send_to(destination, address)
        return await self._send_to(destination, last)

    async def _send_to(self, destination: Destination, address: IPAddress) -> httpx.Response:
        request = destination.build_request(self._http, "GET", address=address,
                                            headers={"Accept-Encoding": "identity"})
        return await self._http.send(request, stream=True)

    async def _checked_destination(self, url: str) -> Destination:
        """Where `url` may be fetched from; ItemFailed when the policy refuses it,
        TransportError(kind="dns") when its host does not resolve (retryable)."""
        try:
            return await self._addresses.check(url)
        except ItemFailed as exc:
            raise ItemFailed(f"refusing to download {exc.message}", kind=exc.kind) from exc


def _transport_error(endpoint: Endpoint, exc: httpx.HTTPError) -> RcbatchError:
    """A failure without an answer, translated by whether the request may have arrived."""
    if endpoint == "submit" and not isinstance(exc, _CERTAINLY_UNSENT):
        return SubmitUncertain(f"submit may have reached the API but its answer was lost "
                               f"({_describe(exc)}); not re-sent automatically")
    if isinstance(exc, httpx.TransportError):
        kind = "deadline" if isinstance(exc, DeadlineExceeded) else None
        return TransportError(f"{endpoint}: {_describe(exc)}", kind=kind)
    return UnexpectedAnswer(f"{endpoint}: {_describe(exc)}")


def _too_large(endpoint: Endpoint, why: str) -> RcbatchError:
    """An answer too large to read: retried later; a submit's may announce a job: uncertain."""
    if endpoint == "submit":
        return SubmitUncertain(f"submit was answered but the answer was not read ({why}); a "
                               "job may exist, so it is not re-sent automatically")
    return RetryLater(f"{endpoint}: answer not read: {why}", kind="answer_too_large")


def _longest_call(timeout: httpx.Timeout) -> float:
    """Connect, write and read timeouts added up (a missing one counts as the default's)."""
    parts = [(timeout.connect, DEFAULT_TIMEOUT.connect), (timeout.write, DEFAULT_TIMEOUT.write),
             (timeout.read, DEFAULT_TIMEOUT.read)]
    return sum(given or default or 0.0 for given, default in parts)


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
