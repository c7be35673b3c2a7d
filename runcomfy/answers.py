"""What the RunComfy Model API answers, parsed into frozen types, and its error answers mapped
onto rcbatch's exception tree.

Little of the wire format is documented (see runcomfy-api/WIRE.md): several shapes are guesses.
So the parsers accept extra fields but refuse, with `UnexpectedAnswer`, anything they would
otherwise have to guess at: an unknown state, a missing or mismatched request id, a success
without outputs. A wrong guess then fails loudly instead of silently losing a job.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Literal

import structlog

from rcbatch.errors import (
    AccountError,
    ApiRejected,
    ItemFailed,
    RateLimited,
    RcbatchError,
    RetryLater,
    UnexpectedAnswer,
)

log = structlog.get_logger("runcomfy")

Endpoint = Literal["submit", "status", "result", "cancel"]

#: what RunComfy's own clients accept as a request id; checked before one goes into a URL
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")

_MESSAGE_KEYS = ("error_message", "message", "error", "detail")
_EXCERPT = 200
_MESSAGE_LIMIT = 2000


class JobState(StrEnum):
    """A remote job's state, in both of the API's vocabularies.

    /status says `completed` for any finished job (COMPLETED: ask /result what happened);
    /result says `succeeded` or `failed`. `canceled` is read as CANCELLED.
    """

    QUEUED = "in_queue"
    RUNNING = "in_progress"
    COMPLETED = "completed"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True once the job will not change any more (COMPLETED included)."""
        return self not in (JobState.QUEUED, JobState.RUNNING)


_STATE_ALIASES = {"canceled": JobState.CANCELLED}


@dataclass(frozen=True)
class SubmitAnswer:
    """The API accepted a job: its id and the URLs it gave for it."""

    request_id: str
    status_url: str | None
    result_url: str | None
    cancel_url: str | None


@dataclass(frozen=True)
class StatusAnswer:
    """One look at /status; `queue_position` only while queued."""

    request_id: str
    state: JobState
    queue_position: int | None


@dataclass(frozen=True)
class Output:
    """One output file's URL and whether the API listed it as an image or a video."""

    url: str
    kind: Literal["image", "video"]


@dataclass(frozen=True)
class ResultAnswer:
    """One look at /result: the state, and the outputs once it succeeded."""

    request_id: str
    state: JobState
    outputs: tuple[Output, ...]
    error: str | None
    cost: float | None
    created_at: str | None
    finished_at: str | None


@dataclass(frozen=True)
class CancelAnswer:
    """What /cancel said: `cancelled`, `not_cancellable`, or another outcome verbatim."""

    request_id: str
    outcome: Literal["cancelled", "not_cancellable"] | str


def check_request_id(request_id: object) -> str:
    """Return `request_id` if it may go into a URL; raise UnexpectedAnswer otherwise."""
    if isinstance(request_id, str) and REQUEST_ID_PATTERN.fullmatch(request_id):
        return request_id
    raise UnexpectedAnswer(f"not a valid RunComfy request id: {_short(repr(request_id))}")


