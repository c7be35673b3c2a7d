"""Counters behind `GET /_sim/stats` (never behind the token)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rcbatch.runcomfy.simulator.engine import Engine, Job


def canonical_digest(model_id: str, body: Mapping[str, Any]) -> bytes:
    """A digest of (model, body) that ignores key order and whitespace."""
    text = json.dumps([model_id, body], sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)
    return hashlib.sha256(text.encode()).digest()


@dataclass
class Stats:
    """What clients did to the simulator and what it did to them."""

    submits: int = 0
    duplicate_submits: int = 0
    rejected_submits: int = 0
    lost_submits: int = 0
    status_polls: int = 0
    result_polls: int = 0
    cancel_requests: int = 0
    downloads: int = 0
    bytes_served: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    #: jobs loaded from the state at start (their submits are counted again, see `restore`)
    restored_jobs: int = 0
    _seen: set[bytes] = field(default_factory=set, repr=False)

    def restore(self, jobs: Iterable[Job]) -> None:
        """Count the submits behind jobs loaded from the state, as if they were accepted now:
        `submits`, `duplicate_submits` and `lost_submits` then describe every job the
        simulator knows. Counters of requests (polls, downloads, rejected submits, request
        faults) are not saved: they count this process's requests only."""
        for job in jobs:
            self.note_accepted(job.model_id, job.body)
            self.restored_jobs += 1
            if job.answer == "lost":
                self.lost_submits += 1
                self.faults["lost_submit"] += 1

    def note_accepted(self, model_id: str, body: Mapping[str, Any]) -> None:
        """Count an accepted submit, and whether its body repeats an earlier accepted one."""
        self.submits += 1
        digest = canonical_digest(model_id, body)
        if digest in self._seen:
            self.duplicate_submits += 1
        self._seen.add(digest)

    def note_request(self, kind: str) -> None:
        """Count a status, result or cancel request (every one that arrives)."""
        if kind == "status":
            self.status_polls += 1
        elif kind == "result":
            self.result_polls += 1
        elif kind == "cancel":
            self.cancel_requests += 1

    def snapshot(self, engine: Engine, seed: int) -> dict[str, Any]:
        """The JSON document of `GET /_sim/stats`."""
        counts = engine.counts
        first, last = engine.first_submit, engine.last_finished
        span = round(last - first, 6) if first is not None and last is not None else None
        return {
            "submits": self.submits, "duplicate_submits": self.duplicate_submits,
            "rejected_submits": self.rejected_submits, "lost_submits": self.lost_submits,
            "status_polls": self.status_polls, "result_polls": self.result_polls,
            "cancel_requests": self.cancel_requests,
            "downloads": self.downloads, "bytes_served": self.bytes_served,
            "in_queue": counts["queued"], "in_progress": counts["running"],
            "completed": counts["succeeded"], "failed": counts["failed"],
            "cancelled": counts["cancelled"], "jobs": len(engine),
            "peak_in_progress": engine.peak_in_progress,
            "faults": dict(sorted((self.faults + Counter(job_fail=counts["failed"])).items())),
            "first_submit_at": _iso(engine, first), "last_finished_at": _iso(engine, last),
            "ideal_makespan": span, "seed": seed, "restored_jobs": self.restored_jobs,
        }


def _iso(engine: Engine, moment: float | None) -> str | None:
    return None if moment is None else iso(engine, moment)


def iso(engine: Engine, moment: float) -> str:
    """An engine time as an ISO 8601 UTC timestamp with microseconds."""
    return engine.wall(moment).isoformat(timespec="microseconds").replace("+00:00", "Z")
