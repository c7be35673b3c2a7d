"""The chaos run: N items across the four models while workers and Redis are killed.

    .venv/bin/python -m bench.chaos --items 1000            # the issue's size (~5 min)
    .venv/bin/python -m bench.chaos --items 60 --seed 3     # a quick one
    .venv/bin/python -m bench.chaos --kill-every 1 --redis-restarts 4 --redis-down 6

What happens: an embedded Redis (append-only), the simulator in its own process injecting
every fault class (5xx, 429 with Retry-After, slow answers past the read timeout, dropped
and reset connections, lost submit answers, failed jobs, content refusals, output 404s and
downloads cut short), and several `rcbatch worker` processes, each with its own state folder,
and no beat: one worker at a time is the reconciler's clock, under a lease in Redis. The
batch is registered with `rcbatch submit`; then every few seconds a random worker's pool child
or main process gets SIGKILL, and every `--clock-kill-every`-th blow kills the main process of
the worker holding the clock (a killed main is started again); Redis is SIGKILLed and
restarted on the same port and data folder `--redis-restarts` times, spread over the run.
When every item is terminal the end state is checked (bench/chaos_checks.py) and a table of
figures printed (with how long the cluster was without a clock after each holder's kill);
the exit code is 1 when any check failed.
tests/test_chaos.py runs the same code with a small N.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.chaos_checks import Evidence, Findings, check
from bench.chaos_cluster import ChaosCluster, ClockWatch, Monkey
from bench.harness import EDIT, I2V, MONO_TO_WALL, SEQ, T2I
from bench.table import Figure, Section, at_most, info, markdown
from rcbatch.worker import keys
from rcbatch.worker.state import Store
from rcbatch.worker.wiring import redis_client

#: fault rates of the simulator, per request / job / download / body
DEFAULT_FAULTS: dict[str, float] = {
    "fail_5xx": 0.05, "fail_429": 0.04, "slow": 0.02, "drop": 0.02, "reset": 0.02,
    "lost_submit": 0.03, "job_fail": 0.04, "output_404": 0.04, "output_truncate": 0.05,
    "refuse": 0.03,
}
Say = Callable[[str], None]


@dataclass
class ChaosConfig:
    """One chaos run's size, blows and faults."""

    items: int = 1000
    seed: int = 7
    kill_every: float = 4.0
    #: every this-many-th worker kill is of the clock's holder (main process); 0: never
    clock_kill_every: int = 3
    redis_restarts: int = 2
    redis_down: float = 2.0
    workers: int = 3
    concurrency: int = 2
    max_in_flight: int = 24
    sim_concurrency: int = 16
    duration: str = "0.5-3"
    faults: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FAULTS))
    #: seconds past a step's due time before the reconciler re-drives it
    step_grace: float = 5.0
    #: the client's read timeout; slow answers are held a second longer
    read_timeout: float = 2.0
    #: give up waiting for the batch after this many seconds
    timeout: float = 3600.0
    root: Path | None = None

    def sim_options(self) -> dict[str, Any]:
        """`rcbatch simulate` options (everything but the fault rates)."""
        return {"seed": self.seed, "concurrency": self.sim_concurrency,
                "duration": self.duration, "image_scale": 0.03, "image_format": "jpeg",
                "video_bytes": 120_000, "retry_after": 1,
                "slow_seconds": self.read_timeout + 1.0, "output_404_permanent": 0.5}

    def worker_env(self) -> dict[str, str]:
        """RCBATCH_* settings of the workers."""
        return {"RCBATCH_MAX_IN_FLIGHT": str(self.max_in_flight),
                "RCBATCH_SUBMIT_RATE": "100", "RCBATCH_STEP_GRACE": str(self.step_grace),
                "RCBATCH_HTTP_READ_TIMEOUT": str(self.read_timeout),
                "RCBATCH_HTTP_CONNECT_TIMEOUT": str(self.read_timeout),
                "RCBATCH_LOG_LEVEL": "INFO"}


@dataclass
class ChaosResult:
    """What a run did and what the checks found."""

    config: ChaosConfig
    findings: Findings
    evidence: Evidence
    kills_child: int
    kills_main: int
    #: kills of the clock holder's main process (counted in kills_main too)
    kills_clock: int
    #: seconds without a live clock after each kill of its holder
    takeovers: list[float]
    redis_restarts: int
    revived: int
    orphans: int
    wall: float
    manifest_by_workers: bool
    exits: list[str]

    @property
    def ok(self) -> bool:
        """True when every end-state check passed."""
        return self.findings.ok and self.orphans == 0 and self.manifest_by_workers


