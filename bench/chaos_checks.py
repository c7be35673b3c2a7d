"""The end-state checks of a chaos run: nothing lost, nothing paid twice, every output intact.

The evidence is joined from three independent sources: the item records in Redis (and the
manifest the workers wrote), the simulator's own list of jobs (`GET /_sim/jobs`: each accepted
submission with the sha256 of its body and what became of its answer, plus the submits an
injected fault kept from creating a job), and the files in the bucket. An item and a job are
the same when the sha256 of (model, body sent) matches: the body is what the API was paid for.

Every item must end `completed` (exactly one job, outputs stored intact), `failed` with a
reason the run injected (exactly one job for a failure after submission, none for a refusal),
or `submit_uncertain` (at most one job, and a fault or blow that explains why its answer was
never recorded). Anything else is a problem, listed by item.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.chaos_cluster import Blow
from rcbatch.runcomfy.simulator.stats import canonical_digest
from rcbatch.worker import keys
from rcbatch.worker.bucket.naming import TEMP_MARK

#: a SIGKILL of the process holding a submit's connection explains a lost answer when it
#: came within these seconds of the job's creation (before: the request was on its way)
KILL_SLACK = 2.0
KILL_WINDOW = 5.0
#: error kinds of a submit that gave up after its retries (no job was created)
TRANSIENT_KINDS = frozenset({"server_error", "rate_limited", "transport", "request_timeout",
                             "transient"})
_BATCH_FILES = frozenset({"manifest.jsonl", "manifest.csv", "index.html"})


@dataclass
class Evidence:
    """Everything a chaos run left behind, gathered after it ended."""

    expected: int
    batch_id: str
    items: list[dict[str, str]]
    manifest: list[dict[str, Any]]
    jobs: list[dict[str, Any]]
    without_job: list[dict[str, Any]]
    stats: dict[str, Any]
    blows: list[Blow]
    bucket_root: Path
    #: time.time() minus time.monotonic(), to place wall-clock item times among the blows
    mono_to_wall: float


@dataclass
class Findings:
    """The outcome of the checks: counts, explanations and problems."""

    states: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    uncertain: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    lost: int = 0
    unexplained: int = 0
    wrong_submissions: int = 0
    orphan_jobs: int = 0
    sha_mismatches: int = 0
    missing_objects: int = 0
    stray_objects: int = 0
    temp_files: int = 0
    objects_checked: int = 0
    manifest_errors: int = 0

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return not self.problems

    def problem(self, text: str) -> None:
        """Record one failed check (kept short: the first ones tell the story)."""
        self.problems.append(text)


def check(ev: Evidence) -> Findings:
    """Run every end-state check over the evidence."""
    found = Findings()
    jobs = _by_digest(ev.jobs)
    without = _by_digest(ev.without_job)
    _check_items(ev, found, jobs, without)
    _check_jobs(ev, found)
    _check_manifest(ev, found)
    _check_bucket(ev, found)
    return found


def _by_digest(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[str(row.get("body_sha256"))].append(row)
    return grouped


def item_digest(item: Mapping[str, str]) -> str:
    """The sha256 of (model, body sent) that the simulator also keys its jobs by."""
    return canonical_digest(item["model"], json.loads(item["input"])).hex()


def _check_items(ev: Evidence, found: Findings, jobs: Mapping[str, list[dict[str, Any]]],
                 without: Mapping[str, list[dict[str, Any]]]) -> None:
    lines = {int(i.get("line") or 0) for i in ev.items}
    missing = [n for n in range(1, ev.expected + 1) if n not in lines]
    if len(ev.items) != ev.expected or missing:
        found.lost += len(missing)
        found.problem(f"{len(ev.items)} item records for {ev.expected} input rows; rows "
                      f"without an item: {missing[:10]}")
    for item in ev.items:
        state = item.get("state", "")
        found.states[keys.PUBLIC_STATE.get(state, state)] += 1
        mine = jobs.get(item_digest(item), [])
        if state == keys.COMPLETED:
            _completed(item, mine, found)
        elif state == keys.FAILED:
            _failed(item, mine, without.get(item_digest(item), []), ev.blows, found)
        elif state == keys.SUBMIT_UNCERTAIN:
            _uncertain(item, mine, without.get(item_digest(item), []), ev, found)
        else:
            found.lost += 1
            found.problem(f"item {item['id']} is lost: it ended {state!r}")


def _one_job(item: Mapping[str, str], mine: Sequence[dict[str, Any]], found: Findings) -> bool:
    """Exactly one accepted submission, and it is the one the item recorded."""
    if len(mine) == 1 and mine[0]["request_id"] == item.get("request_id"):
        return True
    found.wrong_submissions += 1
    found.problem(f"item {item['id']} ({item['state']}) has {len(mine)} accepted submissions "
                  f"{[j['request_id'] for j in mine]}, recorded {item.get('request_id')!r}")
    return False


def _completed(item: Mapping[str, str], mine: Sequence[dict[str, Any]], found: Findings) -> None:
    if not _one_job(item, mine, found):
        return
    job = mine[0]
    stored = json.loads(item.get("outputs") or "[]")
    if job["state"] != "succeeded" or len(stored) != len(job["outputs"]):
        found.problem(f"item {item['id']} completed with {len(stored)} outputs; its job "
                      f"{job['request_id']} is {job['state']} with {len(job['outputs'])}")


def _error(item: Mapping[str, str]) -> dict[str, str]:
    try:
        value = json.loads(item.get("error") or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _failed(item: Mapping[str, str], mine: Sequence[dict[str, Any]],
            refused: Sequence[dict[str, Any]], blows: Sequence[Blow], found: Findings) -> None:
    kind = _error(item).get("kind", "")
    reason = None
    if kind == "job_failed" and _one_job(item, mine, found) and mine[0]["will_fail"]:
        reason = "the job failed at the API (job_fail)"
    elif kind == "output_lost" and _one_job(item, mine, found) and any(
            o["gone"] == "permanent" for o in mine[0]["outputs"]):
        reason = "an output URL stayed 404 (output_404)"
    elif kind == "api_rejected" and not mine and any(r["reason"] == "refuse" for r in refused):
        reason = "the content filter refused the body (refuse)"
    elif kind in TRANSIENT_KINDS and not mine:
        reason = f"submit retries exhausted under injected {kind} faults"
    elif kind == "worker_lost" and len(mine) <= 1 and any(b.kind != "redis" for b in blows):
        reason = "a step crashed its worker too often (SIGKILLs)"
    if reason is None:
        found.unexplained += 1
        found.problem(f"item {item['id']} failed with an unexplained {kind!r}: "
                      f"{_error(item).get('message', '')[:160]}")
        reason = f"UNEXPLAINED {kind}"
    found.failures[f"{kind}: {reason}"] += 1


def _uncertain(item: Mapping[str, str], mine: Sequence[dict[str, Any]],
               unanswered: Sequence[dict[str, Any]], ev: Evidence, found: Findings) -> None:
    reason = None
    if len(mine) == 1:
        reason = _why_unrecorded(mine[0], ev.blows)
    elif not mine:
        submitting = float(item.get("submitting_at") or 0) - ev.mono_to_wall
        if unanswered:
            reason = f"no job: the submit met an injected {unanswered[-1]['reason']!r} fault"
        elif _blow_between(ev.blows, ("child", "main"), submitting - 0.5, submitting + 3):
            reason = "no job: its worker was SIGKILLed while submitting it"
        elif _redis_down(ev.blows, submitting):
            reason = "no job: Redis went down while it was being submitted"
    else:
        found.wrong_submissions += 1
        found.problem(f"uncertain item {item['id']} has {len(mine)} accepted submissions")
    if reason is None:
        found.unexplained += 1
        found.problem(f"uncertain item {item['id']} is unexplained: jobs "
                      f"{[(j['request_id'], j['answer']) for j in mine]}, "
                      f"error {_error(item).get('message', '')[:160]!r}")
        reason = "UNEXPLAINED"
    found.uncertain[reason] += 1


def _why_unrecorded(job: Mapping[str, Any], blows: Sequence[Blow]) -> str | None:
    """Why the answer to a submit that did create a job was never recorded, if we know."""
    created = float(job["created"])
    if job["answer"] == "lost":
        return "job created, its answer lost on the way (lost_submit)"
    if job["answer"] == "slow":
        return "job created, its answer slower than the read timeout (slow)"
    killed = [b for b in _blows_in(blows, ("child", "main"), created - KILL_SLACK,
                                   created + KILL_WINDOW) if job.get("client_port") in b.ports]
    if killed:
        return f"job created, then the process that sent it was SIGKILLed ({killed[0].kind})"
    if _redis_down(blows, created):
        return "job created while Redis was down: its answer could not be recorded"
    return None


def _blows_in(blows: Sequence[Blow], kinds: Sequence[str], start: float,
              end: float) -> list[Blow]:
    return [b for b in blows if b.kind in kinds and start <= b.at <= end]


def _blow_between(blows: Sequence[Blow], kinds: Sequence[str], start: float,
                  end: float) -> bool:
    return bool(_blows_in(blows, kinds, start, end))


def _redis_down(blows: Sequence[Blow], moment: float) -> bool:
    """Redis was down at `moment`, or went down just after it (before the write landed)."""
    return any(b.kind == "redis" and b.at - 1.0 <= moment <= (b.until or b.at) + 1.0
               for b in blows)


def _check_jobs(ev: Evidence, found: Findings) -> None:
    known = {item_digest(i) for i in ev.items}
    orphans = [j["request_id"] for j in ev.jobs if j["body_sha256"] not in known]
    found.orphan_jobs = len(orphans)
    if orphans:
        found.problem(f"{len(orphans)} accepted submissions belong to no item: {orphans[:5]}")
    if ev.stats.get("duplicate_submits"):
        found.problem(f"the simulator counted {ev.stats['duplicate_submits']} duplicate submits")
    if ev.stats.get("submits") != len(ev.jobs):
        found.problem(f"the simulator counted {ev.stats.get('submits')} submits but lists "
                      f"{len(ev.jobs)} jobs")


def _check_manifest(ev: Evidence, found: Findings) -> None:
    by_id = {i["id"]: i for i in ev.items}
    if len(ev.manifest) != ev.expected:
        found.manifest_errors += 1
        found.problem(f"the manifest has {len(ev.manifest)} lines for {ev.expected} items")
    for line in ev.manifest:
        item = by_id.get(line.get("item_id", ""))
        state = keys.PUBLIC_STATE.get(item.get("state", ""), "") if item else None
        outputs = json.loads(item.get("outputs") or "[]") if item else []
        if item is None or line.get("status") != state or \
                [o["sha256"] for o in line.get("outputs", [])] != [o["sha256"] for o in outputs]:
            found.manifest_errors += 1
            found.problem(f"manifest line for {line.get('item_id')} disagrees with Redis "
                          f"({line.get('status')} vs {state})")


def _check_bucket(ev: Evidence, found: Findings) -> None:
    listed: set[str] = set()
    for line in ev.manifest:
        for out in line.get("outputs", []):
            listed.add(out["key"])
            _check_object(ev.bucket_root / out["key"], out, found)
    folder = ev.bucket_root / ev.batch_id
    for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
        if not path.is_file():
            continue
        key = path.relative_to(ev.bucket_root).as_posix()
        expected = path.name in _BATCH_FILES if path.parent == folder else key in listed
        if path.name.startswith(TEMP_MARK):
            found.temp_files += 1  # a killed fetch's scratch file: never under a final key
        elif not expected:
            found.stray_objects += 1
            found.problem(f"object {key} is in the bucket but in no manifest line")


def _check_object(path: Path, out: Mapping[str, Any], found: Findings) -> None:
    found.objects_checked += 1
    if not path.is_file():
        found.missing_objects += 1
        found.problem(f"object {out['key']} is in the manifest but not in the bucket")
        return
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != out["sha256"] or path.stat().st_size != out["bytes"]:
        found.sha_mismatches += 1
        found.problem(f"object {out['key']}: sha256/size differ from the manifest")
