"""Retention: Redis memory over many nightly batches, once finished batches' records expire.

    .venv/bin/python -m bench retention                       # 30 nights of 1,000 items
    .venv/bin/python -m bench retention --quick               # 4 nights of 100
    .venv/bin/python -m bench retention --mode prune          # `rcbatch prune` instead

Each "night" registers a batch of text-to-image items through the Store (as `rcbatch submit`
does), moves every item through the worker's transitions to completed (claimed, submitting,
submitted, running, fetching, completed, with the request id, output URLs and stored outputs
a real item carries), and finishes the batch as the manifest task does (`finished_at`, then
`Store.mark_inactive`, which gives its records the retention). With a retention of about a
second the night then waits for Redis's own expiry to take the records (`--mode expire`), or
drops them at once with `retention.prune` (`--mode prune`). Redis `used_memory` is read twice
a night: with the night's records still there, and once they are gone. Without retention
the second figure would climb by one night's records every night; with it, it stays flat
but for the tombstones (a few hundred bytes a night).

Targets (issue 17), from night 5 on: the keys left once a night's records are gone (their
MEMORY USAGE summed: tombstones, the batch list, the names) grow by at most 1 KiB a night, and
used_memory grows by at most 1% of one night's records a night. (Redis's used_memory creeps
up by some 2.5 KiB a night here even with the retention code bypassed and every record
deleted by hand, 3 keys left: an allocation inside the server, not a key.)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench.harness import T2I
from bench.runner import conclude
from bench.table import Section, at_most, info
from rcbatch.cli.embedded_redis import EmbeddedRedis
from rcbatch.worker import keys, retention
from rcbatch.worker.state import REMOVE, NewItem, Store

KIB = 1024
#: nights before the figure is held flat: the allocator and Redis's own tables settle first
SETTLE_NIGHTS = 4
KEYS_PER_NIGHT_LIMIT = 1 * KIB
#: used_memory growth a night, as a share of one night's records
USED_PER_NIGHT_LIMIT = 0.01


@dataclass(frozen=True)
class Night:
    """Redis after one night: with the night's records, and once they expired or were pruned."""

    night: int
    full: int
    after: int
    keys_after: int
    #: MEMORY USAGE of every key left once the records are gone
    kept: int
    gone_in: float


def items(night: int, count: int) -> list[NewItem]:
    """One night's items: a prompt and a size, like a nightly sweep's rows."""
    return [NewItem(f"n{night}-{k:05d}", "nightly.jsonl", k + 1, T2I,
                    {"prompt": f"a lighthouse at dusk, variation {k}, night {night}, "
                               f"oil painting, warm light, high detail",
                     "width": 1024, "height": 1024, "seed": k}, {"estimate": "0.03"})
            for k in range(count)]


def run_item(store: Store, bid: str, iid: str, token: str) -> None:
    """The transitions a worker makes for one item that completes, with their values."""
    now = store.clock()
    steps: list[tuple[str, str, dict[str, Any]]] = [
        (keys.CLAIMED, keys.SUBMITTING, {"attempt_id": f"{iid}-a1", "+attempts": 1}),
        (keys.SUBMITTING, keys.SUBMITTED, {"request_id": f"req-{iid}", "submitted_at": now}),
        (keys.SUBMITTED, keys.RUNNING, {"started_at": now, "seq": 1}),
        (keys.RUNNING, keys.FETCHING, {"seq": 2, "output_urls": json.dumps(
            [f"https://outputs.example/{iid}/0.jpg"])}),
    ]
    for expect, to, values in steps:
        store.transition(bid, iid, expect=(expect,), to=to, values=values)
    outputs = [{"key": f"{bid}/{iid}/0.jpg", "bytes": 184_223, "sha256": "ab" * 32,
                "content_type": "image/jpeg",
                "source_url": f"https://outputs.example/{iid}/0.jpg"}]
    store.transition(bid, iid, expect=(keys.FETCHING,), to=keys.COMPLETED, due=REMOVE,
                     inflight=REMOVE, values={"outputs": outputs, "finished_at": store.clock(),
                                              "cost": 0.03})


def one_night(store: Store, night: int, count: int) -> str:
    """Register, run and finish one night's batch; returns its id."""
    bid = f"night-{night:03d}"
    store.register(bid, {"name": "nightly", "bucket_url": "file:///srv/rcbatch"},
                   items(night, count))
    while claimed := store.claim(bid, cap=count, lease=600, claim_due=600, limit=1000):
        for iid, token in claimed:
            run_item(store, bid, iid, token)
    assert store.is_finished(bid), "every item should be terminal"
    store.set_batch(bid, finished_at=str(store.clock()))
    store.mark_inactive(bid)  # what the manifest task does once every item is terminal
    return bid


def used_memory(client: Any) -> int:
    """Redis's `used_memory`, after a moment for lazy frees to land."""
    time.sleep(0.2)
    return int(client.info("memory")["used_memory"])