def decode_body(content: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one (empty, HTML, a list, ...)."""
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def excerpt(content: bytes) -> str:
    """A short one-line excerpt of a raw body, for error messages."""
    text = " ".join(content.decode("utf-8", "replace").split())
    return _short(text, _EXCERPT) if text else "(empty body)"


def render_error(value: Any) -> str:
    """An API error value of any JSON shape as one readable line."""
    if isinstance(value, str):
        return _short(value.strip(), _MESSAGE_LIMIT)
    if isinstance(value, list) and value and all(isinstance(v, dict | str) for v in value):
        return _short("; ".join(_render_detail(v) for v in value), _MESSAGE_LIMIT)
    if isinstance(value, dict):
        inner = api_message(value)
        if inner:
            return inner
    return _short(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str),
                  _MESSAGE_LIMIT)


def _render_detail(item: dict[str, Any] | str) -> str:
    """One entry of a pydantic-style `detail` list: `field.path: msg`."""
    if isinstance(item, str):
        return item.strip()
    message = item.get("msg") or api_message(item) or render_error(item)
    loc = [str(part) for part in item.get("loc") or [] if part != "body"]
    return f"{'.'.join(loc)}: {message}" if loc else str(message)


def api_message(body: dict[str, Any] | None) -> str | None:
    """The API's own message, read where RunComfy's clients read it."""
    if not body:
        return None
    for key in _MESSAGE_KEYS:
        if body.get(key) not in (None, "", [], {}):
            return render_error(body[key])
    return None


def error_code_of(body: dict[str, Any] | None, *, nested: bool = True) -> str | None:
    """The `error_code` of an answer as text: top level, or (`nested`) in an `error` object."""
    if not body:
        return None
    candidates = [body.get("error_code")]
    if nested and isinstance(body.get("error"), dict):
        candidates += [body["error"].get("error_code"), body["error"].get("code")]
    for code in candidates:
        if isinstance(code, int | str) and not isinstance(code, bool) and str(code).strip():
            return _CODE_NAMES.get(str(code).strip(), str(code).strip())
    return None


#: documented error codes, also accepted by name
_CODE_NAMES = {"InvalidResourceIdentifier": "400001", "InsufficientResources": "400002",
               "UserAccountError": "400004", "PermissionDeniedError": "403001",
               "ResourceNotFound": "404001"}
_ACCOUNT_CODES = {"400002": "no_balance", "400004": "unauthorized", "403001": "forbidden"}
_ACCOUNT_STATUSES = {401: "unauthorized", 403: "forbidden", 402: "no_balance"}


def error_for_answer(endpoint: Endpoint, status_code: int, body: dict[str, Any] | None,
                     content: bytes, retry_after: float | None) -> RcbatchError | None:
    """The error an answer stands for, or None when it is a success to be parsed."""
    success = 200 <= status_code < 300
    # on a success, an `error` object is a failed job's own error, not the API's
    code = error_code_of(body, nested=not success)
    if success and code is None:
        return None
    where = f"{endpoint}: HTTP {status_code}" + (f", error_code {code}" if code else "")
    message = api_message(body) or excerpt(content)
    if status_code == 429:
        return RateLimited(f"{where}: {message}", retry_after=retry_after)
    if status_code == 408 or status_code >= 500:
        kind = "server_error" if status_code >= 500 else "request_timeout"
        return RetryLater(f"{where}: {message}", retry_after=retry_after, kind=kind)
    account_kind = _ACCOUNT_CODES.get(code or "") or _ACCOUNT_STATUSES.get(status_code)
    if account_kind:
        return AccountError(f"{where}: {message}", status_code=status_code, error_code=code,
                            kind=account_kind)
    return _item_error(endpoint, status_code, code, where, message)


def _item_error(endpoint: Endpoint, status_code: int, code: str | None, where: str,
                message: str) -> RcbatchError:
    if status_code == 404 or code == "404001":
        if endpoint == "submit":
            return ApiRejected(f"unknown model ({where}): {message}", status_code=status_code,
                               error_code=code, kind="unknown_model")
        return ItemFailed(f"request not found, unknown or expired ({where}): {message}",
                          kind="request_not_found")
    if status_code in (400, 422) or code == "400001":
        return ApiRejected(message, status_code=status_code, error_code=code)
    return UnexpectedAnswer(f"{where}: {message}")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date), or None."""
    if not value or not value.strip():
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return _seconds_until(value, time.time() if now is None else now)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _seconds_until(date: str, now: float) -> float | None:
    try:
        when = parsedate_to_datetime(date.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive one is read the same way
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def parse_submit(body: dict[str, Any]) -> SubmitAnswer:
    """A submit answer; raises UnexpectedAnswer without a valid request_id."""
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not REQUEST_ID_PATTERN.fullmatch(request_id):
        raise UnexpectedAnswer(f"submit answer has no valid request_id: {_keys(body)}")
    return SubmitAnswer(request_id=request_id, status_url=_text(body.get("status_url")),
                        result_url=_text(body.get("result_url")),
                        cancel_url=_text(body.get("cancel_url")))


def parse_status(body: dict[str, Any], request_id: str) -> StatusAnswer:
    """A /status answer for `request_id`."""
    _same_request(body, request_id, "status")
    state = parse_state(body.get("status"), "status")
    position = body.get("queue_position")
    if isinstance(position, str) and position.strip().isdigit():
        position = int(position)
    if not isinstance(position, int) or isinstance(position, bool) or position < 0:
        position = None
    return StatusAnswer(request_id=request_id, state=state, queue_position=position)


def parse_result(body: dict[str, Any], request_id: str) -> ResultAnswer:
    """A /result answer for `request_id` (a failed job is returned with state FAILED)."""
    _same_request(body, request_id, "result")
    state = parse_state(body.get("status"), "result")
    outputs = parse_outputs(body.get("output"))
    error = None if body.get("error") in (None, "", {}, []) else render_error(body["error"])
    if state is JobState.COMPLETED:  # /status's word on /result: decide by what came with it
        state = _completed_as(outputs, error)
    if state is JobState.SUCCEEDED and not outputs:
        raise UnexpectedAnswer(f"result: status succeeded but no output URLs: {_keys(body)}")
    return ResultAnswer(request_id=request_id, state=state, outputs=outputs, error=error,
                        cost=_cost(body.get("cost")), created_at=_text(body.get("created_at")),
                        finished_at=_text(body.get("finished_at")))


def _completed_as(outputs: tuple[Output, ...], error: str | None) -> JobState:
    if outputs:
        return JobState.SUCCEEDED
    if error:
        return JobState.FAILED
    raise UnexpectedAnswer("result: status completed with neither output nor error")


def parse_cancel(body: dict[str, Any], request_id: str) -> CancelAnswer:
    """A /cancel answer; without `outcome`, a `status` tells whether the job was cancelled."""
    _same_request(body, request_id, "cancel")
    outcome = body.get("outcome")
    if isinstance(outcome, str) and outcome.strip():
        word = outcome.strip().lower()
        return CancelAnswer(request_id, "cancelled" if word == "canceled" else word)
    if body.get("status") is None:
        raise UnexpectedAnswer(f"cancel answer has neither outcome nor status: {_keys(body)}")
    state = parse_state(body.get("status"), "cancel")
    return CancelAnswer(request_id,
                        "cancelled" if state is JobState.CANCELLED else "not_cancellable")


def parse_state(raw: Any, where: str) -> JobState:
    """One of the API's state words as a JobState; UnexpectedAnswer naming anything else."""
    if not isinstance(raw, str):
        raise UnexpectedAnswer(f"{where}: missing or non-text status: {_short(repr(raw))}")
    word = raw.strip().lower()
    if word in _STATE_ALIASES:
        return _STATE_ALIASES[word]
    try:
        return JobState(word)
    except ValueError:
        raise UnexpectedAnswer(f"{where}: unknown job state {_short(repr(raw))}") from None


_OUTPUT_KINDS: dict[str, Literal["image", "video"]] = {
    "image": "image", "images": "image", "video": "video", "videos": "video"}


def parse_outputs(output: Any) -> tuple[Output, ...]:
    """The output URLs, in the order the API listed them, without duplicates."""
    if output is None:
        return ()
    if not isinstance(output, dict):
        raise UnexpectedAnswer(f"result: output is not an object: {_short(repr(output))}")
    found: list[Output] = []
    for key, value in output.items():
        kind = _OUTPUT_KINDS.get(key)
        if kind is None or value is None:
            continue
        for url in value if isinstance(value, list) else [value]:
            if not isinstance(url, str) or not url.strip():
                raise UnexpectedAnswer(f"result: output {key!r} holds a non-URL: "
                                       f"{_short(repr(url))}")
            if Output(url.strip(), kind) not in found:
                found.append(Output(url.strip(), kind))
    unknown = sorted(k for k in output if k not in _OUTPUT_KINDS)
    if unknown:
        log.warning("runcomfy_unknown_output_keys", keys=unknown)
    if not found and unknown:
        raise UnexpectedAnswer(f"result: output has none of image/images/video/videos, "
                               f"only {unknown}")
    return tuple(found)


def _same_request(body: dict[str, Any], request_id: str, where: str) -> None:
    said = body.get("request_id")
    if said is not None and str(said) != request_id:
        raise UnexpectedAnswer(f"{where}: asked about {request_id!r}, the answer is about "
                               f"{_short(repr(said))}")


def _cost(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        cost = float(value)
    except (TypeError, ValueError):
        log.warning("runcomfy_unreadable_cost", cost=_short(repr(value)))
        return None
    return cost if math.isfinite(cost) else None


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _keys(body: dict[str, Any]) -> str:
    return "keys " + _short(repr(sorted(body)))


def _short(text: str, limit: int = _EXCERPT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
