"""The simulator's own endpoints (never behind the token, never faulted).

- `GET /_sim/stats`: counters, see `Stats.snapshot`. `completed` counts succeeded jobs only;
  `ideal_makespan` is seconds from the first accepted submit to the last job finish. With a
  state path, the jobs loaded at start count as `restored_jobs` and in every job-derived
  figure (`submits`, `duplicate_submits`, `lost_submits`, the per-state counts, `jobs`); the
  request counters (polls, downloads, rejected submits, request faults) start at zero.
- `GET /_sim/jobs`: every job with its drawn duration and faults, the sha256 of its
  (model, body) and what became of its submit's answer; and `without_job`, the submits an
  injected fault kept from creating a job (refused, or dropped) (for tests and debugging).
- `POST /_sim/reset`: forget all jobs (also those in the state) and counters and go back to
  the options the simulator started with, changed by an optional JSON object of overrides
  (e.g. `{"fail_5xx": 0.2, "concurrency": 8}`); overrides never accumulate across resets.
- `GET /_sim/config`: the options in force (the token only as "<set>").
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rcbatch.runcomfy.simulator.state import SimState


def _sim(request: Request) -> SimState:
    sim: SimState = request.app.state.sim
    sim.engine.advance()
    return sim


async def stats(request: Request) -> Response:
    """GET /_sim/stats."""
    sim = _sim(request)
    return JSONResponse(sim.stats.snapshot(sim.engine, sim.seed))


async def jobs(request: Request) -> Response:
    """GET /_sim/jobs."""
    sim = _sim(request)
    return JSONResponse({"jobs": [sim.job_listing(job) for job in sim.engine.jobs()],
                         "without_job": sim.without_job})


async def config(request: Request) -> Response:
    """GET /_sim/config."""
    sim = _sim(request)
    return JSONResponse({**sim.config.public_summary(), "seed": sim.seed})


async def reset(request: Request) -> Response:
    """POST /_sim/reset, with optional option overrides as a JSON object."""
    sim = _sim(request)
    raw = await request.body()
    try:
        overrides = json.loads(raw) if raw.strip() else {}
        if not isinstance(overrides, dict):
            raise ValueError("the body must be a JSON object of options")
        sim.reset(sim.startup_config.with_overrides(overrides))
    except (ValueError, TypeError) as exc:
        return JSONResponse({"error_message": str(exc)}, status_code=400)
    return JSONResponse({"reset": True, "seed": sim.seed})


ROUTES = [
    Route("/_sim/stats", stats, methods=["GET"]),
    Route("/_sim/jobs", jobs, methods=["GET"]),
    Route("/_sim/config", config, methods=["GET"]),
    Route("/_sim/reset", reset, methods=["POST"]),
]
