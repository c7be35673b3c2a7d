"""Scale: Redis bytes per item and broker messages outstanding during a large batch.

    .venv/bin/python -m bench scale               # 100,000 instant jobs (~10-15 min here)
    .venv/bin/python -m bench scale --quick       # 300
    .venv/bin/python -m bench.scale --items 20000 --every 0.5

Real `rcbatch worker` processes (2 x 2 slots, in-flight cap 32) run one batch of text-to-image
items whose jobs take no time at the simulator (tiny JPEG outputs into the local bucket). Redis
is sampled throughout:

- `used_memory`, split into what the items' own records account for (bytes per registered
  item, and per finished item, fitted from the start and the end) and the rest, which must
  stay bounded by what is in flight (queued messages, due/in-flight entries, buffers);
- broker messages outstanding: every Celery queue list (all priorities) plus the unacked
  hash (messages delivered and not yet acknowledged, countdowns held by workers included);
- in-flight slots (`rcb:inflight`) and items waiting on the pending list.

Targets (issue 7): both bounded by what is in flight, not by the batch size. Held here as:
outstanding messages <= 2 x the in-flight cap, and at most one per item in flight plus one
per worker slot and 4 (manifest, reconcile, dispatch nudges); Redis bytes beyond the
per-item records <= 64 KiB per item in flight. ("In flight" counts items fetching their
outputs too: their API slot is freed when the job ends, so they are not under the cap.)
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.enqueue import flush_sync
from bench.harness import Sampler, Services, group_cpu
from bench.pipeline import Knobs, RcbatchCluster, t2i_specs
from bench.runner import conclude, parser
from bench.table import Figure, Section, at_most, info
from rcbatch.worker import keys
from rcbatch.worker.celery_app import QUEUE

FULL_ITEMS = 100_000
QUICK_ITEMS = 300
KIB = 1024
SLOT_BYTES_LIMIT = 64 * KIB
#: kombu's Redis transport keeps one list per priority: QUEUE, then QUEUE + SEP + digit
_PRIORITY_SEP = "\x06\x16"
_QUEUES = [QUEUE] + [f"{QUEUE}{_PRIORITY_SEP}{p}" for p in range(1, 10)]
_UNACKED = "unacked"


@dataclass(frozen=True)
class Sample:
    """Redis at one moment of the run."""

    t: float
    used: int
    queued: int
    unacked: int
    inflight: int
    due: int
    pending: int
    terminal: int
    #: items off the pending list and not terminal: claimed, submitted, running or fetching
    live: int

    @property
    def outstanding(self) -> int:
        """Broker messages not yet done with: queued plus delivered-but-unacknowledged."""
        return self.queued + self.unacked


def sample(client: Any, bid: str, items: int) -> Sample:
    """Read everything in one MULTI/EXEC, so the figures are of one moment."""
    with client.pipeline(transaction=True) as pipe:
        for queue in _QUEUES:
            pipe.llen(queue)
        pipe.hlen(_UNACKED)
        pipe.zcard(keys.INFLIGHT)
        pipe.zcard(keys.DUE)
        pipe.llen(keys.pending(bid))
        pipe.hgetall(keys.counts(bid))
        pipe.info("memory")
        answers = pipe.execute()
    n = len(_QUEUES)
    counts = {k.decode(): int(v) for k, v in answers[n + 4].items()}
    terminal = sum(counts.get(s, 0) for s in keys.PUBLIC_TERMINAL)
    return Sample(time.time(), int(answers[n + 5]["used_memory"]), sum(answers[:n]),
                  answers[n], answers[n + 1], answers[n + 2], answers[n + 3], terminal,
                  items - answers[n + 3] - terminal)


@dataclass
class Run:
    """One batch: memory at its milestones, the samples, and costs."""

    items: int
    knobs: Knobs
    base: int
    registered: int
    end: int
    seconds: float
    worker_cpu: float
    pending_record: int
    finished_record: int
    samples: list[Sample] = field(default_factory=list)

    @property
    def per_registered(self) -> float:
        """Redis bytes per item right after registration (record, order and pending entries)."""
        return (self.registered - self.base) / self.items

    @property
    def per_finished(self) -> float:
        """Redis bytes per item once every item is terminal."""
        return (self.end - self.base) / self.items

    def residual(self, s: Sample) -> float:
        """Bytes in Redis at `s` beyond what the items' records account for."""
        records = self.items * self.per_registered + s.terminal * (
            self.per_finished - self.per_registered)
        return s.used - self.base - records

    def max_outstanding(self) -> int:
        """The most broker messages outstanding at any sample."""
        return max((s.outstanding for s in self.samples), default=0)


def record_bytes(client: Any, bid: str, iid: str) -> int:
    """`MEMORY USAGE` of one item's record."""
    return int(client.memory_usage(keys.item(bid, iid), samples=0) or 0)


