"""The four Model API endpoints, shaped as runcomfy-api/WIRE.md describes them.

Every API request first advances the clock, then meets the injected faults (503, 429, a
dropped or reset connection), then the token check, then its handler; a "slow" answer is held
back `slow_seconds` before it is sent. A content refusal (the `refuse` rate, decided per body)
is a 400 after validation. `/status` reads `completed` for a failed job and `/result` says
`failed` with an error object (the WIRE.md guess). Queue positions are 1-based among the
token's own queued jobs. Error codes 429001 and 503001 are the simulator's own inventions.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rcbatch.runcomfy.simulator import validation
from rcbatch.runcomfy.simulator.config import SimulatorConfig
from rcbatch.runcomfy.simulator.connection import DropConnection
from rcbatch.runcomfy.simulator.engine import Job
from rcbatch.runcomfy.simulator.faults import RequestFaults, RequestKind
from rcbatch.runcomfy.simulator.inputs import fetch_inputs
from rcbatch.runcomfy.simulator.outputs import SIM_MODELS
from rcbatch.runcomfy.simulator.state import SimState
from rcbatch.runcomfy.simulator.stats import canonical_digest, iso

STATUS_NAMES = {"queued": "in_queue", "running": "in_progress", "succeeded": "completed",
                "failed": "completed", "cancelled": "cancelled"}
RESULT_NAMES = {"queued": "in_queue", "running": "in_progress", "succeeded": "succeeded",
                "failed": "failed", "cancelled": "cancelled"}


@dataclass(frozen=True)
class Call:
    """One authenticated API request on its way through a handler."""

    request: Request
    sim: SimState
    owner: str
    faults: RequestFaults
    now: float

    def base_url(self) -> str:
        """Where the simulator is reached, for the absolute URLs it hands out."""
        return self.sim.config.public_url or str(self.request.base_url).rstrip("/")


def error(status: int, code: int, kind: str, message: str) -> JSONResponse:
    """An error answer in the API's documented shape."""
    return JSONResponse({"error_code": code, "error_type": kind, "error_message": message},
                        status_code=status)


def owner_of(request: Request, config: SimulatorConfig) -> str | None:
    """A digest of the caller's Bearer token (None when refused); the token is never kept."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    expected = config.token
    if expected is not None and not hmac.compare_digest(token.encode(), expected.encode()):
        return None
    return hashlib.sha256(token.encode()).hexdigest()[:24]


def _injected(sim: SimState, faults: RequestFaults) -> Response | None:
    if faults.fail_5xx:
        sim.stats.faults["fail_5xx"] += 1
        return error(503, 503001, "ServiceUnavailable", "service unavailable (simulated)")
    if faults.fail_429:
        sim.stats.faults["fail_429"] += 1
        answer = error(429, 429001, "TooManyRequests", "too many requests (simulated)")
        answer.headers["Retry-After"] = str(sim.config.retry_after)
        return answer
    if faults.drop or faults.reset:
        name = "drop" if faults.drop else "reset"
        sim.stats.faults[name] += 1
        raise DropConnection(reset=name == "reset")
    return None


Handler = Callable[[Call], Awaitable[Response]]


def api_endpoint(kind: RequestKind, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler with the clock, fault injection, the token check and slow answers."""
    async def endpoint(request: Request) -> Response:
        sim: SimState = request.app.state.sim
        now = sim.engine.advance()
        sim.stats.note_request(kind)
        faults = sim.plan.for_request(kind)
        if kind == "submit":
            await _note_unanswered_submit(request, sim, faults, now)
        answer = _injected(sim, faults)
        if answer is None:
            owner = owner_of(request, sim.config)
            answer = (await handler(Call(request, sim, owner, faults, now)) if owner else
                      error(401, 400004, "UserAccountError", "missing or invalid API token"))
        if faults.slow:
            sim.stats.faults["slow"] += 1
            await asyncio.sleep(sim.config.slow_seconds)
        return answer
    return endpoint


async def _note_unanswered_submit(request: Request, sim: SimState, faults: RequestFaults,
                                  now: float) -> None:
    """Remember the body of a submit that gets no (timely) answer and creates no job: a
    dropped or reset one, or a slow 503/429."""
    failed = faults.fail_5xx or faults.fail_429
    dropped = "drop" if faults.drop else "reset" if faults.reset else ""
    reason = "slow" if failed and faults.slow else "" if failed else dropped
    if reason:
        model_id = request.path_params.get("model_id", "")
        sim.note_without_job(model_id, await _json_body(request), reason, now)


def _urls(base: str, request_id: str) -> dict[str, str]:
    root = f"{base}/v1/requests/{request_id}"
    return {"status_url": f"{root}/status", "result_url": f"{root}/result",
            "cancel_url": f"{root}/cancel"}


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        return None


