"""The one exception tree of rcbatch, split by what the caller must do.

    RcbatchError                      root: catch this to catch everything of ours
    ├── InputError                    fix the input; nothing was enqueued (CLI exit 2)
    │   └── ValidationFailed          every problem of a submission, as `Problem`s
    ├── RetryLater                    transient: try the same thing again after `retry_after`
    │   ├── TransportError            timeout or connection error before a request was sent
    │   └── RateLimited               HTTP 429 (`retry_after` from Retry-After when present)
    ├── SubmitUncertain               a submit may have reached the API; never re-send blindly
    ├── ItemFailed                    this item cannot succeed as asked; fail it with `kind`
    │   ├── ApiRejected               400/422: the API refused the body (its message kept)
    │   ├── JobFailed                 the remote job ended failed (or was cancelled remotely)
    │   └── OutputLost                an output URL stayed gone or kept breaking
    ├── AccountError                  stop everything: token refused (401/403), no balance (402)
    ├── UnexpectedAnswer              the API answered something we cannot parse; never looped on
    └── ServiceUnavailable            Redis, bucket or API unreachable after retries (CLI exit 3)

Third-party exceptions are translated at the boundary with ``raise ... from``. No message built
here ever contains the API token: messages come from the API's own text or from our own words.
"""

from __future__ import annotations

from dataclasses import dataclass


class RcbatchError(Exception):
    """Root of every error rcbatch raises on purpose."""

    #: short machine-readable kind, recorded in the manifest's `error.kind`
    kind: str = "error"

    def __init__(self, message: str = "", *, kind: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if kind is not None:
            self.kind = kind

    def as_record(self) -> dict[str, str]:
        """The `{"kind", "message"}` form the manifest and item records store."""
        return {"kind": self.kind, "message": self.message}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one row: printed as `FILE:LINE: FIELD: message`."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        """The JSON form used by `rcbatch validate --json`."""
        return {"file": self.file, "line": self.line, "field": self.field,
                "message": self.message}


class InputError(RcbatchError):
    """The user's input or usage is wrong; fixing it is the only way forward."""

    kind = "input"


class ValidationFailed(InputError):
    """A submission had one or more invalid rows; `problems` lists every one."""

    kind = "validation"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        rows = {(p.file, p.line) for p in self.problems}
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"{len(self.problems)} {noun} in {len(rows)} "
                         f"{'row' if len(rows) == 1 else 'rows'}; nothing was enqueued")


class RetryLater(RcbatchError):
    """A transient failure: the same call may succeed later."""

    kind = "transient"

    def __init__(self, message: str = "", *, retry_after: float | None = None,
                 kind: str | None = None) -> None:
        super().__init__(message, kind=kind)
        self.retry_after = retry_after


class TransportError(RetryLater):
    """A timeout or connection failure (for a submit: one raised before the body was sent)."""

    kind = "transport"


class RateLimited(RetryLater):
    """HTTP 429: slow down; `retry_after` holds the server's Retry-After when it sent one."""

    kind = "rate_limited"


class SubmitUncertain(RcbatchError):
    """The submit's answer was lost after the request may have reached the API."""

    kind = "submit_uncertain"


class ItemFailed(RcbatchError):
    """The item cannot succeed as asked: record the error and move on."""

    kind = "failed"


class _Answered(RcbatchError):
    """An error the API answered with: keeps its HTTP status and `error_code`."""

    def __init__(self, message: str = "", *, status_code: int | None = None,
                 error_code: str | None = None, kind: str | None = None) -> None:
        super().__init__(message, kind=kind)
        self.status_code = status_code
        self.error_code = error_code


class ApiRejected(_Answered, ItemFailed):
    """The API refused the request body (HTTP 400/422); `message` is the API's own."""

    kind = "api_rejected"


class JobFailed(ItemFailed):
    """The remote job ended in failure; `message` carries the API's error text."""

    kind = "job_failed"


class OutputLost(ItemFailed):
    """An output could not be downloaded intact after retries."""

    kind = "output_lost"


class AccountError(_Answered):
    """The token or the account is refused: pause everything instead of burning items."""

    kind = "account"


class UnexpectedAnswer(RcbatchError):
    """The API's answer did not have a shape we understand (unknown state, bad JSON, ...)."""

    kind = "unexpected_answer"


class ServiceUnavailable(RcbatchError):
    """A service we need (Redis, the bucket, the API) could not be reached after retries."""

    kind = "unavailable"