def run_batch(svc: Services, *, items: int, knobs: Knobs, every: float,
              timeout: float, profile: Path | None = None) -> Run:
    """Run one batch of `items` instant jobs, sampling Redis every `every` seconds."""
    svc.sim.reset(duration=[0, 0], concurrency=knobs.max_in_flight, image_scale=0.02)
    flush_sync(svc)  # with no worker running yet: the broker's bindings are made at start-up
    specs = t2i_specs(items, prefix="s")
    if profile is not None:
        knobs = replace(knobs, profile_dir=str(profile))
    with RcbatchCluster(svc, knobs, "scale") as cluster:
        client = svc.redis()
        base = _used(client)
        cpu0 = group_cpu(cluster.pgids)
        started = time.time()
        bid = cluster.submit(specs, "scale")
        registered = _used(client)
        pending_record = record_bytes(client, bid, specs[-1].item_id)
        with Sampler(lambda: sample(client, bid, items), every=every) as sampler:
            cluster.wait(bid, timeout)
        seconds = time.time() - started
        cpu = group_cpu(cluster.pgids) - cpu0
        _settle(client)
        run = Run(items, knobs, base, registered, _used(client), seconds, cpu, pending_record,
                  record_bytes(client, bid, specs[-1].item_id), sampler.samples)
        client.close()
    return run


def _used(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def _settle(client: Any, quiet: float = 1.0, limit: float = 30.0) -> None:
    """Wait until no broker message is outstanding (the last manifest nudges), up to `limit`."""
    deadline = time.monotonic() + limit
    since = time.monotonic()
    while time.monotonic() < deadline:
        busy = sum(client.llen(q) for q in _QUEUES) + client.hlen(_UNACKED)
        if busy:
            since = time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.2)


def section(run: Run) -> Section:
    """The figures, with the issue's targets."""
    cap = run.knobs.max_in_flight
    slots = run.knobs.workers * run.knobs.concurrency
    result = Section(
        "7. Scale: Redis and broker during a large batch of instant jobs",
        f"{run.items:,} text-to-image items, jobs of 0 s at the simulator, tiny JPEG outputs "
        f"into the local bucket; {run.knobs.workers} workers x {run.knobs.concurrency} slots, "
        f"in-flight cap {cap}; Redis sampled {len(run.samples)} times.")
    residual = max((run.residual(s) for s in run.samples), default=0.0)
    result.add(*figures(run, cap, slots, residual))
    if run.items < FULL_ITEMS:
        result.notes.append(f"Quick size ({run.items:,} items); the issue asks for "
                            f"{FULL_ITEMS:,}.")
    return result


def figures(run: Run, cap: int, slots: int, residual: float) -> list[Figure]:
    """Every figure of one run."""
    outstanding = run.max_outstanding()
    beyond = max((s.outstanding - s.live for s in run.samples), default=0)
    live = max((s.live for s in run.samples), default=0)
    return [
        at_most("broker messages outstanding, max (queued + unacked)", outstanding, 2 * cap,
                digits=0, shown=f"{2 * cap} (2 x in-flight cap)"),
        at_most("broker messages beyond one per item in flight, max", beyond, slots + 4,
                digits=0, shown=f"{slots + 4} (worker slots + 4)"),
        info("items in flight (claimed .. fetching), max",
             max((s.live for s in run.samples), default=0), digits=0),
        info("  of which fetching (their API slot already freed), max",
             max((s.live - s.inflight for s in run.samples), default=0), digits=0),
        info("broker messages outstanding, mean",
             sum(s.outstanding for s in run.samples) / max(1, len(run.samples)), digits=1),
        info("broker messages outstanding, max / batch size", 100 * outstanding / run.items,
             "%", digits=3),
        at_most("in-flight slots held, max", max((s.inflight for s in run.samples), default=0),
                cap, digits=0),
        info("due entries (rcb:due), max", max((s.due for s in run.samples), default=0),
             digits=0),
        at_most("Redis bytes beyond the item records, max, per item in flight",
                max(0.0, residual) / max(1, live) / KIB, SLOT_BYTES_LIMIT / KIB, "KiB",
                digits=1),
        info("Redis bytes beyond the item records, max", max(0.0, residual) / KIB, "KiB",
             digits=0),
        info("Redis bytes per item, registered (record + order + pending)",
             run.per_registered, "B", digits=0),
        info("Redis bytes per item, all finished (terminal record + order)",
             run.per_finished, "B", digits=0),
        info("one item record (MEMORY USAGE), pending", run.pending_record, "B", digits=0),
        info("one item record (MEMORY USAGE), finished", run.finished_record, "B", digits=0),
        info("Redis used_memory at the end", run.end / KIB / KIB, "MiB", digits=1),
        info("items per second (registration to last item terminal)",
             run.items / run.seconds, "items/s", digits=0),
        info(f"worker CPU ms per item ({slots} slots)", 1000 * run.worker_cpu / run.items,
             "ms", digits=2),
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options: the shared ones (bench/runner.py) and this benchmark's own."""
    parse = parser("scale", "measurement 7: Redis bytes per item and broker messages")
    parse.add_argument("--items", type=int, help=f"batch size [{FULL_ITEMS:,}; "
                                                  f"--quick: {QUICK_ITEMS}]")
    parse.add_argument("--every", type=float,
                       help="seconds between samples [items / 20,000, at least 0.2]")
    parse.add_argument("--max-in-flight", type=int, default=32, help="in-flight cap [32]")
    return parse.parse_args(sys.argv[1:] if argv is None else argv)


def main(argv: list[str] | None = None) -> int:
    """Run the scale benchmark and print its table."""
    args = parse_args(argv)
    items = args.items or (QUICK_ITEMS if args.quick else FULL_ITEMS)
    every = args.every or max(0.2, items / 20_000)
    started = time.monotonic()
    with Services(keep=args.keep) as svc:
        run = run_batch(svc, items=items, knobs=Knobs(max_in_flight=args.max_in_flight),
                        every=every, timeout=600.0 + items / 5, profile=args.profile)
    conclude("scale", [section(run)], started=started, quick=args.quick, profile=args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