#: an input image URL; nothing fetches it (no preflight, and the simulator does not), and a
#: fixed one keeps every body, so every content refusal, the same for the same seed
INPUT_IMAGE = "https://inputs.example.com/chaos/1024x768.jpg"


def spec_rows(count: int, seed: int) -> list[dict[str, Any]]:
    """`count` distinct rows, round-robin over the four models."""
    img = INPUT_IMAGE
    rows: list[dict[str, Any]] = []
    for k in range(count):
        tag = f"chaos {seed}-{k}"
        rows.append([
            {"model": T2I, "prompt": f"a lighthouse, {tag}", "width×height": "1024x1024(1:1)",
             "force_single": k % 8 != 0},
            {"model": EDIT, "image_urls": [img], "prompt": f"at night, {tag}",
             "force_single": True},
            {"model": I2V, "image_urls": [img], "prompt": f"slow pan, {tag}",
             "number_of_frames": 121, "seed": k},
            {"model": SEQ, "images": [img], "prompt": f"Generate 2 images of a harbour, {tag}",
             "sequential_image_generation_options": 2, "seed": k},
        ][k % 4])
    return rows


def run_chaos(config: ChaosConfig, say: Say = print) -> ChaosResult:
    """Run one chaos batch end to end and check its end state."""
    with tempfile.TemporaryDirectory(prefix="rcbatch-chaos-") as scratch:
        root = config.root or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        cluster = ChaosCluster(root, sim_options=config.sim_options(),
                               sim_faults=config.faults, env=config.worker_env(),
                               workers=config.workers, concurrency=config.concurrency)
        with cluster:
            return _run(config, cluster, root, say)


def _run(config: ChaosConfig, cluster: ChaosCluster, root: Path, say: Say) -> ChaosResult:
    spec = root / "chaos.jsonl"
    rows = spec_rows(config.items, config.seed)
    spec.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    started = time.monotonic()
    done = cluster.rcbatch("submit", str(spec), "--json", "--no-preflight", "--name",
                           f"chaos-{config.seed}")
    if done.returncode != 0:
        raise RuntimeError(f"rcbatch submit failed: {done.stderr.strip()}")
    bid = str(json.loads(done.stdout)["batch_id"])
    say(f"batch {bid}: {config.items} items; logs in {cluster.logs}")
    monkey = Monkey(cluster, config.seed)
    watch = ClockWatch(cluster)
    revived, finished = _storm(config, cluster, monkey, watch, bid, say)
    _await_clock(watch)
    wall = time.monotonic() - started
    # Unfinished, the checks still run: they name every item that is stuck.
    by_workers = finished and _wait_manifest(cluster, bid, config.items)
    if not by_workers:
        cluster.rcbatch("manifest", bid)
    evidence = _gather(cluster, bid, config.items, monkey)
    findings = check(evidence)
    _keep_record(root, evidence, findings)
    clock_kills = sum(1 for b in monkey.blows if b.target.endswith("(clock)"))
    return ChaosResult(config, findings, evidence, monkey.count("child"),
                       monkey.count("main"), clock_kills, watch.takeovers,
                       monkey.count("redis"), revived, monkey.orphans, wall, by_workers,
                       list(cluster.exits))


def _keep_record(root: Path, evidence: Evidence, findings: Findings) -> None:
    """Leave the blows and the problems beside the logs, for a run kept with --keep."""
    blows = [{**vars(b), "ports": sorted(b.ports)} for b in evidence.blows]
    record = {"batch_id": evidence.batch_id, "blows": blows, "problems": findings.problems,
              "failures": dict(findings.failures), "uncertain": dict(findings.uncertain)}
    (root / "chaos-record.json").write_text(json.dumps(record, indent=1))


