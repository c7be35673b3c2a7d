"""The RunComfy client: every kind of answer maps to the right result or error, submits never
turn an uncertain send into a retry, downloads stream safely, and the token never leaks."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from rcbatch.errors import (
    AccountError,
    ApiRejected,
    ItemFailed,
    JobFailed,
    OutputLost,
    RateLimited,
    RcbatchError,
    RetryLater,
    SubmitUncertain,
    TransportError,
    UnexpectedAnswer,
)
from rcbatch.runcomfy.addresses import AddressPolicy, StaticResolver
from rcbatch.runcomfy.answers import JobState, Output, parse_retry_after
from rcbatch.runcomfy.client import RunComfyClient
from rcbatch.runcomfy.fake import FakeRunComfy

TOKEN = "rc-SECRET-token-0123456789abcdef"
MODEL = "bytedance/dreamina-4-0/text-to-image"
RID = "req_abc-123"
ENDPOINTS = ("submit", "status", "result", "cancel")
Handler = Callable[[httpx.Request], httpx.Response]


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    """A handler that always answers `status` with `body` (dict: JSON; str: raw text)."""
    def handle(request: httpx.Request) -> httpx.Response:
        if isinstance(body, dict | list):
            return httpx.Response(status, json=body, headers=headers)
        return httpx.Response(status, text=body or "", headers=headers)
    return handle


def raising(exc: Exception) -> Handler:
    """A handler that raises `exc` as the transport would."""
    def handle(request: httpx.Request) -> httpx.Response:
        raise exc
    return handle


def make_client(handler: Handler | None, **kwargs: Any) -> RunComfyClient:
    """A client whose every request goes to `handler` (None: to the network)."""
    transport = httpx.MockTransport(handler) if handler else None
    return RunComfyClient(TOKEN, transport=transport, **kwargs)


async def _call(client: RunComfyClient, endpoint: str) -> Any:
    async with client:
        if endpoint == "submit":
            return await client.submit(MODEL, {"prompt": "a cat", "width×height": "2048x2048"})
        if endpoint == "result":
            return await client.result(RID)
        return await getattr(client, endpoint)(RID)


def outcome(endpoint: str, handler: Handler) -> Any:
    """What one call of `endpoint` gives: its answer or the error it raised (token-checked)."""
    try:
        return asyncio.run(_call(make_client(handler), endpoint))
    except RcbatchError as exc:
        assert TOKEN not in str(exc) and TOKEN not in repr(exc)
        return exc


def _is(result: Any, cls: type, kind: str | None = None) -> bool:
    return type(result) is cls and (kind is None or getattr(result, "kind", None) == kind)


DETAIL = {"detail": [{"loc": ["body", "prompt"], "msg": "String too long", "type": "x"},
                     {"loc": ["body", "width×height"], "msg": "Input should be '2048x2048(1:1)'"}]}

# (status, body, headers, expected class, expected kind, text the message must contain)
COMMON_ERRORS = [
    (401, {"error_message": "bad token"}, None, AccountError, "unauthorized", "bad token"),
    (403, {"error_code": 403001, "message": "not yours"}, None, AccountError, "forbidden", ""),
    (402, "Payment Required", None, AccountError, "no_balance", "Payment Required"),
    (400, {"error_code": 400002, "error_message": "no balance"}, None, AccountError,
     "no_balance", "no balance"),
    (200, {"error_code": "400004", "error_message": "token revoked"}, None, AccountError,
     "unauthorized", "token revoked"),
    (200, {"error_code": 400001, "error_message": "Invalid model"}, None, ApiRejected,
     "api_rejected", "Invalid model"),
    (422, DETAIL, None, ApiRejected, "api_rejected",
     "prompt: String too long; width×height: Input should be '2048x2048(1:1)'"),
    (400, {"message": "prompt is required"}, None, ApiRejected, None, "prompt is required"),
    (400, {"error": {"code": 1, "message": "nested text"}}, None, ApiRejected, None,
     "nested text"),
    (400, {"detail": "plain detail"}, None, ApiRejected, None, "plain detail"),
    (400, "<html>Bad Request</html>", None, ApiRejected, None, "<html>Bad Request</html>"),
    (429, {"message": "slow down"}, {"Retry-After": "7"}, RateLimited, "rate_limited", "slow"),
    (503, "<html>upstream down</html>", {"Retry-After": "2"}, RetryLater, "server_error", "503"),
    (500, {"error_message": "boom"}, None, RetryLater, "server_error", "boom"),
    (408, "", None, RetryLater, "request_timeout", "408"),
    (409, {"message": "conflict"}, None, UnexpectedAnswer, None, "HTTP 409"),
    (302, "", {"Location": "https://elsewhere.test/"}, UnexpectedAnswer, None, "HTTP 302"),
    (418, "x" * 5000, None, UnexpectedAnswer, None, "HTTP 418"),
]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(("status", "body", "headers", "cls", "kind", "text"), COMMON_ERRORS)
def test_error_answers_map_to_the_right_exception(endpoint: str, status: int, body: Any,
                                                  headers: Any, cls: type, kind: str | None,
                                                  text: str) -> None:
    result = outcome(endpoint, answer(status, body, headers))
    assert _is(result, cls, kind), result
    assert text in result.message
    assert len(result.message) < 600


def test_retry_after_is_kept_in_seconds_or_from_a_date() -> None:
    assert outcome("status", answer(429, {}, {"Retry-After": "7"})).retry_after == 7.0
    soon = email.utils.formatdate(time.time() + 120, usegmt=True)
    waited = outcome("status", answer(429, {}, {"Retry-After": soon})).retry_after
    assert 60 < waited <= 121
    assert outcome("submit", answer(503, "", {"Retry-After": "3"})).retry_after == 3.0
    assert outcome("status", answer(429, {})).retry_after is None


@pytest.mark.parametrize(("value", "seconds"), [
    ("7", 7.0), ("0", 0.0), ("1.5", 1.5), ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
    ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0), ("soon", None), ("-5", None), ("", None),
    (None, None), ("inf", None)])
def test_retry_after_parsing(value: str | None, seconds: float | None) -> None:
    now = email.utils.parsedate_to_datetime("Wed, 21 Oct 2015 07:28:00 GMT").timestamp()
    assert parse_retry_after(value, now=now) == seconds


@pytest.mark.parametrize("endpoint", ["status", "result", "cancel"])
@pytest.mark.parametrize("body", [{"error_message": "gone"},
                                  {"error_code": 404001, "error_message": "expired"}])
def test_a_missing_request_fails_the_item(endpoint: str, body: dict[str, Any]) -> None:
    result = outcome(endpoint, answer(404, body))
    assert _is(result, ItemFailed, "request_not_found")
    assert _is(outcome(endpoint, answer(200, {"error_code": 404001})), ItemFailed,
               "request_not_found")


def test_a_404_on_submit_rejects_the_model() -> None:
    assert _is(outcome("submit", answer(404, {"detail": "Not Found"})), ApiRejected,
               "unknown_model")


def test_status_reads_every_state_word_of_both_vocabularies() -> None:
    words = {"in_queue": JobState.QUEUED, "in_progress": JobState.RUNNING,
             "completed": JobState.COMPLETED, "cancelled": JobState.CANCELLED,
             "canceled": JobState.CANCELLED, "failed": JobState.FAILED,
             "succeeded": JobState.SUCCEEDED, "IN_QUEUE": JobState.QUEUED}
    for word, state in words.items():
        got = outcome("status", answer(200, {"request_id": RID, "status": word}))
        assert got.state is state, word
    queued = outcome("status", answer(200, {"status": "in_queue", "queue_position": 3,
                                            "logs": ["x"], "new_field": {"a": 1}}))
    assert (queued.request_id, queued.queue_position) == (RID, 3)
    assert JobState.COMPLETED.is_terminal and not JobState.RUNNING.is_terminal


@pytest.mark.parametrize(("endpoint", "body", "text"), [
    ("status", {"status": "paused"}, "'paused'"),
    ("status", {"state": "in_queue"}, "status"),
    ("status", {"request_id": "other", "status": "in_queue"}, "'other'"),
    ("result", {"status": "exploded"}, "'exploded'"),
    ("result", {"status": "succeeded"}, "no output"),
    ("result", {"status": "succeeded", "output": {"audio": "https://x.test/a.wav"}}, "audio"),
    ("result", {"status": "succeeded", "output": {"images": [42]}}, "42"),
    ("result", {"status": "succeeded", "output": ["https://x.test/a.png"]}, "not an object"),
    ("result", {"status": "completed"}, "neither output nor error"),
    ("cancel", {"request_id": RID}, "neither outcome nor status"),
])
def test_unexpected_shapes_fail_loudly(endpoint: str, body: dict[str, Any], text: str) -> None:
    result = outcome(endpoint, answer(200, body))
    assert _is(result, UnexpectedAnswer) and text in result.message


@pytest.mark.parametrize("endpoint", ["status", "result", "cancel"])
@pytest.mark.parametrize("body", ["<html>gateway</html>", "", "[1, 2]", "null"])
def test_a_success_that_is_not_a_json_object_is_unexpected(endpoint: str, body: str) -> None:
    result = outcome(endpoint, answer(200, body))
    assert _is(result, UnexpectedAnswer) and "HTTP 200" in result.message


@pytest.mark.parametrize("body", ["<html>gateway</html>", "", {"status": "in_queue"},
                                  {"request_id": "../../etc"}, {"request_id": 12},
                                  {"error_code": 999999, "error_message": "who knows"}])
def test_an_unreadable_submit_success_is_uncertain(body: Any) -> None:
    result = outcome("submit", answer(200, body))
    assert _is(result, SubmitUncertain) and "a job may exist" in result.message


def test_submit_answer_tolerates_extra_fields() -> None:
    urls = {k: f"https://api.test/v1/requests/{RID}/{k[:-4]}"
            for k in ("status_url", "result_url", "cancel_url")}
    got = outcome("submit", answer(200, {"request_id": RID, **urls, "eta": 3, "x": [None]}))
    assert (got.request_id, got.status_url, got.cancel_url) == (
        RID, urls["status_url"], urls["cancel_url"])


def test_result_lists_outputs_in_order_with_their_kind() -> None:
    body = {"request_id": RID, "status": "succeeded", "created_at": "2025-01-01T00:00:00Z",
            "finished_at": 1735689630, "cost": 0.035, "metrics": {"s": 3},
            "output": {"image": "https://c.test/a.png", "seed": 7,
                       "images": ["https://c.test/a.png", "https://c.test/b.png"],
                       "videos": ["https://c.test/v.mp4"], "video": None}}
    with capture_logs() as logs:
        got = outcome("result", answer(200, body))
    assert got.state is JobState.SUCCEEDED and got.error is None
    assert got.outputs == (Output("https://c.test/a.png", "image"),
                           Output("https://c.test/b.png", "image"),
                           Output("https://c.test/v.mp4", "video"))
    assert (got.cost, got.created_at, got.finished_at) == (0.035, "2025-01-01T00:00:00Z",
                                                           "1735689630")
    assert any(log.get("keys") == ["seed"] for log in logs)


@pytest.mark.parametrize(("body", "state"), [
    ({"status": "in_queue"}, JobState.QUEUED), ({"status": "in_progress"}, JobState.RUNNING),
    ({"status": "cancelled", "error": "cancelled by user"}, JobState.CANCELLED),
    ({"status": "completed", "output": {"video": "https://c.test/v.mp4"}}, JobState.SUCCEEDED),
])
def test_result_states_that_are_not_errors(body: dict[str, Any], state: JobState) -> None:
    got = outcome("result", answer(200, body))
    assert got.state is state
    assert bool(got.outputs) == (state is JobState.SUCCEEDED)


@pytest.mark.parametrize(("body", "text"), [
    ({"status": "failed", "error": "NSFW content detected"}, "NSFW content detected"),
    ({"status": "failed", "error": {"code": "E42", "details": [1, 2]}},
     '{"code":"E42","details":[1,2]}'),
    ({"status": "failed", "error": {"message": "out of memory", "code": 5}}, "out of memory"),
    ({"status": "failed"}, "no reason"),
    ({"status": "completed", "error": "model crashed"}, "model crashed"),
])
def test_a_failed_job_raises_job_failed_with_the_api_text(body: dict[str, Any],
                                                          text: str) -> None:
    result = outcome("result", answer(200, body))
    assert _is(result, JobFailed) and text in result.message


@pytest.mark.parametrize(("body", "expected"), [
    ({"request_id": RID, "status": "cancelled", "outcome": "cancelled"}, "cancelled"),
    ({"outcome": "not_cancellable", "status": "in_progress"}, "not_cancellable"),
    ({"outcome": "Canceled"}, "cancelled"), ({"outcome": "already_done"}, "already_done"),
    ({"status": "cancelled"}, "cancelled"), ({"status": "completed"}, "not_cancellable"),
])
def test_cancel_outcomes(body: dict[str, Any], expected: str) -> None:
    assert outcome("cancel", answer(202, body)).outcome == expected


def test_result_asks_for_the_cost_only_when_told() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "in_queue"})

    async def both() -> None:
        async with make_client(handle) as client:
            await client.result(RID)
            await client.result(RID, include_cost=True)
    asyncio.run(both())
    assert [r.url.params.get("include_cost") for r in seen] == [None, "true"]
    assert seen[0].url.path == f"/v1/requests/{RID}/result"


CERTAINLY_UNSENT: list[Exception] = [
    httpx.ConnectError("refused"), httpx.ConnectTimeout("slow connect"),
    httpx.PoolTimeout("pool full")]
MAYBE_SENT: list[Exception] = [
    httpx.ReadTimeout("read"), httpx.WriteTimeout("write"), httpx.ReadError("reset"),
    httpx.WriteError("broken pipe"), httpx.CloseError("close"),
    httpx.RemoteProtocolError("Server disconnected without sending a response."),
    httpx.LocalProtocolError("local"), httpx.ProxyError("proxy"),
    httpx.DecodingError("bad gzip")]


@pytest.mark.parametrize("exc", CERTAINLY_UNSENT, ids=lambda e: type(e).__name__)
def test_submit_failing_before_sending_is_retryable(exc: Exception) -> None:
    assert _is(outcome("submit", raising(exc)), TransportError)


@pytest.mark.parametrize("exc", MAYBE_SENT, ids=lambda e: type(e).__name__)
def test_submit_whose_answer_may_be_lost_is_uncertain(exc: Exception) -> None:
    result = outcome("submit", raising(exc))
    assert _is(result, SubmitUncertain) and type(exc).__name__ in result.message
    assert result.__cause__ is exc


@pytest.mark.parametrize("endpoint", ["status", "result", "cancel"])
@pytest.mark.parametrize("exc", CERTAINLY_UNSENT + MAYBE_SENT[:-1], ids=lambda e: type(e).__name__)
def test_reads_retry_on_any_transport_failure(endpoint: str, exc: Exception) -> None:
    assert _is(outcome(endpoint, raising(exc)), TransportError)


def test_requests_carry_the_token_only_in_the_authorization_header() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"request_id": RID, "status": "in_queue"})

    for endpoint in ENDPOINTS:
        outcome(endpoint, handle)
    assert [(r.method, r.url.path) for r in seen] == [
        ("POST", f"/v1/models/{MODEL}"), ("GET", f"/v1/requests/{RID}/status"),
        ("GET", f"/v1/requests/{RID}/result"), ("POST", f"/v1/requests/{RID}/cancel")]
    for request in seen:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert TOKEN not in str(request.url) + request.content.decode()
    assert seen[0].headers["Content-Type"] == "application/json"
    assert b'"width\xc3\x97height"' in seen[0].content


def test_cookies_set_by_an_answer_are_never_sent_back() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"request_id": RID, "status": "in_queue"},
                              headers={"Set-Cookie": "session=abc; Path=/"})

    async def twice() -> None:
        async with make_client(handle) as client:
            await client.status(RID)
            await client.status(RID)

    asyncio.run(twice())
    assert len(seen) == 2 and "cookie" not in seen[1].headers


def test_the_token_never_shows_in_reprs_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = RunComfyClient(SecretStr(TOKEN), "http://127.0.0.1:9")
    assert repr(client) == "RunComfyClient(base_url='http://127.0.0.1:9')"
    echo = {"error_message": f"token {TOKEN} was revoked"}
    with capture_logs() as logs:
        for status in (401, 400, 500, 418):
            result = outcome("status", answer(status, echo))
            assert "[redacted]" in result.message
        outcome("result", answer(200, {"status": "succeeded", "output": {
            "image": "https://c.test/a.png", "token": TOKEN}}))
        outcome("submit", raising(httpx.ReadTimeout(f"timed out with {TOKEN}")))
    assert TOKEN not in caplog.text and TOKEN not in repr(logs)
    asyncio.run(client.aclose())


def test_nothing_is_sent_without_token_or_with_a_bad_id() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    async def calls() -> list[RcbatchError]:
        errors = []
        for client, call in [
            (RunComfyClient("", transport=httpx.MockTransport(handle)), "status:req1"),
            (make_client(handle), "status:../admin"), (make_client(handle), "result:a/b"),
            (make_client(handle), "cancel:" + "x" * 129),
            (make_client(handle), "submit:../secrets"), (make_client(handle), "submit:nan")]:
            name, arg = call.split(":", 1)
            try:
                if name == "submit":
                    body = {"seed": float("nan")} if arg == "nan" else {}
                    await client.submit(MODEL if arg == "nan" else arg, body)
                else:
                    await getattr(client, name)(arg)
            except RcbatchError as exc:
                errors.append(exc)
        return errors
    errors = asyncio.run(calls())
    assert [type(e).__name__ + "/" + e.kind for e in errors] == [
        "AccountError/unauthorized", "UnexpectedAnswer/unexpected_answer",
        "UnexpectedAnswer/unexpected_answer", "UnexpectedAnswer/unexpected_answer",
        "ItemFailed/invalid_model", "ItemFailed/invalid_body"]
    assert seen == []


# --- downloads --------------------------------------------------------------------------

CDN = "https://cdn.test/out/0.png?X-Amz-Signature=abc"
#: what every made-up download host name resolves to (a public address: no DNS asked)
PUBLIC_IP = "93.184.215.14"


def addresses(*, allow_loopback: bool = False) -> AddressPolicy:
    """The address policy with every name resolving to PUBLIC_IP."""
    return AddressPolicy(resolver=StaticResolver(default=[PUBLIC_IP]),
                         allow_loopback=allow_loopback)


def fetch(handler: Handler | None, url: str = CDN, chunk: int = 1 << 20, **kwargs: Any) -> Any:
    """Download `url` through `handler`: (chunks, Download) or the error raised."""
    kwargs.setdefault("addresses", addresses())

    async def go() -> Any:
        async with make_client(handler, **kwargs) as client, client.download(url) as download:
            return [c async for c in download.aiter_bytes(chunk)], download
    try:
        return asyncio.run(go())
    except RcbatchError as exc:
        return exc


def test_download_streams_in_chunks_without_the_token() -> None:
    data = bytes(range(256)) * 10_000
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=data, headers={"Content-Type": "image/png"})
    chunks, download = fetch(handle, chunk=1 << 20)
    assert b"".join(chunks) == data
    assert [len(c) for c in chunks] == [1 << 20, 1 << 20, len(data) - (2 << 20)]
    assert (download.content_length, download.content_type) == (len(data), "image/png")
    assert "Authorization" not in seen[0].headers


def _streamed(parts: list[bytes], fail: Exception | None = None,
              length: int | None = None) -> Handler:
    async def body() -> Any:
        for part in parts:
            yield part
        if fail:
            raise fail

    def handle(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Length": str(length)} if length is not None else {}
        return httpx.Response(200, content=body(), headers=headers)
    return handle


@pytest.mark.parametrize(("handler", "cls", "kind"), [
    (answer(200, "x" * 50, {"Content-Length": "90"}), RetryLater, "short_download"),
    (answer(200, "x" * 50, {"Content-Length": "40"}), RetryLater, "download"),
    (answer(200, "x" * 100), OutputLost, "too_large"),
    (_streamed([b"x" * 40] * 3), OutputLost, "too_large"),
    (_streamed([b"x" * 10], httpx.ReadError("reset")), RetryLater, "download"),
    (_streamed([b"x" * 10], httpx.ReadTimeout("slow")), RetryLater, "download"),
    (_streamed([b"x" * 10], httpx.RemoteProtocolError("closed"), 60), RetryLater,
     "short_download"),
    (answer(404, "NoSuchKey"), OutputLost, "output_lost"),
    (answer(410, ""), OutputLost, "output_lost"),
    (answer(403, "AccessDenied"), OutputLost, "output_forbidden"),
    (answer(503, "", {"Retry-After": "4"}), RetryLater, "download"),
    (answer(204, ""), UnexpectedAnswer, None),
    (raising(httpx.ConnectError("refused")), TransportError, "download"),
])
def test_download_failures(handler: Handler, cls: type, kind: str | None) -> None:
    result = fetch(handler, max_output_bytes=99)
    assert _is(result, cls, kind), result
    assert "X-Amz-Signature" not in result.message


LOOP_BASE = "http://127.0.0.1:8000"
API_BASE = "https://model-api.runcomfy.net"


@pytest.mark.parametrize(("base", "url", "refusal"), [
    ("https://model-api.runcomfy.net", "https://cdn.test/a.png", None),
    ("https://model-api.runcomfy.net", "http://127.0.0.1:9000/a.png", "refused_address"),
    ("https://model-api.runcomfy.net", "http://cdn.test/a.png", "insecure_url"),
    (LOOP_BASE, "http://127.0.0.1:9000/a.png", None),
    ("http://localhost:8000", "http://localhost:9000/a.png", None),
    ("http://[::1]:8000", "http://[::1]:9000/a.png", None),
    (LOOP_BASE, "http://cdn.test/a.png", "insecure_url"),
    (LOOP_BASE, "http://127.0.0.1.evil.test/a.png", "insecure_url"),
    (LOOP_BASE, "ftp://127.0.0.1/a.png", "insecure_url"),
    (LOOP_BASE, "file:///etc/passwd", "insecure_url"),
])
def test_download_url_rules(base: str, url: str, refusal: str | None) -> None:
    # the client's default policy, names resolving to a public address, localhost to loopback
    resolver = StaticResolver({"localhost": ["127.0.0.1"]}, default=[PUBLIC_IP])
    policy = AddressPolicy(resolver=resolver, allow_loopback=base != API_BASE)
    result = fetch(answer(200, "png"), url, base_url=base, addresses=policy)
    assert not isinstance(result, RcbatchError) if refusal is None else _is(result, ItemFailed,
                                                                           refusal)


def test_the_default_policy_allows_loopback_only_when_the_api_is_on_loopback() -> None:
    url = "http://127.0.0.1:9000/a.png"
    assert _is(fetch(answer(200, "png"), url, addresses=None), ItemFailed, "refused_address")
    assert not isinstance(fetch(answer(200, "png"), url, base_url=LOOP_BASE, addresses=None),
                          RcbatchError)


def test_download_follows_redirects_but_checks_every_hop() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/a":
            return httpx.Response(302, headers={"Location": "/b"})
        if request.url.path == "/b":
            return httpx.Response(307, headers={"Location": "https://edge.test/c"})
        if request.url.path == "/c":
            return httpx.Response(200, content=b"data")
        if request.url.path == "/loop":
            return httpx.Response(302, headers={"Location": "/loop"})
        return httpx.Response(301, headers={"Location": "http://cdn.test/plain"})
    chunks, download = fetch(handle, "https://cdn.test/a")
    assert b"".join(chunks) == b"data" and download.final_url == "https://edge.test/c"
    assert all("Authorization" not in r.headers for r in seen)
    assert _is(fetch(handle, "https://cdn.test/down"), ItemFailed, "insecure_url")
    assert _is(fetch(handle, "https://cdn.test/loop"), OutputLost, "too_many_redirects")


# --- the fake ---------------------------------------------------------------------------

def test_the_fake_runs_a_job_end_to_end() -> None:
    fake = FakeRunComfy(token=TOKEN)

    async def go() -> tuple[Any, ...]:
        async with fake.client(TOKEN) as client:
            sub = await client.submit(MODEL, {"prompt": "a cat"})
            first = await client.status(sub.request_id)
            done = await client.result(sub.request_id, include_cost=True)
            async with client.download(done.outputs[0].url) as d:
                data = b"".join([c async for c in d.aiter_bytes()])
            fake.fail_next("submit", exc=httpx.ReadTimeout("lost"), after_processing=True)
            with pytest.raises(SubmitUncertain):
                await client.submit(MODEL, {"prompt": "a dog"})
            cancel = await client.cancel("fakereq-000002")
            return first, done, data, cancel
    first, done, data, cancel = asyncio.run(go())
    assert first.state is JobState.RUNNING and done.state is JobState.SUCCEEDED
    assert data.startswith(b"\x89PNG") and done.cost == 0.03
    assert cancel.outcome == "cancelled" and len(fake.jobs) == 2
    assert fake.submitted_bodies == [{"prompt": "a cat"}, {"prompt": "a dog"}]


def test_the_fake_refuses_a_wrong_token_and_unknown_models() -> None:
    fake = FakeRunComfy(token=TOKEN)
    assert _is(asyncio.run(_try(fake.client("wrong-token-1234"), "status", "x")), AccountError)
    assert _is(asyncio.run(_try(fake.client(TOKEN), "submit", "no/such-model")), ApiRejected)
    assert _is(asyncio.run(_try(fake.client(TOKEN), "result", "nope")), ItemFailed,
               "request_not_found")


async def _try(client: RunComfyClient, name: str, arg: str) -> Any:
    async with client:
        try:
            if name == "submit":
                return await client.submit(arg, {"prompt": "x"})
            return await getattr(client, name)(arg)
        except RcbatchError as exc:
            return exc


# --- real sockets on loopback -----------------------------------------------------------

class _Server(BaseHTTPRequestHandler):
    """Reads a submit's body and hangs up without answering; serves a short download."""

    bodies: list[bytes]

    def do_POST(self) -> None:
        self.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.close_connection = True

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100")
        self.end_headers()
        self.wfile.write(b"x" * 50)
        self.close_connection = True

    def log_message(self, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def loopback() -> Iterator[tuple[str, list[bytes]]]:
    """A real HTTP server on 127.0.0.1: its base URL and the bodies it received."""
    handler: Any = type("Handler", (_Server,), {"bodies": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.bodies
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_connection_dropped_after_the_body_makes_submit_uncertain(
        loopback: tuple[str, list[bytes]]) -> None:
    base, bodies = loopback
    result = asyncio.run(_try(RunComfyClient(TOKEN, base), "submit", MODEL))
    assert _is(result, SubmitUncertain) and "RemoteProtocolError" in result.message
    assert bodies == [b'{"prompt":"x"}']


def test_a_short_download_on_a_real_socket_is_retried(loopback: tuple[str, list[bytes]]) -> None:
    base, _ = loopback
    result = fetch(None, f"{base}/out.png", base_url=base, addresses=None)
    assert _is(result, RetryLater, "short_download")


def test_a_refused_connection_is_a_transport_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    for name in ("submit", "status"):
        result = asyncio.run(_try(RunComfyClient(TOKEN, base), name, MODEL if name == "submit"
                                  else RID))
        assert _is(result, TransportError), result