async def submit(call: Call) -> Response:
    """POST /v1/models/{model_id}: validate, accept, answer with the request's URLs."""
    model = SIM_MODELS.get(call.request.path_params["model_id"])
    if model is None:
        return error(400, 400001, "InvalidResourceIdentifier", "unknown model id")
    body = await _json_body(call.request)
    rejected = validation.check(model.model_id, body, strict=call.sim.config.strict)
    if rejected is not None:
        call.sim.stats.rejected_submits += 1
        return rejected
    if call.sim.plan.refuses(canonical_digest(model.model_id, body)):
        call.sim.stats.faults["refuse"] += 1
        call.sim.note_without_job(model.model_id, body, "refuse", call.now)
        return error(400, 400101, "ContentPolicyViolation",
                     "the request was refused by the content filter (simulated)")
    answer = "lost" if call.faults.lost_submit else "slow" if call.faults.slow else "sent"
    port = call.request.client.port if call.request.client else None
    inputs = (await fetch_inputs(model.model_id, body) if call.sim.config.fetch_inputs
              else None)
    job = call.sim.create_job(call.owner, model, body, call.now, answer=answer,
                              client_port=port, inputs=inputs)
    if call.faults.lost_submit:
        call.sim.stats.lost_submits += 1
        call.sim.stats.faults["lost_submit"] += 1
        raise DropConnection
    return JSONResponse({"request_id": job.request_id, **_urls(call.base_url(), job.request_id)})


def _job(call: Call) -> Job | Response:
    job = call.sim.engine.get(call.request.path_params["request_id"])
    if job is None:
        return error(404, 404001, "ResourceNotFound", "unknown request id")
    if job.owner != call.owner:
        return error(403, 403001, "PermissionDeniedError", "request belongs to another user")
    return job


async def status(call: Call) -> Response:
    """GET /v1/requests/{id}/status."""
    job = _job(call)
    if isinstance(job, Response):
        return job
    body: dict[str, Any] = {"request_id": job.request_id, "status": STATUS_NAMES[job.state]}
    position = call.sim.engine.queue_position(job)
    if position is not None:
        body["queue_position"] = position
    urls = _urls(call.base_url(), job.request_id)
    return JSONResponse({**body, "status_url": urls["status_url"],
                         "result_url": urls["result_url"]})


async def result(call: Call) -> Response:
    """GET /v1/requests/{id}/result (`?include_cost=true` adds `cost` in USD)."""
    job = _job(call)
    if isinstance(job, Response):
        return job
    engine = call.sim.engine
    body: dict[str, Any] = {"request_id": job.request_id, "status": RESULT_NAMES[job.state],
                            "created_at": iso(engine, job.created)}
    if job.started is not None:
        body["started_at"] = iso(engine, job.started)
    if job.finished is not None:
        body["finished_at"] = iso(engine, job.finished)
    if job.state == "succeeded":
        body["output"] = _output(call.base_url(), job)
    elif job.state == "failed" and job.input_error:
        body["error"] = {"code": "input_unreadable", "message": job.input_error}
    elif job.state == "failed":
        body["error"] = {"code": "generation_failed", "message": "the job failed (simulated)"}
    if call.request.query_params.get("include_cost", "").lower() == "true":
        succeeded = job.state == "succeeded"
        files = len(job.outputs.files)
        body["cost"] = SIM_MODELS[job.model_id].cost(job.body, files) if succeeded else 0.0
    return JSONResponse(body)


def _output(base: str, job: Job) -> dict[str, Any]:
    urls = [f"{base}/_sim/outputs/{job.request_id}/{f.n}.{f.ext}" for f in job.outputs.files]
    key = job.outputs.key
    return {key: urls if key.endswith("s") else urls[0]}


async def cancel(call: Call) -> Response:
    """POST /v1/requests/{id}/cancel: only a queued job is cancelled."""
    job = _job(call)
    if isinstance(job, Response):
        return job
    done = call.sim.cancel(job, call.now)
    return JSONResponse({"request_id": job.request_id, "status": STATUS_NAMES[job.state],
                         "outcome": "cancelled" if done else "not_cancellable"},
                        status_code=202)


ROUTES = [
    Route("/v1/models/{model_id:path}", api_endpoint("submit", submit), methods=["POST"]),
    Route("/v1/requests/{request_id}/status", api_endpoint("status", status), methods=["GET"]),
    Route("/v1/requests/{request_id}/result", api_endpoint("result", result), methods=["GET"]),
    Route("/v1/requests/{request_id}/cancel", api_endpoint("cancel", cancel), methods=["POST"]),
]