class _Schedule:
    """When the next blow falls: Redis at even shares of progress, kills every few seconds."""

    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.marks = [(n + 1) / (config.redis_restarts + 1) for n in range(config.redis_restarts)]
        self.next_kill = self._after_kill()
        self.kills = 0
        self.last_said = time.monotonic()

    def _after_kill(self) -> float:
        return time.monotonic() + self.config.kill_every * self.rng.uniform(0.5, 1.5)

    def strike(self, monkey: Monkey, watch: ClockWatch, ended: int, say: Say) -> None:
        """Deal the blow that is due, if any, given `ended` terminal items."""
        total = self.config.items
        if self.marks and ended >= self.marks[0] * total:
            self.marks.pop(0)
            monkey.restart_redis(self.config.redis_down)
            say(f"  Redis killed and restarted at {ended}/{total} terminal")
        elif time.monotonic() >= self.next_kill:
            self.kills += 1
            every = self.config.clock_kill_every
            if every and self.kills % every == 0 and not watch.waiting:
                watch.killed(monkey.kill_clock_holder())
            else:
                monkey.kill_random_worker_process()
            self.next_kill = self._after_kill()
        if time.monotonic() - self.last_said > 15:
            self.last_said = time.monotonic()
            say(f"  {ended}/{total} terminal; {len(monkey.blows)} blows so far")


def _storm(config: ChaosConfig, cluster: ChaosCluster, monkey: Monkey, watch: ClockWatch,
           bid: str, say: Say) -> tuple[int, bool]:
    """Deal blows until every item is terminal or time is up; (exits revived, finished)."""
    store = Store(redis_client(cluster.redis.url))
    schedule = _Schedule(config)
    deadline = time.monotonic() + config.timeout
    revived = 0
    while time.monotonic() < deadline:
        time.sleep(0.2)
        revived += len(cluster.revive())
        watch.look()
        counts = _counts(store, bid)
        if counts is None:
            continue
        ended = sum(counts[s] for s in keys.PUBLIC_TERMINAL)
        if ended >= config.items:
            return revived, True
        schedule.strike(monkey, watch, ended, say)
    say(f"  time is up ({config.timeout:g} s) with {_counts(store, bid)}")
    return revived, False


def _await_clock(watch: ClockWatch, wait: float = 30.0) -> None:
    """A holder killed just before the end: time its takeover too (bounded)."""
    deadline = time.monotonic() + wait
    while watch.waiting and time.monotonic() < deadline:
        time.sleep(0.2)
        watch.look()


def _counts(store: Store, bid: str) -> dict[str, int] | None:
    try:
        return store.counts(bid)
    except redis.RedisError:
        return None  # Redis is down right now


