"""How a command that waited on a batch ends: its exit code and the one line that says why.

A batch that stops early (cancel, budget, an outage, a paused account) never ends silently:
the line names what stopped it, what is left, and the command that continues it.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from rcbatch.worker import keys
from rcbatch.worker.state import Store

EXIT_OK, EXIT_FAILED, EXIT_UNAVAILABLE = 0, 1, 3

def in_flight(store: Store, bid: str, counts: dict[str, int]) -> bool:
    """Whether the batch has a job at the API or a submit or download under way."""
    if counts["submitted"] or counts["running"]:
        return True
    # claimed and submitting items count as pending, but hold an in-flight slot
    return next(store.redis.zscan_iter(keys.INFLIGHT, match=f"{bid}/*", count=1000),
                None) is not None


def stopped_early(store: Store, bid: str, record: dict[str, str],
                  counts: dict[str, int]) -> bool:
    """A paused batch that will not move by itself: an outage at once (its jobs are polled
    again on the next run), any other pause once nothing paid for is still under way."""
    if record.get("state") != keys.BATCH_PAUSED:
        return False
    return record.get("pause_kind") == keys.PAUSE_OUTAGE or not in_flight(store, bid, counts)


@dataclass(frozen=True)
class Outcome:
    """The exit code of a waited-for batch and the line printed with it (or "")."""

    code: int
    line: str = ""


def outcome(store: Store, bid: str, counts: dict[str, int], again: str) -> Outcome:
    """What to tell a person whose command waited on batch `bid`; `again` continues it."""
    record = store.batch(bid) or {}
    if record.get("state") == keys.BATCH_CANCELLED:
        return _cancelled(store, bid, record)
    if record.get("state") == keys.BATCH_PAUSED:
        return _paused(record, counts, again)
    total = int(record.get("total", 0))
    if counts["completed"] >= total:
        return Outcome(EXIT_OK)
    left = counts["failed"] + counts["submit_uncertain"]
    return Outcome(EXIT_FAILED, f"{left} items did not complete; `rcbatch retry "
                                f"{record.get('name') or bid}` runs the failed ones again")


def _paused(record: dict[str, str], counts: dict[str, int], again: str) -> Outcome:
    held = counts["pending"]
    reason = record.get("pause_reason") or "paused"
    if record.get("pause_kind") == keys.PAUSE_OUTAGE:
        waiting = held + counts["submitted"] + counts["running"]
        return Outcome(EXIT_UNAVAILABLE, f"{reason}; the batch is paused with {waiting} items "
                                         f"waiting, none failed; when it is back: {again}")
    if record.get("pause_kind") == keys.PAUSE_BUDGET:
        return Outcome(EXIT_FAILED, f"{reason}: {held} items held; to continue them: "
                                    f"{with_cap(again, '<higher>')}")
    return Outcome(EXIT_FAILED, f"batch paused ({reason}) with {held} items held; "
                                f"`rcbatch resume {record.get('name') or record.get('id')}` "
                                f"or {again} continues it")


def _cancelled(store: Store, bid: str, record: dict[str, str]) -> Outcome:
    at = float(record.get("cancelled_at") or 0)
    cancelled = after = discarded = 0
    for item in store.iter_items(bid):
        state = item.get("state")
        if state == keys.COMPLETED and float(item.get("finished_at") or 0) >= at:
            after += 1
        elif state == keys.CANCELLED:
            message = json.loads(item.get("error") or "{}").get("message", "")
            discarded += "discarded" in message
            cancelled += "discarded" not in message
    return Outcome(EXIT_FAILED, f"batch cancelled: {cancelled} items cancelled, {after} "
                                f"completed after the cancel (paid for, stored), {discarded} "
                                f"discarded")


def with_cap(command: str, cap: str) -> str:
    """`command` (a quoted `rcbatch ...` line) with its `--max-cost` set to `cap`."""
    words = shlex.split(command.strip("`"))
    kept, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word == "--max-cost":
            skip = True
        elif not word.startswith("--max-cost="):
            kept.append(word)
    return "`" + " ".join(shlex.quote(w) for w in kept) + f" --max-cost {cap}`"