def wait_gone(client: redis.Redis, bid: str, timeout: float) -> float:
    """Seconds until Redis's expiry took every record of `bid` (its order list goes last)."""
    started = time.monotonic()
    while client.exists(keys.batch(bid), keys.order(bid)) or _items_left(client, bid):
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{bid}'s records did not expire in {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - started


def _items_left(client: redis.Redis, bid: str) -> bool:
    return next(client.scan_iter(match=keys.item(bid, "*"), count=1000), None) is not None


def measure(client: Any, opts: argparse.Namespace) -> list[Night]:
    """Run every night; one `Night` each."""
    store = Store(client, retention=opts.retention)
    nights = []
    for night in range(1, opts.nights + 1):
        bid = one_night(store, night, opts.items)
        full = used_memory(client)
        started = time.monotonic()
        if opts.mode == "prune":
            retention.prune(store, 0)
        else:
            wait_gone(client, bid, opts.retention + 60)
        gone_in = time.monotonic() - started
        kept = sum(int(client.memory_usage(key) or 0) for key in client.scan_iter())
        nights.append(Night(night, full, used_memory(client), int(client.dbsize()), kept,
                            gone_in))
        print(f"night {night:>3}: {full / KIB:,.0f} KiB with its records, "
              f"{nights[-1].after / KIB:,.0f} KiB after ({nights[-1].keys_after} keys, "
              f"{kept:,} B)", file=sys.stderr, flush=True)
    return nights


def section(nights: list[Night], opts: argparse.Namespace) -> Section:
    """The figures and the per-night table."""
    out = Section("Retention: Redis memory over nightly batches",
                  f"{opts.nights} nights of {opts.items:,} text-to-image items each, run "
                  f"through the Store's transitions to completed and finished; retention "
                  f"{opts.retention:g} s, records then "
                  f"{'pruned' if opts.mode == 'prune' else 'left to expire'}; "
                  f"embedded Redis (valkey), `used_memory` read 0.2 s after each step.")
    settled = nights[min(SETTLE_NIGHTS, len(nights) - 1):]
    span = max(1, len(settled) - 1)
    growth = (settled[-1].after - settled[0].after) / span
    night_records = nights[-1].full - nights[-1].after
    out.add(at_most(f"bytes of the keys left, growth per night after night "
                    f"{settled[0].night}", (settled[-1].kept - settled[0].kept) / span,
                    KEYS_PER_NIGHT_LIMIT, "B", shown="1,024", digits=0),
            at_most(f"used_memory growth per night after night {settled[0].night} (records "
                    f"gone), share of one night's records", 100 * growth / night_records,
                    100 * USED_PER_NIGHT_LIMIT, "%", digits=2),
            info("used_memory growth per night (records gone)", growth, "B", 0),
            info("used_memory with one night's records, last night",
                 nights[-1].full / KIB, "KiB", 0),
            info("one night's records (full - after), last night",
                 (nights[-1].full - nights[-1].after) / KIB, "KiB", 0),
            info("used_memory once gone, first night", nights[0].after / KIB, "KiB", 0),
            info("used_memory once gone, last night", nights[-1].after / KIB, "KiB", 0),
            info("keys left after the last night", nights[-1].keys_after, "", 0),
            info("seconds from finish to records gone, max", max(n.gone_in for n in nights),
                 "s", 1))
    rows = ["| night | used_memory with the night's records | once gone | keys left | "
            "their bytes |", "| --: | --: | --: | --: | --: |"]
    rows += [f"| {n.night} | {n.full / KIB:,.0f} KiB | {n.after / KIB:,.0f} KiB | "
             f"{n.keys_after} | {n.kept:,} B |" for n in nights]
    out.notes.append("\n".join(rows))
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parse = argparse.ArgumentParser(prog="python -m bench retention", description=__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parse.add_argument("--nights", type=int, default=30, help="nightly batches (30)")
    parse.add_argument("--items", type=int, default=1000, help="items per night (1,000)")
    parse.add_argument("--retention", type=float, default=1.0,
                       help="seconds a finished batch's records stay (1)")
    parse.add_argument("--mode", choices=("expire", "prune"), default="expire",
                       help="let Redis expire the records, or prune them at once")
    parse.add_argument("--quick", action="store_true", help="4 nights of 100 items")
    parse.add_argument("--keep", type=Path, metavar="DIR", help="keep Redis's data in DIR")
    args = parse.parse_args(argv)
    if args.quick:
        args.nights, args.items = min(args.nights, 4), min(args.items, 100)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the nights on a fresh embedded Redis and print the table."""
    opts = parse(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rcbatch-bench-retention-") as scratch:
        server = EmbeddedRedis((opts.keep or Path(scratch)) / "redis")
        client = redis.Redis.from_url(server.start())
        try:
            nights = measure(client, opts)
        finally:
            client.close()
            server.stop()
    conclude("retention", [section(nights, opts)], started=started, quick=opts.quick,
             profile=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
