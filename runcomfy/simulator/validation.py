"""Checking a submitted body with the documented rules, and the 422 answer when it fails.

The rules and messages live in `runcomfy.catalogue` (shared with the client side, so the
simulator and the batch validator cannot drift apart). Only errors reject a body; warnings (a
limit only in a description, a page contradicting itself) pass, unless `strict` asks the
simulator to play an API that takes the stricter reading.
The error code 422001 is the simulator's own: RunComfy documents none for a schema error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from starlette.responses import JSONResponse

VALIDATION_ERROR_CODE = 422001


def problems(model_id: str, body: Mapping[str, Any], *,
             strict: bool = False) -> list[tuple[str, str]]:
    """(field, message) for every error (and with `strict` every warning) in this body."""
    from rcbatch.runcomfy import catalogue  # imported when needed: the app starts without it

    issues = catalogue.validate(model_id, body, allow_loopback_http=True)
    return [(issue.field, issue.message) for issue in issues
            if strict or issue.severity == "error"]


def rejection(errors: Sequence[tuple[str, str]]) -> JSONResponse:
    """The 422 answer: the first lines in error_message, each problem in detail."""
    text = "; ".join(f"{field}: {message}" for field, message in errors)
    detail = [{"loc": ["body", field], "msg": message, "type": "value_error"}
              for field, message in errors]
    return JSONResponse({"error_code": VALIDATION_ERROR_CODE, "error_type": "ValidationError",
                         "error_message": text, "detail": detail}, status_code=422)


def check(model_id: str, body: Any, *, strict: bool = False) -> JSONResponse | None:
    """None when the body may be accepted, else the 422 answer."""
    if not isinstance(body, Mapping):
        return rejection([("body", "must be a JSON object")])
    errors = problems(model_id, body, strict=strict)
    return rejection(errors) if errors else None