def _manifest_lines(cluster: ChaosCluster, bid: str) -> list[dict[str, Any]]:
    path = cluster.bucket / bid / "manifest.jsonl"
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def _wait_manifest(cluster: ChaosCluster, bid: str, items: int, wait: float = 60.0) -> bool:
    """Whether the workers wrote the final manifest (every line terminal) by themselves."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        lines = _manifest_lines(cluster, bid)
        if len(lines) == items and all(x["status"] in keys.PUBLIC_TERMINAL for x in lines):
            return True
        time.sleep(0.5)
    return False


def _gather(cluster: ChaosCluster, bid: str, items: int, monkey: Monkey) -> Evidence:
    store = Store(redis_client(cluster.redis.url))
    listing = httpx.get(f"{cluster.sim.base_url}/_sim/jobs", timeout=120).json()
    return Evidence(expected=items, batch_id=bid, items=list(store.iter_items(bid)),
                    manifest=_manifest_lines(cluster, bid), jobs=listing["jobs"],
                    without_job=listing.get("without_job", []), stats=cluster.sim.stats(),
                    blows=list(monkey.blows), bucket_root=cluster.bucket,
                    mono_to_wall=MONO_TO_WALL)


def report(result: ChaosResult) -> Section:
    """The figures of a run as a bench table section."""
    c, f, ev = result.config, result.findings, result.evidence
    faults = ev.stats.get("faults", {})
    section = Section(
        "Chaos", f"{c.items} items over the four models, seed {c.seed}; {c.workers} workers "
                 f"x {c.concurrency} slots; a SIGKILL every ~{c.kill_every:g} s; Redis killed "
                 f"{c.redis_restarts} times for {c.redis_down:g} s; faults {_rates(c.faults)}")
    section.add(*(_count(f"items {s}", f.states.get(s, 0))
                  for s in ("completed", "failed", "submit_uncertain")))
    section.add(
        at_most("items lost or stuck", f.lost, 0, digits=0),
        at_most("duplicate submits (simulator)", ev.stats.get("duplicate_submits", 0), 0,
                digits=0),
        at_most("items without exactly one accepted submission", f.wrong_submissions, 0,
                digits=0),
        at_most("accepted submissions of no item", f.orphan_jobs, 0, digits=0),
        at_most("failed or uncertain items unexplained", f.unexplained, 0, digits=0),
        at_most("sha256/size mismatches", f.sha_mismatches, 0, digits=0),
        at_most("objects missing", f.missing_objects, 0, digits=0),
        at_most("objects in no manifest line", f.stray_objects, 0, digits=0),
        at_most("manifest lines wrong", f.manifest_errors, 0, digits=0),
        at_most("pool children outliving a killed main", result.orphans, 0, digits=0),
        _count("objects checked (sha256 recomputed)", f.objects_checked),
        _count("simulator submits accepted", ev.stats.get("submits", 0)),
        _count("kills: pool child", result.kills_child),
        _count("kills: worker main", result.kills_main),
        _count("kills: clock holder (main)", result.kills_clock),
        info("clock takeover after its holder's kill, max", max(result.takeovers, default=0),
             "s", digits=1),
        _count("Redis kill + restart", result.redis_restarts),
        _count("exits revived (workers)", result.revived),
        _count("temp files left by killed fetches", f.temp_files),
        info("wall time", result.wall, "s", digits=0),
    )
    section.add(*(_count(f"fault injected: {k}", v) for k, v in sorted(faults.items())))
    section.notes += _notes(result)
    return section


def _notes(result: ChaosResult) -> list[str]:
    f = result.findings
    notes = ["Failures by kind: " + _listing(f.failures),
             "Uncertain by explanation: " + _listing(f.uncertain),
             "Clock takeovers (s): " + (", ".join(f"{t:.1f}" for t in result.takeovers)
                                        or "none")]
    if result.exits:
        notes.append("Exited on their own (and started again): " + "; ".join(result.exits))
    if not result.manifest_by_workers:
        notes.append("The workers did not write the final manifest within 60 s.")
    if f.problems:
        notes.append("PROBLEMS:\n" + "\n".join(f"- {p}" for p in f.problems[:40]))
    return notes


def _listing(counter: Any) -> str:
    return "; ".join(f"{n} x {reason}" for reason, n in counter.most_common()) or "none"


def _count(name: str, value: float) -> Figure:
    return info(name, value, digits=0)


def _rates(faults: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in faults.items() if v)


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.chaos`: run, print the table, exit 1 if a check failed."""
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = ChaosConfig()
    parser.add_argument("--items", type=int, default=defaults.items)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--kill-every", type=float, default=defaults.kill_every,
                        metavar="SECONDS", help="mean seconds between worker SIGKILLs")
    parser.add_argument("--clock-kill-every", type=int, default=defaults.clock_kill_every,
                        metavar="N", help="every N-th kill is of the clock holder (0: never)")
    parser.add_argument("--redis-restarts", type=int, default=defaults.redis_restarts)
    parser.add_argument("--redis-down", type=float, default=defaults.redis_down,
                        metavar="SECONDS")
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--max-in-flight", type=int, default=defaults.max_in_flight)
    parser.add_argument("--duration", default=defaults.duration, metavar="MIN-MAX")
    parser.add_argument("--fault-scale", type=float, default=1.0,
                        help="multiply every fault rate by this")
    parser.add_argument("--timeout", type=float, default=defaults.timeout)
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (logs)")
    args = parser.parse_args(argv)
    config = ChaosConfig(
        items=args.items, seed=args.seed, kill_every=args.kill_every,
        clock_kill_every=args.clock_kill_every, redis_restarts=args.redis_restarts,
        redis_down=args.redis_down, workers=args.workers,
        concurrency=args.concurrency, max_in_flight=args.max_in_flight,
        duration=args.duration, timeout=args.timeout, root=args.keep,
        faults={k: min(1.0, v * args.fault_scale) for k, v in DEFAULT_FAULTS.items()})
    result = run_chaos(config, say=lambda text: print(text, file=sys.stderr, flush=True))
    print(markdown([report(result)]))
    print("all end-state checks passed" if result.ok else "END-STATE CHECKS FAILED")
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
